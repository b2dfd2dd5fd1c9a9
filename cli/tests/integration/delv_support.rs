//! BIND's `delv` as the independent DNSSEC validator, shared by `delv.rs`
//! and `rollover.rs`: whether it can run, trust anchor files from DS lines,
//! one invocation against the dataplane, and the checks of its output; plus
//! the DO=1 queries both use to see what the dataplane signs with.
//!
//! `delv` comes with Debian's `dnsutils` (`.ci/run` installs it and sets
//! `OPENGSLB_REQUIRE_DELV=1`, which turns a missing `delv` into a failure).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

use crate::harness::{http_get, query_edns, Gslb};

/// Whether `delv` can run here; panics when it is required but missing.
pub fn have_delv() -> bool {
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

/// The zone's DS lines from `GET /api/v1/dnssec/ds?zone=gslb.test`,
/// waiting (bounded) until the controlplane has keys.
pub fn zone_ds(g: &Gslb) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(body) = http_get(g.api, "/api/v1/dnssec/ds?zone=gslb.test") {
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                let ds: Vec<String> = v["ds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                if !ds.is_empty() {
                    return ds;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no DS from the API:\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `ds` (full DS lines, `gslb.test. IN DS <tag> <alg> <digest type>
/// <digest>`) as a `delv -a` trust anchor file `anchors-{name}.conf` in the
/// test's directory.
pub fn write_anchors(g: &Gslb, name: &str, ds: &[String]) -> PathBuf {
    assert!(!ds.is_empty(), "no DS for {name}");
    let mut file = String::from("trust-anchors {\n");
    for line in ds {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() == 7 && f[1] == "IN" && f[2] == "DS",
            "DS line {line:?}"
        );
        file.push_str(&format!(
            "  {} static-ds {} {} {} \"{}\";\n",
            f[0], f[3], f[4], f[5], f[6]
        ));
    }
    file.push_str("};\n");
    let path = g.dir.path().join(format!("anchors-{name}.conf"));
    std::fs::write(&path, file).unwrap();
    path
}

/// Runs delv for `name`/`t` against the dataplane over TCP, with `anchors`
/// as its only trust; returns its output (stdout, then stderr).
pub fn delv(g: &Gslb, anchors: &Path, name: &str, t: &str) -> String {
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

/// Whether delv's output shows a fully validated positive answer.
pub fn fully_validated(out: &str) -> bool {
    // delv reports a validated negative answer as "resolution failed" too.
    out.contains("; fully validated") && !out.contains("resolution failed")
}

/// Whether delv's output shows a fully validated negative answer of `kind`
/// (`nxdomain` or `nxrrset`, as delv prints them).
pub fn validated_negative_of(out: &str, kind: &str) -> bool {
    out.contains("; negative response, fully validated") && out.contains(kind)
}

/// Asserts delv fully validated a positive answer holding `want`; `stage`
/// names the step for the failure message.
pub fn assert_validated(g: &Gslb, anchors: &Path, stage: &str, name: &str, t: &str, want: &str) {
    let out = delv(g, anchors, name, t);
    assert!(
        fully_validated(&out),
        "{stage}: {name} {t} not validated with {}:\n{out}\n{}",
        anchors.display(),
        g.logs()
    );
    assert!(
        out.contains(want),
        "{stage}: {name} {t}: no {want:?} in\n{out}"
    );
}

/// Asserts delv fully validated a negative answer of `kind` (`nxdomain` or
/// `nxrrset`).
pub fn assert_validated_negative(
    g: &Gslb,
    anchors: &Path,
    stage: &str,
    name: &str,
    t: &str,
    kind: &str,
) {
    let out = delv(g, anchors, name, t);
    assert!(
        validated_negative_of(&out, kind),
        "{stage}: {name} {t}: no validated {kind} with {}:\n{out}\n{}",
        anchors.display(),
        g.logs()
    );
}

/// A query for `name`/`t` with EDNS (4096 octets) and the DO bit.
pub fn query_do(name: &str, t: RecordType) -> Message {
    let mut q = query_edns(name, t, 4096);
    if let Some(e) = q.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    q
}

/// The key tags of the DNSKEY records in `m`'s answer, sorted.
pub fn dnskey_tags(m: &Message) -> Vec<u16> {
    let mut tags: Vec<u16> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.calculate_key_tag().unwrap()),
            _ => None,
        })
        .collect();
    tags.sort_unstable();
    tags
}

/// The key tags of the RRSIG records in `m`'s answer (the keys that signed
/// it), sorted.
pub fn rrsig_key_tags(m: &Message) -> Vec<u16> {
    let mut tags: Vec<u16> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(s)) => Some(s.input().key_tag),
            _ => None,
        })
        .collect();
    tags.sort_unstable();
    tags
}
