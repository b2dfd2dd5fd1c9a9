//! The one swappable snapshot every worker answers from.
//!
//! Exactly one `ArcSwap<Snapshot>`; writers publish whole compiled snapshots
//! (records, health, options together, so they can never tear), readers go
//! through an `arc_swap::Cache` per worker so a load is a pointer compare.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use arc_swap::{ArcSwap, Cache};

use crate::snapshot::Snapshot;

/// Shared, swappable compiled snapshot.
#[derive(Debug)]
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
    /// True while the published snapshot came from the local cache and no
    /// controlplane has sent one since start.
    from_cache: AtomicBool,
}

/// A worker's cached view of the handle.
pub type SnapshotCache<'a> = Cache<&'a ArcSwap<Snapshot>, Arc<Snapshot>>;

// === impl SnapshotHandle ===

impl SnapshotHandle {
    /// A handle serving `first`.
    pub fn new(first: Snapshot, from_cache: bool) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
            from_cache: AtomicBool::new(from_cache),
        }
    }

    /// Publishes `next`; a no-op (returns false) when it carries the
    /// generation already served, unless the served one came from the cache.
    /// The routing-decision counters of names that stay carry over.
    pub fn store(&self, mut next: Snapshot) -> bool {
        let was_cache = self.from_cache.swap(false, Ordering::AcqRel);
        let current = self.current.load();
        if !was_cache && current.generation() == next.generation() {
            return false;
        }
        next.adopt_counters(&current);
        drop(current);
        self.current.store(Arc::new(next));
        true
    }

    /// Publishes `next`, patched from `prev` (`Snapshot::patch`, which
    /// shares `prev`'s counters): only while `prev` is the snapshot served
    /// and did not come from the cache. Returns whether it was stored (the
    /// caller then compiles in full instead).
    pub fn store_patched(&self, next: Arc<Snapshot>, prev: &Arc<Snapshot>) -> bool {
        let current = self.current.load();
        if !Arc::ptr_eq(&current, prev)
            || self.is_from_cache()
            || next.generation() <= current.generation()
        {
            return false;
        }
        drop(current);
        self.current.store(next);
        true
    }

    /// The generation being served.
    pub fn generation(&self) -> u64 {
        self.current.load().generation()
    }

    /// Whether the served snapshot is still the one loaded from the cache.
    pub fn is_from_cache(&self) -> bool {
        self.from_cache.load(Ordering::Acquire)
    }

    /// A per-worker read cache.
    pub fn cache(&self) -> SnapshotCache<'_> {
        Cache::new(&self.current)
    }

    /// A full (non-cached) load, for slow paths.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}
