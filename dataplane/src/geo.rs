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
//!
//! A name's answer depends on the region only through the set it serves:
//! regions whose sets are equal (a region down that falls back to another,
//! regions the name has no server in) are one *answer class* of the plan
//! ([`GeoPlan`]). [`GeoTable::lookup_scoped`] widens the scope past the
//! range while every range (and every gap, which is the default region) of
//! the wider block is of the address's class: an outward walk over the
//! sorted ranges, at most [`WIDEN_BUDGET`] of them per query, so the cost
//! stays bounded whatever the table.

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

/// Most ranges one scope widening looks at (then it stops, keeping the
/// widest block it has checked).
pub const WIDEN_BUDGET: usize = 64;

/// Answer class of clients that get no answer (no set for them).
pub(crate) const NO_CLASS: u16 = u16::MAX;

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

/// A geolocation plan's index: the candidates serving each region.
///
/// The candidates of one region are contiguous: a *group*. A group of one
/// candidate holds the region's set (answered rotated, like round-robin);
/// a larger group holds one single-record candidate per server, drawn by
/// weight (`domains[].region_selection: weighted`), with running sums of
/// the weights that restart at each group.
#[derive(Debug, Default, Clone)]
pub(crate) struct GeoPlan {
    /// Per region of the table, the group index (`u16::MAX`: none).
    pub(crate) by_region: Box<[u16]>,
    /// Group index of the any-region set.
    pub(crate) any: Option<u16>,
    /// The groups, in candidate order.
    pub(crate) groups: Box<[Group]>,
    /// Per candidate, the running sum of the weights of its group up to it.
    pub(crate) cumulative: Box<[u64]>,
    /// Per region of the table, its answer class.
    pub(crate) class_by_region: Box<[u16]>,
    /// Answer class of clients no range and no default region place.
    pub(crate) class_unplaced: u16,
    /// ECS privacy caps.
    pub(crate) max_v4: u8,
    pub(crate) max_v6: u8,
    /// Index into the snapshot's geo counters.
    pub(crate) counters: u32,
}

/// The candidates of one region (or of the any-region set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group {
    /// First candidate.
    pub(crate) start: u16,
    /// Number of candidates (at least 1).
    pub(crate) len: u16,
    /// Fallback reason index (`u8::MAX`: the region's own servers).
    pub(crate) reason: u8,
    /// Answer class: groups of equal content share it.
    pub(crate) class: u16,
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
    /// `self & !o`.
    fn and_not(self, o: Self) -> Self;
    /// `self + 1`, `None` at the top.
    fn succ(self) -> Option<Self>;
}

impl Bits for u32 {
    const BITS: u32 = 32;
    fn and_not(self, o: Self) -> Self {
        self & !o
    }
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
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
    fn and_not(self, o: Self) -> Self {
        self & !o
    }
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
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

impl GeoTable {
    /// As [`lookup`](Self::lookup), with the scope widened to the widest
    /// block around `ip` in which every address has the answer class of
    /// `ip` (`class` maps a region, `None` for unplaced, to its class).
    /// Bounded by [`WIDEN_BUDGET`] ranges; never narrower than `lookup`'s.
    #[inline]
    pub fn lookup_scoped(&self, ip: IpAddr, class: impl Fn(Option<u32>) -> u16) -> GeoHit {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let gap_class = class(self.default_region);
        let (info, scope) = match ip {
            IpAddr::V4(a) => self.v4.find_widened(u32::from(a), &class, gap_class),
            IpAddr::V6(a) => self.v6.find_widened(u128::from(a), &class, gap_class),
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

    /// [`find`](Self::find), then the scope widened while every range and
    /// gap of the wider block has `v`'s class.
    #[inline]
    fn find_widened(
        &self,
        v: T,
        class: &impl Fn(Option<u32>) -> u16,
        gap_class: u16,
    ) -> (Option<RangeInfo>, u8) {
        let i = self.starts.partition_point(|&s| s <= v);
        let (info, scope) = self.find_at(v, i);
        // The window of ranges inside the block: the one holding `v`, or
        // none (between ranges, `i` is the first range after `v`).
        let (lo, hi, c) = match info {
            Some(r) => (i.saturating_sub(1), i, class(Some(r.region))),
            None => (i, i, gap_class),
        };
        let scope = self.widen(v, u32::from(scope), lo, hi, c, class, gap_class);
        (info, scope as u8)
    }

    /// Widens the block of prefix `scope` around `v`, whose ranges are
    /// `lo..hi` (all of one class `c`), one bit at a time while the added
    /// half holds only ranges of class `c` and, if it leaves any address
    /// uncovered, the gap class is `c` too. Looks at most at
    /// [`WIDEN_BUDGET`] ranges.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn widen(
        &self,
        v: T,
        mut scope: u32,
        mut lo: usize,
        mut hi: usize,
        c: u16,
        class: &impl Fn(Option<u32>) -> u16,
        gap_class: u16,
    ) -> u32 {
        let mut budget = WIDEN_BUDGET;
        // Whether two ranges of the window leave a hole between them (an
        // empty window: the block is all gap).
        let mut hole = lo == hi;
        if hole && gap_class != c {
            return scope;
        }
        let n = self.starts.len().min(self.lasts.len()).min(self.info.len());
        while scope > 0 {
            let p = scope - 1;
            let host = T::low_mask(T::BITS - p);
            let first = v.and_not(host);
            let last = first.or(host);
            // Ranges to the left now inside the block.
            while lo > 0 && lo <= n {
                let k = lo - 1;
                let (Some(&kl), Some(ki)) = (self.lasts.get(k), self.info.get(k)) else {
                    return scope;
                };
                if kl < first {
                    break;
                }
                if budget == 0 || class(Some(ki.region)) != c {
                    return scope;
                }
                budget -= 1;
                if hi > lo && self.starts.get(lo).copied() != kl.succ() {
                    hole = true;
                }
                lo = k;
            }
            // Ranges to the right now inside the block.
            while hi < n {
                let (Some(&ks), Some(ki)) = (self.starts.get(hi), self.info.get(hi)) else {
                    return scope;
                };
                if ks > last {
                    break;
                }
                if budget == 0 || class(Some(ki.region)) != c {
                    return scope;
                }
                budget -= 1;
                if hi > lo && self.lasts.get(hi - 1).and_then(|l| l.succ()) != Some(ks) {
                    hole = true;
                }
                hi += 1;
            }
            let uncovered = hole
                || lo == hi
                || self.starts.get(lo).copied() != Some(first)
                || hi.checked_sub(1).and_then(|h| self.lasts.get(h)).copied() != Some(last);
            if uncovered && gap_class != c {
                return scope;
            }
            scope = p;
        }
        scope
    }

    /// The range holding `v` and the scope: its prefix, or between ranges
    /// the widest block around `v` that overlaps none.
    #[inline]
    fn find(&self, v: T) -> (Option<RangeInfo>, u8) {
        self.find_at(v, self.starts.partition_point(|&s| s <= v))
    }

    /// [`find`](Self::find) with `i`, the index of the first range that
    /// starts after `v`, known.
    #[inline]
    fn find_at(&self, v: T, i: usize) -> (Option<RangeInfo>, u8) {
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
    /// The index of a geolocation plan over `candidates` (the compiled
    /// ones, `compiled`, for the answer classes; the proto ones for their
    /// `region` and `geo_fallback`), for a table of `regions` regions.
    pub(crate) fn new(
        p: &proto::AnswerPlan,
        compiled: &[crate::snapshot::Candidate],
        regions: usize,
        counters: u32,
    ) -> Result<Self, InvalidSnapshot> {
        let bad = |reason| InvalidSnapshot::BadGeo { reason };
        let mut by_region = vec![u16::MAX; regions];
        let mut any = None;
        let mut groups: Vec<Group> = Vec::new();
        let mut cumulative = Vec::with_capacity(compiled.len());
        let mut last_region = None;
        let mut sum = 0u64;
        let present = p.candidates.iter().filter(|c| c.rrset.is_some());
        for (i, (c, cc)) in present.zip(compiled).enumerate() {
            let i = u16::try_from(i).map_err(|_| bad("too many geo candidates"))?;
            if last_region == Some(c.region) {
                // One more server of the group.
                if let Some(g) = groups.last_mut() {
                    g.len += 1;
                }
            } else {
                let gi = u16::try_from(groups.len())
                    .ok()
                    .filter(|&g| g != u16::MAX)
                    .ok_or(bad("too many geo candidates"))?;
                if c.region == ANY_REGION {
                    if any.is_some() {
                        return Err(bad("candidates of one region not contiguous"));
                    }
                    any = Some(gi);
                } else {
                    match by_region.get_mut(c.region as usize) {
                        Some(slot) if *slot == u16::MAX => *slot = gi,
                        Some(_) => return Err(bad("candidates of one region not contiguous")),
                        None => return Err(bad("candidate region out of range")),
                    }
                }
                groups.push(Group {
                    start: i,
                    len: 1,
                    reason: match proto::GeoFallback::try_from(c.geo_fallback) {
                        Ok(proto::GeoFallback::RegionDown) => REASON_REGION_DOWN as u8,
                        Ok(proto::GeoFallback::Exhausted) => REASON_EXHAUSTED as u8,
                        _ => u8::MAX,
                    },
                    class: gi,
                });
                last_region = Some(c.region);
                sum = 0;
            }
            // A candidate without records is never drawn.
            if !cc.rrset.records.is_empty() {
                sum = sum.saturating_add(u64::from(c.weight));
            }
            cumulative.push(sum);
        }
        // Groups of equal content (records, and weights when drawn) are one
        // answer class: the first of them names it.
        let same = |a: &Group, b: &Group| {
            let side = |g: &Group| {
                let r = usize::from(g.start)..usize::from(g.start) + usize::from(g.len);
                (compiled.get(r.clone()), p.candidates.get(r))
            };
            match (side(a), side(b)) {
                ((Some(ca), Some(pa)), (Some(cb), Some(pb))) => {
                    a.len == b.len
                        && ca
                            .iter()
                            .zip(cb)
                            .all(|(x, y)| x.rrset.records == y.rrset.records)
                        && (a.len == 1 || pa.iter().zip(pb).all(|(x, y)| x.weight == y.weight))
                }
                _ => false,
            }
        };
        for k in 0..groups.len() {
            let class = (0..k)
                .find(|&j| same(&groups[j], &groups[k]))
                .and_then(|j| groups.get(j))
                .map(|g| g.class);
            if let (Some(class), Some(g)) = (class, groups.get_mut(k)) {
                g.class = class;
            }
        }
        let class_of = |gi: Option<u16>| {
            gi.and_then(|g| groups.get(usize::from(g)))
                .filter(|g| {
                    // An empty set answers nothing: no class of its own.
                    compiled
                        .get(usize::from(g.start))
                        .is_some_and(|c| !c.rrset.records.is_empty())
                })
                .map_or(NO_CLASS, |g| g.class)
        };
        let class_unplaced = class_of(any);
        let class_by_region = by_region
            .iter()
            .map(|&g| {
                if g == u16::MAX {
                    class_unplaced
                } else {
                    class_of(Some(g))
                }
            })
            .collect();
        Ok(Self {
            by_region: by_region.into_boxed_slice(),
            any,
            groups: groups.into_boxed_slice(),
            cumulative: cumulative.into_boxed_slice(),
            class_by_region,
            class_unplaced,
            max_v4: p.ecs_max_prefix_v4.min(32) as u8,
            max_v6: p.ecs_max_prefix_v6.min(128) as u8,
            counters,
        })
    }

    /// The group for a client of `region`, and the fallback reason to
    /// count (if any).
    #[inline]
    pub(crate) fn pick(&self, region: Option<u32>) -> (Option<&Group>, Option<usize>) {
        let any = || self.any.and_then(|g| self.groups.get(usize::from(g)));
        let Some(r) = region else {
            return (any(), Some(REASON_UNMAPPED));
        };
        match self.by_region.get(r as usize) {
            Some(&gi) if gi != u16::MAX => {
                let g = self.groups.get(usize::from(gi));
                let why = g
                    .map(|g| g.reason)
                    .filter(|&w| w != u8::MAX)
                    .map(usize::from);
                (g, why)
            }
            _ => (any(), Some(REASON_NOT_SERVED)),
        }
    }

    /// The answer class of a client of `region` (`None`: unplaced).
    #[inline]
    pub(crate) fn class_of(&self, region: Option<u32>) -> u16 {
        match region {
            None => self.class_unplaced,
            Some(r) => self
                .class_by_region
                .get(r as usize)
                .copied()
                .unwrap_or(self.class_unplaced),
        }
    }

    /// The running weight sums of `g`'s candidates.
    #[inline]
    pub(crate) fn cumulative(&self, g: &Group) -> &[u64] {
        let start = usize::from(g.start);
        self.cumulative
            .get(start..start + usize::from(g.len))
            .unwrap_or(&[])
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
            let geo = GeoPlan::new(pp, &plan.candidates, regions.len(), index)?;
            plan.geo = Some(Box::new(geo));
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
