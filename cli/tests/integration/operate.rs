//! Operating it: docs/metrics.md against what the processes export, dnsperf
//! through 20 reloads, the controlplane on PostgreSQL (restart, two
//! controlplanes sharing one database), shell completions.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

/// Whether this run is CI (`CI` set): optional tools must then be present.
fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// One HTTP/1.1 exchange: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the REST API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = if method == "PUT" {
        r#"{"healthy": false, "reason": "maintenance", "source": "integration"}"#
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
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

fn wait_ready(g: &Gslb, api: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(api).is_ok() && http(api, "GET", "/api/v1/ready", None).0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the REST API at {api} never became ready:\n{}", g.logs());
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Metric names in the table rows of `section` (`## Controlplane`, …) of
/// docs/metrics.md.
fn documented(section: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let start = doc
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("docs/metrics.md has no section {section}"));
    let body = &doc[start + 4 + section.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("opengslb_"))
        .map(str::to_owned)
        .collect()
}

/// Metric families in a Prometheus text scrape (its `# TYPE` lines).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Whether `code` has `name` as a whole metric name (not a prefix of one).
fn mentions(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(i, _)| {
        !code[i + name.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn metrics_doc_lists_every_exported_metric() {
    let g = Gslb::start();
    wait_ready(&g, g.api);
    // Traffic of several types, and a refused name.
    for (name, t) in [
        ("www.gslb.test.", RecordType::A),
        ("www.gslb.test.", RecordType::AAAA),
        ("info.gslb.test.", RecordType::TXT),
        ("elsewhere.example.", RecordType::A),
    ] {
        let _ = g.udp(&query(name, t));
    }
    let _ = g.tcp(&query("www.gslb.test.", RecordType::A));
    // A failed and a successful reload, an override: the vector metrics fill.
    let good = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(&g.config, "dns: [not, a, map]\n").unwrap();
    let (status, body) = http(g.api, "POST", "/api/v1/config/reload", Some(API_TOKEN));
    assert_eq!(status, 422, "{body}");
    std::fs::write(&g.config, &good).unwrap();
    let (status, body) = http(g.api, "POST", "/api/v1/config/reload", Some(API_TOKEN));
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        g.api,
        "PUT",
        "/api/v1/overrides/www.gslb.test/192.0.2.1",
        Some(API_TOKEN),
    );
    assert_eq!(status, 200, "{body}");

    let cp = http_get(g.cp_metrics, "/metrics").expect("controlplane scrape");
    let dp = http_get(g.dp_metrics, "/metrics").expect("dataplane scrape");
    for (section, text, src) in [
        ("Controlplane", &cp, "controlplane/src"),
        ("Dataplane", &dp, "dataplane/src"),
    ] {
        let doc = documented(section);
        let got = exported(text);
        assert!(got.len() > 10, "{section} exports too little:\n{text}");
        let missing: Vec<_> = got.difference(&doc).collect();
        assert!(
            missing.is_empty(),
            "{section} exports metrics docs/metrics.md does not list: {missing:?}"
        );
        let code = sources(&repo_root().join(src));
        let stale: Vec<_> = doc.iter().filter(|n| !mentions(&code, n)).collect();
        assert!(
            stale.is_empty(),
            "docs/metrics.md lists {section} metrics its source does not have: {stale:?}"
        );
    }
    let agent = sources(&repo_root().join("agent/src"));
    for n in documented("Agent") {
        assert!(mentions(&agent, &n), "agent has no {n}");
    }

    // The values behind the names.
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(
        value(&cp, "opengslb_config_reloads_total{result=\"failure\"}"),
        1.0
    );
    assert_eq!(
        value(&cp, "opengslb_config_reloads_total{result=\"success\"}"),
        1.0
    );
    assert_eq!(value(&cp, "opengslb_configured_domains"), 4.0);
    assert_eq!(value(&cp, "opengslb_configured_servers"), 45.0);
    assert_eq!(
        value(&cp, "opengslb_overrides_active{service=\"www.gslb.test\"}"),
        1.0
    );
    assert_eq!(value(&cp, "opengslb_overrides_changes_total"), 1.0);
    assert_eq!(value(&cp, "opengslb_snapshot_subscribers"), 1.0);
    assert!(value(&cp, "opengslb_config_load_timestamp_seconds") > 1.7e9);
    assert!(value(&cp, "opengslb_snapshot_push_seconds_count") >= 1.0);
    assert!(
        cp.contains("opengslb_dataplane_snapshot_generation{node_id="),
        "{cp}"
    );
    assert!(
        cp.contains("opengslb_app_info{component=\"controlplane\""),
        "{cp}"
    );
    assert!(
        value(
            &dp,
            "opengslb_dns_queries_total{type=\"A\",rcode=\"NOERROR\"}"
        ) >= 2.0
    );
    assert!(
        value(
            &dp,
            "opengslb_dns_queries_total{type=\"TXT\",rcode=\"NOERROR\"}"
        ) >= 1.0
    );
    assert!(value(&dp, "opengslb_dns_refused_total") >= 1.0);
    assert!(value(&dp, "opengslb_dns_query_duration_seconds_count") >= 5.0);
    assert!(dp.contains("opengslb_app_info{version="), "{dp}");
    // No queried name is a label.
    assert!(!dp.contains("elsewhere"), "{dp}");
}

/// The A addresses of `name` in one reply, sorted.
fn a_set(m: &hickory_proto::op::Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dnsperf_through_20_reloads_loses_nothing_and_answers_right() {
    if Command::new("dnsperf").arg("-h").output().is_err() {
        assert!(
            !in_ci(),
            "dnsperf is not installed but CI is set (apt-get install dnsperf)"
        );
        eprintln!("skipped: dnsperf is not installed (apt-get install dnsperf)");
        return;
    }
    let g = Gslb::start();
    wait_ready(&g, g.api);
    let config_a = std::fs::read_to_string(&g.config).unwrap();
    // Config B: api.gslb.test moves to another address, a domain is added.
    let config_b = config_a
        .replace(
            "{address: 198.51.100.7, port: 80}",
            "{address: 198.51.100.8, port: 80}",
        )
        .replace(
            "  - {name: big.gslb.test,",
            "  - {name: new.gslb.test, routing_algorithm: round-robin, regions: [v4only]}\n  - {name: big.gslb.test,",
        );
    let a: IpAddr = "198.51.100.7".parse().unwrap();
    let b: IpAddr = "198.51.100.8".parse().unwrap();
    let www: Vec<IpAddr> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();

    let queries = g.dir.path().join("queries.txt");
    std::fs::write(
        &queries,
        "api.gslb.test A\nwww.gslb.test A\nwww.gslb.test AAAA\nalias.gslb.test A\ninfo.gslb.test TXT\ngslb.test SOA\n",
    )
    .unwrap();
    let dnsperf = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &g.dns.port().to_string()])
        .arg("-d")
        .arg(&queries)
        .args(["-l", "8", "-Q", "3000", "-t", "3", "-c", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dnsperf");

    // Meanwhile: an independent client checks every answer it gets.
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let checker = {
        let (stop, checked, dns) = (stop.clone(), checked.clone(), g.dns);
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(m) = try_udp(dns, &query("api.gslb.test.", RecordType::A), 1000) else {
                    wrong.push("api.gslb.test: no reply".to_owned());
                    continue;
                };
                let got = a_set(&m);
                if got != [a] && got != [b] {
                    wrong.push(format!("api.gslb.test: {got:?} ({:?})", m.response_code));
                }
                let Some(m) = try_udp(dns, &query("www.gslb.test.", RecordType::A), 1000) else {
                    wrong.push("www.gslb.test: no reply".to_owned());
                    continue;
                };
                if a_set(&m) != www {
                    wrong.push(format!("www.gslb.test: {:?}", a_set(&m)));
                }
                checked.fetch_add(2, Ordering::Relaxed);
            }
            wrong
        })
    };

    std::thread::sleep(Duration::from_millis(500));
    let mut generations = BTreeSet::new();
    for i in 0..20 {
        let text = if i % 2 == 0 { &config_b } else { &config_a };
        std::fs::write(&g.config, text).unwrap();
        let (status, body) = http(g.api, "POST", "/api/v1/config/reload", Some(API_TOKEN));
        assert_eq!(status, 200, "reload {i}: {body}\n{}", g.logs());
        generations.insert(body);
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = dnsperf.wait_with_output().expect("dnsperf ran");
    stop.store(true, Ordering::Relaxed);
    let wrong = checker.join().expect("checker thread");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dnsperf failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        generations.len(),
        20,
        "every reload published a new generation"
    );

    let field = |label: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in dnsperf output:\n{report}"))
    };
    let sent = field("Queries sent:");
    let completed = field("Queries completed:");
    let lost = field("Queries lost:");
    eprintln!(
        "dnsperf: sent {sent}, completed {completed}, lost {lost}; checker verified {} answers",
        checked.load(Ordering::Relaxed)
    );
    assert!(sent > 1000, "dnsperf sent too little:\n{report}");
    assert_eq!(lost, 0, "queries lost during reloads:\n{report}");
    assert_eq!(completed, sent, "{report}");
    // Every reply NOERROR (each query names an existing record).
    assert!(
        report.contains(&format!("NOERROR {completed} ")),
        "replies other than NOERROR:\n{report}"
    );
    assert!(checked.load(Ordering::Relaxed) > 100, "the checker ran");
    assert!(wrong.is_empty(), "wrong answers during reloads: {wrong:?}");
}

/// A fresh PostgreSQL database for this test, from
/// `OPENGSLB_TEST_POSTGRES_URL` (made with psql); `None` skips.
fn fresh_postgres(name: &str) -> Option<String> {
    let Ok(base) = std::env::var("OPENGSLB_TEST_POSTGRES_URL") else {
        assert!(
            !in_ci(),
            "OPENGSLB_TEST_POSTGRES_URL is unset but CI is set"
        );
        eprintln!("skipped: OPENGSLB_TEST_POSTGRES_URL is unset (see .ci/postgres.sh)");
        return None;
    };
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    let admin = format!("{server}/postgres");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        let out = Command::new("psql")
            .args([admin.as_str(), "-q", "-c", &sql])
            .output()
            .expect("psql (PostgreSQL client) is needed with OPENGSLB_TEST_POSTGRES_URL");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(format!("{server}/{name}"))
}

fn with_store(url: &str) -> impl FnOnce(String) -> String + '_ {
    move |c: String| {
        c.replace(
            "  data_dir: cp-data\n",
            &format!("  data_dir: cp-data\n  store: {{url: \"{url}\"}}\n"),
        )
    }
}

#[test]
fn controlplanes_on_postgresql_keep_and_share_overrides() {
    let Some(url) = fresh_postgres(&format!("opengslb_it_{}", std::process::id())) else {
        return;
    };
    let mut g = Gslb::start_with(with_store(&url));
    wait_ready(&g, g.api);
    let one = "/api/v1/overrides/www.gslb.test/192.0.2.1";
    let (status, body) = http(g.api, "PUT", one, Some(API_TOKEN));
    assert_eq!(status, 200, "{body}");

    // Restart: the override and its audit record come back from PostgreSQL.
    g.kill_cp();
    g.start_cp();
    wait_ready(&g, g.api);
    let (status, body) = http(g.api, "GET", one, None);
    assert_eq!(status, 200, "{body}\n{}", g.logs());
    assert!(body.contains("\"reason\":\"maintenance\""), "{body}");
    let (_, audit) = http(g.api, "GET", "/api/v1/audit", None);
    assert!(audit.contains("\"action\":\"override.set\""), "{audit}");
    let data = g.dir.path().join("cp-data");
    assert!(
        !data.join("opengslb.db").exists(),
        "the SQLite store must not be used with a postgres:// URL"
    );

    // A second controlplane on the same database sees it, and what it
    // clears is gone for the first one too.
    let h = Gslb::start_with(with_store(&url));
    wait_ready(&h, h.api);
    let (status, body) = http(h.api, "GET", one, None);
    assert_eq!(status, 200, "second controlplane: {body}");
    let (status, body) = http(h.api, "DELETE", one, Some(API_TOKEN));
    assert!(status == 200 || status == 204, "{status} {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http(g.api, "GET", one, None);
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first controlplane still has the override cleared by the second"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, audit) = http(g.api, "GET", "/api/v1/audit", None);
    assert!(audit.contains("\"action\":\"override.delete\""), "{audit}");
}

#[test]
fn unreachable_store_at_start_is_a_clear_error() {
    let port = free_port();
    let g = Gslb::prepare(with_store(&format!(
        "postgres://opengslb:secret@127.0.0.1:{port}/nothing"
    )));
    let out = Command::new(bin("opengslb-controlplane"))
        .arg("--config")
        .arg(&g.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.to_lowercase().contains("store"), "{err}");
    assert!(
        !err.contains("secret"),
        "the password is never printed: {err}"
    );
}

#[test]
fn shell_completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = opengslb().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for cmd in ["overrides", "servers", "reload", "validate", "completions"] {
            assert!(text.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    let out = opengslb().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
}

#[test]
fn cli_doc_lists_every_command() {
    let doc = std::fs::read_to_string(repo_root().join("docs/cli.md")).unwrap();
    let help = opengslb().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands section")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{help}");
    for c in commands {
        assert!(
            doc.contains(&format!("### `opengslb {c}")),
            "docs/cli.md has no section for `opengslb {c}`"
        );
    }
}
