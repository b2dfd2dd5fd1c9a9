//! Snapshot swaps under load, measured with the real binaries.
//!
//! Starts one controlplane and one dataplane (1 worker, pinned to CPU 0)
//! serving the bench zone (`../shared/bench/zones/gslb.test.zone`, as
//! `bench/zone2yaml.py` renders it), finds dnsperf's ceiling on CPU 1, then
//! runs dnsperf at a fixed rate (80 % of that ceiling by default) twice per
//! rep, interleaved: once with the snapshot left alone, once while the
//! controlplane publishes a new generation every 10 ms (its config file
//! alternates between two address sets for `www.gslb.test` and is reloaded
//! with SIGHUP; each reload compiles and streams a new generation, the
//! dataplane validates, compiles, swaps and caches it).
//!
//! During every run a checker thread asks `www` A, `www` AAAA and the SOA
//! about once a millisecond on its own socket and checks each answer
//! exactly: NOERROR, AA, and the address set of generation "a" or of
//! generation "b", never a mix (a torn snapshot) and never anything else.
//! The SOA serials it sees count the generations actually served.
//!
//! Reported per mode: the dataplane's qps per CPU-second (`qps/core`, CPU
//! from `/proc/PID/stat`), dnsperf's lost queries, the checker's invalid and
//! unanswered queries, and the generations per second served. Exit status 1
//! when any answer was invalid, any query lost, or fewer than half the asked
//! generations were served; the qps/core ratio (issue 8: within 5 %) is
//! printed, not enforced, because the machine's noise is larger than that.
//!
//! Usage: `cargo run --release -p opengslb-bench --bin swaps -- [--secs N]
//! [--reps N] [--rate QPS] [--per-sec N] [--queries FILE]` (builds the
//! release binaries first; `OPENGSLB_BIN=DIR` measures those in DIR
//! instead). Needs dnsperf and taskset; everything runs on 127.0.0.1 and
//! stops by itself.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use opengslb_bench::{
    answers, binaries, build_query, clock_ticks, cpu_ticks, finish, free_port, spawn_logged,
    start_controlplane, wait_tcp, work_dir, write_private, Children,
};

const CONFIG: &str = r#"
logging: {level: info, format: text}
metrics: {enabled: false}
api: {enabled: false}
dns:
  listen_address: "127.0.0.1:{dns}"
  zones:
    - name: gslb.test
      soa: {mname: ns1.gslb.test, rname: hostmaster.gslb.test, refresh: 3600, retry: 600, expire: 604800, minimum: 300, ttl: 300}
      ns: [ns1.gslb.test, ns2.gslb.test]
      records:
        - {name: ns1.gslb.test, type: A, value: "127.0.0.11", ttl: 300}
        - {name: ns2.gslb.test, type: A, value: "127.0.0.12", ttl: 300}
dataplane:
  workers: 1
  controlplanes: ["127.0.0.1:{grpc}"]
  cache_dir: dp-cache
  metrics_address: null
regions:
  - name: www
    health_check: {type: none}
    servers:
      - {address: "192.0.2.{a1}", port: 80}
      - {address: "192.0.2.{a2}", port: 80}
      - {address: "192.0.2.{a3}", port: 80}
      - {address: "192.0.2.{a4}", port: 80}
      - {address: "2001:db8::{a1}", port: 80}
      - {address: "2001:db8::{a2}", port: 80}
  - name: api
    health_check: {type: none}
    servers:
      - {address: "192.0.2.10", port: 80}
domains:
  - {name: www.gslb.test, routing_algorithm: round-robin, regions: [www], ttl: 300}
  - {name: api.gslb.test, routing_algorithm: round-robin, regions: [api], ttl: 300}
overwatch:
  identity: {node_id: swaps}
  grpc_address: "127.0.0.1:{grpc}"
  data_dir: cp-data
"#;

/// First host octet of the four A records of generation "a" and "b".
const FIRST: [u8; 2] = [1, 5];

struct Opts {
    secs: u64,
    reps: usize,
    rate: Option<u64>,
    per_sec: u64,
    queries: PathBuf,
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let bins = binaries()?;
    let dir = work_dir("swaps")?;
    let result = run(&opts, &bins, &dir);
    finish(&dir, matches!(result, Ok(true)));
    match result {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(e) => Err(e),
    }
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        secs: 10,
        reps: 3,
        rate: None,
        per_sec: 100,
        queries: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/queries/small.txt"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--secs" => o.secs = val()?.parse()?,
            "--reps" => o.reps = val()?.parse()?,
            "--rate" => o.rate = Some(val()?.parse()?),
            "--per-sec" => o.per_sec = val()?.parse()?,
            "--queries" => o.queries = val()?.into(),
            _ => bail!(
                "usage: swaps [--secs N] [--reps N] [--rate QPS] [--per-sec N] [--queries FILE]"
            ),
        }
    }
    if o.per_sec == 0 || o.secs == 0 || o.reps == 0 {
        bail!("--secs, --reps and --per-sec must be positive");
    }
    if !o.queries.exists() {
        bail!("query file {} not found (--queries)", o.queries.display());
    }
    Ok(o)
}

fn config(dns: u16, grpc: u16, generation_b: bool) -> String {
    let f = FIRST[usize::from(generation_b)];
    CONFIG
        .replace("{dns}", &dns.to_string())
        .replace("{grpc}", &grpc.to_string())
        .replace("{a1}", &f.to_string())
        .replace("{a2}", &(f + 1).to_string())
        .replace("{a3}", &(f + 2).to_string())
        .replace("{a4}", &(f + 3).to_string())
}

/// One measured run.
#[derive(Debug, Default, Clone)]
struct Sample {
    qps: f64,
    cpu: f64,
    lost: u64,
    checked: u64,
    invalid: u64,
    unanswered: u64,
    generations: u64,
    /// Generations the dataplane applied (its "serving snapshot" log lines).
    applied: u64,
    secs: f64,
}

impl Sample {
    fn qps_core(&self) -> f64 {
        if self.cpu > 0.0 {
            self.qps / self.cpu
        } else {
            0.0
        }
    }
}

fn run(o: &Opts, bins: &Path, dir: &Path) -> Result<bool> {
    let dns = free_port()?;
    let grpc = free_port()?;
    let cfg_path = dir.join("gslb.yaml");
    write_private(&cfg_path, &config(dns, grpc, false))?;
    let mut children = Children::default();
    let cp_pid = children.push(start_controlplane(bins, &cfg_path, dir)?);
    wait_tcp(([127, 0, 0, 1], grpc).into(), Duration::from_secs(30))
        .context("the controlplane did not listen (see cp.log)")?;
    let dp_pid = children.push(spawn_logged(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(bins.join("opengslb-dataplane"))
            .args(["--listen", &format!("127.0.0.1:{dns}"), "--workers", "1"])
            .args(["--controlplane", &format!("127.0.0.1:{grpc}")])
            .arg("--cache-dir")
            .arg(dir.join("dp-cache"))
            // `info`: one "serving snapshot" line per generation applied,
            // which counts the swaps exactly (the checker's SOA samples are
            // a bound).
            .args(["--log-level", "info"]),
        dir,
        "dp.log",
    )?);
    let server: SocketAddr = ([127, 0, 0, 1], dns).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while check_once(server, 1, Kind::A).map(|c| c.ok) != Some(true) {
        if Instant::now() > deadline {
            bail!("the dataplane did not answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let rate = match o.rate {
        Some(r) => r,
        None => {
            let (qps, _) = dnsperf(server, &o.queries, 5, None, dir, "ceiling")?;
            let r = (qps * 0.8) as u64;
            println!("dnsperf ceiling {qps:.0} qps on CPU 1; fixed rate 80 % = {r} qps");
            r
        }
    };
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut flip = false;
    for rep in 0..o.reps {
        let order = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for swaps in order {
            let s = measure(
                o, server, dp_pid, cp_pid, &cfg_path, dns, grpc, rate, swaps, &mut flip, dir, rep,
            )?;
            println!(
                "rep {rep} swaps {:>3}: qps {:.0} dp_cpu {:.1}% qps/core {:.0} lost {} \
                 checked {} invalid {} unanswered {} generations served {} ({:.1}/s), \
                 applied by the dataplane {} ({:.1}/s)",
                if swaps { "on" } else { "off" },
                s.qps,
                s.cpu * 100.0,
                s.qps_core(),
                s.lost,
                s.checked,
                s.invalid,
                s.unanswered,
                s.generations,
                s.generations as f64 / s.secs,
                s.applied,
                s.applied as f64 / s.secs,
            );
            if swaps { &mut on } else { &mut off }.push(s);
        }
    }
    let med = |v: &[Sample]| {
        let mut x: Vec<f64> = v.iter().map(Sample::qps_core).collect();
        x.sort_by(f64::total_cmp);
        x.get(x.len() / 2).copied().unwrap_or(0.0)
    };
    let (m_off, m_on) = (med(&off), med(&on));
    let lost: u64 = off.iter().chain(&on).map(|s| s.lost).sum();
    let invalid: u64 = off.iter().chain(&on).map(|s| s.invalid).sum();
    let unanswered: u64 = off.iter().chain(&on).map(|s| s.unanswered).sum();
    let checked: u64 = off.iter().chain(&on).map(|s| s.checked).sum();
    let gens: u64 = on.iter().map(|s| s.generations).sum();
    let applied: u64 = on.iter().map(|s| s.applied).sum();
    let gen_secs: f64 = on.iter().map(|s| s.secs).sum();
    let ratio = if m_off > 0.0 { m_on / m_off } else { 0.0 };
    println!();
    println!("rate {rate} qps, {} s per run, {} reps", o.secs, o.reps);
    println!(
        "qps/core median: no swaps {m_off:.0}, swaps {m_on:.0}, ratio {ratio:.3} \
         (issue 8: >= 0.95) {}",
        if ratio >= 0.95 { "met" } else { "MISSED" }
    );
    println!(
        "generations served while swapping: {gens} in {gen_secs:.1} s = {:.1}/s (asked {}/s)",
        gens as f64 / gen_secs.max(1e-9),
        o.per_sec
    );
    println!(
        "generations applied by the dataplane while swapping: {applied} = {:.1}/s",
        applied as f64 / gen_secs.max(1e-9)
    );
    println!("dnsperf lost queries: {lost}");
    println!("checker: {checked} answers checked, {invalid} invalid, {unanswered} unanswered");
    // The dataplane's own count of applied generations is exact; the
    // checker's SOA samples are a lower bound (it sees only the serials it
    // happens to query), used when the dataplane log has no count.
    let seen = applied.max(gens);
    let enough = seen as f64 / gen_secs.max(1e-9) >= o.per_sec as f64 * 0.9;
    let ok = lost == 0 && invalid == 0 && unanswered == 0 && enough;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    o: &Opts,
    server: SocketAddr,
    dp_pid: u32,
    cp_pid: u32,
    cfg_path: &Path,
    dns: u16,
    grpc: u16,
    rate: u64,
    swaps: bool,
    flip: &mut bool,
    dir: &Path,
    rep: usize,
) -> Result<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let serials = Arc::new(Mutex::new(BTreeSet::new()));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let checker = {
        let (stop, serials, counts) = (stop.clone(), serials.clone(), counts.clone());
        std::thread::spawn(move || checker(server, &stop, &serials, &counts))
    };
    let swapper = swaps.then(|| {
        let stop = stop.clone();
        let path = cfg_path.to_path_buf();
        let texts = [config(dns, grpc, false), config(dns, grpc, true)];
        let period = Duration::from_nanos(1_000_000_000 / o.per_sec);
        let mut b = *flip;
        std::thread::spawn(move || -> (Result<()>, bool) {
            let mut next = Instant::now();
            while !stop.load(Relaxed) {
                b = !b;
                if let Err(e) = write_private(&path, &texts[usize::from(b)]) {
                    return (Err(e), b);
                }
                // SIGHUP: the controlplane reloads, compiles and publishes.
                let _ = Command::new("kill")
                    .args(["-HUP", &cp_pid.to_string()])
                    .status();
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            (Ok(()), b)
        })
    });
    let a0 = applied_count(dir);
    let c0 = cpu_ticks(dp_pid)?;
    let t0 = Instant::now();
    let tag = format!("r{rep}-{}", if swaps { "swaps" } else { "plain" });
    let res = dnsperf(server, &o.queries, o.secs, Some(rate), dir, &tag);
    let secs = t0.elapsed().as_secs_f64();
    let c1 = cpu_ticks(dp_pid)?;
    let a1 = applied_count(dir);
    stop.store(true, Relaxed);
    let _ = checker.join();
    if let Some(h) = swapper {
        if let Ok((r, b)) = h.join() {
            *flip = b;
            r?;
        }
    }
    let (qps, lost) = res?;
    let hz = clock_ticks();
    let generations = serials.lock().map(|s| s.len() as u64).unwrap_or(0);
    Ok(Sample {
        qps,
        cpu: (c1 - c0) as f64 / hz / secs,
        lost,
        checked: counts[0].load(Relaxed),
        invalid: counts[1].load(Relaxed),
        unanswered: counts[2].load(Relaxed),
        // Serials seen beyond the first: swaps observed in this run.
        generations: generations.saturating_sub(1),
        applied: a1.saturating_sub(a0),
        secs,
    })
}

/// Generations the dataplane has applied so far: its "serving snapshot"
/// log lines (`dp.log` holds its stdout and stderr).
fn applied_count(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("dp.log"))
        .map_or(0, |t| t.matches("serving snapshot").count() as u64)
}

/// Runs dnsperf on CPU 1; returns (qps, lost queries).
fn dnsperf(
    server: SocketAddr,
    queries: &Path,
    secs: u64,
    rate: Option<u64>,
    dir: &Path,
    tag: &str,
) -> Result<(f64, u64)> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "dnsperf", "-s", "127.0.0.1", "-p"])
        .arg(server.port().to_string())
        .arg("-d")
        .arg(queries)
        .args(["-c", "32", "-q", "200", "-l", &secs.to_string()]);
    if let Some(r) = rate {
        cmd.args(["-Q", &r.to_string()]);
    }
    let out = cmd.output().context("running dnsperf (is it installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    std::fs::write(dir.join(format!("dnsperf-{tag}.txt")), text.as_bytes())?;
    if !out.status.success() {
        bail!("dnsperf failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no qps in dnsperf output")?;
    let lost = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no lost count in dnsperf output")?;
    Ok((qps, lost))
}

#[derive(Clone, Copy)]
enum Kind {
    A,
    Aaaa,
    Soa,
}

struct Checked {
    ok: bool,
    serial: Option<u32>,
}

/// Counts: [checked, invalid, unanswered].
fn checker(
    server: SocketAddr,
    stop: &AtomicBool,
    serials: &Mutex<BTreeSet<u32>>,
    counts: &[AtomicU64; 3],
) {
    let kinds = [Kind::A, Kind::Aaaa, Kind::Soa];
    let mut id: u16 = 0;
    let mut shown = 0;
    while !stop.load(Relaxed) {
        id = id.wrapping_add(1);
        let kind = kinds[usize::from(id) % kinds.len()];
        match check_once(server, id, kind) {
            None => {
                counts[2].fetch_add(1, Relaxed);
            }
            Some(c) => {
                counts[0].fetch_add(1, Relaxed);
                if !c.ok {
                    counts[1].fetch_add(1, Relaxed);
                    if shown < 5 {
                        shown += 1;
                        eprintln!("invalid answer to query {id}");
                    }
                }
                if let (Some(s), Ok(mut set)) = (c.serial, serials.lock()) {
                    set.insert(s);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asks once; None when no answer came within 1 s.
fn check_once(server: SocketAddr, id: u16, kind: Kind) -> Option<Checked> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let (name, qtype) = match kind {
        Kind::A => ("www.gslb.test", 1u16),
        Kind::Aaaa => ("www.gslb.test", 28),
        Kind::Soa => ("gslb.test", 6),
    };
    s.send_to(&build_query(id, name, qtype), server).ok()?;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (len, _) = s.recv_from(&mut buf).ok()?;
        let m = buf.get(..len)?;
        if m.get(..2) == Some(&id.to_be_bytes()[..]) {
            return Some(judge(m, kind));
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

/// Whether `m` is a valid answer of generation "a" or "b".
fn judge(m: &[u8], kind: Kind) -> Checked {
    let bad = Checked {
        ok: false,
        serial: None,
    };
    let Some(records) = answers(m) else {
        return bad;
    };
    // QR, AA, NOERROR.
    if m.len() < 12 || m[2] & 0x84 != 0x84 || m[3] & 0x0f != 0 {
        return bad;
    }
    match kind {
        Kind::Soa => {
            let serial = match records.as_slice() {
                [(6, rd)] if rd.len() >= 22 => {
                    let at = rd.len() - 20;
                    Some(u32::from_be_bytes([
                        rd[at],
                        rd[at + 1],
                        rd[at + 2],
                        rd[at + 3],
                    ]))
                }
                _ => None,
            };
            Checked {
                ok: serial.is_some(),
                serial,
            }
        }
        Kind::A | Kind::Aaaa => {
            let (t, n) = match kind {
                Kind::A => (1u16, 4usize),
                _ => (28, 2),
            };
            let got: BTreeSet<Vec<u8>> = records
                .iter()
                .filter(|(rt, _)| *rt == t)
                .map(|(_, rd)| rd.clone())
                .collect();
            let ok = records.len() == n
                && got.len() == n
                && FIRST.iter().any(|&f| {
                    let want: BTreeSet<Vec<u8>> = (0..n as u8)
                        .map(|i| {
                            if t == 1 {
                                vec![192, 0, 2, f + i]
                            } else {
                                let mut v = vec![0x20, 0x01, 0x0d, 0xb8];
                                v.extend_from_slice(&[0; 11]);
                                v.push(f + i);
                                v
                            }
                        })
                        .collect();
                    want == got
                });
            Checked { ok, serial: None }
        }
    }
}
