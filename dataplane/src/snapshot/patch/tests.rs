//! A patched snapshot answers exactly as the full compile of the same
//! proto snapshot: random signed zones, random deltas (health, weights,
//! records, signatures, SOA, apex, options), chained, every name × type ×
//! DO × transport compared octet for octet.

use opengslb_proto as proto;

use crate::answer::tests::{name, rrset};
use crate::answer::{answer, Transport, WorkerState};
use crate::snapshot::Snapshot;
use crate::wire;

/// A small deterministic generator (tests only).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A placeholder RRSIG RDATA (parses as one; `tag` tells versions apart).
fn sig(tag: u8) -> Vec<u8> {
    let mut r = vec![0u8; 30];
    r[16] = tag;
    r[17] = tag.wrapping_mul(7);
    r
}

fn soa(serial: u32) -> Vec<u8> {
    let mut r = name("ns1.z.test.");
    r.extend(name("hostmaster.z.test."));
    for v in [serial, 3600, 600, 86400, 60] {
        r.extend(v.to_be_bytes());
    }
    r
}

fn signed(rtype: u32, ttl: u32, rdata: Vec<Vec<u8>>, tag: u8) -> proto::RRset {
    proto::RRset {
        rrsig: vec![sig(tag)],
        ..rrset(rtype, ttl, rdata)
    }
}

fn zone(serial: u32, tag: u8) -> proto::Zone {
    proto::Zone {
        apex: name("z.test."),
        soa: Some(signed(6, 3600, vec![soa(serial)], tag)),
        ns: Some(signed(2, 3600, vec![name("ns1.z.test.")], tag)),
        dnskey: Some(signed(48, 3600, vec![vec![1, 1, 3, 13, 9, 9, tag]], tag)),
        negative_ttl: 60,
        nsec3: None,
    }
}

/// A random plan of type `t` (A or AAAA) for a name.
fn plan(rng: &mut Lcg, t: u32, policy: proto::Policy, tag: u8) -> proto::AnswerPlan {
    let addr = |rng: &mut Lcg| -> Vec<u8> {
        let len = if t == 1 { 4 } else { 16 };
        (0..len).map(|_| rng.below(256) as u8).collect()
    };
    let candidates = (0..1 + rng.below(4))
        .map(|_| {
            let n = rng.below(4);
            let rdata: Vec<Vec<u8>> = (0..n).map(|_| addr(rng)).collect();
            proto::Candidate {
                rrset: Some(if rdata.is_empty() {
                    rrset(t, 30, vec![])
                } else {
                    signed(t, 30, rdata, tag)
                }),
                weight: rng.below(5) as u32,
                region: 0,
                geo_fallback: 0,
            }
        })
        .collect();
    proto::AnswerPlan {
        rtype: t,
        policy: policy as i32,
        max_answers: rng.below(3) as u32,
        candidates,
        when_all_down: rng.below(4) as i32,
        ecs_max_prefix_v4: 0,
        ecs_max_prefix_v6: 0,
    }
}

const POLICIES: [proto::Policy; 4] = [
    proto::Policy::RoundRobin,
    proto::Policy::Weighted,
    proto::Policy::Failover,
    proto::Policy::Latency,
];

/// The plans of load-balanced name `i` (its policy fixed by `i`).
fn plans(rng: &mut Lcg, i: usize, tag: u8) -> Vec<proto::AnswerPlan> {
    let policy = POLICIES[i % POLICIES.len()];
    let mut out = vec![plan(rng, 1, policy, tag)];
    if i % 3 == 0 {
        out.push(plan(rng, 28, policy, tag));
    }
    out
}

fn text(s: &str) -> Vec<u8> {
    let mut r = vec![s.len() as u8];
    r.extend_from_slice(s.as_bytes());
    r
}

/// A signed zone with `n` load-balanced names, a few static ones, an
/// empty non-terminal, a CNAME, the apex with its own TXT, and an NSEC
/// chain over all owners.
fn base(rng: &mut Lcg, n: usize) -> proto::Snapshot {
    let mut nodes = vec![proto::Node {
        name: name("z.test."),
        rrsets: vec![signed(16, 60, vec![text("apex")], 1)],
        ..Default::default()
    }];
    for i in 0..n {
        nodes.push(proto::Node {
            name: name(&format!("n{i}.z.test.")),
            plans: plans(rng, i, 1),
            ..Default::default()
        });
    }
    nodes.push(proto::Node {
        name: name("txt.z.test."),
        rrsets: vec![signed(16, 60, vec![text("hello")], 1)],
        ..Default::default()
    });
    nodes.push(proto::Node {
        name: name("b.z.test."),
        ..Default::default()
    });
    nodes.push(proto::Node {
        name: name("a.b.z.test."),
        rrsets: vec![signed(1, 60, vec![vec![192, 0, 2, 9]], 1)],
        ..Default::default()
    });
    nodes.push(proto::Node {
        name: name("alias.z.test."),
        rrsets: vec![signed(5, 60, vec![name("n1.z.test.")], 1)],
        ..Default::default()
    });
    let mut owners: Vec<Vec<u8>> = nodes.iter().map(|n| n.name.clone()).collect();
    owners.sort_by(|a, b| wire::canonical_cmp(a, b));
    for node in &mut nodes {
        let i = owners.iter().position(|x| *x == node.name).unwrap();
        let mut rdata = owners.get(i + 1).unwrap_or(&owners[0]).clone();
        rdata.extend([0, 6, 0, 0, 0, 0, 0, 0x03]);
        node.denial = vec![signed(47, 60, vec![rdata], 1)];
    }
    proto::Snapshot {
        generation: 100,
        origin: "cp".into(),
        zones: vec![zone(1, 1)],
        nodes,
        geo: None,
        options: None,
    }
}

/// A random delta against `full` that only changes existing names (the
/// kind `patch` takes).
fn health_delta(rng: &mut Lcg, full: &proto::Snapshot, step: u8) -> proto::SnapshotDelta {
    let mut upsert = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(full.nodes.len() as u64) as usize;
        let mut node = full.nodes[i].clone();
        let label = &node.name[1..1 + usize::from(node.name[0])];
        let index = label
            .strip_prefix(b"n")
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<usize>().ok());
        if let Some(index) = index {
            // n<i>: new plans of the same policy (health, weights, records).
            let before = node.plans.len();
            node.plans = plans(rng, index, step);
            node.plans.truncate(before);
            while node.plans.len() < before {
                let p = POLICIES[index % POLICIES.len()];
                node.plans.push(plan(rng, 28, p, step));
            }
        } else if node.name == name("z.test.") {
            node.rrsets = vec![signed(16, 60, vec![text("apex"), vec![1, step]], step)];
        } else {
            for r in &mut node.rrsets {
                r.rrsig = vec![sig(step)];
                r.ttl = 60 + u32::from(step);
            }
        }
        if let Some(d) = node.denial.first_mut() {
            d.rrsig = vec![sig(step)];
        }
        upsert.push(node);
    }
    proto::SnapshotDelta {
        base_generation: full.generation,
        generation: full.generation + 1 + rng.below(3),
        zones: if rng.below(4) == 0 {
            vec![]
        } else {
            vec![zone(u32::from(step) + 1, step)]
        },
        upsert_nodes: upsert,
        remove_nodes: vec![],
        geo: None,
        options: (rng.below(5) == 0).then(|| proto::ServeOptions {
            edns_udp_size: 512 + rng.below(3000) as u32,
            ecs_enabled: rng.below(2) == 0,
        }),
    }
}

/// A query in wire format, with EDNS (`payload`, DO) when `edns`.
fn query(qname: &[u8], qtype: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut q = vec![
        0x12,
        0x34,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns.is_some()),
    ];
    q.extend_from_slice(qname);
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    if let Some((payload, dnssec_ok)) = edns {
        q.push(0);
        q.extend(41u16.to_be_bytes());
        q.extend(payload.to_be_bytes());
        q.extend([0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    q
}

/// Every answer `a` and `b` give, compared octet for octet.
fn same_answers(a: &Snapshot, b: &Snapshot, full: &proto::Snapshot) {
    let mut qnames: Vec<Vec<u8>> = full.nodes.iter().map(|n| n.name.clone()).collect();
    qnames.push(name("nope.z.test."));
    qnames.push(name("x.a.b.z.test."));
    qnames.push(name("other.test."));
    let types = [1u16, 28, 16, 6, 2, 48, 5, 47, 15];
    let edns = [
        None,
        Some((4096, false)),
        Some((4096, true)),
        Some((700, true)),
    ];
    let (mut out_a, mut out_b) = (vec![0u8; 65535], vec![0u8; 65535]);
    for (k, qn) in qnames.iter().enumerate() {
        for &t in &types {
            for e in edns {
                for transport in [Transport::Udp, Transport::Tcp] {
                    let q = query(qn, t, e);
                    // Equal seeds: the weighted draws and rotations match.
                    let seed = ((k as u64) << 8) | u64::from(t);
                    let la = answer(
                        a,
                        &q,
                        transport,
                        &mut WorkerState::with_seed(seed),
                        &mut out_a,
                    );
                    let lb = answer(
                        b,
                        &q,
                        transport,
                        &mut WorkerState::with_seed(seed),
                        &mut out_b,
                    );
                    let got = la.map(|n| &out_a[..n]);
                    let want = lb.map(|n| &out_b[..n]);
                    assert_eq!(
                        got, want,
                        "{qn:?} type {t} edns {e:?} {transport:?}: patched != full compile"
                    );
                }
            }
        }
    }
    let labels = |s: &Snapshot| -> Vec<(String, &'static str)> {
        s.routing_decisions()
            .map(|(d, a, _)| (d.to_string(), a))
            .collect()
    };
    assert_eq!(labels(a), labels(b));
    assert_eq!(a.generation(), b.generation());
    assert_eq!(a.edns_udp_size(), b.edns_udp_size());
    assert_eq!(a.ecs_enabled(), b.ecs_enabled());
    assert_eq!(a.node_count(), b.node_count());
}

#[test]
fn random_patches_answer_like_a_full_compile() {
    for seed in 1..=6u64 {
        let mut rng = Lcg(seed);
        // More than one chunk of nodes, so shared and copied chunks mix.
        let mut full = base(&mut rng, 150 + seed as usize * 20);
        let mut patched = Snapshot::try_from(&full).unwrap();
        let first = patched.decisions.clone();
        for step in 2..14u8 {
            let delta = health_delta(&mut rng, &full, step);
            let next = patched
                .patch(&full.zones, &delta)
                .expect("valid delta")
                .expect("a health delta takes the fast path");
            full = crate::delta::apply(&full, delta).unwrap();
            let compiled = Snapshot::try_from(&full).unwrap();
            same_answers(&next, &compiled, &full);
            patched = next;
        }
        // The counters are the very same objects: counts carry over.
        assert!(std::sync::Arc::ptr_eq(&first, &patched.decisions));
    }
}

#[test]
fn unchanged_chunks_are_shared() {
    let mut rng = Lcg(9);
    let full = base(&mut rng, 500);
    let snap = Snapshot::try_from(&full).unwrap();
    let node = full.nodes[3].clone();
    let delta = proto::SnapshotDelta {
        base_generation: full.generation,
        generation: full.generation + 1,
        upsert_nodes: vec![node],
        ..Default::default()
    };
    let next = snap.patch(&full.zones, &delta).unwrap().unwrap();
    let shared = next
        .nodes
        .chunks
        .iter()
        .zip(snap.nodes.chunks.iter())
        .filter(|(a, b)| std::sync::Arc::ptr_eq(a, b))
        .count();
    assert_eq!(shared, snap.nodes.chunks.len() - 1, "one chunk copied");
    assert!(std::sync::Arc::ptr_eq(&next.names, &snap.names));
}

#[test]
fn name_set_and_shape_changes_take_the_full_compile() {
    let mut rng = Lcg(3);
    let full = base(&mut rng, 20);
    let snap = Snapshot::try_from(&full).unwrap();
    let d = |f: &dyn Fn(&mut proto::SnapshotDelta)| {
        let mut delta = proto::SnapshotDelta {
            base_generation: full.generation,
            generation: full.generation + 1,
            ..Default::default()
        };
        f(&mut delta);
        snap.patch(&full.zones, &delta)
    };
    // A new name, a removed name, a new geo table, a new zone.
    let new = proto::Node {
        name: name("new.z.test."),
        ..Default::default()
    };
    assert!(matches!(
        d(&|x| x.upsert_nodes = vec![new.clone()]),
        Ok(None)
    ));
    assert!(matches!(
        d(&|x| x.remove_nodes = vec![name("txt.z.test.")]),
        Ok(None)
    ));
    assert!(matches!(
        d(&|x| x.geo = Some(proto::GeoTable::default())),
        Ok(None)
    ));
    assert!(matches!(
        d(&|x| {
            let mut z = zone(5, 5);
            z.apex = name("y.test.");
            x.zones = vec![z];
        }),
        Ok(None)
    ));
    // A name losing its plans, changing policy, losing its NSEC.
    let mut lost = full.nodes[1].clone();
    lost.plans.clear();
    assert!(matches!(
        d(&|x| x.upsert_nodes = vec![lost.clone()]),
        Ok(None)
    ));
    let mut other = full.nodes[1].clone();
    for p in &mut other.plans {
        p.policy = proto::Policy::Failover as i32;
    }
    assert!(matches!(
        d(&|x| x.upsert_nodes = vec![other.clone()]),
        Ok(None)
    ));
    let mut bare = full.nodes[2].clone();
    bare.denial.clear();
    assert!(matches!(
        d(&|x| x.upsert_nodes = vec![bare.clone()]),
        Ok(None)
    ));
    // Not against this snapshot.
    assert!(matches!(d(&|x| x.base_generation = 7), Ok(None)));
    // An invalid node is the error the full compile gives.
    let mut bad = full.nodes[1].clone();
    bad.plans[0].candidates[0].rrset = Some(rrset(1, 30, vec![vec![1, 2, 3]]));
    let full_err = {
        let mut f = full.clone();
        f.nodes[1] = bad.clone();
        Snapshot::try_from(&f).unwrap_err()
    };
    assert_eq!(
        d(&|x| x.upsert_nodes = vec![bad.clone()]).unwrap_err(),
        full_err
    );
    // A zone without its SOA likewise.
    let mut no_soa = zone(3, 3);
    no_soa.soa = None;
    assert_eq!(
        d(&|x| x.zones = vec![no_soa.clone()]).unwrap_err(),
        crate::snapshot::InvalidSnapshot::MissingSoa { zone: 0 }
    );
}
