//! NSEC3 proofs in the authority section (RFC 5155 §7.2), for zones that
//! carry an NSEC3 chain. Everything on the stack: the names of the proof are
//! hashed here and looked up by binary search in the pre-signed chain.

use super::{Full, NameAt, Reply};
use crate::nsec3::{wildcard, Chain, LABEL_LEN};
use crate::snapshot::{Snapshot, Zone};
use crate::wire::{self, LabelOffsets};

impl Reply<'_> {
    /// NODATA, empty non-terminals included (RFC 5155 §7.2.3, §7.2.4): the
    /// NSEC3 matching the name, whose bitmap lacks the query type.
    pub(super) fn put_nsec3_nodata(
        &mut self,
        chain: &Chain,
        zone: &Zone,
        name: NameAt<'_>,
    ) -> Result<(), Full> {
        match chain.matching(name.name) {
            Some(i) => self.put_nsec3(chain, i, zone, name),
            None => Ok(()),
        }
    }

    /// NXDOMAIN (RFC 5155 §7.2.2): the closest-encloser proof — the NSEC3
    /// matching the closest encloser, the one covering the next closer
    /// name — and the one covering the wildcard at the closest encloser;
    /// each once.
    pub(super) fn put_nsec3_nxdomain(
        &mut self,
        snap: &Snapshot,
        chain: &Chain,
        zone: &Zone,
        name: NameAt<'_>,
    ) -> Result<(), Full> {
        // The closest encloser is the longest existing suffix; the next
        // closer name is the suffix one label longer.
        let mut next_closer: &[u8] = name.name;
        let mut encloser: Option<&[u8]> = None;
        for at in LabelOffsets::new(name.name).skip(1) {
            let Some(suffix) = name.name.get(at..) else {
                break;
            };
            if suffix.len() < zone.apex.len() {
                break;
            }
            if snap.node(suffix).is_some() {
                encloser = Some(suffix);
                break;
            }
            next_closer = suffix;
        }
        let Some(encloser) = encloser else {
            return Ok(());
        };
        let mut buf = [0u8; wire::MAX_NAME_LEN];
        let star = wildcard(encloser, &mut buf);
        let picks = [
            chain.matching(encloser),
            chain.covering(next_closer),
            star.and_then(|w| chain.covering(w)),
        ];
        for (k, pick) in picks.iter().enumerate() {
            let Some(i) = *pick else { continue };
            if picks[..k].contains(&Some(i)) {
                continue;
            }
            self.put_nsec3(chain, i, zone, name)?;
        }
        Ok(())
    }

    /// NSEC3 record `i` with its RRSIGs: owner = its base32hex label + a
    /// pointer to the apex suffix of `name`.
    fn put_nsec3(
        &mut self,
        chain: &Chain,
        i: usize,
        zone: &Zone,
        name: NameAt<'_>,
    ) -> Result<(), Full> {
        let (Some(label), Some(set)) = (chain.labels.get(i), chain.records.get(i)) else {
            return Ok(());
        };
        for records in [&set.records, &set.sigs] {
            for r in 0..records.len() {
                self.w.put(&[LABEL_LEN as u8])?;
                self.w.put(label)?;
                self.w.put_owner(name, zone.apex.len())?;
                self.w.put(records.get(r).ok_or(Full)?)?;
                self.nscount = self.nscount.saturating_add(1);
            }
        }
        Ok(())
    }
}
