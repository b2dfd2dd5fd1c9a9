//! Dataplane counters and their Prometheus text endpoint.
//!
//! Every UDP worker owns one cache-line-aligned block of counters and is the
//! only writer of it (relaxed atomics, no contention); a scrape sums them.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handle::SnapshotHandle;

const RCODES: [&str; 16] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "DSOTYPENI",
    "RCODE12",
    "RCODE13",
    "RCODE14",
    "RCODE15",
];

/// Counters written by one worker (or by the TCP side).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    /// Datagrams or TCP messages received.
    pub queries: AtomicU64,
    /// Replies sent, by header RCODE.
    pub responses: [AtomicU64; 16],
    /// Replies sent with TC=1.
    pub truncated: AtomicU64,
    /// Messages that got no reply (QR=1, shorter than a header).
    pub dropped: AtomicU64,
    /// Replies dropped by response rate limiting (UDP).
    pub rrl_dropped: AtomicU64,
    /// Replies sent truncated (TC=1) by response rate limiting (UDP).
    pub rrl_slipped: AtomicU64,
}

/// All dataplane counters.
#[derive(Debug)]
pub struct Metrics {
    /// One block per UDP worker.
    pub udp: Box<[WorkerCounters]>,
    /// TCP queries and replies.
    pub tcp: WorkerCounters,
    /// TCP connections closed at once because the cap was reached.
    pub tcp_refused: AtomicU64,
    /// TCP connections currently open.
    pub tcp_open: AtomicU64,
    /// Snapshots received and served.
    pub snapshots_applied: AtomicU64,
    /// Snapshots (or deltas) rejected by validation; the previous one kept serving.
    pub snapshots_rejected: AtomicU64,
    /// Stream (re)connection attempts that failed or ended.
    pub stream_errors: AtomicU64,
}

// === impl WorkerCounters ===

impl WorkerCounters {
    /// Records one reply (`reply` is the encoded message).
    #[inline]
    pub fn reply(&self, reply: &[u8]) {
        if reply.len() >= 4 {
            self.responses[usize::from(reply[3] & 0x0f)].fetch_add(1, Relaxed);
            if reply[2] & 0x02 != 0 {
                self.truncated.fetch_add(1, Relaxed);
            }
        }
    }
}

// === impl Metrics ===

impl Metrics {
    /// Counters for `workers` UDP workers.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            udp: (0..workers).map(|_| WorkerCounters::default()).collect(),
            tcp: WorkerCounters::default(),
            tcp_refused: AtomicU64::new(0),
            tcp_open: AtomicU64::new(0),
            snapshots_applied: AtomicU64::new(0),
            snapshots_rejected: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self, handle: Option<&SnapshotHandle>) -> String {
        let mut out = String::with_capacity(4096);
        let sum = |f: &dyn Fn(&WorkerCounters) -> u64| -> u64 { self.udp.iter().map(f).sum() };
        let _ = writeln!(
            out,
            "# HELP opengslb_dns_queries_total DNS messages received."
        );
        let _ = writeln!(out, "# TYPE opengslb_dns_queries_total counter");
        let _ = writeln!(
            out,
            "opengslb_dns_queries_total{{transport=\"udp\"}} {}",
            sum(&|w| w.queries.load(Relaxed))
        );
        let _ = writeln!(
            out,
            "opengslb_dns_queries_total{{transport=\"tcp\"}} {}",
            self.tcp.queries.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP opengslb_dns_responses_total DNS replies sent, by RCODE."
        );
        let _ = writeln!(out, "# TYPE opengslb_dns_responses_total counter");
        for (i, name) in RCODES.iter().enumerate() {
            let udp = sum(&|w| w.responses[i].load(Relaxed));
            let tcp = self.tcp.responses[i].load(Relaxed);
            if udp + tcp > 0 || i < 6 {
                let _ = writeln!(
                    out,
                    "opengslb_dns_responses_total{{transport=\"udp\",rcode=\"{name}\"}} {udp}"
                );
                let _ = writeln!(
                    out,
                    "opengslb_dns_responses_total{{transport=\"tcp\",rcode=\"{name}\"}} {tcp}"
                );
            }
        }
        let simple: [(&str, &str, &str, u64); 10] = [
            (
                "opengslb_rrl_dropped_total",
                "counter",
                "Replies dropped by response rate limiting.",
                sum(&|w| w.rrl_dropped.load(Relaxed)),
            ),
            (
                "opengslb_rrl_slipped_total",
                "counter",
                "Replies sent truncated (TC=1) by response rate limiting.",
                sum(&|w| w.rrl_slipped.load(Relaxed)),
            ),
            (
                "opengslb_dns_truncated_total",
                "counter",
                "Replies sent with TC=1.",
                sum(&|w| w.truncated.load(Relaxed)),
            ),
            (
                "opengslb_dns_dropped_total",
                "counter",
                "Messages that got no reply.",
                sum(&|w| w.dropped.load(Relaxed)) + self.tcp.dropped.load(Relaxed),
            ),
            (
                "opengslb_tcp_connections_refused_total",
                "counter",
                "TCP connections closed because max_connections was reached.",
                self.tcp_refused.load(Relaxed),
            ),
            (
                "opengslb_tcp_connections_open",
                "gauge",
                "Open TCP connections.",
                self.tcp_open.load(Relaxed),
            ),
            (
                "opengslb_snapshots_applied_total",
                "counter",
                "Snapshots received and served.",
                self.snapshots_applied.load(Relaxed),
            ),
            (
                "opengslb_snapshots_rejected_total",
                "counter",
                "Snapshot messages rejected by validation.",
                self.snapshots_rejected.load(Relaxed),
            ),
            (
                "opengslb_stream_errors_total",
                "counter",
                "Snapshot stream connection failures.",
                self.stream_errors.load(Relaxed),
            ),
            (
                "opengslb_snapshot_generation",
                "gauge",
                "Generation of the snapshot being served.",
                handle.map_or(0, |h| h.generation()),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let from_cache = handle.is_some_and(|h| h.is_from_cache());
        let _ = writeln!(
            out,
            "# HELP opengslb_snapshot_from_cache 1 while serving the cached snapshot.\n# TYPE opengslb_snapshot_from_cache gauge\nopengslb_snapshot_from_cache {}",
            u8::from(from_cache)
        );
        let _ = writeln!(
            out,
            "# HELP opengslb_routing_decisions_total Answers given from a load-balanced name's routing policy.\n# TYPE opengslb_routing_decisions_total counter"
        );
        if let Some(snapshot) = handle.map(SnapshotHandle::load_full) {
            for (domain, algorithm, n) in snapshot.routing_decisions() {
                // Names are letters, digits, '-', '_' and '\DDD' escapes.
                let domain = domain.replace('\\', "\\\\");
                let _ = writeln!(
                    out,
                    "opengslb_routing_decisions_total{{domain=\"{domain}\",algorithm=\"{algorithm}\"}} {n}"
                );
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    handle: Arc<std::sync::OnceLock<Arc<SnapshotHandle>>>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        let (mut conn, _) = listener.accept().await?;
        let metrics = metrics.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            // Read the request head (bounded in size and time) so the
            // connection closes cleanly instead of with a reset.
            let mut req = [0u8; 2048];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while n < req.len() && !req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout_at(deadline, conn.read(&mut req[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(k)) => n += k,
                }
            }
            let head = &req[..n];
            let (status, body) = if head.starts_with(b"GET /metrics ") {
                ("200 OK", metrics.render(handle.get().map(|h| h.as_ref())))
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}
