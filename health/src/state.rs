//! The per-target threshold state machine and latency EMA.
//!
//! ```text
//!            first result decides
//!   Unknown ─────────────────────▶ Healthy / Unhealthy
//!   Healthy   ── failure_threshold consecutive failures ──▶ Unhealthy
//!   Unhealthy ── success_threshold consecutive successes ─▶ Healthy
//! ```
//!
//! Every success feeds its connect time into an exponential moving average
//! (`ema = α·sample + (1−α)·ema`, the first sample taken as is) and counts a
//! sample.

use std::time::{Duration, SystemTime};

use crate::probe::{Failure, Outcome};

/// Live state of one target.
#[derive(Debug, Clone, Default)]
pub struct TargetState {
    status: Status,
}

/// A copy of a target's state, for views, APIs and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Status {
    /// `None` until the first result.
    pub healthy: Option<bool>,
    /// When the current decision was made.
    pub since: Option<SystemTime>,
    /// Decision changes after the first result (0: the state it has held
    /// since it was first looked at).
    pub changes: u64,
    /// Consecutive successes (0 after a failure).
    pub consecutive_successes: u32,
    /// Consecutive failures (0 after a success).
    pub consecutive_failures: u32,
    /// Connect-time EMA.
    pub latency_ema: Option<Duration>,
    /// Successful samples fed into the EMA.
    pub samples: u64,
    /// Probes run.
    pub probes: u64,
    /// When the last probe finished.
    pub last_checked: Option<SystemTime>,
    /// Why the last probe failed, when it did.
    pub last_failure: Option<Failure>,
}

// === impl TargetState ===

impl TargetState {
    /// Feeds one outcome; returns the new decision when it changed (the
    /// first result always does).
    pub fn record(
        &mut self,
        outcome: &Outcome,
        failure_threshold: u32,
        success_threshold: u32,
        alpha: f64,
        now: SystemTime,
    ) -> Option<bool> {
        let s = &mut self.status;
        s.probes += 1;
        s.last_checked = Some(now);
        let next = match outcome.result {
            Ok(ok) => {
                s.consecutive_successes = s.consecutive_successes.saturating_add(1);
                s.consecutive_failures = 0;
                s.last_failure = None;
                let sample = ok.connect.as_secs_f64();
                let ema = match s.latency_ema {
                    Some(prev) => alpha * sample + (1.0 - alpha) * prev.as_secs_f64(),
                    None => sample,
                };
                s.latency_ema = Some(Duration::from_secs_f64(ema.max(0.0)));
                s.samples += 1;
                match s.healthy {
                    None => Some(true),
                    Some(false) if s.consecutive_successes >= success_threshold => Some(true),
                    _ => None,
                }
            }
            Err(f) => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.consecutive_successes = 0;
                s.last_failure = Some(f);
                match s.healthy {
                    None => Some(false),
                    Some(true) if s.consecutive_failures >= failure_threshold => Some(false),
                    _ => None,
                }
            }
        };
        if let Some(h) = next {
            if s.healthy.is_some() {
                s.changes += 1;
            }
            s.healthy = Some(h);
            s.since = Some(now);
        }
        next
    }

    /// A copy of the state.
    pub fn status(&self) -> Status {
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Success;

    fn ok(ms: u64) -> Outcome {
        Outcome {
            result: Ok(Success {
                connect: Duration::from_millis(ms),
                status: Some(200),
            }),
            elapsed: Duration::from_millis(ms),
        }
    }

    fn fail() -> Outcome {
        Outcome {
            result: Err(Failure::Timeout),
            elapsed: Duration::from_millis(5),
        }
    }

    #[test]
    fn first_result_decides_then_thresholds_are_exact() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut st = TargetState::default();
        assert_eq!(st.status().healthy, None);
        assert_eq!(st.record(&ok(1), 3, 2, 0.3, t0), Some(true));
        assert_eq!(st.status().since, Some(t0));
        assert_eq!(st.status().changes, 0);
        // Two failures: still healthy; the third flips it.
        assert_eq!(st.record(&fail(), 3, 2, 0.3, t0), None);
        assert_eq!(st.record(&fail(), 3, 2, 0.3, t0), None);
        // A success in between resets the count.
        assert_eq!(st.record(&ok(1), 3, 2, 0.3, t0), None);
        assert_eq!(st.record(&fail(), 3, 2, 0.3, t0), None);
        assert_eq!(st.record(&fail(), 3, 2, 0.3, t0), None);
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(st.record(&fail(), 3, 2, 0.3, t1), Some(false));
        assert_eq!(st.status().since, Some(t1));
        assert_eq!(st.status().last_failure, Some(Failure::Timeout));
        // One success is not enough with success_threshold 2.
        assert_eq!(st.record(&ok(1), 3, 2, 0.3, t1), None);
        assert_eq!(st.record(&fail(), 3, 2, 0.3, t1), None);
        assert_eq!(st.record(&ok(1), 3, 2, 0.3, t1), None);
        assert_eq!(st.record(&ok(1), 3, 2, 0.3, t1), Some(true));
        assert_eq!(st.status().probes, 11);
        assert_eq!(st.status().changes, 2);
        assert_eq!(st.status().samples, 5);
    }

    #[test]
    fn a_first_failure_is_unhealthy_at_once() {
        let mut st = TargetState::default();
        assert_eq!(
            st.record(&fail(), 3, 2, 0.3, SystemTime::UNIX_EPOCH),
            Some(false)
        );
        assert_eq!(st.status().latency_ema, None);
        assert_eq!(st.status().samples, 0);
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change() {
        let mut st = TargetState::default();
        let t = SystemTime::UNIX_EPOCH;
        assert_eq!(st.record(&ok(1), 1, 1, 0.3, t), Some(true));
        assert_eq!(st.record(&fail(), 1, 1, 0.3, t), Some(false));
        assert_eq!(st.record(&ok(1), 1, 1, 0.3, t), Some(true));
    }

    #[test]
    fn ema_math() {
        let mut st = TargetState::default();
        let t = SystemTime::UNIX_EPOCH;
        st.record(&ok(10), 3, 2, 0.3, t);
        assert_eq!(st.status().latency_ema, Some(Duration::from_millis(10)));
        st.record(&ok(20), 3, 2, 0.3, t);
        // 0.3·20 + 0.7·10 = 13
        let ema = st.status().latency_ema.unwrap().as_secs_f64() * 1000.0;
        assert!((ema - 13.0).abs() < 1e-6, "{ema}");
        st.record(&fail(), 3, 2, 0.3, t);
        st.record(&ok(0), 3, 2, 0.3, t);
        // 0.3·0 + 0.7·13 = 9.1; failures do not move it.
        let ema = st.status().latency_ema.unwrap().as_secs_f64() * 1000.0;
        assert!((ema - 9.1).abs() < 1e-6, "{ema}");
        assert_eq!(st.status().samples, 3);
        // α = 1 tracks the last sample.
        st.record(&ok(42), 3, 2, 1.0, t);
        assert_eq!(st.status().latency_ema, Some(Duration::from_millis(42)));
    }
}
