//! Probes against real loopback listeners.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::check::Check;

/// What a test server does with each connection.
#[derive(Clone)]
enum Behave {
    Reply(Vec<u8>),
    Hang,
    Reset,
    /// Head, then body bytes until the client goes away.
    Endless,
}

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn read_request(s: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

async fn serve(behave: Behave) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (h, r) = (hits.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            h.fetch_add(1, Ordering::SeqCst);
            let behave = behave.clone();
            let r = r.clone();
            tokio::spawn(async move {
                if let Behave::Reset = behave {
                    // An RST instead of a FIN (blocking on drop is moot at zero).
                    #[allow(deprecated)]
                    s.set_linger(Some(Duration::ZERO)).unwrap();
                    drop(s);
                    return;
                }
                let req = read_request(&mut s).await;
                r.lock().unwrap().push(req);
                match behave {
                    Behave::Reply(bytes) => {
                        let _ = s.write_all(&bytes).await;
                        let _ = s.shutdown().await;
                    }
                    Behave::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                    Behave::Endless => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\nneedle",
                            )
                            .await;
                        let block = vec![b'x'; 64 * 1024];
                        while s.write_all(&block).await.is_ok() {}
                    }
                    Behave::Reset => {}
                }
            });
        }
    });
    Server {
        addr,
        hits,
        requests,
    }
}

fn reply(status: &str, body: &str) -> Behave {
    Behave::Reply(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn target(addr: SocketAddr, kind: CheckKind, edit: impl FnOnce(&mut Check)) -> Target {
    let mut check = Check {
        kind,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(300),
        ..Check::default()
    };
    edit(&mut check);
    Target { addr, check }
}

async fn run(t: &Target) -> Outcome {
    probe(t, &TlsConfigs::new().unwrap()).await
}

#[tokio::test]
async fn http_2xx_passes_and_records_connect_time() {
    let s = serve(reply("204 No Content", "")).await;
    let o = run(&target(s.addr, CheckKind::Http, |_| {})).await;
    let ok = o.result.unwrap();
    assert_eq!(ok.status, Some(204));
    assert!(ok.connect <= o.elapsed);
    let req = s.requests.lock().unwrap()[0].clone();
    assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("Host: {}\r\n", s.addr)), "{req}");
}

#[tokio::test]
async fn http_500_fails() {
    let s = serve(reply("500 Internal Server Error", "boom")).await;
    let o = run(&target(s.addr, CheckKind::Http, |_| {})).await;
    assert_eq!(o.result, Err(Failure::Status(500)));
    assert_eq!(o.label(), "status");
}

#[tokio::test]
async fn expected_status_replaces_any_2xx() {
    let s = serve(reply("418 I'm a teapot", "")).await;
    let t = target(s.addr, CheckKind::Http, |c| c.expected_status = vec![418]);
    assert!(run(&t).await.result.is_ok());
    let s = serve(reply("200 OK", "")).await;
    let t = target(s.addr, CheckKind::Http, |c| c.expected_status = vec![418]);
    assert_eq!(run(&t).await.result, Err(Failure::Status(200)));
}

#[tokio::test]
async fn body_contains_and_path_and_host() {
    let s = serve(reply("200 OK", "status: ready\n")).await;
    let t = target(s.addr, CheckKind::Http, |c| {
        c.body_contains = Some("ready".into());
        c.path = "/ready?x=1".into();
        c.host = Some("app.example.test".into());
    });
    assert!(run(&t).await.result.is_ok());
    let req = s.requests.lock().unwrap()[0].clone();
    assert!(req.starts_with("GET /ready?x=1 HTTP/1.1\r\nHost: app.example.test\r\n"));
    let t = target(s.addr, CheckKind::Http, |c| {
        c.body_contains = Some("healthy".into())
    });
    assert_eq!(run(&t).await.result, Err(Failure::Body));
}

#[tokio::test]
async fn hang_is_a_timeout_bounded_by_the_check() {
    let s = serve(Behave::Hang).await;
    let t = target(s.addr, CheckKind::Http, |c| {
        c.timeout = Duration::from_millis(200)
    });
    let o = run(&t).await;
    assert_eq!(o.result, Err(Failure::Timeout));
    assert!(o.elapsed >= Duration::from_millis(200), "{:?}", o.elapsed);
    assert!(o.elapsed < Duration::from_millis(400), "{:?}", o.elapsed);
}

#[tokio::test]
async fn reset_is_a_failure() {
    let s = serve(Behave::Reset).await;
    let o = run(&target(s.addr, CheckKind::Http, |_| {})).await;
    assert!(matches!(o.result, Err(Failure::Io(_))), "{:?}", o.result);
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn garbage_is_a_failure_at_once() {
    let s = serve(Behave::Reply(b"\x00\x01garbage that is not http".to_vec())).await;
    let o = run(&target(s.addr, CheckKind::Http, |_| {})).await;
    assert_eq!(o.result, Err(Failure::Protocol));
    assert!(o.elapsed < Duration::from_millis(250));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let s = serve(Behave::Reply(
        b"HTTP/1.1 302 Found\r\nLocation: /health\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ))
    .await;
    let o = run(&target(s.addr, CheckKind::Http, |_| {})).await;
    assert_eq!(o.result, Err(Failure::Status(302)));
    assert_eq!(s.hits.load(Ordering::SeqCst), 1, "followed a redirect");
    let t = target(s.addr, CheckKind::Http, |c| c.expected_status = vec![302]);
    assert!(run(&t).await.result.is_ok());
}

#[tokio::test]
async fn huge_body_is_capped_not_read() {
    let s = serve(Behave::Endless).await;
    let t = target(s.addr, CheckKind::Http, |c| {
        c.body_contains = Some("needle".into());
        c.timeout = Duration::from_millis(900);
    });
    let o = run(&t).await;
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert!(o.elapsed < Duration::from_millis(900));
    // Without the text in the first BODY_CAP bytes it fails, still bounded.
    let t = target(s.addr, CheckKind::Http, |c| {
        c.body_contains = Some("never-there".into());
        c.timeout = Duration::from_millis(900);
    });
    assert_eq!(run(&t).await.result, Err(Failure::Body));
}

#[tokio::test]
async fn tcp_connect_and_refused() {
    let s = serve(Behave::Hang).await;
    let o = run(&target(s.addr, CheckKind::Tcp, |_| {})).await;
    assert_eq!(o.result.unwrap().status, None);
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let o = run(&target(gone, CheckKind::Tcp, |_| {})).await;
    assert_eq!(
        o.result,
        Err(Failure::Connect(ErrorKind::ConnectionRefused))
    );
    assert_eq!(o.label(), "connect");
}

/// A TLS server with a self-signed certificate for `localhost` that records
/// the SNI of each client hello.
async fn serve_tls(body: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let snis = Arc::new(Mutex::new(Vec::new()));
    let seen = snis.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), s);
                let Ok(start) = acceptor.await else { return };
                seen.lock()
                    .unwrap()
                    .push(start.client_hello().server_name().map(str::to_owned));
                let Ok(mut tls) = start.into_stream(config).await else {
                    return;
                };
                read_request(&mut tls).await;
                let msg = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(msg.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, snis)
}

#[tokio::test]
async fn https_with_sni_and_verification_opt_out() {
    let (addr, snis) = serve_tls("tls ok").await;
    let t = target(addr, CheckKind::Https, |c| {
        c.tls_verify = false;
        c.host = Some("localhost".into());
        c.body_contains = Some("tls ok".into());
    });
    let o = run(&t).await;
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert_eq!(snis.lock().unwrap()[0].as_deref(), Some("localhost"));
    // Verification is on by default: a self-signed certificate fails.
    let t = target(addr, CheckKind::Https, |c| {
        c.host = Some("localhost".into())
    });
    assert_eq!(run(&t).await.result, Err(Failure::Tls));
    // Plain HTTP against a TLS port is not a success either.
    let t = target(addr, CheckKind::Http, |_| {});
    assert!(run(&t).await.result.is_err());
}

#[tokio::test]
async fn https_against_plain_http_fails() {
    let s = serve(reply("200 OK", "")).await;
    let t = target(s.addr, CheckKind::Https, |c| c.tls_verify = false);
    // The plain server waits for a request head that never comes.
    let r = run(&t).await.result;
    assert!(matches!(r, Err(Failure::Tls | Failure::Timeout)), "{r:?}");
}

#[test]
fn host_header_defaults_to_the_address() {
    let a: SocketAddr = "192.0.2.1:80".parse().unwrap();
    assert_eq!(host_header(None, a, CheckKind::Http), "192.0.2.1");
    assert_eq!(host_header(None, a, CheckKind::Https), "192.0.2.1:80");
    let a: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    assert_eq!(host_header(None, a, CheckKind::Https), "[2001:db8::1]");
    assert_eq!(host_header(Some("h.test"), a, CheckKind::Https), "h.test");
}
