//! A fixed, deterministic workload for profilers (`valgrind --tool=callgrind`,
//! `perf record`): the per-datagram work of a UDP worker (one snapshot load
//! through the worker's `arc_swap::Cache`, then `answer`) over the bench's
//! query mixes, with no sockets and no clock in the loop.
//!
//! ```sh
//! cargo build --release -p opengslb-dataplane --example answer_loop
//! valgrind --tool=callgrind target/release/examples/answer_loop small 200000
//! valgrind --tool=callgrind target/release/examples/answer_loop big 200000
//! target/release/examples/answer_loop small 200000 edns   # with an OPT
//! target/release/examples/answer_loop big 200000 batch=13 # receive batches of 13, prefetched
//! ```
//!
//! `small`: `../shared/bench/zones/gslb.test.zone` and its query mix
//! (`queries/small.txt`: 80 % www A, 10 % www AAAA, 5 % api A, 5 % NXDOMAIN).
//! `big`: the same zone plus 100,000 names `hNNNNNN` (one A each, every tenth
//! also an AAAA) and queries drawn uniformly from them (seeded), like
//! `queries/big.txt`. The snapshot is built before the loop; the loop's
//! cost per query is printed (wall clock, for a rough figure only), and the
//! process's resident memory once the snapshot is built and the decoded
//! message dropped.
//!
//! Cache misses per query, free of the machine's load (the harness's own
//! reads of its 200,000 stored queries included; run two counts and take
//! the difference, so the snapshot build drops out):
//!
//! ```sh
//! for n in 100000 400000; do MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=0 \
//!   valgrind --tool=cachegrind --cache-sim=yes --LL=1048576,16,64 \
//!   --cachegrind-out-file=cg.$n target/release/examples/answer_loop big $n; done
//! cg_diff cg.100000 cg.400000 > cg.diff && cg_annotate --sort=D1mr cg.diff
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use opengslb_dataplane::{
    answer::{answer, Transport, WorkerState},
    handle::SnapshotHandle,
    snapshot::Snapshot,
};
use opengslb_proto as proto;

// The allocator and its settings of the real binary (`src/main.rs`), so the
// snapshot's memory lies where it would in the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn wire_name(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in s.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn rrset(rtype: u32, rdata: Vec<Vec<u8>>) -> proto::RRset {
    proto::RRset {
        rtype,
        ttl: 300,
        rdata,
        rrsig: vec![],
    }
}

fn node(name: &str, rrsets: Vec<proto::RRset>) -> proto::Node {
    proto::Node {
        name: wire_name(name),
        zone: 0,
        rrsets,
        ..Default::default()
    }
}

/// The bench zone, every record static (as `zone2yaml.py` renders it).
fn snapshot(extra: u32) -> proto::Snapshot {
    let mut soa = wire_name("ns1.gslb.test.");
    soa.extend(wire_name("hostmaster.gslb.test."));
    for v in [2024010101_u32, 3600, 600, 604800, 300] {
        soa.extend(v.to_be_bytes());
    }
    let zone = proto::Zone {
        apex: wire_name("gslb.test."),
        soa: Some(rrset(6, vec![soa])),
        ns: Some(rrset(
            2,
            vec![wire_name("ns1.gslb.test."), wire_name("ns2.gslb.test.")],
        )),
        negative_ttl: 300,
        ..Default::default()
    };
    let v6 = |hi: u16, lo: u16| {
        let mut v = vec![0x20, 0x01, 0x0d, 0xb8];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&hi.to_be_bytes());
        v.extend_from_slice(&lo.to_be_bytes());
        v
    };
    let mut nodes = vec![
        node("ns1.gslb.test.", vec![rrset(1, vec![vec![127, 0, 0, 11]])]),
        node("ns2.gslb.test.", vec![rrset(1, vec![vec![127, 0, 0, 12]])]),
        node(
            "www.gslb.test.",
            vec![
                rrset(1, (1..=4).map(|i| vec![192, 0, 2, i]).collect()),
                rrset(28, vec![v6(0, 1), v6(0, 2)]),
            ],
        ),
        node("api.gslb.test.", vec![rrset(1, vec![vec![192, 0, 2, 10]])]),
    ];
    for i in 0..extra {
        let mut rrsets = vec![rrset(
            1,
            vec![vec![
                198,
                18 + ((i >> 16) % 2) as u8,
                (i >> 8) as u8,
                i as u8,
            ]],
        )];
        if i % 10 == 0 {
            rrsets.push(rrset(
                28,
                vec![v6((i >> 16) as u16, (i & 0xffff) as u16 + 1)],
            ));
        }
        nodes.push(node(&format!("h{i:06}.gslb.test."), rrsets));
    }
    proto::Snapshot {
        generation: 1,
        origin: "answer_loop".into(),
        zones: vec![zone],
        nodes,
        ..Default::default()
    }
}

/// A query as dnsperf sends it: RD, one question; with `edns` (dnsperf
/// `-e`) an OPT of 4096 octets without DO.
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend(wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if edns {
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

fn main() {
    opengslb_dataplane::memory::configure();
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "small".into());
    let iterations: usize = args.next().map_or(200_000, |s| s.parse().expect("a count"));
    let (mut edns, mut batch) = (false, 1usize);
    for a in args {
        match a.as_str() {
            "edns" => edns = true,
            b => {
                batch = b
                    .strip_prefix("batch=")
                    .and_then(|n| n.parse().ok())
                    .expect("edns or batch=N")
            }
        }
    }
    let (msg, queries) = match kind.as_str() {
        "small" => {
            let mut qs = Vec::new();
            for b in 0..5u16 {
                for _ in 0..16 {
                    qs.push(query(b, "www.gslb.test.", 1, edns));
                }
                qs.push(query(b, "www.gslb.test.", 28, edns));
                qs.push(query(b, "www.gslb.test.", 28, edns));
                qs.push(query(b, "api.gslb.test.", 1, edns));
                qs.push(query(b, &format!("nx{b}.gslb.test."), 1, edns));
            }
            (snapshot(0), qs)
        }
        "big" => {
            let mut x: u64 = 42;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let qs = (0..200_000u32)
                .map(|k| {
                    let i = (next() % 100_000) as u32;
                    let t = if i % 10 == 0 && next() % 2 == 0 {
                        28
                    } else {
                        1
                    };
                    query(k as u16, &format!("h{i:06}.gslb.test."), t, edns)
                })
                .collect();
            (snapshot(100_000), qs)
        }
        other => panic!("unknown workload {other} (small or big)"),
    };
    let handle = SnapshotHandle::new(Snapshot::try_from(&msg).unwrap(), false);
    drop(msg);
    opengslb_dataplane::memory::release_freed();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    println!("{kind}: snapshot built, RSS {rss} (queries held by the harness included)");
    let mut cache = handle.cache();
    let mut state = WorkerState::new();
    let mut out = vec![0u8; 65_535].into_boxed_slice();
    let mut octets = 0usize;
    let started = std::time::Instant::now();
    let mut k = 0;
    while k < iterations {
        // One receive batch: one snapshot load, the batch's prefetch hints
        // (as the UDP worker gives them when it got more than one), then
        // each answer.
        let snapshot = cache.load();
        let group = (k..iterations.min(k + batch)).map(|k| queries[k % queries.len()].as_slice());
        if batch > 1 {
            snapshot.prefetch(group.clone());
        }
        for q in group {
            let n = answer(snapshot, black_box(q), Transport::Udp, &mut state, &mut out);
            octets += black_box(n).unwrap_or(0);
        }
        k += batch;
    }
    let elapsed = started.elapsed();
    println!(
        "{kind}: {iterations} queries, {octets} reply octets, {:.1} ns/query",
        elapsed.as_nanos() as f64 / iterations as f64
    );
}
