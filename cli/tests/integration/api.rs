//! The admin APIs end to end: REST overrides reach DNS answers within
//! 100 ms, overrides and audit records survive a controlplane restart, and
//! the `opengslb` CLI drives a running controlplane over gRPC.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Output,
    time::{Duration, Instant},
};

use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

/// One HTTP/1.1 exchange: (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the REST API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The A addresses answered for `name` now.
fn a_records(g: &Gslb, name: &str) -> Vec<IpAddr> {
    let m = g.udp(&query(name, RecordType::A));
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// Polls (every 2 ms, at most `limit`) until `pred` holds for the answer;
/// returns how long it took.
fn until_answer(
    g: &Gslb,
    name: &str,
    limit: Duration,
    pred: impl Fn(&[IpAddr]) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(m) = try_udp(g.dns, &query(name, RecordType::A), 200) {
            let addrs: Vec<IpAddr> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect();
            if pred(&addrs) {
                return Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn wait_ready(g: &Gslb) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(g.api).is_ok() {
            let (status, _) = http(g.api, "GET", "/api/v1/ready", None, "");
            if status == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the REST API never became ready:\n{}", g.logs());
}

const ONE: &str = "/api/v1/overrides/www.gslb.test/192.0.2.1";
const DOWN: &str = r#"{"healthy": false, "reason": "maintenance", "source": "integration"}"#;

#[test]
fn override_changes_dns_answers_within_100ms() {
    let g = Gslb::start();
    wait_ready(&g);
    let target: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(a_records(&g, "www.gslb.test.").contains(&target));

    let start = Instant::now();
    let (status, body) = http(g.api, "PUT", ONE, Some(API_TOKEN), DOWN);
    assert_eq!(status, 200, "{body}\n{}", g.logs());
    let took = until_answer(&g, "www.gslb.test.", Duration::from_secs(5), |a| {
        !a.is_empty() && !a.contains(&target)
    })
    .map(|_| start.elapsed())
    .unwrap_or_else(|| panic!("the override never reached DNS:\n{}", g.logs()));
    assert!(
        took <= Duration::from_millis(100),
        "override reached DNS after {took:?}"
    );
    assert!(body.contains("\"authority\":\"tests@127.0.0.1\""), "{body}");
    // Other services keep the server: the override is per service.
    let (status, _) = http(g.api, "GET", ONE, None, "");
    assert_eq!(status, 200);

    let start = Instant::now();
    let (status, body) = http(g.api, "DELETE", ONE, Some(API_TOKEN), "");
    assert_eq!(status, 204, "{body}");
    until_answer(&g, "www.gslb.test.", Duration::from_secs(5), |a| {
        a.contains(&target)
    })
    .unwrap_or_else(|| panic!("clearing the override never reached DNS:\n{}", g.logs()));
    assert!(
        start.elapsed() <= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );

    // Refused changes change nothing.
    let (status, _) = http(g.api, "PUT", ONE, None, DOWN);
    assert_eq!(status, 401);
    let (status, _) = http(g.api, "PUT", ONE, Some("wrong-token-0123456789"), DOWN);
    assert_eq!(status, 401);
    assert!(a_records(&g, "www.gslb.test.").contains(&target));
}

#[test]
fn overrides_and_audit_survive_a_restart() {
    let mut g = Gslb::start();
    wait_ready(&g);
    let target: IpAddr = "192.0.2.1".parse().unwrap();
    let (status, body) = http(g.api, "PUT", ONE, Some(API_TOKEN), DOWN);
    assert_eq!(status, 200, "{body}");
    until_answer(&g, "www.gslb.test.", Duration::from_secs(5), |a| {
        !a.is_empty() && !a.contains(&target)
    })
    .expect("override applied");

    g.kill_cp();
    g.start_cp();
    wait_ready(&g);
    let (status, body) = http(g.api, "GET", ONE, None, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"reason\":\"maintenance\""), "{body}");
    // The restarted controlplane's snapshot still leaves the server out.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!a_records(&g, "www.gslb.test.").contains(&target));
    let (status, body) = http(g.api, "GET", "/api/v1/audit", None, "");
    assert_eq!(status, 200);
    assert!(body.contains("\"action\":\"override.set\""), "{body}");
    assert!(body.contains("\"actor\":\"tests\""), "{body}");
}

fn cli(g: &Gslb, args: &[&str]) -> Output {
    opengslb()
        .arg("--api")
        .arg(g.grpc.to_string())
        .arg("--token-file")
        .arg(g.dir.path().join("api.token"))
        .args(args)
        .output()
        .expect("run opengslb")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cli_drives_a_running_controlplane() {
    let g = Gslb::start();
    wait_ready(&g);

    let o = cli(&g, &["--json", "status"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("\"ready\":true"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("\"node_id\":\"cp-test\""),
        "{}",
        stdout(&o)
    );

    let o = cli(
        &g,
        &[
            "overrides",
            "set",
            "www.gslb.test",
            "192.0.2.2",
            "--reason",
            "cli test",
        ],
    );
    assert!(o.status.success(), "{o:?}\n{}", g.logs());
    until_answer(&g, "www.gslb.test.", Duration::from_secs(5), |a| {
        !a.is_empty() && !a.contains(&"192.0.2.2".parse().unwrap())
    })
    .expect("the CLI's override reached DNS");

    let o = cli(
        &g,
        &[
            "--json",
            "servers",
            "--service",
            "www.gslb.test",
            "--status",
            "unhealthy",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("\"address\":\"192.0.2.2\""), "{out}");
    assert!(out.contains("\"source\":\"override\""), "{out}");
    assert!(!out.contains("192.0.2.1"), "{out}");

    let o = cli(&g, &["overrides", "list"]);
    assert!(o.status.success());
    let table = stdout(&o);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(table.contains("www.gslb.test  192.0.2.2"), "{table}");

    let o = cli(&g, &["--output", "json", "geo", "test", "192.0.2.9"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains("\"ip\":\"192.0.2.9\""),
        "{}",
        stdout(&o)
    );

    let o = cli(&g, &["overrides", "clear", "www.gslb.test", "192.0.2.2"]);
    assert!(o.status.success(), "{o:?}");
    let o = cli(&g, &["overrides", "clear", "www.gslb.test", "192.0.2.2"]);
    assert!(!o.status.success(), "clearing twice fails");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{o:?}"
    );

    // A change without a token, a bad address and an unreachable API fail
    // with a reason.
    let o = opengslb()
        .args(["--api", &g.grpc.to_string(), "reload"])
        .env_remove("OPENGSLB_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("token"),
        "{o:?}"
    );
    let o = cli(&g, &["overrides", "set", "www.gslb.test", "not-an-ip"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid address"),
        "{o:?}"
    );
    let o = opengslb()
        .args(["--api", "127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot reach"),
        "{o:?}"
    );

    let o = cli(&g, &["reload"]);
    assert!(o.status.success(), "{o:?}");
    let o = cli(
        &g,
        &["config", "validate", "--remote", g.config.to_str().unwrap()],
    );
    assert!(o.status.success(), "{o:?}");
}
