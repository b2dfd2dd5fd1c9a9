//! Authenticated denial of existence with NSEC (RFC 4034 §4, RFC 4035
//! §2.3): one NSEC per owner name of a zone, empty non-terminals included
//! (an empty non-terminal then holds only its NSEC, so NODATA for it is
//! proved by its own NSEC like any other name), in canonical order, the last
//! pointing back to the apex. The NSEC TTL is the zone's negative TTL
//! (RFC 9077).

use std::cmp::Ordering;

use opengslb_proto::{RRset, Snapshot};

use super::rtype;

/// Builds the NSEC chain of zone `zi` into each node's `denial`, calling
/// `sign` on each NSEC RRset.
pub fn build_chain(
    snap: &mut Snapshot,
    zi: usize,
    ttl: u32,
    mut sign: impl FnMut(&[u8], &mut RRset),
) {
    let Some(zone) = snap.zones.get(zi) else {
        return;
    };
    let apex = zone.apex.clone();
    let has_dnskey = zone.dnskey.as_ref().is_some_and(|d| !d.rdata.is_empty());
    let zone_index = u32::try_from(zi).unwrap_or(u32::MAX);
    let mut order: Vec<usize> = snap
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.zone == zone_index)
        .map(|(i, _)| i)
        .collect();
    order.sort_by(|&a, &b| canonical_cmp(&snap.nodes[a].name, &snap.nodes[b].name));
    for (pos, &i) in order.iter().enumerate() {
        let next = match order.get(pos + 1) {
            Some(&j) => snap.nodes[j].name.clone(),
            None => apex.clone(),
        };
        let node = &mut snap.nodes[i];
        let mut types: Vec<u16> = node
            .rrsets
            .iter()
            .filter(|s| !s.rdata.is_empty())
            .filter_map(|s| u16::try_from(s.rtype).ok())
            .chain(
                node.plans
                    .iter()
                    .filter_map(|p| u16::try_from(p.rtype).ok()),
            )
            .collect();
        if node.name == apex {
            types.extend([rtype::SOA, rtype::NS]);
            if has_dnskey {
                types.push(rtype::DNSKEY);
            }
        }
        types.extend([rtype::RRSIG, rtype::NSEC]);
        let mut rdata = next;
        rdata.extend_from_slice(&type_bitmap(&mut types));
        let mut set = RRset {
            rtype: u32::from(rtype::NSEC),
            ttl,
            rdata: vec![rdata],
            rrsig: Vec::new(),
        };
        let owner = node.name.clone();
        sign(&owner, &mut set);
        node.denial = vec![set];
    }
}

/// The type bit maps field (RFC 4034 §4.1.2) of `types` (sorted and
/// deduplicated in place).
pub fn type_bitmap(types: &mut Vec<u16>) -> Vec<u8> {
    types.sort_unstable();
    types.dedup();
    let mut out = Vec::new();
    let mut window: Option<(u8, [u8; 32], usize)> = None;
    let flush = |out: &mut Vec<u8>, w: &(u8, [u8; 32], usize)| {
        out.push(w.0);
        out.push(w.2 as u8);
        out.extend_from_slice(&w.1[..w.2]);
    };
    for &t in types.iter() {
        let (hi, lo) = ((t >> 8) as u8, (t & 0xFF) as usize);
        if window.as_ref().is_some_and(|w| w.0 != hi) {
            if let Some(w) = window.take() {
                flush(&mut out, &w);
            }
        }
        let w = window.get_or_insert((hi, [0; 32], 0));
        w.1[lo / 8] |= 0x80 >> (lo % 8);
        w.2 = w.2.max(lo / 8 + 1);
    }
    if let Some(w) = window {
        flush(&mut out, &w);
    }
    out
}

/// RFC 4034 §6.1 canonical order of two lower-case wire-format names:
/// labels compared from the root down, each as an octet string.
pub fn canonical_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let la = labels(a);
    let lb = labels(b);
    for (x, y) in la.iter().rev().zip(lb.iter().rev()) {
        match x.cmp(y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    la.len().cmp(&lb.len())
}

fn labels(name: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        let Some(l) = name.get(i + 1..i + 1 + usize::from(len)) else {
            break;
        };
        out.push(l);
        i += 1 + usize::from(len);
    }
    out
}
