use std::path::Path;
use std::time::SystemTime;

use hickory_proto::rr::rdata::{CNAME, MX, SOA, TXT};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use opengslb_proto::{rtype, Policy, WhenAllDown};
use prost::Message;

use super::*;
use crate::config;

fn example() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gslb.yaml");
    // `parse`, not `load`: a checkout's files are readable by other users.
    let text = std::fs::read_to_string(&path).unwrap();
    config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"))
}

/// One compile with a fresh compiler.
fn compile(cfg: &Config, generation: u64, serial: u32, health: &dyn HealthView) -> Snapshot {
    Compiler::new()
        .compile(cfg, generation, serial, health, SystemTime::UNIX_EPOCH)
        .snapshot
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
    let snap = compile(&example(), 7, 20_240_101, &AllHealthy);
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
    let snap = compile(&example(), 1, 1, &AllHealthy);
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
    let snap = compile(&example(), 1, 1, &AllHealthy);
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
    let snap = compile(&cfg, 1, 1, &AllHealthy);
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
    let down_a = |s: &ServerRef<'_>| {
        if s.region == "a" {
            ServerHealth::DOWN
        } else {
            ServerHealth::UP
        }
    };
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
    let a = compile(&example(), 3, 9, &AllHealthy).encode_to_vec();
    let b = compile(&example(), 3, 9, &AllHealthy).encode_to_vec();
    assert_eq!(a, b);
    let cfg = config::parse(NESTED, Path::new("t.yaml")).unwrap();
    assert_eq!(
        compile(&cfg, 1, 1, &AllHealthy).encode_to_vec(),
        compile(&cfg, 1, 1, &AllHealthy).encode_to_vec()
    );
}

// === policies ===

const POLICIES: &str = "\
dns:
  zones: [example.com]
regions:
  - name: p
    servers:
      - {address: 192.0.2.1, weight: 10}
      - {address: 192.0.2.2, weight: 0}
      - {address: 192.0.2.3, weight: 5}
  - name: s
    servers: [{address: 192.0.2.9}, {address: \"2001:db8::9\"}]
domains:
  - {name: fo.example.com, routing_algorithm: failover, regions: [p, s], failback_delay: 30s}
  - {name: w.example.com, routing_algorithm: weighted, regions: [p], when_all_down: last_healthy}
  - {name: all.example.com, routing_algorithm: round-robin, regions: [p], when_all_down: all}
";

fn policies(edit: impl FnOnce(String) -> String) -> Config {
    config::parse(&edit(POLICIES.to_owned()), Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + secs)
}

/// A health view from `(last octet of 192.0.2.x, health)`; 2001:db8::9
/// shares the health of 192.0.2.9 (one dual-stack host); others are up.
fn view(list: &[(u8, ServerHealth)]) -> impl Fn(&ServerRef<'_>) -> ServerHealth + '_ {
    move |s: &ServerRef<'_>| {
        let v4 = match s.address {
            IpAddr::V6(_) => IpAddr::from([192, 0, 2, 9]),
            a => a,
        };
        list.iter()
            .find(|(o, _)| v4 == IpAddr::from([192, 0, 2, *o]))
            .map_or(ServerHealth::UP, |(_, h)| *h)
    }
}

fn up_since(t: SystemTime) -> ServerHealth {
    ServerHealth {
        healthy: true,
        healthy_since: Some(t),
    }
}

/// Last octets of the A candidates of `name` (every record of every candidate).
fn a_octets(snap: &Snapshot, name: &str) -> Vec<u8> {
    node(snap, name)
        .plans
        .iter()
        .find(|p| p.rtype == rtype::A)
        .map(|p| {
            p.candidates
                .iter()
                .flat_map(|c| c.rrset.as_ref().unwrap().rdata.iter().map(|r| r[3]))
                .collect()
        })
        .unwrap_or_default()
}

fn a_plan<'a>(snap: &'a Snapshot, name: &str) -> &'a AnswerPlan {
    node(snap, name)
        .plans
        .iter()
        .find(|p| p.rtype == rtype::A)
        .unwrap()
}

#[test]
fn max_answers_defaults_and_weight_zero() {
    let cfg = policies(|s| s);
    let c = Compiler::new().compile(&cfg, 1, 1, &AllHealthy, at(0));
    let snap = &c.snapshot;
    assert_eq!(
        a_plan(snap, "all.example.com").max_answers,
        0,
        "round-robin: all"
    );
    assert_eq!(
        a_plan(snap, "w.example.com").max_answers,
        1,
        "weighted: one"
    );
    assert_eq!(
        a_plan(snap, "fo.example.com").max_answers,
        1,
        "failover: one"
    );
    assert_eq!(a_plan(snap, "w.example.com").policy(), Policy::Weighted);
    // Weighted: one single-record candidate per server of positive weight.
    let w = a_plan(snap, "w.example.com");
    let got: Vec<(u8, u32)> = w
        .candidates
        .iter()
        .map(|c| (c.rrset.as_ref().unwrap().rdata[0][3], c.weight))
        .collect();
    assert_eq!(got, [(1, 10), (3, 5)]);
    // Failover keeps weight-0 servers, in config order across regions.
    assert_eq!(a_octets(snap, "fo.example.com"), [1, 2, 3, 9]);
    assert_eq!(a_octets(snap, "all.example.com"), [1, 2, 3]);
    assert!(c.all_down.is_empty() && c.recompile_at.is_none());

    let cfg = policies(|s| s.replace("when_all_down: all}", "when_all_down: all, max_answers: 2}"));
    let snap = Compiler::new()
        .compile(&cfg, 1, 1, &AllHealthy, at(0))
        .snapshot;
    assert_eq!(a_plan(&snap, "all.example.com").max_answers, 2);
}

#[test]
fn failover_order_and_failback_hold_down() {
    let cfg = policies(|s| s);
    let mut c = Compiler::new();
    let down = ServerHealth::DOWN;
    let fo = |c: &Compiled| a_octets(&c.snapshot, "fo.example.com");

    let r = c.compile(&cfg, 1, 1, &view(&[]), at(0));
    assert_eq!(fo(&r), [1, 2, 3, 9]);
    let r = c.compile(&cfg, 2, 2, &view(&[(1, down)]), at(10));
    assert_eq!(fo(&r), [2, 3, 9], "the primary left");
    assert_eq!(r.recompile_at, None);

    // The primary is back at t=20: held behind the serving servers for 30 s.
    let back = [(1, up_since(at(20)))];
    let r = c.compile(&cfg, 3, 3, &view(&back), at(20));
    assert_eq!(fo(&r), [2, 3, 9, 1]);
    assert_eq!(r.recompile_at, Some(at(50)));
    let r = c.compile(&cfg, 4, 4, &view(&back), at(49));
    assert_eq!(fo(&r), [2, 3, 9, 1]);
    assert_eq!(r.recompile_at, Some(at(50)));
    let r = c.compile(&cfg, 5, 5, &view(&back), at(50));
    assert_eq!(fo(&r), [1, 2, 3, 9], "hold-down over: back to the primary");
    assert_eq!(r.recompile_at, None);
    let r = c.compile(&cfg, 6, 6, &view(&back), at(60));
    assert_eq!(fo(&r), [1, 2, 3, 9], "stays on the primary");

    // It flaps: down, then up again at t=70 (a new healthy_since).
    c.compile(&cfg, 7, 7, &view(&[(1, down)]), at(65));
    let r = c.compile(&cfg, 8, 8, &view(&[(1, up_since(at(70)))]), at(70));
    assert_eq!(fo(&r), [2, 3, 9, 1]);
    assert_eq!(r.recompile_at, Some(at(100)));

    // Without failback_delay the return is immediate.
    let cfg0 = policies(|s| s.replace(", failback_delay: 30s", ""));
    let mut c = Compiler::new();
    c.compile(&cfg0, 1, 1, &view(&[(1, down)]), at(0));
    let r = c.compile(&cfg0, 2, 2, &view(&[(1, up_since(at(5)))]), at(5));
    assert_eq!(fo(&r), [1, 2, 3, 9]);
    assert_eq!(r.recompile_at, None);
}

#[test]
fn hold_down_never_displaces_the_serving_server() {
    let cfg = policies(|s| s);
    let down = ServerHealth::DOWN;
    let fo = |c: &Compiled| a_octets(&c.snapshot, "fo.example.com");
    // Start-up: everything freshly healthy; no memory, so no hold-down.
    let fresh: Vec<(u8, ServerHealth)> = [1, 2, 3, 9].map(|o| (o, up_since(at(0)))).to_vec();
    let r = Compiler::new().compile(&cfg, 1, 1, &view(&fresh), at(1));
    assert_eq!(fo(&r), [1, 2, 3, 9]);
    assert_eq!(r.recompile_at, None);

    // Everything down, then the standby comes back alone: it serves at once.
    let mut c = Compiler::new();
    let all_down = [(1, down), (2, down), (3, down), (9, down)];
    c.compile(&cfg, 1, 1, &view(&all_down), at(0));
    let standby = [(1, down), (2, down), (3, down), (9, up_since(at(10)))];
    let r = c.compile(&cfg, 2, 2, &view(&standby), at(10));
    assert_eq!(fo(&r), [9]);
    // The primary comes back 5 s later: the standby keeps serving until the
    // primary's hold-down ends, then the answer moves back.
    let both = [
        (1, up_since(at(15))),
        (2, down),
        (3, down),
        (9, up_since(at(10))),
    ];
    let r = c.compile(&cfg, 3, 3, &view(&both), at(15));
    assert_eq!(fo(&r), [9, 1]);
    assert_eq!(r.recompile_at, Some(at(45)));
    let r = c.compile(&cfg, 4, 4, &view(&both), at(45));
    assert_eq!(fo(&r), [1, 9]);
}

#[test]
fn when_all_down_modes() {
    let cfg = policies(|s| s);
    let down = ServerHealth::DOWN;
    let p_down = [(1, down), (2, down), (3, down)];
    let everything_down = [(1, down), (2, down), (3, down), (9, down)];

    // last_healthy remembers the last healthy set: here only .1 (.2 has
    // weight 0 and is never answered by a weighted name).
    let mut c = Compiler::new();
    c.compile(&cfg, 1, 1, &view(&[(3, down)]), at(0));
    let r = c.compile(&cfg, 2, 2, &view(&p_down), at(1));
    assert_eq!(a_octets(&r.snapshot, "w.example.com"), [1]);
    // ... across later compiles while everything stays down.
    let r = c.compile(&cfg, 3, 3, &view(&everything_down), at(2));
    assert_eq!(a_octets(&r.snapshot, "w.example.com"), [1]);
    assert_eq!(
        a_plan(&r.snapshot, "w.example.com").when_all_down(),
        WhenAllDown::LastHealthy
    );
    // all: every configured server of the family, one rotated RRset.
    assert_eq!(a_octets(&r.snapshot, "all.example.com"), [1, 2, 3]);
    // servfail (default): no candidates, for both families.
    let fo = node(&r.snapshot, "fo.example.com");
    assert_eq!(fo.plans.len(), 2);
    assert!(fo.plans.iter().all(|p| p.candidates.is_empty()));
    assert_eq!(
        r.all_down,
        [
            ("fo.example.com".to_owned(), "servfail"),
            ("w.example.com".to_owned(), "last_healthy"),
            ("all.example.com".to_owned(), "all"),
        ]
    );

    // Recovery clears the fallback and refreshes the memory.
    let r = c.compile(&cfg, 4, 4, &view(&[(1, down)]), at(3));
    assert_eq!(a_octets(&r.snapshot, "w.example.com"), [3]);
    assert!(r.all_down.is_empty());
    let r = c.compile(&cfg, 5, 5, &view(&p_down), at(4));
    assert_eq!(a_octets(&r.snapshot, "w.example.com"), [3]);

    // Never healthy: last_healthy behaves like all (positive weights only).
    let r = Compiler::new().compile(&cfg, 1, 1, &view(&p_down), at(0));
    assert_eq!(a_octets(&r.snapshot, "w.example.com"), [1, 3]);
}

#[test]
fn compiler_state_is_deterministic_and_forgets_removed_domains() {
    let cfg = policies(|s| s);
    let seq = |c: &mut Compiler| {
        let mut out = Vec::new();
        for (i, h) in [
            vec![(1, ServerHealth::DOWN)],
            vec![(1, up_since(at(3)))],
            vec![],
        ]
        .iter()
        .enumerate()
        {
            let i = i as u64;
            out.push(
                c.compile(&cfg, i, i as u32, &view(h), at(3 + i))
                    .snapshot
                    .encode_to_vec(),
            );
        }
        out
    };
    let (mut a, mut b) = (Compiler::new(), Compiler::new());
    assert_eq!(seq(&mut a), seq(&mut b));
    assert!(a.memory.len() >= 4);
    let fewer = policies(|s| {
        s.lines()
            .filter(|l| !l.contains("w.example.com") && !l.contains("all.example.com"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    a.compile(&fewer, 9, 9, &AllHealthy, at(9));
    assert_eq!(a.memory.len(), 2, "fo.example.com, A and AAAA");
}
