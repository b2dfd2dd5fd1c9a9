//! Geolocation answers and EDNS Client Subnet (RFC 7871) through the real
//! [`answer`](super::answer) path; queries built and replies read with
//! hickory-proto.

use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet as HClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use opengslb_proto as proto;

use super::tests::{fixture, name, rrset};
use super::*;

fn v4(s: &str) -> Vec<u8> {
    s.parse::<Ipv4Addr>().unwrap().octets().to_vec()
}

fn range(start: &str, len: u32, region: u32, custom: bool) -> proto::GeoRange {
    let start = match start.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    proto::GeoRange {
        start,
        prefix_len: len,
        region,
        custom,
    }
}

fn cand(region: u32, why: proto::GeoFallback, addrs: &[&str]) -> proto::Candidate {
    proto::Candidate {
        rrset: Some(rrset(1, 30, addrs.iter().map(|a| v4(a)).collect())),
        weight: 1,
        region,
        geo_fallback: why.into(),
    }
}

/// Regions us(0) eu(1) asia(2); `geo.gslb.test.` answers 10.0.0.1 for
/// us, 10.0.0.2 for eu, eu's server for asia (region down), all three for
/// the rest.
fn geo_snapshot(ecs_enabled: bool, default_region: Option<u32>) -> proto::Snapshot {
    let mut s = fixture();
    s.geo = Some(proto::GeoTable {
        generation: 5,
        regions: vec!["us".into(), "eu".into(), "asia".into()],
        // 10.9.9.0/26 (eu) cut out of 10.0.0.0/8 (us), as CIDR blocks.
        v4: vec![
            range("10.0.0.0", 13, 0, false),
            range("10.8.0.0", 16, 0, false),
            range("10.9.0.0", 21, 0, false),
            range("10.9.8.0", 24, 0, false),
            range("10.9.9.0", 26, 1, false),
            range("20.0.0.0", 8, 1, false),
            range("30.0.0.0", 16, 2, true),
        ],
        v6: vec![range("2001:db8::", 32, 1, false)],
        default_region,
    });
    s.options = Some(proto::ServeOptions {
        edns_udp_size: 1232,
        ecs_enabled,
    });
    s.nodes.push(proto::Node {
        name: name("geo.gslb.test."),
        zone: 0,
        rrsets: vec![],
        plans: vec![proto::AnswerPlan {
            rtype: 1,
            policy: Policy::Geolocation.into(),
            max_answers: 0,
            candidates: vec![
                cand(
                    proto_any(),
                    proto::GeoFallback::None,
                    &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                ),
                cand(0, proto::GeoFallback::None, &["10.0.0.1"]),
                cand(1, proto::GeoFallback::None, &["10.0.0.2"]),
                cand(2, proto::GeoFallback::RegionDown, &["10.0.0.2"]),
            ],
            when_all_down: WhenAllDown::Servfail.into(),
            ecs_max_prefix_v4: 24,
            ecs_max_prefix_v6: 56,
        }],
        denial: vec![],
    });
    s
}

fn proto_any() -> u32 {
    crate::geo::ANY_REGION
}

fn query(n: &str, ecs: Option<(&str, u8)>) -> Vec<u8> {
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    if let Some((addr, source)) = ecs {
        e.options_mut()
            .insert(EdnsOption::Subnet(HClientSubnet::new(
                addr.parse().unwrap(),
                source,
                0,
            )));
    }
    m.set_edns(e);
    m.to_vec().unwrap()
}

/// A query whose OPT carries `option` (code, length, data) verbatim.
fn query_raw_option(n: &str, option: &[u8]) -> Vec<u8> {
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    let mut bytes = m.to_vec().unwrap();
    bytes[11] = 1; // ARCOUNT
    bytes.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&(option.len() as u16).to_be_bytes());
    bytes.extend_from_slice(option);
    bytes
}

fn ask_from(s: &Snapshot, q: &[u8], client: &str, st: &mut WorkerState) -> Message {
    st.cookies.client = Some(client.parse().unwrap());
    let mut out = vec![0u8; 4096];
    let n = answer(s, q, Transport::Udp, st, &mut out).expect("a reply");
    Message::from_vec(&out[..n]).unwrap()
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ecs_of(m: &Message) -> Option<(IpAddr, u8, u8)> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(c) => Some((c.addr(), c.source_prefix(), c.scope_prefix())),
        _ => None,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn source_address_picks_the_region_without_ecs() {
    let s = Snapshot::try_from(&geo_snapshot(true, None)).unwrap();
    let mut st = WorkerState::with_seed(1);
    let r = ask_from(&s, &query("geo.gslb.test.", None), "10.1.2.3", &mut st);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&r), vec![ip("10.0.0.1")]);
    assert_eq!(ecs_of(&r), None, "no ECS asked, none sent");
    let r = ask_from(&s, &query("geo.gslb.test.", None), "20.0.0.9", &mut st);
    assert_eq!(addrs(&r), vec![ip("10.0.0.2")]);
    // IPv4-mapped source (dual-stack socket) counts as IPv4.
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", None),
        "::ffff:20.0.0.9",
        &mut st,
    );
    assert_eq!(addrs(&r), vec![ip("10.0.0.2")]);
    // Unmapped, no default region: every server.
    let r = ask_from(&s, &query("geo.gslb.test.", None), "99.0.0.1", &mut st);
    assert_eq!(addrs(&r).len(), 3);
    // With a default region (eu): its set.
    let s = Snapshot::try_from(&geo_snapshot(true, Some(1))).unwrap();
    let r = ask_from(&s, &query("geo.gslb.test.", None), "99.0.0.1", &mut st);
    assert_eq!(addrs(&r), vec![ip("10.0.0.2")]);
}

#[test]
fn ecs_decides_and_scope_follows_the_range() {
    let s = Snapshot::try_from(&geo_snapshot(true, None)).unwrap();
    let mut st = WorkerState::with_seed(1);
    // The resolver is in us; its client in eu.
    let cases: [(&str, u8, &str, u8); 7] = [
        ("20.1.2.0", 24, "10.0.0.2", 8),
        ("30.0.5.0", 24, "10.0.0.2", 16), // asia: region down → eu's server
        ("10.1.0.0", 16, "10.0.0.1", 13),
        ("10.0.0.0", 12, "10.0.0.1", 12), // scope capped by the source prefix
        // The privacy cap: /32 used as /24, which lies in the /26 → eu.
        ("10.9.9.5", 32, "10.0.0.2", 24),
        ("10.9.9.0", 24, "10.0.0.2", 24),
        ("10.9.8.0", 24, "10.0.0.1", 24),
    ];
    for (addr, source, want, scope) in cases {
        let r = ask_from(
            &s,
            &query("geo.gslb.test.", Some((addr, source))),
            "10.0.0.77",
            &mut st,
        );
        assert_eq!(addrs(&r), vec![ip(want)], "{addr}/{source}");
        let (a, src, sc) = ecs_of(&r).expect("ECS echoed");
        assert_eq!(a, addr.parse::<IpAddr>().unwrap(), "address as sent");
        assert_eq!(src, source, "source as sent");
        assert_eq!(sc, scope, "{addr}/{source}");
    }
    // A gap: the widest block around 40.0.0.0 that holds no range is /3
    // (32.0.0.0-63.255.255.255); every server answers.
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("40.0.0.0", 24))),
        "10.0.0.77",
        &mut st,
    );
    assert_eq!(addrs(&r).len(), 3);
    assert_eq!(ecs_of(&r).unwrap().2, 3);
    // IPv6: 2001:db8::/32 is eu; cap 56 does not narrow a /32.
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("2001:db8:1:200::", 56))),
        "10.0.0.77",
        &mut st,
    );
    assert_eq!(addrs(&r), vec![ip("10.0.0.2")]);
    assert_eq!(ecs_of(&r).unwrap().2, 32);
}

#[test]
fn source_prefix_zero_gets_scope_zero_and_static_names_too() {
    let s = Snapshot::try_from(&geo_snapshot(true, None)).unwrap();
    let mut st = WorkerState::with_seed(1);
    // Source prefix 0: the resolver's own address decides (20/8 → eu).
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("0.0.0.0", 0))),
        "20.0.0.1",
        &mut st,
    );
    assert_eq!(addrs(&r), vec![ip("10.0.0.2")]);
    assert_eq!(ecs_of(&r).unwrap().1, 0);
    assert_eq!(ecs_of(&r).unwrap().2, 0);
    // A name whose answer ignores the client: scope 0.
    let r = ask_from(
        &s,
        &query("www.gslb.test.", Some(("20.1.2.0", 24))),
        "10.0.0.77",
        &mut st,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(!r.answers.is_empty());
    assert_eq!(ecs_of(&r), Some(("20.1.2.0".parse().unwrap(), 24, 0)));
    // NXDOMAIN too.
    let r = ask_from(
        &s,
        &query("nope.gslb.test.", Some(("20.1.2.0", 24))),
        "10.0.0.77",
        &mut st,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ecs_of(&r).unwrap().2, 0);
}

#[test]
fn ecs_disabled_uses_the_source_and_sends_no_option() {
    let s = Snapshot::try_from(&geo_snapshot(false, None)).unwrap();
    let mut st = WorkerState::with_seed(1);
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("20.1.2.0", 24))),
        "10.0.0.77",
        &mut st,
    );
    assert_eq!(addrs(&r), vec![ip("10.0.0.1")], "the source (us) decides");
    assert_eq!(ecs_of(&r), None);
}

#[test]
fn malformed_ecs_is_formerr() {
    let s = Snapshot::try_from(&geo_snapshot(true, None)).unwrap();
    let mut st = WorkerState::with_seed(1);
    for (what, data) in [
        ("unknown family", &[0u8, 3, 24, 0, 1, 2, 3][..]),
        ("address longer than the prefix", &[0, 1, 16, 0, 20, 1, 2]),
        ("bits set past the prefix", &[0, 1, 12, 0, 20, 0x1F]),
        ("prefix beyond the family", &[0, 1, 40, 0, 1, 2, 3, 4, 5]),
        ("short option", &[0, 1]),
    ] {
        let mut opt = vec![0, 8];
        opt.extend_from_slice(&(data.len() as u16).to_be_bytes());
        opt.extend_from_slice(data);
        let r = ask_from(
            &s,
            &query_raw_option("geo.gslb.test.", &opt),
            "10.0.0.77",
            &mut st,
        );
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr, "{what}");
        assert!(r.answers.is_empty(), "{what}");
    }
    // The same option well-formed answers.
    let r = ask_from(
        &s,
        &query_raw_option("geo.gslb.test.", &[0, 8, 0, 6, 0, 1, 12, 0, 20, 0x10]),
        "10.0.0.77",
        &mut st,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ecs_of(&r).unwrap().2, 8, "20.16.0.0/12 lies in 20.0.0.0/8");
}

#[test]
fn geo_counters_count_regions_custom_hits_and_fallbacks() {
    let s = Snapshot::try_from(&geo_snapshot(true, None)).unwrap();
    let mut st = WorkerState::with_seed(1);
    for (addr, n) in [("10.1.0.0", 3), ("30.0.1.0", 2), ("99.0.0.0", 1)] {
        for _ in 0..n {
            ask_from(
                &s,
                &query("geo.gslb.test.", Some((addr, 24))),
                "10.0.0.77",
                &mut st,
            );
        }
    }
    let c = &s.geo_counters()[0];
    assert_eq!(c.domain(), "geo.gslb.test");
    let d: Vec<(&str, u64)> = c.decisions().collect();
    assert_eq!(d, vec![("us", 3), ("eu", 0), ("asia", 2), ("none", 1)]);
    let h: Vec<(&str, u64)> = c.custom_hits().collect();
    assert_eq!(h, vec![("us", 0), ("eu", 0), ("asia", 2)]);
    let f: Vec<(&str, u64)> = c.fallbacks().collect();
    assert_eq!(
        f,
        vec![
            ("region_down", 2),
            ("fallback_exhausted", 0),
            ("region_not_served", 0),
            ("unmapped", 1)
        ]
    );
    // Counters survive a new snapshot of the same names and regions.
    let mut next = Snapshot::try_from(&geo_snapshot(true, None)).unwrap();
    next.adopt_counters(&s);
    assert_eq!(next.geo_counters()[0].decisions().next(), Some(("us", 3)));
}

/// ECS scope property: for random client subnets over a random table,
/// every address inside the returned scope gets the same answer. Regions
/// eu (1) and asia (2) answer alike (asia falls back to eu's server), and
/// with a default region gaps answer like it: the scope spans them.
#[test]
fn every_address_in_the_scope_gets_the_same_answer() {
    for (seed, default_region) in [(77, None), (78, Some(1)), (79, Some(2)), (80, Some(0))] {
        scope_property(seed, default_region);
    }
}

/// Random disjoint ranges over 10.0.0.0/8 (regions 0-3; 3 is served by
/// nobody, so it answers like unplaced clients).
fn random_ranges(rng: &mut Rng, regions: u64) -> Vec<proto::GeoRange> {
    let mut ranges = Vec::new();
    let mut cursor: u32 = 10 << 24;
    while cursor < 11 << 24 {
        let len = 12 + (rng.next_u64() % 17) as u32; // /12-/28
        let size = 1u32 << (32 - len);
        cursor = cursor.div_ceil(size) * size;
        if cursor >= 11 << 24 {
            break;
        }
        let region = (rng.next_u64() % regions) as u32;
        ranges.push(proto::GeoRange {
            start: cursor.to_be_bytes().to_vec(),
            prefix_len: len,
            region,
            custom: false,
        });
        cursor += size * (1 + (rng.next_u64() % 2) as u32);
    }
    ranges
}

fn four_regions(p: &mut proto::Snapshot) {
    p.geo.as_mut().unwrap().regions = vec!["us".into(), "eu".into(), "asia".into(), "lab".into()];
}

fn scope_property(seed: u64, default_region: Option<u32>) {
    let mut rng = Rng::new(seed);
    let mut p = geo_snapshot(true, default_region);
    four_regions(&mut p);
    p.geo.as_mut().unwrap().v4 = random_ranges(&mut rng, 4);
    p.nodes.last_mut().unwrap().plans[0].ecs_max_prefix_v4 = 32;
    let s = Snapshot::try_from(&p).unwrap();
    let mut st = WorkerState::with_seed(3);
    let mut wider = 0;
    for _ in 0..2000 {
        let a = (10u32 << 24) | (rng.next_u64() as u32 & 0x00FF_FFFF);
        let source = [32u8, 24, 20, 16][(rng.next_u64() % 4) as usize];
        let a = a & u32::MAX.checked_shl(32 - u32::from(source)).unwrap_or(0);
        let a = Ipv4Addr::from(a).to_string();
        let r = ask_from(
            &s,
            &query("geo.gslb.test.", Some((&a, source))),
            "1.1.1.1",
            &mut st,
        );
        let want = addrs(&r);
        let scope = ecs_of(&r).unwrap().2;
        assert!(scope <= source);
        // What the range holding the address alone would give.
        let plain = s
            .geo()
            .unwrap()
            .lookup(a.parse().unwrap())
            .scope
            .min(source);
        assert!(scope <= plain, "never narrower than the range");
        if scope < plain {
            wider += 1;
        }
        let host = u32::MAX.checked_shr(u32::from(scope)).unwrap_or(0);
        let base = u32::from(a.parse::<Ipv4Addr>().unwrap()) & !host;
        let mut probes = vec![base, base | host];
        probes.extend((0..6).map(|_| base | (rng.next_u64() as u32 & host)));
        for probe in probes {
            // Asked with the same source prefix (the address is used only
            // that far: the scope never exceeds it).
            let probe = probe & u32::MAX.checked_shl(32 - u32::from(source)).unwrap_or(0);
            let pa = Ipv4Addr::from(probe).to_string();
            let r = ask_from(
                &s,
                &query("geo.gslb.test.", Some((&pa, source))),
                "1.1.1.1",
                &mut st,
            );
            assert_eq!(
                addrs(&r),
                want,
                "default {default_region:?}: {a}/{source} scope /{scope}: {pa} differs"
            );
        }
    }
    assert!(
        wider > 20,
        "scopes widened over equal answers only {wider} times"
    );
}

/// Neighbouring ranges of regions with the same answer share one scope;
/// so do a region the name has no server in and the gaps around it; the
/// widening looks at a bounded number of ranges.
#[test]
fn scopes_widen_over_neighbours_with_the_same_answer() {
    let mut p = geo_snapshot(true, None);
    four_regions(&mut p);
    let mut v4 = vec![
        range("10.0.0.0", 8, 0, false),
        // eu and asia (down, falls back to eu's server): one answer.
        range("20.0.0.0", 9, 1, false),
        range("20.128.0.0", 9, 2, false),
        // lab: no server of this name, so every server, as in the gaps.
        range("40.0.0.0", 8, 3, false),
    ];
    // 200 /24s alternating eu and asia.
    for i in 0..200u32 {
        let start = Ipv4Addr::from((50u32 << 24) | (i << 8)).to_string();
        v4.push(range(&start, 24, 1 + i % 2, false));
    }
    p.geo.as_mut().unwrap().v4 = v4;
    let s = Snapshot::try_from(&p).unwrap();
    let mut st = WorkerState::with_seed(1);
    let ask = |st: &mut WorkerState, a: &str| {
        let r = ask_from(&s, &query("geo.gslb.test.", Some((a, 24))), "10.0.0.77", st);
        (addrs(&r), ecs_of(&r).unwrap().2)
    };
    // 20.0.0.0/9 + 20.128.0.0/9: /8 (each range alone: /9).
    assert_eq!(ask(&mut st, "20.1.2.0"), (vec![ip("10.0.0.2")], 8));
    assert_eq!(ask(&mut st, "20.200.2.0"), (vec![ip("10.0.0.2")], 8));
    assert_eq!(
        s.geo().unwrap().lookup("20.1.2.0".parse().unwrap()).scope,
        9
    );
    // 40.0.0.0/8 (lab) in the gap 32.0.0.0/4: /4 (the range alone: /8;
    // /3 would reach the 50.0.0.0/24s).
    let (a, scope) = ask(&mut st, "40.1.2.0");
    assert_eq!((a.len(), scope), (3, 4));
    let (a, scope) = ask(&mut st, "33.0.0.0");
    assert_eq!((a.len(), scope), (3, 4), "the gap takes lab in too");
    // 50.0.0.0/24..50.0.199.0/24: /17 would hold them all, but the
    // widening stops after WIDEN_BUDGET ranges: /18 (64 /24s).
    assert_eq!(crate::geo::WIDEN_BUDGET, 64);
    assert_eq!(ask(&mut st, "50.0.0.0"), (vec![ip("10.0.0.2")], 18));
    // us stays alone: its neighbours answer otherwise.
    assert_eq!(ask(&mut st, "10.1.0.0"), (vec![ip("10.0.0.1")], 8));
}

/// `region_selection: weighted`: a region's servers are single-record
/// candidates drawn by weight; with DNSSEC each answer is one of them with
/// its own signature.
fn weighted_geo_snapshot(max_answers: u32, signed: bool) -> proto::Snapshot {
    let mut p = geo_snapshot(true, None);
    let sig = |tag: u8| {
        // A placeholder RRSIG whose key tag names the record it covers.
        let mut r = vec![0u8; 30];
        r[17] = tag;
        r
    };
    let one = |region: u32, last: u8, weight: u32| {
        let mut set = rrset(1, 30, vec![vec![10, 0, 0, last]]);
        if signed {
            set.rrsig = vec![sig(last)];
        }
        proto::Candidate {
            rrset: Some(set),
            weight,
            region,
            geo_fallback: 0,
        }
    };
    let plan = &mut p.nodes.last_mut().unwrap().plans[0];
    plan.max_answers = max_answers;
    plan.candidates = vec![
        one(proto_any(), 1, 1),
        one(proto_any(), 2, 1),
        // eu: weights 1:2:7.
        one(1, 5, 1),
        one(1, 6, 2),
        one(1, 7, 7),
        // us: one server.
        one(0, 1, 3),
    ];
    p
}

#[test]
fn weighted_region_selection_follows_weights() {
    let s = Snapshot::try_from(&weighted_geo_snapshot(1, false)).unwrap();
    let mut st = WorkerState::with_seed(11);
    let n = 20_000;
    let mut counts = [0u32; 3];
    for _ in 0..n {
        let r = ask_from(
            &s,
            &query("geo.gslb.test.", Some(("20.1.2.0", 24))),
            "1.1.1.1",
            &mut st,
        );
        let a = addrs(&r);
        assert_eq!(a.len(), 1);
        let last = a[0].octets()[3];
        assert!((5..=7).contains(&last), "eu's servers only: {a:?}");
        counts[usize::from(last - 5)] += 1;
    }
    // Chi-square against 1:2:7 (2 degrees of freedom; 13.8 is p = 0.001).
    let expect = [0.1, 0.2, 0.7].map(|p| p * f64::from(n));
    let chi2: f64 = counts
        .iter()
        .zip(expect)
        .map(|(&c, e)| (f64::from(c) - e).powi(2) / e)
        .sum();
    assert!(chi2 < 13.8, "counts {counts:?} chi2 {chi2}");
    // The region with one server, and unplaced clients (the any group).
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("10.1.0.0", 16))),
        "1.1.1.1",
        &mut st,
    );
    assert_eq!(addrs(&r), vec![ip("10.0.0.1")]);
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("99.0.0.0", 8))),
        "1.1.1.1",
        &mut st,
    );
    assert_eq!(addrs(&r).len(), 1);

    // max_answers 2: two distinct servers of the region, the heavy one
    // most often among them.
    let s = Snapshot::try_from(&weighted_geo_snapshot(2, false)).unwrap();
    let mut with_seven = 0;
    for _ in 0..2000 {
        let r = ask_from(
            &s,
            &query("geo.gslb.test.", Some(("20.1.2.0", 24))),
            "1.1.1.1",
            &mut st,
        );
        let a = addrs(&r);
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        assert!(a.iter().all(|x| (5..=7).contains(&x.octets()[3])));
        with_seven += usize::from(a.contains(&ip("10.0.0.7")));
    }
    assert!(with_seven > 1800, "{with_seven}");
}

#[test]
fn weighted_region_selection_signs_each_served_record() {
    let s = Snapshot::try_from(&weighted_geo_snapshot(2, true)).unwrap();
    let mut st = WorkerState::with_seed(5);
    let mut q = Message::from_vec(&query("geo.gslb.test.", Some(("20.1.2.0", 24)))).unwrap();
    q.edns.as_mut().unwrap().set_dnssec_ok(true);
    let q = q.to_vec().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let r = ask_from(&s, &q, "1.1.1.1", &mut st);
        let a = addrs(&r);
        // One record (each candidate is signed alone), with its RRSIG.
        assert_eq!(a.len(), 1, "{r}");
        let sigs: Vec<u16> = r
            .answers
            .iter()
            .filter(|x| x.record_type() == RecordType::RRSIG)
            .map(|x| {
                // RRSIG RDATA: the key tag is octets 16-17.
                let b = hickory_proto::serialize::binary::BinEncodable::to_bytes(&x.data).unwrap();
                u16::from_be_bytes([b[16], b[17]])
            })
            .collect();
        let last = a[0].octets()[3];
        assert_eq!(
            sigs,
            vec![u16::from(last)],
            "the RRSIG of the served record"
        );
        seen.insert(last);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![5, 6, 7]);
    // Without DO: max_answers (2) records, no RRSIG.
    let r = ask_from(
        &s,
        &query("geo.gslb.test.", Some(("20.1.2.0", 24))),
        "1.1.1.1",
        &mut st,
    );
    assert_eq!(addrs(&r).len(), 2);
    assert_eq!(r.answers.len(), 2);
}

/// Candidates of one region must be contiguous.
#[test]
fn scattered_region_candidates_are_refused() {
    let mut p = weighted_geo_snapshot(1, false);
    let plan = &mut p.nodes.last_mut().unwrap().plans[0];
    let us = plan.candidates.pop().unwrap();
    plan.candidates.insert(3, us);
    assert!(matches!(
        Snapshot::try_from(&p),
        Err(crate::snapshot::InvalidSnapshot::BadGeo { .. })
    ));
}

/// A snapshot whose geo table keeps its generation shares the previous
/// snapshot's compiled table (no second decode); a new generation, or a
/// table without one, is compiled afresh and answers by its own ranges.
#[test]
fn unchanged_geo_generation_reuses_the_compiled_table() {
    let p = geo_snapshot(true, None);
    let first = Snapshot::try_from(&p).unwrap();
    let table = |s: &Snapshot| s.geo().unwrap() as *const crate::geo::GeoTable;

    // Same table generation, other records: the very same table.
    let mut next = p.clone();
    next.generation += 1;
    let second = Snapshot::compile(&next, Some(&first)).unwrap();
    assert_eq!(table(&second), table(&first));
    let mut st = WorkerState::with_seed(1);
    let r = ask_from(&second, &query("geo.gslb.test.", None), "20.0.0.9", &mut st);
    assert_eq!(addrs(&r), vec![ip("10.0.0.2")], "eu still answers eu");

    // New table generation: 20.0.0.0/8 moves to us; compiled again.
    let mut moved = next.clone();
    moved.generation += 1;
    let g = moved.geo.as_mut().unwrap();
    g.generation += 1;
    g.v4[5].region = 0;
    let third = Snapshot::compile(&moved, Some(&second)).unwrap();
    assert_ne!(table(&third), table(&second));
    let r = ask_from(&third, &query("geo.gslb.test.", None), "20.0.0.9", &mut st);
    assert_eq!(addrs(&r), vec![ip("10.0.0.1")], "the new table decides");

    // Generation 0 (unversioned) is never taken from the previous snapshot.
    let mut zero = p.clone();
    zero.geo.as_mut().unwrap().generation = 0;
    let a = Snapshot::try_from(&zero).unwrap();
    let b = Snapshot::compile(&zero, Some(&a)).unwrap();
    assert_ne!(table(&a), table(&b));

    // No table now: the previous one is not borrowed, so the regional
    // candidates are rejected exactly as without a previous snapshot.
    let mut gone = next.clone();
    gone.geo = None;
    assert_eq!(
        Snapshot::compile(&gone, Some(&first))
            .unwrap_err()
            .to_string(),
        Snapshot::try_from(&gone).unwrap_err().to_string()
    );
}

/// Latency: one candidate per rotation of the tie group, each followed by
/// the fill; answered in turn, each whole (with DO: with its signature).
#[test]
fn latency_answers_each_rotation_whole_in_turn() {
    let mut p = fixture();
    let set = |lasts: &[u8], tag: u8| {
        let mut r = rrset(1, 30, lasts.iter().map(|&l| vec![10, 0, 0, l]).collect());
        let mut sig = vec![0u8; 30];
        sig[17] = tag;
        r.rrsig = vec![sig];
        proto::Candidate {
            rrset: Some(r),
            weight: 1,
            region: 0,
            geo_fallback: 0,
        }
    };
    p.nodes.push(proto::Node {
        name: name("lat.gslb.test."),
        zone: 0,
        rrsets: vec![],
        plans: vec![proto::AnswerPlan {
            rtype: 1,
            policy: Policy::Latency.into(),
            max_answers: 3,
            candidates: vec![set(&[1, 2, 3], 1), set(&[2, 1, 3], 2)],
            when_all_down: WhenAllDown::Servfail.into(),
            ecs_max_prefix_v4: 24,
            ecs_max_prefix_v6: 56,
        }],
        denial: vec![],
    });
    let s = Snapshot::try_from(&p).unwrap();
    let mut st = WorkerState::with_seed(1);
    let order = |m: &Message| -> Vec<u8> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.octets()[3]),
                _ => None,
            })
            .collect()
    };
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let r = ask_from(&s, &query("lat.gslb.test.", None), "1.1.1.1", &mut st);
        let o = order(&r);
        assert!(o == [1, 2, 3] || o == [2, 1, 3], "{o:?}");
        assert_eq!(r.answers.len(), 3, "no RRSIG without DO");
        firsts.push(o[0]);
    }
    assert!(firsts.contains(&1) && firsts.contains(&2), "{firsts:?}");
    assert!(
        firsts.windows(2).all(|w| w[0] != w[1]),
        "in turn: {firsts:?}"
    );
    let mut q = Message::from_vec(&query("lat.gslb.test.", None)).unwrap();
    q.edns.as_mut().unwrap().set_dnssec_ok(true);
    let q = q.to_vec().unwrap();
    for _ in 0..2 {
        let r = ask_from(&s, &q, "1.1.1.1", &mut st);
        let o = order(&r);
        let tag: Vec<u16> = r
            .answers
            .iter()
            .filter(|x| x.record_type() == RecordType::RRSIG)
            .map(|x| {
                let b = hickory_proto::serialize::binary::BinEncodable::to_bytes(&x.data).unwrap();
                u16::from_be_bytes([b[16], b[17]])
            })
            .collect();
        assert_eq!(o.len(), 3, "the whole signed set");
        assert_eq!(tag, vec![u16::from(o[0])], "that rotation's own RRSIG");
    }
}
