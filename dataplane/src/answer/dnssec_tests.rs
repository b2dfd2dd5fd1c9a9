//! DNSSEC serving: RRSIGs and NSEC proofs only with DO=1, in the right
//! sections, the right NSEC picked, truncation counting the signatures.
//! Signatures here are placeholders (the integration tests validate real
//! ones end to end); what is checked is which records go where.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use opengslb_proto as proto;

use super::tests::{fixture, name};
use super::*;

/// A placeholder RRSIG RDATA (parses as an RRSIG, signer root).
fn fake_sig(tag: u8) -> Vec<u8> {
    let mut r = vec![0u8; 30];
    r[16] = tag;
    r
}

/// The fixture with its apex as a node, an NSEC (bitmap: RRSIG NSEC) at
/// every owner chained in canonical order, and a placeholder RRSIG on every
/// RRset.
fn signed_fixture() -> proto::Snapshot {
    let mut p = fixture();
    p.nodes.push(proto::Node {
        name: name("gslb.test."),
        zone: 0,
        ..Default::default()
    });
    let z = &mut p.zones[0];
    for set in [z.soa.as_mut(), z.ns.as_mut()].into_iter().flatten() {
        set.rrsig = vec![fake_sig(1)];
    }
    z.dnskey = Some(proto::RRset {
        rtype: 48,
        ttl: 3600,
        rdata: vec![vec![1, 1, 3, 13, 9, 9, 9, 9]],
        rrsig: vec![fake_sig(2)],
    });
    let mut names: Vec<Vec<u8>> = p.nodes.iter().map(|n| n.name.clone()).collect();
    names.sort_by(|a, b| wire::canonical_cmp(a, b));
    for n in &mut p.nodes {
        for set in &mut n.rrsets {
            set.rrsig = vec![fake_sig(3)];
        }
        for plan in &mut n.plans {
            for c in &mut plan.candidates {
                if let Some(set) = c.rrset.as_mut() {
                    set.rrsig = vec![fake_sig(4)];
                }
            }
        }
        let i = names.iter().position(|x| *x == n.name).unwrap();
        let mut rdata = names.get(i + 1).unwrap_or(&names[0]).clone();
        rdata.extend([0, 6, 0, 0, 0, 0, 0, 0x03]);
        n.denial = vec![proto::RRset {
            rtype: 47,
            ttl: 60,
            rdata: vec![rdata],
            rrsig: vec![fake_sig(5)],
        }];
    }
    p
}

fn signed() -> Snapshot {
    Snapshot::try_from(&signed_fixture()).unwrap()
}

fn ask(s: &Snapshot, n: &str, t: RecordType, dnssec_ok: bool, payload: u16) -> Message {
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
    e.set_max_payload(payload);
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

/// (owner, type) of each record of a section.
fn section(records: &[hickory_proto::rr::Record]) -> Vec<(String, RecordType)> {
    records
        .iter()
        .map(|r| (r.name.to_ascii(), r.record_type()))
        .collect()
}

fn nsec_owners(m: &Message) -> Vec<String> {
    m.authorities
        .iter()
        .filter(|r| r.record_type() == RecordType::NSEC)
        .map(|r| r.name.to_ascii())
        .collect()
}

#[test]
fn positive_answers_carry_rrsigs_only_with_do() {
    let s = signed();
    let r = ask(&s, "txt.gslb.test.", RecordType::TXT, true, 1232);
    assert_eq!(
        section(&r.answers),
        [
            ("txt.gslb.test.".into(), RecordType::TXT),
            ("txt.gslb.test.".into(), RecordType::RRSIG)
        ]
    );
    assert!(
        !r.metadata.authentic_data,
        "AD is never set by an authoritative server"
    );
    let r = ask(&s, "txt.gslb.test.", RecordType::TXT, false, 1232);
    assert_eq!(
        section(&r.answers),
        [("txt.gslb.test.".into(), RecordType::TXT)]
    );
    // DNSKEY at the apex, signed.
    let r = ask(&s, "gslb.test.", RecordType::DNSKEY, true, 1232);
    let types: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(types, [RecordType::DNSKEY, RecordType::RRSIG]);
    // The NSEC of a name can be asked for.
    let r = ask(&s, "txt.gslb.test.", RecordType::NSEC, true, 1232);
    let types: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(types, [RecordType::NSEC, RecordType::RRSIG]);
}

#[test]
fn nxdomain_proof_covers_name_and_wildcard() {
    let s = signed();
    let r = ask(&s, "Nothere.gslb.test.", RecordType::A, true, 4096);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.answers.is_empty());
    let types: Vec<RecordType> = r.authorities.iter().map(|a| a.record_type()).collect();
    assert_eq!(
        types,
        [
            RecordType::SOA,
            RecordType::RRSIG,
            RecordType::NSEC,
            RecordType::RRSIG,
            RecordType::NSEC,
            RecordType::RRSIG
        ]
    );
    // loop2 < nothere < ns1 covers the name; the apex covers *.gslb.test.
    assert_eq!(nsec_owners(&r), ["loop2.gslb.test.", "gslb.test."]);
    // One NSEC when it covers both (aa sorts right after the apex).
    let r = ask(&s, "aa.gslb.test.", RecordType::A, true, 4096);
    assert_eq!(nsec_owners(&r), ["gslb.test."]);
    // Deeper: a.b < x.y.b covers the name; the closest encloser is
    // b.gslb.test and *.b.gslb.test is covered by b's own NSEC (b < *.b < a.b).
    let r = ask(&s, "x.y.b.gslb.test.", RecordType::A, true, 4096);
    assert_eq!(nsec_owners(&r), ["a.b.gslb.test.", "b.gslb.test."]);
    // After the last name the chain wraps: www is the last owner.
    let r = ask(&s, "zzz.gslb.test.", RecordType::A, true, 4096);
    assert_eq!(nsec_owners(&r)[0], "www.gslb.test.");
    // Without DO: the SOA alone, as before.
    let r = ask(&s, "nothere.gslb.test.", RecordType::A, false, 4096);
    assert_eq!(
        section(&r.authorities),
        [("gslb.test.".into(), RecordType::SOA)]
    );
    // A CNAME into a missing name proves the target's non-existence.
    let r = ask(&s, "dangling.gslb.test.", RecordType::A, true, 4096);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nsec_owners(&r)[0], "loop2.gslb.test.");
}

#[test]
fn nodata_proof_is_the_owners_nsec() {
    let s = signed();
    for n in ["txt.gslb.test.", "b.gslb.test."] {
        let r = ask(&s, n, RecordType::AAAA, true, 4096);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(
            section(&r.authorities),
            [
                ("gslb.test.".into(), RecordType::SOA),
                ("gslb.test.".into(), RecordType::RRSIG),
                (n.into(), RecordType::NSEC),
                (n.into(), RecordType::RRSIG)
            ],
            "{n}"
        );
    }
}

#[test]
fn signed_multi_record_picks_answer_one_with_do() {
    let mut p = signed_fixture();
    let plan = &mut p.nodes[0].plans[0];
    plan.policy = Policy::Failover as i32;
    plan.max_answers = 2;
    let set = plan.candidates[0].rrset.clone().unwrap();
    plan.candidates = set
        .rdata
        .iter()
        .map(|r| proto::Candidate {
            rrset: Some(proto::RRset {
                rdata: vec![r.clone()],
                ..set.clone()
            }),
            weight: 1,
            region: 0,
            geo_fallback: 0,
        })
        .collect();
    let s = Snapshot::try_from(&p).unwrap();
    let r = ask(&s, "www.gslb.test.", RecordType::A, false, 1232);
    assert_eq!(r.answers.len(), 2, "two records without DO");
    let r = ask(&s, "www.gslb.test.", RecordType::A, true, 1232);
    let types: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(
        types,
        [RecordType::A, RecordType::RRSIG],
        "one signed RRset with DO"
    );
    // Round-robin with max_answers: DNSSEC clients get the whole RRset.
    let s = signed();
    let r = ask(&s, "one.gslb.test.", RecordType::A, true, 1232);
    assert_eq!(r.answers.len(), 4, "3 A + RRSIG");
    let r = ask(&s, "one.gslb.test.", RecordType::A, false, 1232);
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn truncation_counts_signatures() {
    let mut p = signed_fixture();
    let big = p
        .nodes
        .iter_mut()
        .find(|n| n.name == name("big.gslb.test."))
        .unwrap();
    // 40 AAAA = 40 × 28 octets + 12 + question; big signatures push it past 1232.
    big.plans[0].candidates[0].rrset.as_mut().unwrap().rrsig = vec![vec![0u8; 400]; 1];
    let s = Snapshot::try_from(&p).unwrap();
    let r = ask(&s, "big.gslb.test.", RecordType::AAAA, false, 1232);
    assert!(!r.metadata.truncation);
    let r = ask(&s, "big.gslb.test.", RecordType::AAAA, true, 1232);
    assert!(r.metadata.truncation, "the signed answer does not fit");
    assert!(r.answers.is_empty());
}

#[test]
fn snapshot_rejects_bad_denial() {
    let mut p = signed_fixture();
    p.nodes[0].denial[0].rtype = 1;
    assert_eq!(
        Snapshot::try_from(&p).unwrap_err(),
        crate::snapshot::InvalidSnapshot::BadDenial
    );
    let mut p = signed_fixture();
    p.nodes[0].denial[0].rdata[0] = vec![0xC0, 0x0C];
    assert!(Snapshot::try_from(&p).is_err());
    let mut p = signed_fixture();
    let d = p.nodes[0].denial[0].clone();
    p.nodes[0].denial.push(d);
    assert!(Snapshot::try_from(&p).is_err());
}

#[test]
fn canonical_order_of_wire_names() {
    use std::cmp::Ordering::*;
    let c = |a: &str, b: &str| wire::canonical_cmp(&name(a), &name(b));
    // RFC 4034 §6.1's example order.
    let order = [
        "example.",
        "a.example.",
        "yljkjljk.a.example.",
        "z.a.example.",
        "zabc.a.example.",
        "z.example.",
        "*.z.example.",
        "a.z.example.",
    ];
    for w in order.windows(2) {
        assert_eq!(c(w[0], w[1]), Less, "{} < {}", w[0], w[1]);
        assert_eq!(c(w[1], w[0]), Greater);
    }
    assert_eq!(c("a.example.", "a.example."), Equal);
    assert_eq!(c(".", "example."), Less);
}
