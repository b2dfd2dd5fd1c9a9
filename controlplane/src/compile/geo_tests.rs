//! Geolocation region sets (fallback resolved here) and the latency choice.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use opengslb_proto::{rtype, GeoFallback, Policy};

use super::*;
use crate::config;
use crate::dnssec::{Algorithm, KeyRole, ZoneKey};

const CFG: &str = "\
dns:
  zones:
    - name: example.com
regions:
  - name: us
    countries: [US]
    servers: [{address: 192.0.2.1}, {address: 192.0.2.2}]
  - name: eu
    countries: [DE]
    fallback: [us]
    servers: [{address: 192.0.2.3}]
  - name: asia
    continents: [AS]
    fallback: [eu]
    servers: [{address: 192.0.2.4}]
  - name: lab
    servers: [{address: 192.0.2.9}]
domains:
  - name: geo.example.com
    routing_algorithm: geo
    regions: [us, eu, asia]
    ecs_max_prefix_v4: 20
  - name: lat.example.com
    routing_algorithm: latency
    regions: [us, eu]
    latency_config: {max_latency_ms: 100, min_samples: 3, tolerance_ms: 5}
overwatch:
  geolocation:
    default_region: eu
    custom_mappings:
      - {cidr: 198.51.100.0/24, region: lab}
";

fn cfg() -> Config {
    config::parse(CFG, Path::new("geo.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Health and latency by the server's last octet.
struct View {
    down: Vec<u8>,
    latency: HashMap<u8, (u64, u64)>,
}

impl HealthView for View {
    fn health(&self, s: &ServerRef<'_>) -> ServerHealth {
        if self.down.contains(&last(s.address)) {
            ServerHealth::DOWN
        } else {
            ServerHealth::UP
        }
    }

    fn latency(&self, s: &ServerRef<'_>) -> Option<LatencySample> {
        self.latency
            .get(&last(s.address))
            .map(|&(ms, samples)| LatencySample {
                ema: Duration::from_millis(ms),
                samples,
            })
    }
}

fn last(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    }
}

fn view(down: &[u8], latency: &[(u8, u64, u64)]) -> View {
    View {
        down: down.to_vec(),
        latency: latency.iter().map(|&(l, ms, n)| (l, (ms, n))).collect(),
    }
}

fn plan_of<'a>(c: &'a Compiled, name: &str) -> &'a AnswerPlan {
    let w = DnsName::parse(name).unwrap().to_wire();
    let node = c.snapshot.nodes.iter().find(|n| n.name == w).unwrap();
    node.plans.iter().find(|p| p.rtype == rtype::A).unwrap()
}

fn lasts(rrset: &RRset) -> Vec<u8> {
    rrset.rdata.iter().map(|r| r[3]).collect()
}

/// (region, fallback reason, last octets) of each candidate.
fn regions(p: &AnswerPlan) -> Vec<(u32, GeoFallback, Vec<u8>)> {
    p.candidates
        .iter()
        .map(|c| (c.region, c.geo_fallback(), lasts(c.rrset.as_ref().unwrap())))
        .collect()
}

fn compile_with(v: &View) -> Compiled {
    Compiler::new().compile(&cfg(), 1, 1, v, SystemTime::UNIX_EPOCH)
}

#[test]
fn every_region_gets_its_healthy_set() {
    let c = compile_with(&view(&[], &[]));
    let p = plan_of(&c, "geo.example.com");
    assert_eq!(p.policy(), Policy::Geolocation);
    assert_eq!(p.max_answers, 0, "the region's whole set by default");
    assert_eq!((p.ecs_max_prefix_v4, p.ecs_max_prefix_v6), (20, 56));
    assert_eq!(
        regions(p),
        vec![
            (GEO_ANY_REGION, GeoFallback::None, vec![1, 2, 3, 4]),
            (0, GeoFallback::None, vec![1, 2]),
            (1, GeoFallback::None, vec![3]),
            (2, GeoFallback::None, vec![4]),
        ]
    );
    // The table: regions of the config, the custom mapping, default eu.
    let geo = c.snapshot.geo.as_ref().unwrap();
    assert_eq!(geo.regions, vec!["us", "eu", "asia", "lab"]);
    assert_eq!(geo.default_region, Some(1));
    assert_eq!(geo.v4.len(), 1);
    assert_eq!(
        (geo.v4[0].start.clone(), geo.v4[0].region),
        (vec![198, 51, 100, 0], 3)
    );
}

#[test]
fn fallback_regions_then_every_healthy_server() {
    // eu down: its clients get us (its fallback).
    let c = compile_with(&view(&[3], &[]));
    let r = regions(plan_of(&c, "geo.example.com"));
    assert!(
        r.contains(&(1, GeoFallback::RegionDown, vec![1, 2])),
        "{r:?}"
    );
    assert!(r.contains(&(2, GeoFallback::None, vec![4])), "{r:?}");
    // eu and asia down: asia's fallback (eu) has none, so every healthy
    // server; eu still falls back to us.
    let c = compile_with(&view(&[3, 4], &[]));
    let r = regions(plan_of(&c, "geo.example.com"));
    assert!(
        r.contains(&(1, GeoFallback::RegionDown, vec![1, 2])),
        "{r:?}"
    );
    assert!(
        r.contains(&(2, GeoFallback::Exhausted, vec![1, 2])),
        "{r:?}"
    );
    assert_eq!(r[0], (GEO_ANY_REGION, GeoFallback::None, vec![1, 2]));
    // All down under servfail: no candidate at all.
    let c = compile_with(&view(&[1, 2, 3, 4], &[]));
    assert!(plan_of(&c, "geo.example.com").candidates.is_empty());
}

#[test]
fn unchanged_geo_table_keeps_its_generation_across_compiles() {
    let mut compiler = Compiler::new();
    let cfg = cfg();
    let a = compiler.compile(&cfg, 10, 1, &view(&[], &[]), SystemTime::UNIX_EPOCH);
    let b = compiler.compile(&cfg, 20, 2, &view(&[3], &[]), SystemTime::UNIX_EPOCH);
    assert_eq!(a.geo.generation, 10);
    assert_eq!(b.geo.generation, 10, "a health change keeps the table");
    assert!(crate::stream::diff(&a.snapshot, &b.snapshot).geo.is_none());
    compiler.set_geo_mappings(Arc::new(vec![GeoMappingRow {
        cidr: "203.0.113.0/24".into(),
        region: "asia".into(),
        comment: String::new(),
        created_at_unix_ms: 0,
    }]));
    let c = compiler.compile(&cfg, 30, 3, &view(&[3], &[]), SystemTime::UNIX_EPOCH);
    assert_eq!(c.geo.generation, 30);
    let d = crate::stream::diff(&b.snapshot, &c.snapshot);
    assert_eq!(d.geo.map(|g| g.v4.len()), Some(2), "the new table travels");
    assert_eq!(
        c.geo
            .table
            .lookup(Ipv4Addr::new(203, 0, 113, 9).into())
            .region,
        Some(2)
    );
}

#[test]
fn every_geo_region_set_is_signed() {
    let cfg = cfg();
    let keys = cfg
        .dns
        .zones
        .iter()
        .map(|z| {
            ZoneKey::generate(&z.name, KeyRole::Csk, Algorithm::EcdsaP256Sha256, 1)
                .unwrap()
                .0
        })
        .collect();
    let mut compiler = Compiler::with_dnssec(Dnssec::with_keys(keys));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let c = compiler.compile(&cfg, 1, 1, &view(&[3], &[]), now);
    let p = plan_of(&c, "geo.example.com");
    assert!(p.candidates.len() >= 4);
    for cand in &p.candidates {
        let set = cand.rrset.as_ref().unwrap();
        assert_eq!(set.rrsig.len(), 1, "region {} signed", cand.region);
    }
}

#[test]
fn latency_picks_the_fastest_with_ties_and_limits() {
    let name = "lat.example.com";
    // .1 fastest (10 ms), .2 within tolerance (14 ms), .3 slower (30 ms).
    let c = compile_with(&view(&[], &[(1, 10, 5), (2, 14, 5), (3, 30, 5)]));
    let p = plan_of(&c, name);
    assert_eq!(p.policy(), Policy::Latency);
    assert_eq!(p.max_answers, 1);
    // max_answers 1: one candidate per rotation of the tie group.
    let sets: Vec<Vec<u8>> = regions(p).into_iter().map(|r| r.2).collect();
    assert_eq!(sets, vec![vec![1], vec![2]], "ties spread by rotation");
    let r = &c.latency[0];
    assert_eq!(r.domain, name);
    assert_eq!(
        r.selected,
        vec![
            ("192.0.2.1".to_owned(), 10.0),
            ("192.0.2.2".to_owned(), 14.0)
        ]
    );
    assert!(r.rejected.is_empty() && r.fallback.is_none());

    // Over max_latency_ms: excluded; too few samples: not ranked.
    let c = compile_with(&view(&[], &[(1, 150, 5), (2, 40, 2), (3, 60, 9)]));
    assert_eq!(sets_of(&c, name), vec![vec![3]]);
    assert_eq!(
        c.latency[0].rejected,
        vec![("too_slow", 1), ("insufficient_samples", 1)]
    );

    // Nobody ranked: round-robin over the healthy ones not known slow.
    let c = compile_with(&view(&[], &[(1, 150, 5), (2, 40, 1)]));
    assert_eq!(sets_of(&c, name), vec![vec![2], vec![3]]);
    assert_eq!(c.latency[0].fallback, Some("insufficient_samples"));

    // Everyone too slow: all of them, said so.
    let c = compile_with(&view(&[], &[(1, 150, 5), (2, 150, 5), (3, 150, 5)]));
    assert_eq!(sets_of(&c, name), vec![vec![1], vec![2], vec![3]]);
    assert_eq!(c.latency[0].fallback, Some("all_too_slow"));

    // Down servers never count, however fast.
    let c = compile_with(&view(&[1], &[(1, 1, 5), (2, 20, 5), (3, 22, 5)]));
    assert_eq!(sets_of(&c, name), vec![vec![2], vec![3]]);
}

/// The record sets (last octets, in order) of each candidate of `name`.
fn sets_of(c: &Compiled, name: &str) -> Vec<Vec<u8>> {
    regions(plan_of(c, name)).into_iter().map(|r| r.2).collect()
}

/// The latency domain compiled with `max_answers` under `v`.
fn latency_with(max_answers: u32, v: &View) -> (Vec<Vec<u8>>, LatencyReport) {
    let text = CFG.replace(
        "    latency_config: {max_latency_ms: 100",
        &format!("    max_answers: {max_answers}\n    latency_config: {{max_latency_ms: 100"),
    );
    let cfg = config::parse(&text, Path::new("geo.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let c = Compiler::new().compile(&cfg, 1, 1, v, SystemTime::UNIX_EPOCH);
    let p = plan_of(&c, "lat.example.com");
    assert_eq!(p.max_answers, max_answers);
    (sets_of(&c, "lat.example.com"), c.latency[0].clone())
}

#[test]
fn latency_fills_max_answers_in_latency_order_after_the_tie_group() {
    // .1 10 ms and .2 14 ms tie; .3 (30 ms) is next.
    let v = view(&[], &[(1, 10, 5), (2, 14, 5), (3, 30, 5)]);
    // Room for three: the tie group rotated, then .3.
    let (sets, report) = latency_with(3, &v);
    assert_eq!(sets, vec![vec![1, 2, 3], vec![2, 1, 3]]);
    let selected: Vec<&str> = report.selected.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(selected, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    // Room for two: the tie group fills it; nothing is added.
    assert_eq!(latency_with(2, &v).0, vec![vec![1, 2], vec![2, 1]]);
    // No tie: the fastest, then the rest by latency (not config order).
    let v = view(&[], &[(1, 10, 5), (2, 40, 5), (3, 30, 5)]);
    assert_eq!(latency_with(2, &v).0, vec![vec![1, 3]]);
    // 0 = no limit: every ranked server, fastest first.
    assert_eq!(latency_with(0, &v).0, vec![vec![1, 3, 2]]);
    // Never a server that is too slow or unranked.
    let v = view(&[], &[(1, 10, 5), (2, 400, 5), (3, 30, 1)]);
    assert_eq!(latency_with(3, &v).0, vec![vec![1]]);
    // Not enough samples anywhere: round-robin, each rotation cut to max_answers.
    let v = view(&[], &[]);
    assert_eq!(
        latency_with(2, &v).0,
        vec![vec![1, 2], vec![2, 3], vec![3, 1]]
    );
}

/// `geo.example.com` with `region_selection: weighted`; us .1 weight 1,
/// .2 weight 3; eu .3 weight 0 (never answered); asia .4 weight 5.
fn weighted_cfg() -> Config {
    let text = CFG
        .replace(
            "servers: [{address: 192.0.2.1}, {address: 192.0.2.2}]",
            "servers: [{address: 192.0.2.1, weight: 1}, {address: 192.0.2.2, weight: 3}]",
        )
        .replace(
            "servers: [{address: 192.0.2.3}]",
            "servers: [{address: 192.0.2.3, weight: 0}]",
        )
        .replace(
            "servers: [{address: 192.0.2.4}]",
            "servers: [{address: 192.0.2.4, weight: 5}]",
        )
        .replace(
            "    ecs_max_prefix_v4: 20\n",
            "    ecs_max_prefix_v4: 20\n    region_selection: weighted\n",
        );
    config::parse(&text, Path::new("geo.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// (region, fallback reason, last octet, weight) of each candidate.
fn weighted_rows(p: &AnswerPlan) -> Vec<(u32, GeoFallback, Vec<u8>, u32)> {
    p.candidates
        .iter()
        .map(|c| {
            (
                c.region,
                c.geo_fallback(),
                lasts(c.rrset.as_ref().unwrap()),
                c.weight,
            )
        })
        .collect()
}

#[test]
fn weighted_region_selection_gives_one_weighted_candidate_per_server() {
    let cfg = weighted_cfg();
    assert_eq!(cfg.domains[0].region_selection, RegionSelection::Weighted);
    let c = Compiler::new().compile(&cfg, 1, 1, &view(&[], &[]), SystemTime::UNIX_EPOCH);
    let p = plan_of(&c, "geo.example.com");
    assert_eq!(p.max_answers, 1, "drawn by weight: one server by default");
    use GeoFallback::{Exhausted, None as Own, RegionDown};
    assert_eq!(
        weighted_rows(p),
        vec![
            (GEO_ANY_REGION, Own, vec![1], 1),
            (GEO_ANY_REGION, Own, vec![2], 3),
            (GEO_ANY_REGION, Own, vec![4], 5),
            (0, Own, vec![1], 1),
            (0, Own, vec![2], 3),
            // eu's only server has weight 0: eu falls back to us.
            (1, RegionDown, vec![1], 1),
            (1, RegionDown, vec![2], 3),
            (2, Own, vec![4], 5),
        ]
    );
    // us and eu's fallback down too: asia draws alone, eu and us (no
    // fallback left) get every servable healthy server, still weighted.
    let c = Compiler::new().compile(&cfg, 1, 1, &view(&[1, 2], &[]), SystemTime::UNIX_EPOCH);
    assert_eq!(
        weighted_rows(plan_of(&c, "geo.example.com")),
        vec![
            (GEO_ANY_REGION, Own, vec![4], 5),
            (0, Exhausted, vec![4], 5),
            (1, Exhausted, vec![4], 5),
            (2, Own, vec![4], 5),
        ]
    );
}

#[test]
fn weighted_region_selection_signs_every_single_record_candidate() {
    let cfg = weighted_cfg();
    let keys = cfg
        .dns
        .zones
        .iter()
        .map(|z| {
            ZoneKey::generate(&z.name, KeyRole::Csk, Algorithm::EcdsaP256Sha256, 1)
                .unwrap()
                .0
        })
        .collect();
    let mut compiler = Compiler::with_dnssec(Dnssec::with_keys(keys));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let c = compiler.compile(&cfg, 1, 1, &view(&[], &[]), now);
    let p = plan_of(&c, "geo.example.com");
    assert_eq!(p.candidates.len(), 8);
    for cand in &p.candidates {
        let set = cand.rrset.as_ref().unwrap();
        assert_eq!(set.rdata.len(), 1);
        assert_eq!(set.rrsig.len(), 1, "region {} record signed", cand.region);
    }
}
