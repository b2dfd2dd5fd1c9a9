//! The incremental compile against the full one: after every random health
//! or override change, the snapshot it keeps (and the previous one with
//! its delta applied, as a dataplane does) equals a full compile's.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opengslb_proto::{RRset, Snapshot, SnapshotDelta};

use super::*;
use crate::compile::{Compiler, HealthView, ServerHealth};
use crate::config::{self, DnsName, ServerRef};
use crate::dnssec::{Algorithm, Dnssec, KeyRole, ZoneKey};

const CONFIG: &str = "\
dns:
  default_ttl: 60
  zones:
    - name: example.com
      records:
        - {name: example.com, type: TXT, value: \"v=spf1 -all\"}
        - {name: static.example.com, type: A, value: 192.0.2.200}
    - other.test
regions:
  - name: p
    servers:
      - {address: 192.0.2.1, weight: 10}
      - {address: 192.0.2.2, weight: 5}
      - {address: 192.0.2.3, weight: 1}
      - {address: \"2001:db8::1\"}
  - name: s
    servers: [{address: 192.0.2.9}, {address: \"2001:db8::9\"}]
  - name: solo
    servers: [{address: 198.51.100.1}, {address: 198.51.100.2}]
domains:
  - {name: rr.example.com, routing_algorithm: round-robin, regions: [p], ttl: 30}
  - {name: w.deep.example.com, routing_algorithm: weighted, regions: [p, s], when_all_down: last_healthy}
  - {name: fo.example.com, routing_algorithm: failover, regions: [p, s], max_answers: 2, failback_delay: 30s}
  - {name: all.example.com, routing_algorithm: round-robin, regions: [s], when_all_down: all}
  - {name: solo.example.com, routing_algorithm: weighted, regions: [solo]}
  - {name: www.other.test, routing_algorithm: failover, regions: [solo, p]}
  - {name: example.com, routing_algorithm: round-robin, regions: [s]}
";

fn cfg() -> Arc<Config> {
    Arc::new(config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}")))
}

/// Ed25519 signatures are deterministic: equal inputs, equal RRSIGs.
fn keys(cfg: &Config) -> Dnssec {
    Dnssec::with_keys(
        cfg.dns
            .zones
            .iter()
            .map(|z| {
                ZoneKey::generate(&z.name, KeyRole::Csk, Algorithm::Ed25519, 1)
                    .unwrap()
                    .0
            })
            .collect(),
    )
}

/// Health per address (with `healthy_since`), and overrides per
/// (domain, address).
#[derive(Default, Clone)]
struct View {
    health: HashMap<IpAddr, ServerHealth>,
    overrides: HashMap<(String, IpAddr), bool>,
}

impl HealthView for View {
    fn health(&self, s: &ServerRef<'_>) -> ServerHealth {
        self.health
            .get(&s.address)
            .copied()
            .unwrap_or(ServerHealth::UP)
    }
    fn unprobed(&self, s: &ServerRef<'_>) -> ServerHealth {
        self.health(s)
    }
    fn overridden(&self, domain: &DnsName, s: &ServerRef<'_>) -> Option<ServerHealth> {
        self.overrides
            .get(&(domain.to_string(), s.address))
            .map(|&up| {
                if up {
                    ServerHealth::UP
                } else {
                    ServerHealth::DOWN
                }
            })
    }
}

/// xorshift64: reproducible without a dependency.
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

fn addresses(cfg: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cfg
        .regions
        .iter()
        .flat_map(|r| r.servers.iter().map(|s| s.address))
        .collect();
    v.dedup();
    v
}

/// One random change: a server's health (sometimes with a recent
/// `healthy_since`, for the failback hold-down) or an override.
fn mutate(rng: &mut Rng, view: &mut View, cfg: &Config, now: SystemTime) {
    let addrs = addresses(cfg);
    let a = addrs[rng.below(addrs.len())];
    match rng.below(4) {
        0 | 1 => {
            let up = view.health.get(&a).is_none_or(|h| h.healthy);
            view.health.insert(
                a,
                if up {
                    ServerHealth::DOWN
                } else {
                    ServerHealth {
                        healthy: true,
                        healthy_since: (rng.below(2) == 0).then_some(now),
                    }
                },
            );
        }
        2 => {
            let d = &cfg.domains[rng.below(cfg.domains.len())];
            let key = (d.name.to_string(), a);
            if view.overrides.remove(&key).is_none() {
                view.overrides.insert(key, rng.below(2) == 0);
            }
        }
        _ => {} // no change at all: an empty delta
    }
}

/// What a dataplane does with a delta (`dataplane/src/delta.rs`).
fn apply(mut base: Snapshot, d: &SnapshotDelta) -> Snapshot {
    assert_eq!(d.base_generation, base.generation);
    assert!(d.remove_nodes.is_empty() && d.geo.is_none() && d.options.is_none());
    base.generation = d.generation;
    for z in &d.zones {
        let slot = base.zones.iter_mut().find(|x| x.apex == z.apex).unwrap();
        *slot = z.clone();
    }
    for n in &d.upsert_nodes {
        let slot = base.nodes.iter_mut().find(|x| x.name == n.name).unwrap();
        *slot = n.clone();
    }
    base
}

/// Panics naming the first part where `a` and `b` differ.
fn same(a: &Snapshot, b: &Snapshot, what: &str) {
    for (x, y) in a.zones.iter().zip(&b.zones) {
        assert_eq!(
            x,
            y,
            "{what}: zone {:?}",
            crate::dnssec::presentation(&x.apex)
        );
    }
    assert_eq!(a.nodes.len(), b.nodes.len(), "{what}: node count");
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        if x != y {
            let name = crate::dnssec::presentation(&x.name);
            assert_eq!(x.plans, y.plans, "{what}: plans of {name}");
            assert_eq!(x, y, "{what}: node {name}");
        }
    }
    assert_eq!(a, b, "{what}");
}

fn strip(mut s: Snapshot) -> Snapshot {
    let clear = |r: &mut RRset| r.rrsig.clear();
    for z in &mut s.zones {
        z.soa.as_mut().map(clear);
        z.ns.as_mut().map(clear);
        z.dnskey.as_mut().map(clear);
    }
    for n in &mut s.nodes {
        n.rrsets.iter_mut().for_each(clear);
        n.denial.iter_mut().for_each(clear);
        for p in &mut n.plans {
            for c in &mut p.candidates {
                c.rrset.as_mut().map(clear);
            }
        }
    }
    s
}

/// Runs `steps` random changes; `tick` is how far the clock moves per
/// step. Returns (deltas published, domains re-planned in deltas).
fn run(seed: u64, steps: usize, tick: Duration) -> (usize, usize) {
    let cfg = cfg();
    let dnssec = keys(&cfg);
    let mut inc = Compiler::with_dnssec(dnssec.clone());
    let mut full = Compiler::with_dnssec(dnssec.clone());
    let mut rng = Rng(seed);
    let mut view = View::default();
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut prev: Option<Snapshot> = None;
    let (mut deltas, mut replanned) = (0, 0);
    let exact = tick.is_zero();
    for step in 0..steps {
        if step > 0 {
            mutate(&mut rng, &mut view, &cfg, now);
        }
        let (g, serial) = (step as u64 + 1, step as u32 + 1);
        let u = inc.compile_update(&cfg, g, serial, &view, now);
        let f = full.compile(&cfg, g, serial, &view, now);
        let got = match &u.published {
            Published::Full(s) => {
                assert_eq!(
                    step, 0,
                    "seed {seed} step {step}: full compile after a health change"
                );
                s.clone()
            }
            Published::Delta(d) => {
                deltas += 1;
                replanned += u.replanned;
                assert!(d.upsert_nodes.len() <= u.replanned);
                apply(prev.take().unwrap(), d)
            }
        };
        assert_eq!(
            inc.last_snapshot(),
            Some(&got),
            "seed {seed} step {step}: kept != published"
        );
        if exact {
            same(
                &got,
                &f.snapshot,
                &format!("seed {seed} step {step}: incremental != full"),
            );
        } else {
            same(
                &strip(got.clone()),
                &strip(f.snapshot.clone()),
                &format!("seed {seed} step {step}"),
            );
        }
        assert_eq!(u.all_down, f.all_down, "seed {seed} step {step}");
        assert_eq!(u.latency, f.latency, "seed {seed} step {step}");
        assert_eq!(
            u.recompile_at.is_some(),
            f.recompile_at.is_some(),
            "seed {seed} step {step}"
        );
        if exact {
            assert_eq!(u.recompile_at, f.recompile_at, "seed {seed} step {step}");
        }
        prev = Some(got);
        now += tick;
    }
    (deltas, replanned)
}

#[test]
fn incremental_equals_full_after_random_changes() {
    for seed in 1..=12u64 {
        let (deltas, replanned) = run(seed * 0x9e37_79b9, 40, Duration::ZERO);
        assert_eq!(deltas, 39);
        // Only the domains whose servers changed (plus held failovers) are
        // compiled again; 7 domains × 39 changes would be every one.
        assert!(
            replanned < 7 * 39,
            "seed {seed}: {replanned} domains re-planned"
        );
    }
}

#[test]
fn incremental_equals_full_as_time_passes() {
    // Hold-downs start and end (30 s, 7 s a step); signatures made at
    // different times differ, so RRSIGs are compared by count only.
    for seed in 1..=8u64 {
        run(seed * 0x2545_f491, 40, Duration::from_secs(7));
    }
}

#[test]
fn one_change_replans_one_domain_and_signs_only_it() {
    let cfg = cfg();
    let dnssec = keys(&cfg);
    let mut c = Compiler::with_dnssec(dnssec.clone());
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut view = View::default();
    assert!(matches!(
        c.compile_update(&cfg, 1, 1, &view, now).published,
        Published::Full(_)
    ));
    view.health
        .insert(IpAddr::from([198, 51, 100, 1]), ServerHealth::DOWN);
    let u = c.compile_update(&cfg, 2, 2, &view, now);
    let Published::Delta(d) = u.published else {
        panic!("expected a delta");
    };
    // solo and www.other.test use 198.51.100.1.
    assert_eq!(u.replanned, 2);
    let names: HashSet<Vec<u8>> = d.upsert_nodes.iter().map(|n| n.name.clone()).collect();
    let want: HashSet<Vec<u8>> = ["solo.example.com", "www.other.test"]
        .iter()
        .map(|n| DnsName::parse(n).unwrap().to_wire())
        .collect();
    assert_eq!(names, want);
    assert_eq!(d.zones.len(), 2, "every zone's SOA serial moved");
    assert!(d
        .zones
        .iter()
        .all(|z| z.soa.as_ref().is_some_and(|s| !s.rrsig.is_empty())));
    // Two SOAs; the candidates left were signed before.
    assert_eq!(dnssec.stats().signed_last, 2);
    // A new Arc<Config> (a reload) compiles in full.
    let reloaded = Arc::new((*cfg).clone());
    assert!(matches!(
        c.compile_update(&reloaded, 3, 3, &view, now).published,
        Published::Full(_)
    ));
}
