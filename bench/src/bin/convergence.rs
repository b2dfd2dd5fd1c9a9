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
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

const NAME: &str = "cv.bench.test";

/// Per dataplane, each change seen: (when, names the toggled backend).
type Changes = Mutex<Vec<Vec<(SystemTime, bool)>>>;

const CONFIG: &str = r#"
logging: {level: info, format: text}
metrics: {enabled: true, address: "{cpmetrics}"}
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
    let dir = std::env::temp_dir().join(format!("opengslb-convergence-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&bins, &dir, cycles, dataplanes);
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("logs kept in {}", dir.display()),
    }
    result
}

/// The directory holding both binaries, (re)built with this profile first
/// so a stale build is never measured.
fn binaries() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?.to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "-q",
        "-p",
        "opengslb-controlplane",
        "-p",
        "opengslb-dataplane",
    ]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        if !dir.join("opengslb-controlplane").exists() || !dir.join("opengslb-dataplane").exists() {
            bail!("building the binaries failed");
        }
        eprintln!("warning: building the binaries failed; measuring the existing ones");
    }
    Ok(dir)
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

fn run(bins: &Path, dir: &Path, cycles: usize, n: usize) -> Result<()> {
    let mut toggled = Backend::start("127.0.0.2:0".parse()?)?;
    let steady = Backend::start("127.0.0.3:0".parse()?)?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let cp_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut children = Children(Vec::new());
    let mut dns = Vec::new();
    for i in 0..n {
        let d: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let m = format!("127.0.0.1:{}", free_port()?);
        let text = CONFIG
            .replace("{cpmetrics}", &cp_metrics.to_string())
            .replace("{dns}", &d.to_string())
            .replace("{grpc}", &grpc)
            .replace("{dpmetrics}", &m)
            .replace("{port_a}", &toggled.addr.port().to_string())
            .replace("{port_b}", &steady.addr.port().to_string());
        let sub = dir.join(format!("dp{i}"));
        std::fs::create_dir_all(&sub)?;
        let cfg = sub.join("gslb.yaml");
        std::fs::write(&cfg, text)?;
        // The controlplane refuses a config readable by other users.
        std::fs::set_permissions(
            &cfg,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )?;
        let out = Command::new(bins.join("opengslb-controlplane"))
            .arg("--config")
            .arg(&cfg)
            .arg("dataplane-config")
            .output()?;
        if !out.status.success() {
            bail!("dataplane-config: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(sub.join("dataplane.json"), &out.stdout)?;
        if i == 0 {
            children.0.push(
                Command::new(bins.join("opengslb-controlplane"))
                    .arg("--config")
                    .arg(&cfg)
                    .current_dir(dir)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("cp.log"))?)
                    .spawn()?,
            );
        }
        dns.push(d);
    }
    for (i, _) in dns.iter().enumerate() {
        let sub = dir.join(format!("dp{i}"));
        children.0.push(
            Command::new(bins.join("opengslb-dataplane"))
                .arg("--config")
                .arg(sub.join("dataplane.json"))
                .current_dir(&sub)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(sub.join("dp.log"))?)
                .spawn()?,
        );
    }
    let a = Ipv4Addr::new(127, 0, 0, 2);
    // Wait until every dataplane names both backends.
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in &dns {
        while ask(*d).is_none_or(|ips| ips.len() != 2) {
            if Instant::now() > deadline {
                bail!(
                    "dataplane {d} never answered both backends; cp.log:\n{}",
                    std::fs::read_to_string(dir.join("cp.log")).unwrap_or_default()
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
    let mut last_gen = metric(cp_metrics, "opengslb_snapshot_generation").unwrap_or(0);
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
    let subscribers = metric(cp_metrics, "opengslb_snapshot_subscribers").unwrap_or(0);
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
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return;
    }
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what}\n  n={} min={:.2}ms median={:.2}ms p99={:.2}ms max={:.2}ms",
        v.len(),
        v[0],
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    );
}

/// Polls one dataplane, recording each change of "names `a`".
fn poll(i: usize, dns: SocketAddr, a: Ipv4Addr, stop: &AtomicBool, changes: &Changes) {
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(ips) = ask(dns) {
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

fn wait_generation(metrics: SocketAddr, after: u64) -> Result<u64> {
    let start = Instant::now();
    loop {
        if let Some(g) = metric(metrics, "opengslb_snapshot_generation") {
            if g > after {
                return Ok(g);
            }
        }
        if start.elapsed() > Duration::from_secs(2) {
            bail!("the controlplane's generation did not move");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The A records of `NAME` from `dns` (None on timeout or error rcode).
fn ask(dns: SocketAddr) -> Option<Vec<Ipv4Addr>> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    s.send_to(&q, dns).ok()?;
    let mut buf = [0u8; 1500];
    let (len, _) = s.recv_from(&mut buf).ok()?;
    parse_a(&buf[..len])
}

fn parse_a(m: &[u8]) -> Option<Vec<Ipv4Addr>> {
    if m.len() < 12 || m[0..2] != [0x12, 0x34] || m[3] & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut i = 12;
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let b = *m.get(i)?;
            if b == 0 {
                return Some(i + 1);
            }
            if b & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + usize::from(b);
        }
    };
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(i)?;
        let rtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]));
        i += 10;
        if rtype == 1 && rdlen == 4 {
            let r = m.get(i..i + 4)?;
            out.push(Ipv4Addr::new(r[0], r[1], r[2], r[3]));
        }
        i += rdlen;
    }
    Some(out)
}

/// A TCP listener that can be closed (connections refused) and reopened.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let mut b = Self {
            addr: listener.local_addr()?,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        b.spawn(listener)?;
        Ok(b)
    }

    fn spawn(&mut self, listener: TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        self.stop.store(false, Ordering::SeqCst);
        let stop = self.stop.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }));
        Ok(())
    }

    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn up(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => return self.spawn(l),
                Err(e) if start.elapsed() < Duration::from_secs(5) => {
                    eprintln!("rebind {}: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.down();
    }
}
