//! DNSSEC validated by an independent validator: BIND's `delv`, with the
//! zone's DS (from `GET /api/v1/dnssec/ds`) as its only trust anchor, asks
//! the real dataplane and must report every answer "fully validated" —
//! positive answers of every routing policy, a CNAME chain, SOA, NS,
//! DNSKEY, NXDOMAIN, NODATA and empty non-terminals, for NSEC and for NSEC3;
//! and again after a failover (a real TCP health check failing), after an
//! override, after a reload and across a signature refresh.
//!
//! The delv invocation and its checks are in `delv_support.rs` (shared with
//! `rollover.rs`); a missing `delv` skips these tests unless
//! `OPENGSLB_REQUIRE_DELV=1` (set by `.ci/run`) makes it a failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::delv_support::*;
use crate::harness::*;

/// The zone's DS records as a `delv -a` trust anchor file.
fn anchors(g: &Gslb) -> PathBuf {
    write_anchors(g, "zone", &zone_ds(g))
}

/// Asserts delv fully validated a positive answer holding `want`.
fn validated(g: &Gslb, a: &Path, name: &str, t: &str, want: &str) {
    assert_validated(g, a, "delv", name, t, want);
}

/// Asserts delv fully validated a negative answer of `kind` (`nxdomain`
/// or `nxrrset`).
fn validated_negative(g: &Gslb, a: &Path, name: &str, t: &str, kind: &str) {
    assert_validated_negative(g, a, "delv", name, t, kind);
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
fn validate_everything(g: &Gslb, a: &Path) {
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
    g.udp(&query_do("gslb.test.", RecordType::SOA))
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
