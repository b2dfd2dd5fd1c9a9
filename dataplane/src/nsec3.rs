//! NSEC3 (RFC 5155) denial for zones the controlplane signs with
//! `overwatch.dnssec.denial: nsec3`: the zone's pre-signed NSEC3 records,
//! sorted by hash, and the allocation-free lookups the answer path needs.
//!
//! The parameters are those of RFC 9276: SHA-1, no extra iterations, an
//! empty salt; a chain with other parameters is refused when the snapshot
//! is checked. Hashing a query name is public computation (no key): the
//! dataplane hashes the names of a closest-encloser proof itself and
//! binary-searches the records; it never signs anything.

use opengslb_proto as proto;
use ring::digest;

use crate::snapshot::{compile_rrset, InvalidSnapshot, RRset};
use crate::wire;

/// Length of a SHA-1 hash.
pub(crate) const HASH_LEN: usize = 20;
/// Length of the base32hex owner label of an NSEC3 record.
pub(crate) const LABEL_LEN: usize = 32;
/// Record type NSEC3.
pub(crate) const NSEC3: u16 = 50;
/// Record type NSEC3PARAM.
pub(crate) const NSEC3PARAM: u16 = 51;
/// RDATA prefix of every accepted NSEC3: SHA-1, no opt-out, 0 iterations,
/// empty salt, 20-octet next hash.
const RDATA_PREFIX: [u8; 6] = [1, 0, 0, 0, 0, HASH_LEN as u8];

/// The NSEC3 chain of one zone.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    /// Hashes in ascending order (the order of the chain).
    pub(crate) hashes: Box<[[u8; HASH_LEN]]>,
    /// Owner label of each record: base32hex of its hash, lower case.
    pub(crate) labels: Box<[[u8; LABEL_LEN]]>,
    /// The NSEC3 RRset (one record) of each hash, with its RRSIGs.
    pub(crate) records: Box<[RRset]>,
}

/// Where a hash falls in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Record `i` is owned by this hash.
    Match(usize),
    /// Record `i` covers it (its hash sorts before it, its next after it,
    /// wrapping at the end).
    Cover(usize),
}

/// The NSEC3 hash of a lower-case wire name (0 extra iterations, empty
/// salt): SHA-1 of the name. No allocation.
pub(crate) fn hash(name: &[u8]) -> [u8; HASH_LEN] {
    let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, name);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Base32hex, lower case, of a hash (RFC 4648 §7; 20 octets make exactly 32
/// characters, no padding).
pub(crate) fn base32hex(hash: &[u8; HASH_LEN]) -> [u8; LABEL_LEN] {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = [0u8; LABEL_LEN];
    for (chunk, dst) in hash.chunks_exact(5).zip(out.chunks_exact_mut(8)) {
        let mut v: u64 = 0;
        for &b in chunk {
            v = (v << 8) | u64::from(b);
        }
        for (i, d) in dst.iter_mut().enumerate() {
            *d = ALPHABET[((v >> (35 - 5 * i)) & 31) as usize];
        }
    }
    out
}

// === impl Chain ===

impl Chain {
    /// Checks and compiles a chain from the snapshot: every record SHA-1
    /// with 0 iterations and an empty salt, one per hash, each record's next
    /// hash the following one's (a closed chain).
    pub(crate) fn compile(c: &proto::Nsec3Chain) -> Result<Self, InvalidSnapshot> {
        let bad = |reason: &'static str| InvalidSnapshot::BadNsec3 { reason };
        let mut entries: Vec<([u8; HASH_LEN], &proto::RRset)> = Vec::with_capacity(c.records.len());
        for r in &c.records {
            let h: [u8; HASH_LEN] = r
                .hash
                .as_slice()
                .try_into()
                .map_err(|_| bad("hash is not 20 octets"))?;
            let set = r.rrset.as_ref().ok_or(bad("record without RRset"))?;
            let [rdata] = set.rdata.as_slice() else {
                return Err(bad("an NSEC3 RRset must hold one record"));
            };
            if set.rtype != u32::from(NSEC3) {
                return Err(bad("record type is not NSEC3"));
            }
            if rdata.get(..RDATA_PREFIX.len()) != Some(&RDATA_PREFIX[..])
                || rdata.len() < RDATA_PREFIX.len() + HASH_LEN
            {
                return Err(bad(
                    "only SHA-1, 0 iterations, empty salt and no opt-out are served",
                ));
            }
            entries.push((h, set));
        }
        if entries.is_empty() {
            return Err(bad("empty chain"));
        }
        entries.sort_by_key(|e| e.0);
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(bad("two records for one hash"));
        }
        for (i, (_, set)) in entries.iter().enumerate() {
            let next = &entries[(i + 1) % entries.len()].0;
            let rd = &set.rdata[0];
            if rd.get(RDATA_PREFIX.len()..RDATA_PREFIX.len() + HASH_LEN) != Some(&next[..]) {
                return Err(bad("next hashed owner does not match the chain"));
            }
        }
        let mut hashes = Vec::with_capacity(entries.len());
        let mut labels = Vec::with_capacity(entries.len());
        let mut records = Vec::with_capacity(entries.len());
        for (h, set) in entries {
            hashes.push(h);
            labels.push(base32hex(&h));
            records.push(compile_rrset(NSEC3, set)?);
        }
        Ok(Self {
            hashes: hashes.into_boxed_slice(),
            labels: labels.into_boxed_slice(),
            records: records.into_boxed_slice(),
        })
    }

    /// The record owned by `h`, or the one covering it. Binary search.
    pub(crate) fn find(&self, h: &[u8; HASH_LEN]) -> Option<Found> {
        let i = self.hashes.partition_point(|x| x < h);
        if self.hashes.get(i) == Some(h) {
            return Some(Found::Match(i));
        }
        // Before the first hash: the last record covers it (wrap).
        let cover = i.checked_sub(1).or(self.hashes.len().checked_sub(1))?;
        Some(Found::Cover(cover))
    }

    /// The record owned by the hash of `name`, if any.
    pub(crate) fn matching(&self, name: &[u8]) -> Option<usize> {
        match self.find(&hash(name))? {
            Found::Match(i) => Some(i),
            Found::Cover(_) => None,
        }
    }

    /// The record covering the hash of `name` (or matching it, which only a
    /// broken chain would give for a name that does not exist).
    pub(crate) fn covering(&self, name: &[u8]) -> Option<usize> {
        match self.find(&hash(name))? {
            Found::Match(i) | Found::Cover(i) => Some(i),
        }
    }
}

/// The NSEC3PARAM RRset of a chain, checked like its records.
pub(crate) fn compile_param(c: &proto::Nsec3Chain) -> Result<Option<RRset>, InvalidSnapshot> {
    let Some(p) = c.param.as_ref().filter(|p| !p.rdata.is_empty()) else {
        return Ok(None);
    };
    if p.rdata.iter().any(|r| r.as_slice() != [1, 0, 0, 0, 0]) {
        return Err(InvalidSnapshot::BadNsec3 {
            reason: "NSEC3PARAM must be SHA-1, 0 iterations, empty salt",
        });
    }
    compile_rrset(NSEC3PARAM, p).map(Some)
}

/// `*.` + `encloser` into `buf`; the slice written, `None` when too long.
pub(crate) fn wildcard<'b>(
    encloser: &[u8],
    buf: &'b mut [u8; wire::MAX_NAME_LEN],
) -> Option<&'b [u8]> {
    let len = encloser.len() + 2;
    if len > wire::MAX_NAME_LEN {
        return None;
    }
    let slot = buf.get_mut(..len)?;
    slot[0] = 1;
    slot[1] = b'*';
    slot[2..].copy_from_slice(encloser);
    Some(slot)
}
