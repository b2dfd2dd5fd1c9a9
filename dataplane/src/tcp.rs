//! DNS over TCP (RFC 7766): 2-byte length framing, pipelined queries answered
//! in order, an idle timeout between queries, an I/O timeout inside one, and a
//! cap on concurrent connections (connections over it are closed at once).

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
};

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
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let (stream, _peer) = match listener.accept().await {
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
            connection(stream, &handle, &metrics, settings).await;
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
) {
    let _ = stream.set_nodelay(true);
    let mut state = WorkerState::default();
    let mut rx = vec![0u8; 65_535];
    let mut tx = vec![0u8; 65_537];
    loop {
        let mut len = [0u8; 2];
        // Idle timeout until the next message starts, I/O timeout for the rest.
        match timeout(settings.idle_timeout(), stream.read_u8()).await {
            Ok(Ok(b)) => len[0] = b,
            _ => return,
        }
        match timeout(settings.io_timeout(), stream.read_u8()).await {
            Ok(Ok(b)) => len[1] = b,
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 {
            return;
        }
        match timeout(settings.io_timeout(), stream.read_exact(&mut rx[..n])).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        metrics.tcp.queries.fetch_add(1, Relaxed);
        let reply_len = {
            let snapshot = handle.load_full();
            answer(
                &snapshot,
                &rx[..n],
                Transport::Tcp,
                &mut state,
                &mut tx[2..],
            )
        };
        let Some(m) = reply_len else {
            metrics.tcp.dropped.fetch_add(1, Relaxed);
            continue;
        };
        let Ok(m16) = u16::try_from(m) else { return };
        tx[..2].copy_from_slice(&m16.to_be_bytes());
        match timeout(settings.io_timeout(), stream.write_all(&tx[..m + 2])).await {
            Ok(Ok(())) => metrics.tcp.reply(&tx[2..m + 2]),
            _ => return,
        }
    }
}
