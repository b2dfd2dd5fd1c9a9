//! Answers from a node's key (`snapshot::hot`): the RRsets kept in the key,
//! those left on the node, their order (ANY), long names (a heap key), and
//! a name whose hash tag collides being told apart by the key's name.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use opengslb_proto as proto;

use super::tests::{fixture, name, rrset};
use super::*;

fn query(n: &Name, rt: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(n.clone(), rt));
    m
}

fn ask(s: &Snapshot, q: &Message) -> Message {
    let mut out = vec![0u8; 4096];
    let n = answer(
        s,
        &q.to_vec().unwrap(),
        Transport::Udp,
        &mut WorkerState::new(),
        &mut out,
    )
    .expect("a reply");
    Message::from_vec(&out[..n]).unwrap()
}

fn add(msg: &mut proto::Snapshot, wire: Vec<u8>, rrsets: Vec<proto::RRset>) {
    msg.nodes.push(proto::Node {
        name: wire,
        zone: 0,
        rrsets,
        plans: vec![],
        denial: vec![],
    });
}

/// A name of `labels` labels of `len` octets under `gslb.test.`.
fn long_name(labels: usize, len: usize) -> String {
    let mut s = String::new();
    for i in 0..labels {
        s.push_str(&format!(
            "{}{}.",
            (b'a' + i as u8) as char,
            "x".repeat(len - 1)
        ));
    }
    s + "gslb.test."
}

#[test]
fn key_rrsets_answer_like_node_rrsets() {
    let mut msg = fixture();
    let txt = b"\x05hello".to_vec();
    let mx = b"\x00\x0a\x02mx\x04gslb\x04test\x00".to_vec();
    // A (inline), then AAAA (does not fit beside it: stays on the node).
    add(
        &mut msg,
        name("k1.gslb.test."),
        vec![
            rrset(1, 77, vec![vec![198, 18, 0, 1]]),
            rrset(28, 78, vec![vec![0x20; 16]]),
            rrset(16, 79, vec![txt.clone()]),
        ],
    );
    // Two small sets that fit inline, in this order; MX does not.
    add(
        &mut msg,
        name("k2.gslb.test."),
        vec![
            rrset(16, 90, vec![txt.clone()]),
            rrset(1, 91, vec![vec![198, 18, 0, 2]]),
            rrset(15, 92, vec![mx]),
        ],
    );
    // A long name: a heap key holding both sets.
    let long = long_name(3, 25);
    add(
        &mut msg,
        name(&long),
        vec![
            rrset(1, 93, vec![vec![198, 18, 0, 4], vec![198, 18, 0, 5]]),
            rrset(16, 94, vec![txt]),
        ],
    );
    let s = Snapshot::try_from(&msg).unwrap();

    // Where each set ended up (so the test covers both paths).
    let (_, k1) = s.node(&name("k1.gslb.test.")).unwrap();
    assert!(k1.key.find(rtype::A).is_some());
    assert!(k1.key.find(rtype::AAAA).is_none());
    assert_eq!(k1.rrsets.len(), 2, "AAAA and TXT stay on the node");
    let (_, k2) = s.node(&name("k2.gslb.test.")).unwrap();
    assert!(k2.key.find(16).is_some() && k2.key.find(rtype::A).is_some());
    assert_eq!(k2.rrsets.len(), 1, "MX stays on the node");
    // Far more than an inline key holds: a heap key with both sets.
    let (_, kl) = s.node(&name(&long)).unwrap();
    assert!(kl.key.find(rtype::A).is_some() && kl.key.find(16).is_some());
    assert!(kl.rrsets.is_empty());

    let k1n = Name::from_ascii("k1.gslb.test.").unwrap();
    let r = ask(&s, &query(&k1n, RecordType::A));
    assert!(r.metadata.authoritative);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 77);
    assert_eq!(r.answers[0].name, k1n);
    assert!(matches!(&r.answers[0].data, RData::A(a) if a.0.octets() == [198, 18, 0, 1]));
    let r = ask(&s, &query(&k1n, RecordType::AAAA));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, 78);
    let r = ask(&s, &query(&k1n, RecordType::TXT));
    assert_eq!((r.answers.len(), r.answers[0].ttl), (1, 79));
    // ANY: the node's first RRset, from the key.
    let r = ask(&s, &query(&k1n, RecordType::ANY));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::A);
    // NODATA is unchanged.
    let r = ask(&s, &query(&k1n, RecordType::SRV));
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities.len(), 1);

    let k2n = Name::from_ascii("K2.GSLB.test.").unwrap();
    let r = ask(&s, &query(&k2n, RecordType::A));
    assert_eq!((r.answers.len(), r.answers[0].ttl), (1, 91));
    assert_eq!(r.answers[0].name, k2n, "owner points at the question");
    let r = ask(&s, &query(&k2n, RecordType::ANY));
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::TXT, "first RRset");
    let r = ask(&s, &query(&k2n, RecordType::MX));
    assert_eq!((r.answers.len(), r.answers[0].ttl), (1, 92));

    let ln = Name::from_ascii(&long).unwrap();
    let r = ask(&s, &query(&ln, RecordType::A));
    let got: Vec<_> = r
        .answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::A(a) => Some(a.0.octets()),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![[198, 18, 0, 4], [198, 18, 0, 5]],
        "record order kept"
    );
    assert!(r.answers.iter().all(|a| a.ttl == 93 && a.name == ln));
    let r = ask(&s, &query(&ln, RecordType::TXT));
    assert_eq!((r.answers.len(), r.answers[0].ttl), (1, 94));
    // A name that differs in one octet only is another name.
    let mut other = long.clone();
    other.replace_range(0..1, "q");
    let r = ask(
        &s,
        &query(&Name::from_ascii(&other).unwrap(), RecordType::A),
    );
    assert!(r.answers.is_empty());
    assert_eq!(r.response_code, hickory_proto::op::ResponseCode::NXDomain);
}

#[test]
fn the_key_confirms_every_candidate() {
    // Every name of a 20,000-name zone is found, by its own node, and its
    // answer carries its own address; names next to them are not found.
    let mut msg = fixture();
    for i in 0..20_000u32 {
        add(
            &mut msg,
            name(&format!("n{i}.gslb.test.")),
            vec![rrset(1, 60, vec![i.to_be_bytes().to_vec()])],
        );
    }
    let s = Snapshot::try_from(&msg).unwrap();
    for i in (0..20_000u32).step_by(7) {
        let n = name(&format!("n{i}.gslb.test."));
        let (_, node) = s.node(&n).expect("found");
        assert_eq!(node.key.name(), &n[..]);
        let r = ask(
            &s,
            &query(
                &Name::from_ascii(format!("n{i}.gslb.test.")).unwrap(),
                RecordType::A,
            ),
        );
        assert!(matches!(&r.answers[0].data, RData::A(a) if a.0.octets() == i.to_be_bytes()));
        assert!(s.node(&name(&format!("m{i}.gslb.test."))).is_none());
    }
}

#[test]
fn prefetch_hints_take_any_bytes_and_change_no_answer() {
    // The UDP worker hints a batch before answering it: hostile datagrams
    // (short, compressed, over-long labels, empty) pass through the hint
    // without a panic, and the answers after a hint are the answers without.
    let mut msg = fixture();
    for i in 0..5_000u32 {
        add(
            &mut msg,
            name(&format!("p{i}.gslb.test.")),
            vec![rrset(1, 60, vec![i.to_be_bytes().to_vec()])],
        );
    }
    let s = Snapshot::try_from(&msg).unwrap();
    assert!(s.node_count() >= crate::snapshot::PREFETCH_MIN_NODES);
    let mut batch: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            query(
                &Name::from_ascii(format!("P{}.GSLB.test.", i * 97)).unwrap(),
                RecordType::A,
            )
            .to_vec()
            .unwrap()
        })
        .collect();
    let mut hostile = batch[0].clone();
    hostile.truncate(15);
    batch.extend([
        vec![],
        vec![0; 12],
        hostile,
        [&batch[1][..12], &[0xc0, 0x0c, 0, 1, 0, 1]].concat(),
        [&batch[1][..12], &[64u8; 80][..]].concat(),
        [&batch[1][..12], &[63u8; 300][..]].concat(),
    ]);
    for chunk in batch.chunks(13) {
        let without: Vec<Option<Vec<u8>>> = chunk.iter().map(|q| reply(&s, q)).collect();
        s.prefetch(chunk.iter().map(Vec::as_slice));
        let with: Vec<Option<Vec<u8>>> = chunk.iter().map(|q| reply(&s, q)).collect();
        assert_eq!(with, without);
    }
    // More queries than a batch holds: the rest get no hint, and no panic.
    s.prefetch(batch.iter().map(Vec::as_slice));
    // The hinted names answer with their own address.
    let r = Message::from_vec(&reply(&s, &batch[3]).unwrap()).unwrap();
    assert!(matches!(&r.answers[0].data, RData::A(a) if a.0.octets() == 291u32.to_be_bytes()));
}

fn reply(s: &Snapshot, q: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 4096];
    let n = answer(s, q, Transport::Udp, &mut WorkerState::new(), &mut out)?;
    Some(out[..n].to_vec())
}
