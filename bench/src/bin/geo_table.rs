//! Geo range table: compile time and memory from a full-size country
//! database.
//!
//! Generates a GeoIP2-Country-format database of about `NETWORKS`
//! networks (default 420,000: 300,000 IPv4 + the rest IPv6, random lengths,
//! gaps and countries; the repository's MMDB writer), writes it to `OUT`
//! (default a temporary file), then measures, each `REPS` times:
//!
//! - read: `GeoDb::load` (the `maxminddb` walk of every network);
//! - build: `RangeTable::build` (country/continent → region, custom
//!   mappings laid over, siblings merged);
//! - encode: the table as the snapshot carries it, and its encoded size;
//! - dataplane: `Snapshot::try_from` of a snapshot holding only that table
//!   (validation and the binary-search arrays).
//!
//! and prints the ranges, the table's heap bytes and the process' peak RSS.
//!
//! Usage: `cargo run --release -p opengslb-bench --bin geo_table -- [NETWORKS] [REPS] [OUT]`

use std::{path::PathBuf, time::Instant};

use anyhow::Context as _;
use opengslb_controlplane::{
    config,
    geo::{
        mmdb_writer::{generate_nets, write_mmdb},
        GeoDb, RangeTable,
    },
    store::GeoMappingRow,
};
use prost::Message as _;

/// Regions over the writer's countries: one per continent, two countries
/// pinned to their own region, and a few custom mappings.
const CFG: &str = "\
regions:
  - {name: na, continents: [NA], countries: [US, CA]}
  - {name: sa, continents: [SA]}
  - {name: eu, continents: [EU]}
  - {name: de, countries: [DE]}
  - {name: asia, continents: [AS, AN]}
  - {name: jp, countries: [JP]}
  - {name: oc, continents: [OC]}
  - {name: af, continents: [AF]}
overwatch:
  geolocation:
    default_region: eu
    custom_mappings:
      - {cidr: 10.0.0.0/8, region: de}
      - {cidr: 100.64.0.0/10, region: jp}
      - {cidr: 2001:db8::/32, region: oc}
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let networks: usize = args.first().map_or(Ok(420_000), |s| s.parse())?;
    let reps: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let out: PathBuf = args
        .get(2)
        .map_or_else(|| dir.path().join("bench.mmdb"), PathBuf::from);

    let n4 = networks * 5 / 7;
    let started = Instant::now();
    let nets = generate_nets(2026, n4, networks - n4);
    let bytes = write_mmdb(&nets, "GeoLite2-Country");
    std::fs::write(&out, &bytes).with_context(|| format!("write {}", out.display()))?;
    println!(
        "database: {} networks asked, {} written, {:.1} MiB, generated in {:.2} s -> {}",
        networks,
        nets.len(),
        bytes.len() as f64 / 1048576.0,
        started.elapsed().as_secs_f64(),
        out.display()
    );
    drop(bytes);
    drop(nets);

    let cfg = config::parse(CFG, std::path::Path::new("bench.yaml"))?;
    let runtime = vec![GeoMappingRow {
        cidr: "203.0.113.0/24".into(),
        region: "na".into(),
        comment: String::new(),
        created_at_unix_ms: 0,
    }];
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let mut best = [f64::MAX; 4];
    let mut last = None;
    for rep in 0..reps {
        let t = Instant::now();
        let db = GeoDb::load(&out)?;
        let read = ms(t);
        let t = Instant::now();
        let table = RangeTable::build(&cfg, Some(&db), &runtime);
        let build = ms(t);
        let t = Instant::now();
        let proto = table.to_proto(1);
        let encoded = proto.encoded_len();
        let encode = ms(t);
        let snap = opengslb_proto::Snapshot {
            generation: 1,
            geo: Some(proto),
            ..Default::default()
        };
        let t = Instant::now();
        let dp = opengslb_dataplane::snapshot::Snapshot::try_from(&snap)
            .map_err(|e| anyhow::anyhow!("dataplane refused the table: {e}"))?;
        let decode = ms(t);
        println!(
            "rep {rep}: read {read:.0} ms ({} networks), build {build:.0} ms, read+build {:.0} ms, \
             encode {encode:.0} ms ({:.1} MiB), dataplane decode {decode:.0} ms ({} ranges)",
            db.len(),
            read + build,
            encoded as f64 / 1048576.0,
            dp.geo().map_or(0, |g| g.len()),
        );
        for (b, v) in best.iter_mut().zip([read, build, read + build, decode]) {
            *b = b.min(v);
        }
        last = Some(table);
    }
    let table = last.context("REPS must be at least 1")?;
    println!(
        "best of {reps}: read {:.0} ms, build {:.0} ms, read+build {:.0} ms (target < 2000), dataplane decode {:.0} ms",
        best[0], best[1], best[2], best[3]
    );
    println!(
        "table: {} IPv4 + {} IPv6 ranges, {:.1} MiB heap (controlplane), peak RSS {} ",
        table.v4.len(),
        table.v6.len(),
        table.heap_bytes() as f64 / 1048576.0,
        peak_rss()
    );
    Ok(())
}

/// `VmHWM` of this process.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
