//! Integration tests: the real `opengslb-controlplane`, `opengslb-dataplane`
//! and `opengslb` binaries on loopback, checked with an independent DNS
//! client (hickory-proto) over UDP and TCP.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod delv_support;
mod harness;

mod abuse;
mod agent;
mod api;
mod authoritative;
mod delv;
mod dnssec;
mod geo;
mod health;
mod key_sync;
mod lifecycle;
mod operate;
mod policies;
mod rollover;
