//! The owner-name index of a snapshot: name → node index, with no heap block
//! per name.
//!
//! An open-addressing table of `u64` (linear probing, at most half full)
//! maps a name's hash to its index; each slot also keeps the hash's high 32
//! bits, so a probe that lands on another name is rejected without reading
//! that name. The answer path uses [`NameIndex::probe`], which reads only
//! the slots and lets the node confirm with its own copy of the name
//! (`hot::Key`, in the node's first cache line): one line of the index and
//! one of the node, no allocation, no SipHash.
//!
//! While a snapshot is built, the index also holds every name's wire octets
//! back to back (`bytes`, node order; `ends[i]` is where name `i` ends), for
//! [`NameIndex::insert`] to refuse a duplicate and for the build's own
//! lookups. [`NameIndex::finish`] drops them once the nodes exist: a built
//! index is the slots alone, 16 octets per name at 100,000 names (it was
//! ~39 with the octets kept, and ~60 plus a heap block per name as a
//! `HashMap<Box<[u8]>, u32>`).
//!
//! The names come from the controlplane (trusted, and validated before they
//! get here); queries only look up, so no client can grow a probe chain.

/// Name → dense index (the order of insertion).
#[derive(Debug, Default)]
pub(crate) struct NameIndex {
    /// The names' octets; emptied by [`NameIndex::finish`].
    bytes: Vec<u8>,
    /// Where each name ends in `bytes`; emptied by [`NameIndex::finish`].
    ends: Vec<u32>,
    /// Number of names (kept when `finish` drops their octets).
    count: usize,
    /// Low 32 bits: index + 1 of the name in this slot, 0 = empty; high 32
    /// bits: the high half of the name's hash. Length: a power of two.
    slots: Box<[u64]>,
}

impl NameIndex {
    /// An index sized for `n` names of about `avg_len` octets.
    pub(crate) fn with_capacity(n: usize, avg_len: usize) -> Self {
        let (bytes, ends) = (
            Vec::with_capacity(n.saturating_mul(avg_len)),
            Vec::with_capacity(n),
        );
        crate::memory::advise_huge_pages(&bytes);
        crate::memory::advise_huge_pages(&ends);
        Self {
            bytes,
            ends,
            count: 0,
            slots: new_slots(table_size(n)),
        }
    }

    /// Number of names.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Adds `name` with the next index (`len()` before the call). `None` when
    /// it is already present (or the index is full: 2^32 - 2 names).
    ///
    /// One hash and one probe sequence: the probe that finds no equal name
    /// ends at the empty slot the new name takes (a snapshot build inserts
    /// every name once, so this is the index's whole build cost).
    pub(crate) fn insert(&mut self, name: &[u8]) -> Option<u32> {
        if self.ends.len() != self.count {
            return None; // finished: the names are gone
        }
        let index = u32::try_from(self.ends.len()).ok()?;
        let tag = index.checked_add(1)?;
        if (self.ends.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let h = hash(name);
        let mask = self.slots.len() - 1;
        let mut at = h as usize & mask;
        // The table is at most half full: an empty slot exists.
        loop {
            let found = *self.slots.get(at)?;
            if found == 0 {
                break;
            }
            if found >> 32 == h >> 32 && self.name(found as u32 - 1) == Some(name) {
                return None;
            }
            at = (at + 1) & mask;
        }
        self.bytes.extend_from_slice(name);
        self.ends.push(u32::try_from(self.bytes.len()).ok()?);
        self.count += 1;
        *self.slots.get_mut(at)? = slot(h, tag);
        Some(index)
    }

    /// Index of `name`.
    #[inline]
    pub(crate) fn get(&self, name: &[u8]) -> Option<u32> {
        let mask = self.slots.len().checked_sub(1)?;
        let h = hash(name);
        let mut at = h as usize & mask;
        loop {
            let found = *self.slots.get(at)?;
            let index = (found as u32).checked_sub(1)?;
            if found >> 32 == h >> 32 && self.name(index) == Some(name) {
                return Some(index);
            }
            at = (at + 1) & mask;
        }
    }

    /// The first of `name`'s candidates (indices of names whose hash tag
    /// matches, in probe order) that `confirm` accepts, with what it
    /// returned. The answer path confirms with the node's own copy of its
    /// name (`hot::Key`), so a lookup reads no octet of this index but the
    /// slots.
    #[inline]
    pub(crate) fn probe<T>(
        &self,
        name: &[u8],
        mut confirm: impl FnMut(u32) -> Option<T>,
    ) -> Option<(u32, T)> {
        let mask = self.slots.len().checked_sub(1)?;
        let h = hash(name);
        let mut at = h as usize & mask;
        loop {
            let found = *self.slots.get(at)?;
            let index = (found as u32).checked_sub(1)?;
            if found >> 32 == h >> 32 {
                if let Some(t) = confirm(index) {
                    return Some((index, t));
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Hints the slot where `name`'s probe starts into the cache, and
    /// returns the hash for [`NameIndex::first_candidate`]. `name` may be in
    /// any case (the hash folds it). Reads nothing, cannot fail.
    #[inline]
    pub(crate) fn prefetch_slot(&self, name: &[u8]) -> u64 {
        let h = hash(name);
        if let Some(s) = self
            .slots
            .get(h as usize & self.slots.len().wrapping_sub(1))
        {
            crate::prefetch::line(s);
        }
        h
    }

    /// The index in the first slot of hash `h`'s probe, when that slot's
    /// tag matches: the likeliest node of the name (for a prefetch hint).
    #[inline]
    pub(crate) fn first_candidate(&self, h: u64) -> Option<u32> {
        let found = *self
            .slots
            .get(h as usize & self.slots.len().checked_sub(1)?)?;
        if found >> 32 != h >> 32 {
            return None;
        }
        (found as u32).checked_sub(1)
    }

    /// The name at `index`.
    #[inline]
    pub(crate) fn name(&self, index: u32) -> Option<&[u8]> {
        let i = index as usize;
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)? as usize,
        };
        self.bytes.get(start..end)
    }

    /// Drops the names' own octets once the snapshot is built: from then on
    /// only [`NameIndex::probe`] (and the prefetch hints) may be used, with
    /// the caller confirming a candidate by its own copy of the name (a
    /// node's key). `get`, `name` and `insert` find nothing after this.
    /// (At 100,000 names, 2.3 MB less per snapshot; at 1,000,000, 23 MB.)
    pub(crate) fn finish(&mut self) {
        self.bytes = Vec::new();
        self.ends = Vec::new();
    }

    fn place(&mut self, h: u64, tag: u32) {
        let mask = self.slots.len() - 1;
        let mut at = h as usize & mask;
        // The table is at most half full: an empty slot exists.
        while let Some(slot) = self.slots.get_mut(at) {
            if *slot == 0 {
                *slot = self::slot(h, tag);
                return;
            }
            at = (at + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let size = table_size((self.ends.len() + 1) * 2);
        self.slots = new_slots(size);
        for i in 0..self.ends.len() {
            let h = match self.name(i as u32) {
                Some(n) => hash(n),
                None => continue,
            };
            self.place(h, i as u32 + 1);
        }
    }
}

/// An empty table of `size` slots (huge pages asked for when it is big).
fn new_slots(size: usize) -> Box<[u64]> {
    let slots = vec![0; size];
    crate::memory::advise_huge_pages(&slots);
    slots.into_boxed_slice()
}

/// A slot holding `tag` (index + 1) of a name whose hash is `h`.
#[inline]
fn slot(h: u64, tag: u32) -> u64 {
    (h >> 32) << 32 | u64::from(tag)
}

/// Slots for `n` names: a power of two, at least twice `n`, at least 8.
fn table_size(n: usize) -> usize {
    n.saturating_mul(2).max(8).next_power_of_two()
}

/// A fast, non-cryptographic hash of a wire name (FxHash-style, eight
/// octets at a time, length mixed in). Every octet is hashed with its 0x20
/// bit set, so a name hashes the same in any letter case: the UDP worker
/// hashes a question as the client wrote it to prefetch its slot, before it
/// lower-cases it. (Other octets that differ only in that bit share a hash
/// input; the names are still compared in full.)
#[inline]
fn hash(name: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let mut h = (name.len() as u64).wrapping_mul(K);
    let mut chunks = name.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ (u64::from_le_bytes(w) | FOLD)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        if let Some(dst) = w.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        h = (h.rotate_left(5) ^ (u64::from_le_bytes(w) | FOLD)).wrapping_mul(K);
    }
    // The multiplies carry a difference only towards the high bits, so the
    // low bits (the slot index) of names that differ in a few octets came
    // out alike: with `h ^ (h >> 29)` here, 2,000 names `hostNNN.test` sat
    // 25 slots from home on average and only 52 % of the bench's 100,000
    // names in their first slot. One full 64 x 64 multiply, its two halves
    // folded, mixes every bit into every bit: 0.5 and 0.3 slots, 75-81 %
    // at home (what a random hash gives at this load).
    let p = u128::from(h) * 0x9e37_79b9_7f4a_7c15;
    (p ^ (p >> 64)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_duplicates_and_growth() {
        let mut ix = NameIndex::with_capacity(2, 8);
        let names: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| {
                let l = format!("h{i:06}");
                let mut n = vec![l.len() as u8];
                n.extend_from_slice(l.as_bytes());
                n.extend_from_slice(b"\x04gslb\x04test\x00");
                n
            })
            .collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(ix.insert(n), Some(i as u32));
        }
        assert_eq!(ix.len(), 5000);
        assert_eq!(ix.insert(&names[17]), None, "duplicate refused");
        for (i, n) in names.iter().enumerate() {
            assert_eq!(ix.get(n), Some(i as u32));
            assert_eq!(ix.name(i as u32), Some(&n[..]));
        }
        assert_eq!(ix.get(b"\x01x\x00"), None);
        assert_eq!(ix.get(b""), None);
        // A prefix of a stored name is not that name.
        assert_eq!(ix.get(&names[3][..names[3].len() - 1]), None);
        // The table never fills beyond half.
        assert!(ix.slots.len() >= 2 * ix.len());
    }

    #[test]
    fn a_finished_index_keeps_its_slots_and_drops_the_octets() {
        let mut ix = NameIndex::with_capacity(1_000, 10);
        let names: Vec<Vec<u8>> = (0..1_000u32)
            .map(|i| format!("\x04f{i:03}\x00").into_bytes())
            .collect();
        for n in &names {
            ix.insert(n).unwrap();
        }
        ix.finish();
        assert_eq!(ix.len(), 1_000);
        assert_eq!((ix.bytes.capacity(), ix.ends.capacity()), (0, 0));
        for (i, n) in names.iter().enumerate() {
            // Confirmed by the caller's own copy (the node key, in a snapshot).
            let got = ix.probe(n, |j| (names[j as usize] == *n).then_some(()));
            assert_eq!(got, Some((i as u32, ())));
        }
        assert_eq!(ix.name(0), None);
        assert_eq!(
            ix.insert(b"\x04f999\x00"),
            None,
            "no insert without the octets"
        );
        assert_eq!(ix.len(), 1_000);
    }

    #[test]
    fn prefetch_hash_finds_the_name_in_any_case() {
        let mut ix = NameIndex::with_capacity(2_000, 12);
        let names: Vec<Vec<u8>> = (0..2_000u32)
            .map(|i| format!("\x07host{i:03}\x04test\x00").into_bytes())
            .collect();
        for n in &names {
            ix.insert(n).unwrap();
        }
        let mut first = 0;
        for (i, n) in names.iter().enumerate() {
            let upper = n.to_ascii_uppercase();
            let h = ix.prefetch_slot(&upper);
            assert_eq!(h, ix.prefetch_slot(n), "the hash folds letter case");
            // The probe's first slot proposes the name unless an earlier
            // name took it (linear probing): most do.
            first += usize::from(ix.first_candidate(h) == Some(i as u32));
            assert_eq!(ix.get(n), Some(i as u32), "lookups are unchanged");
        }
        // About 75 % with a well-mixed hash at this load (2,000 of 4,096
        // slots); a hash whose low bits ignore the name's middle octets put
        // 3 % there.
        assert!(
            first > 1_300,
            "only {first} of 2,000 names in their first slot"
        );
        // A name that is not there proposes nothing or another name.
        let h = ix.prefetch_slot(b"\x07absent0\x04test\x00");
        assert!(ix
            .first_candidate(h)
            .is_none_or(|i| ix.name(i) != Some(&b"\x07absent0\x04test\x00"[..])));
        // An empty index proposes nothing and does not panic.
        let empty = NameIndex::default();
        assert_eq!(empty.first_candidate(empty.prefetch_slot(b"\x00")), None);
    }

    #[test]
    fn probe_offers_tag_matches_until_one_is_confirmed() {
        let mut ix = NameIndex::with_capacity(4, 8);
        let names: Vec<Vec<u8>> = (0..300u32)
            .map(|i| format!("\x04n{i:03}\x00").into_bytes())
            .collect();
        for n in &names {
            ix.insert(n).unwrap();
        }
        for (i, n) in names.iter().enumerate() {
            // Confirmed by the caller's own copy of the name.
            let got = ix.probe(n, |j| (ix.name(j) == Some(&n[..])).then_some(j));
            assert_eq!(got, Some((i as u32, i as u32)));
            // A caller that confirms nothing ends at an empty slot.
            let mut offered = 0;
            assert_eq!(
                ix.probe::<()>(n, |_| {
                    offered += 1;
                    None
                }),
                None
            );
            assert!(offered >= 1, "its own slot is offered");
        }
        assert_eq!(ix.probe(b"\x01x\x00", Some), None);
    }

    #[test]
    fn empty_index_finds_nothing() {
        let ix = NameIndex::default();
        assert_eq!(ix.get(b"\x00"), None);
        assert_eq!(ix.name(0), None);
        let ix = NameIndex::with_capacity(0, 0);
        assert_eq!(ix.get(b"\x00"), None);
        assert_eq!(ix.probe(b"\x00", Some), None);
    }
}
