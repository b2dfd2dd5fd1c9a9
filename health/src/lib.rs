//! `opengslb-health`: the one implementation of OpenGSLB's health checks,
//! used by the controlplane's validator and (later) by the agent.
//!
//! - [`probe`] runs one bounded check of one [`Target`]: `tcp` (connect
//!   only), `http` or `https` (a minimal HTTP/1.1 GET written here:
//!   `Connection: close`, redirects never followed, the body read up to
//!   [`BODY_CAP`]). Every success records its TCP connect time.
//! - [`TargetState`] is the threshold state machine (unknown → the first
//!   result decides; then `failure_threshold` consecutive failures make a
//!   healthy target unhealthy and `success_threshold` consecutive successes
//!   the reverse) plus the latency EMA and its sample count.
//! - [`Prober`] probes each distinct target once per interval, however many
//!   servers share it, each in its own task, at a jittered phase.
//!
//! Invariants: a probe never outlives its `timeout`, never holds more than
//! [`BODY_CAP`] + one read buffer of response, and a failing or hanging
//! target never delays another. This crate knows nothing of the
//! controlplane's config; callers translate theirs into [`Check`].

mod check;
mod error;
mod http;
mod probe;
mod prober;
mod state;
mod tls;

pub use check::{Check, CheckKind, Target};
pub use error::{Error, Result};
pub use probe::{probe, Failure, Outcome, Success, BODY_CAP};
pub use prober::{Observer, Prober};
pub use state::{Status, TargetState};
pub use tls::TlsConfigs;
