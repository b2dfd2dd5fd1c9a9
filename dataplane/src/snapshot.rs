//! The dataplane's own snapshot: the validated, compiled answer tables.
//!
//! A [`Snapshot`] is built once per update from the wire contract
//! (`opengslb_proto::Snapshot`) by `TryFrom`, which checks everything the
//! answer path relies on and refuses the whole message with an
//! [`InvalidSnapshot`] otherwise (the caller then keeps serving the previous
//! one). The input comes from the network: conversion never panics.
//!
//! Compile on update, look up on query. After conversion:
//! - every owner name is a lower-case wire-format key in one hash map
//!   (`Box<[u8]>` keys, looked up with `&[u8]`, so a lookup allocates nothing);
//!   zone apexes have their own map, and every apex is a node (the zone's SOA,
//!   NS and DNSKEY are merged into its static RRsets);
//! - every RRset is pre-encoded as the bytes that follow each record's owner
//!   (TYPE, CLASS, TTL, RDLENGTH, RDATA) with per-record offsets, so the
//!   answer path writes a 2-octet compression pointer for the owner and then
//!   copies records in any (rotated) order;
//! - each zone also holds its SOA re-encoded with the negative TTL
//!   (RFC 2308 §3), ready for the authority section of NXDOMAIN/NODATA.
//!
//! - each plan's weights are turned into running sums once (the weighted
//!   draw is a binary search, see [`crate::select`]), and each node with plans
//!   owns one [`DecisionCounter`] (`opengslb_routing_decisions_total`),
//!   carried over from the previous snapshot when it is replaced
//!   ([`Snapshot::adopt_counters`]) so the count never restarts.
//!
//! Invariants the answer path may rely on: names are valid and lower-case,
//! every node lies in the closest enclosing zone of the snapshot, a node has at
//! most one RRset and one plan per type and never both for one type, a CNAME
//! node holds nothing else and its one target is a valid name, plans are A or
//! AAAA and each record's RDATA matches its type's length.

use std::collections::HashMap;
use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use opengslb_proto as proto;
use thiserror::Error;

use crate::select;
use crate::wire::{self, rtype, LabelOffsets};

mod hot;
mod names;
mod patch;

pub(crate) use hot::HotSet;
pub(crate) use patch::Nodes;

// === constants ===

/// UDP payload size advertised when the snapshot does not set one (the DNS
/// flag day 2020 value).
pub const DEFAULT_EDNS_UDP_SIZE: u16 = 1232;

/// Stripes of one [`DecisionCounter`]: workers write different cache lines
/// (a worker's stripe is its creation index modulo this), so counting a
/// decision never contends while there are no more workers than stripes.
pub const COUNTER_STRIPES: usize = 16;

/// Most queries [`Snapshot::prefetch`] hints at once (a UDP receive batch).
pub const PREFETCH_MAX: usize = 32;
/// Fewest names for which the UDP worker gives [`Snapshot::prefetch`]
/// hints: 4,096 nodes of 128 octets fill a 512 KiB L2 cache; below that the
/// lookups hit the caches and the hints would be pure cost (measured with
/// `examples/answer_loop`, batches of 13: +10 to +40 ns a query on the
/// bench's small zone, -100 to -250 ns on its 100,000-name zone).
pub const PREFETCH_MIN_NODES: usize = 4096;

// === types ===

/// Why a proto snapshot was refused. Formatted errors are fine here: this is
/// the control stream, not the query path.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidSnapshot {
    /// A name that is not valid uncompressed wire format.
    #[error("{what}: not a valid wire-format name")]
    BadName {
        /// Where the name was found.
        what: &'static str,
    },
    /// A name with upper-case ASCII letters.
    #[error("{what}: name is not lower-case")]
    NotLowerCase {
        /// Where the name was found.
        what: &'static str,
    },
    /// A node names a zone index the snapshot does not have.
    #[error("node zone index {index} out of range ({zones} zones)")]
    ZoneIndex {
        /// The index.
        index: u32,
        /// Number of zones.
        zones: usize,
    },
    /// A node outside its zone, or in a zone other than the closest enclosing one.
    #[error("node {node} is not in the closest enclosing zone")]
    NodeOutsideZone {
        /// Index of the node in the message.
        node: usize,
    },
    /// Two nodes with the same name.
    #[error("duplicate node (index {node})")]
    DuplicateNode {
        /// Index of the second node.
        node: usize,
    },
    /// Two zones with the same apex.
    #[error("duplicate zone (index {zone})")]
    DuplicateZone {
        /// Index of the second zone.
        zone: usize,
    },
    /// A zone without exactly one SOA record, or with malformed SOA RDATA.
    #[error("zone {zone}: missing or malformed SOA")]
    MissingSoa {
        /// Index of the zone.
        zone: usize,
    },
    /// A plan for a type other than A or AAAA.
    #[error("plan for record type {rtype}: only A and AAAA are load-balanced")]
    PlanType {
        /// The type.
        rtype: u32,
    },
    /// A candidate RRset whose type is neither 0 nor the plan's.
    #[error("candidate of type {rtype} in a plan for type {plan}")]
    CandidateType {
        /// The candidate's type.
        rtype: u32,
        /// The plan's type.
        plan: u32,
    },
    /// A record type that cannot be served as data (0, OPT, RRSIG, meta types, > 65535).
    #[error("record type {rtype} cannot be served")]
    BadType {
        /// The type.
        rtype: u32,
    },
    /// A static RRset with no records.
    #[error("empty RRset of type {rtype}")]
    EmptyRRset {
        /// The type.
        rtype: u32,
    },
    /// Two RRsets or plans of one type at one owner.
    #[error("more than one RRset or plan of type {rtype} at one owner")]
    DuplicateType {
        /// The type.
        rtype: u32,
    },
    /// RDATA of the wrong length for its type (A: 4, AAAA: 16).
    #[error("record of type {rtype} with {len} octets of RDATA")]
    BadRdata {
        /// The type.
        rtype: u32,
        /// The RDATA length.
        len: usize,
    },
    /// RDATA longer than 65535 octets.
    #[error("RDATA of {len} octets is too long")]
    RdataTooLong {
        /// The length.
        len: usize,
    },
    /// A CNAME next to other data, with more than one record, or with a bad target.
    #[error("CNAME must be alone at its owner, single, and name a valid target")]
    BadCname,
    /// Denial records other than one NSEC RRset of one record per owner.
    #[error("denial records must be one NSEC record per owner")]
    BadDenial,
    /// A geo range table or geolocation plan that is inconsistent.
    #[error("geo table: {reason}")]
    BadGeo {
        /// What is wrong.
        reason: &'static str,
    },
    /// An NSEC3 chain this dataplane does not serve or that is broken.
    #[error("NSEC3 chain: {reason}")]
    BadNsec3 {
        /// What is wrong.
        reason: &'static str,
    },
}

/// The compiled, validated answer tables of one generation.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    edns_udp_size: u16,
    zones: Box<[Zone]>,
    /// The nodes, in chunks shared with the snapshots before and after
    /// this one (a delta replaces only the chunks of the names it changes,
    /// see `patch`).
    nodes: Nodes,
    /// Lower-case wire name → index into `nodes` (one arena, see `names`);
    /// shared while no name is added or removed.
    names: Arc<names::NameIndex>,
    /// Lower-case wire apex → index into `zones`.
    apexes: Arc<HashMap<Box<[u8]>, u32>>,
    /// Routing-decision counters; `Plan::counter` indexes this.
    decisions: Arc<[Arc<DecisionCounter>]>,
    /// The geo range table (none when the snapshot has none); shared with
    /// the previous snapshot while the table's own generation is unchanged.
    geo: Option<Arc<crate::geo::GeoTable>>,
    /// Answer EDNS Client Subnet with a scope.
    ecs_enabled: bool,
    /// Geo counters; `GeoPlan::counters` indexes this.
    geo_counters: Arc<[Arc<crate::geo::GeoCounters>]>,
}

/// `opengslb_routing_decisions_total` of one load-balanced name: answers
/// given from its plans. Shared by the A and AAAA plans of the name and by
/// successive snapshots while the name and its policy stay.
#[derive(Debug)]
pub struct DecisionCounter {
    /// The name, presentation form without the final dot.
    domain: Box<str>,
    /// The policy label (`round-robin`, `weighted`, ...).
    algorithm: &'static str,
    stripes: [Stripe; COUNTER_STRIPES],
}

/// One cache line of a [`DecisionCounter`].
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// One zone: its apex, and its SOA encoded for negative answers.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    pub(crate) apex: Box<[u8]>,
    /// The SOA with TTL = negative TTL, for the authority section.
    pub(crate) soa_negative: Records,
    /// The SOA's RRSIGs with TTL = negative TTL (empty when unsigned).
    pub(crate) soa_negative_sigs: Records,
    /// Owners of the zone's NSEC records in canonical order (RFC 4034
    /// §6.1), for the binary search that finds the NSEC covering a name.
    /// (Shared between snapshots while the owners stay.)
    pub(crate) nsec_owners: Arc<[NsecOwner]>,
    /// The NSEC3 chain, when the zone denies with NSEC3 (then no node has
    /// an NSEC); shared between snapshots while it stays.
    pub(crate) nsec3: Option<Arc<crate::nsec3::Chain>>,
}

/// An owner name with an NSEC record, and its node.
#[derive(Debug)]
pub(crate) struct NsecOwner {
    pub(crate) name: Box<[u8]>,
    pub(crate) node: u32,
}

/// One owner name (possibly an empty non-terminal).
///
/// Two cache lines, aligned: the key (name and hot RRsets) is the whole
/// first one, which is all a positive lookup of a plain name reads (`hot`).
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub(crate) struct Node {
    /// The name and the leading unsigned static RRsets, encoded in one
    /// block (read first by every lookup; see `hot`).
    pub(crate) key: hot::Key,
    pub(crate) zone: u32,
    /// Static RRsets after those in `key`; at an apex (whose key holds
    /// none) SOA, NS and DNSKEY come first, in that order.
    pub(crate) rrsets: Box<[RRset]>,
    pub(crate) plans: Box<[Plan]>,
    /// Lower-case target of the node's CNAME, if it has one.
    pub(crate) cname_target: Option<Box<[u8]>>,
    /// The node's NSEC RRset with its RRSIGs (authenticated denial).
    /// (Boxed: most names have none, and a node's size is paid per name.)
    pub(crate) denial: Option<Box<RRset>>,
}

/// Pre-encoded records: each is TYPE CLASS TTL RDLENGTH RDATA, the owner left
/// for the answer path to write.
///
/// One heap block per non-empty set (none when empty; most `sigs` are): the
/// record count `n` (u32, native order), the end offset of each record (`n`
/// u32, counted from the first record's start; record `i` starts at end
/// `i-1`, or 0), then the records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Records {
    buf: Box<[u8]>,
}

/// One RRset, encoded, with the RRSIGs covering it.
#[derive(Debug, Clone)]
pub(crate) struct RRset {
    pub(crate) rtype: u16,
    pub(crate) records: Records,
    pub(crate) sigs: Records,
}

/// A load-balanced answer for one type.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) rtype: u16,
    pub(crate) policy: proto::Policy,
    /// Records per answer; 0 = all.
    pub(crate) max_answers: u32,
    pub(crate) candidates: Box<[Candidate]>,
    /// Running sums of the candidates' weights (weighted policy).
    pub(crate) cumulative: Box<[u64]>,
    pub(crate) when_all_down: proto::WhenAllDown,
    /// Index into the snapshot's decision counters.
    pub(crate) counter: u32,
    /// Geolocation policy: the candidate of each region.
    pub(crate) geo: Option<Box<crate::geo::GeoPlan>>,
}

/// One candidate of a plan.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) rrset: RRset,
    /// Weighted policy: relative weight (the picker reads `Plan::cumulative`).
    #[allow(dead_code)]
    pub(crate) weight: u32,
    /// Geolocation policy: region index (read by the geo picker, to come).
    #[allow(dead_code)]
    pub(crate) region: u32,
}

// === impl Snapshot ===

impl Snapshot {
    /// Generation of the controlplane snapshot this was compiled from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// UDP payload size this server advertises and sends up to.
    pub fn edns_udp_size(&self) -> u16 {
        self.edns_udp_size.max(512)
    }

    /// Number of owner names (apexes and empty non-terminals included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// Node with this lower-case wire name.
    /// (The index proposes, the node's key confirms: one slot, the node
    /// and its key block are all a positive lookup reads.)
    #[inline]
    pub(crate) fn node(&self, name: &[u8]) -> Option<(u32, &Node)> {
        self.names.probe(name, |i| {
            self.nodes.get(i as usize).filter(|n| n.key.name() == name)
        })
    }

    /// Hints into the cache what answering `queries` (a receive batch; the
    /// first [`PREFETCH_MAX`]) will read from a large zone: first every
    /// question's name index slot, then the first line of every node those
    /// slots propose (its key: the name and leading records). The misses of
    /// the batch then overlap instead of following one another. A hint
    /// only: it parses nothing for real and changes nothing.
    #[inline]
    pub fn prefetch<'q>(&self, queries: impl IntoIterator<Item = &'q [u8]>) {
        let mut hashes = [None; PREFETCH_MAX];
        let mut n = 0;
        for (h, query) in hashes.iter_mut().zip(queries) {
            *h = wire::question_name(query).map(|name| self.names.prefetch_slot(name));
            n += 1;
        }
        for h in hashes.iter().take(n).flatten() {
            if let Some(node) = self
                .names
                .first_candidate(*h)
                .and_then(|i| self.nodes.get(i as usize))
            {
                crate::prefetch::line(node);
            }
        }
    }

    /// Counts one answer of `plan` on the writer's `stripe`.
    #[inline]
    pub(crate) fn count_decision(&self, plan: &Plan, stripe: usize) {
        if let Some(c) = self.decisions.get(plan.counter as usize) {
            c.add(stripe);
        }
    }

    /// `(domain, algorithm, answers)` of every load-balanced name, in
    /// canonical name order.
    pub fn routing_decisions(&self) -> impl Iterator<Item = (&str, &'static str, u64)> + '_ {
        self.decisions
            .iter()
            .map(|c| (c.domain(), c.algorithm(), c.total()))
    }

    /// Takes over the decision counters of `prev` for every name whose
    /// policy did not change, so the counts keep growing across snapshots
    /// (answers still being given from `prev` land in the same counters).
    /// Called on the update path, before `self` is published.
    pub fn adopt_counters(&mut self, prev: &Snapshot) {
        if prev.decisions.is_empty() {
            return;
        }
        let old: HashMap<(&str, &str), &Arc<DecisionCounter>> = prev
            .decisions
            .iter()
            .map(|c| ((c.domain(), c.algorithm()), c))
            .collect();
        let mut decisions = self.decisions.to_vec();
        for c in decisions.iter_mut() {
            if let Some(&o) = old.get(&(c.domain(), c.algorithm())) {
                *c = o.clone();
            }
        }
        self.decisions = decisions.into();
        let mut geo_counters = self.geo_counters.to_vec();
        crate::geo::adopt(&mut geo_counters, &prev.geo_counters);
        self.geo_counters = geo_counters.into();
    }

    /// The geo range table.
    pub fn geo(&self) -> Option<&crate::geo::GeoTable> {
        self.geo.as_deref()
    }

    /// Whether ECS is answered with a scope.
    pub fn ecs_enabled(&self) -> bool {
        self.ecs_enabled
    }

    /// Whether some name answers by geolocation (the client address matters).
    pub fn has_geo_plans(&self) -> bool {
        !self.geo_counters.is_empty()
    }

    /// Counts one geolocation answer on the writer's `stripe`.
    #[inline]
    pub(crate) fn count_geo(
        &self,
        g: &crate::geo::GeoPlan,
        stripe: usize,
        hit: crate::geo::GeoHit,
        reason: Option<usize>,
    ) {
        if let Some(c) = self.geo_counters.get(g.counters as usize) {
            c.decided(stripe, hit.region, hit.custom, reason);
        }
    }

    /// Geo counters of every geolocation name.
    pub fn geo_counters(&self) -> &[Arc<crate::geo::GeoCounters>] {
        &self.geo_counters
    }

    pub(crate) fn zone(&self, index: u32) -> Option<&Zone> {
        self.zones.get(index as usize)
    }

    /// Node at `index`.
    pub(crate) fn node_at(&self, index: u32) -> Option<&Node> {
        self.nodes.get(index as usize)
    }

    /// Closest enclosing zone of a lower-case wire name: the longest apex that
    /// is a suffix of it. Returns the zone index and the apex length.
    pub(crate) fn closest_zone(&self, name: &[u8]) -> Option<(u32, &Zone)> {
        if self.apexes.is_empty() {
            return None;
        }
        LabelOffsets::new(name).find_map(|at| {
            let &z = self.apexes.get(name.get(at..)?)?;
            Some((z, self.zones.get(z as usize)?))
        })
    }
}

impl TryFrom<&proto::Snapshot> for Snapshot {
    type Error = InvalidSnapshot;

    fn try_from(msg: &proto::Snapshot) -> Result<Self, InvalidSnapshot> {
        Self::compile(msg, None)
    }
}

impl Snapshot {
    /// Validates and compiles `msg`. The geo range table of `prev` is reused
    /// (one `Arc` clone instead of decoding hundreds of thousands of ranges)
    /// when `msg` carries a table of the same non-zero generation: the
    /// controlplane changes a table's generation whenever its content
    /// changes.
    pub fn compile(
        msg: &proto::Snapshot,
        prev: Option<&Snapshot>,
    ) -> Result<Self, InvalidSnapshot> {
        let mut zones = Vec::with_capacity(msg.zones.len());
        let mut apexes = HashMap::with_capacity(msg.zones.len());
        // The same apexes in the build's own index (no SipHash): every node
        // is checked against it, one to a few lookups per node.
        let mut apex_index = names::NameIndex::with_capacity(msg.zones.len(), 16);
        for (i, z) in msg.zones.iter().enumerate() {
            check_name(&z.apex, "zone apex")?;
            let soa = z
                .soa
                .as_ref()
                .ok_or(InvalidSnapshot::MissingSoa { zone: i })?;
            if soa.rdata.len() != 1 || !is_valid_soa(&soa.rdata[0]) {
                return Err(InvalidSnapshot::MissingSoa { zone: i });
            }
            let index = u32::try_from(i).map_err(|_| InvalidSnapshot::DuplicateZone { zone: i })?;
            if apexes
                .insert(z.apex.clone().into_boxed_slice(), index)
                .is_some()
                || apex_index.insert(&z.apex) != Some(index)
            {
                return Err(InvalidSnapshot::DuplicateZone { zone: i });
            }
            zones.push(compile_zone(z, soa, None)?);
        }

        let mut decisions = Vec::new();
        let mut nodes = Vec::with_capacity(msg.nodes.len() + zones.len());
        crate::memory::advise_huge_pages(&nodes);
        let avg_len = msg.nodes.first().map_or(0, |n| n.name.len() + 2);
        let mut names = names::NameIndex::with_capacity(msg.nodes.len() + zones.len(), avg_len);
        for (i, n) in msg.nodes.iter().enumerate() {
            check_name(&n.name, "node name")?;
            let zone = msg
                .zones
                .get(n.zone as usize)
                .ok_or(InvalidSnapshot::ZoneIndex {
                    index: n.zone,
                    zones: msg.zones.len(),
                })?;
            if closest(&apex_index, &n.name) != Some(n.zone) {
                return Err(InvalidSnapshot::NodeOutsideZone { node: i });
            }
            let apex = if n.name == zone.apex {
                Some(zone)
            } else {
                None
            };
            let node = compile_node(n, apex, &mut decisions)?;
            // The index hands out `nodes.len()`: node i is name i.
            if names.insert(&n.name).is_none() {
                return Err(InvalidSnapshot::DuplicateNode { node: i });
            }
            nodes.push(node);
        }
        // Apexes the controlplane did not send as nodes still hold SOA and NS.
        for (i, z) in msg.zones.iter().enumerate() {
            if names.get(&z.apex).is_some() {
                continue;
            }
            let empty = proto::Node {
                name: z.apex.clone(),
                zone: i as u32,
                ..Default::default()
            };
            let node = compile_node(&empty, Some(z), &mut decisions)?;
            if names.insert(&z.apex).is_none() {
                return Err(InvalidSnapshot::DuplicateNode { node: i });
            }
            nodes.push(node);
        }

        // Per zone, the owners of NSEC records in canonical order.
        let mut owners: Vec<Vec<NsecOwner>> = zones.iter().map(|_| Vec::new()).collect();
        for (i, node) in (0u32..).zip(nodes.iter()) {
            let Some(name) = names.name(i) else {
                continue;
            };
            if let (Some(_), Some(list)) = (&node.denial, owners.get_mut(node.zone as usize)) {
                list.push(NsecOwner {
                    name: name.into(),
                    node: i,
                });
            }
        }
        names.finish();
        debug_assert_eq!(names.len(), nodes.len());
        for (zone, mut list) in zones.iter_mut().zip(owners) {
            list.sort_by(|a, b| wire::canonical_cmp(&a.name, &b.name));
            zone.nsec_owners = list.into();
        }

        let edns_udp_size = edns_udp_size(msg.options.as_ref());
        let geo = match &msg.geo {
            Some(t) => match prev.and_then(|p| p.geo.as_ref()) {
                Some(g) if t.generation != 0 && g.generation() == t.generation => Some(g.clone()),
                _ => Some(Arc::new(crate::geo::GeoTable::compile(t)?)),
            },
            None => None,
        };
        let geo_counters =
            crate::geo::attach_plans(&msg.nodes, &mut nodes, geo.as_deref(), &decisions)?;
        Ok(Self {
            generation: msg.generation,
            edns_udp_size,
            zones: zones.into_boxed_slice(),
            nodes: Nodes::from_vec(nodes),
            names: Arc::new(names),
            apexes: Arc::new(apexes),
            decisions: decisions.into(),
            geo,
            ecs_enabled: msg.options.as_ref().is_some_and(|o| o.ecs_enabled),
            geo_counters: geo_counters.into(),
        })
    }
}

/// The compiled zone `z` (its SOA `soa` already checked). `nsec3` is the
/// chain to keep instead of compiling `z`'s (the caller has checked it is
/// the same). NSEC owners are filled in by the caller.
fn compile_zone(
    z: &proto::Zone,
    soa: &proto::RRset,
    nsec3: Option<Arc<crate::nsec3::Chain>>,
) -> Result<Zone, InvalidSnapshot> {
    Ok(Zone {
        apex: z.apex.clone().into_boxed_slice(),
        soa_negative: encode_records(rtype::SOA, z.negative_ttl, &soa.rdata)?,
        soa_negative_sigs: encode_records(rtype::RRSIG, z.negative_ttl, &soa.rrsig)?,
        nsec_owners: Arc::default(),
        nsec3: match (nsec3, &z.nsec3) {
            (Some(kept), Some(_)) => Some(kept),
            (_, Some(c)) => Some(Arc::new(crate::nsec3::Chain::compile(c)?)),
            (_, None) => None,
        },
    })
}

/// The UDP payload size of `options` (the default when unset).
fn edns_udp_size(options: Option<&proto::ServeOptions>) -> u16 {
    match options.map_or(0, |o| o.edns_udp_size) {
        0 => DEFAULT_EDNS_UDP_SIZE,
        n => u16::try_from(n).unwrap_or(u16::MAX).max(512),
    }
}

// === impl Plan ===

impl Plan {
    /// Whether an answer of this plan carries records: weighted needs a
    /// candidate of positive weight, the others a first candidate with records.
    #[inline]
    pub(crate) fn is_servable(&self) -> bool {
        match self.policy {
            proto::Policy::Weighted => self.cumulative.last().is_some_and(|&t| t > 0),
            _ => self
                .candidates
                .first()
                .is_some_and(|c| !c.rrset.records.is_empty()),
        }
    }
}

// === impl DecisionCounter ===

impl DecisionCounter {
    fn new(domain: Box<str>, algorithm: &'static str) -> Self {
        Self {
            domain,
            algorithm,
            stripes: Default::default(),
        }
    }

    /// The load-balanced name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The policy label.
    pub fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    /// Answers counted so far.
    pub fn total(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Relaxed)).sum()
    }

    #[inline]
    fn add(&self, stripe: usize) {
        if let Some(s) = self.stripes.get(stripe % COUNTER_STRIPES) {
            s.0.fetch_add(1, Relaxed);
        }
    }
}

// === impl Records ===

impl Records {
    /// Number of records.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.word(0).unwrap_or(0)
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Encoded record `i` (without owner).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        let n = self.len();
        if i >= n {
            return None;
        }
        let base = 4 + 4 * n;
        let end = self.word(1 + i)?;
        let start = match i {
            0 => 0,
            _ => self.word(i)?,
        };
        self.buf.get(base + start..base + end)
    }

    /// The `k`-th u32 of the header (0: the count, 1..=n: the ends).
    #[inline]
    fn word(&self, k: usize) -> Option<usize> {
        let b: [u8; 4] = self.buf.get(4 * k..4 * k + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(b) as usize)
    }

    /// RDATA of record `i`.
    #[cfg(test)]
    pub(crate) fn rdata(&self, i: usize) -> Option<&[u8]> {
        self.get(i)?.get(10..)
    }
}

// === functions ===

fn check_name(name: &[u8], what: &'static str) -> Result<(), InvalidSnapshot> {
    if !wire::is_valid_name(name) {
        return Err(InvalidSnapshot::BadName { what });
    }
    if name.iter().any(u8::is_ascii_uppercase) {
        return Err(InvalidSnapshot::NotLowerCase { what });
    }
    Ok(())
}

/// Index of the closest enclosing zone of `name` among `apexes`.
/// (`apexes` holds zone `i` at index `i`.)
fn closest(apexes: &names::NameIndex, name: &[u8]) -> Option<u32> {
    LabelOffsets::new(name).find_map(|at| apexes.get(name.get(at..)?))
}

fn is_valid_soa(rdata: &[u8]) -> bool {
    let Some(m) = wire::name_len(rdata) else {
        return false;
    };
    let Some(r) = rdata.get(m..).and_then(wire::name_len) else {
        return false;
    };
    rdata.len() == m + r + 20
}

fn servable_type(t: u32) -> Result<u16, InvalidSnapshot> {
    match u16::try_from(t) {
        Ok(0 | rtype::OPT | rtype::RRSIG | 128..=255) | Err(_) => {
            Err(InvalidSnapshot::BadType { rtype: t })
        }
        Ok(t) => Ok(t),
    }
}

fn check_rdata(t: u16, rdata: &[u8]) -> Result<(), InvalidSnapshot> {
    let want = match t {
        rtype::A => Some(4),
        rtype::AAAA => Some(16),
        _ => None,
    };
    if want.is_some_and(|w| w != rdata.len()) {
        return Err(InvalidSnapshot::BadRdata {
            rtype: u32::from(t),
            len: rdata.len(),
        });
    }
    Ok(())
}

/// Encodes TYPE CLASS TTL RDLENGTH RDATA for each record.
fn encode_records(t: u16, ttl: u32, rdatas: &[Vec<u8>]) -> Result<Records, InvalidSnapshot> {
    if rdatas.is_empty() {
        return Ok(Records::default());
    }
    let total: usize = rdatas.iter().map(|r| r.len() + 10).sum();
    let n =
        u32::try_from(rdatas.len()).map_err(|_| InvalidSnapshot::RdataTooLong { len: total })?;
    let mut bytes = Vec::with_capacity(4 + 4 * rdatas.len() + total);
    bytes.extend_from_slice(&n.to_ne_bytes());
    bytes.resize(4 + 4 * rdatas.len(), 0);
    let base = bytes.len();
    for (i, r) in rdatas.iter().enumerate() {
        let len =
            u16::try_from(r.len()).map_err(|_| InvalidSnapshot::RdataTooLong { len: r.len() })?;
        bytes.extend_from_slice(&t.to_be_bytes());
        bytes.extend_from_slice(&wire::class::IN.to_be_bytes());
        bytes.extend_from_slice(&ttl.to_be_bytes());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(r);
        let end = u32::try_from(bytes.len() - base)
            .map_err(|_| InvalidSnapshot::RdataTooLong { len: bytes.len() })?;
        if let Some(slot) = bytes.get_mut(4 + 4 * i..8 + 4 * i) {
            slot.copy_from_slice(&end.to_ne_bytes());
        }
    }
    Ok(Records {
        buf: bytes.into_boxed_slice(),
    })
}

/// Validates and encodes one RRset of type `t` (already checked servable).
pub(crate) fn compile_rrset(t: u16, r: &proto::RRset) -> Result<RRset, InvalidSnapshot> {
    for rd in &r.rdata {
        check_rdata(t, rd)?;
    }
    Ok(RRset {
        rtype: t,
        records: encode_records(t, r.ttl, &r.rdata)?,
        sigs: encode_records(rtype::RRSIG, r.ttl, &r.rrsig)?,
    })
}

/// The metric label of a policy.
fn policy_label(p: proto::Policy) -> &'static str {
    match p {
        proto::Policy::RoundRobin | proto::Policy::Unspecified => "round-robin",
        proto::Policy::Weighted => "weighted",
        proto::Policy::Failover => "failover",
        proto::Policy::Geolocation => "geolocation",
        proto::Policy::Latency => "latency",
    }
}

/// Presentation form of a valid wire name, without the final dot; octets
/// outside letters, digits, `-` and `_` are written `\DDD` (so the label
/// never needs more escaping than Prometheus' own).
fn presentation(name: &[u8]) -> Box<str> {
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let label = name.get(i + 1..i + 1 + usize::from(len)).unwrap_or(&[]);
        for &b in label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        i += 1 + usize::from(len);
    }
    out.into_boxed_str()
}

/// The apex RRsets that come from zone `z` (SOA, NS, DNSKEY, NSEC3PARAM,
/// in that order), appended to `out`.
fn zone_rrsets(z: &proto::Zone, out: &mut Vec<RRset>) -> Result<(), InvalidSnapshot> {
    // Checked by the caller: the SOA exists.
    if let Some(soa) = &z.soa {
        out.push(compile_rrset(rtype::SOA, soa)?);
    }
    for (t, r) in [(rtype::NS, &z.ns), (rtype::DNSKEY, &z.dnskey)] {
        if let Some(r) = r.as_ref().filter(|r| !r.rdata.is_empty()) {
            out.push(compile_rrset(t, r)?);
        }
    }
    if let Some(param) = z
        .nsec3
        .as_ref()
        .map(crate::nsec3::compile_param)
        .transpose()?
    {
        out.extend(param);
    }
    Ok(())
}

/// Compiles a node; `apex` is its zone when the node is the zone's apex. A
/// node with plans gets one new decision counter, pushed to `decisions`.
fn compile_node(
    n: &proto::Node,
    apex: Option<&proto::Zone>,
    decisions: &mut Vec<Arc<DecisionCounter>>,
) -> Result<Node, InvalidSnapshot> {
    let mut rrsets = Vec::with_capacity(n.rrsets.len() + if apex.is_some() { 4 } else { 0 });
    if let Some(z) = apex {
        zone_rrsets(z, &mut rrsets)?;
    }
    let mut cname_target = None;
    for r in &n.rrsets {
        let t = servable_type(r.rtype)?;
        if r.rdata.is_empty() {
            return Err(InvalidSnapshot::EmptyRRset { rtype: r.rtype });
        }
        if rrsets.iter().any(|x: &RRset| x.rtype == t) {
            return Err(InvalidSnapshot::DuplicateType { rtype: r.rtype });
        }
        if t == rtype::CNAME {
            let [target] = r.rdata.as_slice() else {
                return Err(InvalidSnapshot::BadCname);
            };
            if !wire::is_valid_name(target) {
                return Err(InvalidSnapshot::BadCname);
            }
            cname_target = Some(target.to_ascii_lowercase().into_boxed_slice());
        }
        rrsets.push(compile_rrset(t, r)?);
    }

    let mut plans: Vec<Plan> = Vec::with_capacity(n.plans.len());
    for p in &n.plans {
        let t = match u16::try_from(p.rtype) {
            Ok(t @ (rtype::A | rtype::AAAA)) => t,
            _ => return Err(InvalidSnapshot::PlanType { rtype: p.rtype }),
        };
        if rrsets.iter().any(|x| x.rtype == t) || plans.iter().any(|x| x.rtype == t) {
            return Err(InvalidSnapshot::DuplicateType { rtype: p.rtype });
        }
        let mut candidates = Vec::with_capacity(p.candidates.len());
        for c in &p.candidates {
            let Some(r) = &c.rrset else { continue };
            if r.rtype != 0 && r.rtype != p.rtype {
                return Err(InvalidSnapshot::CandidateType {
                    rtype: r.rtype,
                    plan: p.rtype,
                });
            }
            candidates.push(Candidate {
                rrset: compile_rrset(t, r)?,
                weight: c.weight,
                region: c.region,
            });
        }
        // Unknown enum values (a newer controlplane) fall back to the defaults.
        let policy = proto::Policy::try_from(p.policy).unwrap_or(proto::Policy::Unspecified);
        // The A and AAAA plans of a name share its counter (the first plan's policy).
        let counter = match plans.first() {
            Some(first) => first.counter,
            None => {
                let index = u32::try_from(decisions.len())
                    .map_err(|_| InvalidSnapshot::PlanType { rtype: p.rtype })?;
                decisions.push(Arc::new(DecisionCounter::new(
                    presentation(&n.name),
                    policy_label(policy),
                )));
                index
            }
        };
        plans.push(Plan {
            rtype: t,
            policy,
            max_answers: p.max_answers,
            // A candidate without records is never drawn.
            cumulative: select::cumulative(candidates.iter().map(|c| {
                if c.rrset.records.is_empty() {
                    0
                } else {
                    c.weight
                }
            })),
            candidates: candidates.into_boxed_slice(),
            when_all_down: proto::WhenAllDown::try_from(p.when_all_down)
                .unwrap_or(proto::WhenAllDown::Unspecified),
            counter,
            geo: None,
        });
    }

    if cname_target.is_some() && (rrsets.len() > 1 || !plans.is_empty()) {
        return Err(InvalidSnapshot::BadCname);
    }
    let denial = match n.denial.as_slice() {
        [] => None,
        [d] if d.rtype == u32::from(rtype::NSEC) && d.rdata.len() == 1 => {
            // NSEC RDATA starts with the next owner name.
            if d.rdata.first().and_then(|r| wire::name_len(r)).is_none() {
                return Err(InvalidSnapshot::BadDenial);
            }
            Some(Box::new(compile_rrset(rtype::NSEC, d)?))
        }
        _ => return Err(InvalidSnapshot::BadDenial),
    };
    let key = hot::Key::build(&n.name, &mut rrsets, apex.is_some());
    Ok(Node {
        key,
        zone: n.zone,
        rrsets: rrsets.into_boxed_slice(),
        plans: plans.into_boxed_slice(),
        cname_target,
        denial,
    })
}

// === tests ===

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::tests::{fixture, name, rrset};

    fn err(mutate: impl FnOnce(&mut proto::Snapshot)) -> InvalidSnapshot {
        let mut s = fixture();
        mutate(&mut s);
        Snapshot::try_from(&s).unwrap_err()
    }

    #[test]
    fn fixture_compiles() {
        let s = Snapshot::try_from(&fixture()).unwrap();
        assert_eq!(s.generation(), 42);
        assert_eq!(s.zone_count(), 1);
        assert_eq!(s.edns_udp_size(), DEFAULT_EDNS_UDP_SIZE);
        let (_, www) = s.node(&name("www.gslb.test.")).unwrap();
        assert_eq!(www.plans.len(), 2);
        assert_eq!(www.plans[0].candidates[0].rrset.records.len(), 3);
        assert_eq!(
            www.plans[0].candidates[0].rrset.records.rdata(1),
            Some(&[192, 0, 2, 2][..])
        );
        let (_, apex) = s.node(&name("gslb.test.")).unwrap();
        assert_eq!(apex.rrsets[0].rtype, rtype::SOA);
        assert_eq!(apex.rrsets[1].rtype, rtype::NS);
        assert!(s.node(&name("b.gslb.test.")).is_some());
        assert_eq!(s.closest_zone(&name("x.y.gslb.test.")).unwrap().0, 0);
        assert!(s.closest_zone(&name("example.com.")).is_none());
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(
            err(|s| s.nodes[0].name = b"\x03www".to_vec()),
            InvalidSnapshot::BadName { .. }
        ));
        assert!(matches!(
            err(|s| s.nodes[0].name = name("WWW.gslb.test.")),
            InvalidSnapshot::NotLowerCase { .. }
        ));
        assert!(matches!(
            err(|s| s.zones[0].apex = b"\xC0\x0C".to_vec()),
            InvalidSnapshot::BadName { .. }
        ));
    }

    #[test]
    fn rejects_bad_structure() {
        assert!(matches!(
            err(|s| s.nodes[0].zone = 7),
            InvalidSnapshot::ZoneIndex { index: 7, .. }
        ));
        assert!(matches!(
            err(|s| s.nodes[0].name = name("www.other.")),
            InvalidSnapshot::NodeOutsideZone { .. }
        ));
        assert!(matches!(
            err(|s| {
                let n = s.nodes[0].clone();
                s.nodes.push(n);
            }),
            InvalidSnapshot::DuplicateNode { .. }
        ));
        assert!(matches!(
            err(|s| {
                let z = s.zones[0].clone();
                s.zones.push(z);
            }),
            InvalidSnapshot::DuplicateZone { zone: 1 }
        ));
        assert!(matches!(
            err(|s| s.zones[0].soa = None),
            InvalidSnapshot::MissingSoa { zone: 0 }
        ));
        assert!(matches!(
            err(|s| {
                s.zones[0].soa.as_mut().unwrap().rdata[0].pop();
            }),
            InvalidSnapshot::MissingSoa { .. }
        ));
        // A node that belongs in a child zone must name the child zone.
        assert!(matches!(
            err(|s| {
                let mut z = s.zones[0].clone();
                z.apex = name("sub.gslb.test.");
                s.zones.push(z);
                s.nodes.push(proto::Node {
                    name: name("x.sub.gslb.test."),
                    zone: 0,
                    ..Default::default()
                });
            }),
            InvalidSnapshot::NodeOutsideZone { .. }
        ));
    }

    #[test]
    fn rejects_bad_records() {
        fn node<'a>(s: &'a mut proto::Snapshot, n: &str) -> &'a mut proto::Node {
            s.nodes.iter_mut().find(|x| x.name == name(n)).unwrap()
        }
        assert!(matches!(
            err(|s| node(s, "www.gslb.test.").plans[0].candidates[0]
                .rrset
                .as_mut()
                .unwrap()
                .rdata[0]
                .push(0)),
            InvalidSnapshot::BadRdata { rtype: 1, len: 5 }
        ));
        assert!(matches!(
            err(|s| {
                node(s, "www.gslb.test.").plans[1].candidates[0]
                    .rrset
                    .as_mut()
                    .unwrap()
                    .rdata[0]
                    .pop();
            }),
            InvalidSnapshot::BadRdata { rtype: 28, len: 15 }
        ));
        assert!(matches!(
            err(|s| node(s, "www.gslb.test.").plans[0].rtype = 16),
            InvalidSnapshot::PlanType { rtype: 16 }
        ));
        assert!(matches!(
            err(|s| {
                let p = node(s, "www.gslb.test.").plans[0].clone();
                node(s, "www.gslb.test.").plans.push(p);
            }),
            InvalidSnapshot::DuplicateType { rtype: 1 }
        ));
        assert!(matches!(
            err(|s| node(s, "api.gslb.test.")
                .rrsets
                .push(rrset(1, 60, vec![vec![1, 2, 3, 4]]))),
            InvalidSnapshot::DuplicateType { rtype: 1 }
        ));
        assert!(matches!(
            err(|s| node(s, "txt.gslb.test.").rrsets[0].rdata = vec![vec![0; 70_000]]),
            InvalidSnapshot::RdataTooLong { len: 70_000 }
        ));
        assert!(matches!(
            err(|s| node(s, "txt.gslb.test.").rrsets[0].rdata.clear()),
            InvalidSnapshot::EmptyRRset { rtype: 16 }
        ));
        assert!(matches!(
            err(|s| node(s, "txt.gslb.test.").rrsets[0].rtype = 41),
            InvalidSnapshot::BadType { rtype: 41 }
        ));
        assert!(matches!(
            err(|s| node(s, "txt.gslb.test.").rrsets[0].rtype = 70_000),
            InvalidSnapshot::BadType { .. }
        ));
        assert!(matches!(
            err(|s| node(s, "alias.gslb.test.").rrsets.push(rrset(
                16,
                60,
                vec![b"\x01x".to_vec()]
            ))),
            InvalidSnapshot::BadCname
        ));
        assert!(matches!(
            err(|s| node(s, "alias.gslb.test.").rrsets[0].rdata[0] = b"\x03www".to_vec()),
            InvalidSnapshot::BadCname
        ));
        assert!(matches!(
            err(|s| node(s, "www.gslb.test.").plans[0].candidates[0]
                .rrset
                .as_mut()
                .unwrap()
                .rtype = 28),
            InvalidSnapshot::CandidateType { rtype: 28, plan: 1 }
        ));
    }

    #[test]
    fn decision_counter_labels() {
        assert_eq!(
            &*presentation(&name("Www-1_x.gslb.test.")),
            "Www-1_x.gslb.test"
        );
        assert_eq!(&*presentation(b"\x03a.\"\x00"), "a\\046\\034");
        assert_eq!(&*presentation(b"\x00"), "");
        let s = Snapshot::try_from(&fixture()).unwrap();
        let labels: Vec<(&str, &str)> = s.routing_decisions().map(|(d, a, _)| (d, a)).collect();
        assert!(labels.contains(&("www.gslb.test", "round-robin")));
        assert_eq!(
            labels.iter().filter(|(d, _)| *d == "www.gslb.test").count(),
            1,
            "A and AAAA plans share one counter"
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        // Empty, default and absurd messages convert or fail, never panic.
        assert!(Snapshot::try_from(&proto::Snapshot::default()).is_ok());
        let mut s = fixture();
        s.options = Some(proto::ServeOptions {
            edns_udp_size: 1_000_000,
            ecs_enabled: false,
        });
        assert_eq!(Snapshot::try_from(&s).unwrap().edns_udp_size(), u16::MAX);
        s.options = Some(proto::ServeOptions {
            edns_udp_size: 100,
            ecs_enabled: false,
        });
        assert_eq!(Snapshot::try_from(&s).unwrap().edns_udp_size(), 512);
        s.nodes[0].plans[0].policy = 99;
        s.nodes[0].plans[0].when_all_down = -3;
        assert!(Snapshot::try_from(&s).is_ok());
        // Random bytes as names.
        let mut seed = 7u64;
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 58) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8 % 8).collect();
            let mut s = fixture();
            let at = (seed >> 20) as usize % s.nodes.len();
            s.nodes[at].name = bytes.clone();
            let _ = Snapshot::try_from(&s);
            s.zones[0].apex = bytes;
            let _ = Snapshot::try_from(&s);
        }
    }
}
