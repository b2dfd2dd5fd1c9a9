//! Predictive draining: CPU and memory from `/proc`, error rate from the
//! backend's own failed checks per window. When a signal crosses its
//! threshold the backend's weight share ramps down to 0 over the signal's
//! `bleed_duration`; it ramps back up at the same rate once every signal
//! has cleared, where clearing needs the value below the threshold by
//! [`HYSTERESIS`] of it (no flapping at the edge).

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// A signal clears below `threshold × (1 − HYSTERESIS)`.
pub(crate) const HYSTERESIS: f64 = 0.10;

/// One signal's over/under state with hysteresis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Signal {
    /// Over its threshold (not cleared yet).
    pub(crate) active: bool,
}

impl Signal {
    /// Feeds one sample; returns whether the signal is active. A threshold
    /// of 0 or less turns the signal off.
    pub(crate) fn update(&mut self, value: f64, threshold: f64) -> bool {
        if threshold <= 0.0 || !value.is_finite() {
            self.active = false;
        } else if self.active {
            if value < threshold * (1.0 - HYSTERESIS) {
                self.active = false;
            }
        } else if value >= threshold {
            self.active = true;
        }
        self.active
    }
}

/// The weight share of one backend, per mille, moving at a bounded rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ramp {
    share: f64,
}

impl Default for Ramp {
    fn default() -> Self {
        Self { share: 1000.0 }
    }
}

impl Ramp {
    /// Moves the share toward 0 (`draining`) or 1000 by at most
    /// `dt / bleed × 1000`; returns the share now.
    pub(crate) fn step(&mut self, draining: bool, dt: Duration, bleed: Duration) -> u32 {
        let delta = if bleed.is_zero() {
            1000.0
        } else {
            1000.0 * dt.as_secs_f64() / bleed.as_secs_f64()
        };
        self.share = if draining {
            (self.share - delta).max(0.0)
        } else {
            (self.share + delta).min(1000.0)
        };
        self.permille()
    }

    /// The share now, per mille.
    pub(crate) fn permille(&self) -> u32 {
        self.share.round() as u32
    }
}

/// Failed-check share over a sliding window.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorWindow {
    samples: VecDeque<(Instant, bool)>,
}

impl ErrorWindow {
    /// Records one check result.
    pub(crate) fn record(&mut self, at: Instant, ok: bool) {
        self.samples.push_back((at, ok));
        // Bounded whatever the window: a check more than 4 per second
        // for an hour is not kept.
        while self.samples.len() > 16_384 {
            self.samples.pop_front();
        }
    }

    /// Percent of failed checks within `window` of `now`; `None` without
    /// a check in it.
    pub(crate) fn rate(&mut self, now: Instant, window: Duration) -> Option<f64> {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
        if self.samples.is_empty() {
            return None;
        }
        let failed = self.samples.iter().filter(|(_, ok)| !ok).count();
        Some(100.0 * failed as f64 / self.samples.len() as f64)
    }
}

/// CPU busy percent between two `/proc/stat` readings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Reads `/proc/stat`; the busy percent since the last call (`None` on
    /// the first call or when `/proc` is unreadable).
    pub(crate) fn sample(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        self.feed(&text)
    }

    /// [`CpuSampler::sample`] on given `/proc/stat` text.
    pub(crate) fn feed(&mut self, stat: &str) -> Option<f64> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 4 {
            return None;
        }
        // user nice system idle iowait irq softirq steal (guest is in user).
        let total: u64 = v.iter().take(8).sum();
        let idle = v[3] + v.get(4).copied().unwrap_or(0);
        let prev = self.last.replace((total, idle))?;
        let dt = total.checked_sub(prev.0)?;
        let di = idle.checked_sub(prev.1)?;
        if dt == 0 {
            return Some(0.0);
        }
        Some(100.0 * (dt.saturating_sub(di)) as f64 / dt as f64)
    }
}

/// Memory used percent from `/proc/meminfo` text (MemAvailable-based).
pub(crate) fn memory_used(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?;
    if total <= 0.0 {
        return None;
    }
    Some(100.0 * (1.0 - avail / total).clamp(0.0, 1.0))
}

/// Reads `/proc/meminfo`.
pub(crate) fn sample_memory() -> Option<f64> {
    memory_used(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_has_hysteresis() {
        let mut s = Signal::default();
        assert!(!s.update(89.0, 90.0));
        assert!(s.update(90.0, 90.0));
        // Below the threshold but inside the band: still active.
        assert!(s.update(85.0, 90.0));
        assert!(!s.update(80.0, 90.0));
        assert!(!s.update(85.0, 90.0), "re-activates only at the threshold");
        assert!(!s.update(100.0, 0.0), "threshold 0 turns it off");
    }

    #[test]
    fn ramp_is_gradual_both_ways() {
        let mut r = Ramp::default();
        let bleed = Duration::from_secs(30);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(r.step(true, Duration::from_secs(5), bleed));
        }
        assert_eq!(seen, vec![833, 667, 500, 333, 167, 0]);
        assert_eq!(r.step(true, Duration::from_secs(5), bleed), 0);
        assert_eq!(r.step(false, Duration::from_secs(15), bleed), 500);
        assert_eq!(r.step(false, Duration::from_secs(60), bleed), 1000);
        assert_eq!(r.step(true, Duration::from_secs(1), Duration::ZERO), 0);
    }

    #[test]
    fn error_window_slides() {
        let t0 = Instant::now();
        let mut w = ErrorWindow::default();
        assert_eq!(w.rate(t0, Duration::from_secs(60)), None);
        w.record(t0, true);
        w.record(t0 + Duration::from_secs(1), false);
        w.record(t0 + Duration::from_secs(2), false);
        w.record(t0 + Duration::from_secs(3), true);
        let r = w.rate(t0 + Duration::from_secs(3), Duration::from_secs(60));
        assert_eq!(r, Some(50.0));
        // The first two leave the window.
        let r = w.rate(t0 + Duration::from_millis(61_500), Duration::from_secs(60));
        assert_eq!(r, Some(50.0));
        let r = w.rate(t0 + Duration::from_millis(62_500), Duration::from_secs(60));
        assert_eq!(r, Some(0.0));
    }

    #[test]
    fn cpu_and_memory_parse_proc_text() {
        let mut c = CpuSampler::default();
        assert_eq!(c.feed("cpu  100 0 100 800 0 0 0 0 0 0\n"), None);
        // +300 total, of which +100 idle: 66.7% busy.
        let busy = c.feed("cpu  200 0 200 900 0 0 0 0 0 0\n").unwrap();
        assert!((busy - 66.666).abs() < 0.1, "{busy}");
        let m = memory_used("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:   250 kB\n");
        assert_eq!(m, Some(75.0));
        assert_eq!(memory_used("garbage"), None);
    }
}
