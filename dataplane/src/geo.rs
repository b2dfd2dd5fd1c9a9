//! Geolocation on the answer path: the range table the controlplane
//! compiled (GeoIP database + custom mappings), the per-plan region index,
//! and the per-name geo counters.
//!
//! A lookup is a binary search over sorted, disjoint CIDR ranges (IPv4 as
//! `u32`, IPv6 as `u128`): no allocation, no lock. It also yields the ECS
//! scope: the prefix of the range holding the address (the controlplane
//! merges sibling ranges of one region, so that is the widest block over
//! which the region cannot change) or, between ranges, the widest block
//! that holds none.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use opengslb_proto as proto;

use crate::snapshot::{InvalidSnapshot, COUNTER_STRIPES};

/// `Candidate.region` of the set for clients without a set of their own.
pub const ANY_REGION: u32 = u32::MAX;

/// Fallback reasons counted in `opengslb_routing_geo_fallback_total`.
pub const FALLBACK_REASONS: [&str; 4] = [
    // The client's region has no healthy server: a `fallback` region served.
    "region_down",
    // The region and its fallbacks have none: every healthy server.
    "fallback_exhausted",
    // The domain has no server in the client's region.
    "region_not_served",
    // No range and no default region place the client.
    "unmapped",
];
pub(crate) const REASON_REGION_DOWN: usize = 0;
pub(crate) const REASON_EXHAUSTED: usize = 1;
pub(crate) const REASON_NOT_SERVED: usize = 2;
pub(crate) const REASON_UNMAPPED: usize = 3;

/// The compiled range table.
#[derive(Debug, Default)]
pub struct GeoTable {
    generation: u64,
    regions: Box<[Box<str>]>,
    v4: Family<u32>,
    v6: Family<u128>,
    default_region: Option<u32>,
}

/// The ranges of one address family, as parallel arrays.
#[derive(Debug, Default)]
struct Family<T> {
    starts: Box<[T]>,
    lasts: Box<[T]>,
    info: Box<[RangeInfo]>,
}

#[derive(Debug, Clone, Copy)]
struct RangeInfo {
    region: u32,
    len: u8,
    custom: bool,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoHit {
    /// Region index, `None` when nothing applies.
    pub region: Option<u32>,
    /// The range came from a custom mapping.
    pub custom: bool,
    /// The widest prefix around the address with the same result.
    pub scope: u8,
}

/// A geolocation plan's index: the candidate serving each region.
#[derive(Debug, Default)]
pub(crate) struct GeoPlan {
    /// Per region of the table, the candidate index (`u16::MAX`: none).
    pub(crate) by_region: Box<[u16]>,
    /// Candidate index of the any-region set.
    pub(crate) any: Option<u16>,
    /// Per candidate, its fallback reason index (or `usize::MAX`).
    pub(crate) reason: Box<[u8]>,
    /// ECS privacy caps.
    pub(crate) max_v4: u8,
    pub(crate) max_v6: u8,
    /// Index into the snapshot's geo counters.
    pub(crate) counters: u32,
}

/// Geo counters of one name: decisions per region (plus "none"), custom
/// hits per region, fallbacks per reason; striped per worker.
#[derive(Debug)]
pub struct GeoCounters {
    domain: Box<str>,
    regions: Box<[Box<str>]>,
    stride: usize,
    cells: Box<[AtomicU64]>,
}

trait Bits: Copy + Ord {
    const BITS: u32;
    fn from_bytes(b: &[u8]) -> Option<Self>;
    fn low_mask(n: u32) -> Self;
    fn or(self, o: Self) -> Self;
    fn and(self, o: Self) -> Self;
    fn is_zero(self) -> bool;
    /// Leading bits `self` and `o` share.
    fn xor_lz(self, o: Self) -> u32;
}

impl Bits for u32 {
    const BITS: u32 = 32;
    fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self::from_be_bytes(b.try_into().ok()?))
    }
    fn low_mask(n: u32) -> Self {
        Self::MAX
            .checked_shr(32 - n.min(32))
            .filter(|_| n > 0)
            .unwrap_or(0)
    }
    fn or(self, o: Self) -> Self {
        self | o
    }
    fn and(self, o: Self) -> Self {
        self & o
    }
    fn is_zero(self) -> bool {
        self == 0
    }
    fn xor_lz(self, o: Self) -> u32 {
        (self ^ o).leading_zeros()
    }
}

impl Bits for u128 {
    const BITS: u32 = 128;
    fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(Self::from_be_bytes(b.try_into().ok()?))
    }
    fn low_mask(n: u32) -> Self {
        Self::MAX
            .checked_shr(128 - n.min(128))
            .filter(|_| n > 0)
            .unwrap_or(0)
    }
    fn or(self, o: Self) -> Self {
        self | o
    }
    fn and(self, o: Self) -> Self {
        self & o
    }
    fn is_zero(self) -> bool {
        self == 0
    }
    fn xor_lz(self, o: Self) -> u32 {
        (self ^ o).leading_zeros()
    }
}

// === impl GeoTable ===

impl GeoTable {
    /// Validates and compiles the snapshot's table.
    pub(crate) fn compile(t: &proto::GeoTable) -> Result<Self, InvalidSnapshot> {
        let bad = |reason| InvalidSnapshot::BadGeo { reason };
        let n = t.regions.len();
        if n >= usize::from(u16::MAX) {
            return Err(bad("too many regions"));
        }
        let default_region = match t.default_region {
            Some(r) if r as usize >= n => return Err(bad("default region out of range")),
            other => other,
        };
        Ok(Self {
            generation: t.generation,
            regions: t.regions.iter().map(|r| r.as_str().into()).collect(),
            v4: Family::compile(&t.v4, n)?,
            v6: Family::compile(&t.v6, n)?,
            default_region,
        })
    }

    /// The table's own generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Region names.
    pub fn regions(&self) -> &[Box<str>] {
        &self.regions
    }

    /// Ranges of both families.
    pub fn len(&self) -> usize {
        self.v4.starts.len() + self.v6.starts.len()
    }

    /// Whether it has no range.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What a client without a known address gets: the default region.
    pub fn unplaced(&self) -> GeoHit {
        GeoHit {
            region: self.default_region,
            custom: false,
            scope: 0,
        }
    }

    /// The region of `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> GeoHit {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (info, scope) = match ip {
            IpAddr::V4(a) => self.v4.find(u32::from(a)),
            IpAddr::V6(a) => self.v6.find(u128::from(a)),
        };
        match info {
            Some(i) => GeoHit {
                region: Some(i.region),
                custom: i.custom,
                scope,
            },
            None => GeoHit {
                region: self.default_region,
                custom: false,
                scope,
            },
        }
    }
}

// === impl Family ===

impl<T: Bits> Family<T> {
    fn compile(ranges: &[proto::GeoRange], regions: usize) -> Result<Self, InvalidSnapshot> {
        let bad = |reason| InvalidSnapshot::BadGeo { reason };
        let mut starts = Vec::with_capacity(ranges.len());
        let mut lasts: Vec<T> = Vec::with_capacity(ranges.len());
        let mut info = Vec::with_capacity(ranges.len());
        for r in ranges {
            let start = T::from_bytes(&r.start).ok_or(bad("range start of the wrong length"))?;
            if r.prefix_len > T::BITS {
                return Err(bad("prefix length too long"));
            }
            if r.region as usize >= regions {
                return Err(bad("range region out of range"));
            }
            let host = T::low_mask(T::BITS - r.prefix_len);
            if !start.and(host).is_zero() {
                return Err(bad("range start has host bits set"));
            }
            if lasts.last().is_some_and(|&p| p >= start) {
                return Err(bad("ranges not sorted or overlapping"));
            }
            starts.push(start);
            lasts.push(start.or(host));
            info.push(RangeInfo {
                region: r.region,
                len: r.prefix_len as u8,
                custom: r.custom,
            });
        }
        Ok(Self {
            starts: starts.into_boxed_slice(),
            lasts: lasts.into_boxed_slice(),
            info: info.into_boxed_slice(),
        })
    }

    /// The range holding `v` and the scope: its prefix, or between ranges
    /// the widest block around `v` that overlaps none.
    #[inline]
    fn find(&self, v: T) -> (Option<RangeInfo>, u8) {
        let i = self.starts.partition_point(|&s| s <= v);
        if let Some(p) = i.checked_sub(1) {
            if let (Some(&last), Some(&info)) = (self.lasts.get(p), self.info.get(p)) {
                if v <= last {
                    return (Some(info), info.len);
                }
                // The block must reach neither back into the previous
                // range nor forward into the next.
                let mut scope = v.xor_lz(last) + 1;
                if let Some(&next) = self.starts.get(i) {
                    scope = scope.max(v.xor_lz(next) + 1);
                }
                return (None, scope.min(T::BITS) as u8);
            }
        }
        let scope = match self.starts.get(i) {
            Some(&next) => v.xor_lz(next) + 1,
            None => 0,
        };
        (None, scope.min(T::BITS) as u8)
    }
}

// === impl GeoPlan ===

impl GeoPlan {
    /// The index of a geolocation plan over `candidates` (their `region`
    /// and `geo_fallback`), for a table of `regions` regions.
    pub(crate) fn new(
        p: &proto::AnswerPlan,
        regions: usize,
        counters: u32,
    ) -> Result<Self, InvalidSnapshot> {
        let mut by_region = vec![u16::MAX; regions];
        let mut any = None;
        let mut reason = Vec::with_capacity(p.candidates.len());
        for (i, c) in p
            .candidates
            .iter()
            .filter(|c| c.rrset.is_some())
            .enumerate()
        {
            let i = u16::try_from(i).map_err(|_| InvalidSnapshot::BadGeo {
                reason: "too many geo candidates",
            })?;
            if c.region == ANY_REGION {
                any = Some(i);
            } else if let Some(slot) = by_region.get_mut(c.region as usize) {
                *slot = i;
            } else {
                return Err(InvalidSnapshot::BadGeo {
                    reason: "candidate region out of range",
                });
            }
            reason.push(match proto::GeoFallback::try_from(c.geo_fallback) {
                Ok(proto::GeoFallback::RegionDown) => REASON_REGION_DOWN as u8,
                Ok(proto::GeoFallback::Exhausted) => REASON_EXHAUSTED as u8,
                _ => u8::MAX,
            });
        }
        Ok(Self {
            by_region: by_region.into_boxed_slice(),
            any,
            reason: reason.into_boxed_slice(),
            max_v4: p.ecs_max_prefix_v4.min(32) as u8,
            max_v6: p.ecs_max_prefix_v6.min(128) as u8,
            counters,
        })
    }

    /// The candidate for a client of `region`, and the fallback reason to
    /// count (if any).
    #[inline]
    pub(crate) fn pick(&self, region: Option<u32>) -> (Option<usize>, Option<usize>) {
        let Some(r) = region else {
            return (self.any.map(usize::from), Some(REASON_UNMAPPED));
        };
        match self.by_region.get(r as usize) {
            Some(&i) if i != u16::MAX => {
                let why = self
                    .reason
                    .get(usize::from(i))
                    .copied()
                    .filter(|&w| w != u8::MAX)
                    .map(usize::from);
                (Some(usize::from(i)), why)
            }
            _ => (self.any.map(usize::from), Some(REASON_NOT_SERVED)),
        }
    }
}

// === impl GeoCounters ===

impl GeoCounters {
    pub(crate) fn new(domain: Box<str>, regions: &[Box<str>]) -> Self {
        let r = regions.len();
        // decisions (r + "none"), custom hits (r), fallbacks; one cache
        // line multiple per stripe.
        let stride = (2 * r + 1 + FALLBACK_REASONS.len()).div_ceil(8) * 8;
        Self {
            domain,
            regions: regions.into(),
            stride,
            cells: (0..stride * COUNTER_STRIPES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Region names (labels).
    pub fn regions(&self) -> &[Box<str>] {
        &self.regions
    }

    #[inline]
    fn add(&self, stripe: usize, cell: usize) {
        let at = (stripe % COUNTER_STRIPES) * self.stride + cell;
        if let Some(c) = self.cells.get(at) {
            c.fetch_add(1, Relaxed);
        }
    }

    fn sum(&self, cell: usize) -> u64 {
        (0..COUNTER_STRIPES)
            .filter_map(|s| self.cells.get(s * self.stride + cell))
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// Counts one answer for a client of `region` (`None`: unplaced).
    #[inline]
    pub(crate) fn decided(
        &self,
        stripe: usize,
        region: Option<u32>,
        custom: bool,
        reason: Option<usize>,
    ) {
        let r = self.regions.len();
        let cell = region.map_or(r, |x| (x as usize).min(r));
        self.add(stripe, cell);
        if custom && cell < r {
            self.add(stripe, r + 1 + cell);
        }
        if let Some(why) = reason {
            self.add(stripe, 2 * r + 1 + why.min(FALLBACK_REASONS.len() - 1));
        }
    }

    /// Decisions per region label (`none` for unplaced clients).
    pub fn decisions(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        let r = self.regions.len();
        (0..=r).map(move |i| {
            let label = self.regions.get(i).map_or("none", |s| &**s);
            (label, self.sum(i))
        })
    }

    /// Custom-mapping hits per region.
    pub fn custom_hits(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        let r = self.regions.len();
        self.regions
            .iter()
            .enumerate()
            .map(move |(i, name)| (&**name, self.sum(r + 1 + i)))
    }

    /// Fallbacks per reason.
    pub fn fallbacks(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let r = self.regions.len();
        FALLBACK_REASONS
            .iter()
            .enumerate()
            .map(move |(i, why)| (*why, self.sum(2 * r + 1 + i)))
    }
}

// === functions ===

/// Gives every geolocation plan of `nodes` (compiled from `msg_nodes`, in
/// the same order) its region index and counters; returns the counters.
pub(crate) fn attach_plans(
    msg_nodes: &[proto::Node],
    nodes: &mut [crate::snapshot::Node],
    table: Option<&GeoTable>,
    decisions: &[std::sync::Arc<crate::snapshot::DecisionCounter>],
) -> Result<Box<[std::sync::Arc<GeoCounters>]>, InvalidSnapshot> {
    let empty: &[Box<str>] = &[];
    let regions = table.map_or(empty, GeoTable::regions);
    let mut counters: Vec<std::sync::Arc<GeoCounters>> = Vec::new();
    for (pn, node) in msg_nodes.iter().zip(nodes.iter_mut()) {
        let mut mine: Option<u32> = None;
        for (pp, plan) in pn.plans.iter().zip(node.plans.iter_mut()) {
            if plan.policy != proto::Policy::Geolocation {
                continue;
            }
            let index = match mine {
                Some(i) => i,
                None => {
                    let domain = decisions
                        .get(plan.counter as usize)
                        .map_or("", |d| d.domain());
                    let i = u32::try_from(counters.len()).map_err(|_| InvalidSnapshot::BadGeo {
                        reason: "too many geolocation names",
                    })?;
                    counters.push(std::sync::Arc::new(GeoCounters::new(
                        domain.into(),
                        regions,
                    )));
                    mine = Some(i);
                    i
                }
            };
            plan.geo = Some(Box::new(GeoPlan::new(pp, regions.len(), index)?));
        }
    }
    Ok(counters.into_boxed_slice())
}

/// Takes over `prev`'s geo counters for every name whose regions did not
/// change, so the counts keep growing across snapshots.
pub(crate) fn adopt(
    next: &mut [std::sync::Arc<GeoCounters>],
    prev: &[std::sync::Arc<GeoCounters>],
) {
    for c in next.iter_mut() {
        if let Some(o) = prev
            .iter()
            .find(|o| o.domain == c.domain && o.regions == c.regions)
        {
            *c = o.clone();
        }
    }
}

/// Appends the geo counters in Prometheus text format.
pub fn render_metrics(out: &mut String, counters: &[std::sync::Arc<GeoCounters>]) {
    use std::fmt::Write as _;
    // Names are letters, digits, '-', '_' and '\DDD' escapes; regions are
    // config names.
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let families: [(&str, &str, &str); 3] = [
        (
            "opengslb_routing_geo_decisions_total",
            "Geolocation answers by the client's region (none: no range and no default region).",
            "region",
        ),
        (
            "opengslb_routing_geo_custom_hits_total",
            "Geolocation answers whose client matched a custom mapping (config or runtime).",
            "region",
        ),
        (
            "opengslb_routing_geo_fallback_total",
            "Geolocation answers not from the client's own region, by reason.",
            "reason",
        ),
    ];
    for (i, (name, help, label)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for c in counters {
            let domain = esc(c.domain());
            let rows: Vec<(String, u64)> = match i {
                0 => c.decisions().map(|(r, n)| (esc(r), n)).collect(),
                1 => c.custom_hits().map(|(r, n)| (esc(r), n)).collect(),
                _ => c.fallbacks().map(|(r, n)| (r.to_owned(), n)).collect(),
            };
            for (value, n) in rows {
                let _ = writeln!(out, "{name}{{domain=\"{domain}\",{label}=\"{value}\"}} {n}");
            }
        }
    }
}
