//! A delta applied to a compiled snapshot in time proportional to the delta.
//!
//! A health, weight or override change replaces the answer plans (and their
//! RRSIGs) of a few existing names and the zones' SOA. [`Snapshot::patch`]
//! builds the next snapshot from the current one: it compiles only the
//! nodes and zones the delta carries, and shares everything else with its
//! predecessor — node chunks ([`Nodes`]), the name index, the apex map, the
//! NSEC owner lists, unchanged NSEC3 chains, the geo table and the decision
//! and geo counters (so the counts carry over without a merge). Deltas that
//! change the set of names, the zones or the geo table are left to the full
//! compile (`Ok(None)`).

use std::{collections::BTreeMap, sync::Arc};

use opengslb_proto as proto;

use super::{
    compile_node, compile_zone, edns_udp_size, is_valid_soa, zone_rrsets, InvalidSnapshot, Node,
    RRset, Snapshot, Zone,
};

/// log2 of the nodes per chunk.
const SHIFT: u32 = 7;
/// Nodes per chunk: replacing one node copies its chunk (128 nodes, 16
/// KiB and their records); a patch copies the chunk table (one pointer
/// per chunk: 13 KiB for 100,000 names, small enough to stay in a cache
/// close to the core on the lookup path).
const CHUNK: usize = 1 << SHIFT;

/// The nodes of a snapshot, in fixed-size chunks shared between snapshots.
/// Node `i` is entry `i % CHUNK` of chunk `i / CHUNK`.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    chunks: Box<[Arc<[Node]>]>,
    len: usize,
}

// === impl Nodes ===

impl Nodes {
    /// `nodes`, chunked (node `i` keeps index `i`).
    pub(crate) fn from_vec(nodes: Vec<Node>) -> Self {
        let len = nodes.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let mut it = nodes.into_iter();
        loop {
            let chunk: Vec<Node> = it.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(Arc::from(chunk));
        }
        Self {
            chunks: chunks.into_boxed_slice(),
            len,
        }
    }

    /// Node `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&Node> {
        self.chunks.get(i >> SHIFT)?.get(i & (CHUNK - 1))
    }

    /// Number of nodes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// A copy with `changed` (index → node) in place: the chunks holding a
    /// changed node are copied, all others shared with `self`.
    fn with(&self, changed: BTreeMap<usize, Node>) -> Self {
        let mut chunks = self.chunks.to_vec();
        let mut changed = changed.into_iter().peekable();
        while let Some((first, node)) = changed.next() {
            let c = first >> SHIFT;
            let mut here = vec![(first & (CHUNK - 1), node)];
            while let Some((j, n)) = changed.next_if(|(j, _)| j >> SHIFT == c) {
                here.push((j & (CHUNK - 1), n));
            }
            let Some(slot) = chunks.get_mut(c) else {
                continue;
            };
            let mut next: Vec<Option<Node>> = vec![None; slot.len()];
            for (k, n) in here {
                if let Some(s) = next.get_mut(k) {
                    *s = Some(n);
                }
            }
            let copied: Vec<Node> = next
                .into_iter()
                .zip(slot.iter())
                .map(|(new, old)| new.unwrap_or_else(|| old.clone()))
                .collect();
            *slot = copied.into();
        }
        Self {
            chunks: chunks.into_boxed_slice(),
            len: self.len,
        }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// `self` + `delta`, when the delta only changes existing names and
    /// the SOA, NS or DNSKEY of existing zones (health, weights, overrides,
    /// records, signatures); `Ok(None)` when it must go through the full
    /// compile: names added or removed, a zone added, a new geo table, a
    /// node that gains or loses its plans, its policy's counter label, its
    /// geolocation plans or its NSEC, or a delta not against `self`.
    ///
    /// `zones` are the proto zones `self` was compiled from (the apex
    /// RRsets of a changed zone are rebuilt from them, and an NSEC3 chain
    /// equal to the old one is kept as compiled). The checks are those of
    /// [`Snapshot::compile`] for what the delta carries: an invalid node or
    /// zone is an error, as it would be there.
    pub(crate) fn patch(
        &self,
        zones: &[proto::Zone],
        delta: &proto::SnapshotDelta,
    ) -> Result<Option<Snapshot>, InvalidSnapshot> {
        if delta.base_generation != self.generation
            || delta.generation <= self.generation
            || !delta.remove_nodes.is_empty()
            || delta.geo.is_some()
            || zones.len() != self.zones.len()
        {
            return Ok(None);
        }

        // The zones after the delta; a changed one is recompiled.
        let mut next_zones: Vec<&proto::Zone> = zones.iter().collect();
        let mut zone_changed = vec![false; zones.len()];
        for dz in &delta.zones {
            let Some(i) = zones.iter().position(|z| z.apex == dz.apex) else {
                return Ok(None);
            };
            next_zones[i] = dz;
            zone_changed[i] = true;
        }
        let mut compiled_zones: Vec<Zone> = Vec::with_capacity(self.zones.len());
        for (i, ((z, old), &changed)) in next_zones
            .iter()
            .zip(self.zones.iter())
            .zip(&zone_changed)
            .enumerate()
        {
            if !changed {
                compiled_zones.push(old.clone());
                continue;
            }
            let soa = z
                .soa
                .as_ref()
                .filter(|s| s.rdata.len() == 1 && is_valid_soa(&s.rdata[0]))
                .ok_or(InvalidSnapshot::MissingSoa { zone: i })?;
            let keep = zones
                .get(i)
                .filter(|before| before.nsec3 == z.nsec3)
                .and_then(|_| old.nsec3.clone());
            let mut zone = compile_zone(z, soa, keep)?;
            zone.nsec_owners = old.nsec_owners.clone();
            compiled_zones.push(zone);
        }

        // The nodes the delta carries, compiled; the later of two wins.
        let mut changed: BTreeMap<usize, Node> = BTreeMap::new();
        for un in &delta.upsert_nodes {
            let Some((index, _)) = self.node(&un.name) else {
                return Ok(None);
            };
            let Some(old) = self.nodes.get(index as usize) else {
                return Ok(None);
            };
            if un.zone != old.zone {
                return Ok(None);
            }
            let Some(zone) = next_zones.get(un.zone as usize) else {
                return Ok(None);
            };
            let apex = (un.name == zone.apex).then_some(*zone);
            let mut fresh = Vec::new();
            let mut node = compile_node(un, apex, &mut fresh)?;
            // The name keeps its decision counter when its label stays.
            let old_counter = old.plans.first().map(|p| p.counter);
            match (old_counter, fresh.first()) {
                (None, None) => {}
                (Some(c), Some(d))
                    if self
                        .decisions
                        .get(c as usize)
                        .is_some_and(|o| o.algorithm() == d.algorithm()) =>
                {
                    for p in node.plans.iter_mut() {
                        p.counter = c;
                    }
                }
                _ => return Ok(None),
            }
            // Geolocation plans keep their counters (the table is the same).
            let old_geo = old
                .plans
                .iter()
                .find_map(|p| p.geo.as_ref().map(|g| g.counters));
            let new_geo = node
                .plans
                .iter()
                .any(|p| p.policy == proto::Policy::Geolocation);
            match (old_geo, new_geo) {
                (None, false) => {}
                (Some(counters), true) => {
                    let regions = self.geo.as_deref().map_or(0, |t| t.regions().len());
                    for (pp, plan) in un.plans.iter().zip(node.plans.iter_mut()) {
                        if plan.policy == proto::Policy::Geolocation {
                            let g =
                                crate::geo::GeoPlan::new(pp, &plan.candidates, regions, counters)?;
                            plan.geo = Some(Box::new(g));
                        }
                    }
                }
                _ => return Ok(None),
            }
            // The NSEC owner lists stay as they are.
            if old.denial.is_some() != node.denial.is_some() {
                return Ok(None);
            }
            changed.insert(index as usize, node);
        }

        // Apexes of changed zones the delta does not carry: new zone
        // RRsets, the node's own ones kept.
        for (i, z) in next_zones.iter().enumerate() {
            if !zone_changed[i] {
                continue;
            }
            let Some((index, _)) = self.node(&z.apex) else {
                return Ok(None);
            };
            if changed.contains_key(&(index as usize)) {
                continue;
            }
            let (Some(old), Some(before)) = (self.nodes.get(index as usize), zones.get(i)) else {
                return Ok(None);
            };
            let mut prefix_before = Vec::new();
            zone_rrsets(before, &mut prefix_before)?;
            let own = old.rrsets.get(prefix_before.len()..).unwrap_or(&[]);
            let mut rrsets: Vec<RRset> = Vec::with_capacity(prefix_before.len() + own.len());
            zone_rrsets(z, &mut rrsets)?;
            for r in own {
                if rrsets.iter().any(|x| x.rtype == r.rtype) {
                    return Err(InvalidSnapshot::DuplicateType {
                        rtype: u32::from(r.rtype),
                    });
                }
            }
            rrsets.extend(own.iter().cloned());
            if old.cname_target.is_some() {
                return Err(InvalidSnapshot::BadCname);
            }
            let mut node = old.clone();
            node.rrsets = rrsets.into_boxed_slice();
            changed.insert(index as usize, node);
        }

        let (edns_udp_size, ecs_enabled) = match &delta.options {
            Some(o) => (edns_udp_size(Some(o)), o.ecs_enabled),
            None => (self.edns_udp_size, self.ecs_enabled),
        };
        Ok(Some(Snapshot {
            generation: delta.generation,
            edns_udp_size,
            zones: compiled_zones.into_boxed_slice(),
            nodes: self.nodes.with(changed),
            names: self.names.clone(),
            apexes: self.apexes.clone(),
            decisions: self.decisions.clone(),
            geo: self.geo.clone(),
            ecs_enabled,
            geo_counters: self.geo_counters.clone(),
        }))
    }
}

#[cfg(test)]
mod tests;
