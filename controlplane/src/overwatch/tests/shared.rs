//! The agent listener beyond one controlplane's defaults: the agent
//! verifying the controlplane against a CA file, the connection cap, and a
//! revocation made on one controlplane reaching another that shares the
//! store.

use super::*;
use crate::test_support::ca_and_leaf;

/// A controlplane on `text` (see [`config_text`]), with `store` when given
/// (shared with another controlplane), else a SQLite store of its own;
/// `before` runs in the config directory before the listener starts (to
/// place certificates in `cp-data`).
async fn setup_with(
    text: &str,
    store: Option<Store>,
    before: impl FnOnce(&std::path::Path),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gslb.yaml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    before(dir.path());
    let cfg = config::load(&path).unwrap();
    let store = match store {
        Some(s) => s,
        None => Store::open(&format!(
            "sqlite://{}",
            dir.path().join("db/opengslb.db").display()
        ))
        .await
        .unwrap(),
    };
    let state = crate::server::test_state(path, cfg.clone(), store).await;
    let added = state.health.add(&cfg);
    state.health.settle(&added).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    super::super::serve(state.clone(), listener).unwrap();
    Setup {
        _dir: dir,
        state,
        addr,
    }
}

async fn try_register(
    addr: SocketAddr,
    id: &Identity,
    trust: &Trust,
    agent: &str,
) -> Result<u64, String> {
    let endpoint = addr.to_string();
    let cfg = tls::client_config(id, &endpoint, trust).map_err(|e| e.to_string())?;
    let ch = tls::connect(&endpoint, cfg, Duration::from_secs(3))
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut c = AgentServiceClient::new(ch);
    c.register(register(agent, TOKEN, &[("www.gslb.test", "10.1.0.1:80")]))
        .await
        .map(|r| r.into_inner().session)
        .map_err(|e| format!("register: {e:?}"))
}

#[tokio::test]
async fn ca_file_trust_accepts_the_signing_ca_and_refuses_another() {
    let (ca_pem, leaf_pem, leaf_key) = ca_and_leaf();
    let t = setup_with(&config_text(None), None, |dir| {
        // The operator's CA-issued certificate in place of the
        // self-signed one the controlplane would create.
        let data = dir.join("cp-data");
        tls::write_private(&data.join("agent-listener.crt"), leaf_pem.as_bytes()).unwrap();
        tls::write_private(&data.join("agent-listener.key"), leaf_key.as_bytes()).unwrap();
    })
    .await;
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good-ca.pem");
    std::fs::write(&good, &ca_pem).unwrap();
    let (other_ca, _, _) = ca_and_leaf();
    let wrong = files.path().join("wrong-ca.pem");
    std::fs::write(&wrong, &other_ca).unwrap();
    let id = Identity::ephemeral("agent").unwrap();

    let trust_good = Trust::Roots(Arc::new(tls::roots_from(&good).unwrap()));
    let session = try_register(t.addr, &id, &trust_good, "agent-ca")
        .await
        .expect("the signing CA is trusted");
    assert!(session > 0);

    // A CA that did not sign the controlplane's certificate: the agent
    // refuses the controlplane (its handshake fails before any RPC).
    let trust_wrong = Trust::Roots(Arc::new(tls::roots_from(&wrong).unwrap()));
    let e = try_register(t.addr, &id, &trust_wrong, "agent-ca")
        .await
        .unwrap_err();
    assert!(e.starts_with("connect"), "{e}");
    // UnknownIssuer, or BadSignature where the other CA has the same name.
    assert!(e.contains("InvalidCertificate"), "{e}");
    // The CA file decides, not the certificate itself: a controlplane
    // with a self-signed certificate is refused by the good CA too.
    let plain = setup(None).await;
    let e = try_register(plain.addr, &id, &trust_good, "agent-ca2")
        .await
        .unwrap_err();
    assert!(e.starts_with("connect"), "{e}");
    // A CA file with no certificate is a clear error.
    let empty = files.path().join("empty.pem");
    std::fs::write(&empty, "not a pem\n").unwrap();
    let e = tls::roots_from(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.pem"), "{e}");
}

#[tokio::test]
async fn connection_cap_refuses_and_counts_the_flood_while_an_agent_keeps_working() {
    const CAP: usize = 4;
    let text = config_text(None).replace(
        "  agent_listen: \"127.0.0.1:0\"\n",
        &format!("  agent_listen: \"127.0.0.1:0\"\n  max_agent_connections: {CAP}\n"),
    );
    assert!(text.contains("max_agent_connections"));
    let t = setup_with(&text, None, |_| {}).await;
    assert_eq!(
        t.state.config.lock().await.overwatch.max_agent_connections,
        CAP
    );

    // A legitimate agent first: one slot.
    let id = Identity::ephemeral("agent").unwrap();
    let mut c = client(t.addr, &id).await;
    let r = c
        .register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel::<HeartbeatRequest>(4);
    let mut inbound = c
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(hb(
        r.session,
        1,
        vec![health(
            "www.gslb.test",
            "10.1.0.1:80",
            HealthClaim::Healthy,
            1000,
        )],
    ))
    .await
    .unwrap();
    assert!(inbound.message().await.unwrap().unwrap().accepted);

    // The flood: idle TCP connections that never finish a handshake. The
    // first CAP-1 take the free slots (held until the handshake timeout);
    // every one beyond is closed at once and counted.
    let flood = 20;
    let mut held = Vec::new();
    for _ in 0..flood {
        held.push(tokio::net::TcpStream::connect(t.addr).await.unwrap());
    }
    let want = (flood - (CAP - 1)) as f64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let full = || {
        counter(
            &t.state,
            "opengslb_overwatch_refused_total",
            "reason=\"connections_full\"",
        )
    };
    while full() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(full(), want, "every connection beyond the cap is counted");
    // Those refused are closed by the controlplane: read sees EOF (or a
    // reset) quickly, not a hang.
    let mut closed = 0;
    for s in held.iter_mut() {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(s, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(
        closed,
        flood - (CAP - 1),
        "only the ones beyond the cap are closed"
    );

    // The registered agent's session is untouched: heartbeats still go
    // through and its backend is in the answers.
    tx.send(hb(
        r.session,
        2,
        vec![health(
            "www.gslb.test",
            "10.1.0.1:80",
            HealthClaim::Healthy,
            500,
        )],
    ))
    .await
    .unwrap();
    assert!(inbound.message().await.unwrap().unwrap().accepted);
    t.state.recompile("test").await.unwrap();
    assert!(answers(&t.state, "www.gslb.test")
        .iter()
        .any(|(a, _)| a == "10.1.0.1"));
    // Slots come back once the flood goes away.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut ok = false;
    while !ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let other = Identity::ephemeral("agent2").unwrap();
        let trust = Trust::Pin(Arc::new(PinStore::open(None).unwrap()));
        ok = try_register(t.addr, &other, &trust, "agent-2")
            .await
            .is_ok();
    }
    assert!(ok, "a new agent connects once the flood is gone");
}

#[test]
fn connection_cap_must_be_positive() {
    let text = config_text(None).replace(
        "  agent_listen: \"127.0.0.1:0\"\n",
        "  agent_listen: \"127.0.0.1:0\"\n  max_agent_connections: 0\n",
    );
    let e = config::parse(&text, std::path::Path::new("gslb.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overwatch.max_agent_connections"), "{e}");
}

/// Two handles on one PostgreSQL database made for this test, when
/// `OPENGSLB_TEST_POSTGRES_URL` names a server.
async fn postgres_pair(test: &str) -> Option<(Store, Store)> {
    let base = std::env::var("OPENGSLB_TEST_POSTGRES_URL").ok()?;
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let name = format!("ogtest_{test}_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (head, _) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = head.rsplit_once('/').unwrap();
    let url = format!("{server}/{name}");
    Some((
        Store::open(&url).await.unwrap(),
        Store::open(&url).await.unwrap(),
    ))
}

/// Revokes on `a`, shows `b` (same store, its own registry) cuts the
/// agent's open session and drops its backend.
async fn revocation_reaches(a_store: Store, b_store: Store) {
    let text = config_text(None);
    let a = setup_with(&text, Some(a_store), |_| {}).await;
    let b = setup_with(&text, Some(b_store), |_| {}).await;
    let id = Identity::ephemeral("agent").unwrap();
    let mut sessions = Vec::new();
    for t in [&a, &b] {
        let mut c = client(t.addr, &id).await;
        let r = c
            .register(register(
                "agent-1",
                TOKEN,
                &[("www.gslb.test", "10.1.0.1:80")],
            ))
            .await
            .unwrap()
            .into_inner();
        heartbeats(
            &mut c,
            vec![hb(
                r.session,
                1,
                vec![health(
                    "www.gslb.test",
                    "10.1.0.1:80",
                    HealthClaim::Healthy,
                    1000,
                )],
            )],
        )
        .await
        .unwrap();
        t.state.recompile("test").await.unwrap();
        assert!(answers(&t.state, "www.gslb.test")
            .iter()
            .any(|(x, _)| x == "10.1.0.1"));
        sessions.push((c, r.session));
    }
    // Nothing revoked yet: following changes nothing on B.
    assert!(super::super::apply_revocations(&b.state)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.state.overwatch.registry.len(), 1);

    assert!(
        super::super::revoke_and_publish(&a.state, "agent-1", "test", "127.0.0.1")
            .await
            .unwrap()
            .is_some()
    );
    // B learns it from the store, on its own.
    let cut = super::super::apply_revocations(&b.state).await.unwrap();
    assert_eq!(cut, vec!["agent-1".to_owned()]);
    assert_eq!(b.state.overwatch.registry.len(), 0);
    b.state.recompile("test").await.unwrap();
    assert_eq!(
        answers(&b.state, "www.gslb.test"),
        vec![("192.0.2.1".into(), 100)]
    );
    // B's open session is dead: its next heartbeat is refused.
    let (mut cb, sb) = sessions.pop().unwrap();
    let e = heartbeats(&mut cb, vec![hb(sb, 2, vec![])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // And it cannot come back on B.
    let e = cb
        .register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("revoked"), "{e:?}");
    // Idempotent: a second pass cuts nothing more.
    assert!(super::super::apply_revocations(&b.state)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        counter(&b.state, "opengslb_overwatch_agent_certs_pinned", ""),
        0.0
    );
}

#[tokio::test]
async fn revocation_on_one_controlplane_cuts_the_agent_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("db/opengslb.db").display()
    ))
    .await
    .unwrap();
    revocation_reaches(shared.clone(), shared).await;
    match postgres_pair("revshare").await {
        Some((a, b)) => revocation_reaches(a, b).await,
        None => eprintln!("OPENGSLB_TEST_POSTGRES_URL unset, PostgreSQL skipped"),
    }
}

#[tokio::test]
async fn revocations_are_followed_on_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("db/opengslb.db").display()
    ))
    .await
    .unwrap();
    let text = config_text(None);
    let b = setup_with(&text, Some(shared.clone()), |_| {}).await;
    // An agent registered on B (straight into its registry).
    let now = Instant::now();
    b.state.overwatch.registry.register(
        "agent-9",
        "local",
        "fp-9",
        vec![reported("www.gslb.test", "10.1.0.9:80")],
        Duration::from_secs(3600),
        now,
    );
    shared
        .pin_agent(&crate::store::AgentPinRow {
            agent_id: "agent-9".into(),
            fingerprint: "fp-9".into(),
            region: "local".into(),
            services: "www.gslb.test".into(),
            revoked: false,
            pinned_at_unix_ms: 1,
            updated_at_unix_ms: 1,
        })
        .await
        .unwrap();
    let follower = tokio::spawn(super::super::follow_revocations(b.state.clone()));
    tokio::time::sleep(crate::overrides::FOLLOW_EVERY * 2).await;
    assert_eq!(b.state.overwatch.registry.len(), 1, "not revoked: kept");
    // Another controlplane revokes it in the shared store.
    assert!(shared.revoke_agent("agent-9", 2).await.unwrap());
    let revoked_at = Instant::now();
    while !b.state.overwatch.registry.is_empty()
        && revoked_at.elapsed() < crate::overrides::FOLLOW_EVERY * 2
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.state.overwatch.registry.len(), 0, "cut within one period");
    assert!(revoked_at.elapsed() <= crate::overrides::FOLLOW_EVERY + Duration::from_millis(500));
    follower.abort();
}
