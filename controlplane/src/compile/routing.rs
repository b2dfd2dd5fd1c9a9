//! The geolocation and latency parts of a plan, decided here because they
//! depend on global state (DESIGN.md): each region's healthy set with its
//! `fallback` list already resolved, and the latency ranking from the
//! controlplane's own measurements.

use std::collections::BTreeMap;

use opengslb_proto::{Candidate, GeoFallback, RRset};

use super::Member;
use crate::config::{Config, LatencyConfig};

/// `Candidate.region` of the set for clients whose region has no set of
/// its own (and for clients no range and no default region place).
pub const GEO_ANY_REGION: u32 = u32::MAX;

/// What a latency decision did, for the controlplane's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyReport {
    /// The domain, presentation form.
    pub domain: String,
    /// Servers answered (the tie group) and their EMA in milliseconds.
    pub selected: Vec<(String, f64)>,
    /// Healthy servers left out, by reason (`too_slow`, `insufficient_samples`).
    pub rejected: Vec<(&'static str, u64)>,
    /// Why it fell back to round-robin (`insufficient_samples`,
    /// `all_too_slow`), when it did.
    pub fallback: Option<&'static str>,
}

/// The latency EMA of one server and the samples behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySample {
    /// Connect-time EMA.
    pub ema: std::time::Duration,
    /// Successful samples fed into it.
    pub samples: u64,
}

/// Geolocation candidates over `healthy` (config order): one set for every
/// region that has healthy servers of its own or through its `fallback`
/// list, plus the [`GEO_ANY_REGION`] set of every healthy server. `rrset`
/// makes an RRset of addresses.
///
/// Each set is one candidate (answered rotated) or, when `weighted`
/// (`region_selection: weighted`), one single-record candidate per server
/// with its weight, contiguous (the dataplane draws among them by weight;
/// each is signed alone).
pub(super) fn geo_candidates(
    cfg: &Config,
    healthy: &[&Member],
    rrset: &dyn Fn(&[&Member]) -> RRset,
    weighted: bool,
) -> Vec<Candidate> {
    let mut by_region: BTreeMap<u32, Vec<&Member>> = BTreeMap::new();
    for m in healthy {
        by_region.entry(m.region).or_default().push(m);
    }
    let group = |set: &[&Member], region: u32, why: GeoFallback| -> Vec<Candidate> {
        if weighted {
            set.iter()
                .map(|m| Candidate {
                    rrset: Some(rrset(&[m])),
                    weight: m.weight,
                    region,
                    geo_fallback: why.into(),
                })
                .collect()
        } else {
            vec![Candidate {
                rrset: Some(rrset(set)),
                weight: 1,
                region,
                geo_fallback: why.into(),
            }]
        }
    };
    let mut out = group(healthy, GEO_ANY_REGION, GeoFallback::None);
    for (ri, region) in cfg.regions.iter().enumerate() {
        let Ok(ri) = u32::try_from(ri) else { break };
        let (set, why) = match by_region.get(&ri) {
            Some(own) => (own, GeoFallback::None),
            None => {
                let fallback = region
                    .fallback
                    .iter()
                    .filter_map(|f| cfg.region_index(f))
                    .filter_map(|fi| by_region.get(&u32::try_from(fi).ok()?))
                    .next();
                match fallback {
                    Some(set) => (set, GeoFallback::RegionDown),
                    // Nothing of its own: the any-region set
                    // (see [`mark_exhausted`]).
                    None => continue,
                }
            }
        };
        out.extend(group(set, ri, why));
    }
    out
}

/// Marks, among `candidates`, the regions that have servers of this domain
/// (`family`) but no healthy one and no healthy fallback: their clients get
/// the [`GEO_ANY_REGION`] set (`any`, its candidates), counted as
/// `exhausted`. Sorts the candidates by region, keeping each region's
/// candidates together and in order.
pub(super) fn mark_exhausted(
    candidates: &mut Vec<Candidate>,
    family: &[&Member],
    any: &[Candidate],
) {
    let mut regions: Vec<u32> = family.iter().map(|m| m.region).collect();
    regions.sort_unstable();
    regions.dedup();
    for r in regions {
        if candidates.iter().any(|c| c.region == r) {
            continue;
        }
        candidates.extend(any.iter().map(|c| Candidate {
            region: r,
            geo_fallback: GeoFallback::Exhausted.into(),
            ..c.clone()
        }));
    }
    candidates.sort_by_key(|c| (c.region != GEO_ANY_REGION, c.region));
}

/// The latency choice over `healthy` (config order): the tie group (the
/// servers whose EMA is within `tolerance_ms` of the fastest ranked one,
/// where ranked means at least `min_samples` samples and an EMA at most
/// `max_latency_ms`), followed, while the answer has room for more than the
/// tie group (`max_answers`, 0 = no limit), by the next ranked servers in
/// latency order. Returns the servers (tie group first, each part fastest
/// first) and the size of the tie group (rotated per query). With none
/// ranked: every healthy server not known to be too slow, all of them one
/// rotated group (round-robin).
pub(super) fn latency_pick<'m>(
    domain: &str,
    lc: &LatencyConfig,
    healthy: &[&'m Member],
    max_answers: u32,
) -> (Vec<&'m Member>, usize, LatencyReport) {
    let ms = |m: &Member| m.latency.map(|l| l.ema.as_secs_f64() * 1000.0);
    let enough = |m: &Member| {
        m.latency
            .is_some_and(|l| l.samples >= u64::from(lc.min_samples))
    };
    let max = f64::from(lc.max_latency_ms);
    let mut too_slow = 0u64;
    let mut unsampled = 0u64;
    let mut ranked: Vec<(&Member, f64)> = Vec::new();
    for &m in healthy {
        match (enough(m), ms(m)) {
            (true, Some(v)) if v > max => too_slow += 1,
            (true, Some(v)) => ranked.push((m, v)),
            _ => unsampled += 1,
        }
    }
    let mut report = LatencyReport {
        domain: domain.to_owned(),
        ..LatencyReport::default()
    };
    for (reason, n) in [("too_slow", too_slow), ("insufficient_samples", unsampled)] {
        if n > 0 {
            report.rejected.push((reason, n));
        }
    }
    let Some(best) = ranked.iter().map(|&(_, v)| v).min_by(f64::total_cmp) else {
        // Nobody ranked: round-robin over those not known to be too slow
        // (all of them when every sampled one is).
        let not_slow: Vec<&Member> = healthy
            .iter()
            .copied()
            .filter(|m| !(enough(m) && ms(m).is_some_and(|v| v > max)))
            .collect();
        if not_slow.is_empty() {
            report.fallback = Some("all_too_slow");
            return (healthy.to_vec(), healthy.len(), report);
        }
        report.fallback = Some("insufficient_samples");
        let n = not_slow.len();
        return (not_slow, n, report);
    };
    let limit = best + f64::from(lc.tolerance_ms);
    // Stable: equal EMAs keep config order.
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let tie = ranked.iter().take_while(|&&(_, v)| v <= limit).count();
    let room = match max_answers {
        0 => ranked.len(),
        k => (k as usize).max(tie).min(ranked.len()),
    };
    ranked.truncate(room);
    report.selected = ranked
        .iter()
        .map(|&(m, v)| (m.address.to_string(), v))
        .collect();
    (ranked.into_iter().map(|(m, _)| m).collect(), tie, report)
}

/// The candidates of a latency answer over `pick` (the tie group, its
/// first `tie` servers, then the fill in latency order): one per rotation
/// of the tie group, each the group so rotated followed by the fill, cut to
/// `max_answers` (0 = no limit). The dataplane answers them in turn, each
/// whole, so the tie group is spread round-robin, the fill always follows
/// it, and a DNSSEC client gets exactly the RRset that was signed.
pub(super) fn latency_candidates(
    pick: &[&Member],
    tie: usize,
    max_answers: u32,
    rrset: &dyn Fn(&[&Member]) -> RRset,
) -> Vec<Candidate> {
    let len = match max_answers {
        0 => pick.len(),
        k => pick.len().min(k as usize),
    };
    let tie = tie.clamp(1, pick.len().max(1));
    let (group, fill) = pick.split_at(tie.min(pick.len()));
    (0..group.len())
        .map(|i| {
            let set: Vec<&Member> = (0..group.len())
                .filter_map(|j| group.get((i + j) % group.len()).copied())
                .chain(fill.iter().copied())
                .take(len)
                .collect();
            Candidate {
                rrset: Some(rrset(&set)),
                weight: 1,
                region: 0,
                geo_fallback: 0,
            }
        })
        .collect()
}
