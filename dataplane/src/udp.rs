//! UDP workers: one OS thread and one `SO_REUSEPORT` socket per worker and
//! listen address; the kernel spreads queries across them.
//!
//! Each worker owns its receive and send buffers (allocated once), its
//! round-robin state, its counters and its `arc_swap::Cache` of the snapshot.
//! Per datagram: receive, one cached snapshot load, `answer` into the send
//! buffer, send. Nothing is shared and written between workers.

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
    error::{Error, Result},
    handle::SnapshotHandle,
    metrics::Metrics,
};

/// Largest UDP message received or sent.
const BUF: usize = 65_535;

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
        let t = std::thread::Builder::new()
            .name(format!("udp-{index}"))
            .spawn(move || run_worker(&socket, &handle, &metrics, index, &shutdown))
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
    index: usize,
    shutdown: &AtomicBool,
) {
    let counters = &metrics.udp[index.min(metrics.udp.len().saturating_sub(1))];
    let mut cache = handle.cache();
    let mut state = WorkerState::default();
    let mut rx = vec![0u8; BUF].into_boxed_slice();
    let mut tx = vec![0u8; BUF].into_boxed_slice();
    while !shutdown.load(Relaxed) {
        let (len, peer) = match socket.recv_from(&mut rx) {
            Ok(r) => r,
            Err(_) => continue, // timeout (shutdown check), EINTR, ICMP errors
        };
        counters.queries.fetch_add(1, Relaxed);
        let snapshot = cache.load();
        match answer(snapshot, &rx[..len], Transport::Udp, &mut state, &mut tx) {
            Some(n) => {
                let reply = &tx[..n];
                if socket.send_to(reply, peer).is_ok() {
                    counters.reply(reply);
                }
            }
            None => {
                counters.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}
