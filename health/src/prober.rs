//! The scheduler: one task per distinct [`Target`], probing it once per
//! interval.
//!
//! A new target is probed at once (start-up truth: its first result decides
//! its state, see [`Prober::settled`]); after that its probes run at a fixed
//! rate with a per-target phase drawn at random in `[0, interval)`, so
//! thousands of targets added together do not keep firing together. A probe
//! is bounded by its timeout (< interval), so a target's schedule never
//! slips and one target's hang never touches another's task.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::AbortHandle, time::Instant};

use crate::{
    check::Target,
    error::Result,
    probe::{probe, Outcome},
    state::{Status, TargetState},
    tls::TlsConfigs,
};

/// Told about every probe, from the probing task, right after the state is
/// updated. Must not block.
pub trait Observer: Send + Sync + 'static {
    /// `changed`: this outcome changed (or first made) the decision.
    fn probed(&self, target: &Target, outcome: &Outcome, status: &Status, changed: bool);
}

/// Probes a set of targets until dropped.
pub struct Prober {
    tls: TlsConfigs,
    observer: Arc<dyn Observer>,
    targets: Mutex<HashMap<Target, Running>>,
}

struct Running {
    shared: Arc<Shared>,
    task: AbortHandle,
}

struct Shared {
    state: Mutex<TargetState>,
    /// EMA smoothing factor, as `f64` bits (a reload may change it).
    alpha: AtomicU64,
    /// Becomes true once the first result is in.
    decided: watch::Sender<bool>,
}

// === impl Prober ===

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("targets", &lock(&self.targets).len())
            .finish()
    }
}

impl Prober {
    /// A prober with no targets yet.
    pub fn new(observer: Arc<dyn Observer>) -> Result<Self> {
        Ok(Self {
            tls: TlsConfigs::new()?,
            observer,
            targets: Mutex::new(HashMap::new()),
        })
    }

    /// Starts probing each target of `wanted` not probed yet (its first
    /// probe at once) and sets the EMA factor `α` of every one. Returns the
    /// targets started. Stops nothing (see [`Prober::retain`]). Targets
    /// whose check does not validate are skipped with an error log.
    ///
    /// Must be called within a tokio runtime.
    pub fn add(&self, wanted: impl IntoIterator<Item = (Target, f64)>) -> Vec<Target> {
        let mut targets = lock(&self.targets);
        let mut started = Vec::new();
        for (target, alpha) in wanted {
            let alpha = if alpha > 0.0 && alpha <= 1.0 {
                alpha
            } else {
                0.3
            };
            if let Some(running) = targets.get(&target) {
                running
                    .shared
                    .alpha
                    .store(alpha.to_bits(), Ordering::Relaxed);
                continue;
            }
            if let Err(e) = target.check.validate() {
                tracing::error!(addr = %target.addr, error = %e, "health check not started");
                continue;
            }
            let shared = Arc::new(Shared {
                state: Mutex::new(TargetState::default()),
                alpha: AtomicU64::new(alpha.to_bits()),
                decided: watch::Sender::new(false),
            });
            let task = tokio::spawn(run(
                target.clone(),
                shared.clone(),
                self.tls.clone(),
                self.observer.clone(),
            ))
            .abort_handle();
            targets.insert(target.clone(), Running { shared, task });
            started.push(target);
        }
        started
    }

    /// Stops probing every target not in `keep` (its state is dropped).
    pub fn retain(&self, keep: &HashSet<Target>) {
        lock(&self.targets).retain(|t, running| {
            let keep = keep.contains(t);
            if !keep {
                running.task.abort();
            }
            keep
        });
    }

    /// Waits until each of `targets` has its first result; bounded by the
    /// longest of their timeouts (plus scheduling slack).
    pub async fn settled(&self, targets: &[Target]) {
        let mut waits = Vec::new();
        let mut bound = Duration::ZERO;
        {
            let map = lock(&self.targets);
            for t in targets {
                if let Some(r) = map.get(t) {
                    waits.push(r.shared.decided.subscribe());
                    bound = bound.max(t.check.timeout);
                }
            }
        }
        let all = async {
            for mut rx in waits {
                let _ = rx.wait_for(|d| *d).await;
            }
        };
        let _ = tokio::time::timeout(bound + Duration::from_millis(250), all).await;
    }

    /// The state of `target`, when it is probed.
    pub fn status(&self, target: &Target) -> Option<Status> {
        lock(&self.targets)
            .get(target)
            .map(|r| lock(&r.shared.state).status())
    }

    /// Number of distinct targets probed.
    pub fn len(&self) -> usize {
        lock(&self.targets).len()
    }

    /// Whether nothing is probed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for running in lock(&self.targets).values() {
            running.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This target's phase in `[0, interval)`, random per process.
fn phase(target: &Target) -> Duration {
    let h = std::collections::hash_map::RandomState::new().hash_one(target);
    // 53 random bits → [0, 1).
    let f = (h >> 11) as f64 / (1u64 << 53) as f64;
    target.check.interval.mul_f64(f)
}

/// The probing loop of one target.
async fn run(target: Target, shared: Arc<Shared>, tls: TlsConfigs, observer: Arc<dyn Observer>) {
    let interval = target.check.interval;
    let (fail_n, ok_n) = (
        target.check.failure_threshold,
        target.check.success_threshold,
    );
    let mut next = Instant::now();
    let mut first = true;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let outcome = probe(&target, &tls).await;
        let alpha = f64::from_bits(shared.alpha.load(Ordering::Relaxed));
        let (changed, status) = {
            let mut st = lock(&shared.state);
            let changed = st.record(&outcome, fail_n, ok_n, alpha, SystemTime::now());
            (changed, st.status())
        };
        if let Some(healthy) = changed {
            match outcome.result {
                Ok(_) => tracing::info!(addr = %target.addr, healthy, "health decision"),
                Err(f) => {
                    tracing::info!(addr = %target.addr, healthy, failure = %f, "health decision")
                }
            }
        }
        observer.probed(&target, &outcome, &status, changed.is_some());
        if first {
            first = false;
            shared.decided.send_replace(true);
            next = started + phase(&target);
        } else {
            next += interval;
        }
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::net::TcpListener;

    use super::*;
    use crate::check::{Check, CheckKind};

    #[derive(Default)]
    struct Count {
        probes: AtomicUsize,
        changes: AtomicUsize,
    }

    impl Observer for Count {
        fn probed(&self, _: &Target, _: &Outcome, _: &Status, changed: bool) {
            self.probes.fetch_add(1, Ordering::SeqCst);
            if changed {
                self.changes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn tcp(addr: std::net::SocketAddr, interval_ms: u64) -> Target {
        Target {
            addr,
            check: Check {
                kind: CheckKind::Tcp,
                interval: Duration::from_millis(interval_ms),
                timeout: Duration::from_millis(interval_ms / 2),
                failure_threshold: 2,
                success_threshold: 2,
                ..Check::default()
            },
        }
    }

    #[tokio::test]
    async fn a_shared_target_is_probed_once_per_interval_and_settles_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        let count = Arc::new(Count::default());
        let prober = Prober::new(count.clone()).unwrap();
        let t = tcp(addr, 200);
        // The same target named three times (three servers/regions) is one.
        let started = prober.add([(t.clone(), 0.3), (t.clone(), 0.3), (t.clone(), 0.5)]);
        assert_eq!(started.len(), 1);
        assert_eq!(prober.len(), 1);
        prober.settled(&started).await;
        assert_eq!(prober.status(&t).unwrap().healthy, Some(true));
        assert_eq!(count.changes.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let n = count.probes.load(Ordering::SeqCst);
        // First probe + 5 intervals (the phase shifts by < 1 interval).
        assert!((5..=7).contains(&n), "{n} probes in ~1s at 200ms");
        // Adding it again starts nothing.
        assert!(prober.add([(t.clone(), 0.3)]).is_empty());
        prober.retain(&HashSet::new());
        assert!(prober.is_empty());
        let before = count.probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            count.probes.load(Ordering::SeqCst),
            before,
            "stopped target still probed"
        );
    }

    #[tokio::test]
    async fn a_hanging_target_does_not_delay_another() {
        // Accepts but never answers HTTP: every probe times out.
        let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hang_addr = hang.local_addr().unwrap();
        tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                keep.push(s);
            }
        });
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move { while up.accept().await.is_ok() {} });
        let prober = Prober::new(Arc::new(Count::default())).unwrap();
        let slow = Target {
            addr: hang_addr,
            check: Check {
                kind: CheckKind::Http,
                interval: Duration::from_millis(400),
                timeout: Duration::from_millis(300),
                ..Check::default()
            },
        };
        let fast = tcp(up_addr, 100);
        let started = Instant::now();
        let new = prober.add([(slow.clone(), 0.3), (fast.clone(), 0.3)]);
        prober.settled(std::slice::from_ref(&fast)).await;
        assert!(started.elapsed() < Duration::from_millis(150));
        assert_eq!(prober.status(&fast).unwrap().healthy, Some(true));
        prober.settled(&new).await;
        assert!(started.elapsed() < Duration::from_millis(600));
        let s = prober.status(&slow).unwrap();
        assert_eq!(s.healthy, Some(false));
        assert_eq!(s.last_failure, Some(crate::Failure::Timeout));
    }
}
