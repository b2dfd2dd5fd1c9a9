//! NSEC3 serving: the closest-encloser proof of NXDOMAIN (matching closest
//! encloser, covered next closer name, covered wildcard), NODATA and empty
//! non-terminals by the matching NSEC3, NSEC3PARAM at the apex, nothing
//! without DO, and refusal of chains with other parameters. Signatures are
//! placeholders; the integration tests validate real ones with `delv`.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use opengslb_proto as proto;

use super::tests::{fixture, name};
use super::*;
use crate::nsec3::{base32hex, hash, HASH_LEN};
use crate::snapshot::InvalidSnapshot;

fn fake_sig(tag: u8) -> Vec<u8> {
    let mut r = vec![0u8; 30];
    r[16] = tag;
    r
}

/// The fixture, signed with placeholders, with an NSEC3 chain over every
/// owner name (the apex included) instead of NSEC.
fn nsec3_fixture() -> proto::Snapshot {
    let mut p = fixture();
    p.nodes.push(proto::Node {
        name: name("gslb.test."),
        zone: 0,
        ..Default::default()
    });
    let mut hashes: Vec<[u8; HASH_LEN]> = p.nodes.iter().map(|n| hash(&n.name)).collect();
    hashes.sort();
    let records = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut rdata = vec![1, 0, 0, 0, 0, 20];
            rdata.extend_from_slice(&hashes[(i + 1) % hashes.len()]);
            rdata.extend([0, 1, 0x40]); // bitmap: A
            proto::Nsec3Record {
                hash: h.to_vec(),
                rrset: Some(proto::RRset {
                    rtype: 50,
                    ttl: 60,
                    rdata: vec![rdata],
                    rrsig: vec![fake_sig(7)],
                }),
            }
        })
        .collect();
    let z = &mut p.zones[0];
    for set in [z.soa.as_mut(), z.ns.as_mut()].into_iter().flatten() {
        set.rrsig = vec![fake_sig(1)];
    }
    z.nsec3 = Some(proto::Nsec3Chain {
        param: Some(proto::RRset {
            rtype: 51,
            ttl: 3600,
            rdata: vec![vec![1, 0, 0, 0, 0]],
            rrsig: vec![fake_sig(2)],
        }),
        records,
    });
    p
}

fn ask(s: &Snapshot, n: &str, t: RecordType, dnssec_ok: bool) -> Message {
    let mut m = Message::new(
        0xBEEF,
        hickory_proto::op::MessageType::Query,
        hickory_proto::op::OpCode::Query,
    );
    m.add_query(hickory_proto::op::Query::query(
        Name::from_ascii(n).unwrap(),
        t,
    ));
    let mut e = hickory_proto::op::Edns::new();
    e.set_max_payload(4096);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    let mut out = vec![0u8; 65535];
    let len = answer(
        s,
        &m.to_vec().unwrap(),
        Transport::Udp,
        &mut WorkerState::new(),
        &mut out,
    )
    .expect("a reply");
    Message::from_vec(&out[..len]).unwrap()
}

/// The hashes owning the NSEC3 records of the authority section (decoded
/// from their owner labels), each checked to be under the zone and signed.
fn nsec3_hashes(m: &Message) -> Vec<String> {
    let apex = Name::from_ascii("gslb.test.").unwrap();
    let owners: Vec<String> = m
        .authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::NSEC3)
        .map(|r| {
            assert!(apex.zone_of(&r.name), "{} outside the zone", r.name);
            assert_eq!(r.name.num_labels(), 3, "{}", r.name);
            r.name.to_ascii()
        })
        .collect();
    let sigs = m
        .authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::RRSIG)
        .count();
    // One RRSIG per NSEC3 and one for the SOA.
    assert_eq!(sigs, owners.len() + 1, "{m}");
    owners
        .iter()
        .map(|o| o.split('.').next().unwrap().to_owned())
        .collect()
}

fn label(n: &str) -> String {
    String::from_utf8(base32hex(&hash(&name(n))).to_vec()).unwrap()
}

/// The chain's hashes in order, as labels.
fn chain_labels() -> Vec<String> {
    let p = nsec3_fixture();
    p.zones[0]
        .nsec3
        .as_ref()
        .unwrap()
        .records
        .iter()
        .map(|r| {
            String::from_utf8(base32hex(&r.hash.as_slice().try_into().unwrap()).to_vec()).unwrap()
        })
        .collect()
}

/// Whether the record owned by `owner` covers `n` (base32hex sorts as the
/// hashes do).
fn covers(owner: &str, n: &str) -> bool {
    let chain = chain_labels();
    let i = chain.iter().position(|c| c == owner).unwrap();
    let next = &chain[(i + 1) % chain.len()];
    let h = label(n);
    if owner < next.as_str() {
        owner < h.as_str() && h.as_str() < next.as_str()
    } else {
        h.as_str() > owner || h.as_str() < next.as_str()
    }
}

#[test]
fn base32hex_is_rfc4648_extended_hex() {
    // Bit by bit: each character is 5 bits of the hash, most significant first.
    let h = hash(b"\x03abc\x00");
    let l = base32hex(&h);
    let alphabet = b"0123456789abcdefghijklmnopqrstuv";
    for (i, &c) in l.iter().enumerate() {
        let mut v = 0usize;
        for b in 0..5 {
            let bit = i * 5 + b;
            v = (v << 1) | usize::from((h[bit / 8] >> (7 - bit % 8)) & 1);
        }
        assert_eq!(c, alphabet[v], "character {i}");
    }
    // SHA-1 itself: FIPS 180 test vector "abc".
    assert_eq!(
        hash(b"abc").to_vec(),
        [
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
        ]
    );
}

#[test]
fn nxdomain_carries_the_closest_encloser_proof() {
    let s = Snapshot::try_from(&nsec3_fixture()).unwrap();
    let r = ask(&s, "x.nope.gslb.test.", RecordType::A, true);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let owners = nsec3_hashes(&r);
    // Closest encloser: the apex, matched.
    assert!(owners.contains(&label("gslb.test.")), "{r}");
    // Next closer name nope.gslb.test. and the wildcard *.gslb.test.: covered.
    assert!(owners.iter().any(|o| covers(o, "nope.gslb.test.")), "{r}");
    assert!(owners.iter().any(|o| covers(o, "*.gslb.test.")), "{r}");
    // Nothing else, nothing twice.
    let mut dedup = owners.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), owners.len());
    assert!(owners.len() <= 3);
}

#[test]
fn nxdomain_below_an_empty_non_terminal_uses_it_as_closest_encloser() {
    let s = Snapshot::try_from(&nsec3_fixture()).unwrap();
    let r = ask(&s, "c.b.gslb.test.", RecordType::A, true);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let owners = nsec3_hashes(&r);
    assert!(owners.contains(&label("b.gslb.test.")), "{r}");
    assert!(owners.iter().any(|o| covers(o, "c.b.gslb.test.")), "{r}");
    assert!(owners.iter().any(|o| covers(o, "*.b.gslb.test.")), "{r}");
}

#[test]
fn nodata_and_empty_non_terminal_carry_the_matching_nsec3() {
    let s = Snapshot::try_from(&nsec3_fixture()).unwrap();
    for (n, t) in [
        ("api.gslb.test.", RecordType::TXT),
        ("b.gslb.test.", RecordType::A),
    ] {
        let r = ask(&s, n, t, true);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{n}");
        assert!(r.answers.is_empty(), "{n}: {r}");
        assert_eq!(nsec3_hashes(&r), [label(n)], "{n}: {r}");
    }
}

#[test]
fn no_nsec3_without_do_and_param_at_the_apex() {
    let s = Snapshot::try_from(&nsec3_fixture()).unwrap();
    let r = ask(&s, "x.nope.gslb.test.", RecordType::A, false);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities.len(), 1, "SOA only: {r}");
    let r = ask(&s, "gslb.test.", RecordType::NSEC3PARAM, true);
    let types: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(types, [RecordType::NSEC3PARAM, RecordType::RRSIG], "{r}");
}

#[test]
fn other_parameters_and_broken_chains_are_refused() {
    let mut p = nsec3_fixture();
    // 10 extra iterations.
    let rd = &mut p.zones[0].nsec3.as_mut().unwrap().records[0]
        .rrset
        .as_mut()
        .unwrap()
        .rdata[0];
    rd[3] = 10;
    assert!(matches!(
        Snapshot::try_from(&p),
        Err(InvalidSnapshot::BadNsec3 { .. })
    ));
    // A next hash that does not follow the chain.
    let mut p = nsec3_fixture();
    let rd = &mut p.zones[0].nsec3.as_mut().unwrap().records[0]
        .rrset
        .as_mut()
        .unwrap()
        .rdata[0];
    rd[10] ^= 0xFF;
    assert!(matches!(
        Snapshot::try_from(&p),
        Err(InvalidSnapshot::BadNsec3 { .. })
    ));
    // A salt in NSEC3PARAM.
    let mut p = nsec3_fixture();
    p.zones[0]
        .nsec3
        .as_mut()
        .unwrap()
        .param
        .as_mut()
        .unwrap()
        .rdata = vec![vec![1, 0, 0, 0, 1, 7]];
    assert!(matches!(
        Snapshot::try_from(&p),
        Err(InvalidSnapshot::BadNsec3 { .. })
    ));
}
