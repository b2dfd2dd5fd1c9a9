//! Authenticated denial of existence with NSEC3 (RFC 5155), with the
//! parameters RFC 9276 asks for: SHA-1, no extra iterations, an empty salt,
//! no opt-out (`overwatch.dnssec.denial: nsec3`).
//!
//! One NSEC3 per owner name of the zone, empty non-terminals included (their
//! type bitmap is empty, RFC 5155 §7.1), sorted by hash, the last pointing
//! back to the first; the apex also gets a signed NSEC3PARAM RRset. The
//! chain travels in `Zone.nsec3`; the dataplane hashes each query name
//! (hashing needs no key) and picks the matching and covering records
//! itself, so an arbitrary name gets a closest-encloser proof without an
//! online signer. NSEC3 TTL = the zone's negative TTL (RFC 9077).

use opengslb_proto::{Nsec3Chain, Nsec3Record, RRset, Snapshot};
use ring::digest;

use super::nsec::type_bitmap;
use super::rtype;

/// NSEC3 hash algorithm 1: SHA-1.
pub const HASH_SHA1: u8 = 1;
/// Length of a SHA-1 hash.
pub const HASH_LEN: usize = 20;
/// Record type NSEC3.
pub const NSEC3: u16 = 50;
/// Record type NSEC3PARAM.
pub const NSEC3PARAM: u16 = 51;

/// The NSEC3 hash of a lower-case wire name with 0 extra iterations and an
/// empty salt: SHA-1(name) (RFC 5155 §5).
pub fn hash(name: &[u8]) -> [u8; HASH_LEN] {
    let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, name);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Base32hex without padding, lower case (RFC 4648 §7): the owner label of
/// an NSEC3 record.
pub fn base32hex(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Wire-format owner of the NSEC3 record for `hash` in the zone `apex`.
pub fn owner(hash: &[u8; HASH_LEN], apex: &[u8]) -> Vec<u8> {
    let label = base32hex(hash);
    let mut out = Vec::with_capacity(1 + label.len() + apex.len());
    out.push(label.len() as u8);
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(apex);
    out
}

/// NSEC3PARAM RDATA: SHA-1, flags 0, 0 iterations, empty salt.
pub fn param_rdata() -> Vec<u8> {
    vec![HASH_SHA1, 0, 0, 0, 0]
}

/// NSEC3 RDATA: SHA-1, no opt-out, 0 iterations, empty salt, the next
/// hashed owner, the type bit maps.
pub fn rdata(next: &[u8; HASH_LEN], types: &mut Vec<u16>) -> Vec<u8> {
    let bitmap = if types.is_empty() {
        Vec::new()
    } else {
        type_bitmap(types)
    };
    let mut out = Vec::with_capacity(6 + HASH_LEN + bitmap.len());
    out.extend_from_slice(&[HASH_SHA1, 0, 0, 0, 0, HASH_LEN as u8]);
    out.extend_from_slice(next);
    out.extend_from_slice(&bitmap);
    out
}

/// Builds the NSEC3 chain of zone `zi` into `Zone.nsec3` (and clears every
/// node's NSEC), calling `sign(owner, set)` on the NSEC3PARAM RRset and on
/// each NSEC3 RRset. `param_ttl` is the NSEC3PARAM TTL (the SOA's), `ttl`
/// the NSEC3 TTL (the negative TTL).
pub fn build_chain(
    snap: &mut Snapshot,
    zi: usize,
    ttl: u32,
    param_ttl: u32,
    mut sign: impl FnMut(&[u8], &mut RRset),
) {
    let Some(zone) = snap.zones.get(zi) else {
        return;
    };
    let apex = zone.apex.clone();
    let has_dnskey = zone.dnskey.as_ref().is_some_and(|d| !d.rdata.is_empty());
    let zone_index = u32::try_from(zi).unwrap_or(u32::MAX);
    // (hash, types) of every owner name; the apex even when no node holds it.
    let mut entries: Vec<([u8; HASH_LEN], Vec<u16>)> = Vec::new();
    let mut apex_seen = false;
    for node in snap.nodes.iter_mut().filter(|n| n.zone == zone_index) {
        node.denial.clear();
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
            apex_seen = true;
            types.extend(apex_types(has_dnskey));
        }
        if !types.is_empty() {
            types.push(rtype::RRSIG);
        }
        entries.push((hash(&node.name), types));
    }
    if !apex_seen {
        let mut types: Vec<u16> = apex_types(has_dnskey).collect();
        types.push(rtype::RRSIG);
        entries.push((hash(&apex), types));
    }
    entries.sort_by_key(|e| e.0);
    entries.dedup_by(|a, b| a.0 == b.0);
    let mut records = Vec::with_capacity(entries.len());
    for i in 0..entries.len() {
        let next = entries[(i + 1) % entries.len()].0;
        let (h, types) = &mut entries[i];
        let mut set = RRset {
            rtype: u32::from(NSEC3),
            ttl,
            rdata: vec![rdata(&next, types)],
            rrsig: Vec::new(),
        };
        sign(&owner(h, &apex), &mut set);
        records.push(Nsec3Record {
            hash: h.to_vec(),
            rrset: Some(set),
        });
    }
    let mut param = RRset {
        rtype: u32::from(NSEC3PARAM),
        ttl: param_ttl,
        rdata: vec![param_rdata()],
        rrsig: Vec::new(),
    };
    sign(&apex, &mut param);
    if let Some(zone) = snap.zones.get_mut(zi) {
        zone.nsec3 = Some(Nsec3Chain {
            param: Some(param),
            records,
        });
    }
}

fn apex_types(has_dnskey: bool) -> impl Iterator<Item = u16> {
    [rtype::SOA, rtype::NS, NSEC3PARAM]
        .into_iter()
        .chain(has_dnskey.then_some(rtype::DNSKEY))
}
