//! The snapshot stream client: one task per configured controlplane.
//!
//! Each task subscribes, applies what arrives (full snapshots, deltas against
//! the last full one of the same stream), and hands the result to the
//! [`Publisher`], which validates, serves and caches it. A broken or ended
//! stream is a reconnect with exponential backoff and jitter; the served
//! snapshot is untouched meanwhile (STYLE habit 11).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc, OnceLock},
    time::Duration,
};

use opengslb_proto::{
    snapshot_service_client::SnapshotServiceClient, snapshot_update::Kind, SubscribeRequest,
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
                return false;
            }
        };
        drop(prev);
        let _guard = self.lock.lock().await;
        let generation = snap.generation();
        match self.handle.get() {
            None => {
                let _ = self.handle.set(Arc::new(SnapshotHandle::new(snap, false)));
                self.ready.notify_waiters();
            }
            Some(h) => {
                if !h.is_from_cache() && generation <= h.generation() {
                    tracing::debug!(generation, "snapshot not newer than the one served");
                    return false;
                }
                h.store(snap);
            }
        }
        self.metrics.snapshots_applied.fetch_add(1, Relaxed);
        tracing::info!(
            generation,
            origin = %proto.origin,
            compile_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "serving snapshot"
        );
        self.cache_later(encoded);
        true
    }

    /// Hands `encoded` to the cache writer. The newest snapshot is written
    /// at once when the writer is idle; while it is busy, or within
    /// [`CACHE_WRITE_GAP`] of its last write, newer snapshots replace the
    /// pending one, so a controlplane publishing 100 generations a second
    /// costs the dataplane ten file writes and fsyncs a second, not 100.
    /// The file is never more than one gap behind what is served.
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
    publisher: &Publisher,
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
    // than decoded (several heap blocks per name): it is decoded only when a
    // delta arrives, and dropped again once the result is published.
    let mut base: Option<Arc<[u8]>> = None;
    let mut got_any = false;
    loop {
        let update = match stream.message().await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(got_any),
            Err(s) => return Err((got_any, s.message().to_string())),
        };
        got_any = true;
        let received = std::time::Instant::now();
        let full = match update.kind {
            Some(Kind::Full(s)) => s,
            Some(Kind::Delta(d)) => {
                let Some(b) = base.as_ref() else {
                    publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                    return Err((got_any, "delta before any full snapshot".into()));
                };
                let Ok(b) = crate::cache::decode_snapshot(&b[..]) else {
                    publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                    return Err((got_any, "delta base does not decode".into()));
                };
                match delta::apply_owned(b, d) {
                    Ok(next) => next,
                    Err(e) => {
                        publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                        return Err((got_any, e.to_string()));
                    }
                }
            }
            None => {
                publisher.metrics.snapshots_rejected.fetch_add(1, Relaxed);
                tracing::warn!(%uri, "empty snapshot update ignored");
                continue;
            }
        };
        // Later deltas are computed against what was sent, valid or not.
        let encoded: Arc<[u8]> = full.encode_to_vec().into();
        let nodes = full.nodes.len();
        if publisher.publish_encoded(&full, encoded.clone()).await {
            tracing::info!(
                generation = full.generation,
                nodes,
                elapsed_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
                "snapshot applied (validated, compiled, served, cached)"
            );
        }
        drop(full);
        base = Some(encoded);
        // The decoded message is gone: give its pages back now (a big one
        // only; small updates, which may come 100 times a second, leave
        // little behind and the allocator purges freed pages itself).
        if base.as_ref().is_some_and(|b| b.len() >= 1 << 20) {
            crate::memory::release_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
