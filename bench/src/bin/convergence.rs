//! Failover convergence, measured end to end with the real binaries.
//!
//! Starts one controlplane with a TCP-checked round-robin name of two
//! backends on loopback (127.0.0.2 toggled, 127.0.0.3 always up; interval
//! 100 ms, timeout 50 ms, failure_threshold 2, success_threshold 1) and N
//! dataplanes subscribed to it, each on its own port, each watched by its own
//! polling thread (one UDP query every ~0.5 ms). Then, CYCLES times, closes
//! the toggled backend's listener and opens it again, and reports:
//!
//! - (a) listener closed → every dataplane no longer names it;
//! - (b) the controlplane's health decision → every dataplane answers the
//!   new snapshot. The decision's time is the new snapshot's generation
//!   (microseconds since the epoch, taken as the recompile starts, right
//!   after the decision), read from the controlplane's
//!   `opengslb_snapshot_generation`; the end is the last dataplane's first
//!   changed answer. Counted for both directions (down and up).
//!
//! Usage: `cargo run --release -p opengslb-bench --bin convergence -- [CYCLES] [DATAPLANES]`
//! (defaults 60 and 10). Everything runs on 127.0.0.0/8 and stops by itself.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use opengslb_bench::{
    ask_a, binaries, dataplane_config, finish, free_addr, log_text, metric, quantile_ms,
    snapshot_generation, start_controlplane, start_dataplane, wait_generation, work_dir,
    write_private, Backend, Children,
};

const NAME: &str = "cv.bench.test";

/// Per dataplane, each change seen: (when, names the toggled backend).
type Changes = Mutex<Vec<Vec<(SystemTime, bool)>>>;

const CONFIG: &str = r#"
logging: {level: info, format: text}
metrics: {enabled: true, address: "{cpmetrics}"}
api: {enabled: false}
dns:
  listen_address: "{dns}"
  default_ttl: 30
  zones:
    - name: bench.test
      soa: {mname: ns1.bench.test, rname: hostmaster.bench.test}
      ns: [ns1.bench.test]
dataplane:
  workers: 1
  controlplanes: ["{grpc}"]
  cache_dir: cache
  metrics_address: "{dpmetrics}"
regions:
  - name: cv
    servers:
      - {address: 127.0.0.2, port: {port_a}}
      - {address: 127.0.0.3, port: {port_b}}
    health_check: {type: tcp, interval: 100ms, timeout: 50ms, failure_threshold: 2, success_threshold: 1}
domains:
  - {name: cv.bench.test, routing_algorithm: round-robin, regions: [cv]}
overwatch:
  identity: {node_id: convergence}
  grpc_address: "{grpc}"
  data_dir: cp-data
"#;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cycles: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);
    let dataplanes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let bins = binaries()?;
    let dir = work_dir("convergence")?;
    let result = run(&bins, &dir, cycles, dataplanes);
    finish(&dir, result.is_ok());
    result
}

fn run(bins: &Path, dir: &Path, cycles: usize, n: usize) -> Result<()> {
    let mut toggled = Backend::start(Ipv4Addr::new(127, 0, 0, 2))?;
    let steady = Backend::start(Ipv4Addr::new(127, 0, 0, 3))?;
    let grpc = free_addr()?;
    let cp_metrics = free_addr()?;
    let mut children = Children::default();
    let mut dns = Vec::new();
    for i in 0..n {
        let d = free_addr()?;
        let text = CONFIG
            .replace("{cpmetrics}", &cp_metrics.to_string())
            .replace("{dns}", &d.to_string())
            .replace("{grpc}", &grpc.to_string())
            .replace("{dpmetrics}", &free_addr()?.to_string())
            .replace("{port_a}", &toggled.addr.port().to_string())
            .replace("{port_b}", &steady.addr.port().to_string());
        let sub = dir.join(format!("dp{i}"));
        std::fs::create_dir_all(&sub)?;
        let cfg = sub.join("gslb.yaml");
        write_private(&cfg, &text)?;
        dataplane_config(bins, &cfg, &sub.join("dataplane.json"))?;
        if i == 0 {
            children.push(start_controlplane(bins, &cfg, dir)?);
        }
        dns.push(d);
    }
    for i in 0..n {
        let sub = dir.join(format!("dp{i}"));
        children.push(start_dataplane(bins, &sub.join("dataplane.json"), &sub)?);
    }
    let a = Ipv4Addr::new(127, 0, 0, 2);
    // Wait until every dataplane names both backends.
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in &dns {
        while ask_a(*d, NAME).is_none_or(|ips| ips.len() != 2) {
            if Instant::now() > deadline {
                bail!(
                    "dataplane {d} never answered both backends; cp.log:\n{}",
                    log_text(&dir.join("cp.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "convergence: {n} dataplanes, {cycles} cycles, tcp check interval 100ms, failure_threshold 2, success_threshold 1"
    );

    // Pollers: each records (time, names A?) at every change it sees.
    let stop = Arc::new(AtomicBool::new(false));
    let changes: Arc<Changes> = Arc::new(Mutex::new(vec![Vec::new(); n]));
    let pollers: Vec<JoinHandle<()>> = dns
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (d, stop, changes) = (*d, stop.clone(), changes.clone());
            std::thread::spawn(move || poll(i, d, a, &stop, &changes))
        })
        .collect();

    let mut leave = Vec::new(); // (a)
    let mut decision = Vec::new(); // (b)
    let mut last_gen = snapshot_generation(cp_metrics).unwrap_or(0);
    for cycle in 0..cycles {
        for up in [false, true] {
            // Decorrelate from the probe phase.
            std::thread::sleep(Duration::from_millis(
                60 + (cycle as u64 * 37 + u64::from(up) * 11) % 100,
            ));
            let t0 = SystemTime::now();
            if up {
                toggled.up()?;
            } else {
                toggled.down();
            }
            let seen = wait_all(&changes, t0, up, Duration::from_secs(5))
                .with_context(|| format!("cycle {cycle}: dataplanes did not converge (up={up})"))?;
            let last = seen.iter().max().copied().unwrap_or(t0);
            // The snapshot that carried the decision.
            let generation = wait_generation(cp_metrics, last_gen)?;
            last_gen = generation;
            let decided = UNIX_EPOCH + Duration::from_micros(generation);
            if !up {
                leave.push(last.duration_since(t0).unwrap_or_default());
            }
            decision.push(last.duration_since(decided).unwrap_or_default());
        }
    }
    stop.store(true, Ordering::SeqCst);
    for p in pollers {
        let _ = p.join();
    }
    let subscribers = metric(cp_metrics, "opengslb_snapshot_subscribers").unwrap_or(0.0);
    println!("controlplane opengslb_snapshot_subscribers = {subscribers}");
    report(
        "(a) backend listener closed -> no dataplane names it",
        &leave,
    );
    report(
        "(b) health decision (snapshot generation) -> every dataplane answers it, down and up",
        &decision,
    );
    Ok(())
}

fn report(what: &str, samples: &[Duration]) {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return;
    }
    let at = |q: f64| quantile_ms(&v, q);
    println!(
        "{what}\n  n={} min={:.2}ms median={:.2}ms p99={:.2}ms max={:.2}ms",
        v.len(),
        at(0.0),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Polls one dataplane, recording each change of "names `a`".
fn poll(i: usize, dns: SocketAddr, a: Ipv4Addr, stop: &AtomicBool, changes: &Changes) {
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(ips) = ask_a(dns, NAME) {
            let now = SystemTime::now();
            let has = ips.contains(&a);
            if last != Some(has) {
                last = Some(has);
                if let Ok(mut c) = changes.lock() {
                    c[i].push((now, has));
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Waits until every dataplane recorded a change to `has` after `t0`;
/// returns each one's first such time.
fn wait_all(
    changes: &Changes,
    t0: SystemTime,
    has: bool,
    limit: Duration,
) -> Result<Vec<SystemTime>> {
    let start = Instant::now();
    loop {
        {
            let c = changes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let firsts: Vec<Option<SystemTime>> = c
                .iter()
                .map(|v| {
                    v.iter()
                        .find(|(t, h)| *t >= t0 && *h == has)
                        .map(|(t, _)| *t)
                })
                .collect();
            if firsts.iter().all(Option::is_some) {
                return Ok(firsts.into_iter().flatten().collect());
            }
        }
        if start.elapsed() > limit {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
