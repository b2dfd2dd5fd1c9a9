//! A node's key: its name and its plain answers in the node's first cache
//! line, so that a lookup in a big zone touches few lines.
//!
//! A 100,000-name zone does not fit the CPU caches, and a query for a random
//! name used to read six to seven lines that missed (the index slot, the
//! name's end and bytes, the node, its RRset array, the records block). The
//! name index now only proposes candidates (its slot keeps a 32-bit hash
//! tag), and the node confirms: its key starts with its name, and carries
//! right after it the node's unsigned static RRsets, already encoded. The
//! key lies inside the node (the node is two cache lines, aligned, the key
//! the whole first one) when it fits [`INLINE`] octets, as a typical name
//! with an A or AAAA RRset does; a longer name's key is one heap block. A
//! positive answer then reads the index slot and one line of the node.
//!
//! Layout: `[name length][name][set count]`, then per set `[type (u16 LE)]
//! [record count (u8)][octets (u16 LE)][records]`, each record TYPE CLASS TTL
//! RDLENGTH RDATA (the owner left for the answer path), as in `Records`.
//!
//! Which RRsets go here: of a node that is not a zone apex (an apex's SOA,
//! NS and DNSKEY stay where the delta path expects them), the longest
//! leading run of RRsets that are unsigned, neither CNAME (the chase reads
//! it from the node) nor NSEC, of at most 255 records, that fits
//! [`MAX_KEY`]. They are moved, not copied: the node's `rrsets` keep the
//! rest, so that the key's sets followed by `rrsets` are the node's RRsets
//! in their original order (an ANY query answers the first one).

use super::RRset;
use crate::wire::rtype;

/// Octets of a key kept inside the node (the enum's tag is the 64th).
pub(crate) const INLINE: usize = 63;
/// Largest heap key that takes RRsets (a bigger set stays in `rrsets`).
const MAX_KEY: usize = 256;

/// The name and hot RRsets of a node (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) enum Key {
    /// The name fits with room for RRsets: the key is in the node (RRsets
    /// that do not fit stay in `rrsets`).
    Inline([u8; INLINE]),
    /// A long name: the key is a heap block.
    Heap(Box<[u8]>),
}

impl Default for Key {
    fn default() -> Self {
        Self::Inline([0; INLINE])
    }
}

/// One RRset in a key: `count` records back to back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HotSet<'a> {
    count: u8,
    records: &'a [u8],
}

/// The records of a [`HotSet`], in order.
pub(crate) struct HotRecords<'a> {
    rest: &'a [u8],
}

// === impl Key ===

impl Key {
    /// The key of the node `name` whose RRsets are `rrsets`: moves the
    /// leading hot RRsets out of `rrsets` (none when `apex`).
    pub(crate) fn build(name: &[u8], rrsets: &mut Vec<RRset>, apex: bool) -> Self {
        // A name short enough for an inline key keeps the RRsets that fit
        // with it (the rest stay in `rrsets`, one miss more for those).
        let limit = if name.len() + 2 <= INLINE {
            INLINE
        } else {
            MAX_KEY
        };
        let mut buf = Vec::with_capacity(limit);
        buf.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        buf.extend_from_slice(name);
        let count_at = buf.len();
        buf.push(0);
        let mut moved = 0;
        if !apex {
            for set in rrsets.iter() {
                let Some(bytes) = hot_bytes(set) else { break };
                if buf.len() + 5 + bytes > limit {
                    break;
                }
                let Ok(len) = u16::try_from(bytes) else { break };
                buf.extend_from_slice(&set.rtype.to_le_bytes());
                buf.push(set.records.len() as u8);
                buf.extend_from_slice(&len.to_le_bytes());
                for i in 0..set.records.len() {
                    if let Some(r) = set.records.get(i) {
                        buf.extend_from_slice(r);
                    }
                }
                moved += 1;
            }
        }
        if let Some(c) = buf.get_mut(count_at) {
            *c = moved as u8;
        }
        rrsets.drain(..moved);
        let mut inline = [0; INLINE];
        match inline.get_mut(..buf.len()) {
            Some(dst) => {
                dst.copy_from_slice(&buf);
                Self::Inline(inline)
            }
            None => Self::Heap(buf.into_boxed_slice()),
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline(b) => b,
            Self::Heap(b) => b,
        }
    }

    /// The node's name (lower-case wire form).
    #[inline]
    pub(crate) fn name(&self) -> &[u8] {
        let b = self.bytes();
        let len = b.first().map_or(0, |&l| usize::from(l));
        b.get(1..1 + len).unwrap_or(&[])
    }

    /// The hot RRset of type `qtype`.
    #[inline]
    pub(crate) fn find(&self, qtype: u16) -> Option<HotSet<'_>> {
        self.sets().find(|(t, _)| *t == qtype).map(|(_, s)| s)
    }

    /// The first hot RRset (the node's first RRset when there is one).
    #[inline]
    pub(crate) fn first(&self) -> Option<HotSet<'_>> {
        self.sets().next().map(|(_, s)| s)
    }

    /// Number of hot RRsets.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sets().count()
    }

    /// The hot RRsets and their types.
    #[inline]
    fn sets(&self) -> impl Iterator<Item = (u16, HotSet<'_>)> {
        let b = self.bytes();
        let len = b.first().map_or(0, |&l| usize::from(l));
        let count = b.get(1 + len).copied().unwrap_or(0);
        let mut rest = b.get(2 + len..).unwrap_or(&[]);
        (0..count).map_while(move |_| {
            let (head, tail) = rest.split_first_chunk::<5>()?;
            let [t0, t1, n, b0, b1] = *head;
            let bytes = usize::from(u16::from_le_bytes([b0, b1]));
            let records = tail.get(..bytes)?;
            rest = tail.get(bytes..)?;
            Some((u16::from_le_bytes([t0, t1]), HotSet { count: n, records }))
        })
    }
}

/// Octets of `set`'s records when it may go into a key.
fn hot_bytes(set: &RRset) -> Option<usize> {
    let n = set.records.len();
    if !set.sigs.is_empty()
        || matches!(set.rtype, rtype::CNAME | rtype::NSEC)
        || n == 0
        || n > usize::from(u8::MAX)
    {
        return None;
    }
    (0..n).map(|i| set.records.get(i).map(<[u8]>::len)).sum()
}

// === impl HotSet ===

impl<'a> HotSet<'a> {
    /// Number of records.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// The records (TYPE CLASS TTL RDLENGTH RDATA each).
    #[inline]
    pub(crate) fn records(&self) -> HotRecords<'a> {
        HotRecords { rest: self.records }
    }
}

impl<'a> Iterator for HotRecords<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rdlen = self.rest.get(8..10)?;
        let len = 10 + usize::from(u16::from_be_bytes([rdlen[0], rdlen[1]]));
        let (record, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengslb_proto as proto;

    const TXT: u16 = 16;
    const MX: u16 = 15;

    fn set(t: u16, rdata: Vec<Vec<u8>>, signed: bool) -> RRset {
        super::super::compile_rrset(
            t,
            &proto::RRset {
                rtype: u32::from(t),
                ttl: 300,
                rdata,
                rrsig: if signed { vec![vec![7; 40]] } else { vec![] },
            },
        )
        .unwrap()
    }

    fn records(s: HotSet<'_>) -> Vec<Vec<u8>> {
        s.records().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn moves_the_leading_plain_sets_in_order() {
        // A long name: a heap key, which takes sets up to `MAX_KEY`.
        let mut name = vec![60];
        name.extend_from_slice(&[b'w'; 60]);
        name.extend_from_slice(b"\x04gslb\x04test\x00");
        let name = &name[..];
        let a = set(
            rtype::A,
            vec![vec![192, 0, 2, 1], vec![192, 0, 2, 2]],
            false,
        );
        let aaaa = set(rtype::AAAA, vec![vec![0x20; 16]], false);
        let txt = set(TXT, vec![b"\x02hi".to_vec()], true);
        let mx = set(MX, vec![b"\x00\x0a\x00".to_vec()], false);
        let want_a: Vec<Vec<u8>> = (0..2).map(|i| a.records.get(i).unwrap().to_vec()).collect();
        let want_aaaa = aaaa.records.get(0).unwrap().to_vec();
        let mut rrsets = vec![a, aaaa, txt, mx];
        let key = Key::build(name, &mut rrsets, false);
        assert_eq!(key.name(), name);
        assert_eq!(key.len(), 2, "the signed TXT ends the run");
        assert_eq!(records(key.find(rtype::A).unwrap()), want_a);
        assert_eq!(key.find(rtype::A).unwrap().len(), 2);
        assert_eq!(records(key.find(rtype::AAAA).unwrap()), vec![want_aaaa]);
        assert_eq!(records(key.first().unwrap()), want_a);
        assert!(key.find(MX).is_none(), "after the signed set");
        assert!(key.find(TXT).is_none());
        let left: Vec<u16> = rrsets.iter().map(|s| s.rtype).collect();
        assert_eq!(left, vec![TXT, MX]);
        assert!(matches!(key, Key::Heap(_)));
    }

    #[test]
    fn short_keys_live_in_the_node() {
        let name = b"\x07h000001\x04gslb\x04test\x00";
        let a = set(rtype::A, vec![vec![198, 18, 0, 1]], false);
        let aaaa = set(rtype::AAAA, vec![vec![0x20; 16]], false);
        let want_a = a.records.get(0).unwrap().to_vec();
        let mut rrsets = vec![a, aaaa];
        let key = Key::build(name, &mut rrsets, false);
        assert!(matches!(key, Key::Inline(_)));
        assert_eq!(key.name(), name);
        assert_eq!(records(key.find(rtype::A).unwrap()), vec![want_a]);
        // The AAAA set does not fit beside it: it stays on the node.
        assert!(key.find(rtype::AAAA).is_none());
        assert_eq!(rrsets.len(), 1);
        assert_eq!(rrsets[0].rtype, rtype::AAAA);
        // The key is the node's whole first cache line.
        assert_eq!(size_of::<Key>(), 64);
        assert_eq!(size_of::<super::super::Node>(), 128);
        assert_eq!(align_of::<super::super::Node>(), 64);
    }

    #[test]
    fn long_names_get_a_heap_key() {
        let mut name = Vec::new();
        for _ in 0..4 {
            name.push(20);
            name.extend_from_slice(&[b'a'; 20]);
        }
        name.push(0);
        let mut rrsets = vec![set(rtype::A, vec![vec![1, 2, 3, 4]], false)];
        let key = Key::build(&name, &mut rrsets, false);
        assert!(matches!(key, Key::Heap(_)));
        assert_eq!(key.name(), &name[..]);
        assert!(key.find(rtype::A).is_some());
        assert!(rrsets.is_empty());
    }

    #[test]
    fn apex_cname_and_big_sets_stay_on_the_node() {
        let name = b"\x01a\x00";
        let mut rrsets = vec![set(rtype::A, vec![vec![1, 2, 3, 4]], false)];
        let key = Key::build(name, &mut rrsets, true);
        assert_eq!((key.len(), rrsets.len()), (0, 1), "apex");
        assert_eq!(key.name(), name);

        let mut rrsets = vec![set(rtype::CNAME, vec![b"\x01b\x00".to_vec()], false)];
        let key = Key::build(name, &mut rrsets, false);
        assert_eq!((key.len(), rrsets.len()), (0, 1), "CNAME");

        let big = set(TXT, vec![vec![b'x'; 250]], false);
        let mut rrsets = vec![big, set(rtype::A, vec![vec![1, 2, 3, 4]], false)];
        let key = Key::build(name, &mut rrsets, false);
        assert_eq!((key.len(), rrsets.len()), (0, 2), "too big for a key");

        let many: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut rrsets = vec![set(rtype::A, many, false)];
        let key = Key::build(name, &mut rrsets, false);
        assert_eq!((key.len(), rrsets.len()), (0, 1), "over 255 records");
        assert!(key.first().is_none());
    }

    #[test]
    fn default_key_is_empty() {
        let key = Key::default();
        assert_eq!(key.name(), b"");
        assert!(key.first().is_none());
        assert!(key.find(rtype::A).is_none());
    }
}
