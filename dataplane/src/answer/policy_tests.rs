//! Routing policies through the real [`answer`](super::answer) path:
//! statistical spread of weighted and round-robin answers, failover order,
//! `max_answers`, and the routing-decision counters.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use opengslb_proto as proto;

use super::tests::{fixture, name, rrset};
use super::*;

/// Answers per statistical test.
const N: usize = 100_000;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

/// A plan of one single-record candidate per `(address, weight)`.
fn plan(policy: Policy, max_answers: u32, servers: &[(u8, u32)]) -> proto::AnswerPlan {
    proto::AnswerPlan {
        rtype: 1,
        policy: policy as i32,
        max_answers,
        candidates: servers
            .iter()
            .map(|&(last, weight)| proto::Candidate {
                rrset: Some(rrset(1, 30, vec![ip(last).octets().to_vec()])),
                weight,
                region: 0,
                geo_fallback: 0,
            })
            .collect(),
        when_all_down: WhenAllDown::Servfail as i32,
        ecs_max_prefix_v4: 0,
        ecs_max_prefix_v6: 0,
    }
}

/// The fixture zone plus `pol.gslb.test.` answering with `p`.
fn snap_with(p: proto::AnswerPlan) -> Snapshot {
    let mut s = fixture();
    s.nodes.push(proto::Node {
        name: name("pol.gslb.test."),
        zone: 0,
        rrsets: vec![],
        plans: vec![p],
        denial: vec![],
    });
    Snapshot::try_from(&s).unwrap()
}

fn query(n: &str) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Asks `pol.gslb.test. A` through `answer`; the reply's addresses.
fn ask(s: &Snapshot, q: &[u8], st: &mut WorkerState, out: &mut [u8]) -> (ResponseCode, Vec<u8>) {
    let n = answer(s, q, Transport::Udp, st, out).unwrap();
    let m = Message::from_vec(&out[..n]).unwrap();
    let addrs = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.octets()[3]),
            _ => None,
        })
        .collect();
    (m.metadata.response_code, addrs)
}

/// Share (percent) of `n` answers each address got, over `workers` workers.
fn shares(s: &Snapshot, n: usize, workers: u64) -> HashMap<u8, f64> {
    let q = query("pol.gslb.test.");
    let mut out = vec![0u8; 4096];
    let mut states: Vec<WorkerState> = (0..workers).map(WorkerState::with_seed).collect();
    let mut counts = HashMap::new();
    for i in 0..n {
        let w = states.len();
        let st = &mut states[i % w];
        let (rc, addrs) = ask(s, &q, st, &mut out);
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(addrs.len(), 1);
        *counts.entry(addrs[0]).or_insert(0u64) += 1;
    }
    counts
        .into_iter()
        .map(|(a, c)| (a, c as f64 * 100.0 / n as f64))
        .collect()
}

#[test]
fn weighted_follows_weights_within_two_points() {
    let servers = [(1, 500), (2, 300), (3, 150), (4, 50), (5, 0)];
    let s = snap_with(plan(Policy::Weighted, 1, &servers));
    let got = shares(&s, N, 4);
    let total: u32 = servers.iter().map(|s| s.1).sum();
    for (addr, w) in servers {
        let want = f64::from(w) * 100.0 / f64::from(total);
        let share = got.get(&addr).copied().unwrap_or(0.0);
        eprintln!("weighted: weight {w:>3}: want {want:5.2} %, got {share:5.2} %");
        assert!(
            (share - want).abs() <= 2.0,
            "weight {w}: {share:.2} % vs {want:.2} %"
        );
    }
    assert!(!got.contains_key(&5), "weight 0 answered");
}

#[test]
fn weighted_many_answers_are_distinct_and_never_weight_zero() {
    let servers = [(1, 10), (2, 0), (3, 1000), (4, 1), (5, 0)];
    let s = snap_with(plan(Policy::Weighted, 3, &servers));
    let q = query("pol.gslb.test.");
    let mut out = vec![0u8; 4096];
    let mut st = WorkerState::with_seed(9);
    let mut seen_low = false;
    for _ in 0..20_000 {
        let (rc, mut addrs) = ask(&s, &q, &mut st, &mut out);
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(addrs.len(), 3, "three positive candidates, max_answers 3");
        seen_low |= addrs[0] == 4;
        addrs.sort_unstable();
        assert_eq!(addrs, [1, 3, 4]);
    }
    assert!(seen_low, "the lightest candidate is drawn first sometimes");
    // More answers asked than positive candidates: every positive one, once.
    let s = snap_with(plan(Policy::Weighted, 0, &servers));
    let (_, mut addrs) = ask(&s, &q, &mut st, &mut out);
    addrs.sort_unstable();
    assert_eq!(addrs, [1, 3, 4]);
}

#[test]
fn weighted_all_zero_is_servfail() {
    let s = snap_with(plan(Policy::Weighted, 1, &[(1, 0), (2, 0)]));
    let (rc, addrs) = ask(
        &s,
        &query("pol.gslb.test."),
        &mut WorkerState::new(),
        &mut [0u8; 512],
    );
    assert_eq!(rc, ResponseCode::ServFail);
    assert!(addrs.is_empty());
}

#[test]
fn round_robin_spread_within_one_percent() {
    // One candidate of four addresses, one answered per query.
    let mut p = plan(Policy::RoundRobin, 1, &[]);
    p.candidates = vec![proto::Candidate {
        rrset: Some(rrset(
            1,
            30,
            (1..=4).map(|l| ip(l).octets().to_vec()).collect(),
        )),
        weight: 1,
        region: 0,
        geo_fallback: 0,
    }];
    let s = snap_with(p);
    let got = shares(&s, N, 3);
    for l in 1..=4 {
        let share = got.get(&l).copied().unwrap_or(0.0);
        eprintln!("round-robin: address {l}: {share:.2} %");
        assert!((share - 25.0).abs() <= 1.0, "address {l}: {share:.2} %");
    }
}

#[test]
fn failover_answers_the_first_candidates_in_order() {
    let servers = [(7, 1), (3, 1), (9, 1)];
    let q = query("pol.gslb.test.");
    let mut out = vec![0u8; 4096];
    let mut st = WorkerState::with_seed(1);
    let s = snap_with(plan(Policy::Failover, 1, &servers));
    for _ in 0..100 {
        assert_eq!(ask(&s, &q, &mut st, &mut out).1, [7]);
    }
    let s = snap_with(plan(Policy::Failover, 2, &servers));
    assert_eq!(ask(&s, &q, &mut st, &mut out).1, [7, 3]);
    let s = snap_with(plan(Policy::Failover, 0, &servers));
    assert_eq!(ask(&s, &q, &mut st, &mut out).1, [7, 3, 9]);
    // The weight plays no part in failover.
    let s = snap_with(plan(Policy::Failover, 1, &[(5, 0), (6, 9)]));
    assert_eq!(ask(&s, &q, &mut st, &mut out).1, [5]);
}

#[test]
fn empty_plans_follow_when_all_down() {
    let q = query("pol.gslb.test.");
    let mut out = vec![0u8; 4096];
    let mut st = WorkerState::new();
    for (mode, want) in [
        (WhenAllDown::Servfail, ResponseCode::ServFail),
        (WhenAllDown::All, ResponseCode::NoError),
        (WhenAllDown::LastHealthy, ResponseCode::NoError),
    ] {
        let mut p = plan(Policy::Failover, 1, &[]);
        p.when_all_down = mode as i32;
        let s = snap_with(p);
        let (rc, addrs) = ask(&s, &q, &mut st, &mut out);
        assert_eq!((rc, addrs.len()), (want, 0), "{mode:?}");
    }
}

#[test]
fn routing_decisions_are_counted_per_name_and_carried_over() {
    let s = snap_with(plan(Policy::Weighted, 1, &[(1, 1), (2, 1)]));
    let mut out = vec![0u8; 4096];
    let mut workers: Vec<WorkerState> = (0..20).map(WorkerState::with_seed).collect();
    for (i, st) in workers.iter_mut().enumerate() {
        for _ in 0..=i {
            ask(&s, &query("pol.gslb.test."), st, &mut out);
        }
    }
    // Not decisions: a static name, an unknown one.
    let mut st = WorkerState::new();
    answer(
        &s,
        &query("nope.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    answer(
        &s,
        &query("a.b.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    // www has A and AAAA plans: one counter.
    let aaaa = {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("www.gslb.test.").unwrap(),
            RecordType::AAAA,
        ));
        m.to_vec().unwrap()
    };
    answer(
        &s,
        &query("www.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    answer(&s, &aaaa, Transport::Tcp, &mut st, &mut out);

    let table = |s: &Snapshot| -> HashMap<String, (&'static str, u64)> {
        s.routing_decisions()
            .map(|(d, a, n)| (d.to_owned(), (a, n)))
            .collect()
    };
    let t = table(&s);
    assert_eq!(t["pol.gslb.test"], ("weighted", 210));
    assert_eq!(t["www.gslb.test"], ("round-robin", 2));
    assert_eq!(
        t["down.gslb.test"],
        ("round-robin", 0),
        "SERVFAIL is no decision"
    );
    assert!(!t.contains_key("a.b.gslb.test"));

    // The next snapshot keeps counting where this one stopped; a name whose
    // policy changed starts a new series.
    let mut next_proto = fixture();
    next_proto.generation = 43;
    next_proto.nodes.push(proto::Node {
        name: name("pol.gslb.test."),
        zone: 0,
        rrsets: vec![],
        plans: vec![plan(Policy::Failover, 1, &[(1, 1)])],
        denial: vec![],
    });
    let mut next = Snapshot::try_from(&next_proto).unwrap();
    next.adopt_counters(&s);
    answer(
        &s,
        &query("www.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    answer(
        &next,
        &query("www.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    let t = table(&next);
    assert_eq!(t["www.gslb.test"], ("round-robin", 4));
    assert_eq!(t["pol.gslb.test"], ("failover", 0));
}

#[test]
fn counters_and_names_survive_the_handle() {
    let handle =
        crate::handle::SnapshotHandle::new(snap_with(plan(Policy::Failover, 1, &[(1, 1)])), false);
    let mut out = vec![0u8; 4096];
    let mut st = WorkerState::new();
    answer(
        &handle.load_full(),
        &query("pol.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    let mut p = fixture();
    p.generation = 99;
    p.nodes.push(proto::Node {
        name: name("pol.gslb.test."),
        zone: 0,
        rrsets: vec![],
        plans: vec![plan(Policy::Failover, 1, &[(2, 1)])],
        denial: vec![],
    });
    assert!(handle.store(Snapshot::try_from(&p).unwrap()));
    let now = handle.load_full();
    answer(
        &now,
        &query("pol.gslb.test."),
        Transport::Udp,
        &mut st,
        &mut out,
    );
    let n = now
        .routing_decisions()
        .find(|(d, _, _)| *d == "pol.gslb.test")
        .map(|(_, _, n)| n);
    assert_eq!(n, Some(2));
}
