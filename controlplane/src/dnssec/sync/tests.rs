//! The sealed key-sync protocol (authentication, sealing, replay and clock
//! checks), `https://` peers, and the rollover following the keys.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config;

const TOKEN: &str = "key-sync-shared-token-0123456789";
const NOW: u64 = 1_800_000_000;

fn tokens() -> Vec<(&'static str, &'static str)> {
    vec![("alice", "alice-token-0123456789"), ("cp-peers", TOKEN)]
}

fn body(req: &ExportRequest) -> Vec<u8> {
    serde_json::to_vec(req).unwrap()
}

#[test]
fn sealed_round_trip_names_the_token_and_opens_only_for_its_request() {
    let cache = ReplayCache::default();
    let req = make_request(TOKEN, NOW).unwrap();
    // The token itself is not in the request.
    let wire = String::from_utf8(body(&req)).unwrap();
    assert!(!wire.contains(TOKEN), "{wire}");
    let auth = authenticate(&body(&req), tokens(), NOW + 10, &cache).unwrap();
    assert_eq!(auth.who, "cp-peers");
    let plain = br#"{"zones":[{"zone":"example.com","keys":[]}]}"#;
    let sealed = seal(&auth, plain).unwrap();
    assert_eq!(open(TOKEN, &req, &sealed).unwrap(), plain);
    // Not for another request (another nonce), nor with another token.
    let other = make_request(TOKEN, NOW).unwrap();
    assert!(open(TOKEN, &other, &sealed)
        .unwrap_err()
        .contains("does not open"));
    assert!(open("alice-token-0123456789", &req, &sealed)
        .unwrap_err()
        .contains("does not open"));
    // Nor for the same nonce at another timestamp (bound as associated data).
    let mut shifted = req.clone();
    shifted.timestamp += 1;
    assert!(open(TOKEN, &shifted, &sealed).is_err());
    // Two answers to two requests differ (fresh key per exchange).
    let req2 = make_request(TOKEN, NOW).unwrap();
    let auth2 = authenticate(&body(&req2), tokens(), NOW, &cache).unwrap();
    assert_ne!(seal(&auth2, plain).unwrap().sealed, sealed.sealed);
}

#[test]
fn wrong_token_is_refused() {
    let cache = ReplayCache::default();
    let req = make_request("not-the-shared-token-0123456789", NOW).unwrap();
    let e = authenticate(&body(&req), tokens(), NOW, &cache).unwrap_err();
    assert!(
        matches!(&e, SealError::Refused(m) if m.contains("matches no change-level token")),
        "{e:?}"
    );
    // A MAC altered after the fact, too.
    let mut req = make_request(TOKEN, NOW).unwrap();
    req.mac = format!("{}00", &req.mac[..62]);
    let e = authenticate(&body(&req), tokens(), NOW, &cache).unwrap_err();
    assert!(matches!(e, SealError::Refused(_)), "{e:?}");
    // A nonce swapped under a valid MAC.
    let mut req = make_request(TOKEN, NOW).unwrap();
    req.nonce = make_request(TOKEN, NOW).unwrap().nonce;
    assert!(matches!(
        authenticate(&body(&req), tokens(), NOW, &cache),
        Err(SealError::Refused(_))
    ));
}

#[test]
fn tampered_ciphertext_or_server_nonce_is_refused() {
    let cache = ReplayCache::default();
    let req = make_request(TOKEN, NOW).unwrap();
    let auth = authenticate(&body(&req), tokens(), NOW, &cache).unwrap();
    let sealed = seal(&auth, b"{\"zones\":[]}").unwrap();
    let mut bytes = unhex(&sealed.sealed).unwrap();
    bytes[0] ^= 1;
    let flipped = SealedExport {
        sealed: keys::hex_upper(&bytes),
        ..sealed.clone()
    };
    assert!(open(TOKEN, &req, &flipped)
        .unwrap_err()
        .contains("does not open"));
    let mut nonce = unhex(&sealed.server_nonce).unwrap();
    nonce[31] ^= 0x80;
    let renonced = SealedExport {
        server_nonce: keys::hex_upper(&nonce),
        ..sealed.clone()
    };
    assert!(open(TOKEN, &req, &renonced).is_err());
    let truncated = SealedExport {
        sealed: sealed.sealed[..20].to_owned(),
        ..sealed.clone()
    };
    assert!(open(TOKEN, &req, &truncated).is_err());
    let not_hex = SealedExport {
        sealed: "zz".into(),
        ..sealed.clone()
    };
    assert!(open(TOKEN, &req, &not_hex).unwrap_err().contains("not hex"));
    let other_protocol = SealedExport {
        protocol: "v0".into(),
        ..sealed.clone()
    };
    assert!(open(TOKEN, &req, &other_protocol).is_err());
    // The untouched answer still opens.
    assert!(open(TOKEN, &req, &sealed).is_ok());
}

#[test]
fn replayed_nonce_is_refused() {
    let cache = ReplayCache::default();
    let req = make_request(TOKEN, NOW).unwrap();
    authenticate(&body(&req), tokens(), NOW, &cache).unwrap();
    let e = authenticate(&body(&req), tokens(), NOW + 1, &cache).unwrap_err();
    assert!(
        matches!(&e, SealError::Refused(m) if m.contains("replayed")),
        "{e:?}"
    );
    // A fresh nonce passes.
    let req = make_request(TOKEN, NOW).unwrap();
    assert!(authenticate(&body(&req), tokens(), NOW + 1, &cache).is_ok());
}

#[test]
fn old_or_future_timestamp_is_refused() {
    let cache = ReplayCache::default();
    let old = make_request(TOKEN, NOW - MAX_SKEW_SECS - 1).unwrap();
    let e = authenticate(&body(&old), tokens(), NOW, &cache).unwrap_err();
    assert!(
        matches!(&e, SealError::Refused(m) if m.contains("check the clocks")),
        "{e:?}"
    );
    let future = make_request(TOKEN, NOW + MAX_SKEW_SECS + 1).unwrap();
    assert!(matches!(
        authenticate(&body(&future), tokens(), NOW, &cache),
        Err(SealError::Refused(_))
    ));
    // At the edge of the window: accepted.
    let edge = make_request(TOKEN, NOW - MAX_SKEW_SECS).unwrap();
    assert!(authenticate(&body(&edge), tokens(), NOW, &cache).is_ok());
}

#[test]
fn bearer_token_garbage_and_no_tokens_are_clear_errors() {
    let cache = ReplayCache::default();
    for b in [&b""[..], b"Bearer x", b"{\"zones\":[]}", b"[1,2]"] {
        let e = authenticate(b, tokens(), NOW, &cache).unwrap_err();
        assert!(
            matches!(&e, SealError::Malformed(m) if m.contains("sealed key-sync protocol")),
            "{e:?}"
        );
    }
    let mut req = make_request(TOKEN, NOW).unwrap();
    req.protocol = "opengslb-key-sync-v0".into();
    assert!(matches!(
        authenticate(&body(&req), tokens(), NOW, &cache),
        Err(SealError::Malformed(m)) if m.contains("unknown key-sync protocol")
    ));
    let mut req = make_request(TOKEN, NOW).unwrap();
    req.nonce = "abc".into();
    assert!(matches!(
        authenticate(&body(&req), tokens(), NOW, &cache),
        Err(SealError::Malformed(_))
    ));
    let req = make_request(TOKEN, NOW).unwrap();
    assert_eq!(
        authenticate(&body(&req), Vec::new(), NOW, &cache).unwrap_err(),
        SealError::NoTokens
    );
}

#[test]
fn peer_urls() {
    assert_eq!(
        target("http://127.0.0.1:8080").unwrap(),
        (false, "127.0.0.1:8080".into(), "127.0.0.1".into())
    );
    assert_eq!(
        target("https://cp-2.internal:8080/").unwrap(),
        (true, "cp-2.internal:8080".into(), "cp-2.internal".into())
    );
    assert_eq!(
        target("https://cp-2.internal").unwrap(),
        (true, "cp-2.internal:443".into(), "cp-2.internal".into())
    );
    assert_eq!(
        target("https://[::1]:9").unwrap(),
        (true, "[::1]:9".into(), "::1".into())
    );
    assert!(target("ftp://x").is_err());
    assert!(target("https://").is_err());
}

// === over the network ===

const CONFIG: &str = "\
dns:
  zones:
    - name: example.com
      soa: {mname: ns1.example.com, rname: hostmaster.example.com, minimum: 30, ttl: 600}
      ns: [ns1.example.com]
regions:
  - name: p
    servers:
      - {address: 192.0.2.1}
    health_check: {type: none}
domains:
  - {name: rr.example.com, routing_algorithm: round-robin, regions: [p], ttl: 30}
";

fn cfg() -> Config {
    config::parse(CONFIG, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

async fn store(d: &Path) -> Store {
    Store::open(&format!("sqlite://{}", d.join("db").display()))
        .await
        .unwrap()
}

/// A one-connection-at-a-time HTTPS peer speaking the export's server side
/// over `dnssec`'s keys; returns its URL. Also records each raw answer
/// (what crossed the wire inside TLS).
async fn tls_peer(dnssec: Dnssec, answers: Arc<Mutex<Vec<Vec<u8>>>>) -> (String, String) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let (ca_pem, leaf, key) = crate::test_support::ca_and_leaf();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cache = Arc::new(ReplayCache::default());
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut s) = acceptor.accept(tcp).await else {
                continue;
            };
            // Read the head and the Content-Length body.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = s.read(&mut chunk).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        break Some(buf[i + 4..i + 4 + len].to_vec());
                    }
                }
            };
            let Some(body) = body else { continue };
            let answer = match authenticate(&body, [("peer", TOKEN)], unix_now(), &cache) {
                Ok(auth) => {
                    let plain = serde_json::to_vec(&dnssec.export()).unwrap();
                    let sealed = serde_json::to_vec(&seal(&auth, &plain).unwrap()).unwrap();
                    answers.lock().unwrap().push(sealed.clone());
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        sealed.len()
                    )
                    .into_bytes();
                    a.extend_from_slice(&sealed);
                    a
                }
                Err(e) => format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{e}",
                    e.to_string().len()
                )
                .into_bytes(),
            };
            let _ = s.write_all(&answer).await;
            let _ = s.shutdown().await;
        }
    });
    (format!("https://{addr}"), ca_pem)
}

#[tokio::test]
async fn https_peer_verified_by_ca_file_gives_its_keys_sealed() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, sb) = (store(da.path()).await, store(db.path()).await);
    let cfg = cfg();
    let a = Dnssec::open(&sa, &cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = Dnssec::open(&sb, &cfg).await.unwrap();
    let ds_b = b.ds_records("example.com").unwrap();
    assert_ne!(a.ds_records("example.com").unwrap(), ds_b);
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (url, ca_pem) = tls_peer(b.clone(), answers.clone()).await;
    let ca_file = da.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let token_file = da.path().join("token");
    std::fs::write(&token_file, format!("cp-a:{TOKEN}\n")).unwrap();
    let ks = config::KeySyncConfig {
        peers: vec![url.clone()],
        token_file: Some(token_file.clone()),
        ca_file: Some(ca_file),
        ..Default::default()
    };

    // Without the CA (webpki roots only), the peer's certificate is refused.
    let no_ca = config::KeySyncConfig {
        ca_file: None,
        ..ks.clone()
    };
    let e = sync_peer(
        &a,
        &sa,
        &cfg,
        &url,
        &credentials(&no_ca).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(e.contains("TLS with"), "{e}");
    // With a wrong token, the peer refuses.
    let wrong = Credentials {
        token: "a-wrong-token-0123456789".into(),
        ..credentials(&ks).unwrap()
    };
    let e = sync_peer(&a, &sa, &cfg, &url, &wrong, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(e.contains("HTTP 401"), "{e}");
    assert_eq!(a.ds_records("example.com").unwrap().len(), 1);
    assert_ne!(a.ds_records("example.com").unwrap(), ds_b);

    // With it: a adopts b's newer keys over https.
    let adopted = sync_peer(
        &a,
        &sa,
        &cfg,
        &url,
        &credentials(&ks).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(adopted, ["example.com"]);
    assert_eq!(a.ds_records("example.com").unwrap(), ds_b);
    // What the peer sent holds neither the private key nor the token.
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 1);
    let wire = String::from_utf8(answers[0].clone()).unwrap();
    let pkcs8 = &b.export().zones[0].keys[0].private_key_pkcs8_hex;
    assert!(!wire.contains(pkcs8.as_str()) && !wire.contains(&pkcs8[..32]));
    assert!(!wire.contains(TOKEN) && !wire.contains("zones"), "{wire}");
}

#[tokio::test]
async fn a_peer_adopting_a_rolled_key_set_adopts_the_rollover_and_follows_its_phase() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, sb) = (store(da.path()).await, store(db.path()).await);
    let cfg = cfg();
    let b = Dnssec::open(&sb, &cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = Dnssec::open(&sa, &cfg).await.unwrap();
    // b converges on a's (newer) keys first.
    assert_eq!(
        adopt(&b, &sb, &cfg, &a.export()).await.unwrap(),
        ["example.com"]
    );
    assert!(b.rollover_status("example.com").unwrap().is_none());
    // a starts a CSK rollover (double signature): publish. (Its new key
    // may be made in the same second as the old one: the rollover still
    // wins.)
    let st_a = a
        .start_rollover(&sa, &cfg, "example.com", None)
        .await
        .unwrap();
    assert_eq!(st_a.phase, Phase::Publish);
    let mut export = a.export();
    let roll = export.zones[0].rollover.clone().expect("exported rollover");
    // Make the new key look older than the old one (as when both were made
    // in the same second and the new tag is lower): the rollover still
    // wins, since it replaces b's key with one b lacks.
    let old_created = export.zones[0]
        .keys
        .iter()
        .find(|k| k.key_tag == roll.old_key_tag)
        .unwrap()
        .created_unix;
    for k in &mut export.zones[0].keys {
        if k.key_tag == roll.new_key_tag {
            k.created_unix = old_created - 1;
        }
    }
    assert_eq!(
        adopt(&b, &sb, &cfg, &export).await.unwrap(),
        ["example.com"]
    );
    let st_b = b
        .rollover_status("example.com")
        .unwrap()
        .expect("b has the rollover");
    let view = |s: &rollover::RolloverStatus| {
        (
            s.phase,
            s.method,
            s.in_progress,
            s.old_key_tag,
            s.new_key_tag,
            s.started_unix,
            s.next_step_unix,
            s.ds_to_publish.clone(),
        )
    };
    assert_eq!(view(&st_b), view(&st_a));
    let tags = |d: &Dnssec| {
        let mut t: Vec<u16> = d
            .keyring()
            .keys(&DnsName::parse("example.com").unwrap().to_wire())
            .unwrap()
            .iter()
            .map(|k| k.key_tag)
            .collect();
        t.sort_unstable();
        t
    };
    assert_eq!(tags(&b), tags(&a));
    assert_eq!(tags(&b).len(), 2, "both keys published");
    // Stored: a restart of b keeps the rollover.
    let b2 = Dnssec::open(&sb, &cfg).await.unwrap();
    assert_eq!(
        view(&b2.rollover_status("example.com").unwrap().unwrap()),
        view(&st_a)
    );
    // Nothing newer: a second sync adopts nothing.
    assert!(adopt(&b, &sb, &cfg, &a.export()).await.unwrap().is_empty());

    // a cancels: b follows (same key set newest, later phase), and retires
    // the new key as a did.
    let st_a = a.cancel_rollover(&sa, &cfg, "example.com").await.unwrap();
    assert_eq!(st_a.phase, Phase::Cancelled);
    // a's newest key (the new one) is retired: its newest is older than
    // b's now; b still follows the cancel of the same rollover.
    let adopted = adopt(&b, &sb, &cfg, &a.export()).await.unwrap();
    let st_b = b.rollover_status("example.com").unwrap().unwrap();
    assert_eq!(st_b.phase, Phase::Cancelled, "adopted {adopted:?}");
    assert_eq!(tags(&b), tags(&a));
    assert_eq!(tags(&b).len(), 1);

    // A malformed rollover (unfinished, between keys not exported) fails
    // the sync and changes nothing.
    let mut bad = a.export();
    let r = bad.zones[0].rollover.as_mut().unwrap();
    r.phase = "publish".into();
    r.new_key_tag ^= 0x5a5a;
    bad.zones[0].keys[0].created_unix = unix_now() + 5;
    let e = adopt(&b, &sb, &cfg, &bad).await.unwrap_err();
    assert!(
        e.contains("malformed rollover") || e.contains("malformed key"),
        "{e}"
    );
    assert_eq!(
        b.rollover_status("example.com").unwrap().unwrap().phase,
        Phase::Cancelled
    );
}

#[test]
fn config_takes_https_peers_ca_file_and_api_tls_only_as_a_pair() {
    let ok = format!(
        "{CONFIG}overwatch:\n  dnssec:\n    key_sync: {{peers: [\"https://cp-2.internal:8080\"], token_file: t, ca_file: ca.pem}}\napi: {{tls_cert_file: api.crt, tls_key_file: api.key}}\n"
    );
    let c =
        config::parse(&ok, Path::new("/etc/opengslb/gslb.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let ks = c.overwatch.dnssec.key_sync.unwrap();
    assert_eq!(ks.ca_file.unwrap(), Path::new("/etc/opengslb/ca.pem"));
    assert_eq!(ks.token_file.unwrap(), Path::new("/etc/opengslb/t"));
    assert_eq!(
        c.api.tls_key_file.unwrap(),
        Path::new("/etc/opengslb/api.key")
    );
    let half = format!("{CONFIG}api: {{tls_cert_file: api.crt}}\n");
    let e = config::parse(&half, Path::new("t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api.tls_cert_file and api.tls_key_file go together"),
        "{e}"
    );
    let bad_peer =
        format!("{CONFIG}overwatch:\n  dnssec:\n    key_sync: {{peers: [\"ftp://x\"]}}\n");
    let e = config::parse(&bad_peer, Path::new("t.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("https://HOST:PORT"), "{e}");
}

#[test]
fn the_exported_rollover_has_its_wire_form_without_local_id_and_zone() {
    let row = RolloverRow {
        id: 7,
        zone: "example.com".into(),
        method: "double-signature".into(),
        role: "csk".into(),
        old_key_tag: 1,
        new_key_tag: 2,
        phase: "publish".into(),
        started_unix: 10,
        phase_since_unix: 11,
        next_unix: 12,
        ds_published_unix: 0,
    };
    let wire = r#"{"method":"double-signature","role":"csk","old_key_tag":1,"new_key_tag":2,"phase":"publish","started_unix":10,"phase_since_unix":11,"next_unix":12,"ds_published_unix":0}"#;
    assert_eq!(serde_json::to_string(&row).unwrap(), wire);
    // Read back: no local id, the zone comes from the export's zone.
    let back: RolloverRow = serde_json::from_str(wire).unwrap();
    assert_eq!(
        back,
        RolloverRow {
            id: 0,
            zone: String::new(),
            ..row.clone()
        }
    );
    // A zone without a rollover has none on the wire.
    let zone = ZoneExport {
        zone: "example.com".into(),
        keys: Vec::new(),
        rollover: None,
    };
    assert_eq!(
        serde_json::to_string(&zone).unwrap(),
        r#"{"zone":"example.com","keys":[]}"#
    );
    let zone: ZoneExport = serde_json::from_str(&format!(
        r#"{{"zone":"example.com","keys":[],"rollover":{wire}}}"#
    ))
    .unwrap();
    assert_eq!(zone.rollover.unwrap().new_key_tag, 2);
}
