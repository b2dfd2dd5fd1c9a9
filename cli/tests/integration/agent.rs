//! The agent end to end: real controlplane, dataplane and agent binaries on
//! loopback. An agent's backend going down changes the DNS answers within
//! 250 ms of the agent's check noticing; two controlplanes with one agent
//! serve the same answers and losing one changes nothing on the other;
//! graceful shutdown and revocation take the backend out at once.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use hickory_proto::rr::{RData, RecordType};

use crate::harness::{bin, free_port, opengslb, query, try_udp, Gslb, API_TOKEN};

const AGENT_TOKEN: &str = "agent-token-0123456789";

/// The harness config with an agent-fed domain (`agent.gslb.test`, whose
/// configured server is 198.51.100.7) and the agent listener on `listen`.
fn with_agents(listen: SocketAddr) -> impl FnOnce(String) -> String {
    move |c: String| {
        let c = c.replace(
            "  - {name: big.gslb.test, routing_algorithm: round-robin, regions: [big]}\n",
            "  - {name: big.gslb.test, routing_algorithm: round-robin, regions: [big]}\n  - {name: agent.gslb.test, routing_algorithm: round-robin, regions: [v4only], ttl: 5}\n",
        );
        assert!(c.contains("agent.gslb.test"), "harness config changed");
        c.replace(
            "  data_dir: cp-data\n",
            &format!(
                "  data_dir: cp-data\n  agent_listen: \"{listen}\"\n  agent_tokens: {{agent.gslb.test: \"{AGENT_TOKEN}\"}}\n  validation: {{enabled: false}}\n  stale: {{threshold: 3s, remove_after: 1m}}\n"
            ),
        )
    }
}

/// A running agent.
struct Agent {
    dir: PathBuf,
    child: Option<Child>,
    metrics: SocketAddr,
}

impl Agent {
    fn start(dir: PathBuf, controlplanes: &[SocketAddr], backend: SocketAddr) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cps: Vec<String> = controlplanes.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            r#"
logging: {{level: debug, format: text}}
metrics: {{enabled: true, address: "{metrics}"}}
agent:
  identity:
    service_token: "{AGENT_TOKEN}"
    region: v4only
    cert_path: id/agent.crt
    key_path: id/agent.key
  controlplanes: [{cps}]
  backends:
    - service: agent.gslb.test
      address: {ip}
      port: {port}
      health_check: {{type: tcp, interval: 100ms, timeout: 50ms, failure_threshold: 1, success_threshold: 1}}
  heartbeat: {{interval: 1s, missed_threshold: 3}}
"#,
            cps = cps.join(", "),
            ip = backend.ip(),
            port = backend.port(),
        );
        let config = dir.join("agent.yaml");
        std::fs::write(&config, text).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(bin("opengslb-agent"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        Self {
            dir,
            child: Some(child),
            metrics,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn terminate(&mut self) {
        if let Some(c) = &self.child {
            let st = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The text of every log file of `dirs` (cp.log, dp.log, agent/agent.log).
fn read_logs(dirs: &[PathBuf]) -> String {
    let mut out = String::new();
    for d in dirs {
        for f in ["cp.log", "dp.log", "agent/agent.log"] {
            if let Ok(t) = std::fs::read_to_string(d.join(f)) {
                out.push_str(&format!("--- {}\n{t}\n", d.join(f).display()));
            }
        }
    }
    out
}

/// The A records of `agent.gslb.test` from the dataplane at `dns`.
fn addresses(dns: SocketAddr) -> Option<Vec<String>> {
    let m = try_udp(dns, &query("agent.gslb.test.", RecordType::A), 300)?;
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    Some(v)
}

fn wait_for(
    dns: SocketAddr,
    want: &[&str],
    within: Duration,
    why: &str,
    logs: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = addresses(dns);
        if last.as_deref().is_some_and(|v| v == want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{why}: wanted {want:?}, last {last:?}\n{}", logs());
}

/// The wall-clock time of the agent's "backend health changed … healthy=false"
/// log line (tracing text format: RFC 3339 UTC at the start).
fn noticed_at(log: &str) -> Option<SystemTime> {
    let log = strip_ansi(log);
    let line = log
        .lines()
        .find(|l| l.contains("backend health changed") && l.contains("healthy=false"))?;
    parse_rfc3339(line.split_whitespace().next()?)
}

/// `text` without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    // 2026-11-27T01:55:36.123456Z
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(sec))
}

#[test]
fn rfc3339_parses() {
    let t = parse_rfc3339("2026-11-27T01:55:36.250000Z").unwrap();
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(d.as_millis(), 1_795_744_536_250);
}

#[test]
fn agent_backend_down_changes_answers_within_250ms_then_deregisters() {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = Gslb::start_with(with_agents(listen));
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let mut agent = Agent::start(g.dir.path().join("agent"), &[listen], backend_addr);
    let dirs = [g.dir.path().to_path_buf()];
    let logs = || read_logs(&dirs);
    wait_for(
        g.dns,
        &["127.0.0.1", "198.51.100.7"],
        Duration::from_secs(20),
        "agent backend joins the answers",
        &logs,
    );
    // Identity files: private.
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["id/agent.crt", "id/agent.key", "id/controlplanes.pins"] {
            let p = agent.dir.join(f);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    // The backend goes down.
    drop(backend);
    let closed = SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    let changed = loop {
        if addresses(g.dns).as_deref() == Some(&["198.51.100.7".to_owned()][..]) {
            break SystemTime::now();
        }
        assert!(
            Instant::now() < deadline,
            "answers never changed\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let log = agent.log();
    let noticed = noticed_at(&log).unwrap_or_else(|| panic!("no health change logged\n{log}"));
    let delay = changed.duration_since(noticed).unwrap_or_default();
    let total = changed.duration_since(closed).unwrap_or_default();
    eprintln!(
        "agent noticed → new DNS answer: {} ms (backend closed → new answer: {} ms)",
        delay.as_millis(),
        total.as_millis()
    );
    assert!(delay < Duration::from_millis(250), "{delay:?}\n{}", logs());

    // Back up: it returns.
    let backend = TcpListener::bind(backend_addr).unwrap();
    wait_for(
        g.dns,
        &["127.0.0.1", "198.51.100.7"],
        Duration::from_secs(5),
        "backend back",
        &logs,
    );
    // Agent metrics.
    let body = crate::harness::http_get(agent.metrics, "/metrics").unwrap_or_default();
    assert!(
        body.contains("opengslb_agent_backends_registered 1"),
        "{body}"
    );
    assert!(
        body.contains("opengslb_agent_overwatch_connections_active 1"),
        "{body}"
    );
    assert!(g.cp_metric("opengslb_overwatch_agents_registered") == Some(1.0));
    assert!(g.cp_metric("opengslb_overwatch_agent_certs_pinned") == Some(1.0));

    // Graceful shutdown: the backend leaves at once (far sooner than the
    // 3 s stale threshold).
    let t = Instant::now();
    agent.terminate();
    wait_for(
        g.dns,
        &["198.51.100.7"],
        Duration::from_millis(1500),
        "deregistration",
        &logs,
    );
    eprintln!(
        "SIGTERM → backend out of the answers: {} ms",
        t.elapsed().as_millis()
    );
    assert!(agent.log().contains("deregistered"), "{}", agent.log());
    drop(backend);
}

#[test]
fn two_controlplanes_one_agent_serve_the_same_and_stay_independent() {
    let l1: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let l2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut g1 = Gslb::start_with(with_agents(l1));
    let g2 = Gslb::start_with(with_agents(l2));
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut agent = Agent::start(
        g2.dir.path().join("agent"),
        &[l1, l2],
        backend.local_addr().unwrap(),
    );
    let dirs = [g1.dir.path().to_path_buf(), g2.dir.path().to_path_buf()];
    let logs = || read_logs(&dirs);
    let both = ["127.0.0.1", "198.51.100.7"];
    wait_for(
        g1.dns,
        &both,
        Duration::from_secs(20),
        "cp1 serves the agent backend",
        &logs,
    );
    wait_for(
        g2.dns,
        &both,
        Duration::from_secs(20),
        "cp2 serves the agent backend",
        &logs,
    );
    assert_eq!(addresses(g1.dns), addresses(g2.dns));

    // Losing controlplane 1 changes nothing on controlplane 2.
    g1.kill_dp();
    g1.kill_cp();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            addresses(g2.dns).as_deref(),
            Some(&both.map(str::to_owned)[..]),
            "cp2 changed after cp1 died\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent keeps reporting to controlplane 2 alone.
    drop(backend);
    wait_for(
        g2.dns,
        &["198.51.100.7"],
        Duration::from_secs(3),
        "cp2 follows the agent",
        &logs,
    );
    // And counts the lost link (it retries with backoff).
    let body = crate::harness::http_get(agent.metrics, "/metrics").unwrap_or_default();
    let failures = body
        .lines()
        .find(|l| l.starts_with("opengslb_agent_heartbeat_failures_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{body}");
    agent.terminate();
}

#[test]
fn revocation_by_cli_cuts_the_agent_off() {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = Gslb::start_with(with_agents(listen));
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = Agent::start(
        g.dir.path().join("agent"),
        &[listen],
        backend.local_addr().unwrap(),
    );
    let dirs = [g.dir.path().to_path_buf()];
    let logs = || read_logs(&dirs);
    wait_for(
        g.dns,
        &["127.0.0.1", "198.51.100.7"],
        Duration::from_secs(20),
        "agent joins",
        &logs,
    );
    let cli = |args: &[&str]| {
        let out = opengslb()
            .args(["--api", &g.grpc.to_string(), "--token-file"])
            .arg(g.dir.path().join("api.token"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["--output", "json", "agents", "list"]);
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = v["agents"][0]["agent_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("agent-"), "{listed}");
    assert_eq!(v["agents"][0]["connected"], true);
    let _ = API_TOKEN;
    cli(&["agents", "revoke", &id]);
    wait_for(
        g.dns,
        &["198.51.100.7"],
        Duration::from_millis(1000),
        "revoked agent's backend leaves",
        &logs,
    );
    let v: serde_json::Value =
        serde_json::from_str(&cli(&["--output", "json", "agents", "list"])).unwrap();
    assert_eq!(v["agents"][0]["revoked"], true);
    // It keeps being refused (and keeps retrying with backoff).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(addresses(g.dns).unwrap(), vec!["198.51.100.7".to_owned()]);
    assert!(agent.log().contains("revoked"), "{}", agent.log());
    drop(backend);
}

#[test]
fn agent_config_errors_name_file_and_line_and_gossip_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let f = dir.path().join("agent.yaml");
        std::fs::write(&f, text).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let out = Command::new(bin("opengslb-agent"))
            .arg("--config")
            .arg(&f)
            .arg("--validate")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = format!(
        "agent:\n  identity: {{service_token: \"{AGENT_TOKEN}\"}}\n  controlplanes: [\"127.0.0.1:7946\"]\n  backends:\n    - {{service: www.example.com, address: 127.0.0.1, port: 8080}}\n"
    );
    assert_eq!(run(&good).0, Some(0));
    let (code, err) = run(&format!(
        "{good}gossip:\n  overwatch_nodes: [\"10.0.0.1:7946\"]\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("migrating-from-gossip"), "{err}");
    let (code, err) = run(&good.replace("port: 8080}", "port: 8080, colour: red}"));
    assert_eq!(code, Some(2));
    assert!(err.contains("agent.yaml:5"), "{err}");
    let (code, err) = run(&good.replace(AGENT_TOKEN, "short"));
    assert_eq!(code, Some(2));
    assert!(err.contains("service_token"), "{err}");
    let (code, err) = run(&good.replace("[\"127.0.0.1:7946\"]", "[\"no-port\"]"));
    assert_eq!(code, Some(2));
    assert!(err.contains("agent.controlplanes[0]"), "{err}");
}

/// The SHA-256 of the certificate in PEM file `path`, as the API shows it.
fn cert_fingerprint(path: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    opengslb_controlplane::overwatch::tls::fingerprint(&base64_decode(&b64))
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn agent_rotates_a_certificate_near_expiry_and_the_old_one_is_refused() {
    use opengslb_controlplane::overwatch::tls::{self, Identity, PinStore, Trust};
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = Gslb::start_with(with_agents(listen));
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = g.dir.path().join("agent");
    let dirs = [g.dir.path().to_path_buf()];
    let logs = || read_logs(&dirs);
    let cli = |args: &[&str]| {
        let out = opengslb()
            .args(["--api", &g.grpc.to_string(), "--token-file"])
            .arg(g.dir.path().join("api.token"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (cert, key) = (dir.join("id/agent.crt"), dir.join("id/agent.key"));

    // First start: identity made, pinned.
    let mut agent = Agent::start(dir.clone(), &[listen], backend.local_addr().unwrap());
    wait_for(
        g.dns,
        &["127.0.0.1", "198.51.100.7"],
        Duration::from_secs(20),
        "agent joins",
        &logs,
    );
    let v = cli(&["--output", "json", "agents", "list"]);
    let id = v["agents"][0]["agent_id"].as_str().unwrap().to_owned();
    let first = v["agents"][0]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(first, cert_fingerprint(&cert));
    agent.terminate();
    drop(agent);
    wait_for(
        g.dns,
        &["198.51.100.7"],
        Duration::from_secs(3),
        "deregistration",
        &logs,
    );

    // Its certificate is now 61 days old: within the renewal margin of the
    // 90-day certificate.
    let old_pem = std::fs::read_to_string(&cert).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&cert)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(61 * 86_400))
        .unwrap();
    let agent = Agent::start(dir.clone(), &[listen], backend.local_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        last = cli(&["--output", "json", "agents", "list"]);
        let a = &last["agents"][0];
        if a["fingerprint"].as_str() != Some(first.as_str()) && a["connected"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = &last["agents"][0];
    let second = a["fingerprint"].as_str().unwrap().to_owned();
    assert_ne!(second, first, "re-pinned: {last}\n{}", agent.log());
    assert_eq!(
        a["agent_id"].as_str(),
        Some(id.as_str()),
        "same key, same id"
    );
    assert_eq!(a["connected"], true);
    assert_eq!(a["revoked"], false);
    // The controlplane pins exactly the certificate the agent now holds.
    assert_eq!(second, cert_fingerprint(&cert));
    let previous = dir.join("id/agent.crt.previous");
    assert_eq!(std::fs::read_to_string(&previous).unwrap(), old_pem);
    for f in [&cert, &key, &previous] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert!(
        agent.log().contains("certificate rotated"),
        "{}",
        agent.log()
    );
    // Served with the new certificate.
    wait_for(
        g.dns,
        &["127.0.0.1", "198.51.100.7"],
        Duration::from_secs(5),
        "agent back with the new certificate",
        &logs,
    );

    // The old certificate is refused now; the new one is accepted.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let try_register = |who: Identity| {
        rt.block_on(async {
            let endpoint = listen.to_string();
            let trust = Trust::Pin(std::sync::Arc::new(PinStore::open(None).unwrap()));
            let cfg = tls::client_config(&who, &endpoint, &trust).unwrap();
            let ch = tls::connect(&endpoint, cfg, Duration::from_secs(3))
                .await
                .unwrap();
            opengslb_proto::agent_service_client::AgentServiceClient::new(ch)
                .register(opengslb_proto::RegisterRequest {
                    agent_id: id.clone(),
                    region: "v4only".into(),
                    service_token: AGENT_TOKEN.into(),
                    backends: vec![opengslb_proto::BackendRef {
                        service: "agent.gslb.test".into(),
                        address: "127.0.0.1".into(),
                        port: u32::from(backend_port),
                        weight: 100,
                        check: None,
                    }],
                    heartbeat_interval_ms: 1000,
                    missed_threshold: 3,
                })
                .await
        })
    };
    let e = try_register(Identity::load(&previous, &key).unwrap()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("pinned"), "{e:?}");
    assert!(try_register(Identity::load(&cert, &key).unwrap()).is_ok());
    drop(agent);
    drop(backend);
}
