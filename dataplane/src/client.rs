//! The snapshot stream client: one task per configured controlplane.
//!
//! Each task subscribes, applies what arrives (full snapshots, deltas against
//! the last full one of the same stream), and hands the result to the
//! [`Publisher`], which validates, serves and caches it. A broken or ended
//! stream is a reconnect with exponential backoff and jitter; the served
//! snapshot is untouched meanwhile (STYLE habit 11).
//!
//! A delta that only changes existing names (health, weights, overrides,
//! signatures, the SOA) is applied to the served compiled snapshot itself
//! (`Snapshot::patch`: the changed nodes compiled, all else shared), in
//! time proportional to the delta, and served at once. The stream's full
//! proto snapshot, which later full compiles and the cache file need, is
//! brought up to date off that path: such deltas are queued and folded into
//! it by a background task (`BaseKeeper`), which then hands the result to
//! the cache writer. Any other delta (names added or removed, a new geo
//! table or zone) waits for the queue to drain and is compiled in full.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, OnceLock},
    time::Duration,
};

use opengslb_proto::{
    snapshot_service_client::SnapshotServiceClient, snapshot_update::Kind, SnapshotDelta,
    SubscribeRequest,
};
use prost::Message;
use tokio::sync::{Mutex, Notify};

use crate::{
    cache::SnapshotCacheFile, delta, handle::SnapshotHandle, metrics::Metrics, snapshot::Snapshot,
};

/// Largest snapshot message accepted from a controlplane.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Validates, publishes and caches snapshots from any stream.
#[derive(Debug)]
pub struct Publisher {
    handle: Arc<OnceLock<Arc<SnapshotHandle>>>,
    ready: Notify,
    cache: SnapshotCacheFile,
    metrics: Arc<Metrics>,
    /// Serialises publishes across streams.
    lock: Mutex<()>,
    /// Coalesces cache writes (see [`Publisher::cache_later`]).
    cache_writer: Arc<std::sync::Mutex<CacheWriter>>,
}

// === impl Publisher ===

impl Publisher {
    /// A publisher with nothing served yet.
    pub fn new(cache: SnapshotCacheFile, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            handle: Arc::new(OnceLock::new()),
            ready: Notify::new(),
            cache,
            metrics,
            lock: Mutex::new(()),
            cache_writer: Arc::default(),
        })
    }

    /// The shared slot holding the handle once a first snapshot exists.
    pub fn handle_slot(&self) -> Arc<OnceLock<Arc<SnapshotHandle>>> {
        self.handle.clone()
    }

    /// Serves the cached snapshot, if there is a valid one.
    pub fn load_cache(&self) -> bool {
        let proto = match self.cache.load() {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring snapshot cache");
                return false;
            }
        };
        match Snapshot::try_from(&proto) {
            Ok(snap) => {
                tracing::info!(
                    generation = snap.generation(),
                    path = %self.cache.path().display(),
                    "serving cached snapshot until a controlplane answers"
                );
                let _ = self.handle.set(Arc::new(SnapshotHandle::new(snap, true)));
                self.ready.notify_waiters();
                drop(proto);
                crate::memory::release_freed();
                true
            }
            Err(e) => {
                self.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cached snapshot is invalid; ignoring it");
                false
            }
        }
    }

    /// Waits until some snapshot is being served.
    pub async fn ready(&self) -> Arc<SnapshotHandle> {
        loop {
            let notified = self.ready.notified();
            if let Some(h) = self.handle.get() {
                return h.clone();
            }
            notified.await;
        }
    }

    /// Validates `proto`, serves it if it is newer, and caches it.
    /// Returns whether it is now served.
    pub async fn publish(&self, proto: &opengslb_proto::Snapshot) -> bool {
        self.publish_encoded(proto, proto.encode_to_vec().into())
            .await
    }

    /// [`Publisher::publish`] with `encoded`, the prost encoding of `proto`,
    /// written to the cache as it is (no second copy of the snapshot).
    pub async fn publish_encoded(
        &self,
        proto: &opengslb_proto::Snapshot,
        encoded: Arc<[u8]>,
    ) -> bool {
        matches!(self.publish_full(proto, encoded).await, Some((_, true)))
    }

    /// Serves `next`, patched from `prev`, when `prev` is still the one
    /// served (see [`SnapshotHandle::store_patched`]); nothing is cached
    /// here (the stream's `BaseKeeper` caches the folded snapshot).
    /// Returns whether it is now served.
    async fn publish_patched(&self, next: Arc<Snapshot>, prev: &Arc<Snapshot>) -> bool {
        let _guard = self.lock.lock().await;
        let Some(h) = self.handle.get() else {
            return false;
        };
        let generation = next.generation();
        if !h.store_patched(next, prev) {
            return false;
        }
        self.metrics.snapshots_applied.fetch_add(1, Relaxed);
        tracing::info!(generation, "serving snapshot (patched)");
        true
    }

    /// [`Publisher::publish_encoded`], returning the snapshot now served
    /// and `true`; or the one served and `false` when that one has the
    /// same generation (a reconnect: the same content, which the stream's
    /// next delta may be patched onto); `None` when `proto` is invalid or
    /// older.
    async fn publish_full(
        &self,
        proto: &opengslb_proto::Snapshot,
        encoded: Arc<[u8]>,
    ) -> Option<(Arc<Snapshot>, bool)> {
        let started = std::time::Instant::now();
        // The served snapshot lends its geo table when the generation of the
        // table is unchanged (most updates: health, records).
        let prev = self.handle.get().map(|h| h.load_full());
        let snap = match Snapshot::compile(proto, prev.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                tracing::warn!(
                    generation = proto.generation,
                    error = %e,
                    "rejected snapshot; still serving the previous one"
                );
                return None;
            }
        };
        drop(prev);
        let _guard = self.lock.lock().await;
        let generation = snap.generation();
        let served = match self.handle.get() {
            None => {
                let h = Arc::new(SnapshotHandle::new(snap, false));
                let served = h.load_full();
                let _ = self.handle.set(h);
                self.ready.notify_waiters();
                served
            }
            Some(h) => {
                if !h.is_from_cache() && generation <= h.generation() {
                    tracing::debug!(generation, "snapshot not newer than the one served");
                    // One generation is one content (`SnapshotHandle::store`).
                    return (generation == h.generation()).then(|| (h.load_full(), false));
                }
                h.store(snap);
                // Publishes are serialised by `lock`: this is the one stored.
                h.load_full()
            }
        };
        self.metrics.snapshots_applied.fetch_add(1, Relaxed);
        tracing::info!(
            generation,
            origin = %proto.origin,
            compile_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "serving snapshot"
        );
        self.cache_later(encoded);
        Some((served, true))
    }

    /// Hands `encoded` to the cache writer. The newest snapshot is written
    /// at once when the writer is idle; while it is busy, or within
    /// [`CACHE_WRITE_GAP`] of its last write, newer snapshots replace the
    /// pending one, so a controlplane publishing 100 generations a second
    /// costs the dataplane ten file writes and fsyncs a second, not 100.
    /// The file is never more than one gap (plus, after deltas served by
    /// the patch path, one background fold) behind what is served.
    fn cache_later(&self, encoded: Arc<[u8]>) {
        let mut w = self.cache_writer.lock().unwrap_or_else(|p| p.into_inner());
        w.pending = Some(encoded);
        if w.running {
            return;
        }
        w.running = true;
        drop(w);
        let cache = self.cache.clone();
        let writer = self.cache_writer.clone();
        tokio::task::spawn_blocking(move || loop {
            let next = {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                match w.pending.take() {
                    Some(b) => b,
                    None => {
                        w.running = false;
                        return;
                    }
                }
            };
            if let Err(e) = cache.store_encoded(&next) {
                tracing::warn!(error = %e, "could not write snapshot cache");
            }
            drop(next);
            std::thread::sleep(CACHE_WRITE_GAP);
        });
    }
}

/// Least time between two writes of the snapshot cache file.
const CACHE_WRITE_GAP: Duration = Duration::from_millis(100);

/// The cache writer's state: the newest snapshot not yet written, and
/// whether a writer task is running.
#[derive(Debug, Default)]
struct CacheWriter {
    pending: Option<Arc<[u8]>>,
    running: bool,
}

/// Follows one controlplane forever, reconnecting with backoff.
pub async fn follow(uri: String, node_id: String, publisher: Arc<Publisher>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match stream_once(&uri, &node_id, &publisher).await {
            Ok(got_any) => {
                tracing::warn!(%uri, "snapshot stream ended; reconnecting");
                if got_any {
                    backoff = Duration::from_millis(100);
                }
            }
            Err((got_any, e)) => {
                tracing::warn!(%uri, error = %e, "snapshot stream failed; reconnecting");
                if got_any {
                    backoff = Duration::from_millis(100);
                }
            }
        }
        publisher.metrics.stream_errors.fetch_add(1, Relaxed);
        tokio::time::sleep(backoff + jitter(backoff / 2)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Up to `max` of jitter, so a fleet of dataplanes does not reconnect in step.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let max_ms = u32::try_from(max.as_millis()).unwrap_or(u32::MAX).max(1);
    Duration::from_millis(u64::from(nanos % max_ms))
}

/// One subscription. `Ok(got_any)` when the stream ended cleanly.
async fn stream_once(
    uri: &str,
    node_id: &str,
    publisher: &Arc<Publisher>,
) -> Result<bool, (bool, String)> {
    let endpoint = tonic::transport::Endpoint::from_shared(uri.to_string())
        .map_err(|e| (false, e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| (false, e.to_string()))?;
    let mut client = SnapshotServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let have_generation = publisher.handle.get().map_or(0, |h| h.generation());
    let mut stream = client
        .subscribe(SubscribeRequest {
            node_id: node_id.to_string(),
            have_generation,
        })
        .await
        .map_err(|s| (false, s.message().to_string()))?
        .into_inner();
    tracing::info!(%uri, "subscribed to controlplane");
    // The base for deltas is kept encoded (a few octets per record) rather
    // than decoded (several heap blocks per name), with the deltas served
    // by the patch path since (see `BaseKeeper`).
    let keeper = Arc::new(BaseKeeper::default());
    let _closed = CloseOnDrop(keeper.clone());
    // The snapshot this stream last served, and the zones it was compiled
    // from: what the next delta is patched onto.
    let mut fast: Option<Patchable> = None;
    let mut got_any = false;
    loop {
        let update = match stream.message().await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(got_any),
            Err(s) => return Err((got_any, s.message().to_string())),
        };
        got_any = true;
        let received = std::time::Instant::now();
        let (full, encoded) = match update.kind {
            Some(Kind::Full(s)) => {
                let encoded: Arc<[u8]> = s.encode_to_vec().into();
                keeper.reset(encoded.clone());
                (s, encoded)
            }
            Some(Kind::Delta(d)) => {
                let patched = fast.as_ref().map(|f| f.snap.patch(&f.zones, &d));
                match (patched, fast.as_mut()) {
                    (Some(Ok(Some(next))), Some(f)) => {
                        let next = Arc::new(next);
                        if publisher.publish_patched(next.clone(), &f.snap).await {
                            for z in &d.zones {
                                if let Some(slot) = f.zones.iter_mut().find(|x| x.apex == z.apex) {
                                    *slot = z.clone();
                                }
                            }
                            f.snap = next;
                            tracing::info!(
                                generation = d.generation,
                                nodes = d.upsert_nodes.len(),
                                elapsed_us = micros(received),
                                "snapshot delta applied (patched, served)"
                            );
                            keeper.push(d, publisher);
                            continue;
                        }
                        // Another stream's snapshot is served: compile in full.
                    }
                    (Some(Err(e)), _) => {
                        publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                        tracing::warn!(
                            generation = d.generation,
                            error = %e,
                            "rejected snapshot delta; still serving the previous one"
                        );
                        // Later deltas are computed against it all the same.
                        keeper.push(d, publisher);
                        fast = None;
                        continue;
                    }
                    _ => {}
                }
                // The full path: the base with every queued delta folded in.
                let folding = keeper.fold.lock().await;
                let full = keeper.full_with(d);
                drop(folding);
                match full {
                    Ok(x) => x,
                    Err(e) => {
                        publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                        return Err((got_any, e));
                    }
                }
            }
            None => {
                publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                tracing::warn!(%uri, "empty snapshot update ignored");
                continue;
            }
        };
        let mut full = full;
        let nodes = full.nodes.len();
        let big = encoded.len() >= 1 << 20;
        fast = match publisher.publish_full(&full, encoded).await {
            Some((snap, stored)) => {
                if stored {
                    tracing::info!(
                        generation = full.generation,
                        nodes,
                        elapsed_us = micros(received),
                        "snapshot applied (validated, compiled, served, cached)"
                    );
                }
                Some(Patchable {
                    snap,
                    zones: std::mem::take(&mut full.zones),
                })
            }
            None => None,
        };
        drop(full);
        // The decoded message is gone: give its pages back now (a big one
        // only; small updates, which may come 100 times a second, leave
        // little behind and the allocator purges freed pages itself).
        if big {
            crate::memory::release_freed();
        }
    }
}

/// Microseconds since `t`, for logs.
fn micros(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A served snapshot and the proto zones it was compiled from.
#[derive(Debug)]
struct Patchable {
    snap: Arc<Snapshot>,
    zones: Vec<opengslb_proto::Zone>,
}

/// Least time between two folds of one stream's base: deltas arriving
/// meanwhile are folded together.
const FOLD_GAP: Duration = Duration::from_millis(100);

/// One stream's full snapshot, encoded, and the deltas served since by the
/// patch path, which a background task folds into it (then caches it).
#[derive(Debug, Default)]
struct BaseKeeper {
    state: std::sync::Mutex<Base>,
    /// Held while a fold runs; the full path takes it, so it sees the base
    /// with no delta in flight.
    fold: Mutex<()>,
}

/// The state of a `BaseKeeper`.
#[derive(Debug, Default)]
struct Base {
    /// The full snapshot, encoded (`None` before the first).
    encoded: Option<Arc<[u8]>>,
    /// Deltas on top of `encoded`, oldest first.
    pending: Vec<SnapshotDelta>,
    /// Changes with every new full base: a fold of an older one is dropped.
    epoch: u64,
    /// A fold task is running.
    folding: bool,
    /// The stream has ended: folds no longer write the cache.
    closed: bool,
}

/// Marks a `BaseKeeper` closed when its stream ends.
struct CloseOnDrop(Arc<BaseKeeper>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.lock().closed = true;
    }
}

// === impl BaseKeeper ===

impl BaseKeeper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Base> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `encoded` is the base from now on.
    fn reset(&self, encoded: Arc<[u8]>) {
        let mut st = self.lock();
        st.encoded = Some(encoded);
        st.pending.clear();
        st.epoch += 1;
    }

    /// Queues `delta` (already served) and makes sure a fold will run.
    fn push(self: &Arc<Self>, delta: SnapshotDelta, publisher: &Arc<Publisher>) {
        let mut st = self.lock();
        st.pending.push(delta);
        if st.folding {
            return;
        }
        st.folding = true;
        drop(st);
        let keeper = self.clone();
        let publisher = publisher.clone();
        tokio::task::spawn_blocking(move || keeper.fold_all(&publisher));
    }

    /// Folds queued deltas into the base until none is left, caching each
    /// result.
    fn fold_all(&self, publisher: &Publisher) {
        loop {
            let folding = self.fold.blocking_lock();
            let (encoded, deltas, epoch) = {
                let mut st = self.lock();
                match st.encoded.clone() {
                    Some(e) if !st.pending.is_empty() => {
                        (e, std::mem::take(&mut st.pending), st.epoch)
                    }
                    _ => {
                        st.pending.clear();
                        st.folding = false;
                        return;
                    }
                }
            };
            let folded = fold(&encoded, deltas);
            drop(encoded);
            let mut st = self.lock();
            let cache = match folded {
                Ok(f) if st.epoch == epoch => {
                    st.encoded = Some(f.clone());
                    (!st.closed).then_some(f)
                }
                Ok(_) => None,
                Err(e) => {
                    // Cannot happen for deltas the patch path took (they
                    // chain by generation); the next full update repairs it.
                    tracing::error!(error = %e, "could not fold served deltas into the base");
                    None
                }
            };
            drop(st);
            drop(folding);
            if let Some(f) = cache {
                let big = f.len() >= 1 << 20;
                publisher.cache_later(f);
                if big {
                    crate::memory::release_freed();
                }
            }
            std::thread::sleep(FOLD_GAP);
        }
    }

    /// The full snapshot: the base, the queued deltas and `delta`, which
    /// becomes the base (encoded, returned too). The caller holds `fold`.
    fn full_with(
        &self,
        delta: SnapshotDelta,
    ) -> Result<(opengslb_proto::Snapshot, Arc<[u8]>), String> {
        let (encoded, mut deltas) = {
            let mut st = self.lock();
            let Some(e) = st.encoded.clone() else {
                return Err("delta before any full snapshot".into());
            };
            (e, std::mem::take(&mut st.pending))
        };
        let Ok(base) = crate::cache::decode_snapshot(&encoded[..]) else {
            return Err("delta base does not decode".into());
        };
        drop(encoded);
        deltas.push(delta);
        let full = delta::apply_all(base, deltas).map_err(|e| e.to_string())?;
        let encoded: Arc<[u8]> = full.encode_to_vec().into();
        self.reset(encoded.clone());
        Ok((full, encoded))
    }
}

/// `encoded` (a full snapshot) with `deltas` applied, encoded.
fn fold(encoded: &[u8], deltas: Vec<SnapshotDelta>) -> Result<Arc<[u8]>, String> {
    let base = crate::cache::decode_snapshot(encoded).map_err(|e| e.to_string())?;
    let full = delta::apply_all(base, deltas).map_err(|e| e.to_string())?;
    Ok(full.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deltas served by the patch path are folded into the base in the
    /// background and the result is cached; the full path then sees the
    /// base with all of them, plus its own delta.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn served_deltas_fold_into_the_base_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCacheFile::new(dir.path());
        let publisher = Publisher::new(cache.clone(), Metrics::new(1));
        let base = crate::answer::tests::fixture();
        let keeper = Arc::new(BaseKeeper::default());
        keeper.reset(base.encode_to_vec().into());
        let delta = |g: u64, ttl: u32| {
            let mut node = base.nodes[0].clone();
            for p in &mut node.plans {
                for c in &mut p.candidates {
                    if let Some(r) = c.rrset.as_mut() {
                        r.ttl = ttl;
                    }
                }
            }
            SnapshotDelta {
                base_generation: g,
                generation: g + 1,
                upsert_nodes: vec![node],
                ..Default::default()
            }
        };
        let deltas: Vec<SnapshotDelta> = (0..5u64)
            .map(|i| delta(base.generation + i, 100 + i as u32))
            .collect();
        for d in deltas.clone() {
            keeper.push(d, &publisher);
        }
        let want = delta::apply_all(base.clone(), deltas).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cached = cache.load().unwrap();
            let idle = !keeper.lock().folding;
            if idle && cached.as_ref() == Some(&want) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cache holds generation {:?}, fold idle {idle}",
                cached.map(|c| c.generation)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The full path: pending deltas (none left, or some) and its own.
        keeper.push(delta(want.generation, 7), &publisher);
        let last = delta(want.generation + 1, 8);
        let folding = keeper.fold.lock().await;
        let (full, encoded) = keeper.full_with(last.clone()).unwrap();
        drop(folding);
        let mut expect = want.clone();
        for d in [delta(want.generation, 7), last] {
            expect = delta::apply_owned(expect, d).unwrap();
        }
        assert_eq!(full, expect);
        assert_eq!(crate::cache::decode_snapshot(&encoded[..]).unwrap(), expect);
        // A delta that does not chain is refused, not applied.
        let stray = delta(1, 9);
        let folding = keeper.fold.lock().await;
        assert!(keeper.full_with(stray).is_err());
        drop(folding);
    }

    /// A burst of generations ends with the newest one in the cache file,
    /// however the writes were coalesced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cache_writes_coalesce_and_the_newest_lands() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCacheFile::new(dir.path());
        let publisher = Publisher::new(cache.clone(), Metrics::new(1));
        for generation in 1..=50u64 {
            let snap = opengslb_proto::Snapshot {
                generation,
                origin: "cp".into(),
                ..Default::default()
            };
            publisher.cache_later(snap.encode_to_vec().into());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = cache.load().unwrap().map(|s| s.generation);
            let idle = !publisher.cache_writer.lock().unwrap().running;
            if got == Some(50) && idle {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cache holds {got:?}, writer idle {idle}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The writer started again for a later snapshot.
        let snap = opengslb_proto::Snapshot {
            generation: 51,
            ..Default::default()
        };
        publisher.cache_later(snap.encode_to_vec().into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cache.load().unwrap().map(|s| s.generation), Some(51));
    }
}
