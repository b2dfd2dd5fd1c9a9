//! Support shared by the bench binaries that run the real
//! `opengslb-controlplane` and `opengslb-dataplane` on loopback (`agents`,
//! `swaps`, `convergence`, `dnssec_flip`): building and locating the
//! binaries, race-free ports, starting the processes with their logs in a
//! work directory (and stopping them), waiting for them, reading their
//! metrics and `/proc` figures, small DNS wire helpers, and a TCP backend
//! that can be closed and reopened.
//!
//! Environment: `OPENGSLB_BIN=DIR` measures the binaries in DIR instead of
//! building them; `OPENGSLB_BENCH_KEEP=1` keeps the work directory (logs,
//! configs) after a successful run too (it is always kept after a failure).

use std::{
    fs::OpenOptions,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The first port [`free_port`] and [`listen_tcp`] hand out.
pub const PORT_LOW: u16 = 10_000;
/// One past the last port they hand out: below the kernel's usual
/// ephemeral range (32768 and up).
pub const PORT_HIGH: u16 = 32_000;

/// The ports to try, in this process's order: a process-wide counter
/// walks 10000–31999 from a start that depends on the pid, so the servers
/// of one run never get the same port twice and two runs side by side
/// begin far apart. Ports at or above the start of the kernel's ephemeral
/// range (`ip_local_port_range`, when it reaches down into ours) are
/// skipped.
fn candidate_ports() -> impl Iterator<Item = u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().map_or(PORT_HIGH, |e| e.clamp(PORT_LOW + 1, PORT_HIGH));
    let span = u32::from(high - PORT_LOW);
    let start = std::process::id().wrapping_mul(7919) % span;
    (0..span).filter_map(move |_| {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        u16::try_from(u32::from(PORT_LOW) + (start + n) % span).ok()
    })
}

/// The first port of the kernel's ephemeral range, if it can be read.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A port free on 127.0.0.1 for both TCP and UDP, for a server started
/// later.
///
/// Not a port-0 probe: a port the kernel hands out for port 0 lies in the
/// ephemeral range, where any other bind to port 0 or outgoing connection
/// can take it before the server binds it. These ports come from
/// 10000–31999 (see [`PORT_LOW`]), which the kernel never picks by itself,
/// and each is checked free for TCP and UDP.
pub fn free_port() -> Result<u16> {
    for port in candidate_ports() {
        let Ok(_tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {PORT_LOW}..{PORT_HIGH} on 127.0.0.1")
}

/// `127.0.0.1:` a [`free_port`].
pub fn free_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// A TCP listener on `ip` at a port from the same range as [`free_port`]
/// (so it can be closed and bound again without an ephemeral port taking
/// it in between).
pub fn listen_tcp(ip: IpAddr) -> Result<TcpListener> {
    for port in candidate_ports() {
        if let Ok(l) = TcpListener::bind((ip, port)) {
            return Ok(l);
        }
    }
    bail!("no free port in {PORT_LOW}..{PORT_HIGH} on {ip}")
}

/// The directory holding `opengslb-controlplane` and `opengslb-dataplane`:
/// `OPENGSLB_BIN` when set; otherwise this executable's directory, after
/// building both there with this profile (so a stale build is never
/// measured). When the build fails but both binaries exist, those are
/// measured, with a warning.
pub fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OPENGSLB_BIN") {
        return Ok(dir.into());
    }
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
    if !cmd.status().is_ok_and(|s| s.success()) {
        if !dir.join("opengslb-controlplane").exists() || !dir.join("opengslb-dataplane").exists() {
            bail!("building the binaries failed");
        }
        eprintln!("warning: building the binaries failed; measuring the existing ones");
    }
    Ok(dir)
}

/// A fresh work directory `$TMPDIR/opengslb-{name}-{pid}`.
pub fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("opengslb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes the work directory after a successful run (unless
/// `OPENGSLB_BENCH_KEEP` is set); otherwise says where the logs are.
pub fn finish(dir: &Path, ok: bool) {
    if ok && std::env::var_os("OPENGSLB_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
}

/// Started processes, killed and reaped when dropped.
#[derive(Default)]
pub struct Children(Vec<Child>);

impl Children {
    /// Keeps `child`; returns its pid.
    pub fn push(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.0.push(child);
        pid
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes a config readable by its owner only (the controlplane refuses
/// one readable by other users), atomically: the controlplane may be
/// reading it for a reload.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Renders the dataplane's settings from the controlplane config `cfg`
/// (`opengslb-controlplane dataplane-config`) into `out`.
pub fn dataplane_config(bins: &Path, cfg: &Path, out: &Path) -> Result<()> {
    let o = Command::new(bins.join("opengslb-controlplane"))
        .arg("--config")
        .arg(cfg)
        .arg("dataplane-config")
        .output()
        .context("running opengslb-controlplane dataplane-config")?;
    if !o.status.success() {
        bail!("dataplane-config: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::write(out, &o.stdout)?;
    Ok(())
}

/// Starts `cmd` in `dir` with stdin closed and stdout and stderr both
/// appended to `dir/log`.
pub fn spawn_logged(cmd: &mut Command, dir: &Path, log: &str) -> Result<Child> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(log))?;
    let err = out.try_clone()?;
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// Starts the controlplane on `cfg` in `dir`, logging to `dir/cp.log`.
pub fn start_controlplane(bins: &Path, cfg: &Path, dir: &Path) -> Result<Child> {
    spawn_logged(
        Command::new(bins.join("opengslb-controlplane"))
            .arg("--config")
            .arg(cfg),
        dir,
        "cp.log",
    )
}

/// Starts a dataplane on its settings file `json` in `dir` (where its
/// cache lives), logging to `dir/dp.log`.
pub fn start_dataplane(bins: &Path, json: &Path, dir: &Path) -> Result<Child> {
    spawn_logged(
        Command::new(bins.join("opengslb-dataplane"))
            .arg("--config")
            .arg(json),
        dir,
        "dp.log",
    )
}

/// The text of a log file, for an error message (empty when unreadable).
pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (at most `limit`) until `addr` accepts TCP connections.
pub fn wait_tcp(addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listened on {addr} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The value of the series `name` (name plus labels as printed) on the
/// Prometheus endpoint at `addr`.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

/// The controlplane's `opengslb_snapshot_generation` (microseconds since
/// the epoch, taken as the recompile starts) from its metrics at `metrics`.
pub fn snapshot_generation(metrics: SocketAddr) -> Option<u64> {
    metric(metrics, "opengslb_snapshot_generation").map(|g| g as u64)
}

/// Waits (at most 2 s) until the controlplane's snapshot generation (see
/// [`snapshot_generation`]) moves past `after`; returns it.
pub fn wait_generation(metrics: SocketAddr, after: u64) -> Result<u64> {
    let start = Instant::now();
    loop {
        if let Some(g) = snapshot_generation(metrics) {
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

/// utime + stime of `pid`, in clock ticks (see [`clock_ticks`]).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let u: u64 = f.get(11).context("utime")?.parse()?;
    let s: u64 = f.get(12).context("stime")?.parse()?;
    Ok(u + s)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set of `pid` (`VmRSS`), KiB; 0 when unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The `q` quantile (0 to 1) of sorted, non-empty `samples`, in
/// milliseconds.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let i = ((samples.len().saturating_sub(1)) as f64 * q).round() as usize;
    samples
        .get(i.min(samples.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `name` in DNS wire format (uncompressed, with the root label).
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut w = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.') {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

/// A query (RD, class IN, no EDNS) with `id` for `name`/`qtype`.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(&wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// The offset just past the (possibly compressed) name at `i` in `m`.
pub fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)?;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + usize::from(len);
    }
}

/// (type, rdata) of each answer record of `m`; None when it is malformed.
pub fn answers(m: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
    let qd = u16::from_be_bytes([*m.get(4)?, *m.get(5)?]);
    let an = u16::from_be_bytes([*m.get(6)?, *m.get(7)?]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let mut out = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        i = skip_name(m, i)?;
        let rtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]));
        i += 10;
        out.push((rtype, m.get(i..i + rdlen)?.to_vec()));
        i += rdlen;
    }
    Some(out)
}

/// Asks `dns` (UDP, 200 ms) for the A records of `name`; None on timeout,
/// a malformed reply or an error rcode.
pub fn ask_a(dns: SocketAddr, name: &str) -> Option<Vec<Ipv4Addr>> {
    const ID: u16 = 0x1234;
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    s.send_to(&build_query(ID, name, 1), dns).ok()?;
    let mut buf = [0u8; 1500];
    let (len, _) = s.recv_from(&mut buf).ok()?;
    let m = &buf[..len];
    if m.len() < 12 || m[0..2] != ID.to_be_bytes() || m[3] & 0x0f != 0 {
        return None;
    }
    Some(
        answers(m)?
            .into_iter()
            .filter(|(t, _)| *t == 1)
            .filter_map(|(_, rd)| <[u8; 4]>::try_from(rd.as_slice()).ok())
            .map(Ipv4Addr::from)
            .collect(),
    )
}

/// A TCP backend on loopback that accepts (and drops) connections while
/// up, and refuses them while down; its port stays the same.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts listening on `ip` at a port from [`listen_tcp`].
    pub fn start(ip: Ipv4Addr) -> Result<Self> {
        let listener = listen_tcp(IpAddr::V4(ip))?;
        let mut b = Self {
            addr: listener.local_addr()?,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        b.serve(listener)?;
        Ok(b)
    }

    fn serve(&mut self, listener: TcpListener) -> Result<()> {
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

    /// Closes the listener: connections are refused.
    pub fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same address (retrying for up to 5 s).
    pub fn up(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => return self.serve(l),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port handed out twice");
        for p in ports {
            assert!((PORT_LOW..PORT_HIGH).contains(&p), "{p}");
            if let Some(e) = ephemeral_low() {
                assert!(p < e, "{p} is in the ephemeral range from {e}");
            }
            // Still free for the server to bind, both protocols.
            let _t = TcpListener::bind(("127.0.0.1", p)).unwrap();
            let _u = UdpSocket::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn a_taken_port_is_skipped() {
        let held = TcpListener::bind(("127.0.0.1", free_port().unwrap())).unwrap();
        let taken = held.local_addr().unwrap().port();
        for _ in 0..20 {
            assert_ne!(free_port().unwrap(), taken);
        }
    }

    #[test]
    fn backend_goes_down_and_up_on_the_same_port() {
        let mut b = Backend::start(Ipv4Addr::new(127, 0, 0, 2)).unwrap();
        assert!((PORT_LOW..PORT_HIGH).contains(&b.addr.port()));
        assert!(TcpStream::connect(b.addr).is_ok());
        b.down();
        assert!(TcpStream::connect(b.addr).is_err());
        b.up().unwrap();
        assert!(TcpStream::connect(b.addr).is_ok());
    }

    #[test]
    fn answers_parse_a_reply_and_reject_a_truncated_one() {
        // A reply to build_query(7, "a.test", 1) with one A record
        // (compressed owner) and one AAAA-typed record.
        let mut m = build_query(7, "a.test", 1);
        m[2] = 0x81;
        m[7] = 2;
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 9]);
        m.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 30, 0, 2, 1, 2]);
        let got = answers(&m).unwrap();
        assert_eq!(got, vec![(1, vec![192, 0, 2, 9]), (28, vec![1, 2])]);
        assert!(answers(&m[..m.len() - 1]).is_none());
        assert_eq!(wire_name("a.test."), wire_name("a.test"));
    }

    #[test]
    fn quantiles_of_sorted_samples() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&v, 0.0), 1.0);
        assert_eq!(quantile_ms(&v, 1.0), 10.0);
        assert_eq!(quantile_ms(&v, 0.5), 6.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
