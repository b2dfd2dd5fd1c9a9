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

/// Query types counted by name in `opengslb_dns_queries_total{type}`; the
/// rest are `OTHER`, replies without a question `NONE` (a fixed label set).
pub const QTYPES: [(u16, &str); 16] = [
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (43, "DS"),
    (48, "DNSKEY"),
    (65, "HTTPS"),
    (255, "ANY"),
    (257, "CAA"),
    (0, "OTHER"),
    (0, "NONE"),
];
const QT_OTHER: usize = 14;
const QT_NONE: usize = 15;

/// Upper bounds (seconds) of `opengslb_dns_query_duration_seconds`; one
/// more bucket counts the rest (+Inf).
pub const DURATION_BUCKETS: [f64; 13] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
const DURATION_BUCKETS_NS: [u64; 13] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// Index into [`QTYPES`] of a reply's question type (no allocation: walks
/// the uncompressed question name of the encoded reply).
#[inline]
pub fn qtype_index(reply: &[u8]) -> usize {
    if reply.get(4..6) == Some(&[0, 0]) || reply.len() < 12 {
        return QT_NONE;
    }
    let mut at = 12;
    loop {
        match reply.get(at) {
            None => return QT_NONE,
            Some(0) => {
                at += 1;
                break;
            }
            Some(&len) if len & 0xc0 == 0xc0 => {
                at += 2;
                break;
            }
            Some(&len) => at += 1 + usize::from(len),
        }
    }
    let Some(&[hi, lo]) = reply.get(at..at + 2) else {
        return QT_NONE;
    };
    let qtype = u16::from_be_bytes([hi, lo]);
    QTYPES[..QT_OTHER]
        .iter()
        .position(|&(t, _)| t == qtype)
        .unwrap_or(QT_OTHER)
}

/// Replies of one batch by (query type, RCODE), kept by the worker in plain
/// integers and added to its [`WorkerCounters`] once per batch.
#[derive(Debug, Default)]
pub struct TypedTally {
    cells: [[u32; 16]; 16],
    /// Bit `t` set: row `t` of `cells` has a non-zero cell.
    rows: u16,
}

impl TypedTally {
    /// Counts one encoded reply.
    #[inline]
    pub fn record(&mut self, reply: &[u8]) {
        if let Some(&rcode) = reply.get(3) {
            let t = qtype_index(reply);
            self.cells[t][usize::from(rcode & 0x0f)] += 1;
            self.rows |= 1 << t;
        }
    }

    /// Adds the counts to `c`.
    pub fn flush(&self, c: &WorkerCounters) {
        let mut rows = self.rows;
        while rows != 0 {
            let t = rows.trailing_zeros() as usize;
            rows &= rows - 1;
            for (counter, &v) in c.typed[t].iter().zip(&self.cells[t]) {
                if v != 0 {
                    counter.fetch_add(u64::from(v), Relaxed);
                }
            }
        }
    }
}

/// Counters written by one worker (or by the TCP side).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    /// Replies by query type (index into [`QTYPES`]) and RCODE.
    pub typed: [[AtomicU64; 16]; 16],
    /// Query durations: counts per [`DURATION_BUCKETS`] bucket (not
    /// cumulative; the last is +Inf).
    pub duration: [AtomicU64; 14],
    /// Sum of the query durations, nanoseconds.
    pub duration_ns: AtomicU64,
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
    /// TCP connections accepted near the cap: one query, then closed.
    pub tcp_one_shot: AtomicU64,
    /// TCP connections evicted at the cap to make room for a new one.
    pub tcp_evicted: AtomicU64,
    /// TCP connections closed by the idle timeout.
    pub tcp_idle_timeouts: AtomicU64,
    /// TCP connections closed by the per-message I/O timeout (slow senders,
    /// clients that do not read their replies).
    pub tcp_io_timeouts: AtomicU64,
    /// The configured limits, as `opengslb_limit{limit="…"}` gauges (set
    /// once at start; a fixed label set).
    pub limits: std::sync::OnceLock<Vec<(&'static str, u64)>>,
    /// Snapshots received and served.
    pub snapshots_applied: AtomicU64,
    /// Snapshots (or deltas) rejected by validation; the previous one kept serving.
    pub snapshots_rejected: AtomicU64,
    /// Stream (re)connection attempts that failed or ended.
    pub stream_errors: AtomicU64,
}

// === impl WorkerCounters ===

impl WorkerCounters {
    /// Records `n` queries answered within `elapsed` (a batch: each query
    /// counts with the batch's time, from reading it to its replies ready).
    #[inline]
    pub fn observe(&self, elapsed: std::time::Duration, n: u64) {
        if n == 0 {
            return;
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(DURATION_BUCKETS_NS.len());
        self.duration[bucket].fetch_add(n, Relaxed);
        self.duration_ns.fetch_add(ns.saturating_mul(n), Relaxed);
    }

    /// Records one reply (`reply` is the encoded message).
    #[inline]
    pub fn reply(&self, reply: &[u8]) {
        if reply.len() >= 4 {
            self.responses[usize::from(reply[3] & 0x0f)].fetch_add(1, Relaxed);
            self.typed[qtype_index(reply)][usize::from(reply[3] & 0x0f)].fetch_add(1, Relaxed);
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
            tcp_one_shot: AtomicU64::new(0),
            tcp_evicted: AtomicU64::new(0),
            tcp_idle_timeouts: AtomicU64::new(0),
            tcp_io_timeouts: AtomicU64::new(0),
            limits: std::sync::OnceLock::new(),
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
            "# HELP opengslb_app_info Always 1; the labels name the build.\n# TYPE opengslb_app_info gauge\nopengslb_app_info{{version=\"{}\",component=\"dataplane\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP opengslb_dns_messages_received_total DNS messages received, by transport."
        );
        let _ = writeln!(out, "# TYPE opengslb_dns_messages_received_total counter");
        let _ = writeln!(
            out,
            "opengslb_dns_messages_received_total{{transport=\"udp\"}} {}",
            sum(&|w| w.queries.load(Relaxed))
        );
        let _ = writeln!(
            out,
            "opengslb_dns_messages_received_total{{transport=\"tcp\"}} {}",
            self.tcp.queries.load(Relaxed)
        );
        let all = |f: &dyn Fn(&WorkerCounters) -> u64| -> u64 { sum(f) + f(&self.tcp) };
        let _ = writeln!(
            out,
            "# HELP opengslb_dns_queries_total Queries answered, by query type and RCODE (UDP and TCP).\n# TYPE opengslb_dns_queries_total counter"
        );
        for (t, (_, tname)) in QTYPES.iter().enumerate() {
            for (r, rname) in RCODES.iter().enumerate() {
                let v = all(&|w| w.typed[t][r].load(Relaxed));
                // A and AAAA NOERROR always, so the series exist from the start.
                if v > 0 || (r == 0 && (t == 0 || t == 7)) {
                    let _ = writeln!(
                        out,
                        "opengslb_dns_queries_total{{type=\"{tname}\",rcode=\"{rname}\"}} {v}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP opengslb_dns_query_duration_seconds Time from reading a query (or its batch) to its reply being ready.\n# TYPE opengslb_dns_query_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += all(&|w| w.duration[i].load(Relaxed));
            let _ = writeln!(
                out,
                "opengslb_dns_query_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += all(&|w| w.duration[DURATION_BUCKETS.len()].load(Relaxed));
        #[allow(clippy::cast_precision_loss)]
        let seconds = all(&|w| w.duration_ns.load(Relaxed)) as f64 / 1e9;
        let _ = writeln!(
            out,
            "opengslb_dns_query_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nopengslb_dns_query_duration_seconds_sum {seconds}\nopengslb_dns_query_duration_seconds_count {cumulative}"
        );
        let _ = writeln!(
            out,
            "# HELP opengslb_dns_refused_total Queries answered REFUSED (names outside every zone, refused classes or opcodes).\n# TYPE opengslb_dns_refused_total counter\nopengslb_dns_refused_total {}",
            all(&|w| w.responses[5].load(Relaxed))
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
        for (name, help, value) in [
            (
                "opengslb_tcp_connections_one_shot_total",
                "TCP connections accepted past one_shot_percent of a cap: one query, then closed.",
                self.tcp_one_shot.load(Relaxed),
            ),
            (
                "opengslb_tcp_connections_evicted_total",
                "TCP connections closed at the cap to make room (the longest waiting for a message).",
                self.tcp_evicted.load(Relaxed),
            ),
            (
                "opengslb_tcp_idle_timeouts_total",
                "TCP connections closed by idle_timeout.",
                self.tcp_idle_timeouts.load(Relaxed),
            ),
            (
                "opengslb_tcp_io_timeouts_total",
                "TCP connections closed by io_timeout (a message or a write too slow).",
                self.tcp_io_timeouts.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        if let Some(limits) = self.limits.get() {
            let _ = writeln!(
                out,
                "# HELP opengslb_limit A configured abuse limit (dataplane settings).\n# TYPE opengslb_limit gauge"
            );
            for (name, value) in limits {
                let _ = writeln!(out, "opengslb_limit{{limit=\"{name}\"}} {value}");
            }
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
        if let Some(snapshot) = handle.map(SnapshotHandle::load_full) {
            crate::geo::render_metrics(&mut out, snapshot.geo_counters());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply header + question for `name` type `qtype`, RCODE `rcode`.
    fn reply(name: &[&str], qtype: u16, rcode: u8) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x84, rcode, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name {
            m.push(u8::try_from(label.len()).unwrap());
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn query_types_are_read_from_the_question() {
        let name = &["www", "example", "com"];
        assert_eq!(QTYPES[qtype_index(&reply(name, 1, 0))].1, "A");
        assert_eq!(QTYPES[qtype_index(&reply(name, 28, 0))].1, "AAAA");
        assert_eq!(QTYPES[qtype_index(&reply(&[], 48, 0))].1, "DNSKEY");
        assert_eq!(QTYPES[qtype_index(&reply(name, 99, 0))].1, "OTHER");
        let mut no_question = reply(name, 1, 1);
        no_question[5] = 0;
        assert_eq!(QTYPES[qtype_index(&no_question)].1, "NONE");
        assert_eq!(QTYPES[qtype_index(&reply(name, 1, 0)[..14])].1, "NONE");
    }

    #[test]
    fn workers_and_tcp_are_summed_at_scrape() {
        let m = Metrics::new(2);
        let name = &["www", "example", "com"];
        let mut t = TypedTally::default();
        t.record(&reply(name, 1, 0));
        t.record(&reply(name, 1, 0));
        t.record(&reply(name, 16, 5));
        t.flush(&m.udp[0]);
        let mut t = TypedTally::default();
        t.record(&reply(name, 1, 0));
        t.flush(&m.udp[1]);
        m.tcp.reply(&reply(name, 16, 5));
        m.udp[0].observe(std::time::Duration::from_micros(30), 3);
        m.udp[1].observe(std::time::Duration::from_millis(500), 1);
        let text = m.render(None);
        assert!(
            text.contains("opengslb_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("opengslb_dns_queries_total{type=\"TXT\",rcode=\"REFUSED\"} 2\n"));
        assert!(text.contains("opengslb_dns_queries_total{type=\"AAAA\",rcode=\"NOERROR\"} 0\n"));
        assert!(!text.contains("type=\"MX\""));
        assert!(text.contains("opengslb_dns_refused_total 1\n"), "{text}");
        assert!(text.contains("opengslb_dns_query_duration_seconds_bucket{le=\"0.000025\"} 0\n"));
        assert!(text.contains("opengslb_dns_query_duration_seconds_bucket{le=\"0.00005\"} 3\n"));
        assert!(text.contains("opengslb_dns_query_duration_seconds_bucket{le=\"0.1\"} 3\n"));
        assert!(text.contains("opengslb_dns_query_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("opengslb_dns_query_duration_seconds_count 4\n"));
        assert!(text.contains("opengslb_app_info{version=\""));
    }
}
