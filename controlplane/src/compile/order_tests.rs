//! The node build of a compile: canonical order whatever the config order,
//! empty non-terminals at every depth, RRsets merged per type in type order;
//! and the wire-form canonical comparison the stream and the incremental
//! compiler search nodes with.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use super::*;
use crate::config;

/// A zone whose records name `names` (each an A and, every third, a TXT
/// and then another A; the values follow the name's number), in the order
/// given.
fn zone(names: &[(usize, &str)]) -> Config {
    let mut t = String::from("overwatch:\n  dnssec: {enabled: false, security_acknowledgment: \"I understand that answers will be unsigned and that resolvers cannot detect forged answers\"}\ndns:\n  zones:\n    - name: example.com\n      records:\n");
    for &(i, n) in names {
        writeln!(
            t,
            "        - {{name: {n}, type: A, value: \"192.0.2.{}\"}}",
            i % 250 + 1
        )
        .unwrap();
        if i % 3 == 0 {
            writeln!(t, "        - {{name: {n}, type: TXT, value: \"t{i}\"}}").unwrap();
            writeln!(
                t,
                "        - {{name: {n}, type: A, value: \"198.51.100.{}\"}}",
                i % 250 + 1
            )
            .unwrap();
        }
    }
    config::parse(&t, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn snapshot(cfg: &Config) -> Snapshot {
    Compiler::new()
        .compile(cfg, 1, 1, &AllHealthy, SystemTime::UNIX_EPOCH)
        .snapshot
}

/// The canonical key as `DnsName` defines it (labels reversed), of a wire name.
fn key_of(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut labels = Vec::new();
    let mut at = 0;
    while wire[at] != 0 {
        let len = usize::from(wire[at]);
        labels.push(wire[at + 1..at + 1 + len].to_vec());
        at += 1 + len;
    }
    labels.reverse();
    labels
}

const NAMES: [&str; 12] = [
    "z.example.com",
    "a.b.c.d.example.com",
    "b.example.com",
    "a-b.example.com",
    "a.example.com",
    "x.a.example.com",
    "ab.example.com",
    "a.x.example.com",
    "_tcp.b.example.com",
    "0.example.com",
    "example.com",
    "c.d.example.com",
];

#[test]
fn nodes_are_canonical_whatever_the_config_order() {
    let numbered: Vec<(usize, &str)> = NAMES.iter().copied().enumerate().collect();
    let forward = snapshot(&zone(&numbered));
    let reversed: Vec<(usize, &str)> = numbered.iter().rev().copied().collect();
    let backward = snapshot(&zone(&reversed));
    let names = |s: &Snapshot| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    // Strictly increasing in canonical order, by the reference key.
    let keys: Vec<Vec<Vec<u8>>> = forward.nodes.iter().map(|n| key_of(&n.name)).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    assert_eq!(names(&forward), names(&backward));
    // Every configured name and every name between it and the apex.
    let mut want: Vec<Vec<u8>> = Vec::new();
    for n in NAMES {
        let mut cur = Some(DnsName::parse(n).unwrap());
        while let Some(c) = cur {
            want.push(c.to_wire());
            cur = c.parent().filter(|p| p.label_count() >= 2);
        }
    }
    want.sort_by_key(|a| key_of(a));
    want.dedup();
    assert_eq!(names(&forward), want);
    for ent in ["b.c.d.example.com", "d.example.com", "x.example.com"] {
        let w = DnsName::parse(ent).unwrap().to_wire();
        let n = forward.nodes.iter().find(|n| n.name == w).unwrap();
        assert!(n.rrsets.is_empty() && n.plans.is_empty(), "{ent} is an ENT");
    }
    // RRsets merged per type, in type order, rdata in config order.
    let z = forward
        .nodes
        .iter()
        .find(|n| n.name == DnsName::parse("z.example.com").unwrap().to_wire())
        .unwrap();
    let types: Vec<u32> = z.rrsets.iter().map(|r| r.rtype).collect();
    assert_eq!(types, [rtype::A, rtype::TXT]);
    assert_eq!(
        z.rrsets[0].rdata,
        [vec![192, 0, 2, 1], vec![198, 51, 100, 1]]
    );
    assert_eq!(forward, backward);
}

#[test]
fn wire_canonical_cmp_matches_the_label_key() {
    let mut names: Vec<Vec<u8>> = NAMES
        .iter()
        .chain(&[
            "com",
            "a.com",
            "example.org",
            "aa.example.com",
            "a.a.example.com",
        ])
        .map(|n| DnsName::parse(n).unwrap().to_wire())
        .collect();
    for a in &names {
        for b in &names {
            assert_eq!(
                wire::canonical_cmp(a, b),
                key_of(a).cmp(&key_of(b)),
                "{a:?} vs {b:?}"
            );
        }
        let s = String::from_utf8_lossy(a).into_owned();
        assert_eq!(wire::canonical_cmp(a, a), Ordering::Equal, "{s}");
    }
    names.sort_by(|a, b| wire::canonical_cmp(a, b));
    assert!(names.windows(2).all(|w| key_of(&w[0]) < key_of(&w[1])));
    // Malformed input (a label running past the end, no root label)
    // compares without panicking.
    for bad in [&[5u8, b'a'][..], &[], &[63], &[1, b'a']] {
        let _ = wire::canonical_cmp(bad, &names[0]);
        let _ = wire::canonical_cmp(&names[0], bad);
    }
}

#[test]
fn presentation_canonical_cmp_matches_the_label_key() {
    for a in NAMES {
        for b in NAMES {
            let (wa, wb) = (
                DnsName::parse(a).unwrap().to_wire(),
                DnsName::parse(b).unwrap().to_wire(),
            );
            assert_eq!(
                canonical_cmp(a, b),
                key_of(&wa).cmp(&key_of(&wb)),
                "{a} {b}"
            );
        }
    }
}
