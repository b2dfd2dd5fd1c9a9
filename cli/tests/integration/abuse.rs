//! TCP limits against slow and hostile clients (issue 9, point 3), on the
//! real binaries: the test config caps TCP at 16 connections, with a 2 s
//! idle timeout and a 500 ms per-message I/O timeout.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use hickory_proto::{op::Message, rr::RecordType};

use crate::harness::*;

const CAP: usize = 16;

/// One query on a fresh connection, no retry: the reply, or why not.
fn one_tcp_query(g: &Gslb, id: u16) -> Result<Message, String> {
    let mut s = TcpStream::connect(g.dns).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut q = query("www.gslb.test.", RecordType::A);
    q.metadata.id = id;
    let b = q.to_vec().unwrap();
    let mut framed = (b.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&b);
    s.write_all(&framed).map_err(|e| format!("write: {e}"))?;
    let reply = tcp_recv(&mut s).ok_or("no reply")?;
    let m = Message::from_vec(&reply).map_err(|e| format!("parse: {e}"))?;
    if m.metadata.id != id || m.answers.len() != 3 {
        return Err(format!("wrong reply: {m:?}"));
    }
    Ok(m)
}

/// A slow attacker until `stop`: connects, then trickles a message one
/// octet every 100 ms (it never completes within the I/O timeout), and
/// reconnects 10 ms after the server drops it. Counts its connections.
fn slow_attacker(g_dns: std::net::SocketAddr, stop: Arc<AtomicBool>, conns: Arc<AtomicU64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stop.load(Relaxed) && Instant::now() < deadline {
        let Ok(mut s) = TcpStream::connect(g_dns) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        conns.fetch_add(1, Relaxed);
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        // A 200-octet message announced, sent one octet at a time.
        let mut msg = vec![0u8, 200];
        msg.extend_from_slice(&[0x41; 200]);
        for b in &msg {
            if stop.load(Relaxed) || s.write_all(std::slice::from_ref(b)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn legitimate_clients_answered_while_twice_the_cap_of_slow_connections_attack() {
    let g = Gslb::start();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker_conns = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..2 * CAP)
        .map(|_| {
            let (stop, conns) = (stop.clone(), attacker_conns.clone());
            let dns = g.dns;
            std::thread::spawn(move || slow_attacker(dns, stop, conns))
        })
        .collect();
    // Let the attack fill every slot first.
    std::thread::sleep(Duration::from_millis(700));
    let open = g
        .dp_metric("opengslb_tcp_connections_open")
        .expect("open gauge");
    assert!(open >= (CAP - 2) as f64, "attack holds the slots: {open}");

    // 200 legitimate queries, each on a fresh connection, one try each.
    let mut failures = Vec::new();
    let total = 200u16;
    for id in 0..total {
        if let Err(e) = one_tcp_query(&g, id) {
            failures.push((id, e));
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    let open_during = g.dp_metric("opengslb_tcp_connections_open").unwrap();
    stop.store(true, Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let answered = usize::from(total) - failures.len();
    assert!(
        answered * 100 >= usize::from(total) * 99,
        "only {answered}/{total} legitimate queries answered: {failures:?}\n{}",
        g.logs()
    );
    // The attack was real: many connections, cut by the I/O timeout or
    // evicted at the cap, and the open count stayed bounded.
    assert!(attacker_conns.load(Relaxed) > 2 * CAP as u64);
    let cut = g.dp_metric("opengslb_tcp_io_timeouts_total").unwrap_or(0.0)
        + g.dp_metric("opengslb_tcp_connections_evicted_total")
            .unwrap_or(0.0);
    assert!(cut >= CAP as f64, "slow connections were cut: {cut}");
    assert!(open_during <= (2 * CAP) as f64, "open: {open_during}");
    assert_eq!(
        g.dp_metric("opengslb_limit{limit=\"tcp_max_connections\"}"),
        Some(16.0)
    );
}

#[test]
fn slow_sender_is_cut_after_the_io_timeout_not_the_idle_timeout() {
    let g = Gslb::start();
    let mut s = TcpStream::connect(g.dns).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    // Announce 100 octets, then one octet every 100 ms: each read is well
    // within 500 ms, the message is not.
    let mut closed_after = None;
    for b in [0u8, 100].into_iter().chain(std::iter::repeat_n(0x41, 100)) {
        if s.write_all(&[b]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_after = closed_after.expect("the server closed the slow connection");
    assert!(
        closed_after >= Duration::from_millis(400) && closed_after < Duration::from_millis(1900),
        "closed after {closed_after:?} (I/O timeout 500 ms, idle 2 s)"
    );
    assert!(g.dp_metric("opengslb_tcp_io_timeouts_total").unwrap() >= 1.0);
}

#[test]
fn pipelining_client_that_never_reads_is_closed() {
    let g = Gslb::start();
    let mut s = TcpStream::connect(g.dns).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let b = query("big.gslb.test.", RecordType::AAAA).to_vec().unwrap();
    let mut framed = (b.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&b);
    let burst: Vec<u8> = framed.repeat(100);
    // Write queries and never read; stop once the server stops reading
    // (writes block) or drops us. Bounded: 10 s or 20 MB.
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(10) && sent < 20 << 20 {
        match s.write(&burst) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the server kept reading"
    );
    // The server's write times out (500 ms) and the connection closes.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(g.dp_metric("opengslb_tcp_io_timeouts_total").unwrap() >= 1.0);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let mut received = 0usize;
    let ended = loop {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break true,
            Ok(n) => received += n,
        }
        if received > 200 << 20 {
            break false;
        }
    };
    assert!(ended, "connection closed");
    // Others are still answered.
    assert_eq!(
        g.tcp(&query("www.gslb.test.", RecordType::A)).answers.len(),
        3
    );
    let _ = sent;
}

#[test]
fn near_the_cap_a_new_connection_gets_one_query() {
    let g = Gslb::start();
    // 90 % of 16, rounded up: 15 connections held open and idle.
    let held: Vec<TcpStream> = (0..15)
        .map(|_| TcpStream::connect(g.dns).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(g.dp_metric("opengslb_tcp_connections_open"), Some(15.0));
    let mut s = TcpStream::connect(g.dns).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut burst = Vec::new();
    for id in [1u16, 2] {
        let mut q = query("www.gslb.test.", RecordType::A);
        q.metadata.id = id;
        let b = q.to_vec().unwrap();
        burst.extend_from_slice(&(b.len() as u16).to_be_bytes());
        burst.extend_from_slice(&b);
    }
    s.write_all(&burst).unwrap();
    let first = Message::from_vec(&tcp_recv(&mut s).expect("one reply")).unwrap();
    assert_eq!(first.metadata.id, 1);
    assert!(tcp_recv(&mut s).is_none(), "closed after one query");
    assert_eq!(
        g.dp_metric("opengslb_tcp_connections_one_shot_total"),
        Some(1.0)
    );
    drop(held);
    // Below the threshold again: pipelining works.
    std::thread::sleep(Duration::from_millis(300));
    let mut s = TcpStream::connect(g.dns).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&burst).unwrap();
    for id in [1u16, 2] {
        let m = Message::from_vec(&tcp_recv(&mut s).unwrap()).unwrap();
        assert_eq!(m.metadata.id, id);
    }
}

/// A raw UDP query for `name` A with EDNS and, if given, a COOKIE option.
fn raw_query(id: u16, name: &str, cookie: Option<&[u8]>) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    let opt: Vec<u8> = match cookie {
        Some(c) => [&[0u8, 10][..], &(c.len() as u16).to_be_bytes(), c].concat(),
        None => Vec::new(),
    };
    m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    m.extend_from_slice(&(opt.len() as u16).to_be_bytes());
    m.extend_from_slice(&opt);
    m
}

/// The server cookie in `reply` that follows `client` (8 octets).
fn server_cookie(reply: &[u8], client: &[u8]) -> Option<Vec<u8>> {
    let at = reply.windows(8).rposition(|w| w == client)?;
    let len = usize::from(u16::from_be_bytes([reply[at - 2], reply[at - 1]]));
    reply.get(at + 8..at + len).map(<[u8]>::to_vec)
}

#[test]
fn rrl_limits_udp_and_a_valid_cookie_exempts() {
    let g = Gslb::start_with(|c| {
        c.replace(
            "  tcp: {idle_timeout",
            "  rrl: {exempt: [], responses_per_second: 5, slip: 2}\n  cookies: {secret_file: cookie.secret}\n  tcp: {idle_timeout",
        )
    });
    assert_eq!(
        g.dp_metric("opengslb_limit{limit=\"rrl_responses_per_second\"}"),
        Some(5.0)
    );
    // A query with only a client cookie gets a server cookie back.
    let client = [0x5a_u8; 8];
    let first = g
        .udp_raw(&raw_query(1, "www.gslb.test", Some(&client)), 2000)
        .expect("reply");
    let server = server_cookie(&first, &client).expect("a server cookie");
    assert_eq!(server.len(), 16);
    let mut with_cookie = client.to_vec();
    with_cookie.extend_from_slice(&server);
    // A malformed COOKIE option (3 octets) is FORMERR.
    let bad = g
        .udp_raw(&raw_query(2, "www.gslb.test", Some(&[1, 2, 3])), 2000)
        .expect("FORMERR reply");
    assert_eq!(bad[3] & 0x0f, 1, "FORMERR");

    // 60 cookieless queries at once from 127.0.0.1: about 5 answered in full,
    // then every 2nd limited one slips (TC=1, no answer), the rest dropped.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for id in 0..60u16 {
        sock.send_to(&raw_query(100 + id, "www.gslb.test", None), g.dns)
            .unwrap();
    }
    let (mut full, mut slipped) = (0, 0);
    let mut buf = [0u8; 1500];
    while let Ok(n) = sock.recv(&mut buf) {
        let ancount = u16::from_be_bytes([buf[6], buf[7]]);
        if buf[2] & 0x02 != 0 && ancount == 0 {
            slipped += 1;
        } else if ancount > 0 {
            full += 1;
        }
        let _ = n;
    }
    // (The harness's own start-up probes spent some of the 5 already.)
    assert!((1..=8).contains(&full), "full answers: {full}");
    assert!((20..=32).contains(&slipped), "slipped: {slipped}");
    // Still limited, but a valid cookie is exempt: all 20 answered in full.
    let mut answered = 0;
    for id in 0..20u16 {
        sock.send_to(
            &raw_query(200 + id, "www.gslb.test", Some(&with_cookie)),
            g.dns,
        )
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            answered += usize::from(u16::from_be_bytes([buf[6], buf[7]]) > 0 && n > 12);
        }
    }
    assert_eq!(answered, 20, "cookie holders are not limited");
    assert!(g.dp_metric("opengslb_rrl_dropped_total").unwrap() >= 20.0);
    assert!(g.dp_metric("opengslb_rrl_slipped_total").unwrap() >= 20.0);
    // One log line for the limited network, not one per query.
    let lines = g
        .logs()
        .lines()
        .filter(|l| l.contains("network limited"))
        .count();
    assert_eq!(lines, 1, "{}", g.logs());
}
