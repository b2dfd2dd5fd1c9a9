//! DNSSEC end to end: the real controlplane signs, the real dataplane
//! serves, and hickory-proto's verifier (an independent implementation)
//! validates every RRSIG of every answer against the DNSKEY RRset served at
//! the apex, which is itself checked against the DS the controlplane prints.
//! Positive answers, NXDOMAIN (name and wildcard covered), NODATA and empty
//! non-terminals; UDP and TCP; the same key after a controlplane restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hickory_proto::{
    dnssec::{
        rdata::{DNSSECRData, DNSKEY, NSEC, RRSIG},
        DigestType, Verifier,
    },
    op::{Message, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
};

use crate::harness::*;

/// Extra domains so every policy's candidates are validated.
fn with_policies(c: String) -> String {
    c.replace(
        "domains:\n",
        "domains:\n  - {name: w.gslb.test, routing_algorithm: weighted, regions: [local], max_answers: 2}\n  - {name: fo.gslb.test, routing_algorithm: failover, regions: [local]}\n",
    )
}

fn dnssec_query(name: &str, t: RecordType) -> Message {
    let mut q = query_edns(name, t, 4096);
    if let Some(e) = q.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    q
}

/// The zone's DNSKEYs, checked: self-signed by a SEP key.
fn dnskeys(g: &Gslb) -> Vec<DNSKEY> {
    let m = g.udp(&dnssec_query("gslb.test.", RecordType::DNSKEY));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let keys: Vec<DNSKEY> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
            _ => None,
        })
        .collect();
    assert!(!keys.is_empty(), "DNSKEY at the apex: {m}");
    verify_section(&keys, &m.answers);
    keys
}

/// Verifies every RRset of `records` that has RRSIGs; every RRset but RRSIG
/// must have at least one. Returns the number of signatures verified.
fn verify_section(keys: &[DNSKEY], records: &[Record]) -> usize {
    let mut sets: BTreeMap<(Name, RecordType), Vec<&Record>> = BTreeMap::new();
    let mut sigs: Vec<(&Name, &RRSIG)> = Vec::new();
    for r in records {
        match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(s)) => sigs.push((&r.name, s)),
            _ => sets
                .entry((r.name.clone(), r.record_type()))
                .or_default()
                .push(r),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut n = 0;
    for ((name, t), set) in &sets {
        let covering: Vec<&RRSIG> = sigs
            .iter()
            .filter(|(o, s)| *o == name && s.input().type_covered == *t)
            .map(|(_, s)| *s)
            .collect();
        assert!(!covering.is_empty(), "{name} {t} has no RRSIG");
        for sig in covering {
            let input = sig.input();
            assert!(input.sig_inception.get() < now && now < input.sig_expiration.get());
            assert!(set.iter().all(|r| r.ttl <= input.original_ttl));
            let key = keys
                .iter()
                .find(|k| k.calculate_key_tag().unwrap() == input.key_tag)
                .expect("RRSIG by a served DNSKEY");
            key.verify_rrsig(name, DNSClass::IN, sig, set.iter().copied())
                .unwrap_or_else(|e| panic!("{name} {t}: {e}"));
            n += 1;
        }
    }
    n
}

fn nsecs(m: &Message) -> Vec<(Name, NSEC)> {
    m.authorities
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::NSEC(n)) => Some((r.name.clone(), n.clone())),
            _ => None,
        })
        .collect()
}

/// `owner < name < next` in canonical order (the last NSEC wraps to the apex).
fn covers(owner: &Name, nsec: &NSEC, name: &Name) -> bool {
    let next = nsec.next_domain_name();
    owner < name && (name < next || next <= owner)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

#[test]
fn signed_answers_validate_over_udp_and_tcp() {
    let g = Gslb::start_with(with_policies);
    let keys = dnskeys(&g);

    // The DS the CLI-facing API will hand out matches the served key.
    let sep: Vec<&DNSKEY> = keys.iter().filter(|k| k.secure_entry_point()).collect();
    assert_eq!(sep.len(), 1, "one CSK by default");
    let digest = sep[0]
        .to_digest(&name("gslb.test."), DigestType::SHA256)
        .unwrap();
    assert_eq!(digest.as_ref().len(), 32);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    let want = format!(
        "gslb.test. IN DS {} 13 2 {hex}",
        sep[0].calculate_key_tag().unwrap()
    );
    let body = http_get(g.api, "/api/v1/dnssec/ds?zone=gslb.test").expect("REST DS");
    assert!(body.contains(&want), "DS over REST: {body}, want {want}");
    let status = http_get(g.api, "/api/v1/dnssec/status").expect("REST status");
    assert!(
        status.contains("\"enabled\":true") && status.contains("\"csk\""),
        "{status}"
    );

    for q in [
        ("www.gslb.test.", RecordType::A),
        ("www.gslb.test.", RecordType::AAAA),
        ("w.gslb.test.", RecordType::A),
        ("fo.gslb.test.", RecordType::A),
        ("alias.gslb.test.", RecordType::A),
        ("info.gslb.test.", RecordType::TXT),
        ("gslb.test.", RecordType::SOA),
        ("gslb.test.", RecordType::NS),
        ("gslb.test.", RecordType::MX),
        ("big.gslb.test.", RecordType::AAAA),
    ] {
        let query = dnssec_query(q.0, q.1);
        for m in [g.udp(&query), g.tcp(&query)] {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{q:?}");
            assert!(!m.metadata.authentic_data, "AD never set");
            if m.metadata.truncation {
                continue;
            }
            let n = verify_section(&keys, &m.answers);
            assert!(n >= 1, "{q:?}: {m}");
        }
    }
    // Weighted with max_answers 2: one signed record for a DNSSEC client.
    let m = g.udp(&dnssec_query("w.gslb.test.", RecordType::A));
    assert_eq!(
        m.answers
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .count(),
        1
    );
    // Without DO: no RRSIG anywhere.
    let m = g.udp(&query_edns("www.gslb.test.", RecordType::A, 4096));
    assert!(m
        .answers
        .iter()
        .all(|r| r.record_type() != RecordType::RRSIG));
    // The big RRset with its signature does not fit 1232 octets? Either it
    // fits and validates (above) or it is truncated and TCP validates.
    let mut big = dnssec_query("big.gslb.test.", RecordType::AAAA);
    if let Some(e) = big.edns.as_mut() {
        e.set_max_payload(512);
    }
    let m = g.udp(&big);
    assert!(m.metadata.truncation, "40 AAAA + RRSIG exceed 512 octets");
    assert!(verify_section(&keys, &g.tcp(&big).answers) >= 1);
}

#[test]
fn denial_of_existence_validates() {
    let g = Gslb::start();
    let keys = dnskeys(&g);

    // NXDOMAIN: SOA + NSEC covering the name + NSEC covering the wildcard.
    for qname in [
        "nothere.gslb.test.",
        "zzz.gslb.test.",
        "a.b.c.svc.deep.gslb.test.",
        "aaa.gslb.test.",
    ] {
        let query = dnssec_query(qname, RecordType::A);
        for m in [g.udp(&query), g.tcp(&query)] {
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{qname}");
            assert!(verify_section(&keys, &m.authorities) >= 2, "{qname}: {m}");
            let proofs = nsecs(&m);
            let q = name(qname);
            assert!(
                proofs.iter().any(|(o, n)| covers(o, n, &q)),
                "{qname}: no NSEC covers it: {m}"
            );
            // Closest encloser: the longest existing ancestor (an owner of
            // some NSEC, or a name an NSEC points to); its wildcard is covered.
            let mut ce = q.base_name();
            loop {
                let probe = g.udp(&query_edns(&ce.to_ascii(), RecordType::A, 4096));
                if probe.metadata.response_code != ResponseCode::NXDomain {
                    break;
                }
                ce = ce.base_name();
            }
            let wildcard = Name::from_ascii("*").unwrap().append_domain(&ce).unwrap();
            assert!(
                proofs.iter().any(|(o, n)| covers(o, n, &wildcard)),
                "{qname}: no NSEC covers {wildcard}: {m}"
            );
        }
    }

    // NODATA, an ordinary name and an empty non-terminal: the owner's NSEC,
    // whose bitmap lacks the type.
    for (qname, t) in [
        ("info.gslb.test.", RecordType::AAAA),
        ("api.gslb.test.", RecordType::AAAA),
        ("deep.gslb.test.", RecordType::A),
        ("gslb.test.", RecordType::A),
    ] {
        let m = g.udp(&dnssec_query(qname, t));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qname}");
        assert!(m.answers.is_empty());
        assert!(verify_section(&keys, &m.authorities) >= 2, "{qname}: {m}");
        let proofs = nsecs(&m);
        assert_eq!(proofs.len(), 1, "{qname}: {m}");
        assert_eq!(proofs[0].0, name(qname));
        assert!(proofs[0]
            .1
            .type_bit_maps()
            .all(|x| x != t && x != RecordType::CNAME));
    }
}

#[test]
fn controlplane_restart_keeps_the_key() {
    let mut g = Gslb::start();
    let tags = |g: &Gslb| -> Vec<u16> {
        dnskeys(g)
            .iter()
            .map(|k| k.calculate_key_tag().unwrap())
            .collect()
    };
    let serial = |g: &Gslb| match &g.udp(&query("gslb.test.", RecordType::SOA)).answers[0].data {
        RData::SOA(s) => s.serial,
        other => panic!("{other:?}"),
    };
    let before = tags(&g);
    let first_serial = serial(&g);
    g.kill_cp();
    g.start_cp();
    // Wait for a snapshot from the new controlplane (its serial is newer).
    let deadline = Instant::now() + Duration::from_secs(30);
    while serial(&g) == first_serial {
        assert!(Instant::now() < deadline, "no new snapshot:\n{}", g.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tags(&g), before, "same key tag after a restart");
    // And its signatures still validate.
    let keys = dnskeys(&g);
    let m = g.udp(&dnssec_query("www.gslb.test.", RecordType::A));
    assert!(verify_section(&keys, &m.answers) >= 1);
}
