//! DNSSEC key sync between two real controlplanes (each with its own store
//! and dataplane) polling each other's REST API: they converge on one key
//! set, private part included — both sign with it, and one DS validates both
//! dataplanes' answers. A peer answering garbage is counted as a failure
//! and changes nothing: signing and serving go on.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::rr::{RData, RecordType};

use crate::harness::*;

fn add_sync(g: &Gslb, peers: &[String]) {
    let token = g.dir.path().join("api.token");
    let list: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "  data_dir: cp-data\n",
        &format!(
            "  data_dir: cp-data\n  dnssec:\n    key_sync: {{peers: [{}], poll_interval: 1s, timeout: 2s, token_file: \"{}\"}}\n",
            list.join(", "),
            token.display()
        ),
    );
    std::fs::write(&g.config, text).unwrap();
}

/// Key tags of the DNSKEY RRset a dataplane serves.
fn tags(g: &Gslb) -> Vec<u16> {
    let mut q = query_edns("gslb.test.", RecordType::DNSKEY, 4096);
    if let Some(e) = q.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    let mut t: Vec<u16> = g
        .udp(&q)
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.calculate_key_tag().unwrap()),
            _ => None,
        })
        .collect();
    t.sort_unstable();
    t
}

fn ds(g: &Gslb) -> String {
    http_get(g.api, "/api/v1/dnssec/ds?zone=gslb.test").unwrap_or_default()
}

/// A "peer" that answers every request with a malformed export.
fn garbage_peer() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(50) {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = "{\"zones\":[{\"zone\":\"gslb.test\",\"keys\":[{\"role\":\"csk\",\"algorithm\":13,\"flags\":257,\"key_tag\":1,\"created_unix\":1,\"private_key_pkcs8_hex\":\"00FF\"}]}]}";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ta, tb) = (tags(&a), tags(&b));
        if !ta.is_empty() && ta == tb && ds(&a) == ds(&b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {ta:?} vs {tb:?}\n{}\n{}",
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    // (b's API may come up after a's first poll: wait for a success too.)
    while a.cp_metric(&series).unwrap_or(0.0) < 1.0
        || a.cp_metric("opengslb_dnssec_key_sync_success_total")
            .unwrap_or(0.0)
            < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no failure or no success counted:\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = http_get(a.api, "/api/v1/dnssec/status").unwrap();
    assert!(status.contains("\"state\":\"failing\""), "{status}");
    assert!(status.contains("malformed key"), "{status}");
    // And a still signs with the converged key.
    assert_eq!(tags(&a), [key]);
}
