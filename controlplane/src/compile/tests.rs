use std::path::Path;

use hickory_proto::rr::rdata::{CNAME, MX, SOA, TXT};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use opengslb_proto::{rtype, Policy, WhenAllDown};
use prost::Message;

use super::*;
use crate::config;

fn example() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gslb.yaml");
    config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn hickory<T: BinEncodable>(v: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_canonical_form(true);
    v.emit(&mut enc).unwrap();
    buf
}

fn hname(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn wire_name(s: &str) -> Vec<u8> {
    DnsName::parse(s).unwrap().to_wire()
}

fn node<'a>(snap: &'a Snapshot, name: &str) -> &'a Node {
    let w = wire_name(name);
    snap.nodes
        .iter()
        .find(|n| n.name == w)
        .unwrap_or_else(|| panic!("no node {name}"))
}

fn rrset(node: &Node, t: u32) -> &RRset {
    node.rrsets.iter().find(|r| r.rtype == t).unwrap()
}

#[test]
fn example_zone_soa_and_ns() {
    let snap = compile(&example(), 7, 20_240_101, &all_healthy);
    assert_eq!(snap.generation, 7);
    assert_eq!(snap.origin, "quickstart");
    assert_eq!(snap.zones.len(), 1);
    let zone = &snap.zones[0];
    assert_eq!(zone.apex, wire_name("gslb.example.com"));
    let soa = zone.soa.as_ref().unwrap();
    assert_eq!((soa.rtype, soa.ttl), (rtype::SOA, 3600));
    let want = SOA::new(
        hname("ns1.gslb.example.com."),
        hname("hostmaster.gslb.example.com."),
        20_240_101,
        3600,
        600,
        604_800,
        60,
    );
    assert_eq!(soa.rdata, [hickory(&want)]);
    assert_eq!(zone.negative_ttl, 60);
    let ns = zone.ns.as_ref().unwrap();
    assert_eq!(ns.rdata, [wire_name("ns1.gslb.example.com")]);
    assert!(zone.dnskey.is_none());
    let geo = snap.geo.as_ref().unwrap();
    assert_eq!(geo.regions, ["local"]);
    assert_eq!(snap.options.unwrap().edns_udp_size, 1232);
}

#[test]
fn example_plans() {
    let snap = compile(&example(), 1, 1, &all_healthy);
    let www = node(&snap, "www.gslb.example.com");
    assert_eq!(www.plans.len(), 2);
    let a = &www.plans[0];
    assert_eq!(a.rtype, rtype::A);
    assert_eq!(a.policy(), Policy::RoundRobin);
    assert_eq!(a.max_answers, 0);
    assert_eq!(a.when_all_down(), WhenAllDown::Servfail);
    assert_eq!(a.candidates.len(), 1);
    let set = a.candidates[0].rrset.as_ref().unwrap();
    assert_eq!(set.ttl, 30);
    assert_eq!(set.rdata, [vec![192, 0, 2, 10], vec![192, 0, 2, 11]]);
    let aaaa = &www.plans[1];
    assert_eq!(aaaa.rtype, rtype::AAAA);
    let v6: std::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
    assert_eq!(
        aaaa.candidates[0].rrset.as_ref().unwrap().rdata,
        [v6.octets().to_vec()]
    );

    // api is IPv4 only: the IPv6 server is limited to www by `service`.
    let api = node(&snap, "api.gslb.example.com");
    assert_eq!(api.plans.len(), 1);
    assert_eq!(api.plans[0].rtype, rtype::A);
}

#[test]
fn static_rdata_matches_hickory() {
    let snap = compile(&example(), 1, 1, &all_healthy);
    let alias = node(&snap, "alias.gslb.example.com");
    let cname = rrset(alias, rtype::CNAME);
    assert_eq!(cname.ttl, 300);
    assert_eq!(
        cname.rdata,
        [hickory(&CNAME(hname("www.gslb.example.com.")))]
    );
    let apex = node(&snap, "gslb.example.com");
    let txt = rrset(apex, rtype::TXT);
    assert_eq!(txt.ttl, 60);
    assert_eq!(
        txt.rdata,
        [hickory(&TXT::new(vec!["v=spf1 -all".to_owned()]))]
    );
    let mx = rrset(apex, rtype::MX);
    assert_eq!(
        mx.rdata,
        [hickory(&MX::new(10, hname("mail.gslb.example.com.")))]
    );
    // RRsets of a node are ordered by type.
    assert!(apex.rrsets.windows(2).all(|w| w[0].rtype < w[1].rtype));
}

#[test]
fn long_txt_is_split_like_hickory() {
    let long = "x".repeat(600);
    let chunks = vec!["x".repeat(255), "x".repeat(255), "x".repeat(90)];
    assert_eq!(wire::txt(&long), hickory(&TXT::new(chunks)));
    assert_eq!(wire::txt(""), [0]);
}

const NESTED: &str = "\
dns:
  default_ttl: 120
  zones:
    - name: example.com
      soa: {ttl: 300, minimum: 900}
      records:
        - {name: x.deep.example.com, type: TXT, value: one, ttl: 50}
        - {name: x.deep.example.com, type: TXT, value: two, ttl: 40}
        - {name: x.deep.example.com, type: TXT, value: one}
regions:
  - name: a
    servers: [{address: 192.0.2.1, weight: 5}, {address: 192.0.2.2, weight: 7}]
  - name: b
    servers: [{address: 192.0.2.1}, {address: 192.0.2.3}]
    health_check: {type: none}
domains:
  - name: www.a.b.example.com
    routing_algorithm: failover
    regions: [a, b]
    when_all_down: all
";

#[test]
fn ents_rrset_merge_and_candidates() {
    let cfg = config::parse(NESTED, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let snap = compile(&cfg, 1, 1, &all_healthy);
    let names: Vec<Vec<u8>> = snap.nodes.iter().map(|n| n.name.clone()).collect();
    let want: Vec<Vec<u8>> = [
        "example.com",
        "b.example.com",
        "a.b.example.com",
        "www.a.b.example.com",
        "deep.example.com",
        "x.deep.example.com",
    ]
    .iter()
    .map(|n| wire_name(n))
    .collect();
    assert_eq!(names, want, "canonical order with ENTs");
    let ent = node(&snap, "a.b.example.com");
    assert!(ent.rrsets.is_empty() && ent.plans.is_empty());
    assert_eq!(snap.zones[0].negative_ttl, 300);

    let txt = rrset(node(&snap, "x.deep.example.com"), rtype::TXT);
    assert_eq!(txt.ttl, 40);
    assert_eq!(txt.rdata.len(), 2, "duplicate record merged");

    let plan = &node(&snap, "www.a.b.example.com").plans[0];
    assert_eq!(plan.policy(), Policy::Failover);
    assert_eq!(plan.max_answers, 1);
    let c: Vec<(Vec<u8>, u32, u32)> = plan
        .candidates
        .iter()
        .map(|c| {
            (
                c.rrset.as_ref().unwrap().rdata[0].clone(),
                c.weight,
                c.region,
            )
        })
        .collect();
    assert_eq!(
        c,
        [
            (vec![192, 0, 2, 1], 5, 0),
            (vec![192, 0, 2, 2], 7, 0),
            (vec![192, 0, 2, 3], 100, 1),
        ],
        "one candidate per server, deduplicated by address, in config order"
    );
    assert_eq!(plan.candidates[0].rrset.as_ref().unwrap().ttl, 120);
}

#[test]
fn health_hook_filters_and_when_all_down() {
    let cfg = config::parse(NESTED, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    // Region a is probed; call its servers down. Region b (type none) stays up.
    let down_a = |s: &ServerRef<'_>| s.region != "a";
    let snap = compile(&cfg, 1, 1, &down_a);
    let plan = &node(&snap, "www.a.b.example.com").plans[0];
    let addrs: Vec<&[u8]> = plan
        .candidates
        .iter()
        .map(|c| c.rrset.as_ref().unwrap().rdata[0].as_slice())
        .collect();
    assert_eq!(addrs, [[192u8, 0, 2, 3].as_slice()]);

    // All down (only region a), when_all_down: all → fail open with every server.
    let only_a = NESTED.replace("regions: [a, b]", "regions: [a]");
    let cfg = config::parse(&only_a, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let plan = compile(&cfg, 1, 1, &down_a)
        .nodes
        .iter()
        .find(|n| !n.plans.is_empty())
        .unwrap()
        .plans[0]
        .clone();
    assert_eq!(plan.when_all_down(), WhenAllDown::All);
    assert_eq!(plan.candidates.len(), 2);
    // servfail → no candidates.
    let servfail = only_a.replace("when_all_down: all", "when_all_down: servfail");
    let cfg = config::parse(&servfail, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let plan = compile(&cfg, 1, 1, &down_a)
        .nodes
        .iter()
        .find(|n| !n.plans.is_empty())
        .unwrap()
        .plans[0]
        .clone();
    assert_eq!(plan.when_all_down(), WhenAllDown::Servfail);
    assert!(plan.candidates.is_empty());
}

#[test]
fn deterministic_encoding() {
    let a = compile(&example(), 3, 9, &all_healthy).encode_to_vec();
    let b = compile(&example(), 3, 9, &all_healthy).encode_to_vec();
    assert_eq!(a, b);
    let cfg = config::parse(NESTED, Path::new("t.yaml")).unwrap();
    assert_eq!(
        compile(&cfg, 1, 1, &all_healthy).encode_to_vec(),
        compile(&cfg, 1, 1, &all_healthy).encode_to_vec()
    );
}
