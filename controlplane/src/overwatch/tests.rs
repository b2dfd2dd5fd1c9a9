//! Agent side of the controlplane: staleness under paused time, the
//! authority order, the whole TOFU flow over real TLS on loopback, hostile
//! input, validation veto, gradual drain and deregistration in the
//! compiled snapshot.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use opengslb_proto::{
    agent_service_client::AgentServiceClient, BackendHealth, BackendRef, DeregisterRequest,
    HealthClaim, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RotateCertificateRequest,
};
use tokio::{io::AsyncWriteExt, time::Instant};
use tonic::{transport::Channel, Code};

use super::{
    decide,
    registry::{Claim, Refused, Registry, Reported, Update},
    tls::{self, Identity, PinStore, Trust},
    Authority, Signals,
};
use crate::{config, server::State, store::Store};

const TOKEN: &str = "www-token-0123456789";
const OTHER_TOKEN: &str = "api-token-0123456789";

fn config_text(validated: Option<SocketAddr>) -> String {
    let (validation, region) = match validated {
        Some(a) => (
            "validation: {enabled: true, check_interval: 200ms, check_timeout: 100ms}".to_owned(),
            format!(
                "  - name: checked\n    servers:\n      - {{address: {}, port: {}}}\n    health_check: {{type: tcp, interval: 200ms, timeout: 100ms, failure_threshold: 1, success_threshold: 1}}\n",
                a.ip(),
                a.port()
            ),
        ),
        None => (
            "validation: {enabled: false}".to_owned(),
            String::new(),
        ),
    };
    format!(
        r#"
dns:
  listen_address: "127.0.0.1:5353"
  zones: [gslb.test]
regions:
  - name: local
    servers:
      - {{address: 192.0.2.1, port: 80, weight: 100}}
    health_check: {{type: none}}
{region}domains:
  - {{name: www.gslb.test, routing_algorithm: weighted, regions: [local]}}
  - {{name: api.gslb.test, regions: [local]}}
{checked_domain}overwatch:
  data_dir: cp-data
  agent_listen: "127.0.0.1:0"
  agent_tokens: {{www.gslb.test: "{TOKEN}", api.gslb.test: "{OTHER_TOKEN}"}}
  stale: {{threshold: 30s, remove_after: 5m}}
  {validation}
"#,
        checked_domain = if validated.is_some() {
            "  - {name: chk.gslb.test, regions: [checked]}\n"
        } else {
            ""
        },
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    state: Arc<State>,
    addr: SocketAddr,
}

async fn setup(validated: Option<SocketAddr>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gslb.yaml");
    std::fs::write(&path, config_text(validated)).unwrap();
    // It holds agent tokens: readable by its owner only.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = config::load(&path).unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("db/opengslb.db").display()
    ))
    .await
    .unwrap();
    let state = crate::server::test_state(path, cfg.clone(), store).await;
    let added = state.health.add(&cfg);
    state.health.settle(&added).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    super::serve(state.clone(), listener).unwrap();
    Setup {
        _dir: dir,
        state,
        addr,
    }
}

async fn client(addr: SocketAddr, id: &Identity) -> AgentServiceClient<Channel> {
    let trust = Trust::Pin(Arc::new(PinStore::open(None).unwrap()));
    let endpoint = addr.to_string();
    let cfg = tls::client_config(id, &endpoint, &trust).unwrap();
    let ch = tls::connect(&endpoint, cfg, Duration::from_secs(3))
        .await
        .unwrap();
    AgentServiceClient::new(ch)
}

fn register(agent_id: &str, token: &str, backends: &[(&str, &str)]) -> RegisterRequest {
    RegisterRequest {
        agent_id: agent_id.into(),
        region: "local".into(),
        service_token: token.into(),
        backends: backends
            .iter()
            .map(|(service, addr)| {
                let sa: SocketAddr = addr.parse().unwrap();
                BackendRef {
                    service: (*service).into(),
                    address: sa.ip().to_string(),
                    port: u32::from(sa.port()),
                    weight: 100,
                    check: None,
                }
            })
            .collect(),
        heartbeat_interval_ms: 1000,
        missed_threshold: 3,
    }
}

fn health(service: &str, addr: &str, claim: HealthClaim, permille: u32) -> BackendHealth {
    let sa: SocketAddr = addr.parse().unwrap();
    BackendHealth {
        service: service.into(),
        address: sa.ip().to_string(),
        port: u32::from(sa.port()),
        claim: claim.into(),
        weight_permille: permille,
        latency_us: 0,
        reason: String::new(),
    }
}

/// Sends `msgs` on one heartbeat stream and collects the replies (the
/// stream's error, if it ends with one).
async fn heartbeats(
    c: &mut AgentServiceClient<Channel>,
    msgs: Vec<HeartbeatRequest>,
) -> Result<Vec<HeartbeatResponse>, tonic::Status> {
    let n = msgs.len();
    let mut inbound = c.heartbeat(tokio_stream::iter(msgs)).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match inbound.message().await? {
            Some(r) => out.push(r),
            None => break,
        }
    }
    Ok(out)
}

fn hb(session: u64, sequence: u64, backends: Vec<BackendHealth>) -> HeartbeatRequest {
    HeartbeatRequest {
        session,
        sequence,
        backends,
        full: false,
    }
}

fn counter(state: &State, name: &str, label: &str) -> f64 {
    let text = state.metrics.render(0);
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Candidate addresses and weights of `name`'s A plan in the published
/// snapshot.
fn answers(state: &State, name: &str) -> Vec<(String, u32)> {
    let snap = state.stream.current();
    let wire = config::DnsName::parse(name).unwrap().to_wire();
    let node = snap.nodes.iter().find(|n| n.name == wire).unwrap();
    let plan = node
        .plans
        .iter()
        .find(|p| p.rtype == opengslb_proto::rtype::A)
        .unwrap();
    let mut out: Vec<(String, u32)> = plan
        .candidates
        .iter()
        .flat_map(|c| {
            let w = c.weight;
            c.rrset
                .as_ref()
                .map(|r| r.rdata.clone())
                .unwrap_or_default()
                .into_iter()
                .map(move |d| {
                    let ip = std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]);
                    (ip.to_string(), w)
                })
        })
        .collect();
    out.sort();
    out
}

fn reported(service: &str, addr: &str) -> Reported {
    Reported {
        service: service.into(),
        addr: addr.parse().unwrap(),
        weight: 100,
        check: None,
        claim: Claim::Unknown,
        permille: 1000,
        reason: String::new(),
        changed_at: std::time::SystemTime::now(),
    }
}

#[tokio::test(start_paused = true)]
async fn stale_after_missed_heartbeats_then_removed() {
    let r = Registry::new();
    let t0 = Instant::now();
    let s = r.register(
        "a1",
        "local",
        "fp",
        vec![reported("www.gslb.test", "10.0.0.1:80")],
        Duration::from_secs(3),
        t0,
    );
    let up = Update {
        service: "www.gslb.test".into(),
        addr: "10.0.0.1:80".parse().unwrap(),
        claim: Claim::Healthy,
        permille: 1000,
        reason: String::new(),
    };
    assert!(
        r.heartbeat(s, "fp", 1, std::slice::from_ref(&up), t0)
            .unwrap()
            .changed
    );
    tokio::time::advance(Duration::from_millis(2900)).await;
    assert_eq!(
        r.sweep(Instant::now(), Duration::from_secs(300))
            .stale
            .len(),
        0
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    let swept = r.sweep(Instant::now(), Duration::from_secs(300));
    assert_eq!(swept.stale, vec!["a1".to_owned()]);
    assert!(r.agents()[0].is_stale());
    // A heartbeat brings it back (and is a change).
    let applied = r.heartbeat(s, "fp", 2, &[], Instant::now()).unwrap();
    assert!(applied.changed);
    assert!(!r.agents()[0].is_stale());
    // Silent again: stale, then removed remove_after later.
    tokio::time::advance(Duration::from_millis(3100)).await;
    assert_eq!(
        r.sweep(Instant::now(), Duration::from_secs(300))
            .stale
            .len(),
        1
    );
    tokio::time::advance(Duration::from_secs(299)).await;
    assert!(r
        .sweep(Instant::now(), Duration::from_secs(300))
        .removed
        .is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    let swept = r.sweep(Instant::now(), Duration::from_secs(300));
    assert_eq!(swept.removed, vec!["a1".to_owned()]);
    assert!(r.is_empty());
    assert_eq!(
        r.heartbeat(s, "fp", 3, &[], Instant::now()),
        Err(Refused::Session)
    );
}

#[test]
fn registry_refuses_replay_foreign_certificate_and_unknown_backends() {
    let r = Registry::new();
    let now = Instant::now();
    let s = r.register(
        "a1",
        "local",
        "fp-a",
        vec![reported("www.gslb.test", "10.0.0.1:80")],
        Duration::from_secs(3),
        now,
    );
    let up = |addr: &str| Update {
        service: "www.gslb.test".into(),
        addr: addr.parse().unwrap(),
        claim: Claim::Healthy,
        permille: 1000,
        reason: String::new(),
    };
    assert_eq!(
        r.heartbeat(s, "fp-a", 5, &[], now).map(|a| a.unknown),
        Ok(0)
    );
    assert_eq!(
        r.heartbeat(s, "fp-a", 5, &[up("10.0.0.1:80")], now),
        Err(Refused::Replay)
    );
    assert_eq!(r.heartbeat(s, "fp-a", 4, &[], now), Err(Refused::Replay));
    assert_eq!(
        r.heartbeat(s, "fp-b", 6, &[], now),
        Err(Refused::Certificate)
    );
    assert_eq!(
        r.heartbeat(s + 2, "fp-a", 6, &[], now),
        Err(Refused::Session)
    );
    // The refused ones changed nothing.
    assert_eq!(
        r.agents()[0].backends.values().next().unwrap().claim,
        Claim::Unknown
    );
    let applied = r
        .heartbeat(s, "fp-a", 6, &[up("10.9.9.9:80")], now)
        .unwrap();
    assert_eq!(applied.unknown, 1);
    assert!(!applied.changed);
    assert_eq!(r.agents()[0].backends.len(), 1, "unknown backend not added");
}

#[test]
fn authority_order() {
    let s = |permille, validation, stale, claim| Signals {
        permille,
        validation,
        stale,
        claim,
    };
    // Agent claim alone.
    let d = decide(s(1000, None, false, Claim::Healthy));
    assert_eq!((d.healthy, d.authority), (true, Authority::Agent));
    let d = decide(s(1000, None, false, Claim::Unknown));
    assert_eq!((d.healthy, d.authority), (false, Authority::Agent));
    // Stale beats the claim.
    let d = decide(s(1000, None, true, Claim::Healthy));
    assert_eq!((d.healthy, d.authority), (false, Authority::Stale));
    // Validation beats staleness and the claim (veto counted).
    let d = decide(s(1000, Some(Some(true)), true, Claim::Unhealthy));
    assert_eq!(
        (d.healthy, d.authority, d.veto),
        (true, Authority::Validation, true)
    );
    let d = decide(s(1000, Some(Some(false)), false, Claim::Healthy));
    assert_eq!(
        (d.healthy, d.authority, d.veto),
        (false, Authority::Validation, true)
    );
    let d = decide(s(1000, Some(None), false, Claim::Healthy));
    assert_eq!(
        (d.healthy, d.authority, d.veto),
        (false, Authority::Validation, false)
    );
    // Predictive draining beats validation.
    let d = decide(s(0, Some(Some(true)), false, Claim::Healthy));
    assert_eq!((d.healthy, d.authority), (false, Authority::Predictive));
    let d = decide(s(400, Some(Some(true)), false, Claim::Healthy));
    assert_eq!(
        (d.healthy, d.permille, d.authority),
        (true, 400, Authority::Predictive)
    );
    // A partial drain does not revive a backend validation calls down.
    let d = decide(s(400, Some(Some(false)), false, Claim::Healthy));
    assert_eq!((d.healthy, d.authority), (false, Authority::Validation));
}

#[tokio::test]
async fn tofu_flow_pin_reconnect_wrong_cert_rotation_revocation() {
    let t = setup(None).await;
    let id = Identity::ephemeral("agent").unwrap();
    let mut c = client(t.addr, &id).await;

    // Wrong token: refused, counted, nothing pinned.
    let e = c
        .register(register(
            "agent-1",
            "not-the-token-000000",
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        counter(
            &t.state,
            "opengslb_overwatch_agent_auth_failures_total",
            "reason=\"token\""
        ),
        1.0
    );
    assert!(t.state.store.agent_pins().await.unwrap().is_empty());

    // A token for another service only: refused.
    let e = c
        .register(register(
            "agent-1",
            OTHER_TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        counter(
            &t.state,
            "opengslb_overwatch_refused_total",
            "reason=\"unknown_service\""
        ),
        1.0
    );

    // First contact: pinned; the backend of another service is refused.
    let r = c
        .register(register(
            "agent-1",
            TOKEN,
            &[
                ("www.gslb.test", "10.1.0.1:80"),
                ("api.gslb.test", "10.1.0.2:80"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.accepted);
    assert_eq!(r.refused, vec!["api.gslb.test 10.1.0.2:80".to_owned()]);
    let pins = t.state.store.agent_pins().await.unwrap();
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].fingerprint, id.fingerprint());
    let replies = heartbeats(
        &mut c,
        vec![
            hb(
                r.session,
                1,
                vec![health(
                    "www.gslb.test",
                    "10.1.0.1:80",
                    HealthClaim::Healthy,
                    1000,
                )],
            ),
            // Replayed: refused, counted, no change.
            hb(
                r.session,
                1,
                vec![health(
                    "www.gslb.test",
                    "10.1.0.1:80",
                    HealthClaim::Unhealthy,
                    1000,
                )],
            ),
        ],
    )
    .await
    .unwrap();
    assert!(replies[0].accepted);
    assert!(!replies[1].accepted);
    assert_eq!(
        counter(
            &t.state,
            "opengslb_overwatch_refused_total",
            "reason=\"replay\""
        ),
        1.0
    );
    t.state.recompile("test").await.unwrap();
    assert_eq!(
        answers(&t.state, "www.gslb.test"),
        vec![("10.1.0.1".into(), 100), ("192.0.2.1".into(), 100)]
    );

    // Reconnect with the same certificate: a new session; the old one is over.
    let mut c2 = client(t.addr, &id).await;
    let r2 = c2
        .register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r2.session, r.session);
    let e = heartbeats(&mut c, vec![hb(r.session, 2, vec![])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Another certificate for the same agent id: refused and counted.
    let thief = Identity::ephemeral("agent").unwrap();
    let mut ct = client(t.addr, &thief).await;
    let e = ct
        .register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        counter(
            &t.state,
            "opengslb_overwatch_agent_auth_failures_total",
            "reason=\"certificate\""
        ),
        1.0
    );
    // Nor can it use the agent's session or rotate its pin.
    let e = heartbeats(&mut ct, vec![hb(r2.session, 10, vec![])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = ct
        .rotate_certificate(RotateCertificateRequest {
            certificate_der: thief.cert_der.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Rotation over the authenticated channel.
    let next = Identity::ephemeral("agent").unwrap();
    let rot = c2
        .rotate_certificate(RotateCertificateRequest {
            certificate_der: next.cert_der.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rot.fingerprint, next.fingerprint());
    assert_eq!(
        t.state
            .store
            .agent_pin("agent-1")
            .await
            .unwrap()
            .unwrap()
            .fingerprint,
        next.fingerprint()
    );
    let mut c3 = client(t.addr, &next).await;
    let r3 = c3
        .register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap()
        .into_inner();
    heartbeats(
        &mut c3,
        vec![hb(
            r3.session,
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
    let mut old = client(t.addr, &id).await;
    assert_eq!(
        old.register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")]
        ))
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );

    // Revocation: cut off at once, its backend leaves the answers.
    t.state.recompile("test").await.unwrap();
    assert!(answers(&t.state, "www.gslb.test")
        .iter()
        .any(|(a, _)| a == "10.1.0.1"));
    assert!(super::revoke(&t.state, "agent-1").await.unwrap());
    t.state.recompile("test").await.unwrap();
    assert_eq!(
        answers(&t.state, "www.gslb.test"),
        vec![("192.0.2.1".into(), 100)]
    );
    let e = heartbeats(&mut c3, vec![hb(r3.session, 2, vec![])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c3
        .register(register(
            "agent-1",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("revoked"), "{e:?}");
    assert!(!super::revoke(&t.state, "no-such-agent").await.unwrap());
    let listed = super::list(&t.state).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked && !listed[0].connected);
}

#[tokio::test]
async fn hostile_input_is_refused_and_counted_without_state_change() {
    let t = setup(None).await;
    // Garbage instead of a TLS handshake.
    let mut raw = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await;
    // A TLS client without a certificate cannot finish the handshake.
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(no_cert))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(r.is_err());
    // Wait for the handshake tasks to count.
    let deadline = Instant::now() + Duration::from_secs(3);
    while counter(
        &t.state,
        "opengslb_overwatch_agent_auth_failures_total",
        "reason=\"tls\"",
    ) < 1.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        counter(
            &t.state,
            "opengslb_overwatch_agent_auth_failures_total",
            "reason=\"tls\""
        ) >= 1.0
    );

    let id = Identity::ephemeral("agent").unwrap();
    let mut c = client(t.addr, &id).await;
    // Oversized: more than the message limit.
    let many: Vec<(String, String)> = (0..6000)
        .map(|i| {
            (
                "www.gslb.test".to_owned(),
                format!("10.{}.{}.1:80", i / 250, i % 250),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut big = register("agent-big", TOKEN, &refs);
    big.region = "x".repeat(200_000);
    let e = c.register(big).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument | Code::Internal
        ),
        "{e:?}"
    );
    // Malformed fields.
    let mut bad = register(
        "bad id with spaces",
        TOKEN,
        &[("www.gslb.test", "10.1.0.1:80")],
    );
    assert_eq!(
        c.register(bad.clone()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    bad.agent_id = "agent-2".into();
    bad.backends[0].address = "not-an-ip".into();
    assert_eq!(
        c.register(bad).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Heartbeat with no session.
    let e = heartbeats(&mut c, vec![hb(12345, 1, vec![])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Nothing was registered or pinned, and the service still works.
    assert!(t.state.overwatch.registry.is_empty());
    assert!(t.state.store.agent_pins().await.unwrap().is_empty());
    let r = c
        .register(register(
            "agent-ok",
            TOKEN,
            &[("www.gslb.test", "10.1.0.1:80")],
        ))
        .await
        .unwrap()
        .into_inner();
    // Unknown backend and malformed entries in a heartbeat: refused, counted.
    let malformed = counter(
        &t.state,
        "opengslb_overwatch_refused_total",
        "reason=\"malformed\"",
    );
    let replies = heartbeats(
        &mut c,
        vec![hb(
            r.session,
            1,
            vec![
                health("www.gslb.test", "10.9.9.9:80", HealthClaim::Healthy, 1000),
                health("www.gslb.test", "10.1.0.1:0", HealthClaim::Healthy, 1000),
            ],
        )],
    )
    .await
    .unwrap();
    assert!(replies[0].accepted);
    assert_eq!(
        counter(
            &t.state,
            "opengslb_overwatch_refused_total",
            "reason=\"unknown_backend\""
        ),
        1.0
    );
    assert_eq!(
        counter(
            &t.state,
            "opengslb_overwatch_refused_total",
            "reason=\"malformed\""
        ),
        malformed + 1.0
    );
    let agents = t.state.overwatch.registry.agents();
    assert_eq!(agents[0].backends.len(), 1);
    assert_eq!(
        agents[0].backends.values().next().unwrap().claim,
        Claim::Unknown
    );
}

#[tokio::test]
async fn gradual_drain_and_deregistration_change_the_snapshot() {
    let t = setup(None).await;
    let id = Identity::ephemeral("agent").unwrap();
    let mut c = client(t.addr, &id).await;
    // An agent reporting the configured server 192.0.2.1 and a new backend.
    let r = c
        .register(register(
            "agent-d",
            TOKEN,
            &[
                ("www.gslb.test", "192.0.2.1:80"),
                ("www.gslb.test", "10.2.0.1:80"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seq = 0;
    let mut weights = Vec::new();
    for permille in [1000, 750, 500, 250, 0, 500, 1000] {
        seq += 1;
        heartbeats(
            &mut c,
            vec![hb(
                r.session,
                seq,
                vec![
                    health(
                        "www.gslb.test",
                        "192.0.2.1:80",
                        HealthClaim::Draining,
                        permille,
                    ),
                    health("www.gslb.test", "10.2.0.1:80", HealthClaim::Healthy, 1000),
                ],
            )],
        )
        .await
        .unwrap();
        t.state.recompile("test").await.unwrap();
        let a = answers(&t.state, "www.gslb.test");
        weights.push(
            a.iter()
                .find(|(x, _)| x == "192.0.2.1")
                .map_or(0, |(_, w)| *w),
        );
    }
    assert_eq!(weights, vec![100, 75, 50, 25, 0, 50, 100]);
    // The API shows the authority.
    let cfg = t.state.config.lock().await.clone();
    let backends = crate::api::ops::backends_of(&t.state, &cfg, &Default::default());
    let b = backends.iter().find(|b| b.address == "10.2.0.1").unwrap();
    assert_eq!(
        (b.authority, b.agent_id.as_deref()),
        ("agent", Some("agent-d"))
    );
    // Graceful shutdown: its backends leave at once.
    c.deregister(DeregisterRequest {
        session: r.session,
        reason: "test".into(),
    })
    .await
    .unwrap();
    t.state.recompile("test").await.unwrap();
    assert_eq!(
        answers(&t.state, "www.gslb.test"),
        vec![("192.0.2.1".into(), 100)]
    );
    assert!(t.state.overwatch.registry.is_empty());
}

#[tokio::test]
async fn validation_vetoes_the_agent_and_keeps_a_stale_backend() {
    // A backend that is up: validation (TCP) says healthy.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move { while up.accept().await.is_ok() {} });
    let t = setup(Some(up_addr)).await;
    // The token covers www only; add chk for this test.
    {
        let mut cfg = t.state.config.lock().await;
        let mut next = (**cfg).clone();
        next.overwatch
            .agent_tokens
            .insert("chk.gslb.test".into(), TOKEN.into());
        *cfg = Arc::new(next);
    }
    let id = Identity::ephemeral("agent").unwrap();
    let mut c = client(t.addr, &id).await;
    let addr = up_addr.to_string();
    let r = c
        .register(register("agent-v", TOKEN, &[("chk.gslb.test", &addr)]))
        .await
        .unwrap()
        .into_inner();
    // The agent says down; validation says up and wins.
    heartbeats(
        &mut c,
        vec![hb(
            r.session,
            1,
            vec![health("chk.gslb.test", &addr, HealthClaim::Unhealthy, 1000)],
        )],
    )
    .await
    .unwrap();
    t.state.recompile("test").await.unwrap();
    assert_eq!(
        answers(&t.state, "chk.gslb.test"),
        vec![(up_addr.ip().to_string(), 1)]
    );
    assert_eq!(
        counter(&t.state, "opengslb_overwatch_vetoes_total", ""),
        1.0
    );
    let cfg = t.state.config.lock().await.clone();
    let b = crate::api::ops::backends_of(&t.state, &cfg, &Default::default())
        .into_iter()
        .find(|b| b.service == "chk.gslb.test")
        .unwrap();
    assert_eq!((b.authority, b.healthy), ("validation", true));
    // Recompiling again does not count the same disagreement twice.
    t.state.recompile("test").await.unwrap();
    assert_eq!(
        counter(&t.state, "opengslb_overwatch_vetoes_total", ""),
        1.0
    );
    // Stale: validation still keeps it in.
    super::sweep(
        &t.state,
        Instant::now() + Duration::from_secs(10),
        Duration::from_secs(300),
    );
    assert!(t.state.overwatch.registry.agents()[0].is_stale());
    t.state.recompile("test").await.unwrap();
    assert_eq!(
        answers(&t.state, "chk.gslb.test"),
        vec![(up_addr.ip().to_string(), 1)]
    );
}

#[test]
fn identity_files_are_private_and_reloaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key): (PathBuf, PathBuf) = (
        dir.path().join("a/agent.crt"),
        dir.path().join("a/agent.key"),
    );
    let (id, created) = Identity::load_or_create(&cert, &key, "agent").unwrap();
    assert!(created);
    for p in [&cert, &key] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let (again, created) = Identity::load_or_create(&cert, &key, "agent").unwrap();
    assert!(!created);
    assert_eq!(again.fingerprint(), id.fingerprint());
    let renewed = again.renew(&cert, &key, "agent").unwrap();
    assert_ne!(renewed.fingerprint(), id.fingerprint());
    assert_eq!(renewed.key_der, id.key_der, "renewal keeps the key");
    assert!(!renewed.renewal_due(std::time::SystemTime::now()));
    assert!(renewed.renewal_due(std::time::SystemTime::now() + Duration::from_secs(61 * 86_400)));
    std::fs::remove_file(&key).unwrap();
    assert!(Identity::load_or_create(&cert, &key, "agent").is_err());
}

#[test]
fn pin_store_pins_first_contact_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controlplanes.pins");
    let pins = PinStore::open(Some(path.clone())).unwrap();
    let a = "a".repeat(64);
    let b = "b".repeat(64);
    pins.check_or_pin("cp-1:7946", &a).unwrap();
    pins.check_or_pin("cp-1:7946", &a).unwrap();
    assert!(pins.check_or_pin("cp-1:7946", &b).is_err());
    let again = PinStore::open(Some(path.clone())).unwrap();
    assert_eq!(again.get("cp-1:7946"), Some(a));
    std::fs::write(&path, "garbage line\n").unwrap();
    assert!(PinStore::open(Some(path)).is_err());
}
mod shared;
