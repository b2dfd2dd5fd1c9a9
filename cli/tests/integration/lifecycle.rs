//! Process lifecycle: controlplane loss, cache restarts, reconnects,
//! reloads, bad configs, invalid snapshots, `opengslb up`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

use crate::harness::*;

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn soa_serial(g: &Gslb) -> u32 {
    let m = g.udp(&query("gslb.test.", RecordType::SOA));
    match &m.answers[0].data {
        RData::SOA(s) => s.serial,
        other => panic!("{other:?}"),
    }
}

/// The raw replies to a fixed sequence of queries (ids fixed, one worker).
fn answer_bytes(g: &Gslb) -> Vec<Vec<u8>> {
    let mut qs = Vec::new();
    for name in [
        "www.gslb.test.",
        "WWW.gslb.TEST.",
        "alias.gslb.test.",
        "nope.gslb.test.",
    ] {
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SOA,
            RecordType::ANY,
        ] {
            qs.push(query(name, t));
            qs.push(query_edns(name, t, 1232));
        }
    }
    qs.push(query("big.gslb.test.", RecordType::AAAA));
    qs.iter()
        .map(|q| g.udp_raw(&q.to_vec().unwrap(), 2000).expect("reply"))
        .collect()
}

#[test]
fn dataplane_survives_controlplane_and_restarts_from_cache_byte_identical() {
    let mut g = Gslb::start();
    let from_stream = answer_bytes(&g);
    assert_eq!(from_stream.len(), 33);

    // controlplane killed: the dataplane keeps answering
    g.kill_cp();
    std::thread::sleep(Duration::from_millis(300));
    let m = g.udp(&query("www.gslb.test.", RecordType::A));
    assert_eq!(m.answers.len(), 3);

    // dataplane restarted with no controlplane: answers from its cache,
    // byte-identical to the answers the stream gave (fresh process both times)
    g.kill_dp();
    g.start_dp();
    g.wait_answering();
    let from_cache = answer_bytes(&g);
    for (i, (a, b)) in from_stream.iter().zip(&from_cache).enumerate() {
        assert_eq!(a, b, "answer {i} differs between stream and cache");
    }
    assert_eq!(g.dp_metric("opengslb_snapshot_from_cache"), Some(1.0));

    // controlplane back with a changed config: the dataplane reconnects and serves it
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "  - {name: big.gslb.test,",
        "  - {name: new.gslb.test, routing_algorithm: round-robin, regions: [v4only]}\n  - {name: big.gslb.test,",
    );
    std::fs::write(&g.config, text).unwrap();
    g.start_cp();
    wait_until("reconnect with the new snapshot", 20, || {
        try_udp(g.dns, &query("new.gslb.test.", RecordType::A), 300)
            .is_some_and(|m| m.answers.len() == 1)
    });
    assert_eq!(g.dp_metric("opengslb_snapshot_from_cache"), Some(0.0));
}

#[test]
fn sighup_reload_changes_answers_and_soa_serial() {
    let g = Gslb::start();
    let before = soa_serial(&g);
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "{address: 198.51.100.7, port: 80}",
        "{address: 198.51.100.8, port: 80}",
    );
    std::fs::write(&g.config, text).unwrap();
    g.reload_cp();
    wait_until("reloaded answer", 10, || {
        let m = g.udp(&query("api.gslb.test.", RecordType::A));
        matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "198.51.100.8")
    });
    let after = soa_serial(&g);
    assert_ne!(before, after, "SOA serial changes with the snapshot");
    assert!(after.wrapping_sub(before) as i32 > 0, "serial increases");

    // a broken file on reload keeps the running config
    std::fs::write(&g.config, "dns: [not, a, map]\n").unwrap();
    g.reload_cp();
    std::thread::sleep(Duration::from_millis(500));
    let m = g.udp(&query("api.gslb.test.", RecordType::A));
    assert_eq!(m.answers.len(), 1);
    assert!(g.cp.as_ref().is_some());
}

#[test]
fn broken_config_names_file_line_key_and_never_starts() {
    let g = Gslb::prepare(|c| c);
    let bad = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("routing_algorithm: rr,", "routing_algorithm: fastest,");
    let path = g.dir.path().join("bad.yaml");
    write_private(&path, &bad);
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.contains("fastest"))
        .unwrap()
        + 1;
    let out = Command::new(bin("opengslb-controlplane"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("bad.yaml:{line}")), "{err}");
    assert!(err.contains("routing_algorithm"), "{err}");

    let unknown = g.dir.path().join("unknown.yaml");
    write_private(
        &unknown,
        "dns:\n  listen_address: 127.0.0.1:53\n  colour: blue\n",
    );
    let out = opengslb()
        .arg("validate")
        .arg("--config")
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown.yaml:3"), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn every_binary_has_help_and_version() {
    for name in [
        "opengslb",
        "opengslb-controlplane",
        "opengslb-dataplane",
        "opengslb-agent",
    ] {
        for flag in ["--help", "--version"] {
            let out = Command::new(bin(name)).arg(flag).output().unwrap();
            assert!(out.status.success(), "{name} {flag}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(name) || text.contains("Usage"),
                "{name} {flag}: {text}"
            );
        }
    }
    let out = Command::new(bin("opengslb-agent")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "agent not built yet");
}

#[test]
fn opengslb_up_runs_both_and_stops_both() {
    let g = Gslb::prepare(|c| c);
    let mut up = opengslb()
        .arg("up")
        .arg("--config")
        .arg(&g.config)
        .arg("--state-dir")
        .arg(g.dir.path().join("state"))
        .current_dir(g.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = None;
    while Instant::now() < deadline && answered.is_none() {
        answered = try_udp(g.dns, &query("www.gslb.test.", RecordType::A), 200);
    }
    let m = answered.expect("opengslb up answers DNS");
    assert_eq!(m.answers.len(), 3);
    let st = Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = up.wait().unwrap();
    assert!(status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        try_udp(g.dns, &query("www.gslb.test.", RecordType::A), 300).is_none(),
        "the dataplane stopped with opengslb up"
    );
}

mod fake_controlplane {
    //! A scriptable controlplane that sends hand-made snapshots.

    use std::pin::Pin;

    use opengslb_proto::{
        snapshot_service_server::{SnapshotService, SnapshotServiceServer},
        snapshot_update::Kind,
        AnswerPlan, Candidate, Node, Policy, RRset, Snapshot, SnapshotUpdate, SubscribeRequest,
        Zone,
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;
    use tonic::{Request, Response, Status};

    pub type Updates = mpsc::UnboundedSender<Result<SnapshotUpdate, Status>>;

    struct Fake(std::sync::Mutex<Option<mpsc::UnboundedReceiver<Result<SnapshotUpdate, Status>>>>);

    #[tonic::async_trait]
    impl SnapshotService for Fake {
        type SubscribeStream =
            Pin<Box<dyn futures_core::Stream<Item = Result<SnapshotUpdate, Status>> + Send>>;
        async fn subscribe(
            &self,
            _: Request<SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            let rx = self
                .0
                .lock()
                .unwrap()
                .take()
                .ok_or_else(|| Status::unavailable("once"))?;
            Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
        }
    }

    pub fn start(addr: std::net::SocketAddr) -> Updates {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(SnapshotServiceServer::new(Fake(std::sync::Mutex::new(
                        Some(rx),
                    ))))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        tx
    }

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in name.split('.').filter(|l| !l.is_empty()) {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    }

    /// A valid one-zone snapshot whose `www.fake.test` A answers `ip`.
    pub fn snapshot(generation: u64, ip: [u8; 4]) -> SnapshotUpdate {
        let mut soa = wire("ns1.fake.test");
        soa.extend(wire("hostmaster.fake.test"));
        for v in [1u32, 3600, 600, 604800, 60] {
            soa.extend(v.to_be_bytes());
        }
        let zone = Zone {
            apex: wire("fake.test"),
            soa: Some(RRset {
                rtype: 6,
                ttl: 3600,
                rdata: vec![soa],
                rrsig: vec![],
            }),
            ns: Some(RRset {
                rtype: 2,
                ttl: 3600,
                rdata: vec![wire("ns1.fake.test")],
                rrsig: vec![],
            }),
            dnskey: None,
            negative_ttl: 60,
            nsec3: None,
        };
        let node = Node {
            name: wire("www.fake.test"),
            zone: 0,
            rrsets: vec![],
            plans: vec![AnswerPlan {
                rtype: 1,
                policy: Policy::RoundRobin as i32,
                max_answers: 0,
                candidates: vec![Candidate {
                    rrset: Some(RRset {
                        rtype: 1,
                        ttl: 10,
                        rdata: vec![ip.to_vec()],
                        rrsig: vec![],
                    }),
                    weight: 100,
                    region: 0,
                    geo_fallback: 0,
                }],
                when_all_down: 0,
                ecs_max_prefix_v4: 0,
                ecs_max_prefix_v6: 0,
            }],
            denial: vec![],
        };
        SnapshotUpdate {
            kind: Some(Kind::Full(Snapshot {
                generation,
                origin: "fake".into(),
                zones: vec![zone],
                nodes: vec![node],
                geo: None,
                options: None,
            })),
        }
    }
}

#[test]
fn invalid_snapshot_is_rejected_counted_and_previous_kept() {
    let mut g = Gslb::prepare(|c| c);
    let updates = fake_controlplane::start(g.grpc);
    updates
        .send(Ok(fake_controlplane::snapshot(10, [192, 0, 2, 99])))
        .unwrap();
    g.start_dp();
    let www = || g.udp(&query("www.fake.test.", RecordType::A));
    wait_until("first fake snapshot served", 20, || {
        try_udp(g.dns, &query("www.fake.test.", RecordType::A), 200).is_some()
    });
    assert_eq!(www().answers.len(), 1);

    // An A record with 3 octets of RDATA: invalid.
    let mut bad = fake_controlplane::snapshot(11, [192, 0, 2, 100]);
    if let Some(opengslb_proto::snapshot_update::Kind::Full(s)) = bad.kind.as_mut() {
        s.nodes[0].plans[0].candidates[0]
            .rrset
            .as_mut()
            .unwrap()
            .rdata[0]
            .pop();
    }
    updates.send(Ok(bad)).unwrap();
    wait_until("rejection counted", 10, || {
        g.dp_metric("opengslb_snapshots_rejected_total") == Some(1.0)
    });
    let m: Message = www();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.99"));

    // A later valid snapshot is served.
    updates
        .send(Ok(fake_controlplane::snapshot(12, [192, 0, 2, 101])))
        .unwrap();
    wait_until(
        "next valid snapshot",
        10,
        || matches!(&www().answers[0].data, RData::A(a) if a.0.to_string() == "192.0.2.101"),
    );
    g.kill_dp();
}
