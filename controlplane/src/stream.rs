//! The snapshot stream: `SnapshotService.Subscribe` for any number of
//! dataplanes.
//!
//! The current snapshot lives in a `watch` channel. A new subscriber gets it
//! in full; after that, each newer snapshot is sent as a delta against the
//! one sent just before on the same stream (or in full when a delta would not
//! be smaller, or zones were added, removed or reordered — nodes refer to
//! zones by index). The geo table travels only when its own generation moved.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use futures::Stream;
use opengslb_proto::{
    snapshot_service_server::SnapshotService, snapshot_update::Kind, Snapshot, SnapshotDelta,
    SnapshotUpdate, SubscribeRequest,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Publishes compiled snapshots to every subscriber.
#[derive(Debug, Clone)]
pub struct SnapshotStream {
    current: watch::Sender<Arc<Snapshot>>,
    subscribers: Arc<AtomicUsize>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

// === impl SnapshotStream ===

impl SnapshotStream {
    /// A stream serving `first` until [`SnapshotStream::publish`] replaces it.
    pub fn new(first: Snapshot) -> Self {
        Self {
            current: watch::Sender::new(Arc::new(first)),
            subscribers: Arc::new(AtomicUsize::new(0)),
            metrics: None,
        }
    }

    /// Records pushes (latency, generation per dataplane) in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Replaces the current snapshot; every subscriber is sent the change.
    pub fn publish(&self, next: Snapshot) {
        self.current.send_replace(Arc::new(next));
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// A receiver woken at every publish (admin `WatchHealth`).
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.current.subscribe()
    }

    /// Number of connected dataplanes.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl SnapshotService for SnapshotStream {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SnapshotUpdate, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let req = request.into_inner();
        let mut rx = self.current.subscribe();
        let (tx, out) = mpsc::channel::<Result<SnapshotUpdate, Status>>(4);
        let subscribers = self.subscribers.clone();
        subscribers.fetch_add(1, Ordering::Relaxed);
        let metrics = self.metrics.clone();
        // A label: bounded in length, one per connected dataplane.
        let label: String = if req.node_id.is_empty() {
            peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        } else {
            req.node_id.chars().take(64).collect()
        };
        tracing::info!(node_id = %req.node_id, ?peer, have = req.have_generation, "dataplane subscribed");
        tokio::spawn(async move {
            let mut sent = rx.borrow_and_update().clone();
            let first = SnapshotUpdate {
                kind: Some(Kind::Full((*sent).clone())),
            };
            if tx.send(Ok(first)).await.is_ok() {
                if let Some(m) = &metrics {
                    m.pushed(&label, sent.generation, true);
                }
                while rx.changed().await.is_ok() {
                    let next = rx.borrow_and_update().clone();
                    if next.generation == sent.generation {
                        continue;
                    }
                    let update = update_between(&sent, &next);
                    if tx.send(Ok(update)).await.is_err() {
                        break;
                    }
                    if let Some(m) = &metrics {
                        m.pushed(&label, next.generation, false);
                    }
                    sent = next;
                }
            }
            subscribers.fetch_sub(1, Ordering::Relaxed);
            if let Some(m) = &metrics {
                m.unsubscribed(&label);
            }
            tracing::info!(node_id = %req.node_id, ?peer, "dataplane unsubscribed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// The update that takes a subscriber from `old` to `new`.
pub fn update_between(old: &Snapshot, new: &Snapshot) -> SnapshotUpdate {
    let full = || SnapshotUpdate {
        kind: Some(Kind::Full(new.clone())),
    };
    let same_zone_order = old.zones.len() == new.zones.len()
        && old
            .zones
            .iter()
            .zip(&new.zones)
            .all(|(a, b)| a.apex == b.apex);
    if !same_zone_order {
        return full();
    }
    let delta = diff(old, new);
    if delta.encoded_len() * 2 > new.encoded_len() {
        return full();
    }
    SnapshotUpdate {
        kind: Some(Kind::Delta(delta)),
    }
}

/// Delta from `old` to `new` (zone order must match).
pub fn diff(old: &Snapshot, new: &Snapshot) -> SnapshotDelta {
    let zones = new
        .zones
        .iter()
        .zip(&old.zones)
        .filter(|(n, o)| n != o)
        .map(|(n, _)| n.clone())
        .collect();
    let old_nodes: HashMap<&[u8], &opengslb_proto::Node> =
        old.nodes.iter().map(|n| (n.name.as_slice(), n)).collect();
    let new_names: std::collections::HashSet<&[u8]> =
        new.nodes.iter().map(|n| n.name.as_slice()).collect();
    let upsert_nodes = new
        .nodes
        .iter()
        .filter(|n| old_nodes.get(n.name.as_slice()) != Some(n))
        .cloned()
        .collect();
    let remove_nodes = old
        .nodes
        .iter()
        .filter(|n| !new_names.contains(n.name.as_slice()))
        .map(|n| n.name.clone())
        .collect();
    let geo_generation = |s: &Snapshot| s.geo.as_ref().map(|g| g.generation);
    let geo = (geo_generation(old) != geo_generation(new)
        || old.geo.is_none() != new.geo.is_none())
    .then(|| new.geo.clone())
    .flatten();
    let options = (old.options != new.options)
        .then_some(new.options)
        .flatten();
    SnapshotDelta {
        base_generation: old.generation,
        generation: new.generation,
        zones,
        upsert_nodes,
        remove_nodes,
        geo,
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengslb_proto::{GeoRange, GeoTable, Node, RRset, Zone};

    fn snap(generation: u64, geo_gen: u64, ttl: u32) -> Snapshot {
        Snapshot {
            generation,
            zones: vec![Zone {
                apex: b"\x04test\x00".to_vec(),
                ..Default::default()
            }],
            nodes: (0..50u8)
                .map(|i| Node {
                    name: vec![1, b'a' + (i % 26), 1, i, 4, b't', b'e', b's', b't', 0],
                    rrsets: vec![RRset {
                        rtype: 16,
                        ttl: if i == 7 { ttl } else { 60 },
                        rdata: vec![vec![3, b'a', b'b', b'c']],
                        rrsig: vec![],
                    }],
                    ..Default::default()
                })
                .collect(),
            geo: Some(GeoTable {
                generation: geo_gen,
                regions: vec!["r".into()],
                v4: (0..1000u32)
                    .map(|i| GeoRange {
                        start: i.to_be_bytes().to_vec(),
                        prefix_len: 32,
                        region: 0,
                        custom: false,
                    })
                    .collect(),
                v6: vec![],
                default_region: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn health_change_is_a_small_delta_without_geo() {
        let (a, b) = (snap(1, 5, 60), snap(2, 5, 30));
        let Some(Kind::Delta(d)) = update_between(&a, &b).kind else {
            panic!("expected a delta");
        };
        assert_eq!(d.base_generation, 1);
        assert_eq!(d.upsert_nodes.len(), 1);
        assert!(d.geo.is_none(), "geo must not be resent on a record change");
        assert!(d.remove_nodes.is_empty());
    }

    #[test]
    fn geo_change_carries_geo_and_zone_change_goes_full() {
        let (a, b) = (snap(1, 5, 60), snap(2, 6, 60));
        match update_between(&a, &b).kind {
            Some(Kind::Delta(d)) => assert_eq!(d.geo.map(|g| g.generation), Some(6)),
            Some(Kind::Full(f)) => assert_eq!(f.geo.map(|g| g.generation), Some(6)),
            None => panic!("empty update"),
        }
        let mut c = snap(3, 5, 60);
        c.zones.push(Zone {
            apex: b"\x05other\x00".to_vec(),
            ..Default::default()
        });
        assert!(matches!(update_between(&a, &c).kind, Some(Kind::Full(_))));
    }
}
