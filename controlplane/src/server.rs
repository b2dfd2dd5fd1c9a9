//! Start-up and lifetime of a controlplane process.
//!
//! Order: store (migrations) → compile the first snapshot → gRPC listener
//! (`SnapshotService`) → serve; SIGHUP reloads the config file and publishes
//! a new snapshot when it is valid (an invalid file is logged and the running
//! config kept); SIGINT/SIGTERM stop.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use opengslb_proto::snapshot_service_server::SnapshotServiceServer;
use tokio::sync::Mutex;

use crate::{
    compile,
    config::{self, Config},
    error::{Error, Result},
    store::Store,
    stream::SnapshotStream,
};

/// Largest snapshot message sent.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Hands out strictly increasing generations and SOA serials.
#[derive(Debug)]
pub struct Versions {
    generation: u64,
    serial: u32,
}

// === impl Versions ===

impl Versions {
    /// Starts after the last serial persisted in the store.
    pub fn new(last_serial: u32) -> Self {
        Self {
            generation: 0,
            serial: last_serial,
        }
    }

    /// The next (generation, serial) pair: microseconds and seconds since the
    /// epoch, each bumped past its predecessor when the clock has not moved.
    pub fn advance(&mut self) -> (u64, u32) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let us = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
        self.generation = us.max(self.generation + 1);
        let secs = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
        // RFC 1982 serial arithmetic: a plain increase is always "newer".
        self.serial = if secs.wrapping_sub(self.serial) as i32 > 0 {
            secs
        } else {
            self.serial.wrapping_add(1)
        };
        (self.generation, self.serial)
    }
}

/// What a running controlplane holds.
#[derive(Debug)]
pub struct State {
    /// Path of the config file (reloaded on SIGHUP).
    pub config_path: PathBuf,
    /// The config in force.
    pub config: Mutex<Arc<Config>>,
    /// The snapshot stream.
    pub stream: SnapshotStream,
    /// The store.
    pub store: Store,
    versions: Mutex<Versions>,
}

// === impl State ===

impl State {
    /// Compiles `cfg` with the next generation and serial and persists the serial.
    async fn compile(&self, cfg: &Config) -> Result<opengslb_proto::Snapshot> {
        let (generation, serial) = self.versions.lock().await.advance();
        self.store
            .set_meta("soa_serial", &serial.to_string())
            .await?;
        // Every server counts as healthy until health checking lands.
        Ok(compile::compile(cfg, generation, serial, &|_| true))
    }

    /// Reloads the config file; on success publishes a new snapshot.
    pub async fn reload(&self, actor: &str) -> Result<u64> {
        let cfg = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                return Err(e.into());
            }
        };
        let snapshot = self.compile(&cfg).await?;
        let generation = snapshot.generation;
        {
            let old = self.config.lock().await;
            if old.dns.listen_address != cfg.dns.listen_address
                || old.overwatch.grpc_address != cfg.overwatch.grpc_address
            {
                tracing::warn!("listen addresses changed; they take effect after a restart");
            }
        }
        *self.config.lock().await = Arc::new(cfg);
        self.stream.publish(snapshot);
        self.store
            .audit(
                actor,
                "local",
                "config.reload",
                &format!("{{\"generation\":{generation}}}"),
            )
            .await?;
        tracing::info!(generation, "config reloaded, snapshot published");
        Ok(generation)
    }
}

/// The store URL for `cfg`: `overwatch.store.url`, or SQLite under `data_dir`.
pub fn store_url(cfg: &Config) -> String {
    match &cfg.overwatch.store.url {
        Some(u) => u.clone(),
        None => format!(
            "sqlite://{}",
            cfg.overwatch.data_dir.join("opengslb.db").display()
        ),
    }
}

/// Runs the controlplane until a termination signal.
pub async fn run(config_path: PathBuf, cfg: Config) -> Result<()> {
    let store = Store::open(&store_url(&cfg)).await?;
    let last_serial = store
        .meta("soa_serial")
        .await?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut versions = Versions::new(last_serial);
    let (generation, serial) = versions.advance();
    store.set_meta("soa_serial", &serial.to_string()).await?;
    let first = compile::compile(&cfg, generation, serial, &|_| true);
    tracing::info!(
        generation,
        serial,
        zones = first.zones.len(),
        nodes = first.nodes.len(),
        "first snapshot compiled"
    );
    let grpc_addr = cfg.overwatch.grpc_address;
    let state = Arc::new(State {
        config_path,
        config: Mutex::new(Arc::new(cfg)),
        stream: SnapshotStream::new(first),
        store,
        versions: Mutex::new(versions),
    });

    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|e| Error::Listen {
            addr: grpc_addr,
            message: e.to_string(),
        })?;
    tracing::info!(addr = %grpc_addr, "snapshot stream listening");
    let service =
        SnapshotServiceServer::new(state.stream.clone()).max_encoding_message_size(MAX_MESSAGE);
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            wait_for_stop(state.clone()),
        );
    server.await.map_err(|e| Error::Listen {
        addr: grpc_addr,
        message: e.to_string(),
    })?;
    tracing::info!("controlplane stopped");
    Ok(())
}

/// Resolves on SIGINT/SIGTERM; reloads on SIGHUP meanwhile.
async fn wait_for_stop(state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                let _ = state.reload("signal:SIGHUP").await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        let far_future = u32::MAX - 5;
        let mut v = Versions::new(far_future);
        let (g1, s1) = v.advance();
        let (g2, s2) = v.advance();
        assert!(g2 > g1);
        assert_eq!(s2, s1.wrapping_add(1));
        let mut v = Versions::new(0);
        let (_, s) = v.advance();
        assert!(s > 1_700_000_000, "serial follows the clock: {s}");
    }
}
