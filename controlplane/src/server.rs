//! Start-up and lifetime of a controlplane process.
//!
//! Order: store (migrations) → metrics and gRPC listeners bound → the first
//! health round (every probed server checked once, bounded by its timeout)
//! → compile the first snapshot → serve `SnapshotService` and `/metrics`.
//! Every health decision change recompiles and publishes at once; SIGHUP
//! reloads the config file and publishes a new snapshot when it is valid
//! (an invalid file is logged and the running config kept); SIGINT/SIGTERM
//! stop.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use opengslb_proto::snapshot_service_server::SnapshotServiceServer;
use tokio::sync::{watch, Mutex};

use crate::{
    admin, api, compile,
    config::{self, Config},
    error::{Error, Result},
    health::Health,
    metrics::{self, Metrics},
    overrides::{Overrides, WithOverrides},
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
    /// Health checking (external validation).
    pub health: Health,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Manual overrides (outrank every other health signal).
    pub overrides: Overrides,
    /// DNSSEC keys and signing status (DS records, `dnssec status`).
    pub dnssec: crate::dnssec::Dnssec,
    /// Agents and what they report (see [`crate::overwatch`]).
    pub overwatch: crate::overwatch::Overwatch,
    /// Held for every compile + publish, so snapshots go out in generation
    /// order and always from the config in force.
    publisher: Mutex<Publisher>,
    /// When the compiler asked to be run again (a failback hold-down ends).
    recompile_at: watch::Sender<Option<SystemTime>>,
    /// The geo range table of the last published snapshot (what
    /// `/api/v1/geo/test` answers from).
    geo: std::sync::RwLock<crate::geo::VersionedTable>,
    /// Latency-routing metrics.
    routing_metrics: crate::geo::metrics::RoutingMetrics,
}

/// What one compile + publish needs exclusively.
#[derive(Debug)]
struct Publisher {
    versions: Versions,
    /// The snapshot compiler and its memory across compiles.
    compiler: compile::Compiler,
}

// === impl State ===

impl State {
    /// Compiles the config in force (first replaced by `next` when given)
    /// with the health of now, the next generation and serial; persists the
    /// serial and publishes. Returns the generation.
    async fn publish(&self, next: Option<Arc<Config>>) -> Result<u64> {
        let mut p = self.publisher.lock().await;
        if let Some(next) = &next {
            // Zones a reload adds get their keys before they are compiled.
            self.dnssec.ensure_keys(&self.store, next).await?;
        }
        let (generation, serial) = p.versions.advance();
        self.store
            .set_meta("soa_serial", &serial.to_string())
            .await?;
        let cfg = {
            let mut current = self.config.lock().await;
            if let Some(next) = next {
                *current = next;
            }
            current.clone()
        };
        let view = WithOverrides::new(
            self.overwatch
                .view(&cfg, &self.health, self.health.view(&cfg)),
            self.overrides.current(),
        );
        // Incremental when only health changed (see compile::incremental).
        let compiled =
            p.compiler
                .compile_update(&cfg, generation, serial, &view, SystemTime::now());
        *self
            .geo
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = compiled.geo.clone();
        self.routing_metrics.compiled(&compiled.latency);
        match compiled.published {
            compile::incremental::Published::Full(snapshot) => self.stream.publish(snapshot),
            compile::incremental::Published::Delta(delta) => {
                if !self.stream.publish_delta(delta) {
                    // Not against what the stream holds: send it whole.
                    if let Some(full) = p.compiler.last_snapshot() {
                        self.stream.publish(full.clone());
                    }
                }
            }
        }
        self.metrics.compiled(
            &view.inner.inner.healthy_per_region,
            &compiled.all_down,
            generation,
        );
        self.metrics
            .overrides_in_force(view.overrides.keys().map(|k| k.service.as_str()));
        let at = compiled.recompile_at;
        self.recompile_at.send_if_modified(|cur| {
            let changed = *cur != at;
            *cur = at;
            changed
        });
        Ok(generation)
    }

    /// Recompiles and publishes the config in force (a health decision
    /// changed, or a hold-down ended).
    pub async fn recompile(&self, reason: &'static str) -> Result<u64> {
        let started = tokio::time::Instant::now();
        let generation = self.publish(None).await?;
        tracing::debug!(
            generation,
            reason,
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "snapshot recompiled and published"
        );
        Ok(generation)
    }

    /// The geo range table in force.
    pub fn geo_table(&self) -> crate::geo::VersionedTable {
        self.geo
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the runtime geo mappings and publishes, unless they are
    /// the ones in force.
    pub async fn set_geo_mappings(&self, rows: Vec<crate::store::GeoMappingRow>) -> Result<()> {
        {
            let mut p = self.publisher.lock().await;
            if *p.compiler.geo_mappings() == rows {
                return Ok(());
            }
            p.compiler.set_geo_mappings(Arc::new(rows));
        }
        self.recompile("geo mappings").await.map(drop)
    }

    /// Reads the GeoIP database again and publishes its table; on error
    /// (logged) the old table keeps serving.
    pub async fn reload_geo_db(&self) -> Result<u64> {
        let cfg = self.config.lock().await.clone();
        let db = match load_geo_db(&cfg) {
            Ok(db) => db,
            Err(e) => {
                self.routing_metrics.geo_db_reloaded(false);
                tracing::error!(error = %e, "GeoIP database reload failed; keeping the old table");
                return Err(e);
            }
        };
        self.routing_metrics.geo_db_reloaded(true);
        self.publisher.lock().await.compiler.set_geo_db(db);
        self.recompile("geo database").await
    }

    /// Reloads the config file; on success publishes a new snapshot. Servers
    /// it adds are checked once (bounded by their timeout) before they are
    /// served; unchanged checks keep their state.
    pub async fn reload(&self, actor: &str) -> Result<u64> {
        let result = self.reload_inner(actor).await;
        self.metrics.reloaded(result.is_ok());
        result
    }

    async fn reload_inner(&self, actor: &str) -> Result<u64> {
        let cfg = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; keeping the running config");
                return Err(e.into());
            }
        };
        // The GeoIP database is read again too; a bad one is logged and
        // counted, and the old database keeps serving while the rest of
        // the config applies (start-up, by contrast, stops on it).
        match load_geo_db(&cfg) {
            Ok(db) => {
                self.routing_metrics.geo_db_reloaded(true);
                self.publisher.lock().await.compiler.set_geo_db(db);
            }
            Err(e) => {
                self.routing_metrics.geo_db_reloaded(false);
                tracing::error!(
                    error = %e,
                    "GeoIP database reload failed; keeping the old table, applying the rest of the config"
                );
            }
        }
        let added = self.health.add(&cfg);
        self.health.settle(&added).await;
        {
            let old = self.config.lock().await;
            let changed = listeners_changed(&old, &cfg);
            if !changed.is_empty() {
                tracing::warn!(
                    settings = %changed.join(", "),
                    "listen addresses changed; they take effect after a restart"
                );
            }
        }
        let cfg = Arc::new(cfg);
        let generation = self.publish(Some(cfg.clone())).await?;
        self.metrics.config_loaded(&cfg);
        self.health.retain(&cfg);
        self.overwatch.sync_validation(&cfg);
        self.store
            .audit(
                actor,
                "local",
                "config.reload",
                &format!("{{\"generation\":{generation}}}"),
            )
            .await?;
        tracing::info!(
            generation,
            new_targets = added.len(),
            "config reloaded, snapshot published"
        );
        Ok(generation)
    }
}

/// The listener settings that differ between `old` and `new`; a reload
/// cannot apply them (they take effect after a restart).
pub fn listeners_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(
        old.dns.listen_address != new.dns.listen_address,
        "dns.listen_address",
    );
    check(
        old.overwatch.grpc_address != new.overwatch.grpc_address,
        "overwatch.grpc_address",
    );
    check(
        old.overwatch.agent_listen != new.overwatch.agent_listen,
        "overwatch.agent_listen",
    );
    check(old.api.address != new.api.address, "api.address");
    check(old.api.enabled != new.api.enabled, "api.enabled");
    check(
        old.api.tls_cert_file != new.api.tls_cert_file
            || old.api.tls_key_file != new.api.tls_key_file,
        "api.tls_cert_file",
    );
    check(
        old.api.max_connections != new.api.max_connections,
        "api.max_connections",
    );
    check(
        old.metrics.address != new.metrics.address,
        "metrics.address",
    );
    check(
        old.metrics.enabled != new.metrics.enabled,
        "metrics.enabled",
    );
    changed
}

/// Reads `overwatch.geolocation.database_path`, when set.
pub fn load_geo_db(cfg: &Config) -> Result<Option<Arc<crate::geo::GeoDb>>> {
    let Some(path) = &cfg.overwatch.geolocation.database_path else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let db = crate::geo::GeoDb::load(path)?;
    tracing::info!(
        path = %path.display(),
        database_type = %db.database_type,
        networks = db.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "GeoIP database loaded"
    );
    Ok(Some(Arc::new(db)))
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
///
/// Start-up truth: every probed server is checked once (bounded by its
/// timeout) before the first snapshot is compiled; the gRPC listener is
/// bound first, so early dataplanes wait in its backlog instead of failing.
pub async fn run(config_path: PathBuf, cfg: Config) -> Result<()> {
    let store = Store::open(&store_url(&cfg)).await?;
    let last_serial = store
        .meta("soa_serial")
        .await?
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let overrides = Overrides::load(&store).await?;
    let geo_db = load_geo_db(&cfg)?;
    let geo_mappings = store.geo_mappings().await?;
    let dnssec = crate::dnssec::Dnssec::open(&store, &cfg).await?;
    let app = api::App::new(api::Access::from_config(&cfg.api)?);
    let metrics = Arc::new(Metrics::new()?);
    metrics.register(Box::new(dnssec.collector()?))?;
    let metrics_listener = if cfg.metrics.enabled {
        Some(metrics::bind(cfg.metrics.address).await?)
    } else {
        None
    };
    let grpc_addr = cfg.overwatch.grpc_address;
    let listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|e| Error::Listen {
            addr: grpc_addr,
            message: e.to_string(),
        })?;

    // The REST API answers from now on (503 but for `live` until the first
    // snapshot is published).
    let api_server = if cfg.api.enabled {
        let tls = api::tls::acceptor(&cfg.api)?;
        let l = api::bind(cfg.api.address).await?;
        tracing::info!(addr = %cfg.api.address, tls = tls.is_some(), "REST API listening");
        let gate = api::listener::Gate::new(
            &cfg.api,
            api::listener::ConnMetrics::new(metrics.registry())?,
        );
        Some(tokio::spawn(api::serve(l, app.clone(), tls, gate)))
    } else {
        None
    };

    let health = Health::new(metrics.clone())?;
    let overwatch = crate::overwatch::Overwatch::new(&metrics)?;
    let round = tokio::time::Instant::now();
    let first_round = health.add(&cfg);
    health.settle(&first_round).await;
    tracing::info!(
        targets = first_round.len(),
        elapsed_ms = u64::try_from(round.elapsed().as_millis()).unwrap_or(u64::MAX),
        "first health round done"
    );

    let mut publisher = Publisher {
        versions: Versions::new(last_serial),
        compiler: compile::Compiler::with_dnssec(dnssec.clone()),
    };
    publisher.compiler.set_geo_db(geo_db);
    publisher.compiler.set_geo_mappings(Arc::new(geo_mappings));
    let (generation, serial) = publisher.versions.advance();
    store.set_meta("soa_serial", &serial.to_string()).await?;
    let view = WithOverrides::new(health.view(&cfg), overrides.current());
    // Kept as the `Arc` in force, so the next health change compiles
    // incrementally against this result.
    let cfg = Arc::new(cfg);
    let first =
        publisher
            .compiler
            .compile_update(&cfg, generation, serial, &view, SystemTime::now());
    // A compiler's first compile is a full one.
    let first_snapshot = match first.published {
        compile::incremental::Published::Full(s) => s,
        compile::incremental::Published::Delta(_) => publisher
            .compiler
            .last_snapshot()
            .cloned()
            .unwrap_or_default(),
    };
    metrics.compiled(&view.inner.healthy_per_region, &first.all_down, generation);
    let routing_metrics = crate::geo::metrics::RoutingMetrics::new(&metrics)?;
    routing_metrics.compiled(&first.latency);
    metrics.config_loaded(&cfg);
    metrics.overrides_in_force(view.overrides.keys().map(|k| k.service.as_str()));
    tracing::info!(
        generation,
        serial,
        zones = first_snapshot.zones.len(),
        nodes = first_snapshot.nodes.len(),
        "first snapshot compiled"
    );
    let state = Arc::new(State {
        config_path,
        config: Mutex::new(cfg.clone()),
        stream: SnapshotStream::new(first_snapshot).with_metrics(metrics.clone()),
        store,
        health,
        metrics: metrics.clone(),
        overrides,
        dnssec,
        overwatch,
        publisher: Mutex::new(publisher),
        recompile_at: watch::Sender::new(first.recompile_at),
        geo: std::sync::RwLock::new(first.geo),
        routing_metrics,
    });
    let recompiler = tokio::spawn(recompile_loop(state.clone()));
    let key_sync = tokio::spawn(crate::dnssec::sync::run(state.clone()));
    let rollover = tokio::spawn(crate::dnssec::rollover::run(state.clone()));
    let geo_watch = tokio::spawn(crate::geo::watch_database(state.clone()));
    crate::overwatch::start(state.clone()).await?;
    app.set_state(state.clone()).await?;
    let follower = (state.store.engine() == "postgres")
        .then(|| tokio::spawn(crate::overrides::follow(state.clone())));
    let geo_follower =
        (state.store.engine() == "postgres").then(|| tokio::spawn(api::follow_geo(app.clone())));
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "metrics listening");
        tokio::spawn(metrics::serve(l, metrics, state.stream.clone()))
    });

    tracing::info!(addr = %grpc_addr, "snapshot stream listening");
    let service =
        SnapshotServiceServer::new(state.stream.clone()).max_encoding_message_size(MAX_MESSAGE);
    let (reflection_v1, reflection_v1alpha) = admin::reflection()?;
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .add_service(admin::service(app.clone()))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            wait_for_stop(state.clone()),
        );
    let served = server.await.map_err(|e| Error::Listen {
        addr: grpc_addr,
        message: e.to_string(),
    });
    recompiler.abort();
    key_sync.abort();
    rollover.abort();
    geo_watch.abort();
    for task in [api_server, follower, geo_follower].into_iter().flatten() {
        task.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    served?;
    tracing::info!("controlplane stopped");
    Ok(())
}

/// A running controlplane's state without its listeners or health probes
/// (admin API tests); the first snapshot is compiled and published.
#[cfg(test)]
pub(crate) async fn test_state(config_path: PathBuf, cfg: Config, store: Store) -> Arc<State> {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let routing_metrics = crate::geo::metrics::RoutingMetrics::new(&metrics).expect("metrics");
    let health = Health::new(metrics.clone()).expect("health");
    let overwatch = crate::overwatch::Overwatch::new(&metrics).expect("overwatch");
    let overrides = Overrides::load(&store).await.expect("overrides");
    let mut publisher = Publisher {
        versions: Versions::new(0),
        compiler: compile::Compiler::new(),
    };
    let (generation, serial) = publisher.versions.advance();
    let view = WithOverrides::new(health.view(&cfg), overrides.current());
    let first = publisher
        .compiler
        .compile(&cfg, generation, serial, &view, SystemTime::now());
    Arc::new(State {
        config_path,
        config: Mutex::new(Arc::new(cfg)),
        stream: SnapshotStream::new(first.snapshot),
        store,
        health,
        metrics,
        overrides,
        dnssec: crate::dnssec::Dnssec::disabled(),
        overwatch,
        publisher: Mutex::new(publisher),
        recompile_at: watch::Sender::new(None),
        geo: std::sync::RwLock::new(first.geo),
        routing_metrics,
    })
}

/// Recompiles at once on every health decision change, and when a
/// failback hold-down ends.
async fn recompile_loop(state: Arc<State>) {
    let mut at = state.recompile_at.subscribe();
    loop {
        let when = *at.borrow_and_update();
        let timer = async move {
            match when {
                Some(t) => {
                    let wait = t.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let reason = tokio::select! {
            () = state.health.changed() => "health",
            () = state.overwatch.changed() => "agent",
            () = timer => "failback",
            Ok(()) = at.changed() => continue,
        };
        if let Err(e) = state.recompile(reason).await {
            tracing::error!(error = %e, reason, "recompile failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Make sure the retry happens even without another change.
            state.recompile_at.send_replace(Some(SystemTime::now()));
        }
    }
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

    #[test]
    fn every_listener_change_is_named_for_a_restart() {
        let base = r#"
dns:
  listen_address: "127.0.0.1:5353"
  zones: [gslb.test]
regions:
  - name: local
    servers:
      - {address: 192.0.2.1, port: 80}
    health_check: {type: none}
domains:
  - {name: www.gslb.test, regions: [local]}
"#;
        let parse = |extra: &str| {
            config::parse(&format!("{base}{extra}"), std::path::Path::new("gslb.yaml")).unwrap()
        };
        let old = parse("");
        assert!(listeners_changed(&old, &parse("")).is_empty());
        // A change that is not a listener needs no restart.
        let not_listener = parse("api:\n  trust_proxy_headers: true\n");
        assert!(listeners_changed(&old, &not_listener).is_empty());
        for (extra, name) in [
            ("api:\n  address: \"127.0.0.1:18080\"\n", "api.address"),
            ("api:\n  enabled: false\n", "api.enabled"),
            ("api:\n  max_connections: 64\n", "api.max_connections"),
            (
                "metrics:\n  address: \"127.0.0.1:19090\"\n",
                "metrics.address",
            ),
            (
                "overwatch:\n  agent_listen: \"127.0.0.1:17946\"\n",
                "overwatch.agent_listen",
            ),
            (
                "overwatch:\n  grpc_address: \"127.0.0.1:19443\"\n",
                "overwatch.grpc_address",
            ),
        ] {
            let new = parse(extra);
            assert_eq!(listeners_changed(&old, &new), vec![name], "{extra}");
        }
        let moved = config::parse(
            &base.replace("127.0.0.1:5353", "127.0.0.1:5354"),
            std::path::Path::new("gslb.yaml"),
        )
        .unwrap();
        assert_eq!(listeners_changed(&old, &moved), vec!["dns.listen_address"]);
    }
}
