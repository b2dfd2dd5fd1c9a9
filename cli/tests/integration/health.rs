//! Health checking end to end: real HTTP, HTTPS and TCP backends on
//! loopback addresses (127.0.0.x, each its own answered address) that go
//! down and come back, checked by the real controlplane and observed through
//! the real dataplane's DNS answers.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType},
};

use crate::harness::*;

/// What a backend does with a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
    Tcp,
}

/// A backend on `ip:port` that can be stopped (listener closed: connections
/// refused) and started again on the same address; HTTP ones answer with a
/// settable status and count what they answered.
struct Backend {
    addr: SocketAddr,
    kind: Kind,
    status: Arc<AtomicU16>,
    /// Requests (or TCP connections) answered, by status class.
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(ip: &str, kind: Kind) -> Self {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut b = Self {
            addr,
            kind,
            status: Arc::new(AtomicU16::new(200)),
            ok: Arc::new(AtomicUsize::new(0)),
            failed: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        b.spawn(listener);
        b
    }

    fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    fn spawn(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let (status, ok, failed, stop, kind) = (
            self.status.clone(),
            self.ok.clone(),
            self.failed.clone(),
            self.stop.clone(),
            self.kind,
        );
        let tls = (kind == Kind::Https).then(tls_config);
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let code = status.load(Ordering::SeqCst);
                let counter = if (200..300).contains(&code) {
                    &ok
                } else {
                    &failed
                };
                match (kind, &tls) {
                    (Kind::Tcp, _) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    (Kind::Http, _) => {
                        let mut s = s;
                        if respond(&mut s, code) {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    (Kind::Https, Some(cfg)) => {
                        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                        let mut tls = rustls::StreamOwned::new(conn, s);
                        if respond(&mut tls, code) {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                    (Kind::Https, None) => unreachable!(),
                }
            }
        }));
    }

    /// Closes the listener: new connections are refused.
    fn down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Listens again on the same address.
    fn up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebind {}: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.spawn(listener);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.down();
    }
}

/// Reads a request head and writes a response with `code`; true when the
/// response was written.
fn respond(s: &mut impl ReadWrite, code: u16) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = if code < 300 { "ok" } else { "no" };
    let msg = format!(
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes()).is_ok() && s.flush().is_ok()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["backend.gslb.test".to_owned()]).unwrap();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    )
}

/// Adds `regions` and `domains` (YAML list items) to the base config.
fn with(regions: &str, domains: &str) -> impl FnOnce(String) -> String {
    let (regions, domains) = (regions.to_owned(), domains.to_owned());
    move |c| {
        c.replacen("regions:\n", &format!("regions:\n{regions}"), 1)
            .replacen("domains:\n", &format!("domains:\n{domains}"), 1)
    }
}

fn region(name: &str, servers: &[&Backend], check: &str) -> String {
    let list: String = servers
        .iter()
        .map(|b| {
            format!(
                "      - {{address: {}, port: {}}}\n",
                b.addr.ip(),
                b.addr.port()
            )
        })
        .collect();
    format!("  - name: {name}\n    servers:\n{list}    health_check: {check}\n")
}

/// (rcode, addresses) of an A query.
fn ask(g: &Gslb, name: &str) -> (ResponseCode, Vec<IpAddr>) {
    let m = try_udp(g.dns, &query(name, RecordType::A), 1000)
        .unwrap_or_else(|| panic!("no reply for {name}:\n{}", g.logs()));
    let mut ips: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    (m.metadata.response_code, ips)
}

/// Polls `name` until `done` holds; returns the time it took. Panics after `limit`.
fn until(
    g: &Gslb,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(ResponseCode, &[IpAddr]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let (rcode, ips) = ask(g, name);
        if done(rcode, &ips) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still {rcode:?} {ips:?} after {limit:?}\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

const FAST: &str =
    "{type: http, interval: 200ms, timeout: 100ms, failure_threshold: 3, success_threshold: 2}";

#[test]
fn http_backend_that_stops_accepting_leaves_within_bound_and_comes_back() {
    let mut a = Backend::start("127.0.0.2", Kind::Http);
    let b = Backend::start("127.0.0.3", Kind::Http);
    let g = Gslb::start_with(with(
        &region("hc", &[&a, &b], FAST),
        "  - {name: hc.gslb.test, routing_algorithm: round-robin, regions: [hc]}\n",
    ));
    let both = vec![a.ip(), b.ip()];
    assert_eq!(
        ask(&g, "hc.gslb.test"),
        (ResponseCode::NoError, both.clone())
    );

    for round in 0..2 {
        a.down();
        // interval × failure_threshold + 250 ms
        let left = until(
            &g,
            "hc.gslb.test",
            Duration::from_millis(850),
            "leave",
            |_, ips| ips == [b.ip()],
        );
        eprintln!("round {round}: left after {left:?}");
        let ok_before = a.ok.load(Ordering::SeqCst);
        a.up();
        until(
            &g,
            "hc.gslb.test",
            Duration::from_secs(2),
            "return",
            |_, ips| ips == both,
        );
        let oks = a.ok.load(Ordering::SeqCst) - ok_before;
        assert_eq!(
            oks, 2,
            "returned after {oks} successes, success_threshold is 2"
        );
    }
}

#[test]
fn thresholds_are_honoured_exactly() {
    let a = Backend::start("127.0.0.4", Kind::Http);
    let b = Backend::start("127.0.0.5", Kind::Http);
    // A long interval next to the few milliseconds from decision to answer,
    // so no extra probe can land between the decision and the count below.
    let check =
        "{type: http, interval: 1s, timeout: 400ms, failure_threshold: 4, success_threshold: 3}";
    let g = Gslb::start_with(with(
        &region("th", &[&a, &b], check),
        "  - {name: th.gslb.test, regions: [th]}\n",
    ));
    let both = vec![a.ip(), b.ip()];
    assert_eq!(ask(&g, "th.gslb.test").1, both);
    let failed_before = a.failed.load(Ordering::SeqCst);
    a.status.store(500, Ordering::SeqCst);
    until(
        &g,
        "th.gslb.test",
        Duration::from_secs(9),
        "leave",
        |_, ips| ips == [b.ip()],
    );
    assert_eq!(
        a.failed.load(Ordering::SeqCst) - failed_before,
        4,
        "left after a number of 500s other than failure_threshold"
    );
    let ok_before = a.ok.load(Ordering::SeqCst);
    a.status.store(200, Ordering::SeqCst);
    until(
        &g,
        "th.gslb.test",
        Duration::from_secs(9),
        "return",
        |_, ips| ips == both,
    );
    assert_eq!(
        a.ok.load(Ordering::SeqCst) - ok_before,
        3,
        "returned after a number of 200s other than success_threshold"
    );
    // The probe results are counted per region and server.
    let series = format!(
        "opengslb_health_check_results_total{{region=\"th\",result=\"status\",server=\"{}\"}}",
        a.addr
    );
    assert!(g.cp_metric(&series).unwrap_or_default() >= 4.0, "{series}");
}

#[test]
fn a_server_down_at_start_is_never_served() {
    let mut a = Backend::start("127.0.0.6", Kind::Http);
    let b = Backend::start("127.0.0.7", Kind::Http);
    a.down();
    // A slow first round: timeouts are 1s, the first answers must wait for it.
    let check =
        "{type: http, interval: 2s, timeout: 1s, failure_threshold: 3, success_threshold: 1}";
    let mut g = Gslb::prepare(with(
        &region("st", &[&a, &b], check),
        "  - {name: st.gslb.test, regions: [st]}\n",
    ));
    g.start_cp();
    g.start_dp();
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(60) && answered < 50 {
        let Some(m) = try_udp(g.dns, &query("st.gslb.test.", RecordType::A), 100) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let ips: Vec<IpAddr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(x) => Some(IpAddr::V4(x.0)),
                _ => None,
            })
            .collect();
        assert_eq!(ips, vec![b.ip()], "answer #{answered} {m:?}");
        answered += 1;
    }
    assert_eq!(answered, 50, "dataplane never answered\n{}", g.logs());
}

#[test]
fn tcp_and_https_checks() {
    let mut t = Backend::start("127.0.0.8", Kind::Tcp);
    let tt = Backend::start("127.0.0.9", Kind::Tcp);
    let s = Backend::start("127.0.0.10", Kind::Https);
    let sv = Backend::start("127.0.0.11", Kind::Https);
    let tcp =
        "{type: tcp, interval: 200ms, timeout: 100ms, failure_threshold: 2, success_threshold: 1}";
    let no_verify = "{type: https, host: backend.gslb.test, tls_verify: false, interval: 200ms, timeout: 150ms, failure_threshold: 2, success_threshold: 1}";
    let verify = "{type: https, host: backend.gslb.test, interval: 200ms, timeout: 150ms, failure_threshold: 2, success_threshold: 1}";
    let regions = [
        region("tcp", &[&t, &tt], tcp),
        region("tls", &[&s], no_verify),
        region("tlsv", &[&sv], verify),
    ]
    .concat();
    let g = Gslb::start_with(with(
        &regions,
        "  - {name: tcp.gslb.test, regions: [tcp]}
  - {name: tls.gslb.test, regions: [tls, tlsv]}
",
    ));
    // A self-signed certificate passes only with tls_verify: false.
    assert_eq!(ask(&g, "tls.gslb.test").1, vec![s.ip()]);
    assert!(s.ok.load(Ordering::SeqCst) >= 1);
    assert_eq!(sv.ok.load(Ordering::SeqCst), 0, "verification on must fail");
    assert_eq!(ask(&g, "tcp.gslb.test").1, vec![t.ip(), tt.ip()]);
    t.down();
    until(
        &g,
        "tcp.gslb.test",
        Duration::from_millis(650),
        "tcp leave",
        |_, ips| ips == [tt.ip()],
    );
    t.up();
    until(
        &g,
        "tcp.gslb.test",
        Duration::from_secs(2),
        "tcp return",
        |_, ips| ips.len() == 2,
    );
}

#[test]
fn when_all_down_servfail_and_all() {
    let mut a = Backend::start("127.0.0.12", Kind::Http);
    let mut b = Backend::start("127.0.0.13", Kind::Http);
    let g = Gslb::start_with(with(
        &region("ad", &[&a, &b], FAST),
        "  - {name: sf.gslb.test, regions: [ad]}
  - {name: open.gslb.test, regions: [ad], when_all_down: all}
",
    ));
    let both = vec![a.ip(), b.ip()];
    assert_eq!(
        ask(&g, "sf.gslb.test"),
        (ResponseCode::NoError, both.clone())
    );
    a.down();
    b.down();
    until(
        &g,
        "sf.gslb.test",
        Duration::from_millis(850),
        "servfail",
        |rc, _| rc == ResponseCode::ServFail,
    );
    // Fail open: every configured server.
    assert_eq!(
        ask(&g, "open.gslb.test"),
        (ResponseCode::NoError, both.clone())
    );
    let metrics = http_get(g.cp_metrics, "/metrics").unwrap();
    let counted = |domain: &str, mode: &str| {
        metrics.lines().any(|l| {
            l.starts_with("opengslb_routing_all_down_total{")
                && l.contains(domain)
                && l.contains(&format!("mode=\"{mode}\""))
                && l.ends_with(" 1")
        })
    };
    assert!(
        counted("sf.gslb.test", "servfail") && counted("open.gslb.test", "all"),
        "{metrics}"
    );
    assert!(
        metrics.contains("opengslb_healthy_servers{region=\"ad\"} 0"),
        "{metrics}"
    );
    a.up();
    until(
        &g,
        "sf.gslb.test",
        Duration::from_secs(2),
        "recover",
        |rc, ips| rc == ResponseCode::NoError && ips == [a.ip()],
    );
}

fn failover(delay: &str) -> (Backend, Backend, Gslb) {
    let p = Backend::start("127.0.0.14", Kind::Http);
    let s = Backend::start("127.0.0.15", Kind::Http);
    let regions = [region("pri", &[&p], FAST), region("sec", &[&s], FAST)].concat();
    let g = Gslb::start_with(with(
        &regions,
        &format!(
            "  - {{name: fo.gslb.test, routing_algorithm: failover, regions: [pri, sec], failback_delay: {delay}}}\n"
        ),
    ));
    (p, s, g)
}

#[test]
fn failover_and_immediate_return_to_primary() {
    let (mut p, s, g) = failover("0s");
    assert_eq!(ask(&g, "fo.gslb.test").1, vec![p.ip()]);
    p.down();
    until(
        &g,
        "fo.gslb.test",
        Duration::from_millis(850),
        "fail over",
        |_, ips| ips == [s.ip()],
    );
    p.up();
    until(
        &g,
        "fo.gslb.test",
        Duration::from_millis(400 + 250 + 200),
        "fail back",
        |_, ips| ips == [p.ip()],
    );
}

#[test]
fn failback_waits_for_the_hold_down() {
    let (mut p, s, g) = failover("1500ms");
    assert_eq!(
        ask(&g, "fo.gslb.test").1,
        vec![p.ip()],
        "no hold-down at start"
    );
    p.down();
    until(
        &g,
        "fo.gslb.test",
        Duration::from_millis(850),
        "fail over",
        |_, ips| ips == [s.ip()],
    );
    let ok_before = p.ok.load(Ordering::SeqCst);
    p.up();
    // Healthy again after success_threshold (2) probes...
    let deadline = Instant::now() + Duration::from_secs(3);
    while p.ok.load(Ordering::SeqCst) - ok_before < 2 {
        assert!(Instant::now() < deadline, "primary never probed healthy");
        std::thread::sleep(Duration::from_millis(5));
    }
    let healthy_at = Instant::now();
    // ...but still held down.
    while healthy_at.elapsed() < Duration::from_millis(1200) {
        assert_eq!(
            ask(&g, "fo.gslb.test").1,
            vec![s.ip()],
            "failed back during hold-down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = until(
        &g,
        "fo.gslb.test",
        Duration::from_secs(2),
        "fail back",
        |_, ips| ips == [p.ip()],
    );
    assert!(
        healthy_at.elapsed() >= Duration::from_millis(1400),
        "{back:?}"
    );
}

#[test]
fn reload_checks_added_servers_before_serving_them() {
    let a = Backend::start("127.0.0.16", Kind::Http);
    let mut down = Backend::start("127.0.0.17", Kind::Http);
    down.down();
    let up = Backend::start("127.0.0.18", Kind::Http);
    let check =
        "{type: http, interval: 5s, timeout: 1s, failure_threshold: 1, success_threshold: 1}";
    let g = Gslb::start_with(with(
        &region("rl", &[&a], check),
        "  - {name: rl.gslb.test, regions: [rl]}\n",
    ));
    assert_eq!(ask(&g, "rl.gslb.test").1, vec![a.ip()]);
    let a_probes = a.ok.load(Ordering::SeqCst);
    let text = std::fs::read_to_string(&g.config).unwrap();
    let text = text.replacen(
        &region("rl", &[&a], check),
        &region("rl", &[&a, &down, &up], check),
        1,
    );
    std::fs::write(&g.config, text).unwrap();
    g.reload_cp();
    // The first change seen must already include `up` and never `down`.
    let start = Instant::now();
    loop {
        let ips = ask(&g, "rl.gslb.test").1;
        assert!(
            !ips.contains(&down.ip()),
            "served a down server after reload"
        );
        if ips.len() > 1 {
            assert_eq!(ips, vec![a.ip(), up.ip()]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "reload never served\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The unchanged target kept its schedule (no new first probe).
    assert!(a.ok.load(Ordering::SeqCst) - a_probes <= 1);
    assert_eq!(g.cp_metric("opengslb_snapshot_subscribers"), Some(1.0));
    assert!(
        g.cp_metric("opengslb_snapshot_generation")
            .unwrap_or_default()
            > 1e15
    );
}
