//! The operator's admin API: REST (axum, [`rest`]) on `api.address` and the
//! gRPC `AdminService` ([`crate::admin`]) beside the snapshot stream, both
//! over the same operations ([`ops`]) and the same access rules
//! ([`access`]): a client allowlist, a bearer token for every change, and a
//! per-client rate limit.
//!
//! Invariants: hostile input gets a 4xx and never touches state (bodies are
//! size-limited, every field is validated before anything is written);
//! every change is written to the store first, audited (who, what, when,
//! from where) and published as a new snapshot at once; the API answers 503
//! until the first snapshot is published and for changes while the store is
//! unavailable, and never holds a lock the DNS answer path needs.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock, PoisonError, RwLock},
    time::Duration,
};

use tokio::{sync::Mutex, time::Instant};

use crate::{
    error::{Error, Result},
    server::State,
    store::GeoMappingRow,
};

pub mod access;
pub mod error;
pub mod listener;
pub mod ops;
pub mod rest;
pub mod tls;

#[cfg(test)]
mod tests;

pub use access::{Access, Caller};
pub use error::ApiError;

/// What every admin request handler shares: the access rules and, once the
/// controlplane has published its first snapshot, its state.
#[derive(Debug, Clone)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    access: Access,
    state: OnceLock<Arc<State>>,
    started: Instant,
    /// Runtime geo mappings (the store's, cached for lookups).
    geo: RwLock<Arc<Vec<GeoMappingRow>>>,
    /// Serializes geo mapping writers.
    geo_writer: Mutex<()>,
}

// === impl App ===

impl App {
    /// An API that answers 503 (but `live`) until [`App::set_state`].
    pub fn new(access: Access) -> Self {
        Self {
            inner: Arc::new(Inner {
                access,
                state: OnceLock::new(),
                started: Instant::now(),
                geo: RwLock::new(Arc::new(Vec::new())),
                geo_writer: Mutex::new(()),
            }),
        }
    }

    /// The controlplane is up: serve it. Reads the runtime geo mappings.
    pub async fn set_state(&self, state: Arc<State>) -> Result<()> {
        self.reload_geo(&state)
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        let _ = self.inner.state.set(state);
        Ok(())
    }

    /// The controlplane's state; 503 before the first snapshot.
    pub fn state(&self) -> Result<Arc<State>, ApiError> {
        self.inner.state.get().cloned().ok_or_else(|| {
            ApiError::Unavailable("starting: the first snapshot is not published yet".into())
        })
    }

    /// The access rules.
    pub fn access(&self) -> &Access {
        &self.inner.access
    }

    /// Time since the API was set up.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The runtime geo mappings.
    pub fn geo_mappings(&self) -> Arc<Vec<GeoMappingRow>> {
        self.inner
            .geo
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn geo_writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.geo_writer.lock().await
    }

    /// Reads the runtime geo mappings from the store and, when they
    /// changed, compiles them into the geo range table and publishes it.
    async fn reload_geo(&self, state: &State) -> Result<(), ApiError> {
        let rows = state.store.geo_mappings().await?;
        *self
            .inner
            .geo
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(rows.clone());
        state
            .set_geo_mappings(rows)
            .await
            .map_err(|e| ApiError::Unavailable(format!("publishing the geo table: {e}")))?;
        Ok(())
    }
}

// === shared-store geo mappings ===

impl App {
    /// Re-reads the runtime geo mappings (another controlplane sharing the
    /// store may have changed them) and, when they differ from the cached
    /// ones, publishes the new geo table. Whether anything changed.
    pub async fn refresh_geo(&self) -> Result<bool, ApiError> {
        let state = self.state()?;
        let _w = self.geo_writer().await;
        let rows = state.store.geo_mappings().await?;
        if *self.geo_mappings() == rows {
            return Ok(false);
        }
        *self
            .inner
            .geo
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(rows.clone());
        state
            .set_geo_mappings(rows)
            .await
            .map_err(|e| ApiError::Unavailable(format!("publishing the geo table: {e}")))?;
        Ok(true)
    }
}

/// Follows runtime geo mappings changed by other controlplanes sharing the
/// store, like [`crate::overrides::follow`] does for overrides: re-reads
/// them every [`crate::overrides::FOLLOW_EVERY`] and publishes the geo table
/// when they changed. A store error is logged; the last table keeps serving.
pub async fn follow_geo(app: App) {
    let mut tick = tokio::time::interval(crate::overrides::FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match app.refresh_geo().await {
            Ok(true) => tracing::info!("shared geo mappings changed; geo table published"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "re-reading shared geo mappings failed"),
        }
    }
}

/// Binds the REST listener (before the first health round, so the address
/// is checked early and `/api/v1/ready` can say 503 meanwhile).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Listen {
            addr,
            message: e.to_string(),
        })
}

/// Serves the REST API on `listener` until the task is dropped; over TLS
/// with `tls` (`api.tls_cert_file`, see [`tls::acceptor`]); every
/// connection passes `gate` (`api.max_connections`, and over TLS
/// `api.allowed_networks` before the handshake; see [`listener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gate: listener::Gate,
) {
    let router = rest::router(app);
    let service = router.into_make_service_with_connect_info::<listener::Peer>();
    let served = if let Some(acceptor) = tls {
        let listener = match tls::TlsListener::new(listener, acceptor, gate) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "REST API stopped");
                return;
            }
        };
        axum::serve(listener, service).await
    } else {
        axum::serve(listener::PlainListener::new(listener, gate), service).await
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "REST API stopped");
    }
}
