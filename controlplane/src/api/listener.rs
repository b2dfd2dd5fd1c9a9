//! The REST API's connection gate, shared by the plain HTTP listener
//! ([`PlainListener`]) and the TLS one ([`super::tls::TlsListener`]).
//!
//! At most `api.max_connections` connections are held at once: TLS
//! handshakes in progress and open connections alike (each holds a
//! [`Slot`] until it closes). A connection over the cap is **accepted and
//! closed at once** rather than left in the kernel's accept queue: leaving
//! it there would fill the queue, so new clients (the operator's included)
//! would hang on a dropped SYN until their own timeout instead of getting
//! an immediate close, and the refusal could be neither counted nor logged.
//! Accepting costs one file descriptor for a moment; the process never
//! holds more than the cap (plus the one being closed).
//!
//! A connection with no bytes read or written for [`IDLE_TIMEOUT`] is
//! closed (an idle keep-alive, a client that never sends its request or
//! never reads its answer), so idle clients cannot keep every slot.
//!
//! Over TLS, a peer outside `api.allowed_networks` is closed before the
//! handshake (no handshake work for strangers), unless
//! `api.trust_proxy_headers` is on: then the peer is a proxy and the
//! allowlist applies to the forwarded client, per request. Over plain HTTP
//! the allowlist stays a per-request check (403 with a JSON body, probes
//! open), as documented in `docs/api.md`.
//!
//! Refusals are counted in `opengslb_api_connections_refused_total{reason}`
//! (`connections_full`, `not_allowed`, `handshake`, `handshake_timeout`)
//! and logged at most once per [`LOG_EVERY`] with the number left unlogged;
//! `opengslb_api_connections_open` is the number of slots held.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use ipnet::IpNet;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use crate::{
    config::ApiConfig,
    error::{Error, Result},
};

/// Most refusal (and accept error) log lines per this period; the rest
/// are counted and summed into the next line.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A connection with no bytes read or written for this long is closed.
/// Longer than any REST handler takes; shorter than a slot is worth.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The client address of a REST connection (plain or TLS), for
/// `ConnectInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Why a connection was closed before it reached HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot of `api.max_connections` is taken.
    Full,
    /// TLS: the peer is outside `api.allowed_networks`.
    NotAllowed,
    /// TLS: the handshake failed.
    Handshake,
    /// TLS: the handshake took too long.
    HandshakeTimeout,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Full => "connections_full",
            Self::NotAllowed => "not_allowed",
            Self::Handshake => "handshake",
            Self::HandshakeTimeout => "handshake_timeout",
        }
    }
}

/// The REST listener's metrics.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    /// `opengslb_api_connections_refused_total{reason}`.
    pub refused: IntCounterVec,
    /// `opengslb_api_connections_open`.
    pub open: IntGauge,
}

impl ConnMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self> {
        let err = |e: prometheus::Error| Error::Metrics(e.to_string());
        let m = Self {
            refused: IntCounterVec::new(
                Opts::new(
                    "opengslb_api_connections_refused_total",
                    "REST API connections closed before HTTP, by reason (connections_full, not_allowed, handshake, handshake_timeout).",
                ),
                &["reason"],
            )
            .map_err(err)?,
            open: IntGauge::new(
                "opengslb_api_connections_open",
                "REST API connections held (TLS handshakes in progress included).",
            )
            .map_err(err)?,
        };
        registry
            .register(Box::new(m.refused.clone()))
            .map_err(err)?;
        registry.register(Box::new(m.open.clone())).map_err(err)?;
        Ok(m)
    }

    /// Refusals counted for `why`.
    pub fn refused(&self, why: Refused) -> u64 {
        self.refused.with_label_values(&[why.label()]).get()
    }
}

/// Lets one log line through per [`LOG_EVERY`]; counts the rest.
#[derive(Debug, Default)]
struct Throttle(Mutex<(Option<Instant>, u64)>);

impl Throttle {
    /// `Some(lines suppressed since the last one)` when a line may be
    /// logged now.
    fn pass(&self) -> Option<u64> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match s.0 {
            Some(at) if now.duration_since(at) < LOG_EVERY => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// The connection cap and pre-handshake allowlist of one REST listener.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    slots: Arc<Semaphore>,
    idle: Duration,
    /// Checked before a TLS handshake; `None` = every peer.
    allowed: Option<Vec<IpNet>>,
    metrics: ConnMetrics,
    refusals: Throttle,
    accept_errors: Throttle,
}

impl Gate {
    /// The gate of `api`: `api.max_connections` slots; the allowlist
    /// unless `api.trust_proxy_headers`.
    pub fn new(api: &ApiConfig, metrics: ConnMetrics) -> Self {
        let allowed = (!api.trust_proxy_headers).then(|| api.allowed_networks.clone());
        Self::with_parts(api.max_connections, allowed, IDLE_TIMEOUT, metrics)
    }

    /// A gate from its parts (tests).
    pub fn with_parts(
        max_connections: usize,
        allowed: Option<Vec<IpNet>>,
        idle: Duration,
        metrics: ConnMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(GateInner {
                slots: Arc::new(Semaphore::new(max_connections.max(1))),
                idle,
                allowed,
                metrics,
                refusals: Throttle::default(),
                accept_errors: Throttle::default(),
            }),
        }
    }

    /// Whether `peer` may start a TLS handshake.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let Some(allowed) = &self.inner.allowed else {
            return true;
        };
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        allowed.iter().any(|n| n.contains(&peer))
    }

    /// A slot for a new connection; `None` (counted, logged) when every
    /// slot is taken.
    pub fn slot(&self, peer: SocketAddr) -> Option<Slot> {
        match self.inner.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.inner.metrics.open.inc();
                Some(Slot {
                    _permit: permit,
                    open: self.inner.metrics.open.clone(),
                    idle: self.inner.idle,
                })
            }
            Err(_) => {
                self.refuse(Refused::Full, peer);
                None
            }
        }
    }

    /// Counts a refused connection; logs a full cap or a stranger
    /// (rate-limited). A failed handshake is logged by its caller, at
    /// debug level.
    pub fn refuse(&self, why: Refused, peer: SocketAddr) {
        self.inner
            .metrics
            .refused
            .with_label_values(&[why.label()])
            .inc();
        if matches!(why, Refused::Full | Refused::NotAllowed) {
            if let Some(suppressed) = self.inner.refusals.pass() {
                tracing::warn!(
                    %peer,
                    reason = why.label(),
                    unlogged_since_last = suppressed,
                    "REST API connection closed at accept (at most one such line per 10 s; all are counted in opengslb_api_connections_refused_total)"
                );
            }
        }
    }

    /// Logs an accept error (rate-limited) and backs off a little, so an
    /// `EMFILE` does not spin.
    pub async fn accept_failed(&self, e: &io::Error) {
        if let Some(suppressed) = self.inner.accept_errors.pass() {
            tracing::warn!(error = %e, unlogged_since_last = suppressed, "REST API accept failed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// The metrics.
    pub fn metrics(&self) -> &ConnMetrics {
        &self.inner.metrics
    }
}

/// One slot of the connection cap, held while the connection lives.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
    idle: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A connection holding its slot, closed when idle for the gate's idle
/// timeout.
#[derive(Debug)]
pub struct Conn<S> {
    io: S,
    slot: Slot,
    /// Last byte read or written.
    last: Instant,
    /// Wakes the connection at `last + idle`.
    timer: Pin<Box<Sleep>>,
}

impl<S> Conn<S> {
    /// `io` holding `slot`.
    pub fn new(io: S, slot: Slot) -> Self {
        let last = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(last + slot.idle));
        Self {
            io,
            slot,
            last,
            timer,
        }
    }

    /// `Pending` with a wake-up at the idle deadline, or an error once it
    /// has passed (the server then closes the connection).
    fn idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = self.last + self.slot.idle;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match std::future::Future::poll(self.timer.as_mut(), cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "REST API connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Passes `r` on; progress resets the idle deadline, `Pending` arms it.
    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                if r.is_ok() {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        this.track(cx, r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.track(cx, r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.track(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.track(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The plain HTTP listener: at most `api.max_connections` open at once.
#[derive(Debug)]
pub struct PlainListener {
    tcp: TcpListener,
    gate: Gate,
}

impl PlainListener {
    /// `tcp` behind `gate`.
    pub fn new(tcp: TcpListener, gate: Gate) -> Self {
        Self { tcp, gate }
    }
}

impl Listener for PlainListener {
    type Io = Conn<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    self.gate.accept_failed(&e).await;
                    continue;
                }
            };
            // Over the cap: `tcp` is dropped (closed) here.
            if let Some(slot) = self.gate.slot(peer) {
                return (Conn::new(tcp, slot), peer);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(api: &ApiConfig) -> Gate {
        Gate::new(api, ConnMetrics::new(&Registry::new()).unwrap())
    }

    #[test]
    fn the_allowlist_applies_at_accept_unless_a_proxy_is_trusted() {
        let api = ApiConfig {
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap()],
            max_connections: 3,
            ..ApiConfig::default()
        };
        let g = gate(&api);
        assert!(g.allows("10.1.2.3".parse().unwrap()));
        assert!(g.allows("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
        assert!(!g.allows("127.0.0.1".parse().unwrap()));
        assert!(!g.allows("::1".parse().unwrap()));
        // Behind a trusted proxy the peer is the proxy: every peer may
        // connect; requests are checked against the forwarded client.
        let proxied = gate(&ApiConfig {
            trust_proxy_headers: true,
            ..api.clone()
        });
        assert!(proxied.allows("127.0.0.1".parse().unwrap()));

        // `max_connections` slots, freed on drop; the gauge follows.
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let slots: Vec<Slot> = (0..3).map(|_| g.slot(peer).unwrap()).collect();
        assert_eq!(g.metrics().open.get(), 3);
        assert!(g.slot(peer).is_none());
        assert_eq!(g.metrics().refused(Refused::Full), 1);
        drop(slots);
        assert_eq!(g.metrics().open.get(), 0);
        assert!(g.slot(peer).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_logs_are_rate_limited() {
        let t = Throttle::default();
        assert_eq!(t.pass(), Some(0));
        for _ in 0..1000 {
            assert_eq!(t.pass(), None);
        }
        tokio::time::advance(LOG_EVERY - Duration::from_millis(1)).await;
        assert_eq!(t.pass(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            t.pass(),
            Some(1001),
            "the next line says how many were left out"
        );
        assert_eq!(t.pass(), None);
    }
}
