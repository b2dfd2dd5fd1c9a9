//! Round trip: parse → encode → parse is equal.
//!
//! A query our parser accepts (header, question, EDNS with COOKIE and ECS) is encoded
//! again from the parsed fields alone (uncompressed, OPT last); parsing that
//! encoding must give the same header, question (case preserved) and EDNS.
//! The re-encoded query then goes through the whole answer path: an
//! independent decoder (hickory-proto) must accept the reply, hickory's own
//! encode → decode of it must be equal, and a reply carrying a question must
//! carry the query's question, name octets and case included.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use opengslb_dataplane::{
    answer::{answer, Transport, WorkerState},
    cookie::{CookieConfig, CookieState},
    snapshot::Snapshot,
    wire::{parse_edns, Edns, Header, Question},
};

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let text = include_str!("../../examples/gslb.yaml");
        let cfg = opengslb_controlplane::config::parse(text, std::path::Path::new("gslb.yaml"))
            .expect("examples/gslb.yaml parses");
        let compiled = opengslb_controlplane::compile::Compiler::new().compile(
            &cfg,
            1,
            1,
            &opengslb_controlplane::compile::AllHealthy,
            std::time::SystemTime::UNIX_EPOCH,
        );
        Snapshot::try_from(&compiled.snapshot).expect("the compiled example is valid")
    })
}

/// Encodes a query from parsed fields: header (AN = NS = 0, AR = 1 with
/// EDNS), the question uncompressed, then OPT with the COOKIE option.
fn encode(header: &Header, q: &Question, edns: Option<&Edns>) -> Vec<u8> {
    let mut m = Vec::with_capacity(512);
    m.extend_from_slice(&header.id.to_be_bytes());
    m.extend_from_slice(&header.flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    m.extend_from_slice(q.name());
    m.extend_from_slice(&q.qtype.to_be_bytes());
    m.extend_from_slice(&q.qclass.to_be_bytes());
    if let Some(e) = edns {
        m.push(0); // root owner
        m.extend_from_slice(&41u16.to_be_bytes());
        m.extend_from_slice(&e.udp_size.to_be_bytes());
        m.push(e.ext_rcode);
        m.push(e.version);
        m.extend_from_slice(&(if e.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
        let mut rdata = Vec::new();
        if let Some(c) = &e.cookie {
            let server = c.server().unwrap_or(&[]);
            rdata.extend_from_slice(&10u16.to_be_bytes());
            rdata.extend_from_slice(&((8 + server.len()) as u16).to_be_bytes());
            rdata.extend_from_slice(&c.client);
            rdata.extend_from_slice(server);
        }
        if let Some(ecs) = &e.ecs {
            // ECS (RFC 7871): family, source prefix, scope 0, the address
            // cut to the prefix's octets.
            let octets = match ecs.ip() {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            let n = usize::from(ecs.source).div_ceil(8);
            rdata.extend_from_slice(&8u16.to_be_bytes());
            rdata.extend_from_slice(&((4 + n) as u16).to_be_bytes());
            rdata.extend_from_slice(&ecs.family.to_be_bytes());
            rdata.extend_from_slice(&[ecs.source, 0]);
            rdata.extend_from_slice(&octets[..n]);
        }
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    m
}

fuzz_target!(|data: &[u8]| {
    let Some(header) = Header::parse(data) else {
        return;
    };
    let Ok(q) = Question::parse(data, &header) else {
        return;
    };
    let Ok(edns) = parse_edns(data, &header, q.end) else {
        return;
    };

    let enc = encode(&header, &q, edns.as_ref());
    let h2 = Header::parse(&enc).expect("re-encoded header parses");
    assert_eq!((h2.id, h2.flags, h2.qdcount), (header.id, header.flags, 1));
    let q2 = Question::parse(&enc, &h2).expect("re-encoded question parses");
    assert_eq!(q2.name(), q.name(), "name as sent");
    assert_eq!(q2.lower(), q.lower(), "lookup key");
    assert_eq!((q2.qtype, q2.qclass), (q.qtype, q.qclass));
    assert_eq!(q2.end, 12 + q.wire_len());
    let e2 = parse_edns(&enc, &h2, q2.end).expect("re-encoded EDNS parses");
    assert_eq!(e2, edns, "EDNS round trip");

    let mut state = WorkerState::with_seed(1);
    state.cookies = CookieState::new(CookieConfig {
        master: [7; 16],
        rotate_secs: 86_400,
    });
    state
        .cookies
        .set(Some([192, 0, 2, 1].into()), 1_700_000_000);
    let mut out = vec![0u8; 65_535];
    for transport in [Transport::Udp, Transport::Tcp] {
        let Some(n) = answer(snapshot(), &enc, transport, &mut state, &mut out) else {
            continue;
        };
        let reply = &out[..n];
        let decoded = hickory_proto::op::Message::from_vec(reply)
            .unwrap_or_else(|e| panic!("reply does not decode ({e}): {reply:02x?}"));
        assert_eq!(decoded.metadata.id, header.id);
        let again = decoded.to_vec().expect("hickory re-encodes the reply");
        let decoded2 =
            hickory_proto::op::Message::from_vec(&again).expect("re-encoded reply decodes");
        assert_eq!(decoded2, decoded, "reply round trip");
        let rh = Header::parse(reply).expect("reply header");
        if rh.qdcount == 1 {
            let rq = Question::parse(reply, &rh).expect("reply question parses");
            assert_eq!(rq.name(), q.name(), "reply echoes the question as sent");
            assert_eq!((rq.qtype, rq.qclass), (q.qtype, q.qclass));
        }
    }
});
