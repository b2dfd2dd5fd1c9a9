//! Behaviour of [`answer`](super::answer): queries built and replies parsed
//! with hickory-proto, against a hand-built proto snapshot (also used by the
//! snapshot conversion tests).

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use opengslb_proto as proto;

use super::*;

// === fixture ===

/// Wire-format name from dotted text.
pub(crate) fn name(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in s.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

pub(crate) fn rrset(rtype: u32, ttl: u32, rdata: Vec<Vec<u8>>) -> proto::RRset {
    proto::RRset {
        rtype,
        ttl,
        rdata,
        rrsig: vec![],
    }
}

fn plan(rtype: u32, ttl: u32, rdata: Vec<Vec<u8>>, max_answers: u32) -> proto::AnswerPlan {
    proto::AnswerPlan {
        rtype,
        policy: Policy::RoundRobin as i32,
        max_answers,
        candidates: vec![proto::Candidate {
            rrset: Some(rrset(rtype, ttl, rdata)),
            weight: 1,
            region: 0,
            geo_fallback: 0,
        }],
        when_all_down: WhenAllDown::Unspecified as i32,
        ecs_max_prefix_v4: 0,
        ecs_max_prefix_v6: 0,
    }
}

fn node(n: &str, rrsets: Vec<proto::RRset>, plans: Vec<proto::AnswerPlan>) -> proto::Node {
    proto::Node {
        name: name(n),
        zone: 0,
        rrsets,
        plans,
        denial: vec![],
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

fn soa_rdata() -> Vec<u8> {
    let mut r = name("ns1.gslb.test.");
    r.extend(name("hostmaster.gslb.test."));
    for v in [2024_u32, 3600, 600, 86400, 60] {
        r.extend(v.to_be_bytes());
    }
    r
}

/// Zone `gslb.test.` (apex not sent as a node) and its names.
pub(crate) fn fixture() -> proto::Snapshot {
    let txt = |s: &str| {
        let mut r = vec![s.len() as u8];
        r.extend_from_slice(s.as_bytes());
        r
    };
    proto::Snapshot {
        generation: 42,
        origin: "cp-1".into(),
        zones: vec![proto::Zone {
            apex: name("gslb.test."),
            soa: Some(rrset(6, 3600, vec![soa_rdata()])),
            ns: Some(rrset(
                2,
                3600,
                vec![name("ns1.gslb.test."), name("ns2.gslb.test.")],
            )),
            dnskey: None,
            negative_ttl: 60,
            nsec3: None,
        }],
        nodes: vec![
            node(
                "www.gslb.test.",
                vec![],
                vec![
                    plan(1, 30, vec![v4(1), v4(2), v4(3)], 0),
                    plan(28, 30, vec![v6(1), v6(2)], 0),
                ],
            ),
            node("api.gslb.test.", vec![], vec![plan(1, 20, vec![v4(10)], 0)]),
            node(
                "one.gslb.test.",
                vec![],
                vec![plan(1, 20, vec![v4(21), v4(22), v4(23)], 1)],
            ),
            node(
                "alias.gslb.test.",
                vec![rrset(5, 300, vec![name("www.gslb.test.")])],
                vec![],
            ),
            node(
                "txt.gslb.test.",
                vec![rrset(16, 120, vec![txt("hello")])],
                vec![],
            ),
            node("b.gslb.test.", vec![], vec![]),
            node("a.b.gslb.test.", vec![rrset(1, 60, vec![v4(30)])], vec![]),
            node(
                "big.gslb.test.",
                vec![],
                vec![plan(28, 30, (1..=40).map(v6).collect(), 0)],
            ),
            node(
                "loop1.gslb.test.",
                vec![rrset(5, 60, vec![name("loop2.gslb.test.")])],
                vec![],
            ),
            node(
                "loop2.gslb.test.",
                vec![rrset(5, 60, vec![name("loop1.gslb.test.")])],
                vec![],
            ),
            node(
                "dangling.gslb.test.",
                vec![rrset(5, 60, vec![name("missing.gslb.test.")])],
                vec![],
            ),
            node(
                "out.gslb.test.",
                vec![rrset(5, 60, vec![name("www.example.com.")])],
                vec![],
            ),
            node(
                "down.gslb.test.",
                vec![],
                vec![proto::AnswerPlan {
                    candidates: vec![],
                    ..plan(1, 30, vec![], 0)
                }],
            ),
            node("ns1.gslb.test.", vec![rrset(1, 3600, vec![v4(53)])], vec![]),
        ],
        geo: None,
        options: None,
    }
}

fn snap() -> Snapshot {
    Snapshot::try_from(&fixture()).unwrap()
}

// === helpers ===

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

fn raw(s: &Snapshot, q: &[u8], t: Transport, st: &mut WorkerState) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 65535];
    let n = answer(s, q, t, st, &mut out)?;
    out.truncate(n);
    Some(out)
}

fn ask_on(s: &Snapshot, q: &Message, t: Transport, st: &mut WorkerState) -> Message {
    let bytes = raw(s, &q.to_vec().unwrap(), t, st).expect("a reply");
    Message::from_vec(&bytes).unwrap()
}

fn ask(s: &Snapshot, q: &Message) -> Message {
    ask_on(s, q, Transport::Udp, &mut WorkerState::new())
}

fn ask_raw(s: &Snapshot, q: &[u8]) -> Message {
    let bytes = raw(s, q, Transport::Udp, &mut WorkerState::new()).expect("a reply");
    Message::from_vec(&bytes).unwrap()
}

fn a_addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| {
            if let RData::A(a) = &r.data {
                Some(a.0)
            } else {
                None
            }
        })
        .collect()
}

fn assert_soa_authority(m: &Message, ttl: u32) {
    assert_eq!(m.authorities.len(), 1, "{m}");
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.ttl, ttl);
    assert_eq!(soa.name, Name::from_ascii("gslb.test.").unwrap());
}

// === tests ===

#[test]
fn answers_round_robin_plan() {
    let s = snap();
    let r = ask(&s, &query("www.gslb.test.", RecordType::A));
    let md = &r.metadata;
    assert_eq!(md.id, 0xBEEF);
    assert_eq!(md.message_type, MessageType::Response);
    assert_eq!(md.op_code, OpCode::Query);
    assert!(md.authoritative && md.recursion_desired && !md.recursion_available && !md.truncation);
    assert_eq!(md.response_code, ResponseCode::NoError);
    assert_eq!(r.queries.len(), 1);
    assert_eq!(r.answers.len(), 3);
    assert!(r
        .answers
        .iter()
        .all(|a| a.ttl == 30 && a.name == Name::from_ascii("www.gslb.test.").unwrap()));
    assert!(r.authorities.is_empty() && r.additionals.is_empty() && r.edns.is_none());

    let r = ask(&s, &query("www.gslb.test.", RecordType::AAAA));
    assert_eq!(r.answers.len(), 2);
    assert!(r
        .answers
        .iter()
        .all(|a| a.record_type() == RecordType::AAAA));
}

#[test]
fn rotates_per_worker() {
    let s = snap();
    let mut st = WorkerState::new();
    let q = query("www.gslb.test.", RecordType::A);
    let firsts: Vec<Ipv4Addr> = (0..4)
        .map(|_| a_addrs(&ask_on(&s, &q, Transport::Udp, &mut st))[0])
        .collect();
    let ip = |l| Ipv4Addr::new(192, 0, 2, l);
    assert_eq!(firsts, [ip(1), ip(2), ip(3), ip(1)]);
    let mut all = a_addrs(&ask_on(&s, &q, Transport::Udp, &mut st));
    assert_eq!(all, [ip(2), ip(3), ip(1)]);
    all.sort();
    assert_eq!(all, [ip(1), ip(2), ip(3)]);
    // max_answers = 1: one record, still rotating.
    let q = query("one.gslb.test.", RecordType::A);
    let picks: Vec<Vec<Ipv4Addr>> = (0..3)
        .map(|_| a_addrs(&ask_on(&s, &q, Transport::Udp, &mut st)))
        .collect();
    assert!(picks.iter().all(|p| p.len() == 1));
    assert_ne!(picks[0], picks[1]);
}

#[test]
fn echoes_question_case_and_flags() {
    let s = snap();
    let mut q = query("wWw.GsLb.TeSt.", RecordType::A);
    q.metadata.checking_disabled = true;
    let bytes = q.to_vec().unwrap();
    let out = raw(&s, &bytes, Transport::Udp, &mut WorkerState::new()).unwrap();
    let qlen = name("www.gslb.test.").len() + 4;
    assert_eq!(out[12..12 + qlen], bytes[12..12 + qlen]);
    let r = Message::from_vec(&out).unwrap();
    assert!(r.queries[0]
        .name
        .eq_case(&Name::from_ascii("wWw.GsLb.TeSt.").unwrap()));
    assert!(r.metadata.checking_disabled && r.metadata.authoritative);
    assert_eq!(r.answers.len(), 3);
}

#[test]
fn question_with_pointer_is_echoed_uncompressed() {
    // The question name points into the header, which spells the root name.
    let q = [
        0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 11, 0, 6, 0, 1,
    ];
    let out = raw(&snap(), &q, Transport::Udp, &mut WorkerState::new()).unwrap();
    assert_eq!(out[12..17], [0, 0, 6, 0, 1]);
    let r = Message::from_vec(&out).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.authoritative);
}

#[test]
fn nxdomain_and_nodata() {
    let s = snap();
    let r = ask(&s, &query("nope.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative && r.answers.is_empty());
    assert_soa_authority(&r, 60);
    let r = ask(&s, &query("x.y.nope.GSLB.test.", RecordType::TXT));
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_soa_authority(&r, 60);

    for (n, t) in [
        ("api.gslb.test.", RecordType::AAAA),
        ("txt.gslb.test.", RecordType::A),
        ("b.gslb.test.", RecordType::A),
    ] {
        let r = ask(&s, &query(n, t));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{n}");
        assert!(r.metadata.authoritative && r.answers.is_empty(), "{n}");
        assert_soa_authority(&r, 60);
    }
    // Below the empty non-terminal.
    let r = ask(&s, &query("a.b.gslb.test.", RecordType::A));
    assert_eq!(a_addrs(&r), [Ipv4Addr::new(192, 0, 2, 30)]);
}

#[test]
fn refuses_outside_our_zones() {
    let s = snap();
    for n in ["example.com.", "test.", ".", "gslb.test.example."] {
        let r = ask(&s, &query(n, RecordType::A));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{n}");
        assert!(!r.metadata.authoritative && r.answers.is_empty() && r.authorities.is_empty());
    }
    // An empty snapshot refuses everything.
    let r = ask(
        &Snapshot::default(),
        &query("www.gslb.test.", RecordType::A),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn apex_records() {
    let s = snap();
    let r = ask(&s, &query("GSLB.test.", RecordType::SOA));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 3600);
    assert!(
        matches!(&r.answers[0].data, RData::SOA(soa) if soa.minimum == 60 && soa.serial == 2024)
    );
    let r = ask(&s, &query("gslb.test.", RecordType::NS));
    assert_eq!(r.answers.len(), 2);
    assert!(r.answers.iter().all(|a| a.record_type() == RecordType::NS));
    let r = ask(&s, &query("gslb.test.", RecordType::DNSKEY));
    assert!(r.answers.is_empty() && r.metadata.authoritative);
    assert_soa_authority(&r, 60);
    let r = ask(&s, &query("gslb.test.", RecordType::A));
    assert_soa_authority(&r, 60);

    // DNSKEY is served once the zone has one.
    let mut p = fixture();
    p.zones[0].dnskey = Some(rrset(48, 3600, vec![vec![1, 1, 3, 13, 0xAA, 0xBB]]));
    let r = ask(
        &Snapshot::try_from(&p).unwrap(),
        &query("gslb.test.", RecordType::DNSKEY),
    );
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn static_rrsets() {
    let s = snap();
    let r = ask(&s, &query("txt.gslb.test.", RecordType::TXT));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 120);
    assert!(matches!(&r.answers[0].data, RData::TXT(t) if t.txt_data[0].as_ref() == b"hello"));
}

#[test]
fn cname_chase() {
    let s = snap();
    let www = Name::from_ascii("www.gslb.test.").unwrap();
    let r = ask(&s, &query("alias.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(r.answers.len(), 4);
    assert!(matches!(&r.answers[0].data, RData::CNAME(c) if c.0 == www));
    assert_eq!(
        r.answers[0].name,
        Name::from_ascii("alias.gslb.test.").unwrap()
    );
    assert!(r.answers[1..]
        .iter()
        .all(|a| a.name == www && a.record_type() == RecordType::A));

    let r = ask(&s, &query("alias.gslb.test.", RecordType::AAAA));
    assert_eq!(r.answers.len(), 3);
    // Asking for the CNAME itself does not chase.
    let r = ask(&s, &query("alias.gslb.test.", RecordType::CNAME));
    assert_eq!(r.answers.len(), 1);
    // NODATA at the target: the CNAME, then SOA.
    let r = ask(&s, &query("alias.gslb.test.", RecordType::TXT));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert_soa_authority(&r, 60);
    // RFC 6604: the chain ends on a missing in-zone name.
    let r = ask(&s, &query("dangling.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    assert_eq!(r.answers.len(), 1);
    assert_soa_authority(&r, 60);
    // Out of our zones: the CNAME only, the resolver follows.
    let r = ask(&s, &query("out.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    assert!(r.authorities.is_empty());
    // A loop stops without repeating a node.
    let r = ask(&s, &query("loop1.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn long_cname_chain_is_bounded() {
    let mut p = fixture();
    for i in 0..20 {
        let target = name(&format!("c{}.gslb.test.", i + 1));
        p.nodes.push(node(
            &format!("c{i}.gslb.test."),
            vec![rrset(5, 60, vec![target])],
            vec![],
        ));
    }
    p.nodes.push(node(
        "c20.gslb.test.",
        vec![rrset(1, 60, vec![v4(99)])],
        vec![],
    ));
    let s = Snapshot::try_from(&p).unwrap();
    let r = ask(&s, &query("c0.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), MAX_CNAME_CHAIN + 1);
    let r = ask(&s, &query("c15.gslb.test.", RecordType::A));
    assert_eq!(r.answers.len(), 6);
    assert_eq!(a_addrs(&r), [Ipv4Addr::new(192, 0, 2, 99)]);
}

#[test]
fn any_is_minimal() {
    let s = snap();
    let r = ask(&s, &query("www.gslb.test.", RecordType::ANY));
    assert_eq!(r.answers.len(), 3);
    assert!(r.answers.iter().all(|a| a.record_type() == RecordType::A));
    let r = ask(&s, &query("big.gslb.test.", RecordType::ANY));
    assert!(
        r.metadata.truncation
            || r.answers
                .iter()
                .all(|a| a.record_type() == RecordType::AAAA)
    );
    let r = ask(&s, &query("txt.gslb.test.", RecordType::ANY));
    assert_eq!(r.answers.len(), 1);
    let r = ask(&s, &query("gslb.test.", RecordType::ANY));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::SOA);
    let r = ask(&s, &query("alias.gslb.test.", RecordType::ANY));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    let r = ask(&s, &query("b.gslb.test.", RecordType::ANY));
    assert!(r.answers.is_empty());
    assert_soa_authority(&r, 60);
}

#[test]
fn all_down_plan() {
    let s = snap();
    let r = ask(&s, &query("down.gslb.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty() && !r.metadata.authoritative);
    let mut p = fixture();
    let n = p
        .nodes
        .iter_mut()
        .find(|n| n.name == name("down.gslb.test."))
        .unwrap();
    n.plans[0].when_all_down = WhenAllDown::All as i32;
    let r = ask(
        &Snapshot::try_from(&p).unwrap(),
        &query("down.gslb.test.", RecordType::A),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_soa_authority(&r, 60);
}

#[test]
fn edns_echo_and_payload() {
    let s = snap();
    let r = ask(
        &s,
        &with_edns(query("www.gslb.test.", RecordType::A), 4096, true),
    );
    let e = r.edns.as_ref().expect("OPT echoed");
    assert_eq!(e.max_payload(), 1232);
    assert_eq!(e.version(), 0);
    assert!(e.flags().dnssec_ok);
    assert_eq!(r.answers.len(), 3);
    let r = ask(
        &s,
        &with_edns(query("www.gslb.test.", RecordType::A), 1232, false),
    );
    assert!(!r.edns.as_ref().unwrap().flags().dnssec_ok);
    // Snapshot option overrides our payload size.
    let mut p = fixture();
    p.options = Some(proto::ServeOptions {
        edns_udp_size: 4000,
        ecs_enabled: false,
    });
    let r = ask(
        &Snapshot::try_from(&p).unwrap(),
        &with_edns(query("www.gslb.test.", RecordType::A), 4096, false),
    );
    assert_eq!(r.edns.unwrap().max_payload(), 4000);
    // Errors echo OPT too.
    let r = ask(
        &s,
        &with_edns(query("example.com.", RecordType::A), 1232, false),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.edns.is_some());
}

#[test]
fn badvers() {
    let s = snap();
    let mut q = with_edns(query("www.gslb.test.", RecordType::A), 1232, false);
    q.edns.as_mut().unwrap().set_version(1);
    let out = raw(
        &s,
        &q.to_vec().unwrap(),
        Transport::Udp,
        &mut WorkerState::new(),
    )
    .unwrap();
    assert_eq!(out[3] & 0x0F, 0, "header RCODE is the low bits of 16");
    let r = Message::from_vec(&out).unwrap();
    // hickory names extended RCODE 16 BADSIG; RFC 6891 calls it BADVERS.
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert!(r.answers.is_empty());
    let e = r.edns.unwrap();
    assert_eq!((e.rcode_high(), e.version()), (1, 0));
}

#[test]
fn two_opt_is_formerr() {
    let s = snap();
    let mut b = with_edns(query("www.gslb.test.", RecordType::A), 1232, false)
        .to_vec()
        .unwrap();
    b.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    b[11] = 2;
    let r = ask_raw(&s, &b);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.queries.len(), 1, "the question parsed, so it is echoed");
    assert!(r.edns.is_none());
    // Malformed option.
    let mut b = with_edns(query("www.gslb.test.", RecordType::A), 1232, false)
        .to_vec()
        .unwrap();
    let rdlen = b.len() - 2;
    b[rdlen + 1] = 3;
    b.extend_from_slice(&[0, 8, 0]);
    assert_eq!(
        ask_raw(&s, &b).metadata.response_code,
        ResponseCode::FormErr
    );
    // OPT with a non-root owner.
    let mut b = query("www.gslb.test.", RecordType::A).to_vec().unwrap();
    b.extend_from_slice(&[0xC0, 12, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    b[11] = 1;
    assert_eq!(
        ask_raw(&s, &b).metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn truncation_and_tcp() {
    let s = snap();
    let q = query("big.gslb.test.", RecordType::AAAA);
    let r = ask(&s, &q);
    assert!(r.metadata.truncation && r.metadata.authoritative);
    assert!(r.answers.is_empty() && r.authorities.is_empty());
    assert_eq!(r.queries.len(), 1);
    let r = ask_on(&s, &q, Transport::Tcp, &mut WorkerState::new());
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 40);
    // EDNS with room: all 40 (12 + 18 + 40*28 + 11 < 1232).
    let r = ask(&s, &with_edns(q.clone(), 4096, false));
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 40);
    // EDNS with a small payload: truncated, OPT kept, and never over 512.
    let b = with_edns(q, 100, false).to_vec().unwrap();
    let out = raw(&s, &b, Transport::Udp, &mut WorkerState::new()).unwrap();
    assert!(out.len() <= 512);
    let r = Message::from_vec(&out).unwrap();
    assert!(r.metadata.truncation && r.edns.is_some() && r.answers.is_empty());
}

#[test]
fn formerr_cases() {
    let s = snap();
    // QDCOUNT = 0.
    let b = [0x12, 0x34, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    let r = ask_raw(&s, &b);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.metadata.id, 0x1234);
    assert!(r.metadata.recursion_desired && r.queries.is_empty() && !r.metadata.authoritative);
    // QDCOUNT = 2.
    let mut m = query("www.gslb.test.", RecordType::A);
    m.add_query(Query::query(
        Name::from_ascii("api.gslb.test.").unwrap(),
        RecordType::A,
    ));
    let r = ask(&s, &m);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(r.queries.is_empty());
    // Compression loop.
    let b = [
        0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1,
    ];
    assert_eq!(
        ask_raw(&s, &b).metadata.response_code,
        ResponseCode::FormErr
    );
    // Truncated packet, at every cut inside the question.
    let full = query("www.gslb.test.", RecordType::A).to_vec().unwrap();
    for cut in 12..full.len() {
        let r = ask_raw(&s, &full[..cut]);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr, "cut {cut}");
    }
    // 256-octet name.
    let mut b = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for _ in 0..4 {
        b.push(62);
        b.extend_from_slice(&[b'a'; 62]);
    }
    b.extend_from_slice(&[2, b'a', b'b', 0, 0, 1, 0, 1]);
    assert_eq!(b.len() - 12 - 4, 256);
    assert_eq!(
        ask_raw(&s, &b).metadata.response_code,
        ResponseCode::FormErr
    );
    // QTYPE OPT as a question.
    let r = ask(&s, &query("www.gslb.test.", RecordType::OPT));
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.queries.len(), 1);
}

#[test]
fn opcode_class_and_meta_types() {
    let s = snap();
    let mut m = query("www.gslb.test.", RecordType::A);
    m.metadata.op_code = OpCode::Status;
    let r = ask(&s, &m);
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(r.metadata.op_code, OpCode::Status);
    assert_eq!(r.queries.len(), 1);
    assert!(r.answers.is_empty());

    let mut m = query("www.gslb.test.", RecordType::A);
    m.queries[0].query_class = DNSClass::CH;
    assert_eq!(ask(&s, &m).metadata.response_code, ResponseCode::Refused);
    m.queries[0].query_class = DNSClass::ANY;
    assert_eq!(ask(&s, &m).answers.len(), 3);

    for (t, rc) in [
        (RecordType::AXFR, ResponseCode::Refused),
        (RecordType::IXFR, ResponseCode::Refused),
        (RecordType::Unknown(254), ResponseCode::NotImp),
        (RecordType::Unknown(250), ResponseCode::FormErr),
    ] {
        let mut m = query("www.gslb.test.", RecordType::A);
        m.queries[0].query_type = t;
        let b = m.to_vec().unwrap();
        assert_eq!(ask_raw(&s, &b).metadata.response_code, rc, "{t}");
    }
}

#[test]
fn no_reply() {
    let s = snap();
    let mut st = WorkerState::new();
    let mut m = query("www.gslb.test.", RecordType::A);
    m.metadata.message_type = MessageType::Response;
    assert!(raw(&s, &m.to_vec().unwrap(), Transport::Udp, &mut st).is_none());
    assert!(raw(&s, &[0; 11], Transport::Udp, &mut st).is_none());
    assert!(raw(&s, &[], Transport::Tcp, &mut st).is_none());
    // An output buffer too small for even a header.
    let q = query("www.gslb.test.", RecordType::A).to_vec().unwrap();
    assert!(answer(&s, &q, Transport::Udp, &mut st, &mut [0; 8]).is_none());
    // One that holds the question but no records: truncated, never overrun.
    let mut small = [0u8; 40];
    let n = answer(&s, &q, Transport::Udp, &mut st, &mut small).unwrap();
    assert!(Message::from_vec(&small[..n]).unwrap().metadata.truncation);
}

#[test]
fn dnssec_hook_adds_rrsigs_only_with_do() {
    let mut p = fixture();
    p.nodes[1].plans[0].candidates[0]
        .rrset
        .as_mut()
        .unwrap()
        .rrsig = vec![vec![0; 30]];
    let s = Snapshot::try_from(&p).unwrap();
    let q = query("api.gslb.test.", RecordType::A);
    let out = raw(
        &s,
        &q.to_vec().unwrap(),
        Transport::Udp,
        &mut WorkerState::new(),
    )
    .unwrap();
    assert_eq!(out[7], 1);
    let out = raw(
        &s,
        &with_edns(q, 1232, true).to_vec().unwrap(),
        Transport::Udp,
        &mut WorkerState::new(),
    )
    .unwrap();
    assert_eq!(out[7], 2, "A + RRSIG");
}

/// Seeded xorshift: deterministic, no extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let s = snap();
    let mut st = WorkerState::new();
    let mut out = vec![0u8; 65535];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seeds: Vec<Vec<u8>> = [
        query("www.gslb.test.", RecordType::A),
        with_edns(query("alias.gslb.test.", RecordType::AAAA), 4096, true),
        with_edns(query("big.gslb.test.", RecordType::ANY), 1232, false),
        query("nope.gslb.test.", RecordType::TXT),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect();
    let mut replies = 0;
    for i in 0..20_000 {
        let mut p = if i % 5 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(6) {
            if p.is_empty() {
                break;
            }
            let at = rng.below(p.len());
            match rng.below(5) {
                0 => p[at] = rng.next() as u8,
                1 => p.truncate(at),
                2 => p.insert(at, rng.next() as u8),
                3 => p[at] = [0, 0xC0, 63, 64, 41, 255][rng.below(6)],
                _ => p.extend_from_slice(
                    &[0, 0, 41, 2, 0, 0, 0, 0x80, 0, 0, 4, 0, 8, 0, 0][..rng.below(16)],
                ),
            }
            if p.len() > 2 && rng.below(4) == 0 {
                p[2] &= 0x7F; // keep QR=0 often so the whole path runs
            }
        }
        let t = if rng.below(2) == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let limit = if t == Transport::Udp { 4096 } else { 65535 };
        if let Some(n) = answer(&s, &p, t, &mut st, &mut out[..limit]) {
            replies += 1;
            assert!(n >= 12 && n <= limit);
            assert!(t == Transport::Tcp || n <= 1232);
            assert_eq!(out[..2], p[..2], "id echoed");
            assert!(out[2] & 0x80 != 0, "QR set");
            Message::from_vec(&out[..n])
                .unwrap_or_else(|e| panic!("reply {i} unparsable: {e}: {p:?}"));
        }
    }
    assert!(replies > 5_000, "{replies}");
}
