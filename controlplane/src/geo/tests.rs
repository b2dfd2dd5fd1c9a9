use std::{net::IpAddr, path::Path};

use maxminddb::{geoip2, Reader};

use super::mmdb_writer::{generate_nets, write_mmdb, MmdbNet, SplitMix};
use super::*;
use crate::config;

/// Regions by country and continent; custom mappings nested and overlapping
/// database networks.
const CFG: &str = "\
regions:
  - name: us
    countries: [US, CA]
    servers: [{address: 192.0.2.1}]
  - name: eu
    countries: [DE, FR, GB]
    continents: [EU]
    servers: [{address: 192.0.2.2}]
  - name: asia
    continents: [AS, OC]
    servers: [{address: 192.0.2.3}]
  - name: latam
    continents: [SA]
    countries: [MX]
    servers: [{address: 192.0.2.4}]
  - name: office
    servers: [{address: 192.0.2.5}]
overwatch:
  geolocation:
    default_region: us
    custom_mappings:
      - {cidr: 10.0.0.0/8, region: office}
      - {cidr: 10.1.0.0/16, region: eu}
      - {cidr: 2.16.5.0/24, region: office}
      - {cidr: 1.0.0.0/7, region: asia}
      - {cidr: 2001:db8::/32, region: office}
";

fn cfg() -> Config {
    config::parse(CFG, Path::new("geo.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn net(addr: &str, prefix: u8, country: &str, continent: &str) -> MmdbNet {
    MmdbNet {
        addr: addr.parse().unwrap(),
        prefix,
        country: country.into(),
        continent: continent.into(),
    }
}

/// The small hand-written database of the unit tests.
fn small_nets() -> Vec<MmdbNet> {
    vec![
        net("1.0.0.0", 8, "US", "NA"),
        net("2.0.0.0", 8, "DE", "EU"),
        net("2.16.0.0", 13, "FR", "EU"),
        net("3.0.0.0", 9, "JP", "AS"),
        net("3.128.0.0", 9, "AU", "OC"),
        net("5.0.0.0", 16, "BR", "SA"),
        net("8.8.8.0", 24, "US", "NA"),
        net("41.0.0.0", 8, "ZA", "AF"),
        net("100.64.0.0", 10, "", ""),
        net("185.0.0.0", 8, "PL", "EU"),
        net("2a00::", 12, "DE", "EU"),
        net("2600::", 12, "US", "NA"),
        net("2400::", 12, "JP", "AS"),
        net("2800::", 12, "MX", "NA"),
    ]
}

fn load(nets: &[MmdbNet]) -> (GeoDb, Vec<u8>) {
    let bytes = write_mmdb(nets, "GeoLite2-Country");
    let db = GeoDb::from_bytes(Path::new("test.mmdb"), bytes.clone()).unwrap();
    (db, bytes)
}

fn region_name(t: &RangeTable, ip: &str) -> Option<String> {
    t.lookup(ip.parse().unwrap())
        .region
        .map(|r| t.regions[r as usize].clone())
}

#[test]
fn precedence_custom_country_continent_default() {
    let cfg = cfg();
    let (db, _) = load(&small_nets());
    // 14 networks; FR /13 inside DE /8 leaves DE as 5 blocks around it.
    assert_eq!(db.len(), 18);
    let runtime = vec![GeoMappingRow {
        cidr: "8.8.8.0/25".into(),
        region: "latam".into(),
        comment: String::new(),
        created_at_unix_ms: 0,
    }];
    let t = RangeTable::build(&cfg, Some(&db), &runtime);
    let cases = [
        ("1.2.3.4", "asia"),       // custom /7 beats the US network
        ("2.1.1.1", "eu"),         // DE by country
        ("2.16.5.9", "office"),    // custom /24 inside FR /13
        ("2.16.6.1", "eu"),        // FR
        ("3.1.1.1", "asia"),       // JP by continent
        ("3.200.0.1", "asia"),     // AU by continent OC
        ("5.0.1.1", "latam"),      // BR by continent SA
        ("8.8.8.8", "latam"),      // runtime /25
        ("8.8.8.200", "us"),       // US
        ("10.9.9.9", "office"),    // custom /8
        ("10.1.2.3", "eu"),        // longer custom /16
        ("41.1.1.1", "us"),        // ZA: no region → default
        ("100.64.0.1", "us"),      // no country → default
        ("185.1.1.1", "eu"),       // PL by continent EU
        ("2a00::1", "eu"),         // IPv6 DE
        ("2800::1", "latam"),      // MX by country
        ("2001:db8::5", "office"), // custom IPv6
        ("::ffff:2.1.1.1", "eu"),  // IPv4-mapped counts as IPv4
    ];
    for (ip, want) in cases {
        assert_eq!(region_name(&t, ip).as_deref(), Some(want), "{ip}");
    }
    let m = t.lookup("8.8.8.8".parse().unwrap());
    assert_eq!(m.range.map(|r| r.source), Some(RangeSource::Runtime));
    let m = t.lookup("10.1.2.3".parse().unwrap());
    assert_eq!(m.range.map(|r| r.source), Some(RangeSource::Config));
    let m = t.lookup("2.1.1.1".parse().unwrap());
    assert_eq!(m.range.map(|r| r.source), Some(RangeSource::Database));
    // Without a default region, unmapped addresses have none.
    let mut cfg2 = cfg.clone();
    cfg2.overwatch.geolocation.default_region = None;
    let t2 = RangeTable::build(&cfg2, Some(&db), &runtime);
    assert_eq!(region_name(&t2, "41.1.1.1"), None);
    assert_eq!(t2.lookup("41.1.1.1".parse().unwrap()).range, None);
}

#[test]
fn ranges_sorted_disjoint_and_merged() {
    let cfg = cfg();
    let (db, _) = load(&generate_nets(7, 3000, 1000));
    let t = RangeTable::build(&cfg, Some(&db), &[]);
    for (ranges, bits) in [(&t.v4, 32), (&t.v6, 128)] {
        assert!(!ranges.is_empty());
        for w in ranges.windows(2) {
            assert!(last(&w[0], bits) < w[1].start, "sorted, disjoint: {w:?}");
            // No mergeable siblings are left.
            let (a, b) = (w[0], w[1]);
            let siblings = a.len == b.len
                && a.len > 0
                && a.start & low_mask(bits - u32::from(a.len) + 1) == 0
                && b.start == a.start + (1u128 << (bits - u32::from(a.len)));
            assert!(
                !(siblings && a.region == b.region && a.source == b.source),
                "unmerged siblings {a:?} {b:?}"
            );
        }
        for r in ranges.iter() {
            assert_eq!(r.start & low_mask(bits - u32::from(r.len)), 0, "aligned");
        }
    }
}

#[test]
fn sibling_ranges_merge_into_their_parent() {
    let cfg = cfg();
    // Two DE /9 halves of 2.0.0.0/8 and FR inside: DE halves merge only
    // where FR does not split them.
    let (db, _) = load(&[
        net("20.0.0.0", 9, "DE", "EU"),
        net("20.128.0.0", 9, "GB", "EU"),
        net("30.0.0.0", 9, "DE", "EU"),
        net("30.128.0.0", 9, "US", "NA"),
    ]);
    let t = RangeTable::build(&cfg, Some(&db), &[]);
    assert_eq!(t.scope("20.1.1.1".parse().unwrap()), 8, "DE+GB both eu");
    assert_eq!(t.scope("30.1.1.1".parse().unwrap()), 9);
    assert_eq!(t.scope("30.200.1.1".parse().unwrap()), 9);
}

/// Compiled table vs a direct `maxminddb` lookup plus the custom mappings'
/// longest prefix, on 100,000 random addresses.
#[test]
fn table_agrees_with_maxminddb_on_100k_addresses() {
    let cfg = cfg();
    let mut nets = generate_nets(42, 5000, 2000);
    nets.extend(small_nets());
    let (db, bytes) = load(&nets);
    let runtime = vec![GeoMappingRow {
        cidr: "3.3.0.0/16".into(),
        region: "office".into(),
        comment: String::new(),
        created_at_unix_ms: 0,
    }];
    let t = RangeTable::build(&cfg, Some(&db), &runtime);
    let reader = Reader::from_source(bytes).unwrap();
    let customs: Vec<(IpNet, &str)> = cfg
        .overwatch
        .geolocation
        .custom_mappings
        .iter()
        .map(|m| (m.cidr.trunc(), m.region.as_str()))
        .chain(std::iter::once(("3.3.0.0/16".parse().unwrap(), "office")))
        .collect();
    let region_of = |cc: Option<&str>, list: fn(&config::RegionConfig) -> &Vec<String>| {
        let cc = cc?;
        cfg.regions
            .iter()
            .find(|r| list(r).iter().any(|c| c == cc))
            .map(|r| r.name.clone())
    };
    let reference = |ip: IpAddr| -> Option<String> {
        if let Some((_, r)) = customs
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
        {
            return Some((*r).to_owned());
        }
        let rec: Option<geoip2::Country<'_>> = reader.lookup(ip).unwrap().decode().unwrap();
        let by_db = rec.and_then(|r| {
            region_of(r.country.iso_code.or(r.registered_country.iso_code), |r| {
                &r.countries
            })
            .or_else(|| region_of(r.continent.code, |r| &r.continents))
        });
        by_db.or_else(|| cfg.overwatch.geolocation.default_region.clone())
    };
    let mut rng = SplitMix(1);
    let mut mapped = 0;
    for i in 0..100_000u32 {
        let ip = random_addr(&mut rng, &nets, i);
        let got = t.lookup(ip).region.map(|r| t.regions[r as usize].clone());
        let want = reference(ip);
        assert_eq!(got, want, "{ip}");
        if t.lookup(ip).range.is_some() {
            mapped += 1;
        }
    }
    assert!(mapped > 40_000, "the sample hits the networks: {mapped}");
}

/// Half the addresses inside a database network, half anywhere; both families.
fn random_addr(rng: &mut SplitMix, nets: &[MmdbNet], i: u32) -> IpAddr {
    let v6 = i % 3 == 0;
    if rng.below(2) == 0 {
        let n = &nets[rng.below(nets.len() as u64) as usize];
        let r = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        match n.addr {
            IpAddr::V4(a) => {
                let host = (r as u32) & (u32::MAX.checked_shr(u32::from(n.prefix)).unwrap_or(0));
                IpAddr::V4((u32::from(a) | host).into())
            }
            IpAddr::V6(a) => {
                let host = r & u128::MAX.checked_shr(u32::from(n.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) | host).into())
            }
        }
    } else if v6 {
        let r = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        // Mostly 2000::/3, where the networks are.
        let r = if rng.below(4) == 0 {
            r
        } else {
            (r >> 3) | (1 << 125)
        };
        IpAddr::V6(r.into())
    } else {
        IpAddr::V4((rng.next_u64() as u32).into())
    }
}

/// ECS scope: every address inside the scope block of a random address
/// gets the same region (checked at the block's ends and at random inside).
#[test]
fn scope_block_has_one_region() {
    let cfg = cfg();
    let mut nets = generate_nets(9, 3000, 1000);
    nets.extend(small_nets());
    let (db, _) = load(&nets);
    let t = RangeTable::build(&cfg, Some(&db), &[]);
    let mut rng = SplitMix(5);
    let mut narrow = 0;
    for i in 0..20_000u32 {
        let ip = random_addr(&mut rng, &nets, i);
        let want = t.lookup(ip).region;
        let scope = t.scope(ip);
        let (bits, v) = match ip {
            IpAddr::V4(a) => (32u32, u128::from(u32::from(a))),
            IpAddr::V6(a) => (128, u128::from(a)),
        };
        assert!(u32::from(scope) <= bits);
        let host = low_mask(bits - u32::from(scope));
        let first = v & !host;
        let at = |x: u128| match ip {
            IpAddr::V4(_) => IpAddr::V4((x as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(x.into()),
        };
        let r = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        for probe in [first, first | host, first | (r & host)] {
            assert_eq!(
                t.lookup(at(probe)).region,
                want,
                "{ip}/{scope} at {}",
                at(probe)
            );
        }
        if scope > 0 && bits == 32 {
            // Widest: the parent block is not one range of the same region
            // (it holds another range, a gap, or another region).
            let parent = u32::from(scope) - 1;
            let pf = v & !low_mask(bits - parent);
            let other = pf | (!v & (1u128 << (bits - u32::from(scope))));
            let a = t.lookup(at(other));
            if t.lookup(ip).range.is_some() {
                let same = a.range.is_some_and(|x| {
                    x.region == t.lookup(ip).range.unwrap().region
                        && x.source == t.lookup(ip).range.unwrap().source
                        && x.len <= scope
                });
                assert!(!same, "{ip}/{scope} could be wider");
            }
        }
        if scope >= 24 {
            narrow += 1;
        }
    }
    assert!(narrow > 0);
}

#[test]
fn unchanged_table_keeps_its_generation() {
    let cfg = cfg();
    let (db, _) = load(&small_nets());
    let a = VersionedTable::next(None, RangeTable::build(&cfg, Some(&db), &[]), 10);
    let b = VersionedTable::next(Some(&a), RangeTable::build(&cfg, Some(&db), &[]), 20);
    assert_eq!(b.generation, 10);
    let rt = [GeoMappingRow {
        cidr: "9.9.9.0/24".into(),
        region: "eu".into(),
        comment: String::new(),
        created_at_unix_ms: 0,
    }];
    let c = VersionedTable::next(Some(&b), RangeTable::build(&cfg, Some(&db), &rt), 30);
    assert_eq!(c.generation, 30);
    let p = c.table.to_proto(c.generation);
    assert_eq!(p.default_region, Some(0));
    let r =
        p.v4.iter()
            .find(|r| r.start == vec![9, 9, 9, 0])
            .expect("runtime range");
    assert!(r.custom && r.prefix_len == 24 && r.region == 1);
}

#[test]
fn bad_database_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.mmdb");
    let e = GeoDb::load(&missing).unwrap_err().to_string();
    assert!(
        e.contains("missing.mmdb") && e.contains("No such file"),
        "{e}"
    );

    let bytes = write_mmdb(&small_nets(), "GeoLite2-Country");
    let truncated = dir.path().join("truncated.mmdb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = GeoDb::load(&truncated).unwrap_err().to_string();
    assert!(
        e.contains("truncated.mmdb") && e.contains("not a MaxMind DB"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"hello, this is not a database").unwrap();
    let e = GeoDb::load(&garbage).unwrap_err().to_string();
    assert!(e.contains("garbage.mmdb"), "{e}");

    // A corrupt search tree: records pointing past the data section.
    let mut corrupt = bytes.clone();
    for b in corrupt.iter_mut().take(64) {
        *b = 0xFF;
    }
    let path = dir.path().join("corrupt.mmdb");
    std::fs::write(&path, &corrupt).unwrap();
    let e = GeoDb::load(&path).unwrap_err().to_string();
    assert!(e.contains("corrupt.mmdb") && e.contains("corrupt"), "{e}");
}

#[test]
fn database_poll_interval_defaults_to_5s_and_is_configurable() {
    assert_eq!(
        cfg().overwatch.geolocation.database_poll_interval.get(),
        std::time::Duration::from_secs(5)
    );
    let text = CFG.replace(
        "    default_region: us\n",
        "    default_region: us\n    database_poll_interval: 250ms\n",
    );
    let c = config::parse(&text, Path::new("geo.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.overwatch.geolocation.database_poll_interval.get(),
        std::time::Duration::from_millis(250)
    );
    let zero = CFG.replace(
        "    default_region: us\n",
        "    default_region: us\n    database_poll_interval: 0s\n",
    );
    let err = config::parse(&zero, Path::new("geo.yaml"))
        .expect_err("a zero poll interval is refused")
        .to_string();
    assert!(
        err.contains("geo.yaml:") && err.contains("overwatch.geolocation.database_poll_interval"),
        "{err}"
    );
}
