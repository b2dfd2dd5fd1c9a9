//! Authoritative behaviour (RFC 1034/1035/2181/2308/6891/7766/8482/9619),
//! over UDP and over TCP.

use std::{collections::BTreeSet, io::Write, net::TcpStream, time::Duration};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

use crate::harness::*;

fn a_addrs(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn both(g: &Gslb, q: &Message) -> [Message; 2] {
    [g.udp(q), g.tcp(q)]
}

#[test]
fn a_and_aaaa_answer_their_family_with_aa_case_and_ttl() {
    let g = Gslb::start();
    for m in both(&g, &query("wWw.GsLb.TeSt.", RecordType::A)) {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative, "AA must be set");
        assert!(!m.metadata.recursion_available);
        assert!(m.metadata.recursion_desired, "RD copied");
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "wWw.GsLb.TeSt.",
            "question case echoed"
        );
        assert_eq!(
            a_addrs(&m),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
                .map(String::from)
                .into()
        );
        assert!(m.answers.iter().all(|r| r.ttl == 30), "domain ttl");
        assert!(m.answers.iter().all(|r| r.record_type() == RecordType::A));
    }
    for m in both(&g, &query("www.gslb.test.", RecordType::AAAA)) {
        assert_eq!(a_addrs(&m), ["2001:db8::1".to_string()].into());
        assert!(m
            .answers
            .iter()
            .all(|r| r.record_type() == RecordType::AAAA));
    }
    // default_ttl applies when the domain sets none
    let m = g.udp(&query("api.gslb.test.", RecordType::A));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 60);
}

#[test]
fn round_robin_rotates_over_udp() {
    let g = Gslb::start();
    let firsts: BTreeSet<String> = (0..6)
        .map(|_| {
            let m = g.udp(&query("www.gslb.test.", RecordType::A));
            assert_eq!(m.answers.len(), 3);
            match &m.answers[0].data {
                RData::A(a) => a.0.to_string(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(firsts.len(), 3, "every address leads in turn: {firsts:?}");
}

#[test]
fn soa_ns_nxdomain_nodata_refused() {
    let g = Gslb::start();
    for m in both(&g, &query("gslb.test.", RecordType::SOA)) {
        assert_eq!(m.answers.len(), 1);
        let RData::SOA(soa) = &m.answers[0].data else {
            panic!("not SOA")
        };
        assert_eq!(soa.mname.to_ascii(), "ns1.gslb.test.");
        assert!(soa.serial > 1_700_000_000);
        assert!(m.metadata.authoritative);
    }
    for m in both(&g, &query("gslb.test.", RecordType::NS)) {
        assert_eq!(m.answers.len(), 2);
    }
    // generated defaults for a zone given as a plain name
    let m = g.udp(&query("other.test.", RecordType::NS));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    for m in both(&g, &query("nope.gslb.test.", RecordType::A)) {
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(
            m.authorities[0].ttl, 30,
            "negative TTL = min(SOA ttl, minimum)"
        );
    }
    // below an existing name
    let m = g.udp(&query("x.www.gslb.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // NODATA: existing name, missing type; and an empty non-terminal
    for name in ["api.gslb.test.", "deep.gslb.test."] {
        for m in both(&g, &query(name, RecordType::AAAA)) {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.answers.is_empty(), "{name}");
            assert_eq!(m.authorities.len(), 1, "{name}");
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        }
    }
    let m = g.udp(&query("svc.deep.gslb.test.", RecordType::A));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 45);
    // outside every zone
    for m in both(&g, &query("example.com.", RecordType::A)) {
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(!m.metadata.authoritative);
        assert!(m.answers.is_empty());
    }
}

#[test]
fn static_records_and_cname_chase() {
    let g = Gslb::start();
    for m in both(&g, &query("alias.gslb.test.", RecordType::A)) {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(m.answers[0].ttl, 300);
        assert_eq!(
            a_addrs(&m),
            ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
                .map(String::from)
                .into(),
            "in-zone target's addresses added"
        );
    }
    let m = g.udp(&query("alias.gslb.test.", RecordType::CNAME));
    assert_eq!(m.answers.len(), 1);
    // chain ending on a missing in-zone name: NXDOMAIN (RFC 6604) with the CNAME
    let m = g.udp(&query("dangling.gslb.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.answers.len(), 1);
    let m = g.udp(&query("info.gslb.test.", RecordType::TXT));
    assert_eq!(m.answers.len(), 1);
    let m = g.udp(&query("gslb.test.", RecordType::MX));
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::MX);
}

#[test]
fn any_is_minimal_and_missing_family_is_nodata() {
    let g = Gslb::start();
    for m in both(&g, &query("www.gslb.test.", RecordType::ANY)) {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.answers.is_empty());
        let types: BTreeSet<_> = m.answers.iter().map(|r| r.record_type()).collect();
        assert_eq!(types.len(), 1, "one RRset only (RFC 8482): {types:?}");
    }
    let m = g.udp(&query("api.gslb.test.", RecordType::AAAA));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn edns_opt_payload_badvers_and_double_opt() {
    let g = Gslb::start();
    for m in both(&g, &query_edns("www.gslb.test.", RecordType::A, 4096)) {
        let edns = m.edns.as_ref().expect("OPT in reply to an EDNS query");
        assert!(edns.max_payload() <= 1232, "payload capped at 1232");
        assert!(edns.max_payload() >= 512);
        assert_eq!(m.answers.len(), 3);
    }
    let m = g.udp(&query("www.gslb.test.", RecordType::A));
    assert!(m.edns.is_none(), "no OPT without EDNS in the query");

    // version 1 -> BADVERS
    let mut q = query_edns("www.gslb.test.", RecordType::A, 1232);
    q.edns.as_mut().unwrap().set_version(1);
    let raw = g.udp_raw(&q.to_vec().unwrap(), 2000).expect("reply");
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(raw[3] & 0x0f, 0, "header RCODE holds the low bits (0)");
    assert_eq!(
        u16::from(m.metadata.response_code),
        16,
        "extended RCODE 16 = BADVERS"
    );
    assert!(m.answers.is_empty());

    // unknown option ignored: option code 65001 appended by hand
    let mut raw = query_edns("www.gslb.test.", RecordType::A, 1232)
        .to_vec()
        .unwrap();
    let n = raw.len();
    raw[n - 2..].copy_from_slice(&6u16.to_be_bytes()); // OPT rdlen
    raw.extend_from_slice(&[0xfd, 0xe9, 0, 2, 0xab, 0xcd]);
    let m = Message::from_vec(&g.udp_raw(&raw, 2000).expect("reply")).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 3);

    // two OPT records -> FORMERR
    let mut raw = query("www.gslb.test.", RecordType::A).to_vec().unwrap();
    raw[11] = 2; // ARCOUNT
    for _ in 0..2 {
        raw.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    let reply = g.udp_raw(&raw, 2000).expect("reply");
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
}

#[test]
fn truncation_over_udp_full_answer_over_tcp() {
    let g = Gslb::start();
    let q = query("big.gslb.test.", RecordType::AAAA);
    let raw = g.udp_raw(&q.to_vec().unwrap(), 2000).expect("udp reply");
    assert!(raw.len() <= 512, "fits 512 without EDNS: {}", raw.len());
    let m = Message::from_vec(&raw).unwrap();
    assert!(m.metadata.truncation, "TC=1");
    let m = g.tcp(&q);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    // with EDNS 1232 the 40 AAAA (~1.1 kB) fit
    let m = g.udp(&query_edns("big.gslb.test.", RecordType::AAAA, 1232));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
}

#[test]
fn malformed_queries_get_formerr_notimp_or_silence() {
    let g = Gslb::start();
    let good = query("www.gslb.test.", RecordType::A).to_vec().unwrap();
    let rcode = |bytes: &[u8]| g.udp_raw(bytes, 1000).map(|r| r[3] & 0x0f);

    let mut qd0 = good[..12].to_vec();
    qd0[5] = 0;
    assert_eq!(rcode(&qd0), Some(1), "QDCOUNT=0");
    let mut qd2 = good.clone();
    qd2[5] = 2;
    qd2.extend_from_slice(&good[12..]);
    assert_eq!(rcode(&qd2), Some(1), "QDCOUNT=2");
    let mut trunc = good.clone();
    trunc.truncate(good.len() - 3);
    assert_eq!(rcode(&trunc), Some(1), "truncated question");
    let mut lp = good[..12].to_vec();
    lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(rcode(&lp), Some(1), "compression loop");
    let mut long = good[..12].to_vec();
    for _ in 0..5 {
        long.push(63);
        long.extend_from_slice(&[b'a'; 63]);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(rcode(&long), Some(1), "name over 255 octets");

    let mut notify = good.clone();
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    assert_eq!(rcode(&notify), Some(4), "NOTIMP for opcode NOTIFY");
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(g.udp_raw(&response, 300), None, "no reply to QR=1");
    assert_eq!(
        g.udp_raw(&good[..5], 300),
        None,
        "no reply to a partial header"
    );

    // 2,000 hostile packets (seeded mutations and junk); then answers are still right
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..2000 {
        let mut p = if i % 3 == 0 {
            (0..(next() % 600) as usize)
                .map(|_| next() as u8)
                .collect::<Vec<_>>()
        } else {
            let mut p = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % p.len();
                p[at] = next() as u8;
            }
            p
        };
        if i % 7 == 0 {
            p.truncate((next() as usize) % (p.len() + 1));
        }
        let _ = sock.send_to(&p, g.dns);
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for m in both(&g, &query("www.gslb.test.", RecordType::A)) {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 3);
    }
    assert!(g.dp.as_ref().is_some(), "dataplane still running");
}

#[test]
fn tcp_pipelining_idle_timeout_and_connection_cap() {
    let g = Gslb::start();
    // three queries in one write, three replies in order
    let mut s = TcpStream::connect(g.dns).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut burst = Vec::new();
    for (i, name) in ["www.gslb.test.", "api.gslb.test.", "nope.gslb.test."]
        .iter()
        .enumerate()
    {
        let mut q = query(name, RecordType::A);
        q.metadata.id = i as u16;
        let b = q.to_vec().unwrap();
        burst.extend_from_slice(&(b.len() as u16).to_be_bytes());
        burst.extend_from_slice(&b);
    }
    s.write_all(&burst).unwrap();
    let codes: Vec<_> = (0..3)
        .map(|_| {
            let m = Message::from_vec(&tcp_recv(&mut s).unwrap()).unwrap();
            (m.metadata.id, m.metadata.response_code)
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (0, ResponseCode::NoError),
            (1, ResponseCode::NoError),
            (2, ResponseCode::NXDomain)
        ]
    );
    // idle timeout (2 s in the test config) closes the connection
    std::thread::sleep(Duration::from_millis(2600));
    assert!(tcp_recv(&mut s).is_none(), "idle connection closed");

    // cap of 16: the 17th connection evicts the one that has waited
    // longest for a query (the first held) and is answered
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(g.dns).unwrap());
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(g.dp_metric("opengslb_tcp_connections_open"), Some(16.0));
    let mut extra = TcpStream::connect(g.dns).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    tcp_send(
        &mut extra,
        &query("www.gslb.test.", RecordType::A).to_vec().unwrap(),
    );
    assert!(tcp_recv(&mut extra).is_some(), "answered at the cap");
    held[0]
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(tcp_recv(&mut held[0]).is_none(), "oldest idle one evicted");
    assert_eq!(
        g.dp_metric("opengslb_tcp_connections_evicted_total"),
        Some(1.0)
    );
    assert!(g.dp_metric("opengslb_tcp_connections_open").unwrap() <= 16.0);
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        g.tcp(&query("www.gslb.test.", RecordType::A)).answers.len(),
        3
    );
}
