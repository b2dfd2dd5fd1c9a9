//! RRSIG generation (RFC 4034 §3, RFC 4035 §2.2 and §5.3.2) over the
//! compiled snapshot, with a cache so that a health change re-signs only the
//! RRsets it changed.
//!
//! What is signed, per zone: the DNSKEY RRset (by the KSK or CSK), SOA, NS,
//! every static RRset, every candidate RRset of every answer plan (by the
//! ZSK or CSK), and the NSEC chain ([`super::nsec`]). An RRSIG's TTL and
//! original TTL are its RRset's TTL; inception is backdated one hour;
//! expiration is `signature_validity` after signing. A cached signature is
//! reused while its RRset (owner, type, TTL, RDATA set) and key are unchanged
//! and it is more than `refresh_before` from expiring.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opengslb_proto::{RRset, Snapshot};

use super::keys::ZoneKey;
use super::{nsec, nsec3, rtype, Dnssec, Keyring, SigningStats};
use crate::config::{DnssecConfig, DnssecDenial};

/// Inception is backdated this far, for clocks behind ours.
pub const INCEPTION_BACKDATE: Duration = Duration::from_secs(3600);
const CLASS_IN: u16 = 1;

/// Signs compiled snapshots; owned by the compiler, kept across compiles.
#[derive(Debug)]
pub struct Signer {
    dnssec: Dnssec,
    cache: HashMap<CacheKey, Cached>,
    /// Bumped per signing pass; entries not used in a pass are dropped.
    pass: u64,
}

/// What a signature depends on: the key and the canonical RRs (owner, type,
/// class, original TTL, RDATA, in canonical order).
#[derive(Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    key_tag: u16,
    algorithm: u8,
    flags: u16,
    rrs: Vec<u8>,
}

#[derive(Debug)]
struct Cached {
    rrsig: Vec<u8>,
    expiration: u32,
    pass: u64,
}

/// What one signing pass did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignOutcome {
    /// When the earliest signature in the snapshot enters its refresh
    /// window: the caller recompiles then.
    pub refresh_at: Option<SystemTime>,
    /// RRSIGs in the snapshot.
    pub signatures: usize,
    /// RRSIGs made in this pass (the rest came from the cache).
    pub signed: usize,
    /// Earliest expiration of a signature in the snapshot.
    pub next_expiry: Option<SystemTime>,
}

/// Validity window of the signatures made in one pass.
#[derive(Debug, Clone, Copy)]
struct Window {
    now: u32,
    inception: u32,
    expiration: u32,
    refresh_before: u32,
}

/// One signing pass over one zone.
struct ZonePass<'a> {
    signer: &'a mut Signer,
    apex: &'a [u8],
    keys: &'a [Arc<ZoneKey>],
    /// Tags of keys published but not signing (a rollover in progress).
    passive: &'a [u16],
    window: Window,
    outcome: &'a mut SignOutcome,
    earliest: Option<u32>,
    /// Largest TTL of a signed RRset.
    max_ttl: u32,
}

// === impl Signer ===

impl Signer {
    /// A signer drawing keys from `dnssec`.
    pub fn new(dnssec: Dnssec) -> Self {
        Self {
            dnssec,
            cache: HashMap::new(),
            pass: 0,
        }
    }

    /// The DNSSEC handle this signer reports to.
    pub fn dnssec(&self) -> &Dnssec {
        &self.dnssec
    }

    /// Adds DNSKEY, RRSIGs and the NSEC chain to every zone of `snap` that
    /// has keys. Does nothing when DNSSEC is off.
    pub fn sign(
        &mut self,
        cfg: &DnssecConfig,
        snap: &mut Snapshot,
        now: SystemTime,
    ) -> SignOutcome {
        let mut outcome = SignOutcome::default();
        if !cfg.enabled || !self.dnssec.enabled() {
            return outcome;
        }
        let started = std::time::Instant::now();
        let keyring = self.dnssec.keyring();
        self.pass += 1;
        let window = Window::new(cfg, now);
        let mut earliest: Option<u32> = None;
        let mut zone_expiry = Vec::with_capacity(snap.zones.len());
        let mut zone_signed = Vec::with_capacity(snap.zones.len());
        let mut zone_ttls = Vec::with_capacity(snap.zones.len());
        for zi in 0..snap.zones.len() {
            let before = outcome.signed;
            let expiry = self.sign_zone(
                &keyring,
                snap,
                zi,
                window,
                cfg.denial,
                &mut outcome,
                &mut zone_ttls,
            );
            earliest = min_opt(earliest, expiry);
            zone_expiry.push(expiry);
            zone_signed.push(outcome.signed - before);
        }
        let pass = self.pass;
        self.cache.retain(|_, c| c.pass == pass);
        let at = |s: u32| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(s));
        outcome.next_expiry = earliest.map(at);
        outcome.refresh_at = earliest.map(|e| at(e.saturating_sub(window.refresh_before)));
        let elapsed = started.elapsed();
        self.dnssec.record(SigningStats {
            signatures: outcome.signatures,
            signed_last: outcome.signed,
            signing_micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            next_expiry_unix: earliest.map(u64::from),
            zone_next_expiry_unix: snap
                .zones
                .iter()
                .zip(zone_expiry)
                .map(|(z, e)| (z.apex.clone(), e.map(u64::from)))
                .collect(),
            zone_signed: snap
                .zones
                .iter()
                .zip(zone_signed)
                .map(|(z, n)| (z.apex.clone(), n))
                .collect(),
            zone_ttls,
        });
        if outcome.signed > 0 {
            tracing::debug!(
                signed = outcome.signed,
                signatures = outcome.signatures,
                elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "DNSSEC signing pass"
            );
        }
        outcome
    }

    /// Signs zone `zi`; returns the earliest expiration of its signatures
    /// and adds (apex, DNSKEY TTL, largest signed TTL) to `ttls`.
    #[allow(clippy::too_many_arguments)]
    fn sign_zone(
        &mut self,
        keyring: &Keyring,
        snap: &mut Snapshot,
        zi: usize,
        window: Window,
        denial: DnssecDenial,
        outcome: &mut SignOutcome,
        ttls: &mut Vec<(Vec<u8>, u32, u32)>,
    ) -> Option<u32> {
        let zone = snap.zones.get_mut(zi)?;
        let apex = zone.apex.clone();
        let Some(keys) = keyring.keys(&apex) else {
            tracing::error!(
                zone = %super::presentation(&apex),
                "no DNSSEC key for the zone: it is served unsigned"
            );
            return None;
        };
        let passive = keyring.passive.get(&apex).map_or(&[][..], Vec::as_slice);
        let mut pass = ZonePass {
            signer: self,
            apex: &apex,
            keys,
            passive,
            window,
            outcome,
            earliest: None,
            max_ttl: 0,
        };
        // Apex: DNSKEY, SOA, NS.
        let ttl = zone.soa.as_ref().map_or(3600, |s| s.ttl);
        let mut dnskey = RRset {
            rtype: u32::from(rtype::DNSKEY),
            ttl,
            rdata: keys.iter().map(|k| k.dnskey_rdata()).collect(),
            rrsig: Vec::new(),
        };
        pass.sign_rrset(&apex, &mut dnskey, true);
        zone.dnskey = Some(dnskey);
        for set in [zone.soa.as_mut(), zone.ns.as_mut()].into_iter().flatten() {
            pass.sign_rrset(&apex, set, false);
        }
        let negative_ttl = zone.negative_ttl;
        let zone_index = u32::try_from(zi).unwrap_or(u32::MAX);
        for node in snap.nodes.iter_mut().filter(|n| n.zone == zone_index) {
            let owner = node.name.clone();
            for set in &mut node.rrsets {
                pass.sign_rrset(&owner, set, false);
            }
            for plan in &mut node.plans {
                for c in &mut plan.candidates {
                    if let Some(set) = c.rrset.as_mut().filter(|s| !s.rdata.is_empty()) {
                        if set.rtype == 0 {
                            set.rtype = plan.rtype;
                        }
                        pass.sign_rrset(&owner, set, false);
                    }
                }
            }
        }
        match denial {
            DnssecDenial::Nsec => nsec::build_chain(snap, zi, negative_ttl, |owner, set| {
                pass.sign_rrset(owner, set, false);
            }),
            DnssecDenial::Nsec3 => nsec3::build_chain(snap, zi, negative_ttl, ttl, |owner, set| {
                pass.sign_rrset(owner, set, false);
            }),
        }
        ttls.push((apex.clone(), ttl, pass.max_ttl));
        pass.earliest
    }
}

// === impl Signer (incremental) ===

impl Signer {
    /// Signs `sets`, owned by `owner` in the zone `apex`, outside a full
    /// pass (the incremental compile, `crate::compile::incremental`): each
    /// signature comes from the cache while fresh, or is made anew.
    /// Returns the RRSIGs made, or `None` when nothing is signed (DNSSEC
    /// off, or the zone has no keys: the caller then compiles in full).
    pub fn sign_rrsets(
        &mut self,
        cfg: &DnssecConfig,
        apex: &[u8],
        owner: &[u8],
        sets: &mut [&mut RRset],
        now: SystemTime,
    ) -> Option<usize> {
        if !cfg.enabled || !self.dnssec.enabled() {
            return None;
        }
        let keyring = self.dnssec.keyring();
        let keys = keyring.keys(apex)?;
        let passive = keyring.passive.get(apex).map_or(&[][..], Vec::as_slice);
        let mut outcome = SignOutcome::default();
        let mut pass = ZonePass {
            signer: self,
            apex,
            keys,
            passive,
            window: Window::new(cfg, now),
            outcome: &mut outcome,
            earliest: None,
            max_ttl: 0,
        };
        for set in sets.iter_mut() {
            pass.sign_rrset(owner, set, false);
        }
        Some(outcome.signed)
    }
}

// === impl Window ===

impl Window {
    fn new(cfg: &DnssecConfig, now: SystemTime) -> Self {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        };
        Self {
            now: secs(now),
            inception: secs(now).saturating_sub(INCEPTION_BACKDATE.as_secs() as u32),
            expiration: secs(now).saturating_add(clamp_secs(cfg.signature_validity.get())),
            refresh_before: clamp_secs(cfg.refresh_before.get()),
        }
    }
}

// === impl ZonePass ===

impl ZonePass<'_> {
    /// Replaces the RRSIGs of `set` (owned by `owner`) with signatures by
    /// every key of the zone that signs this kind of RRset.
    fn sign_rrset(&mut self, owner: &[u8], set: &mut RRset, dnskey: bool) {
        set.rrsig.clear();
        let Ok(rtype) = u16::try_from(set.rtype) else {
            return;
        };
        let rrs = canonical_rrs(owner, rtype, set.ttl, &set.rdata);
        self.max_ttl = self.max_ttl.max(set.ttl);
        for key in self.keys {
            if self.passive.contains(&key.key_tag) {
                continue;
            }
            let wanted = if dnskey {
                key.role.signs_keys()
            } else {
                key.role.signs_zone()
            };
            if !wanted {
                continue;
            }
            match self.signature(key, owner, rtype, set.ttl, &rrs) {
                Some((sig, expiration)) => {
                    self.earliest = min_opt(self.earliest, Some(expiration));
                    self.outcome.signatures += 1;
                    set.rrsig.push(sig);
                }
                None => tracing::error!(
                    zone = %super::presentation(self.apex),
                    key_tag = key.key_tag,
                    "signing failed"
                ),
            }
        }
    }

    /// A signature of `rrs` by `key`, from the cache when still fresh.
    fn signature(
        &mut self,
        key: &ZoneKey,
        owner: &[u8],
        rtype: u16,
        ttl: u32,
        rrs: &[u8],
    ) -> Option<(Vec<u8>, u32)> {
        let w = self.window;
        let cache_key = CacheKey {
            key_tag: key.key_tag,
            algorithm: key.algorithm.number(),
            flags: key.flags,
            rrs: rrs.to_vec(),
        };
        let pass = self.signer.pass;
        if let Some(c) = self.signer.cache.get_mut(&cache_key) {
            if c.expiration.saturating_sub(w.refresh_before) > w.now {
                c.pass = pass;
                return Some((c.rrsig.clone(), c.expiration));
            }
        }
        let mut rrsig = rrsig_header(
            rtype,
            key.algorithm.number(),
            label_count(owner),
            ttl,
            w.expiration,
            w.inception,
            key.key_tag,
            self.apex,
        );
        let mut data = rrsig.clone();
        data.extend_from_slice(rrs);
        let sig = key.sign(&data).ok()?;
        rrsig.extend_from_slice(&sig);
        self.outcome.signed += 1;
        self.signer.cache.insert(
            cache_key,
            Cached {
                rrsig: rrsig.clone(),
                expiration: w.expiration,
                pass,
            },
        );
        Some((rrsig, w.expiration))
    }
}

// === functions ===

/// RRSIG RDATA without the signature (RFC 4034 §3.1): the first part of the
/// signed data (§3.1.8.1).
#[allow(clippy::too_many_arguments)]
pub fn rrsig_header(
    type_covered: u16,
    algorithm: u8,
    labels: u8,
    original_ttl: u32,
    expiration: u32,
    inception: u32,
    key_tag: u16,
    signer: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + signer.len() + 64);
    out.extend_from_slice(&type_covered.to_be_bytes());
    out.push(algorithm);
    out.push(labels);
    out.extend_from_slice(&original_ttl.to_be_bytes());
    out.extend_from_slice(&expiration.to_be_bytes());
    out.extend_from_slice(&inception.to_be_bytes());
    out.extend_from_slice(&key_tag.to_be_bytes());
    out.extend_from_slice(signer);
    out
}

/// The RRs of an RRset in canonical form and order (RFC 4034 §6.2, §6.3):
/// owner lower-case and uncompressed, RDATA sorted as octet strings,
/// duplicates removed. The snapshot's names are already lower-case and
/// uncompressed, so RDATA is taken as is.
pub fn canonical_rrs(owner: &[u8], rtype: u16, ttl: u32, rdata: &[Vec<u8>]) -> Vec<u8> {
    let mut sorted: Vec<&Vec<u8>> = rdata.iter().collect();
    sorted.sort();
    sorted.dedup();
    let owner = owner.to_ascii_lowercase();
    let mut out = Vec::with_capacity(sorted.iter().map(|r| owner.len() + 10 + r.len()).sum());
    for r in sorted {
        out.extend_from_slice(&owner);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(r.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Labels of a wire name, root excluded (no wildcards exist in our zones).
pub fn label_count(name: &[u8]) -> u8 {
    let mut n = 0u8;
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        n = n.saturating_add(1);
        i += 1 + usize::from(len);
    }
    n
}

fn clamp_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn min_opt(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
