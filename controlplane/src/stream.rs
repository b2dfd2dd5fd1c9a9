//! The snapshot stream: `SnapshotService.Subscribe` for any number of
//! dataplanes.
//!
//! The stream keeps the snapshot in force and the last few steps to it. A
//! new subscriber gets the snapshot in full; after that, each publish is sent
//! as a delta against the one sent just before on the same stream (or in
//! full when a delta would not be smaller, zones were added, removed or
//! reordered — nodes refer to zones by index — or the subscriber fell more
//! than a few publishes behind). A whole snapshot is diffed here; an
//! incremental compile hands over its delta ready made
//! ([`SnapshotStream::publish_delta`]), so a health change never copies,
//! compares or encodes the whole snapshot. The geo table travels only when
//! its own generation moved.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
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

use crate::compile::wire::canonical_cmp;

/// Publishes compiled snapshots to every subscriber.
#[derive(Debug, Clone)]
pub struct SnapshotStream {
    shared: Arc<Mutex<Shared>>,
    /// The generation published last; wakes subscribers.
    current: watch::Sender<u64>,
    subscribers: Arc<AtomicUsize>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The snapshot in force and the recent steps to it.
#[derive(Debug)]
struct Shared {
    /// The snapshot in force (deltas are applied to it in place).
    full: Arc<Snapshot>,
    /// Node name → index in `full.nodes`.
    index: NodeIndex,
    /// The last steps, oldest first.
    log: VecDeque<Step>,
}

/// One publish: from `base` to `generation`, as a delta when small.
#[derive(Debug)]
struct Step {
    base: u64,
    generation: u64,
    /// `None`: subscribers at `base` get the whole snapshot.
    delta: Option<Arc<SnapshotDelta>>,
}

/// Steps kept for subscribers a few publishes behind.
const LOG_STEPS: usize = 32;

/// What a subscriber sends next.
enum Next {
    Deltas(Vec<Arc<SnapshotDelta>>),
    Full(Arc<Snapshot>),
}

// === impl SnapshotStream ===

impl SnapshotStream {
    /// A stream serving `first` until [`SnapshotStream::publish`] replaces it.
    pub fn new(first: Snapshot) -> Self {
        let generation = first.generation;
        Self {
            shared: Arc::new(Mutex::new(Shared {
                index: NodeIndex::of(&first),
                full: Arc::new(first),
                log: VecDeque::new(),
            })),
            current: watch::Sender::new(generation),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the current snapshot; every subscriber is sent the change
    /// (a delta when it is small, computed here).
    pub fn publish(&self, next: Snapshot) {
        let generation = next.generation;
        {
            let mut s = self.lock();
            let delta = delta_between(&s.full, &next).map(Arc::new);
            let base = s.full.generation;
            s.index = NodeIndex::of(&next);
            s.full = Arc::new(next);
            s.push(Step {
                base,
                generation,
                delta,
            });
        }
        self.current.send_replace(generation);
    }

    /// Applies `delta` (computed by the compiler against the snapshot in
    /// force) and sends it to every subscriber as it is: no whole snapshot
    /// is copied, compared or encoded. Returns false, changing nothing,
    /// when `delta` is not against the snapshot in force.
    pub fn publish_delta(&self, delta: SnapshotDelta) -> bool {
        let generation = delta.generation;
        {
            let mut s = self.lock();
            if delta.base_generation != s.full.generation || generation <= delta.base_generation {
                return false;
            }
            let shared = &mut *s;
            apply_in_place(Arc::make_mut(&mut shared.full), &mut shared.index, &delta);
            s.push(Step {
                base: delta.base_generation,
                generation,
                delta: Some(Arc::new(delta)),
            });
        }
        self.current.send_replace(generation);
        true
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.lock().full.clone()
    }

    /// The generation being served.
    pub fn generation(&self) -> u64 {
        *self.current.borrow()
    }

    /// A receiver woken at every publish (admin `WatchHealth`), holding the
    /// generation.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.current.subscribe()
    }

    /// Number of connected dataplanes.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// What takes a subscriber from `sent` to the generation in force.
    fn next_for(&self, sent: u64) -> Next {
        let s = self.lock();
        let mut at = sent;
        let mut deltas = Vec::new();
        for step in s.log.iter().skip_while(|st| st.base != sent) {
            match (&step.delta, step.base == at) {
                (Some(d), true) => {
                    deltas.push(d.clone());
                    at = step.generation;
                }
                _ => return Next::Full(s.full.clone()),
            }
        }
        if at == s.full.generation && !deltas.is_empty() {
            Next::Deltas(deltas)
        } else {
            Next::Full(s.full.clone())
        }
    }
}

// === impl Shared ===

impl Shared {
    fn push(&mut self, step: Step) {
        self.log.push_back(step);
        while self.log.len() > LOG_STEPS {
            self.log.pop_front();
        }
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
        let this = self.clone();
        tokio::spawn(async move {
            rx.borrow_and_update();
            let first = this.current();
            let mut sent = first.generation;
            let update = SnapshotUpdate {
                kind: Some(Kind::Full((*first).clone())),
            };
            drop(first);
            if tx.send(Ok(update)).await.is_ok() {
                if let Some(m) = &metrics {
                    m.pushed(&label, sent, true);
                }
                'changes: while rx.changed().await.is_ok() {
                    if *rx.borrow_and_update() == sent {
                        continue;
                    }
                    let updates: Vec<(u64, bool, SnapshotUpdate)> = match this.next_for(sent) {
                        Next::Deltas(ds) => ds
                            .iter()
                            .map(|d| {
                                let u = SnapshotUpdate {
                                    kind: Some(Kind::Delta((**d).clone())),
                                };
                                (d.generation, false, u)
                            })
                            .collect(),
                        Next::Full(f) => {
                            if f.generation == sent {
                                continue;
                            }
                            let u = SnapshotUpdate {
                                kind: Some(Kind::Full((*f).clone())),
                            };
                            vec![(f.generation, true, u)]
                        }
                    };
                    for (generation, full, update) in updates {
                        if tx.send(Ok(update)).await.is_err() {
                            break 'changes;
                        }
                        if let Some(m) = &metrics {
                            m.pushed(&label, generation, full);
                        }
                        sent = generation;
                    }
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

/// Node name → index in a snapshot's `nodes`, without a copy of every
/// name: the compiler emits nodes in canonical order, so the longest
/// canonically ordered prefix is searched by bisection; only names after it
/// (added by deltas, or a snapshot not in order) are kept in a map.
#[derive(Debug, Default)]
struct NodeIndex {
    /// `nodes[..sorted]` is in strictly increasing canonical order.
    sorted: usize,
    rest: HashMap<Vec<u8>, usize>,
}

impl NodeIndex {
    fn of(s: &Snapshot) -> Self {
        let nodes = &s.nodes;
        let sorted = 1 + nodes
            .windows(2)
            .take_while(|w| canonical_cmp(&w[0].name, &w[1].name).is_lt())
            .count();
        let sorted = sorted.min(nodes.len());
        let rest = nodes
            .iter()
            .enumerate()
            .skip(sorted)
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Self { sorted, rest }
    }

    fn get(&self, nodes: &[opengslb_proto::Node], name: &[u8]) -> Option<usize> {
        nodes
            .get(..self.sorted)
            .and_then(|s| s.binary_search_by(|n| canonical_cmp(&n.name, name)).ok())
            .or_else(|| self.rest.get(name).copied())
    }
}

/// `delta` applied to `full` in place (as the dataplane applies it),
/// `index` kept in step.
fn apply_in_place(full: &mut Snapshot, index: &mut NodeIndex, delta: &SnapshotDelta) {
    full.generation = delta.generation;
    for zone in &delta.zones {
        match full.zones.iter_mut().find(|z| z.apex == zone.apex) {
            Some(slot) => *slot = zone.clone(),
            None => full.zones.push(zone.clone()),
        }
    }
    for node in &delta.upsert_nodes {
        match index.get(&full.nodes, &node.name) {
            Some(i) => full.nodes[i] = node.clone(),
            None => {
                index.rest.insert(node.name.clone(), full.nodes.len());
                full.nodes.push(node.clone());
            }
        }
    }
    if !delta.remove_nodes.is_empty() {
        let gone: std::collections::HashSet<&[u8]> =
            delta.remove_nodes.iter().map(Vec::as_slice).collect();
        full.nodes.retain(|n| !gone.contains(n.name.as_slice()));
        *index = NodeIndex::of(full);
    }
    if let Some(geo) = &delta.geo {
        full.geo = Some(geo.clone());
    }
    if let Some(options) = delta.options {
        full.options = Some(options);
    }
}

/// The update that takes a subscriber from `old` to `new`.
pub fn update_between(old: &Snapshot, new: &Snapshot) -> SnapshotUpdate {
    SnapshotUpdate {
        kind: Some(match delta_between(old, new) {
            Some(d) => Kind::Delta(d),
            None => Kind::Full(new.clone()),
        }),
    }
}

/// The delta from `old` to `new`, unless the whole of `new` should be sent:
/// zones added, removed or reordered (nodes refer to zones by index), or a
/// delta that is not much smaller.
fn delta_between(old: &Snapshot, new: &Snapshot) -> Option<SnapshotDelta> {
    let same_zone_order = old.zones.len() == new.zones.len()
        && old
            .zones
            .iter()
            .zip(&new.zones)
            .all(|(a, b)| a.apex == b.apex);
    if !same_zone_order {
        return None;
    }
    let delta = diff(old, new);
    (delta.encoded_len() * 2 <= new.encoded_len()).then_some(delta)
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

    /// `publish_delta` finds, replaces, appends and removes nodes the same
    /// whether the snapshot's nodes are in canonical order (searched by
    /// bisection) or not (the test snapshot's are not: a map then).
    #[test]
    fn deltas_apply_by_name_in_sorted_and_unsorted_snapshots() {
        let mut sorted = snap(1, 5, 60);
        sorted.nodes.sort_by(|a, b| canonical_cmp(&a.name, &b.name));
        sorted.nodes.dedup_by(|a, b| a.name == b.name);
        let mut unsorted = snap(1, 5, 60);
        unsorted.nodes.reverse();
        assert!(unsorted
            .nodes
            .windows(2)
            .any(|w| canonical_cmp(&w[0].name, &w[1].name).is_gt()));
        for (in_order, base) in [(true, sorted), (false, unsorted)] {
            let index = NodeIndex::of(&base);
            // Bisection covers all of an ordered snapshot, the map the rest.
            assert_eq!(index.sorted == base.nodes.len(), in_order);
            assert_eq!(index.rest.len(), base.nodes.len() - index.sorted);
            for (i, n) in base.nodes.iter().enumerate() {
                let found = index.get(&base.nodes, &n.name).unwrap();
                assert_eq!(base.nodes[found].name, n.name, "node {i}");
            }
            let stream = SnapshotStream::new(base.clone());
            let mut changed = base.nodes[17].clone();
            changed.rrsets[0].ttl = 5;
            let added = Node {
                name: b"\x03new\x04test\x00".to_vec(),
                ..Default::default()
            };
            let delta = SnapshotDelta {
                base_generation: 1,
                generation: 2,
                upsert_nodes: vec![changed.clone(), added.clone()],
                ..Default::default()
            };
            assert!(stream.publish_delta(delta));
            let now = stream.current();
            assert_eq!(now.nodes.len(), base.nodes.len() + 1);
            let at = |s: &Snapshot, name: &[u8]| s.nodes.iter().position(|n| n.name == name);
            assert_eq!(now.nodes[at(&now, &changed.name).unwrap()], changed);
            assert_eq!(now.nodes.last(), Some(&added));
            // The appended node is found again, and removal reindexes.
            let mut again = added.clone();
            again.zone = 3;
            let gone = base.nodes[3].name.clone();
            let delta = SnapshotDelta {
                base_generation: 2,
                generation: 3,
                upsert_nodes: vec![again.clone()],
                remove_nodes: vec![gone.clone()],
                ..Default::default()
            };
            assert!(stream.publish_delta(delta));
            let now = stream.current();
            assert_eq!(now.nodes.len(), base.nodes.len());
            assert!(at(&now, &gone).is_none());
            assert_eq!(now.nodes[at(&now, &again.name).unwrap()].zone, 3);
            let mut last = now.nodes[0].clone();
            last.zone = 9;
            let delta = SnapshotDelta {
                base_generation: 3,
                generation: 4,
                upsert_nodes: vec![last.clone()],
                ..Default::default()
            };
            assert!(stream.publish_delta(delta));
            assert_eq!(stream.current().nodes[0].zone, 9);
            assert_eq!(stream.current().nodes.len(), now.nodes.len());
        }
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
