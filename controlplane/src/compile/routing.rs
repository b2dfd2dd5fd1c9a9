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
pub(super) fn geo_candidates(
    cfg: &Config,
    healthy: &[&Member],
    rrset: &dyn Fn(&[&Member]) -> RRset,
) -> Vec<Candidate> {
    let mut by_region: BTreeMap<u32, Vec<&Member>> = BTreeMap::new();
    for m in healthy {
        by_region.entry(m.region).or_default().push(m);
    }
    let mut out = vec![Candidate {
        rrset: Some(rrset(healthy)),
        weight: 1,
        region: GEO_ANY_REGION,
        geo_fallback: GeoFallback::None.into(),
    }];
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
        out.push(Candidate {
            rrset: Some(rrset(set)),
            weight: 1,
            region: ri,
            geo_fallback: why.into(),
        });
    }
    out
}

/// Marks, among `candidates`, the regions that have servers of this domain
/// (`family`) but no healthy one and no healthy fallback: their clients get
/// the [`GEO_ANY_REGION`] set, counted as `exhausted`.
pub(super) fn mark_exhausted(
    candidates: &mut Vec<Candidate>,
    family: &[&Member],
    rrset_any: Option<RRset>,
) {
    let mut regions: Vec<u32> = family.iter().map(|m| m.region).collect();
    regions.sort_unstable();
    regions.dedup();
    for r in regions {
        if candidates.iter().any(|c| c.region == r) {
            continue;
        }
        if let Some(set) = &rrset_any {
            candidates.push(Candidate {
                rrset: Some(set.clone()),
                weight: 1,
                region: r,
                geo_fallback: GeoFallback::Exhausted.into(),
            });
        }
    }
    candidates.sort_by_key(|c| (c.region != GEO_ANY_REGION, c.region));
}

/// The latency choice over `healthy` (config order): the servers whose EMA
/// is within `tolerance_ms` of the fastest ranked one, where ranked means
/// at least `min_samples` samples and an EMA at most `max_latency_ms`; with
/// none ranked, every healthy server not known to be too slow (round-robin).
pub(super) fn latency_pick<'m>(
    domain: &str,
    lc: &LatencyConfig,
    healthy: &[&'m Member],
) -> (Vec<&'m Member>, LatencyReport) {
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
            return (healthy.to_vec(), report);
        }
        report.fallback = Some("insufficient_samples");
        return (not_slow, report);
    };
    let limit = best + f64::from(lc.tolerance_ms);
    let mut tie: Vec<(&Member, f64)> = ranked.into_iter().filter(|&(_, v)| v <= limit).collect();
    tie.sort_by(|a, b| a.1.total_cmp(&b.1));
    report.selected = tie
        .iter()
        .map(|&(m, v)| (m.address.to_string(), v))
        .collect();
    (tie.into_iter().map(|(m, _)| m).collect(), report)
}
