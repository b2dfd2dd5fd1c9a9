//! The geo range table: the GeoIP2 database plus the custom mappings (the
//! config's and the runtime ones from the store), compiled into sorted,
//! non-overlapping CIDR ranges per address family, each naming a region.
//!
//! Only the controlplane reads the database (with `maxminddb`); the table
//! travels in the snapshot as its own versioned part (`GeoTable`), and the
//! dataplane looks client addresses up in it with a binary search.
//!
//! Precedence, per address: the longest custom mapping (config or runtime)
//! that contains it; else the region listing the database's country for it
//! (`regions[].countries`, first region in config order); else the region
//! listing its continent (`regions[].continents`); else no range (the
//! dataplane uses `overwatch.geolocation.default_region`, else every
//! healthy server of the domain).
//!
//! Invariants: ranges are CIDR blocks, sorted, disjoint; two sibling blocks
//! with the same region and source are always merged into their parent, so
//! the block containing an address is the widest aligned prefix over which
//! its lookup cannot change (what the ECS SCOPE is derived from). The
//! table's generation changes only when its content does.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnet::IpNet;
use opengslb_proto::{GeoRange, GeoTable};

use crate::{config::Config, store::GeoMappingRow};

pub mod metrics;
pub mod mmdb_writer;

#[cfg(test)]
mod tests;

/// Why a GeoIP database could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("GeoIP database {}: {reason}", path.display())]
pub struct GeoDbError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The networks of a GeoIP2/GeoLite2 Country or City database, read once.
#[derive(Debug, Clone, Default)]
pub struct GeoDb {
    /// The file it was read from.
    pub path: PathBuf,
    /// `database_type` from its metadata.
    pub database_type: String,
    /// IPv4 networks (values in the low 32 bits).
    v4: Vec<DbNet>,
    /// IPv6 networks.
    v6: Vec<DbNet>,
}

/// One database network with its country and continent codes.
#[derive(Debug, Clone, Copy)]
struct DbNet {
    start: u128,
    len: u8,
    country: [u8; 2],
    continent: [u8; 2],
}

/// Where a range's region comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RangeSource {
    /// The GeoIP database (country or continent).
    Database,
    /// `overwatch.geolocation.custom_mappings`.
    Config,
    /// A runtime mapping (API/CLI, in the store).
    Runtime,
}

/// One range of the table: a CIDR block and its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First address (IPv4 in the low 32 bits).
    pub start: u128,
    /// Prefix length.
    pub len: u8,
    /// Index into [`RangeTable::regions`].
    pub region: u32,
    /// Where it comes from.
    pub source: RangeSource,
}

/// The compiled table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeTable {
    /// Region names (the config's, in order).
    pub regions: Vec<String>,
    /// IPv4 ranges, sorted, disjoint.
    pub v4: Vec<Range>,
    /// IPv6 ranges, sorted, disjoint.
    pub v6: Vec<Range>,
    /// `overwatch.geolocation.default_region`, as an index.
    pub default_region: Option<u32>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoMatch {
    /// Region index, `None` when nothing applies.
    pub region: Option<u32>,
    /// The range that matched (`None`: default region or nothing).
    pub range: Option<Range>,
}

/// The table with the generation it is published under.
#[derive(Debug, Clone, Default)]
pub struct VersionedTable {
    /// Changes only when the table does.
    pub generation: u64,
    /// The table.
    pub table: Arc<RangeTable>,
    /// The table as the snapshot carries it (built once per generation).
    pub proto: Arc<GeoTable>,
}

// === impl GeoDb ===

impl GeoDb {
    /// Reads every network of the database at `path` with its country and
    /// continent. A missing, truncated or corrupt file is an error naming
    /// the file and the reason.
    pub fn load(path: &Path) -> Result<Self, GeoDbError> {
        let fail = |reason: String| GeoDbError {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Self::from_bytes(path, bytes).map_err(fail)
    }

    /// Reads a database from memory (`path` names it in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, String> {
        use maxminddb::{geoip2, Reader, WithinOptions};
        let reader = Reader::from_source(bytes).map_err(|e| format!("not a MaxMind DB: {e}"))?;
        let database_type = reader.metadata().database_type.clone();
        let mut db = Self {
            path: path.to_path_buf(),
            database_type,
            v4: Vec::new(),
            v6: Vec::new(),
        };
        // Records are shared by many networks: decode each once.
        let mut decoded: HashMap<usize, ([u8; 2], [u8; 2])> = HashMap::new();
        let networks = reader
            .networks(WithinOptions::default())
            .map_err(|e| format!("corrupt search tree: {e}"))?;
        for item in networks {
            let item = item.map_err(|e| format!("corrupt database: {e}"))?;
            let Some(offset) = item.offset() else {
                continue;
            };
            let codes = match decoded.get(&offset) {
                Some(c) => *c,
                None => {
                    let rec: Option<geoip2::Country<'_>> = item
                        .decode()
                        .map_err(|e| format!("corrupt data section: {e}"))?;
                    let codes = rec.map_or(([0; 2], [0; 2]), |r| {
                        let country = r.country.iso_code.or(r.registered_country.iso_code);
                        (code2(country), code2(r.continent.code))
                    });
                    decoded.insert(offset, codes);
                    codes
                }
            };
            let net = item
                .network()
                .map_err(|e| format!("corrupt search tree: {e}"))?;
            let (start, list) = match net.network() {
                IpAddr::V4(a) => (u128::from(u32::from(a)), &mut db.v4),
                IpAddr::V6(a) => (u128::from(a), &mut db.v6),
            };
            list.push(DbNet {
                start,
                len: net.prefix(),
                country: codes.0,
                continent: codes.1,
            });
        }
        db.v4.sort_by_key(|n| n.start);
        db.v6.sort_by_key(|n| n.start);
        Ok(db)
    }

    /// Networks read.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether it holds no network.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl RangeTable ===

impl RangeTable {
    /// Compiles `db` (when configured) and the custom mappings of `cfg` and
    /// `runtime`. Runtime mappings naming a region the config no longer has
    /// are skipped (logged).
    pub fn build(cfg: &Config, db: Option<&GeoDb>, runtime: &[GeoMappingRow]) -> Self {
        let regions: Vec<String> = cfg.regions.iter().map(|r| r.name.clone()).collect();
        let index = |name: &str| {
            regions
                .iter()
                .position(|r| r == name)
                .and_then(|i| u32::try_from(i).ok())
        };
        // Country and continent → region (first region in config order).
        let mut by_country: HashMap<[u8; 2], u32> = HashMap::new();
        let mut by_continent: HashMap<[u8; 2], u32> = HashMap::new();
        for (i, r) in cfg.regions.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            for c in &r.countries {
                by_country
                    .entry(code2(Some(&c.to_ascii_uppercase())))
                    .or_insert(i);
            }
            for c in &r.continents {
                by_continent
                    .entry(code2(Some(&c.to_ascii_uppercase())))
                    .or_insert(i);
            }
        }
        let from_db = |nets: &[DbNet]| -> Vec<Range> {
            nets.iter()
                .filter_map(|n| {
                    let region = by_country
                        .get(&n.country)
                        .or_else(|| by_continent.get(&n.continent))?;
                    Some(Range {
                        start: n.start,
                        len: n.len,
                        region: *region,
                        source: RangeSource::Database,
                    })
                })
                .collect()
        };
        let (db4, db6) = db.map_or((Vec::new(), Vec::new()), |d| {
            (from_db(&d.v4), from_db(&d.v6))
        });

        let mut custom4 = Vec::new();
        let mut custom6 = Vec::new();
        let mut add = |net: IpNet, region: u32, source: RangeSource| {
            let net = net.trunc();
            let (start, list) = match net.network() {
                IpAddr::V4(a) => (u128::from(u32::from(a)), &mut custom4),
                IpAddr::V6(a) => (u128::from(a), &mut custom6),
            };
            list.push(Range {
                start,
                len: net.prefix_len(),
                region,
                source,
            });
        };
        for m in &cfg.overwatch.geolocation.custom_mappings {
            if let Some(r) = index(&m.region) {
                add(m.cidr, r, RangeSource::Config);
            }
        }
        for m in runtime {
            match (m.cidr.parse::<IpNet>(), index(&m.region)) {
                (Ok(net), Some(r)) => add(net, r, RangeSource::Runtime),
                _ => tracing::warn!(
                    cidr = %m.cidr,
                    region = %m.region,
                    "runtime geo mapping skipped: bad network or unknown region"
                ),
            }
        }
        Self {
            default_region: cfg
                .overwatch
                .geolocation
                .default_region
                .as_deref()
                .and_then(index),
            v4: compile_family(db4, custom4, 32),
            v6: compile_family(db6, custom6, 128),
            regions,
        }
    }

    /// The region of `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> GeoMatch {
        let (ranges, bits, v) = family_of(self, ip);
        match find(ranges, v, bits) {
            Some(r) => GeoMatch {
                region: Some(r.region),
                range: Some(*r),
            },
            None => GeoMatch {
                region: self.default_region,
                range: None,
            },
        }
    }

    /// The widest prefix length around `ip` over which [`Self::lookup`]
    /// gives the same region: the matching range's prefix, or, between
    /// ranges, the widest block that holds none.
    pub fn scope(&self, ip: IpAddr) -> u8 {
        let (ranges, bits, v) = family_of(self, ip);
        if let Some(r) = find(ranges, v, bits) {
            return r.len;
        }
        let i = ranges.partition_point(|r| r.start <= v);
        let mut p = 0u32;
        if let Some(prev) = i.checked_sub(1).and_then(|i| ranges.get(i)) {
            p = p.max(common_prefix(v, last(prev, bits), bits) + 1);
        }
        if let Some(next) = ranges.get(i) {
            p = p.max(common_prefix(v, next.start, bits) + 1);
        }
        p.min(bits) as u8
    }

    /// The network of a range, for display.
    pub fn network(range: &Range, v4: bool) -> IpNet {
        let addr = if v4 {
            IpAddr::V4(Ipv4Addr::from(range.start as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(range.start))
        };
        IpNet::new(addr, range.len).unwrap_or_else(|_| IpNet::from(addr))
    }

    /// The table as it travels in the snapshot.
    pub fn to_proto(&self, generation: u64) -> GeoTable {
        let conv = |r: &Range, v4: bool| GeoRange {
            start: if v4 {
                (r.start as u32).to_be_bytes().to_vec()
            } else {
                r.start.to_be_bytes().to_vec()
            },
            prefix_len: u32::from(r.len),
            region: r.region,
            custom: r.source != RangeSource::Database,
        };
        GeoTable {
            generation,
            regions: self.regions.clone(),
            v4: self.v4.iter().map(|r| conv(r, true)).collect(),
            v6: self.v6.iter().map(|r| conv(r, false)).collect(),
            default_region: self.default_region,
        }
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.v4.capacity() + self.v6.capacity()) * size_of::<Range>()
            + self.regions.iter().map(String::capacity).sum::<usize>()
    }
}

// === impl VersionedTable ===

impl VersionedTable {
    /// `table` under `generation`, or under `prev`'s generation when it is
    /// the same table (so an unchanged table is never resent).
    pub fn next(prev: Option<&VersionedTable>, table: RangeTable, generation: u64) -> Self {
        match prev {
            Some(p) if *p.table == table => p.clone(),
            _ => Self {
                generation,
                proto: Arc::new(table.to_proto(generation)),
                table: Arc::new(table),
            },
        }
    }
}

// === functions ===

/// Two upper-case ASCII letters, or zeros.
fn code2(s: Option<&str>) -> [u8; 2] {
    match s.map(str::as_bytes) {
        Some([a, b]) => [a.to_ascii_uppercase(), b.to_ascii_uppercase()],
        _ => [0; 2],
    }
}

fn family_of(t: &RangeTable, ip: IpAddr) -> (&[Range], u32, u128) {
    let ip = match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => (&t.v4, 32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (&t.v6, 128, u128::from(a)),
    }
}

/// Mask of the low `n` bits.
fn low_mask(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// Last address of a range.
fn last(r: &Range, bits: u32) -> u128 {
    r.start | low_mask(bits - u32::from(r.len))
}

/// Leading bits `a` and `b` share, out of `bits`.
fn common_prefix(a: u128, b: u128, bits: u32) -> u32 {
    ((a ^ b) << (128 - bits)).leading_zeros().min(bits)
}

/// The range holding `v`, by binary search.
fn find(ranges: &[Range], v: u128, bits: u32) -> Option<&Range> {
    let i = ranges.partition_point(|r| r.start <= v).checked_sub(1)?;
    let r = ranges.get(i)?;
    (v <= last(r, bits)).then_some(r)
}

/// One family: the database ranges with the custom ones laid over them
/// (longest custom prefix wins), sorted, merged.
fn compile_family(mut db: Vec<Range>, mut custom: Vec<Range>, bits: u32) -> Vec<Range> {
    db.sort_by_key(|r| (r.start, r.len));
    // Database networks are disjoint; drop any nested one defensively.
    db = disjoint_keep_first(db, bits);
    // Customs: shorter prefixes first, each more specific one laid over.
    custom.sort_by_key(|r| (r.len, r.start, r.source));
    let mut top: Vec<Range> = Vec::new();
    for c in custom {
        top = overlay(&top, &[c], bits);
    }
    top.sort_by_key(|r| r.start);
    let mut all = overlay(&db, &top, bits);
    all.sort_by_key(|r| r.start);
    merge_siblings(all, bits)
}

/// Drops ranges nested in an earlier one (input sorted by start, then length).
fn disjoint_keep_first(sorted: Vec<Range>, bits: u32) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(sorted.len());
    for r in sorted {
        if out.last().is_some_and(|p| r.start <= last(p, bits)) {
            continue;
        }
        out.push(r);
    }
    out
}

/// `top` ∪ (`base` − `top`): both sorted and disjoint; the result is
/// disjoint (not sorted).
fn overlay(base: &[Range], top: &[Range], bits: u32) -> Vec<Range> {
    let mut out = Vec::with_capacity(base.len() + top.len());
    for b in base {
        let b_last = last(b, bits);
        // A top block containing `b` removes it whole.
        if find(top, b.start, bits).is_some_and(|t| t.len <= b.len) {
            continue;
        }
        // Top blocks inside `b`.
        let from = top.partition_point(|t| t.start < b.start);
        let mut cursor = b.start;
        let mut covered_to_end = false;
        for t in top[from..].iter().take_while(|t| t.start <= b_last) {
            if t.start > cursor {
                split(cursor, t.start - 1, b, bits, &mut out);
            }
            let t_last = last(t, bits);
            if t_last >= b_last {
                covered_to_end = true;
                break;
            }
            cursor = t_last + 1;
        }
        if !covered_to_end && cursor <= b_last {
            split(cursor, b_last, b, bits, &mut out);
        }
    }
    out.extend_from_slice(top);
    out
}

/// Pushes the CIDR blocks covering `lo..=hi` with `like`'s region and source.
fn split(mut lo: u128, hi: u128, like: &Range, bits: u32, out: &mut Vec<Range>) {
    loop {
        // Largest block aligned at `lo` that ends at or before `hi`.
        let align = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        let mut size_bits = align;
        while size_bits > 0 && lo.checked_add(low_mask(size_bits)).is_none_or(|e| e > hi) {
            size_bits -= 1;
        }
        out.push(Range {
            start: lo,
            len: (bits - size_bits) as u8,
            ..*like
        });
        let end = lo | low_mask(size_bits);
        if end >= hi {
            return;
        }
        lo = end + 1;
    }
}

/// Merges sibling blocks of the same region and source into their parent,
/// as far as it goes (input sorted, disjoint).
fn merge_siblings(sorted: Vec<Range>, bits: u32) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::with_capacity(sorted.len());
    for r in sorted {
        out.push(r);
        while out.len() >= 2 {
            let (a, b) = (out[out.len() - 2], out[out.len() - 1]);
            if a.len != b.len || a.len == 0 || a.region != b.region || a.source != b.source {
                break;
            }
            let size_bits = bits - u32::from(a.len);
            let parent_bits = size_bits + 1;
            let aligned = a.start & low_mask(parent_bits) == 0;
            if !aligned || b.start != a.start + (1u128 << size_bits) {
                break;
            }
            out.truncate(out.len() - 2);
            out.push(Range {
                len: a.len - 1,
                ..a
            });
        }
    }
    out
}

/// A file's size and modification time.
type FileStamp = (u64, Option<std::time::SystemTime>);

/// Watches `overwatch.geolocation.database_path` (size and modification
/// time, every `overwatch.geolocation.database_poll_interval` of the config
/// in force, default 5 s): a changed file is read again and its table
/// published; a bad one is logged and the old table keeps serving.
pub async fn watch_database(state: Arc<crate::server::State>) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut seen: Option<(PathBuf, Option<FileStamp>)> = None;
    loop {
        let (path, interval) = {
            let cfg = state.config.lock().await;
            let geo = &cfg.overwatch.geolocation;
            (
                geo.database_path.clone(),
                // Validation keeps it above zero; never spin regardless.
                geo.database_poll_interval
                    .get()
                    .max(std::time::Duration::from_millis(10)),
            )
        };
        match path {
            None => seen = None,
            Some(p) => {
                let now = stamp(&p);
                match &seen {
                    // First look (or a new path, which the reload that set it read).
                    None => seen = Some((p, now)),
                    Some((q, _)) if *q != p => seen = Some((p, now)),
                    Some((_, before)) if *before != now => {
                        tracing::info!(path = %p.display(), "GeoIP database file changed; reloading");
                        seen = Some((p, now));
                        // Errors are logged by `reload_geo_db`.
                        let _ = state.reload_geo_db().await;
                    }
                    Some(_) => {}
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
