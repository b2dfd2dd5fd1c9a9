//! UDP workers: one OS thread and one `SO_REUSEPORT` socket per worker and
//! listen address; the kernel spreads queries across them.
//!
//! Each worker owns its receive and send buffers (allocated once), its
//! round-robin state, its counters and its `arc_swap::Cache` of the snapshot.
//! Nothing is shared and written between workers.
//!
//! The loop (Linux): one `recvmmsg` takes every queued datagram up to
//! [`batch::BATCH`] (blocking only for the first, up to the 250 ms read
//! timeout that lets an idle worker see the shutdown flag); one cached
//! snapshot load serves the whole batch; `answer` writes each reply into its
//! own send slot; one `sendmmsg` sends them all; the counters are added once
//! per batch. So a busy worker makes two system calls per batch and none per
//! query besides them. Elsewhere the loop is the same with one datagram per
//! `recv_from`/`send_to`.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    answer::{answer, Transport, WorkerState},
    cookie::{unix_now, CookieConfig, CookieState},
    error::{Error, Result},
    handle::SnapshotHandle,
    metrics::{Metrics, WorkerCounters},
    rrl::{self, Kind, Rrl, Verdict},
    settings::RrlSettings,
};

#[cfg(target_os = "linux")]
mod batch;

/// Largest UDP message received or sent.
#[cfg(not(target_os = "linux"))]
const BUF: usize = 65_535;

/// Counts of one batch, added to the worker's shared counters once per batch
/// (plain adds here, one atomic add per non-zero counter there). TCP uses it
/// per read too.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Messages received.
    pub(crate) queries: u64,
    responses: [u64; 16],
    truncated: u64,
    /// Messages that got no reply.
    pub(crate) dropped: u64,
    rrl_dropped: u64,
    rrl_slipped: u64,
    /// Replies by query type and RCODE.
    typed: crate::metrics::TypedTally,
}

/// Binds one `SO_REUSEPORT` UDP socket.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    let listen_err = |source| Error::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(listen_err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(listen_err)?;
    }
    socket.set_reuse_address(true).map_err(listen_err)?;
    socket.set_reuse_port(true).map_err(listen_err)?;
    // Best effort: a larger queue absorbs bursts; the kernel caps it.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .map_err(listen_err)?;
    socket.bind(&addr.into()).map_err(listen_err)?;
    Ok(socket.into())
}

/// Starts `workers` threads per address. Sockets are bound before any
/// thread starts, so a bad address fails start-up.
pub fn spawn_workers(
    addrs: &[SocketAddr],
    workers: usize,
    handle: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    rrl: &RrlSettings,
    cookies: Option<CookieConfig>,
    shutdown: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut sockets = Vec::with_capacity(addrs.len() * workers);
    for addr in addrs {
        for _ in 0..workers {
            sockets.push(bind_udp(*addr)?);
        }
    }
    let mut threads = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.into_iter().enumerate() {
        let handle = handle.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let rrl = rrl.clone();
        let t = std::thread::Builder::new()
            .name(format!("udp-{index}"))
            .spawn(move || run_worker(&socket, &handle, &metrics, &rrl, cookies, index, &shutdown))
            .map_err(|source| Error::Listen {
                addr: addrs[0],
                source,
            })?;
        threads.push(t);
    }
    Ok(threads)
}

fn run_worker(
    socket: &UdpSocket,
    handle: &SnapshotHandle,
    metrics: &Metrics,
    rrl: &RrlSettings,
    cookies: Option<CookieConfig>,
    index: usize,
    shutdown: &AtomicBool,
) {
    let counters = &metrics.udp[index.min(metrics.udp.len().saturating_sub(1))];
    let mut cache = handle.cache();
    let mut state = WorkerState::new();
    if let Some(c) = cookies {
        state.cookies = CookieState::new(c);
    }
    let mut limiter = Limiter {
        rrl: Rrl::new(rrl, random_seed(index)),
        epoch: std::time::Instant::now(),
    };
    serve(
        socket,
        &mut cache,
        &mut state,
        &mut limiter,
        counters,
        shutdown,
    );
}

/// A worker's rate limiter and the clock it reads once per batch.
struct Limiter {
    rrl: Rrl,
    epoch: std::time::Instant,
}

impl Limiter {
    /// Milliseconds since the worker started.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Applies RRL to the reply of `len` octets in `out` for `peer`; returns
    /// the length to send, or `None` to send nothing.
    #[inline]
    fn apply(
        &mut self,
        peer: Option<std::net::IpAddr>,
        out: &mut [u8],
        len: usize,
        now_ms: u64,
        cookie_valid: bool,
        tally: &mut Tally,
    ) -> Option<usize> {
        let Some(peer) = peer else { return Some(len) };
        if cookie_valid {
            return Some(len);
        }
        let reply = out.get_mut(..len)?;
        let verdict = self.rrl.check(peer, Kind::of(reply), now_ms);
        if verdict != Verdict::Send {
            if let Some(ev) = self.rrl.take_log() {
                log_limited(&ev);
            }
        }
        match verdict {
            Verdict::Send => Some(len),
            Verdict::Slip => match rrl::slip(reply) {
                Some(n) => {
                    tally.rrl_slipped += 1;
                    Some(n)
                }
                None => {
                    tally.rrl_dropped += 1;
                    None
                }
            },
            Verdict::Drop => {
                tally.rrl_dropped += 1;
                None
            }
        }
    }
}

/// One bounded "network limited" line (see [`rrl::LimitLog`]).
#[cold]
fn log_limited(ev: &rrl::LimitLog) {
    tracing::warn!(
        network = %ev.network,
        prefix = ev.prefix,
        kind = ?ev.kind,
        suppressed = ev.suppressed,
        "response rate limit: network limited"
    );
}

/// A per-worker hash key for the RRL table.
fn random_seed(index: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(index);
    h.finish()
}

#[cfg(target_os = "linux")]
fn serve(
    socket: &UdpSocket,
    cache: &mut crate::handle::SnapshotCache<'_>,
    state: &mut WorkerState,
    limiter: &mut Limiter,
    counters: &WorkerCounters,
    shutdown: &AtomicBool,
) {
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut b = batch::Batch::new();
    while !shutdown.load(Relaxed) {
        // Errors: the read timeout (shutdown check), EINTR, ICMP errors.
        let Ok(n) = b.recv(fd) else { continue };
        let started = std::time::Instant::now();
        let mut tally = Tally {
            queries: n as u64,
            ..Tally::default()
        };
        let snapshot = cache.load();
        let now_ms = if limiter.rrl.enabled() {
            limiter.now_ms()
        } else {
            0
        };
        state.cookies.now = if state.cookies.enabled() {
            unix_now()
        } else {
            0
        };
        let need_peer =
            limiter.rrl.enabled() || state.cookies.enabled() || snapshot.has_geo_plans();
        // With one datagram there is nothing for the misses to overlap
        // with; with a small zone, nothing misses.
        if n > 1 && snapshot.node_count() >= crate::snapshot::PREFETCH_MIN_NODES {
            snapshot.prefetch((0..n).map(|i| b.query(i)));
        }
        for i in 0..n {
            let peer = if need_peer { b.peer_ip(i) } else { None };
            state.cookies.client = peer;
            let (query, out) = b.slot(i);
            let len = answer(snapshot, query, Transport::Udp, state, out).and_then(|len| {
                let valid = state.cookies.valid;
                limiter.apply(peer, out, len, now_ms, valid, &mut tally)
            });
            match len {
                Some(len) => {
                    tally.reply(out.get(..len).unwrap_or(&[]));
                    b.queue(i, len);
                }
                None => tally.dropped += 1,
            }
        }
        counters.observe(started.elapsed(), n as u64);
        b.send(fd);
        tally.add_to(counters);
    }
}

#[cfg(not(target_os = "linux"))]
fn serve(
    socket: &UdpSocket,
    cache: &mut crate::handle::SnapshotCache<'_>,
    state: &mut WorkerState,
    limiter: &mut Limiter,
    counters: &WorkerCounters,
    shutdown: &AtomicBool,
) {
    let mut rx = vec![0u8; BUF].into_boxed_slice();
    let mut tx = vec![0u8; BUF].into_boxed_slice();
    while !shutdown.load(Relaxed) {
        let Ok((len, peer)) = socket.recv_from(&mut rx) else {
            continue; // timeout (shutdown check), EINTR, ICMP errors
        };
        let started = std::time::Instant::now();
        let mut tally = Tally {
            queries: 1,
            ..Tally::default()
        };
        let now_ms = limiter.now_ms();
        state.cookies.set(Some(peer.ip()), unix_now());
        let reply =
            answer(cache.load(), &rx[..len], Transport::Udp, state, &mut tx).and_then(|n| {
                let valid = state.cookies.valid;
                limiter.apply(Some(peer.ip()), &mut tx, n, now_ms, valid, &mut tally)
            });
        match reply {
            Some(n) => {
                if socket.send_to(&tx[..n], peer).is_ok() {
                    tally.reply(&tx[..n]);
                }
            }
            None => tally.dropped += 1,
        }
        counters.observe(started.elapsed(), 1);
        tally.add_to(counters);
    }
}

// === impl Tally ===

impl Tally {
    /// Counts one reply by its header RCODE and TC bit.
    #[inline]
    pub(crate) fn reply(&mut self, reply: &[u8]) {
        if let (Some(&flags), Some(&rcode)) = (reply.get(2), reply.get(3)) {
            self.responses[usize::from(rcode & 0x0f)] += 1;
            self.truncated += u64::from(flags & 0x02 != 0);
            self.typed.record(reply);
        }
    }

    /// Adds the batch to the shared counters.
    pub(crate) fn add_to(&self, c: &WorkerCounters) {
        let add = |counter: &std::sync::atomic::AtomicU64, v: u64| {
            if v != 0 {
                counter.fetch_add(v, Relaxed);
            }
        };
        add(&c.queries, self.queries);
        for (counter, &v) in c.responses.iter().zip(&self.responses) {
            add(counter, v);
        }
        add(&c.truncated, self.truncated);
        add(&c.dropped, self.dropped);
        add(&c.rrl_dropped, self.rrl_dropped);
        add(&c.rrl_slipped, self.rrl_slipped);
        self.typed.flush(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{answer::tests::fixture, snapshot::Snapshot};

    /// A real worker on loopback with loopback not exempt: 5 answers pass,
    /// then every 2nd limited reply slips (TC=1, no answer), the rest drop.
    #[test]
    fn worker_rate_limits_over_udp() {
        let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = socket.local_addr().unwrap();
        let snapshot = Snapshot::try_from(&fixture()).unwrap();
        let handle = Arc::new(SnapshotHandle::new(snapshot, false));
        let metrics = Metrics::new(1);
        let shutdown = Arc::new(AtomicBool::new(false));
        let rrl = RrlSettings {
            responses_per_second: 5,
            exempt: Vec::new(),
            ..RrlSettings::default()
        };
        let worker = {
            let (handle, metrics, shutdown) = (handle.clone(), metrics.clone(), shutdown.clone());
            std::thread::spawn(move || {
                run_worker(&socket, &handle, &metrics, &rrl, None, 0, &shutdown)
            })
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // www.gslb.test. A, no EDNS.
        let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03www\x04gslb\x04test\x00\x00\x01\x00\x01");
        let (mut full, mut slipped) = (0, 0);
        let mut buf = [0u8; 4096];
        // All sent at once (well inside one second), then the replies read.
        for _ in 0..15 {
            client.send_to(&q, addr).unwrap();
        }
        while let Ok(n) = client.recv(&mut buf) {
            if buf[2] & 0x02 != 0 {
                assert_eq!(n, q.len(), "a slipped reply is header + question");
                assert!(buf[2] & 0x04 != 0, "AA");
                slipped += 1;
            } else {
                full += 1;
            }
        }
        shutdown.store(true, Relaxed);
        worker.join().unwrap();
        assert_eq!((full, slipped), (5, 5));
        let w = &metrics.udp[0];
        assert_eq!(w.rrl_slipped.load(Relaxed), 5);
        assert_eq!(w.rrl_dropped.load(Relaxed), 5);
    }
}
