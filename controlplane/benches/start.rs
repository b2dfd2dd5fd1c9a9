//! The controlplane's share of a whole-stack start, phase by phase (issue 8,
//! "whole-stack start" and "snapshot compile time per 1,000 names"): the
//! config load (`config::load`: YAML, the include, validation), the first
//! full compile as the server runs it (`Compiler::compile_update` on an
//! `Arc<Config>`, unsigned), the stream's setup (`SnapshotStream::new`) and
//! the encode of the whole snapshot a new subscriber is sent.
//!
//! The config is the one `bench/serve.sh` writes for a zone rendered by
//! `bench/zone2yaml.py` from `../shared/bench/gen-data.py`'s big zone: a
//! main file including a zone fragment of N static A records
//! (`hNNNNNN.gslb.test`, TTL 300) plus `www` and `api` round-robin names,
//! DNSSEC off. Or give `--config FILE` to load an existing one.
//!
//! ```text
//! cargo bench -p opengslb-controlplane --bench start -- [--names N] [--reps R] [--config FILE]
//! ```
//!
//! Prints one line per phase and rep: wall time, the process' CPU time
//! (user + system, from `getrusage` via /proc/self/stat), and VmRSS /
//! VmHWM after the phase. The allocator is the controlplane binary's
//! (mimalloc, with its defaults; set `MIMALLOC_*` to try others).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use opengslb_controlplane::compile::incremental::Published;
use opengslb_controlplane::compile::{AllHealthy, Compiler};
use opengslb_controlplane::config;
use opengslb_controlplane::stream::SnapshotStream;
use prost::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn vm(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "n/a".to_owned())
}

/// User + system CPU seconds of this process (/proc/self/stat, in ticks).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends at the last ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line,
    // i.e. 11 and 12 after the command (state is the first after it).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The config `serve.sh` writes around `zone2yaml.py`'s fragment of a big
/// zone with `n` names.
fn write_config(dir: &Path, n: usize) -> Result<PathBuf> {
    let mut z = String::with_capacity(n * 80 + 4096);
    z.push_str("dns:\n  zones:\n    - name: gslb.test\n");
    z.push_str("      soa: {mname: ns1.gslb.test, rname: hostmaster.gslb.test, refresh: 3600, retry: 600, expire: 604800, minimum: 60, ttl: 300}\n");
    z.push_str("      ns: [ns1.gslb.test, ns2.gslb.test]\n      records:\n");
    z.push_str("        - {name: ns1.gslb.test, type: A, value: \"127.0.0.11\", ttl: 300}\n");
    z.push_str("        - {name: ns2.gslb.test, type: A, value: \"127.0.0.12\", ttl: 300}\n");
    for i in 0..n {
        writeln!(
            z,
            "        - {{name: h{i:06}.gslb.test, type: A, value: \"10.{}.{}.{}\", ttl: 300}}",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )?;
    }
    z.push_str("regions:\n");
    for (r, a) in [("www", 1), ("api", 2)] {
        writeln!(
            z,
            "  - name: {r}\n    health_check: {{type: none}}\n    servers:\n      - {{address: \"192.0.2.{a}\", port: 80}}\n      - {{address: \"192.0.2.{}\", port: 80}}",
            a + 10
        )?;
    }
    z.push_str("domains:\n");
    for r in ["www", "api"] {
        writeln!(
            z,
            "  - {{name: {r}.gslb.test, routing_algorithm: round-robin, regions: [{r}], ttl: 300}}"
        )?;
    }
    std::fs::write(dir.join("zone.yaml"), z)?;
    let main = "includes: [zone.yaml]\nlogging: {level: warn, format: text}\ndns:\n  listen_address: \"127.0.0.1:5391\"\nmetrics: {enabled: false}\napi: {enabled: false}\noverwatch:\n  identity: {node_id: bench}\n  grpc_address: \"127.0.0.1:5392\"\n  data_dir: cp-data\n  dnssec: {enabled: false, security_acknowledgment: \"I understand that answers will be unsigned and that resolvers cannot detect forged answers\"}\n";
    let path = dir.join("gslb.yaml");
    std::fs::write(&path, main)?;
    // The controlplane refuses a config others may read (it may hold secrets).
    for f in [path.clone(), dir.join("zone.yaml")] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

struct Phase {
    wall: Instant,
    cpu: f64,
}

impl Phase {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_s(),
        }
    }

    fn done(self, rep: usize, what: &str, n: usize) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = cpu_s() - self.cpu;
        println!(
            "rep {rep} {what:<8} names {n:>8}  wall {wall:>7.3} s  cpu {cpu:>7.2} s  per 1k names {:>7.3} ms  rss {}  hwm {}",
            wall * 1e3 / (n.max(1) as f64 / 1e3),
            vm("VmRSS:"),
            vm("VmHWM:")
        );
    }
}

fn main() -> Result<()> {
    let mut names = 100_000usize;
    let mut reps = 1usize;
    let mut config_path: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            "--names" => names = args.next().context("--names N")?.parse()?,
            "--reps" => reps = args.next().context("--reps R")?.parse()?,
            "--config" => config_path = Some(args.next().context("--config FILE")?.into()),
            _ => bail!("usage: start [--names N] [--reps R] [--config FILE]"),
        }
    }
    let dir = tempfile::tempdir()?;
    let path = match config_path {
        Some(p) => p,
        None => write_config(dir.path(), names)?,
    };
    for rep in 1..=reps {
        let t = Phase::start();
        let cfg = config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = cfg.dns.zones.iter().map(|z| z.records.len()).sum::<usize>() + cfg.domains.len();
        t.done(rep, "parse", n);

        let cfg = Arc::new(cfg);
        let t = Phase::start();
        let mut compiler = Compiler::new();
        let first = compiler.compile_update(&cfg, 1, 1, &AllHealthy, SystemTime::now());
        let Published::Full(snapshot) = first.published else {
            bail!("a first compile is a full one");
        };
        let nodes = snapshot.nodes.len();
        if nodes < n {
            bail!("{nodes} nodes for {n} names");
        }
        t.done(rep, "compile", n);

        let t = Phase::start();
        let stream = SnapshotStream::new(snapshot);
        t.done(rep, "stream", n);

        let t = Phase::start();
        let bytes = stream.current().encoded_len();
        let buf = stream.current().encode_to_vec();
        if buf.len() != bytes {
            bail!("encoded {} of {bytes} bytes", buf.len());
        }
        t.done(rep, "encode", n);
        drop((buf, stream, compiler, cfg));
    }
    Ok(())
}
