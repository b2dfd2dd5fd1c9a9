//! DNSSEC key sync between two real controlplanes (each with its own store
//! and dataplane) polling each other's REST API with the sealed key-sync
//! protocol: they converge on one key set, private part included — both sign
//! with it, and one DS validates both dataplanes' answers. A peer answering
//! something that does not open is counted as a failure and changes
//! nothing: signing and serving go on. What crosses the wire is ciphertext
//! (no private key, no token); a bearer token alone, a replayed request and
//! a wrong token are refused. A rollover started on one node shows the same
//! phase and keys on the other after a sync, and so does its cancel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use opengslb_controlplane::dnssec::sync;
use serde_json::Value;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::rr::{RData, RecordType};

use crate::delv_support::{dnskey_tags, query_do, rrsig_key_tags};
use crate::harness::*;

fn add_sync(g: &Gslb, peers: &[String]) {
    add_sync_with(g, peers, "");
}

/// As [`add_sync`], with `extra` `key_sync` settings (`KEY: VALUE, `).
fn add_sync_with(g: &Gslb, peers: &[String], extra: &str) {
    let token = g.dir.path().join("api.token");
    let list: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "  data_dir: cp-data\n",
        &format!(
            "  data_dir: cp-data\n  dnssec:\n    key_sync: {{peers: [{}], poll_interval: 1s, timeout: 2s, {extra}token_file: \"{}\"}}\n",
            list.join(", "),
            token.display()
        ),
    );
    std::fs::write(&g.config, text).unwrap();
}

/// Key tags of the DNSKEY RRset a dataplane serves.
fn tags(g: &Gslb) -> Vec<u16> {
    dnskey_tags(&g.udp(&query_do("gslb.test.", RecordType::DNSKEY)))
}

fn ds(g: &Gslb) -> String {
    http_get(g.api, "/api/v1/dnssec/ds?zone=gslb.test").unwrap_or_default()
}

/// A "peer" that answers every request with a well-formed sealed export
/// that does not open (it does not know the token).
fn garbage_peer() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(50) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            read_request(&mut s);
            let body = format!(
                "{{\"protocol\":\"{}\",\"server_nonce\":\"{}\",\"sealed\":\"{}\"}}",
                sync::PROTOCOL,
                "AB".repeat(32),
                "5A".repeat(200)
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

/// Reads one whole request (head and `Content-Length` body), so that
/// closing after the answer does not reset the connection.
fn read_request(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return;
        }
    }
}

/// `POST path` with `body` and optional headers; (status, body).
fn http_post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

fn bearer() -> String {
    format!("Authorization: Bearer {API_TOKEN}\r\n")
}

/// Polls `probe` every 200 ms until it gives `Ok`, for at most `secs`
/// seconds; then panics with `what`, the last `Err` (the state seen) and
/// the logs of `nodes`.
fn wait_for<T>(
    secs: u64,
    what: &str,
    nodes: &[&Gslb],
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let seen = match probe() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes.iter().map(|g| g.logs()).collect();
            panic!("{what} within {secs} s: {seen}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `a` and `b` serve the same non-empty DNSKEY set, and
/// `also` holds for it; the set.
fn wait_converged(a: &Gslb, b: &Gslb, what: &str, also: impl Fn(&[u16]) -> bool) -> Vec<u16> {
    wait_for(30, what, &[a, b], || {
        let (ta, tb) = (tags(a), tags(b));
        if !ta.is_empty() && ta == tb && also(&ta) {
            Ok(ta)
        } else {
            Err(format!("{ta:?} vs {tb:?}"))
        }
    })
}

#[test]
fn two_controlplanes_converge_on_one_key_with_its_private_part() {
    let mut a = Gslb::prepare(|c| c);
    let mut b = Gslb::prepare(|c| c);
    let bad = garbage_peer();
    add_sync(&a, &[format!("http://{}", b.api), bad.clone()]);
    add_sync(&b, &[format!("http://{}", a.api)]);
    for g in [&mut a, &mut b] {
        g.start_cp();
        g.start_dp();
        g.wait_answering();
    }
    // Converged: the same DNSKEY RRset served by both, the same DS.
    wait_converged(&a, &b, "no convergence", |_| ds(&a) == ds(&b));
    // Both sign with it (the adopting side got the private part): the
    // signatures over their SOA (different serials) are by that key.
    let key = tags(&a)[0];
    for g in [&a, &b] {
        let mut q = query_edns("www.gslb.test.", RecordType::A, 4096);
        if let Some(e) = q.edns.as_mut() {
            e.set_dnssec_ok(true);
        }
        let m = g.udp(&q);
        let signer: Vec<u16> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::RRSIG(s)) => Some(s.input().key_tag),
                _ => None,
            })
            .collect();
        assert_eq!(signer, [key], "{m}");
    }
    // The garbage peer: counted as a failure of that peer, shown in status.
    let series = format!("opengslb_dnssec_key_sync_failures_total{{peer=\"{bad}\"}}");
    // (b's API may come up after a's first poll: wait for a success too.)
    wait_for(10, "no failure or no success counted", &[&a], || {
        let failures = a.cp_metric(&series).unwrap_or(0.0);
        let successes = a
            .cp_metric("opengslb_dnssec_key_sync_success_total")
            .unwrap_or(0.0);
        if failures >= 1.0 && successes >= 1.0 {
            Ok(())
        } else {
            Err(format!("{failures} failures, {successes} successes"))
        }
    });
    let status = http_get(a.api, "/api/v1/dnssec/status").unwrap();
    assert!(status.contains("\"state\":\"failing\""), "{status}");
    assert!(status.contains("does not open"), "{status}");
    // And a still signs with the converged key.
    assert_eq!(tags(&a), [key]);
}

#[test]
fn the_export_is_ciphertext_and_refuses_bearer_tokens_replays_and_wrong_tokens() {
    let g = Gslb::start();
    // A bearer token alone: a clear 4xx naming the sealed protocol.
    let (code, body) = http_post(g.api, sync::EXPORT_PATH, &bearer(), "");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("sealed key-sync protocol"), "{body}");
    // A sealed request, made as a peer would, over plain TCP.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let req = sync::make_request(API_TOKEN, now).unwrap();
    let req_json = serde_json::to_string(&req).unwrap();
    assert!(!req_json.contains(API_TOKEN));
    let (code, raw) = http_post(g.api, sync::EXPORT_PATH, "", &req_json);
    assert_eq!(code, 200, "{raw}");
    let sealed: sync::SealedExport = serde_json::from_str(&raw).unwrap();
    let plain = sync::open(API_TOKEN, &req, &sealed).unwrap();
    let export: sync::KeyExport = serde_json::from_slice(&plain).unwrap();
    let key = &export
        .zones
        .iter()
        .find(|z| z.zone == "gslb.test")
        .expect("gslb.test exported")
        .keys[0];
    let pkcs8 = key.private_key_pkcs8_hex.to_ascii_uppercase();
    assert!(pkcs8.len() > 64);
    // On the wire: neither the private key (hex, any case, nor a slice of
    // it), nor the token, nor the export's structure.
    let upper = raw.to_ascii_uppercase();
    for w in pkcs8.as_bytes().chunks(32) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(w.len() < 16 || !upper.contains(w), "{w} in {raw}");
    }
    for clear in [API_TOKEN, "zones", "private_key", "gslb.test"] {
        assert!(!raw.contains(clear), "{clear} in {raw}");
    }
    // The same request again: replayed.
    let (code, body) = http_post(g.api, sync::EXPORT_PATH, "", &req_json);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("replayed"), "{body}");
    // A wrong token, and a stale clock.
    let wrong = sync::make_request("not-the-api-token-0123456789", now).unwrap();
    let (code, body) = http_post(
        g.api,
        sync::EXPORT_PATH,
        "",
        &serde_json::to_string(&wrong).unwrap(),
    );
    assert_eq!(code, 401, "{body}");
    let stale = sync::make_request(API_TOKEN, now - 3600).unwrap();
    let (code, body) = http_post(
        g.api,
        sync::EXPORT_PATH,
        "",
        &serde_json::to_string(&stale).unwrap(),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("clock"), "{body}");
    // Audited once, under the token's name.
    let audit = http_get(g.api, "/api/v1/audit").unwrap();
    assert_eq!(audit.matches("dnssec.keys.export").count(), 1, "{audit}");
    assert!(audit.contains("\"tests\""), "{audit}");
}

/// The zone's rollover from `GET /api/v1/dnssec/rollover`.
fn rollover_state(g: &Gslb) -> Value {
    let body = http_get(g.api, "/api/v1/dnssec/rollover?zone=gslb.test").expect("REST answer");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["rollover"].clone()
}

/// Key tags of the RRSIGs over www's A RRset (DO=1), sorted.
fn signers(g: &Gslb) -> Vec<u16> {
    rrsig_key_tags(&g.udp(&query_do("www.gslb.test.", RecordType::A)))
}

/// Waits (bounded) until `b` shows `a`'s rollover (same phase, keys, times)
/// and serves the same DNSKEY and RRSIG sets.
fn wait_same_rollover(a: &Gslb, b: &Gslb, phase: &str, keys: usize) -> Value {
    let what = format!("b never showed a's rollover in {phase}");
    wait_for(30, &what, &[a, b], || {
        let (ra, rb) = (rollover_state(a), rollover_state(b));
        let same = ra["phase"] == phase
            && [
                "phase",
                "method",
                "old_key_tag",
                "new_key_tag",
                "started_unix",
                "next_step_unix",
                "in_progress",
            ]
            .iter()
            .all(|k| ra[k] == rb[k]);
        let (ta, tb) = (tags(a), tags(b));
        if same && ta.len() == keys && ta == tb && signers(a) == signers(b) {
            Ok(rb)
        } else {
            Err(format!("\na: {ra} {ta:?}\nb: {rb} {tb:?}"))
        }
    })
}

#[test]
fn a_rollover_started_on_one_node_shows_the_same_phase_on_its_peer() {
    let mut a = Gslb::prepare(|c| c);
    let mut b = Gslb::prepare(|c| c);
    add_sync(&a, &[format!("http://{}", b.api)]);
    add_sync(&b, &[format!("http://{}", a.api)]);
    for g in [&mut a, &mut b] {
        g.start_cp();
        g.start_dp();
        g.wait_answering();
    }
    let old = wait_converged(&a, &b, "no convergence", |_| true);
    // Start a CSK (double-signature) rollover on a.
    let (code, body) = http_post(
        a.api,
        "/api/v1/dnssec/rollover",
        &bearer(),
        r#"{"zone":"gslb.test"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let rb = wait_same_rollover(&a, &b, "publish", 2);
    assert_eq!(rb["in_progress"], true, "{rb}");
    assert!(tags(&b).contains(&old[0]));
    // Both keys sign on both nodes (double signature).
    assert_eq!(signers(&b), tags(&b));
    // A cancel on a: b follows, back to the old key alone.
    let (code, body) = http_post(
        a.api,
        "/api/v1/dnssec/rollover",
        &bearer(),
        r#"{"zone":"gslb.test","action":"cancel"}"#,
    );
    assert_eq!(code, 200, "{body}");
    wait_same_rollover(&a, &b, "cancelled", 1);
    assert_eq!(tags(&b), old);
    assert_eq!(signers(&b), old);
}

/// Serves `g`'s REST API over TLS with a certificate of the CA.
fn api_tls(g: &Gslb, ca: &(String, String, String)) {
    write_private(&g.dir.path().join("api.crt"), &ca.1);
    write_private(&g.dir.path().join("api.key"), &ca.2);
    write_private(&g.dir.path().join("peers-ca.pem"), &ca.0);
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "token_file: api.token}",
        "token_file: api.token, tls_cert_file: api.crt, tls_key_file: api.key}",
    );
    std::fs::write(&g.config, text).unwrap();
}

#[test]
fn https_peers_converge_with_the_rest_api_serving_tls() {
    let ca = opengslb_controlplane::test_support::ca_and_leaf();
    let mut a = Gslb::prepare(|c| c);
    let mut b = Gslb::prepare(|c| c);
    for (g, peer) in [(&a, b.api), (&b, a.api)] {
        api_tls(g, &ca);
        let ca_file = g.dir.path().join("peers-ca.pem");
        add_sync_with(
            g,
            &[format!("https://{peer}")],
            &format!("ca_file: \"{}\", ", ca_file.display()),
        );
    }
    for g in [&mut a, &mut b] {
        g.start_cp();
        g.start_dp();
        g.wait_answering();
    }
    // Plain HTTP to a TLS API gets no answer.
    assert!(http_get(a.api, "/api/v1/dnssec/status").is_none_or(|b| b.is_empty()));
    wait_converged(&a, &b, "no convergence over https", |t| {
        signers(&a) == t && signers(&b) == t
    });
    // Both polls succeed (metrics are plain HTTP on their own port).
    for g in [&a, &b] {
        wait_for(10, "no successful poll", &[g], || {
            match g.cp_metric("opengslb_dnssec_key_sync_success_total") {
                Some(n) if n >= 1.0 => Ok(()),
                n => Err(format!("opengslb_dnssec_key_sync_success_total {n:?}")),
            }
        });
    }
}
