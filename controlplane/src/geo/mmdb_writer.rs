//! A small writer of MaxMind DB files (format 2.0), for test data and
//! benchmarks only: GeoIP2-Country-shaped records (`country.iso_code`,
//! `continent.code`) on an IPv6 tree with IPv4 under `::/96`, 32-bit
//! records. Plain std, so integration tests and the bench harness can
//! include this file by path.
//!
//! Format (MaxMind DB spec 2.0): search tree (`node_count` nodes of two
//! records each; a record below `node_count` is a node, equal to it "no
//! data", above it `node_count + 16 + offset` into the data section), 16
//! zero octets, the data section, then `\xAB\xCD\xEFMaxMind.com` and the
//! metadata map.

use std::collections::HashMap;
use std::net::IpAddr;

/// One network of the database and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmdbNet {
    /// Network address (the host bits are ignored).
    pub addr: IpAddr,
    /// Prefix length (0-32 for IPv4, 0-128 for IPv6).
    pub prefix: u8,
    /// ISO-3166 alpha-2 country code, or empty for none.
    pub country: String,
    /// Continent code, or empty for none.
    pub continent: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rec {
    Empty,
    Node(u32),
    Data(u32),
}

/// Encodes `nets` (later ones overwrite earlier ones where they overlap) as
/// a GeoIP2-Country-shaped MaxMind DB of `database_type`.
pub fn write_mmdb(nets: &[MmdbNet], database_type: &str) -> Vec<u8> {
    let mut data = Vec::new();
    let mut offsets: HashMap<(String, String), u32> = HashMap::new();
    let mut tree: Vec<[Rec; 2]> = vec![[Rec::Empty; 2]];
    for n in nets {
        let key = (n.country.clone(), n.continent.clone());
        let off = *offsets.entry(key).or_insert_with(|| {
            let at = data.len() as u32;
            encode_record(&mut data, &n.country, &n.continent);
            at
        });
        let (bits, len) = match n.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 96 + u32::from(n.prefix.min(32))),
            IpAddr::V6(a) => (u128::from(a), u32::from(n.prefix.min(128))),
        };
        insert(&mut tree, bits, len, off);
    }
    let node_count = tree.len() as u32;
    let mut out = Vec::with_capacity(tree.len() * 8 + data.len() + 256);
    for node in &tree {
        for rec in node {
            let v = match *rec {
                Rec::Empty => node_count,
                Rec::Node(i) => i,
                Rec::Data(off) => node_count + 16 + off,
            };
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let mut meta = Vec::new();
    map_header(&mut meta, 9);
    string(&mut meta, "binary_format_major_version");
    uint(&mut meta, 5, 2);
    string(&mut meta, "binary_format_minor_version");
    uint(&mut meta, 5, 0);
    string(&mut meta, "build_epoch");
    uint(&mut meta, 9, 1_700_000_000);
    string(&mut meta, "database_type");
    string(&mut meta, database_type);
    string(&mut meta, "description");
    map_header(&mut meta, 1);
    string(&mut meta, "en");
    string(&mut meta, "OpenGSLB test data");
    string(&mut meta, "ip_version");
    uint(&mut meta, 5, 6);
    string(&mut meta, "languages");
    control(&mut meta, 11, 1);
    string(&mut meta, "en");
    string(&mut meta, "node_count");
    uint(&mut meta, 6, u64::from(node_count));
    string(&mut meta, "record_size");
    uint(&mut meta, 5, 32);
    out.extend_from_slice(&meta);
    out
}

/// Sets every address of `bits/len` (128-bit tree) to data `off`.
fn insert(tree: &mut Vec<[Rec; 2]>, bits: u128, len: u32, off: u32) {
    if len == 0 {
        // The whole space: both halves of the root.
        tree[0] = [Rec::Data(off); 2];
        return;
    }
    let mut node = 0usize;
    for depth in 0..len {
        let bit = ((bits >> (127 - depth)) & 1) as usize;
        if depth + 1 == len {
            tree[node][bit] = Rec::Data(off);
            return;
        }
        node = match tree[node][bit] {
            Rec::Node(i) => i as usize,
            other => {
                // Split: the new node inherits what the record held.
                let i = tree.len();
                tree.push([other; 2]);
                tree[node][bit] = Rec::Node(i as u32);
                i
            }
        };
    }
}

fn encode_record(out: &mut Vec<u8>, country: &str, continent: &str) {
    let fields = usize::from(!country.is_empty()) + usize::from(!continent.is_empty());
    map_header(out, fields);
    if !continent.is_empty() {
        string(out, "continent");
        map_header(out, 1);
        string(out, "code");
        string(out, continent);
    }
    if !country.is_empty() {
        string(out, "country");
        map_header(out, 1);
        string(out, "iso_code");
        string(out, country);
    }
}

/// Control byte(s) of a field of `kind` (1-15) and `size`.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (first, ext) = if kind <= 7 {
        (kind << 5, None)
    } else {
        (0, Some(kind - 7))
    };
    let (small, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, Vec::new())
    } else if size < 285 {
        (29, vec![(size - 29) as u8])
    } else if size < 65_821 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    out.push(first | small);
    if let Some(e) = ext {
        out.push(e);
    }
    out.extend_from_slice(&extra);
}

fn map_header(out: &mut Vec<u8>, pairs: usize) {
    control(out, 7, pairs);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// An unsigned integer of `kind` (5 uint16, 6 uint32, 9 uint64), minimal length.
fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

/// Countries with their continents, for generated data.
pub const COUNTRIES: [(&str, &str); 24] = [
    ("US", "NA"),
    ("CA", "NA"),
    ("MX", "NA"),
    ("BR", "SA"),
    ("AR", "SA"),
    ("CL", "SA"),
    ("DE", "EU"),
    ("FR", "EU"),
    ("GB", "EU"),
    ("NL", "EU"),
    ("SE", "EU"),
    ("PL", "EU"),
    ("JP", "AS"),
    ("CN", "AS"),
    ("IN", "AS"),
    ("SG", "AS"),
    ("KR", "AS"),
    ("AU", "OC"),
    ("NZ", "OC"),
    ("ZA", "AF"),
    ("NG", "AF"),
    ("EG", "AF"),
    ("KE", "AF"),
    ("AQ", "AN"),
];

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// About `n4` IPv4 and `n6` IPv6 disjoint networks with random lengths,
/// gaps and countries (a few without a country, continent only), from `seed`.
pub fn generate_nets(seed: u64, n4: usize, n6: usize) -> Vec<MmdbNet> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(n4 + n6);
    let pick = |rng: &mut SplitMix, addr: IpAddr, prefix: u8| {
        let (country, continent) = COUNTRIES[rng.below(COUNTRIES.len() as u64) as usize];
        // One in 50 networks has only a continent.
        let country = if rng.below(50) == 0 { "" } else { country };
        MmdbNet {
            addr,
            prefix,
            country: country.to_owned(),
            continent: continent.to_owned(),
        }
    };
    // IPv4 from 1.0.0.0; /18-/24 (shorter when few networks are asked for).
    let short = if n4 > 100_000 { 18 } else { 12 };
    let mut cursor: u64 = 1 << 24;
    for _ in 0..n4 {
        let len = short + rng.below(u64::from(25 - short)) as u32;
        let size = 1u64 << (32 - len);
        cursor = cursor.div_ceil(size) * size;
        if cursor + size > 1 << 32 {
            break;
        }
        let addr = IpAddr::V4(std::net::Ipv4Addr::from(cursor as u32));
        out.push(pick(&mut rng, addr, len as u8));
        cursor += size + size * rng.below(2);
    }
    // IPv6 from 2000::/3, /20-/48.
    let mut cursor: u128 = 0x2000 << 112;
    for _ in 0..n6 {
        let len = 20 + rng.below(29) as u32;
        let size = 1u128 << (128 - len);
        cursor = cursor.div_ceil(size) * size;
        if cursor.checked_add(size).is_none_or(|e| e > 0x4000 << 112) {
            break;
        }
        let addr = IpAddr::V6(std::net::Ipv6Addr::from(cursor));
        out.push(pick(&mut rng, addr, len as u8));
        cursor += size + size * u128::from(rng.below(2));
    }
    out
}
