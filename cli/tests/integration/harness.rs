//! Test support: starts the real binaries on loopback with a generated
//! config, and talks DNS to them with hickory-proto as the independent client.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};

/// Directory holding the workspace's binaries, built once per test run.
///
/// `cargo test --workspace` (the README's test command) builds every binary
/// with the tests, since each binary's package has integration tests; then
/// there is nothing to build. Only when a binary is missing or older than a
/// source file (say after `cargo test -p opengslb-cli` following an edit) is
/// `cargo build` run, with the test build's feature set
/// (`--workspace --bins --tests`).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        if binaries_stale(&dir) {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--workspace", "--bins", "--tests"]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "building the binaries failed");
        }
        dir
    })
}

/// Whether a server binary in `dir` is missing or older than a source file
/// of the crates it is built from.
fn binaries_stale(dir: &Path) -> bool {
    fn newest(path: &Path, acc: &mut std::time::SystemTime) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    newest(&p, acc);
                }
            } else if let Ok(m) = meta.modified() {
                *acc = (*acc).max(m);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut src = std::time::SystemTime::UNIX_EPOCH;
    for c in ["proto", "health", "dataplane", "controlplane", "agent"] {
        newest(&root.join(c), &mut src);
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(m) = std::fs::metadata(root.join(f)).and_then(|m| m.modified()) {
            src = src.max(m);
        }
    }
    [
        "opengslb-controlplane",
        "opengslb-dataplane",
        "opengslb-agent",
    ]
    .iter()
    .any(|b| {
        std::fs::metadata(dir.join(b))
            .and_then(|m| m.modified())
            .map_or(true, |m| m < src)
    })
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    if name == "opengslb" {
        return PathBuf::from(env!("CARGO_BIN_EXE_opengslb"));
    }
    bin_dir().join(name)
}

/// A command running the `opengslb` CLI, with the sibling binaries built and
/// without the `CARGO` variable that `cargo test` sets: under `cargo run` the
/// CLI rebuilds its siblings, and from a test that would be one more build
/// of the workspace with another feature set.
pub fn opengslb() -> Command {
    bin_dir();
    let mut cmd = Command::new(bin("opengslb"));
    cmd.env_remove("CARGO");
    cmd
}

/// Writes a config file readable by its owner only (the controlplane refuses
/// a config readable by other users).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod config");
}

/// A port free on 127.0.0.1 for both UDP and TCP, for a server the test
/// starts later.
///
/// Ports come from 10000–31999, below the kernel's ephemeral range
/// (32768 and up): a port-0 bind or an outgoing connection elsewhere in the
/// test run can then never take the port between this check and the
/// server's own bind (which is what a port-0 probe allowed). A counter keeps
/// this process's tests apart; the start depends on the pid so that two
/// runs side by side begin far apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("port fits");
        let Ok(_tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// The test zone's config; `{dns}`, `{grpc}`, `{dpmetrics}` and `{extra}` are filled in.
pub const BASE_CONFIG: &str = r#"
logging: {level: debug, format: text}
dns:
  listen_address: "{dns}"
  default_ttl: 60
  zones:
    - name: gslb.test
      soa: {mname: ns1.gslb.test, rname: hostmaster.gslb.test, refresh: 3600, retry: 600, expire: 604800, minimum: 30, ttl: 3600}
      ns: [ns1.gslb.test, ns2.gslb.test]
      records:
        - {name: alias.gslb.test, type: CNAME, value: www.gslb.test, ttl: 300}
        - {name: dangling.gslb.test, type: CNAME, value: nothere.gslb.test}
        - {name: info.gslb.test, type: TXT, value: "hello world"}
        - {name: gslb.test, type: MX, value: "10 mail.gslb.test"}
    - other.test
dataplane:
  workers: 1
  controlplanes: ["{grpc}"]
  cache_dir: dp-cache
  metrics_address: "{dpmetrics}"
  tcp: {idle_timeout: 2s, io_timeout: 500ms, max_connections: {maxconn}}
regions:
  - name: local
    servers:
      - {address: 192.0.2.1, port: 80}
      - {address: 192.0.2.2, port: 80}
      - {address: 192.0.2.3, port: 80}
      - {address: "2001:db8::1", port: 80}
    health_check: {type: none}
  - name: v4only
    servers:
      - {address: 198.51.100.7, port: 80}
    health_check: {type: none}
  - name: big
    servers:
{bigservers}
    health_check: {type: none}
domains:
  - {name: www.gslb.test, routing_algorithm: round-robin, regions: [local], ttl: 30}
  - {name: api.gslb.test, routing_algorithm: rr, regions: [v4only]}
  - {name: svc.deep.gslb.test, routing_algorithm: round-robin, regions: [v4only], ttl: 45}
  - {name: big.gslb.test, routing_algorithm: round-robin, regions: [big]}
overwatch:
  identity: {node_id: cp-test}
  grpc_address: "{grpc}"
  data_dir: cp-data
metrics: {enabled: true, address: "{cpmetrics}"}
api: {address: "{api}", token_file: api.token}
"#;

/// The bearer token the harness writes to `api.token` (identity `tests`).
pub const API_TOKEN: &str = "integration-test-token-0123456789";

/// A running controlplane + dataplane pair in a temporary directory.
pub struct Gslb {
    pub dir: tempfile::TempDir,
    pub dns: SocketAddr,
    pub grpc: SocketAddr,
    pub dp_metrics: SocketAddr,
    pub cp_metrics: SocketAddr,
    /// The REST API (`api.address`).
    pub api: SocketAddr,
    pub config: PathBuf,
    pub dp_json: PathBuf,
    pub cp: Option<Child>,
    pub dp: Option<Child>,
}

impl Gslb {
    /// Writes the config, starts both processes and waits until DNS answers.
    pub fn start() -> Self {
        Self::start_with(|c| c)
    }

    /// As `start`, with the config text passed through `edit` first.
    pub fn start_with(edit: impl FnOnce(String) -> String) -> Self {
        let g = Self::prepare(edit);
        let mut g = g;
        g.start_cp();
        g.start_dp();
        g.wait_answering();
        g
    }

    /// Writes the config and the dataplane settings, starts nothing.
    pub fn prepare(edit: impl FnOnce(String) -> String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dp_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cp_metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let big: String = (1..=40)
            .map(|i| format!("      - {{address: \"2001:db8:b16::{i:x}\", port: 80}}\n"))
            .collect();
        let text = BASE_CONFIG
            .replace("{dns}", &dns.to_string())
            .replace("{grpc}", &grpc.to_string())
            .replace("{dpmetrics}", &dp_metrics.to_string())
            .replace("{cpmetrics}", &cp_metrics.to_string())
            .replace("{api}", &api.to_string())
            .replace("{maxconn}", "16")
            .replace("{bigservers}", big.trim_end_matches('\n'));
        let text = edit(text);
        let config = dir.path().join("gslb.yaml");
        std::fs::write(&config, text).expect("write config");
        {
            use std::os::unix::fs::PermissionsExt;
            // The controlplane refuses a config readable by other users.
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
                .expect("chmod gslb.yaml");
            let token = dir.path().join("api.token");
            std::fs::write(&token, format!("tests:{API_TOKEN}\n")).expect("write api.token");
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod api.token");
        }
        let out = Command::new(bin("opengslb-controlplane"))
            .arg("--config")
            .arg(&config)
            .arg("dataplane-config")
            .output()
            .expect("run dataplane-config");
        assert!(
            out.status.success(),
            "dataplane-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dp_json = dir.path().join("dataplane.json");
        std::fs::write(&dp_json, &out.stdout).expect("write dataplane.json");
        Self {
            dir,
            dns,
            grpc,
            dp_metrics,
            cp_metrics,
            api,
            config,
            dp_json,
            cp: None,
            dp: None,
        }
    }

    pub fn start_cp(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("cp.log")).unwrap();
        let child = Command::new(bin("opengslb-controlplane"))
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start controlplane");
        self.cp = Some(child);
    }

    pub fn start_dp(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dp.log"))
            .unwrap();
        let child = Command::new(bin("opengslb-dataplane"))
            .arg("--config")
            .arg(&self.dp_json)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dataplane");
        self.dp = Some(child);
    }

    pub fn kill_cp(&mut self) {
        if let Some(mut c) = self.cp.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_dp(&mut self) {
        if let Some(mut c) = self.dp.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGHUP to the controlplane (config reload).
    pub fn reload_cp(&self) {
        let pid = self.cp.as_ref().expect("controlplane running").id();
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits (bounded) until the dataplane answers the SOA query.
    pub fn wait_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(m) = try_udp(self.dns, &query("gslb.test.", RecordType::SOA), 200) {
                if m.answers.len() == 1 {
                    return;
                }
            }
            let mut exited = None;
            for (name, child) in [("controlplane", &mut self.cp), ("dataplane", &mut self.dp)] {
                if let Some(Ok(Some(st))) = child.as_mut().map(|c| c.try_wait()) {
                    exited = Some((name, st));
                }
            }
            if let Some((name, st)) = exited {
                panic!("{name} exited early ({st}):\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("dataplane never answered:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- cp.log\n{}\n--- dp.log\n{}",
            read("cp.log"),
            read("dp.log")
        )
    }

    /// UDP query, panics on timeout.
    pub fn udp(&self, q: &Message) -> Message {
        try_udp(self.dns, q, 2000).unwrap_or_else(|| panic!("no UDP reply:\n{}", self.logs()))
    }

    /// Raw UDP exchange.
    pub fn udp_raw(&self, bytes: &[u8], wait_ms: u64) -> Option<Vec<u8>> {
        udp_raw(self.dns, bytes, wait_ms)
    }

    /// TCP query on a fresh connection.
    pub fn tcp(&self, q: &Message) -> Message {
        let mut s = TcpStream::connect(self.dns).expect("tcp connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        tcp_send(&mut s, &q.to_vec().unwrap());
        Message::from_vec(&tcp_recv(&mut s).expect("tcp reply")).expect("parse tcp reply")
    }

    /// Scrapes the controlplane's metrics endpoint: the value of the series
    /// whose line starts with `series` (name plus labels as printed).
    pub fn cp_metric(&self, series: &str) -> Option<f64> {
        let body = http_get(self.cp_metrics, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Scrapes the dataplane's metrics endpoint.
    pub fn dp_metric(&self, name: &str) -> Option<f64> {
        let body = http_get(self.dp_metrics, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Gslb {
    fn drop(&mut self) {
        self.kill_dp();
        self.kill_cp();
    }
}

/// A query message with a fixed id.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

/// A query with EDNS (payload size, DO bit).
pub fn query_edns(name: &str, rtype: RecordType, payload: u16) -> Message {
    let mut m = query(name, rtype);
    let mut e = Edns::new();
    e.set_max_payload(payload);
    e.set_version(0);
    m.set_edns(e);
    m
}

pub fn try_udp(addr: SocketAddr, q: &Message, wait_ms: u64) -> Option<Message> {
    let bytes = udp_raw(addr, &q.to_vec().ok()?, wait_ms)?;
    Message::from_vec(&bytes).ok()
}

pub fn udp_raw(addr: SocketAddr, bytes: &[u8], wait_ms: u64) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(wait_ms)))
        .ok()?;
    s.send_to(bytes, addr).ok()?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

pub fn tcp_send(s: &mut TcpStream, msg: &[u8]) {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).expect("tcp write");
}

pub fn tcp_recv(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}
