//! Micro-benchmarks of the controlplane (criterion): config parse and
//! snapshot compile, per 1,000 names.
//!
//! Two shapes of name, each at 1,000 and 10,000 names:
//! - `records`: a zone of static A records, as `bench/zone2yaml.py` renders
//!   the anchors' big zone (`- {name: h000001.gslb.test, type: A, ...}`);
//! - `domains`: GSLB names, each `weighted` over one region of 4 servers
//!   with `health_check: none` (4 candidate A RRsets per name).
//!
//! Measured: `config::parse` of the whole text (YAML, includes, validation);
//! `Compiler::compile` unsigned; and `Compiler::compile` signed (ECDSA
//! P-256, NSEC) with a warm signature cache, i.e. a recompile of an
//! unchanged config, which re-signs only the SOA. Every input (the YAML
//! text, the parsed config, the keys, the compiler with its cache) is made
//! outside the timed closure. Run with
//! `cargo bench -p opengslb-controlplane --bench compile`; numbers are
//! recorded in `bench/RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use opengslb_controlplane::compile::{AllHealthy, Compiler};
use opengslb_controlplane::config::{self, Config};
use opengslb_controlplane::dnssec::Dnssec;
use opengslb_controlplane::store::Store;

const SIZES: [usize; 2] = [1_000, 10_000];

const UNSIGNED: &str = "  dnssec: {enabled: false, security_acknowledgment: \"I understand that answers will be unsigned and that resolvers cannot detect forged answers\"}\n";

/// A zone of `n` static A records (every tenth name also has an AAAA).
fn records_yaml(n: usize, dnssec: &str) -> String {
    let mut t = String::from("overwatch:\n");
    t.push_str(dnssec);
    t.push_str(
        "dns:\n  zones:\n    - name: gslb.test\n      ns: [ns1.gslb.test, ns2.gslb.test]\n      records:\n        - {name: ns1.gslb.test, type: A, value: \"127.0.0.11\", ttl: 300}\n        - {name: ns2.gslb.test, type: A, value: \"127.0.0.12\", ttl: 300}\n",
    );
    for i in 0..n {
        writeln!(
            t,
            "        - {{name: h{i:06}.gslb.test, type: A, value: \"198.18.{}.{}\", ttl: 300}}",
            i / 256 % 256,
            i % 256
        )
        .unwrap();
        if i % 10 == 0 {
            writeln!(
                t,
                "        - {{name: h{i:06}.gslb.test, type: AAAA, value: \"2001:db8::{i:x}\", ttl: 300}}"
            )
            .unwrap();
        }
    }
    t
}

/// `n` GSLB names, each weighted over the 4 servers of one region.
fn domains_yaml(n: usize, dnssec: &str) -> String {
    let mut t = String::from("overwatch:\n");
    t.push_str(dnssec);
    t.push_str("dns:\n  zones: [example.com]\nregions:\n  - name: p\n    health_check: {type: none}\n    servers:\n");
    for i in 1..=4 {
        writeln!(t, "      - {{address: 192.0.2.{i}, weight: {i}}}").unwrap();
    }
    t.push_str("domains:\n");
    for i in 0..n {
        writeln!(
            t,
            "  - {{name: n{i}.example.com, routing_algorithm: weighted, regions: [p]}}"
        )
        .unwrap();
    }
    t
}

fn parse(text: &str) -> Config {
    config::parse(text, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

type Shape = (&'static str, fn(usize, &str) -> String);
const SHAPES: [Shape; 2] = [("records", records_yaml), ("domains", domains_yaml)];

fn config_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("config parse");
    group.sample_size(10);
    for (shape, make) in SHAPES {
        for n in SIZES {
            let text = make(n, UNSIGNED);
            // The input is what it claims to be.
            let cfg = parse(&text);
            assert!(cfg.dns.zones[0].records.len() + cfg.domains.len() >= n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(shape, n), &text, |b, text| {
                b.iter(|| black_box(parse(black_box(text))))
            });
        }
    }
    group.finish();
}

fn compile_unsigned(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile unsigned");
    group.sample_size(10);
    for (shape, make) in SHAPES {
        for n in SIZES {
            let cfg = parse(&make(n, UNSIGNED));
            let mut compiler = Compiler::new();
            let now = SystemTime::now();
            let first = compiler.compile(&cfg, 1, 1, &AllHealthy, now);
            assert!(first.snapshot.nodes.len() > n, "{shape} {n}");
            let mut generation = 1u64;
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new(shape, n), |b| {
                b.iter(|| {
                    generation += 1;
                    // A reload: new generation and SOA serial, same content.
                    let serial = generation as u32;
                    black_box(compiler.compile(
                        black_box(&cfg),
                        generation,
                        serial,
                        &AllHealthy,
                        now,
                    ))
                })
            });
        }
    }
    group.finish();
}

fn compile_signed_warm(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile signed, warm signature cache");
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (shape, make) in SHAPES {
        for n in SIZES {
            let cfg = parse(&make(n, ""));
            assert!(cfg.overwatch.dnssec.enabled);
            let db = dir.path().join(format!("{shape}-{n}.db"));
            let dnssec = rt.block_on(async {
                let store = Store::open(&format!("sqlite://{}", db.display()))
                    .await
                    .unwrap();
                Dnssec::open(&store, &cfg).await.unwrap()
            });
            let mut compiler = Compiler::with_dnssec(dnssec);
            let now = SystemTime::now();
            // The first compile signs every RRset and fills the cache.
            let first = compiler.compile(&cfg, 1, 1, &AllHealthy, now);
            let signed = first
                .snapshot
                .nodes
                .iter()
                .flat_map(|node| {
                    let candidates = node
                        .plans
                        .iter()
                        .flat_map(|p| &p.candidates)
                        .filter_map(|c| c.rrset.as_ref());
                    node.rrsets.iter().chain(candidates)
                })
                .filter(|r| !r.rrsig.is_empty())
                .count();
            assert!(signed >= n, "{shape} {n}: only {signed} RRsets signed");
            let mut generation = 1u64;
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new(shape, n), |b| {
                b.iter(|| {
                    generation += 1;
                    // A reload: new generation and SOA serial, same content.
                    let serial = generation as u32;
                    black_box(compiler.compile(
                        black_box(&cfg),
                        generation,
                        serial,
                        &AllHealthy,
                        now,
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, config_parse, compile_unsigned, compile_signed_warm);
criterion_main!(benches);
