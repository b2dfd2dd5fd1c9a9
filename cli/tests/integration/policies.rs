//! Routing policies end to end: weighted, failover and round-robin names
//! answered by the real binaries over UDP (regions with `health_check: none`,
//! so every server is healthy; health-driven failover is in `health.rs`).

use std::collections::BTreeMap;

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

use crate::harness::*;

const REGIONS: &str = "regions:
  - name: wpool
    servers:
      - {address: 203.0.113.1, weight: 700}
      - {address: 203.0.113.2, weight: 300}
      - {address: 203.0.113.3, weight: 0}
    health_check: {type: none}
  - name: primary
    servers:
      - {address: 203.0.113.11}
      - {address: 203.0.113.12}
    health_check: {type: none}
  - name: standby
    servers:
      - {address: 203.0.113.21}
    health_check: {type: none}
";

const DOMAINS: &str = "domains:
  - {name: w.gslb.test, routing_algorithm: weighted, regions: [wpool]}
  - {name: w2.gslb.test, routing_algorithm: weight, regions: [wpool], max_answers: 5}
  - {name: fo.gslb.test, routing_algorithm: failover, regions: [standby, primary]}
  - {name: fo2.gslb.test, routing_algorithm: active-standby, regions: [primary, standby], max_answers: 2}
  - {name: rr2.gslb.test, routing_algorithm: round-robin, regions: [primary, standby], max_answers: 2}
";

fn start() -> Gslb {
    Gslb::start_with(|c| {
        c.replacen("regions:\n", REGIONS, 1)
            .replacen("domains:\n", DOMAINS, 1)
    })
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn ask(g: &Gslb, name: &str) -> Vec<String> {
    let m = g.udp(&query(name, RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m}");
    assert!(m.metadata.authoritative);
    addrs(&m)
}

#[test]
fn weighted_follows_weights_and_never_answers_weight_zero() {
    let g = start();
    let n = 2_000;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        let a = ask(&g, "w.gslb.test.");
        assert_eq!(a.len(), 1, "weighted answers one address by default");
        *counts.entry(a[0].clone()).or_default() += 1;
    }
    let share = |a: &str| f64::from(counts.get(a).copied().unwrap_or(0)) * 100.0 / f64::from(n);
    eprintln!("weighted over {n} UDP answers: {counts:?}");
    assert!((share("203.0.113.1") - 70.0).abs() <= 5.0, "{counts:?}");
    assert!((share("203.0.113.2") - 30.0).abs() <= 5.0, "{counts:?}");
    assert!(!counts.contains_key("203.0.113.3"), "weight 0 answered");

    // max_answers 5 over two positive servers: both, distinct, never the third.
    for _ in 0..50 {
        let mut a = ask(&g, "w2.gslb.test.");
        a.sort();
        assert_eq!(a, ["203.0.113.1", "203.0.113.2"]);
    }

    // Each answer counts one routing decision for the name.
    let metric = "opengslb_routing_decisions_total{domain=\"w.gslb.test\",algorithm=\"weighted\"}";
    let decisions = g.dp_metric(metric).unwrap_or(0.0);
    assert!(decisions >= f64::from(n), "{metric} = {decisions}");
    let fo = "opengslb_routing_decisions_total{domain=\"fo.gslb.test\",algorithm=\"failover\"}";
    assert_eq!(g.dp_metric(fo), Some(0.0), "configured names are listed");
}

#[test]
fn failover_answers_the_first_server_and_max_answers_is_honoured() {
    let g = start();
    for _ in 0..50 {
        // Domain region order first: standby is listed before primary.
        assert_eq!(ask(&g, "fo.gslb.test."), ["203.0.113.21"]);
        assert_eq!(ask(&g, "fo2.gslb.test."), ["203.0.113.11", "203.0.113.12"]);
    }
    // Round-robin with max_answers 2: two of the three, rotating.
    let mut firsts = BTreeMap::new();
    for _ in 0..30 {
        let a = ask(&g, "rr2.gslb.test.");
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        *firsts.entry(a[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(firsts.len(), 3, "rotation reaches every server: {firsts:?}");
    // Default round-robin still answers every healthy server.
    assert_eq!(
        g.udp(&query("www.gslb.test.", RecordType::A)).answers.len(),
        3
    );
}
