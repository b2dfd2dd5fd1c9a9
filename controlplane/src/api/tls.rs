//! TLS for the REST API (`api.tls_cert_file`, `api.tls_key_file`): a
//! listener whose connections are TLS sessions, for `axum::serve`.
//!
//! Each accepted connection passes the [`Gate`] first: a peer outside
//! `api.allowed_networks` is closed before any handshake work, and a
//! connection over `api.max_connections` (handshakes in progress count) is
//! closed at once (see [`super::listener`]). Handshakes then run in their
//! own tasks (bounded in time), so a slow client never holds up the next
//! accept; a failed handshake is counted and dropped. The client address
//! reaches the handlers as `ConnectInfo<TlsPeer>`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::listener::{Conn, Gate, Refused};
use crate::config::ApiConfig;
use crate::error::{Error, Result};

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished but not yet accepted.
const BACKLOG: usize = 64;

/// The client address of a REST connection (TLS or plain).
pub use super::listener::Peer as TlsPeer;

/// A listener yielding TLS sessions.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Conn<TlsStream<TcpStream>>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

/// The TLS acceptor of `api`, when it has `tls_cert_file`; a clear error
/// for an unreadable or mismatched certificate and key.
pub fn acceptor(api: &ApiConfig) -> Result<Option<TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&api.tls_cert_file, &api.tls_key_file) else {
        return Ok(None);
    };
    let fail = |what: &str, path: &Path, e: &dyn std::fmt::Display| Error::Listen {
        addr: api.address,
        message: format!("{what} {}: {e}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail("api.tls_cert_file", cert, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| fail("api.tls_cert_file", cert, &e))?;
    if chain.is_empty() {
        return Err(fail(
            "api.tls_cert_file",
            cert,
            &"no certificate in the file",
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| fail("api.tls_key_file", key, &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail("api.tls_cert_file", cert, &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| fail("api.tls_key_file", key, &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

// === impl TlsListener ===

impl TlsListener {
    /// TLS sessions over `listener`'s connections that pass `gate`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, gate: Gate) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        gate.accept_failed(&e).await;
                        continue;
                    }
                };
                // Dropping `tcp` closes it: no handshake for strangers, none
                // over the cap.
                if !gate.allows(peer.ip()) {
                    gate.refuse(Refused::NotAllowed, peer);
                    continue;
                }
                let Some(slot) = gate.slot(peer) else {
                    continue;
                };
                let (acceptor, tx, gate) = (acceptor.clone(), tx.clone(), gate.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((Conn::new(tls, slot), peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "REST API TLS handshake failed");
                            gate.refuse(Refused::Handshake, peer);
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "REST API TLS handshake timed out");
                            gate.refuse(Refused::HandshakeTimeout, peer);
                        }
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Listener for TlsListener {
    type Io = Conn<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}
