//! One check of one target, bounded by the check's timeout.

use std::{io::ErrorKind, net::SocketAddr, time::Duration};

use rustls::pki_types::ServerName;
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::TlsConnector;

use crate::{
    check::{CheckKind, Target},
    http,
    tls::TlsConfigs,
};

/// Most response-body bytes a check reads (and keeps).
pub const BODY_CAP: usize = 64 * 1024;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Success or why not.
    pub result: Result<Success, Failure>,
    /// Whole probe time (connect to decision).
    pub elapsed: Duration,
}

/// A passed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Success {
    /// TCP connect time (the latency sample).
    pub connect: Duration,
    /// HTTP status, for http(s) checks.
    pub status: Option<u16>,
}

/// Why a check failed. [`Failure::label`] is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The check's timeout passed first.
    Timeout,
    /// The TCP connection could not be made (refused, unreachable).
    Connect(ErrorKind),
    /// The TLS handshake failed (certificate, protocol, name).
    Tls,
    /// The connection broke (reset, early close).
    Io(ErrorKind),
    /// The response is not HTTP/1.x as expected.
    Protocol,
    /// A status not in `expected_status` (a 3xx unless listed: redirects are
    /// never followed).
    Status(u16),
    /// The body did not contain `body_contains` (within the cap).
    Body,
}

// === impl Failure ===

impl Failure {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Tls => "tls",
            Self::Io(_) => "io",
            Self::Protocol => "protocol",
            Self::Status(_) => "status",
            Self::Body => "body",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Connect(k) => write!(f, "connect: {k}"),
            Self::Tls => f.write_str("tls handshake failed"),
            Self::Io(k) => write!(f, "connection: {k}"),
            Self::Protocol => f.write_str("malformed HTTP response"),
            Self::Status(s) => write!(f, "unexpected status {s}"),
            Self::Body => f.write_str("body does not contain the expected text"),
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// Metric label: `success` or the failure's label.
    pub fn label(&self) -> &'static str {
        match self.result {
            Ok(_) => "success",
            Err(f) => f.label(),
        }
    }
}

/// Probes `target` once. Never takes longer than its `check.timeout`.
pub async fn probe(target: &Target, tls: &TlsConfigs) -> Outcome {
    let start = Instant::now();
    let result = tokio::time::timeout(target.check.timeout, run(target, tls, start))
        .await
        .unwrap_or(Err(Failure::Timeout));
    Outcome {
        result,
        elapsed: start.elapsed(),
    }
}

async fn run(target: &Target, tls: &TlsConfigs, start: Instant) -> Result<Success, Failure> {
    let check = &target.check;
    let mut tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| Failure::Connect(e.kind()))?;
    let connect = start.elapsed();
    let _ = tcp.set_nodelay(true);
    let host = host_header(check.host.as_deref(), target.addr, check.kind);
    let response = match check.kind {
        CheckKind::Tcp => {
            return Ok(Success {
                connect,
                status: None,
            })
        }
        CheckKind::Http => http::get(&mut tcp, &host, &check.path, true).await?,
        CheckKind::Https => {
            let name = match &check.host {
                Some(h) => ServerName::try_from(h.clone()).map_err(|_| Failure::Tls)?,
                None => ServerName::from(target.addr.ip()),
            };
            let connector = TlsConnector::from(tls.get(check.tls_verify));
            let mut stream = connector.connect(name, tcp).await.map_err(|e| {
                tracing::debug!(addr = %target.addr, error = %e, "tls handshake failed");
                Failure::Tls
            })?;
            http::get(&mut stream, &host, &check.path, true).await?
        }
    };
    if !check.accepts(response.status) {
        return Err(Failure::Status(response.status));
    }
    if let Some(want) = &check.body_contains {
        if http::find(&response.body, want.as_bytes()).is_none() {
            return Err(Failure::Body);
        }
    }
    Ok(Success {
        connect,
        status: Some(response.status),
    })
}

/// `Host` header value: the configured host, else the address (with the
/// port when it is not the scheme's default).
fn host_header(host: Option<&str>, addr: SocketAddr, kind: CheckKind) -> String {
    if let Some(h) = host {
        return h.to_owned();
    }
    let default_port = match kind {
        CheckKind::Https => 443,
        _ => 80,
    };
    match (addr, addr.port() == default_port) {
        (SocketAddr::V4(a), true) => a.ip().to_string(),
        (SocketAddr::V6(a), true) => format!("[{}]", a.ip()),
        (a, false) => a.to_string(),
    }
}

#[cfg(test)]
mod tests;
