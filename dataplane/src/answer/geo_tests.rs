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
/// every address inside the returned scope gets the same answer.
#[test]
fn every_address_in_the_scope_gets_the_same_answer() {
    let mut rng = Rng::new(77);
    // Random disjoint ranges over 10.0.0.0/8 with random regions.
    let mut ranges = Vec::new();
    let mut cursor: u32 = 10 << 24;
    while cursor < 11 << 24 {
        let len = 12 + (rng.next_u64() % 17) as u32; // /12-/28
        let size = 1u32 << (32 - len);
        cursor = cursor.div_ceil(size) * size;
        if cursor >= 11 << 24 {
            break;
        }
        let region = (rng.next_u64() % 3) as u32;
        ranges.push(proto::GeoRange {
            start: cursor.to_be_bytes().to_vec(),
            prefix_len: len,
            region,
            custom: false,
        });
        cursor += size * (1 + (rng.next_u64() % 2) as u32);
    }
    let mut p = geo_snapshot(true, None);
    p.geo.as_mut().unwrap().v4 = ranges;
    p.nodes.last_mut().unwrap().plans[0].ecs_max_prefix_v4 = 32;
    let s = Snapshot::try_from(&p).unwrap();
    let mut st = WorkerState::with_seed(3);
    for _ in 0..2000 {
        let a = (10u32 << 24) | (rng.next_u64() as u32 & 0x00FF_FFFF);
        let a = Ipv4Addr::from(a).to_string();
        let r = ask_from(
            &s,
            &query("geo.gslb.test.", Some((&a, 32))),
            "1.1.1.1",
            &mut st,
        );
        let want = addrs(&r);
        let scope = ecs_of(&r).unwrap().2;
        let host = u32::MAX.checked_shr(u32::from(scope)).unwrap_or(0);
        let base = u32::from(a.parse::<Ipv4Addr>().unwrap()) & !host;
        for probe in [base, base | host, base | (rng.next_u64() as u32 & host)] {
            let pa = Ipv4Addr::from(probe).to_string();
            let r = ask_from(
                &s,
                &query("geo.gslb.test.", Some((&pa, 32))),
                "1.1.1.1",
                &mut st,
            );
            assert_eq!(addrs(&r), want, "{a} scope /{scope}: {pa} differs");
        }
    }
}
