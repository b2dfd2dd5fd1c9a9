//! The OpenGSLB dataplane: the authoritative DNS server.
//!
//! It holds no configuration beyond listen addresses, controlplane addresses
//! and a cache path ([`settings`]). Everything it answers comes from the
//! controlplane's snapshot stream ([`client`]), validated and compiled once
//! per snapshot into [`snapshot::Snapshot`] and published through one
//! [`handle::SnapshotHandle`]. Queries are answered synchronously from the
//! compiled tables ([`answer`], [`select`], [`wire`]) by per-worker UDP
//! threads ([`udp`]) and tokio TCP tasks ([`tcp`]).
//!
//! Invariants: it never reads YAML, never holds a private key, never waits on
//! a controlplane to answer a query; the answer path never allocates, locks,
//! logs or formats.

pub mod answer;
pub mod cache;
pub mod client;
pub mod cookie;
pub mod delta;
pub mod ecs;
pub mod error;
pub mod geo;
pub mod handle;
pub mod memory;
pub mod metrics;
pub(crate) mod nsec3;
pub(crate) mod prefetch;
pub mod rrl;
pub mod select;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod tcp;
pub mod udp;
pub mod wire;
