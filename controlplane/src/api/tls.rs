//! TLS for the REST API (`api.tls_cert_file`, `api.tls_key_file`): a
//! listener whose connections are TLS sessions, for `axum::serve`.
//!
//! Handshakes run in their own tasks (bounded in time), so a slow client
//! never holds up the next accept; a failed handshake is logged and
//! dropped. The client address reaches the handlers as
//! `ConnectInfo<TlsPeer>`.

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

use crate::config::ApiConfig;
use crate::error::{Error, Result};

/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished but not yet accepted.
const BACKLOG: usize = 64;

/// The client address of a TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPeer(pub SocketAddr);

/// A listener yielding TLS sessions.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
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
    /// TLS sessions over `listener`'s connections.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "REST API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "REST API TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "REST API TLS handshake timed out"),
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
    type Io = TlsStream<TcpStream>;
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
