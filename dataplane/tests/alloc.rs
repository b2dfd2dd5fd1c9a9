//! Zero-allocation proof for the answer path.
//!
//! A counting `#[global_allocator]` wraps `System` and counts, per thread,
//! every `alloc`, `alloc_zeroed`, `realloc` and `dealloc`. Each test prepares
//! its queries, the snapshot, the worker state and the output buffer outside
//! the counted region, warms up once, then answers at least [`ROUNDS`]
//! queries of one response kind through the real
//! `opengslb_dataplane::answer::answer` — loading the snapshot through the
//! same `arc_swap::Cache` the UDP workers use, once per query — and asserts
//! the thread's count did not move. Counting per thread keeps the test
//! harness (and the other tests running beside it) out of the numbers; each
//! kind is its own test, so a failure names the kind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv6Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use opengslb_dataplane::{
    answer::{answer, Transport, WorkerState},
    cookie::{CookieConfig, CookieState},
    handle::SnapshotHandle,
    snapshot::Snapshot,
    wire,
};
use opengslb_proto as proto;

// === counting allocator ===

#[path = "common/counting.rs"]
mod counting;
use counting::calls;

// === constants ===

/// Queries answered per kind inside the counted region.
const ROUNDS: usize = 10_000;

// === fixture ===

/// Wire-format name from dotted text.
fn wire_name(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in s.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn rrset(rtype: u32, ttl: u32, rdata: Vec<Vec<u8>>) -> proto::RRset {
    proto::RRset {
        rtype,
        ttl,
        rdata,
        rrsig: vec![],
    }
}

fn round_robin(rtype: u32, ttl: u32, rdata: Vec<Vec<u8>>) -> proto::AnswerPlan {
    proto::AnswerPlan {
        rtype,
        policy: proto::Policy::RoundRobin as i32,
        max_answers: 0,
        candidates: vec![proto::Candidate {
            rrset: Some(rrset(rtype, ttl, rdata)),
            weight: 1,
            region: 0,
            geo_fallback: 0,
        }],
        when_all_down: proto::WhenAllDown::Servfail as i32,
        ecs_max_prefix_v4: 0,
        ecs_max_prefix_v6: 0,
    }
}

/// One single-record candidate per address, for the weighted and failover
/// policies.
fn per_candidate(policy: proto::Policy, lasts: &[u8]) -> proto::AnswerPlan {
    proto::AnswerPlan {
        rtype: 1,
        policy: policy as i32,
        max_answers: 1,
        candidates: lasts
            .iter()
            .map(|&l| proto::Candidate {
                rrset: Some(rrset(1, 30, vec![v4(l)])),
                weight: u32::from(l),
                region: 0,
                geo_fallback: 0,
            })
            .collect(),
        when_all_down: proto::WhenAllDown::Servfail as i32,
        ecs_max_prefix_v4: 0,
        ecs_max_prefix_v6: 0,
    }
}

fn node(n: &str, rrsets: Vec<proto::RRset>, plans: Vec<proto::AnswerPlan>) -> proto::Node {
    proto::Node {
        name: wire_name(n),
        zone: 0,
        rrsets,
        plans,
        ..Default::default()
    }
}

fn v4(last: u8) -> Vec<u8> {
    vec![192, 0, 2, last]
}

fn v6(last: u16) -> Vec<u8> {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
        .octets()
        .to_vec()
}

/// The benchmark zone `gslb.test` plus a CNAME, an empty non-terminal and a
/// name whose AAAA RRset does not fit 512 octets.
fn fixture() -> proto::Snapshot {
    let mut soa = wire_name("ns1.gslb.test.");
    soa.extend(wire_name("hostmaster.gslb.test."));
    for v in [2024010101_u32, 3600, 600, 604800, 300] {
        soa.extend(v.to_be_bytes());
    }
    proto::Snapshot {
        generation: 1,
        origin: "alloc-test".into(),
        zones: vec![proto::Zone {
            apex: wire_name("gslb.test."),
            soa: Some(rrset(6, 300, vec![soa])),
            ns: Some(rrset(
                2,
                300,
                vec![wire_name("ns1.gslb.test."), wire_name("ns2.gslb.test.")],
            )),
            dnskey: None,
            negative_ttl: 300,
            nsec3: None,
        }],
        nodes: vec![
            node(
                "www.gslb.test.",
                vec![],
                vec![
                    round_robin(1, 300, (1..=4).map(v4).collect()),
                    round_robin(28, 300, (1..=2).map(v6).collect()),
                ],
            ),
            node(
                "api.gslb.test.",
                vec![],
                vec![round_robin(1, 300, vec![v4(10)])],
            ),
            node(
                "ns1.gslb.test.",
                vec![rrset(1, 300, vec![vec![127, 0, 0, 11]])],
                vec![],
            ),
            node(
                "ns2.gslb.test.",
                vec![rrset(1, 300, vec![vec![127, 0, 0, 12]])],
                vec![],
            ),
            node(
                "alias.gslb.test.",
                vec![rrset(5, 300, vec![wire_name("www.gslb.test.")])],
                vec![],
            ),
            node("b.gslb.test.", vec![], vec![]),
            node("a.b.gslb.test.", vec![rrset(1, 60, vec![v4(30)])], vec![]),
            node(
                "weighted.gslb.test.",
                vec![],
                vec![per_candidate(proto::Policy::Weighted, &[41, 42, 43])],
            ),
            node(
                "failover.gslb.test.",
                vec![],
                vec![per_candidate(proto::Policy::Failover, &[51, 52])],
            ),
            node(
                "big.gslb.test.",
                vec![],
                vec![round_robin(28, 300, (1..=40).map(v6).collect())],
            ),
            node("geo.gslb.test.", vec![], vec![geo_plan()]),
            node("wgeo.gslb.test.", vec![], vec![weighted_geo_plan()]),
            node("lat.gslb.test.", vec![], vec![latency_plan()]),
        ],
        geo: Some(geo_table()),
        options: Some(proto::ServeOptions {
            edns_udp_size: 1232,
            ecs_enabled: true,
        }),
    }
}

/// Regions a(0) and b(1): 192.0.2.0/24 is a, 198.51.100.0/22 is b, plus
/// 1,000 other ranges so the binary search has depth; 2001:db8::/32 is b.
fn geo_table() -> proto::GeoTable {
    let range = |start: Vec<u8>, prefix_len, region| proto::GeoRange {
        start,
        prefix_len,
        region,
        custom: false,
    };
    let mut v4: Vec<proto::GeoRange> = (0..1000u32)
        .map(|i| range(((20 << 24) | (i << 8)).to_be_bytes().to_vec(), 24, i % 2))
        .collect();
    v4.push(range(vec![192, 0, 2, 0], 24, 0));
    v4.push(range(vec![198, 51, 100, 0], 22, 1));
    proto::GeoTable {
        generation: 1,
        regions: vec!["a".into(), "b".into()],
        v4,
        v6: vec![range(
            v6(0)[..4].iter().copied().chain([0; 12]).collect(),
            32,
            1,
        )],
        default_region: None,
    }
}

/// Geolocation: a → .61, b → .62 .63, anyone else → all three.
fn geo_plan() -> proto::AnswerPlan {
    let cand = |region, lasts: &[u8]| proto::Candidate {
        rrset: Some(rrset(1, 30, lasts.iter().map(|&l| v4(l)).collect())),
        weight: 1,
        region,
        geo_fallback: 0,
    };
    proto::AnswerPlan {
        rtype: 1,
        policy: proto::Policy::Geolocation as i32,
        max_answers: 0,
        candidates: vec![
            cand(u32::MAX, &[61, 62, 63]),
            cand(0, &[61]),
            cand(1, &[62, 63]),
        ],
        when_all_down: proto::WhenAllDown::Servfail as i32,
        ecs_max_prefix_v4: 24,
        ecs_max_prefix_v6: 56,
    }
}

/// Geolocation, `region_selection: weighted`: a and b draw among the same
/// two weighted servers (one answer class, so the ECS scope widens over the
/// 1,000 alternating ranges, up to the widening budget); anyone else → .61.
fn weighted_geo_plan() -> proto::AnswerPlan {
    let one = |region, last: u8, weight| proto::Candidate {
        rrset: Some(rrset(1, 30, vec![v4(last)])),
        weight,
        region,
        geo_fallback: 0,
    };
    proto::AnswerPlan {
        rtype: 1,
        policy: proto::Policy::Geolocation as i32,
        max_answers: 2,
        candidates: vec![
            one(u32::MAX, 61, 1),
            one(0, 71, 1),
            one(0, 72, 3),
            one(1, 71, 1),
            one(1, 72, 3),
        ],
        when_all_down: proto::WhenAllDown::Servfail as i32,
        ecs_max_prefix_v4: 24,
        ecs_max_prefix_v6: 56,
    }
}

/// Latency: a tie group of two rotated, then the next server (one
/// candidate per rotation).
fn latency_plan() -> proto::AnswerPlan {
    let set = |lasts: &[u8]| proto::Candidate {
        rrset: Some(rrset(1, 30, lasts.iter().map(|&l| v4(l)).collect())),
        weight: 1,
        region: 0,
        geo_fallback: 0,
    };
    proto::AnswerPlan {
        rtype: 1,
        policy: proto::Policy::Latency as i32,
        max_answers: 3,
        candidates: vec![set(&[81, 82, 83]), set(&[82, 81, 83])],
        when_all_down: proto::WhenAllDown::Servfail as i32,
        ecs_max_prefix_v4: 0,
        ecs_max_prefix_v6: 0,
    }
}

// === queries ===

fn query(n: &str, rt: RecordType) -> Message {
    let mut m = Message::new(0xBEEF, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(n).unwrap(), rt));
    m
}

fn with_edns(mut m: Message, payload: u16, dnssec_ok: bool) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(payload);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

/// Appends an OPT record (payload 1232) carrying an EDNS Client Subnet
/// option for 198.51.100.0/24 (RFC 7871), written by hand.
fn with_ecs(m: Message) -> Vec<u8> {
    with_ecs_at(m, [198, 51, 100])
}

/// As [`with_ecs`], for the /24 `net`.
fn with_ecs_at(m: Message, net: [u8; 3]) -> Vec<u8> {
    let mut b = bytes(&m);
    b[11] = 1; // ARCOUNT
    let ecs = [0, 1, 24, 0, net[0], net[1], net[2]]; // family, source, scope, address
    b.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]);
    b.extend_from_slice(&(4 + ecs.len() as u16).to_be_bytes());
    b.extend_from_slice(&8u16.to_be_bytes());
    b.extend_from_slice(&(ecs.len() as u16).to_be_bytes());
    b.extend_from_slice(&ecs);
    b
}

/// Appends an OPT record (payload 1232) carrying a COOKIE option: the
/// client cookie, and `server` (empty or a server cookie) after it.
fn with_cookie(m: Message, server: &[u8]) -> Vec<u8> {
    let mut b = bytes(&m);
    b[11] = 1; // ARCOUNT
    let len = 8 + server.len() as u16;
    b.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]);
    b.extend_from_slice(&(4 + len).to_be_bytes());
    b.extend_from_slice(&10u16.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&CLIENT_COOKIE);
    b.extend_from_slice(server);
    b
}

const CLIENT_COOKIE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const COOKIE_CONFIG: CookieConfig = CookieConfig {
    master: [9; 16],
    rotate_secs: 86_400,
};
const NOW: u64 = 1_700_000_000;

// === harness ===

/// What a reply of this kind must look like (checked outside the counted
/// region, so the test proves it measured the kind it names).
struct Expect {
    rcode: ResponseCode,
    answers: usize,
    tc: bool,
    edns: bool,
}

const fn expect(rcode: ResponseCode, answers: usize, tc: bool, edns: bool) -> Expect {
    Expect {
        rcode,
        answers,
        tc,
        edns,
    }
}

/// Answers `query` [`ROUNDS`] times over `transport` and asserts that no
/// allocator call happened on this thread meanwhile.
fn assert_no_alloc(kind: &str, query: &[u8], transport: Transport, want: Expect) {
    let handle = SnapshotHandle::new(
        Snapshot::try_from(&with_nsec3_zone(fixture())).unwrap(),
        false,
    );
    let mut cache = handle.cache();
    let mut state = WorkerState::new();
    // Cookies on, as in production.
    state.cookies = CookieState::new(COOKIE_CONFIG);
    state.cookies.set(Some([192, 0, 2, 1].into()), NOW);
    let mut out = vec![0u8; 65_535].into_boxed_slice();

    // Warm-up: arc_swap registers this thread once; the reply is checked.
    let n = answer(cache.load(), query, transport, &mut state, &mut out).expect("a reply");
    let reply = Message::from_vec(&out[..n]).unwrap();
    assert_eq!(reply.metadata.response_code, want.rcode, "{kind}: {reply}");
    assert_eq!(reply.answers.len(), want.answers, "{kind}: {reply}");
    assert_eq!(reply.metadata.truncation, want.tc, "{kind}: {reply}");
    assert_eq!(reply.edns.is_some(), want.edns, "{kind}: {reply}");

    let before = calls();
    let mut total = 0usize;
    for _ in 0..ROUNDS {
        let snapshot = cache.load();
        // The UDP worker's batch hint (a batch of two of this query).
        snapshot.prefetch([query, query]);
        total += answer(snapshot, query, transport, &mut state, &mut out).unwrap_or(0);
    }
    let after = calls();
    assert!(total >= ROUNDS * 12, "{kind}: every query got a reply");
    assert_eq!(
        after - before,
        0,
        "{kind}: {} allocator calls in {ROUNDS} answers",
        after - before
    );
}

// === tests ===

#[test]
fn the_counter_counts() {
    let before = calls();
    let v = std::hint::black_box(vec![1u8; 100]);
    drop(v);
    assert_eq!(calls() - before, 2, "one alloc and one dealloc");
}

#[test]
fn a() {
    let q = bytes(&query("www.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 4, false, false);
    assert_no_alloc("A", &q, Transport::Udp, want);
}

#[test]
fn a_mixed_case() {
    let q = bytes(&query("WwW.gSlB.TEST.", RecordType::A));
    let want = expect(ResponseCode::NoError, 4, false, false);
    assert_no_alloc("A mixed case", &q, Transport::Udp, want);
}

#[test]
fn a_edns() {
    let q = bytes(&with_edns(
        query("www.gslb.test.", RecordType::A),
        1232,
        false,
    ));
    let want = expect(ResponseCode::NoError, 4, false, true);
    assert_no_alloc("A + EDNS", &q, Transport::Udp, want);
}

#[test]
fn aaaa() {
    let q = bytes(&query("www.gslb.test.", RecordType::AAAA));
    let want = expect(ResponseCode::NoError, 2, false, false);
    assert_no_alloc("AAAA", &q, Transport::Udp, want);
}

#[test]
fn aaaa_edns_do() {
    let q = bytes(&with_edns(
        query("www.gslb.test.", RecordType::AAAA),
        4096,
        true,
    ));
    let want = expect(ResponseCode::NoError, 2, false, true);
    assert_no_alloc("AAAA + EDNS DO", &q, Transport::Udp, want);
}

#[test]
fn weighted() {
    let q = bytes(&query("weighted.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 1, false, false);
    assert_no_alloc("A (weighted)", &q, Transport::Udp, want);
}

#[test]
fn failover() {
    let q = bytes(&query("failover.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 1, false, false);
    assert_no_alloc("A (failover)", &q, Transport::Udp, want);
}

#[test]
fn static_a() {
    let q = bytes(&query("ns1.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 1, false, false);
    assert_no_alloc("static A", &q, Transport::Udp, want);
}

#[test]
fn nxdomain() {
    let q = bytes(&query("nx0.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NXDomain, 0, false, false);
    assert_no_alloc("NXDOMAIN", &q, Transport::Udp, want);
}

#[test]
fn nxdomain_edns() {
    let q = bytes(&with_edns(
        query("x.y.nx.gslb.test.", RecordType::A),
        1232,
        true,
    ));
    let want = expect(ResponseCode::NXDomain, 0, false, true);
    assert_no_alloc("NXDOMAIN + EDNS", &q, Transport::Udp, want);
}

#[test]
fn nodata() {
    let q = bytes(&query("api.gslb.test.", RecordType::AAAA));
    let want = expect(ResponseCode::NoError, 0, false, false);
    assert_no_alloc("NODATA", &q, Transport::Udp, want);
}

#[test]
fn nodata_empty_non_terminal_edns() {
    let q = bytes(&with_edns(
        query("b.gslb.test.", RecordType::A),
        1232,
        false,
    ));
    let want = expect(ResponseCode::NoError, 0, false, true);
    assert_no_alloc(
        "NODATA (empty non-terminal) + EDNS",
        &q,
        Transport::Udp,
        want,
    );
}

#[test]
fn refused() {
    let q = bytes(&query("www.example.com.", RecordType::A));
    let want = expect(ResponseCode::Refused, 0, false, false);
    assert_no_alloc("REFUSED", &q, Transport::Udp, want);
}

#[test]
fn refused_edns() {
    let q = bytes(&with_edns(
        query("www.example.com.", RecordType::A),
        1232,
        false,
    ));
    let want = expect(ResponseCode::Refused, 0, false, true);
    assert_no_alloc("REFUSED + EDNS", &q, Transport::Udp, want);
}

#[test]
fn formerr() {
    // QDCOUNT = 2 with one question.
    let mut q = bytes(&query("www.gslb.test.", RecordType::A));
    q[5] = 2;
    let want = expect(ResponseCode::FormErr, 0, false, false);
    assert_no_alloc("FORMERR (QDCOUNT)", &q, Transport::Udp, want);
}

#[test]
fn formerr_bad_opt() {
    // An EDNS option that overruns the OPT RDATA: FORMERR echoing the question.
    let mut q = with_ecs(query("www.gslb.test.", RecordType::A));
    let at = q.len() - 9; // option length field of the ECS option
    q[at] = 0x40;
    let want = expect(ResponseCode::FormErr, 0, false, false);
    assert_no_alloc("FORMERR (bad OPT)", &q, Transport::Udp, want);
}

#[test]
fn tc_without_edns() {
    let q = bytes(&query("big.gslb.test.", RecordType::AAAA));
    let want = expect(ResponseCode::NoError, 0, true, false);
    assert_no_alloc("TC (no EDNS)", &q, Transport::Udp, want);
}

#[test]
fn tc_with_small_edns() {
    let q = bytes(&with_edns(
        query("big.gslb.test.", RecordType::AAAA),
        512,
        false,
    ));
    let want = expect(ResponseCode::NoError, 0, true, true);
    assert_no_alloc("TC (EDNS 512)", &q, Transport::Udp, want);
}

#[test]
fn large_over_edns() {
    let q = bytes(&with_edns(
        query("big.gslb.test.", RecordType::AAAA),
        4096,
        false,
    ));
    let want = expect(ResponseCode::NoError, 40, false, true);
    assert_no_alloc("large RRset + EDNS 4096", &q, Transport::Udp, want);
}

#[test]
fn large_over_tcp() {
    let q = bytes(&query("big.gslb.test.", RecordType::AAAA));
    let want = expect(ResponseCode::NoError, 40, false, false);
    assert_no_alloc("large RRset over TCP", &q, Transport::Tcp, want);
}

#[test]
fn cname_chase() {
    let q = bytes(&query("alias.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 5, false, false);
    assert_no_alloc("CNAME chase", &q, Transport::Udp, want);
}

#[test]
fn cname_chase_edns() {
    let q = bytes(&with_edns(
        query("alias.gslb.test.", RecordType::AAAA),
        1232,
        false,
    ));
    let want = expect(ResponseCode::NoError, 3, false, true);
    assert_no_alloc("CNAME chase + EDNS", &q, Transport::Udp, want);
}

#[test]
fn any() {
    let q = bytes(&query("www.gslb.test.", RecordType::ANY));
    let want = expect(ResponseCode::NoError, 4, false, false);
    assert_no_alloc("ANY", &q, Transport::Udp, want);
}

#[test]
fn any_edns_apex() {
    let q = bytes(&with_edns(
        query("gslb.test.", RecordType::ANY),
        1232,
        false,
    ));
    let want = expect(ResponseCode::NoError, 1, false, true);
    assert_no_alloc("ANY at the apex + EDNS", &q, Transport::Udp, want);
}

/// ECS hook: today the option is parsed and ignored; when EDNS Client Subnet
/// lands (its own issue) this test keeps the ECS path allocation-free.
#[test]
fn cookie_client_only() {
    let q = with_cookie(query("www.gslb.test.", RecordType::A), &[]);
    let want = expect(ResponseCode::NoError, 4, false, true);
    assert_no_alloc("A + client cookie", &q, Transport::Udp, want);
}

#[test]
fn cookie_with_server_cookie() {
    // A server cookie as this server would mint it: checked, then re-minted.
    let mut state = CookieState::new(COOKIE_CONFIG);
    state.set(Some([192, 0, 2, 1].into()), NOW - 60);
    let opt = state
        .reply(wire::Cookie::new(&CLIENT_COOKIE).as_ref())
        .unwrap();
    let q = with_cookie(query("www.gslb.test.", RecordType::A), &opt[12..]);
    let want = expect(ResponseCode::NoError, 4, false, true);
    assert_no_alloc("A + client and server cookie", &q, Transport::Udp, want);
}

#[test]
fn geo_by_source_address() {
    // The worker's client is 192.0.2.1: region a.
    let q = bytes(&query("geo.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 1, false, false);
    assert_no_alloc("geolocation by source address", &q, Transport::Udp, want);
}

#[test]
fn geo_with_ecs() {
    // ECS 198.51.100.0/24: region b, scope 22 in the echoed option.
    let q = with_ecs(query("geo.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 2, false, true);
    assert_no_alloc("geolocation + EDNS Client Subnet", &q, Transport::Udp, want);
}

#[test]
fn geo_with_ecs_over_tcp() {
    let q = with_ecs(query("geo.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 2, false, true);
    assert_no_alloc("geolocation + ECS over TCP", &q, Transport::Tcp, want);
}

#[test]
fn geo_weighted_with_ecs_scope_widening() {
    // ECS 20.0.100.0/24: among 1,000 ranges of one answer class.
    let q = with_ecs_at(query("wgeo.gslb.test.", RecordType::A), [20, 0, 100]);
    let want = expect(ResponseCode::NoError, 2, false, true);
    assert_no_alloc(
        "weighted geolocation + ECS scope widening",
        &q,
        Transport::Udp,
        want,
    );
}

#[test]
fn latency_rotations() {
    let q = bytes(&query("lat.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 3, false, false);
    assert_no_alloc("latency tie group + fill", &q, Transport::Udp, want);
}

#[test]
fn ecs() {
    let q = with_ecs(query("www.gslb.test.", RecordType::A));
    let want = expect(ResponseCode::NoError, 4, false, true);
    assert_no_alloc("A + EDNS Client Subnet", &q, Transport::Udp, want);
}

/// Random-subdomain flood (issue 9, point 4): 10,000 distinct random names
/// below the zone, each answered NXDOMAIN from the snapshot with no
/// allocator call at all (and so no per-query log line and no new metric
/// label, both of which would allocate).
#[test]
fn random_subdomain_flood_nxdomain() {
    let handle = SnapshotHandle::new(Snapshot::try_from(&fixture()).unwrap(), false);
    let mut cache = handle.cache();
    let mut state = WorkerState::new();
    state.cookies = CookieState::new(COOKIE_CONFIG);
    state.cookies.set(Some([192, 0, 2, 1].into()), NOW);
    let mut out = vec![0u8; 65_535].into_boxed_slice();
    // Queries prepared outside the measured loop.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let queries: Vec<Vec<u8>> = (0..ROUNDS)
        .map(|_| {
            let label: String = (0..12)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect();
            bytes(&query(&format!("{label}.gslb.test."), RecordType::A))
        })
        .collect();
    let _ = answer(
        cache.load(),
        &queries[0],
        Transport::Udp,
        &mut state,
        &mut out,
    );
    let before = calls();
    let mut nx = 0usize;
    for q in &queries {
        let n = answer(cache.load(), q, Transport::Udp, &mut state, &mut out).unwrap_or(0);
        nx += usize::from(n >= 12 && out[3] & 0x0f == 3);
    }
    let after = calls();
    assert_eq!(nx, ROUNDS, "every random name is NXDOMAIN");
    assert_eq!(after - before, 0, "{} allocator calls", after - before);
}

// === NSEC3 ===

/// Adds the signed zone `n3.test.` (placeholder RRSIGs) denying with an
/// NSEC3 chain: `www.n3.test.` (A), `a.b.n3.test.` (A) under the empty
/// non-terminal `b.n3.test.`.
fn with_nsec3_zone(mut p: proto::Snapshot) -> proto::Snapshot {
    let sig = || vec![0u8; 30];
    let signed = |mut s: proto::RRset| {
        s.rrsig = vec![sig()];
        s
    };
    let mut soa = wire_name("ns1.gslb.test.");
    soa.extend(wire_name("hostmaster.gslb.test."));
    for v in [1_u32, 3600, 600, 604800, 300] {
        soa.extend(v.to_be_bytes());
    }
    let names = ["n3.test.", "www.n3.test.", "b.n3.test.", "a.b.n3.test."];
    let mut hashes: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &wire_name(n))
                .as_ref()
                .to_vec()
        })
        .collect();
    hashes.sort();
    let records = (0..hashes.len())
        .map(|i| {
            let mut rdata = vec![1, 0, 0, 0, 0, 20];
            rdata.extend_from_slice(&hashes[(i + 1) % hashes.len()]);
            rdata.extend([0, 1, 0x40]);
            proto::Nsec3Record {
                hash: hashes[i].clone(),
                rrset: Some(signed(rrset(50, 300, vec![rdata]))),
            }
        })
        .collect();
    let zone = p.zones.len() as u32;
    p.zones.push(proto::Zone {
        apex: wire_name("n3.test."),
        soa: Some(signed(rrset(6, 300, vec![soa]))),
        ns: Some(signed(rrset(2, 300, vec![wire_name("ns1.gslb.test.")]))),
        dnskey: Some(signed(rrset(48, 300, vec![vec![1, 1, 3, 13, 9, 9]]))),
        negative_ttl: 300,
        nsec3: Some(proto::Nsec3Chain {
            param: Some(signed(rrset(51, 300, vec![vec![1, 0, 0, 0, 0]]))),
            records,
        }),
    });
    for (n, rrsets) in [
        ("www.n3.test.", vec![signed(rrset(1, 300, vec![v4(7)]))]),
        ("b.n3.test.", vec![]),
        ("a.b.n3.test.", vec![signed(rrset(1, 300, vec![v4(8)]))]),
    ] {
        let mut node = node(n, rrsets, vec![]);
        node.zone = zone;
        p.nodes.push(node);
    }
    p
}

#[test]
fn nsec3_nxdomain_closest_encloser_proof() {
    let q = bytes(&with_edns(
        query("x.nope.n3.test.", RecordType::A),
        4096,
        true,
    ));
    let want = expect(ResponseCode::NXDomain, 0, false, true);
    assert_no_alloc("NXDOMAIN + DO (NSEC3)", &q, Transport::Udp, want);
}

#[test]
fn nsec3_nodata_empty_non_terminal() {
    let q = bytes(&with_edns(query("b.n3.test.", RecordType::A), 4096, true));
    let want = expect(ResponseCode::NoError, 0, false, true);
    assert_no_alloc("NODATA ENT + DO (NSEC3)", &q, Transport::Udp, want);
}

#[test]
fn nsec3_proof_is_in_the_reply() {
    // What the two tests above measure: 1 SOA + 1 RRSIG + 2 or 3 NSEC3 with RRSIGs.
    let s = Snapshot::try_from(&with_nsec3_zone(fixture())).unwrap();
    let q = bytes(&with_edns(
        query("x.nope.n3.test.", RecordType::A),
        4096,
        true,
    ));
    let mut out = vec![0u8; 65_535];
    let n = answer(&s, &q, Transport::Udp, &mut WorkerState::new(), &mut out).unwrap();
    let m = Message::from_vec(&out[..n]).unwrap();
    let nsec3 = m
        .authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::NSEC3)
        .count();
    assert!((2..=3).contains(&nsec3), "{m}");
    assert_eq!(m.authorities.len(), 2 + 2 * nsec3, "{m}");
}
