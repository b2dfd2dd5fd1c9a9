//! DNS over TCP (RFC 7766): 2-byte length framing, pipelined queries answered
//! in order, an idle timeout between queries, an I/O timeout inside one, and a
//! cap on concurrent connections (connections over it are closed at once).
//!
//! Each connection reads whatever the peer has sent into one buffer (one
//! `read` per wake-up, not one per field), answers every complete message in
//! it from one snapshot load, appends the framed replies to one output
//! buffer, and writes that once; a partial message stays at the front of the
//! buffer for the next read. A zero length prefix closes the connection
//! (after the replies already owed are written).

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
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
/// Replies buffered before a write: room for at least one full-size reply.
const TX_CAP: usize = 2 * FRAME;

/// Binds the TCP listener (call inside the tokio runtime).
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let listen_err = |source| Error::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(listen_err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(listen_err)?;
    }
    socket.set_reuse_address(true).map_err(listen_err)?;
    socket.set_nonblocking(true).map_err(listen_err)?;
    socket.bind(&addr.into()).map_err(listen_err)?;
    socket.listen(1024).map_err(listen_err)?;
    TcpListener::from_std(socket.into()).map_err(listen_err)
}

/// Accepts connections until the process ends.
pub async fn serve(
    listener: TcpListener,
    handle: Arc<SnapshotHandle>,
    metrics: Arc<Metrics>,
    settings: TcpSettings,
    cookies: Option<crate::cookie::CookieConfig>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.tcp_refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        let handle = handle.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.tcp_open.fetch_add(1, Relaxed);
            let mut state = WorkerState::new();
            if let Some(c) = cookies {
                state.cookies = crate::cookie::CookieState::new(c);
            }
            state.cookies.client = Some(peer.ip());
            connection(stream, &handle, &metrics, settings, state).await;
            metrics.tcp_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    handle: &SnapshotHandle,
    metrics: &Metrics,
    settings: TcpSettings,
    mut state: WorkerState,
) {
    let _ = stream.set_nodelay(true);
    let mut cache = handle.cache();
    let mut rx = vec![0u8; FRAME].into_boxed_slice();
    let mut tx = vec![0u8; TX_CAP].into_boxed_slice();
    // Unconsumed input is rx[..pending].
    let mut pending = 0usize;
    loop {
        // Idle timeout until the next message starts, I/O timeout for the rest.
        let limit = if pending == 0 {
            settings.idle_timeout()
        } else {
            settings.io_timeout()
        };
        let Some(free) = rx.get_mut(pending..) else {
            return;
        };
        match timeout(limit, stream.read(free)).await {
            Ok(Ok(n)) if n > 0 => pending += n,
            _ => return,
        }

        let mut tally = Tally::default();
        let mut out = 0usize;
        let mut at = 0usize;
        let mut close = false;
        let snapshot = cache.load();
        state.cookies.now = crate::cookie::unix_now();
        while let Some(&[hi, lo]) = rx.get(at..at + 2) {
            if at + 2 > pending {
                break;
            }
            let n = usize::from(u16::from_be_bytes([hi, lo]));
            if n == 0 {
                close = true;
                break;
            }
            if at + 2 + n > pending {
                break;
            }
            if out + FRAME > TX_CAP {
                if write(&mut stream, &tx[..out], settings).await.is_err() {
                    return;
                }
                out = 0;
            }
            tally.queries += 1;
            let query = &rx[at + 2..at + 2 + n];
            let reply = &mut tx[out + 2..out + FRAME];
            at += 2 + n;
            let Some(m) = answer(snapshot, query, Transport::Tcp, &mut state, reply) else {
                tally.dropped += 1;
                continue;
            };
            let Ok(m16) = u16::try_from(m) else { return };
            tally.reply(&reply[..m]);
            tx[out..out + 2].copy_from_slice(&m16.to_be_bytes());
            out += 2 + m;
        }
        tally.add_to(&metrics.tcp);
        if out > 0 && write(&mut stream, &tx[..out], settings).await.is_err() {
            return;
        }
        if close {
            return;
        }
        // Keep the partial message (if any) at the front.
        rx.copy_within(at..pending, 0);
        pending -= at;
    }
}

/// Writes `bytes` within the I/O timeout.
async fn write(stream: &mut TcpStream, bytes: &[u8], settings: TcpSettings) -> Result<(), ()> {
    match timeout(settings.io_timeout(), stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
