//! The OpenGSLB controlplane ("overwatch"): loads and validates the YAML
//! config ([`config`]), decides the health of every backend, compiles the
//! snapshot ([`compile`]) and streams it to every subscribed dataplane
//! ([`stream`]); keeps durable state in its [`store`].
//!
//! It is the only process that reads the operator's YAML and the only one
//! that will hold DNSSEC private keys. Nothing depends on this crate.

pub mod admin;
pub mod api;
pub mod compile;
pub mod config;
pub mod dnssec;
pub mod error;
pub mod geo;
pub mod health;
pub mod metrics;
pub mod overrides;
pub mod overwatch;
pub mod server;
pub mod store;
pub mod stream;
#[doc(hidden)]
pub mod test_support;
