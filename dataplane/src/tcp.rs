//! DNS over TCP (RFC 7766): 2-byte length framing, pipelined queries answered
//! in order, and the limits that keep slow or hostile clients from holding
//! the server:
//!
//! - **Connection caps**: one accept loop (a TCP worker) per dataplane worker
//!   and listen address, each on its own `SO_REUSEPORT` listener; each
//!   worker holds at most `max_connections_per_worker` connections and all
//!   of them together at most `max_connections`. When a cap is reached, a
//!   new connection evicts the worker's connection that has waited longest
//!   for a complete message (an idle or slow client: one that keeps
//!   sending answers nothing is waited on), so a flood of slow connections
//!   cannot lock real clients out, which send their query at once
//!   (`opengslb_tcp_connections_evicted_total`); with nothing to evict it is
//!   closed at once (`opengslb_tcp_connections_refused_total`).
//! - **Near the cap**: once `one_shot_percent` (90 %) of either cap is in
//!   use, a new connection gets one query answered and is closed, so
//!   connections turn over instead of piling up; its query must arrive
//!   within `io_timeout_ms` (`opengslb_tcp_connections_one_shot_total`).
//! - **Idle timeout** (`idle_timeout_ms`, 10 s) while no message is in
//!   progress.
//! - **Per-message I/O timeout** (`io_timeout_ms`, 500 ms): from the first
//!   octet of a message to its last, however the octets trickle in, so a
//!   slow sender cannot hold a slot longer than that per message; the same
//!   limit applies to each write.
//! - **Bounded output**: replies to pipelined queries queue in one buffer;
//!   once it holds `max_output_bytes` it must be written before another
//!   message is answered or read. A client that pipelines and never reads fills
//!   the socket's send buffer, the write times out and the connection
//!   closes. Input is one buffer of at most one framed message (grown from
//!   4 KiB only when a message needs it). Memory per connection is therefore
//!   at most 64 KiB in + `max_output_bytes` + one reply (64 KiB) out, plus
//!   the kernel's socket buffers.
//!
//! Each connection reads whatever the peer has sent into its input buffer
//! (one `read` per wake-up), answers every complete message in it from one
//! snapshot load into a per-thread scratch buffer, appends the framed reply
//! to the output buffer, and writes that once; a partial message stays at
//! the front for the next read. A zero length prefix closes the connection
//! (after the replies already owed are written).

use std::{
    cell::RefCell,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    time::{timeout, timeout_at, Instant},
};

use crate::{
    answer::{answer, Transport, WorkerState},
    error::{Error, Result},
    handle::SnapshotHandle,
    metrics::Metrics,
    settings::TcpSettings,
    udp::Tally,
};

/// One framed message at most: the length prefix and 65535 octets.
const FRAME: usize = 2 + 65_535;
/// Input buffer size until a message needs more.
const RX_START: usize = 4096;

thread_local! {
    /// Where a reply is assembled before it is queued (any size up to 64 KiB,
    /// so the output buffer only ever holds real replies).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; FRAME - 2].into_boxed_slice());
}

// === types ===

/// Why a connection ended (counted in metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The peer closed, sent a zero length, or a read/write failed.
    Closed,
    /// No message started within the idle timeout.
    Idle,
    /// A message or a write did not complete within the I/O timeout.
    Io,
    /// One-shot connection: its one query was answered.
    OneShot,
    /// Evicted to make room for a new connection.
    Evicted,
}

/// What the accept loop knows of one of its connections.
#[derive(Debug, Default)]
struct Conn {
    /// Since when (ms on the process clock, never 0) it has waited for its
    /// next complete message; 0 until its task starts (not evictable).
    waiting_since: std::sync::atomic::AtomicU64,
    /// Set once, by the accept loop, to evict it.
    evicted: std::sync::atomic::AtomicBool,
    /// Wakes the connection's read to notice the eviction.
    wake: Notify,
    /// The connection has ended.
    done: std::sync::atomic::AtomicBool,
}

/// Open connections, in total and per TCP worker, and the worker's
/// connections (candidates for eviction).
#[derive(Debug)]
struct Slots {
    total: Arc<AtomicUsize>,
    worker: Arc<AtomicUsize>,
    conns: Vec<Arc<Conn>>,
}

/// A held slot; gives it back when the connection ends.
struct Slot {
    total: Arc<AtomicUsize>,
    worker: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

// === functions ===

/// Binds one TCP listener with `SO_REUSEPORT` (call inside the tokio
/// runtime); bind it once per TCP worker.
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let listen_err = |source| Error::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(listen_err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(listen_err)?;
    }
    socket.set_reuse_address(true).map_err(listen_err)?;
    socket.set_reuse_port(true).map_err(listen_err)?;
    socket.set_nonblocking(true).map_err(listen_err)?;
    socket.bind(&addr.into()).map_err(listen_err)?;
    socket.listen(1024).map_err(listen_err)?;
    TcpListener::from_std(socket.into()).map_err(listen_err)
}

/// Binds `workers` listeners on `addr` and serves each with its own accept
/// loop; all of them share the total cap. Returns once they are spawned.
pub fn spawn_workers(
    addr: SocketAddr,
    workers: usize,
    handle: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    settings: TcpSettings,
    cookies: Option<crate::cookie::CookieConfig>,
    total: Arc<AtomicUsize>,
) -> Result<()> {
    for _ in 0..workers.max(1) {
        let listener = bind_tcp(addr)?;
        tokio::spawn(serve(
            listener,
            handle.clone(),
            metrics.clone(),
            settings,
            cookies,
            total.clone(),
        ));
    }
    Ok(())
}

/// One TCP worker: accepts connections until the process ends. `total`
/// counts the open connections of every worker.
pub async fn serve(
    listener: TcpListener,
    handle: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    settings: TcpSettings,
    cookies: Option<crate::cookie::CookieConfig>,
    total: Arc<AtomicUsize>,
) {
    let mut slots = Slots {
        total,
        worker: Arc::new(AtomicUsize::new(0)),
        conns: Vec::new(),
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((slot, one_shot, conn)) = slots.take(&settings, &metrics) else {
            metrics.tcp_refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        if one_shot {
            metrics.tcp_one_shot.fetch_add(1, Relaxed);
        }
        let handle = handle.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut state = WorkerState::new();
            if let Some(c) = cookies {
                state.cookies = crate::cookie::CookieState::new(c);
            }
            state.cookies.client = Some(peer.ip());
            let end = connection(stream, &handle, &metrics, settings, state, one_shot, &conn).await;
            match end {
                End::Idle => metrics.tcp_idle_timeouts.fetch_add(1, Relaxed),
                End::Io => metrics.tcp_io_timeouts.fetch_add(1, Relaxed),
                End::Evicted => metrics.tcp_evicted.fetch_add(1, Relaxed),
                End::Closed | End::OneShot => 0,
            };
            conn.done.store(true, Relaxed);
            drop(slot);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    handle: &SnapshotHandle,
    metrics: &Metrics,
    settings: TcpSettings,
    mut state: WorkerState,
    one_shot: bool,
    conn: &Conn,
) -> End {
    let _ = stream.set_nodelay(true);
    let mut cache = handle.cache();
    let mut rx = vec![0u8; RX_START];
    let mut tx: Vec<u8> = Vec::with_capacity(1024);
    let max_out = settings.max_output_bytes.max(512);
    // Unconsumed input is rx[..pending].
    let mut pending = 0usize;
    // When the message in progress (if any) must be complete. A one-shot
    // connection's query must arrive within the I/O timeout.
    let mut deadline: Option<Instant> = one_shot.then(|| Instant::now() + settings.io_timeout());
    let mut started = false;
    conn.waiting_since.store(clock_ms(), Relaxed);
    loop {
        if pending == rx.len() {
            // The partial message at the front needs more room than the
            // input buffer has (a full frame always fits).
            if rx.len() >= FRAME {
                return End::Closed;
            }
            rx.resize(FRAME, 0);
        }
        let Some(free) = rx.get_mut(pending..) else {
            return End::Closed;
        };
        let limit = deadline.unwrap_or_else(|| Instant::now() + settings.idle_timeout());
        let read = tokio::select! {
            r = timeout_at(limit, stream.read(free)) => r,
            () = conn.wake.notified() => return End::Evicted,
        };
        if conn.evicted.load(Relaxed) {
            return End::Evicted;
        }
        match read {
            Ok(Ok(n)) if n > 0 => pending += n,
            Ok(_) => return End::Closed,
            Err(_) if !started && !one_shot => return End::Idle,
            Err(_) => return End::Io,
        }
        if !started {
            // The first octets of a message: the rest must follow in time.
            started = true;
            if deadline.is_none() {
                deadline = Some(Instant::now() + settings.io_timeout());
            }
        }

        let mut tally = Tally::default();
        let answering = std::time::Instant::now();
        let mut at = 0usize;
        let mut end = None;
        let snapshot = cache.load();
        state.cookies.now = crate::cookie::unix_now();
        while let Some(&[hi, lo]) = rx.get(at..at + 2) {
            if at + 2 > pending {
                break;
            }
            let n = usize::from(u16::from_be_bytes([hi, lo]));
            if n == 0 {
                end = Some(End::Closed);
                break;
            }
            if at + 2 + n > pending {
                break;
            }
            tally.queries += 1;
            let query = &rx[at + 2..at + 2 + n];
            at += 2 + n;
            let queued = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let m = answer(snapshot, query, Transport::Tcp, &mut state, &mut scratch)?;
                let m16 = u16::try_from(m).ok()?;
                let reply = scratch.get(..m)?;
                tally.reply(reply);
                tx.extend_from_slice(&m16.to_be_bytes());
                tx.extend_from_slice(reply);
                Some(())
            });
            if queued.is_none() {
                tally.dropped += 1;
            }
            if tx.len() >= max_out {
                // Full: what is queued must be written before reading on.
                if let Err(e) = write(&mut stream, &tx, settings).await {
                    tally.add_to(&metrics.tcp);
                    return e;
                }
                tx.clear();
            }
            if one_shot {
                end = Some(End::OneShot);
                break;
            }
        }
        metrics.tcp.observe(answering.elapsed(), tally.queries);
        tally.add_to(&metrics.tcp);
        if !tx.is_empty() {
            if let Err(e) = write(&mut stream, &tx, settings).await {
                return e;
            }
            tx.clear();
        }
        if let Some(end) = end {
            return end;
        }
        if at > 0 {
            // Keep the partial message (if any) at the front; it is a new
            // message, so its clock starts now.
            rx.copy_within(at..pending, 0);
            pending -= at;
            started = pending > 0;
            deadline = started.then(|| Instant::now() + settings.io_timeout());
            conn.waiting_since.store(clock_ms(), Relaxed);
        }
    }
}

/// Writes `bytes` within the I/O timeout.
async fn write(stream: &mut TcpStream, bytes: &[u8], settings: TcpSettings) -> Result<(), End> {
    match timeout(settings.io_timeout(), stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Closed),
        Err(_) => Err(End::Io),
    }
}

/// Milliseconds on a process-wide clock, never 0.
fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

// === impl Slots ===

impl Slots {
    /// Takes a slot under both caps, evicting the longest-waiting connection
    /// of this worker when a cap is reached; says whether the connection is
    /// one-shot (either cap at or past `one_shot_percent`). `None`: refuse.
    fn take(
        &mut self,
        settings: &TcpSettings,
        metrics: &Arc<Metrics>,
    ) -> Option<(Slot, bool, Arc<Conn>)> {
        let (cap, per_worker) = (settings.max_connections, settings.per_worker_cap());
        self.conns.retain(|c| !c.done.load(Relaxed));
        // One accept loop per worker counter: a plain check is exact here.
        let here = self.worker.load(Relaxed);
        let total = self.total.load(Relaxed);
        let full = here >= per_worker || total >= cap;
        if full {
            // Make room: the evicted connection gives its slot back as soon
            // as its task runs; each connection is evicted once, so the
            // count exceeds a cap by at most the evictions in flight.
            let victim = self
                .conns
                .iter()
                .filter(|c| !c.evicted.load(Relaxed))
                .filter(|c| c.waiting_since.load(Relaxed) != 0)
                .min_by_key(|c| c.waiting_since.load(Relaxed))?;
            victim.evicted.store(true, Relaxed);
            victim.wake.notify_one();
            self.total.fetch_add(1, Relaxed);
        } else if self
            .total
            .fetch_update(Relaxed, Relaxed, |n| (n < cap).then_some(n + 1))
            .is_err()
        {
            return None;
        }
        self.worker.fetch_add(1, Relaxed);
        metrics.tcp_open.fetch_add(1, Relaxed);
        let one_shot =
            full || total >= settings.one_shot_at(cap) || here >= settings.one_shot_at(per_worker);
        let conn = Arc::new(Conn::default());
        self.conns.push(conn.clone());
        Some((
            Slot {
                total: self.total.clone(),
                worker: self.worker.clone(),
                metrics: metrics.clone(),
            },
            one_shot,
            conn,
        ))
    }
}

// === impl Slot ===

impl Drop for Slot {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Relaxed);
        self.worker.fetch_sub(1, Relaxed);
        self.metrics.tcp_open.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(total: usize, per_worker: usize) -> TcpSettings {
        TcpSettings {
            max_connections: total,
            max_connections_per_worker: per_worker,
            ..TcpSettings::default()
        }
    }

    fn slots(total: &Arc<AtomicUsize>) -> Slots {
        Slots {
            total: total.clone(),
            worker: Arc::new(AtomicUsize::new(0)),
            conns: Vec::new(),
        }
    }

    #[test]
    fn per_worker_cap_evicts_the_longest_waiting_or_refuses() {
        let metrics = Metrics::new(1);
        let total = Arc::new(AtomicUsize::new(0));
        let mut w = slots(&total);
        let s = settings(100, 4);
        let mut held: Vec<_> = (0..4).map(|_| w.take(&s, &metrics).unwrap()).collect();
        assert_eq!(total.load(Relaxed), 4);
        assert_eq!(metrics.tcp_open.load(Relaxed), 4);
        // 90 % of 4 rounds up to 4: none of the first four is one-shot.
        assert!(held.iter().all(|(_, one_shot, _)| !one_shot));
        // Full, and no connection has started waiting: refused.
        assert!(w.take(&s, &metrics).is_none());
        // Connection 2 has waited longest: it is evicted for the new one.
        for (i, since) in [(0, 50u64), (1, 40), (2, 10), (3, 30)] {
            held[i].2.waiting_since.store(since, Relaxed);
        }
        let (_slot, one_shot, _) = w.take(&s, &metrics).unwrap();
        assert!(one_shot, "a connection accepted at the cap is one-shot");
        let evicted: Vec<bool> = held.iter().map(|h| h.2.evicted.load(Relaxed)).collect();
        assert_eq!(evicted, [false, false, true, false]);
        // The evicted one ends and gives its slot back.
        let (slot, _, conn) = held.remove(2);
        conn.done.store(true, Relaxed);
        drop(slot);
        assert_eq!(w.worker.load(Relaxed), 4);
        assert_eq!(total.load(Relaxed), 4);
    }

    #[test]
    fn total_cap_is_shared_by_workers_and_one_shot_starts_at_90_percent() {
        let metrics = Metrics::new(1);
        let total = Arc::new(AtomicUsize::new(0));
        let (mut a, mut b) = (slots(&total), slots(&total));
        let s = settings(10, 0);
        let mut flags = Vec::new();
        let mut held = Vec::new();
        for i in 0..10 {
            let w = if i % 2 == 0 { &mut a } else { &mut b };
            let (slot, one_shot, conn) = w.take(&s, &metrics).unwrap();
            flags.push(one_shot);
            held.push((slot, conn));
        }
        // The 10th (9 open before it = 90 % of 10) is one-shot.
        assert_eq!(flags.iter().filter(|f| **f).count(), 1);
        assert!(flags[9]);
        // Total full: b evicts one of its own, never one of a's.
        for (i, (_, c)) in held.iter().enumerate() {
            c.waiting_since.store(100 - i as u64, Relaxed);
        }
        let extra = b.take(&s, &metrics);
        assert!(extra.is_some());
        let evicted: Vec<usize> = (0..10)
            .filter(|&i| held[i].1.evicted.load(Relaxed))
            .collect();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0] % 2, 1, "one of b's connections");
        drop(held);
        assert_eq!(total.load(Relaxed), 1);
        assert_eq!(metrics.tcp_open.load(Relaxed), 1);
    }
}
