//! DNSSEC validated by an independent validator: BIND's `delv`, with the
//! zone's DS (from `GET /api/v1/dnssec/ds`) as its only trust anchor, asks
//! the real dataplane and must report every answer "fully validated" —
//! positive answers of every routing policy, a CNAME chain, SOA, NS,
//! DNSKEY, NXDOMAIN, NODATA and empty non-terminals, for NSEC and for NSEC3;
//! and again after a failover (a real TCP health check failing), after an
//! override, after a reload and across a signature refresh.
//!
//! `delv` comes with Debian's `dnsutils` (`.ci/run` installs it and sets
//! `OPENGSLB_REQUIRE_DELV=1`, which turns a missing `delv` into a failure).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

/// Whether `delv` can run here; panics when it is required but missing.
fn have_delv() -> bool {
    let ok = Command::new("delv").arg("-v").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("OPENGSLB_REQUIRE_DELV").is_none(),
            "delv is required (OPENGSLB_REQUIRE_DELV) but not installed (Debian: dnsutils)"
        );
        eprintln!("skipped: delv is not installed (Debian package dnsutils)");
    }
    ok
}

/// The zone's DS records as a `delv -a` trust anchor file.
fn anchors(g: &Gslb) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some(b) = http_get(g.api, "/api/v1/dnssec/ds?zone=gslb.test") {
            if b.contains(" IN DS ") {
                break b;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no DS from the API:\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut file = String::from("trust-anchors {\n");
    for line in body.split('"').filter(|s| s.contains(" IN DS ")) {
        // gslb.test. IN DS <tag> <alg> <digest type> <digest>
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 7, "DS line {line:?}");
        file.push_str(&format!(
            "  {} static-ds {} {} {} \"{}\";\n",
            f[0], f[3], f[4], f[5], f[6]
        ));
    }
    file.push_str("};\n");
    assert!(file.contains("static-ds"), "{body}");
    let path = g.dir.path().join("anchors.conf");
    std::fs::write(&path, file).unwrap();
    path
}

/// Runs delv for `name`/`t` against the dataplane; returns its output.
fn delv(g: &Gslb, anchors: &PathBuf, name: &str, t: &str) -> String {
    let out = Command::new("delv")
        .arg(format!("@{}", g.dns.ip()))
        .args(["-p", &g.dns.port().to_string()])
        .arg("-a")
        .arg(anchors)
        .args(["+root=gslb.test", "+tcp", "+nomtrace", "+novtrace"])
        .args([name, t])
        .output()
        .expect("run delv");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts delv fully validated a positive answer holding `want`.
fn validated(g: &Gslb, a: &PathBuf, name: &str, t: &str, want: &str) {
    let out = delv(g, a, name, t);
    assert!(
        out.contains("; fully validated") && !out.contains("resolution failed"),
        "{name} {t} not validated:\n{out}\n{}",
        g.logs()
    );
    assert!(out.contains(want), "{name} {t}: no {want:?} in\n{out}");
}

/// Asserts delv fully validated a negative answer of `kind` (`nxdomain`
/// or `nxrrset`).
fn validated_negative(g: &Gslb, a: &PathBuf, name: &str, t: &str, kind: &str) {
    let out = delv(g, a, name, t);
    assert!(
        out.contains("; negative response, fully validated") && out.contains(kind),
        "{name} {t}: no validated {kind}:\n{out}\n{}",
        g.logs()
    );
}

/// A loopback TCP listener standing for a backend; dropped = down.
fn backend(ip: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn config(denial: &str, port_a: u16, port_b: u16) -> impl FnOnce(String) -> String {
    let denial = denial.to_owned();
    move |c: String| {
        c.replace(
            "domains:\n",
            &format!(
                "  - name: hc\n    servers:\n      - {{address: 127.0.0.1, port: {port_a}}}\n      - {{address: 127.0.0.2, port: {port_b}}}\n    health_check: {{type: tcp, interval: 200ms, timeout: 100ms, failure_threshold: 1, success_threshold: 1}}\n\
                 domains:\n  - {{name: w.gslb.test, routing_algorithm: weighted, regions: [local], max_answers: 2}}\n  - {{name: fo.gslb.test, routing_algorithm: failover, regions: [local]}}\n  - {{name: hc.gslb.test, routing_algorithm: failover, regions: [hc]}}\n"
            ),
        )
        .replace(
            "  data_dir: cp-data\n",
            &format!("  data_dir: cp-data\n  dnssec: {{denial: {denial}}}\n"),
        )
    }
}

/// Every kind of answer, validated.
fn validate_everything(g: &Gslb, a: &PathBuf) {
    validated(g, a, "gslb.test", "DNSKEY", "DNSKEY");
    validated(g, a, "gslb.test", "SOA", "SOA");
    validated(g, a, "gslb.test", "NS", "ns1.gslb.test.");
    validated(g, a, "gslb.test", "MX", "mail.gslb.test.");
    validated(g, a, "www.gslb.test", "A", "192.0.2.");
    validated(g, a, "www.gslb.test", "AAAA", "2001:db8::1");
    validated(g, a, "api.gslb.test", "A", "198.51.100.7");
    validated(g, a, "svc.deep.gslb.test", "A", "198.51.100.7");
    validated(g, a, "w.gslb.test", "A", "192.0.2.");
    validated(g, a, "fo.gslb.test", "A", "192.0.2.1");
    validated(g, a, "alias.gslb.test", "A", "CNAME");
    validated(g, a, "info.gslb.test", "TXT", "hello world");
    validated(g, a, "big.gslb.test", "AAAA", "2001:db8:b16::");
    validated_negative(g, a, "nothere.gslb.test", "A", "nxdomain");
    validated_negative(g, a, "a.b.c.svc.deep.gslb.test", "A", "nxdomain");
    validated_negative(g, a, "info.gslb.test", "AAAA", "nxrrset");
    validated_negative(g, a, "gslb.test", "A", "nxrrset");
    // Empty non-terminal.
    validated_negative(g, a, "deep.gslb.test", "A", "nxrrset");
}

fn a_of(g: &Gslb, name: &str) -> Vec<String> {
    g.udp(&query(name, RecordType::A))
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn wait_for(g: &Gslb, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(Instant::now() < deadline, "{what}:\n{}", g.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn whole_system(denial: &str) {
    if !have_delv() {
        return;
    }
    let (la, pa) = backend("127.0.0.1");
    let (_lb, pb) = backend("127.0.0.2");
    let g = Gslb::start_with(config(denial, pa, pb));
    let a = anchors(&g);
    validate_everything(&g, &a);
    if denial == "nsec3" {
        // The NXDOMAIN carries NSEC3 records, not NSEC.
        let out = delv(&g, &a, "nothere.gslb.test", "A");
        assert!(out.contains("NSEC3"), "{out}");
    }

    // Failover: the first backend's health check fails.
    wait_for(&g, "hc up", || a_of(&g, "hc.gslb.test.") == ["127.0.0.1"]);
    validated(&g, &a, "hc.gslb.test", "A", "127.0.0.1");
    drop(la);
    wait_for(&g, "failover", || {
        a_of(&g, "hc.gslb.test.") == ["127.0.0.2"]
    });
    validated(&g, &a, "hc.gslb.test", "A", "127.0.0.2");

    // Override: the failover name's first server forced down.
    let o = opengslb()
        .arg("--api")
        .arg(g.grpc.to_string())
        .arg("--token-file")
        .arg(g.dir.path().join("api.token"))
        .args(["overrides", "set", "fo.gslb.test", "192.0.2.1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    wait_for(&g, "override", || {
        a_of(&g, "fo.gslb.test.") == ["192.0.2.2"]
    });
    validated(&g, &a, "fo.gslb.test", "A", "192.0.2.2");

    // Reload: a new record appears, signed; a removed one is denied.
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "        - {name: info.gslb.test, type: TXT, value: \"hello world\"}\n",
        "        - {name: fresh.gslb.test, type: TXT, value: \"reloaded\"}\n",
    );
    std::fs::write(&g.config, text).unwrap();
    g.reload_cp();
    wait_for(&g, "reload", || {
        g.udp(&query("fresh.gslb.test.", RecordType::TXT))
            .metadata
            .response_code
            == ResponseCode::NoError
    });
    validated(&g, &a, "fresh.gslb.test", "TXT", "reloaded");
    validated_negative(&g, &a, "info.gslb.test", "TXT", "nxdomain");
    validated(&g, &a, "www.gslb.test", "A", "192.0.2.");
}

#[test]
fn delv_validates_the_whole_system_nsec() {
    whole_system("nsec");
}

#[test]
fn delv_validates_the_whole_system_nsec3() {
    whole_system("nsec3");
}

/// RRSIG expiration of the SOA as served now.
fn soa_expiration(g: &Gslb) -> u32 {
    let mut q = query_edns("gslb.test.", RecordType::SOA, 4096);
    if let Some(e) = q.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    g.udp(&q)
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::DNSSEC(hickory_proto::dnssec::rdata::DNSSECRData::RRSIG(s)) => {
                Some(s.input().sig_expiration.get())
            }
            _ => None,
        })
        .expect("an RRSIG over the SOA")
}

#[test]
fn delv_validates_across_a_signature_refresh() {
    if !have_delv() {
        return;
    }
    // 8 s signatures renewed 5 s before expiry: a refresh every ~3 s.
    let g = Gslb::start_with(|c| {
        c.replace(
            "  data_dir: cp-data\n",
            "  data_dir: cp-data\n  dnssec: {signature_validity: 8s, refresh_before: 5s}\n",
        )
    });
    let a = anchors(&g);
    let first = soa_expiration(&g);
    validated(&g, &a, "www.gslb.test", "A", "192.0.2.");
    validated_negative(&g, &a, "nothere.gslb.test", "A", "nxdomain");
    // Past the first signatures' expiry: only renewed ones can validate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        if now > first + 1 {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(soa_expiration(&g) > first, "signatures were renewed");
    validated(&g, &a, "www.gslb.test", "A", "192.0.2.");
    validated(&g, &a, "gslb.test", "DNSKEY", "DNSKEY");
    validated_negative(&g, &a, "nothere.gslb.test", "A", "nxdomain");
    validated_negative(&g, &a, "deep.gslb.test", "A", "nxrrset");
}
