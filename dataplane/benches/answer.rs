//! Micro-benchmarks of the dataplane (criterion): parse → answer → encode
//! per response kind, in ns per query, and the snapshot compile (validate +
//! build the answer tables) per 1,000 names.
//!
//! Every input (queries, snapshot, worker state, output buffer) is prepared
//! outside the timed closure; the timed part is exactly what a UDP worker
//! does per datagram after `recvmmsg`: load the snapshot through the
//! worker's `arc_swap::Cache` and call `answer`. Run with
//! `cargo bench -p opengslb-dataplane --bench answer`; numbers are recorded
//! in `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opengslb_dataplane::{
    answer::{answer, Transport, WorkerState},
    handle::SnapshotHandle,
    snapshot::Snapshot,
};
use opengslb_proto as proto;

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

fn round_robin(rtype: u32, rdata: Vec<Vec<u8>>) -> proto::AnswerPlan {
    proto::AnswerPlan {
        rtype,
        policy: proto::Policy::RoundRobin as i32,
        candidates: vec![proto::Candidate {
            rrset: Some(rrset(rtype, 300, rdata)),
            weight: 1,
            ..Default::default()
        }],
        when_all_down: proto::WhenAllDown::Servfail as i32,
        ..Default::default()
    }
}

fn v4(last: u8) -> Vec<u8> {
    vec![192, 0, 2, last]
}

fn v6(last: u8) -> Vec<u8> {
    let mut v = vec![0x20, 0x01, 0x0d, 0xb8];
    v.extend_from_slice(&[0; 11]);
    v.push(last);
    v
}

fn zone() -> proto::Zone {
    let mut soa = wire_name("ns1.gslb.test.");
    soa.extend(wire_name("hostmaster.gslb.test."));
    for v in [2024010101_u32, 3600, 600, 604800, 300] {
        soa.extend(v.to_be_bytes());
    }
    proto::Zone {
        apex: wire_name("gslb.test."),
        soa: Some(rrset(6, 300, vec![soa])),
        ns: Some(rrset(
            2,
            300,
            vec![wire_name("ns1.gslb.test."), wire_name("ns2.gslb.test.")],
        )),
        negative_ttl: 300,
        ..Default::default()
    }
}

/// The bench zone (`../shared/bench/zones/gslb.test.zone`) as the
/// controlplane compiles it, plus a 3 kB TXT for the truncation case.
fn bench_snapshot() -> proto::Snapshot {
    let node = |n: &str, rrsets, plans| proto::Node {
        name: wire_name(n),
        zone: 0,
        rrsets,
        plans,
        ..Default::default()
    };
    proto::Snapshot {
        generation: 1,
        origin: "bench".into(),
        zones: vec![zone()],
        nodes: vec![
            node(
                "www.gslb.test.",
                vec![],
                vec![
                    round_robin(1, (1..=4).map(v4).collect()),
                    round_robin(28, (1..=2).map(v6).collect()),
                ],
            ),
            node("api.gslb.test.", vec![], vec![round_robin(1, vec![v4(10)])]),
            node(
                "ns1.gslb.test.",
                vec![rrset(1, 300, vec![vec![127, 0, 0, 11]])],
                vec![],
            ),
            node(
                "big.gslb.test.",
                vec![rrset(16, 300, (0..12).map(|_| vec![250; 251]).collect())],
                vec![],
            ),
        ],
        ..Default::default()
    }
}

/// `n` names `hNNNNNN.gslb.test` with one A record each (and an AAAA on
/// every tenth), as the harness' 100k-name zone.
fn names_snapshot(n: u32) -> proto::Snapshot {
    let mut nodes = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut rrsets = vec![rrset(1, 300, vec![vec![198, 18, (i >> 8) as u8, i as u8]])];
        if i % 10 == 0 {
            rrsets.push(rrset(28, 300, vec![v6(i as u8)]));
        }
        nodes.push(proto::Node {
            name: wire_name(&format!("h{i:06}.gslb.test.")),
            zone: 0,
            rrsets,
            ..Default::default()
        });
    }
    proto::Snapshot {
        generation: 1,
        zones: vec![zone()],
        nodes,
        ..Default::default()
    }
}

/// A query: ID 0xBEEF, RD, one question, optional OPT (payload, DO, options).
fn query(name: &str, qtype: u16, opt: Option<(u16, bool, &[u8])>) -> Vec<u8> {
    let mut q = vec![0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend(wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if let Some((payload, dnssec_ok, options)) = opt {
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&payload.to_be_bytes());
        q.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
        q.extend_from_slice(&(options.len() as u16).to_be_bytes());
        q.extend_from_slice(options);
    }
    q
}

fn answer_kinds(c: &mut Criterion) {
    let ecs: &[u8] = &[0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100];
    let mut formerr = query("www.gslb.test.", 1, None);
    formerr[5] = 2; // QDCOUNT 2 with one question
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        // (name, query, expected RCODE)
        (
            "A round-robin (4 records)",
            query("www.gslb.test.", 1, None),
            0,
        ),
        (
            "AAAA round-robin (2 records)",
            query("www.gslb.test.", 28, None),
            0,
        ),
        ("A static", query("ns1.gslb.test.", 1, None), 0),
        (
            "A + EDNS",
            query("www.gslb.test.", 1, Some((1232, false, &[]))),
            0,
        ),
        (
            "A + EDNS + ECS",
            query("www.gslb.test.", 1, Some((1232, false, ecs))),
            0,
        ),
        ("NXDOMAIN", query("nx0.gslb.test.", 1, None), 3),
        (
            "NXDOMAIN + EDNS",
            query("nx0.gslb.test.", 1, Some((1232, false, &[]))),
            3,
        ),
        ("NODATA", query("api.gslb.test.", 28, None), 0),
        ("REFUSED", query("www.example.com.", 1, None), 5),
        ("FORMERR", formerr, 1),
        (
            "TC (3 kB TXT over 512-octet UDP)",
            query("big.gslb.test.", 16, None),
            0,
        ),
    ];
    let handle = SnapshotHandle::new(Snapshot::try_from(&bench_snapshot()).unwrap(), false);
    let mut cache = handle.cache();
    let mut state = WorkerState::new();
    let mut out = vec![0u8; 65_535].into_boxed_slice();
    let mut group = c.benchmark_group("answer");
    group.throughput(Throughput::Elements(1));
    for (name, q, rcode) in &cases {
        // Checked once outside the timing: the case measures what it names.
        let n = answer(cache.load(), q, Transport::Udp, &mut state, &mut out).expect("a reply");
        assert!(n >= 12, "{name}: reply of {n} octets");
        assert_eq!(out[3] & 0x0f, *rcode, "{name}: RCODE");
        if name.starts_with("TC") {
            assert_ne!(out[2] & 0x02, 0, "{name}: TC set");
        }
        group.bench_function(*name, |b| {
            b.iter(|| {
                let snapshot = cache.load();
                black_box(answer(
                    snapshot,
                    black_box(q),
                    Transport::Udp,
                    &mut state,
                    &mut out,
                ))
            })
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot compile");
    group.sample_size(20);
    for n in [1_000u32, 100_000] {
        let msg = names_snapshot(n);
        assert_eq!(
            Snapshot::try_from(&msg).unwrap().node_count(),
            n as usize + 1
        );
        group.throughput(Throughput::Elements(u64::from(n)));
        group.bench_function(format!("{n} names"), |b| {
            b.iter(|| black_box(Snapshot::try_from(black_box(&msg)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, answer_kinds, compile);
criterion_main!(benches);
