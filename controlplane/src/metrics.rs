//! The controlplane's Prometheus metrics and their `/metrics` endpoint.
//!
//! Label sets are bounded by the config: regions, `address:port` of
//! configured servers, configured domains, fixed result and mode names.
//! Nothing a client sends ever becomes a label.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{
    error::{Error, Result},
    stream::SnapshotStream,
};

/// Every metric the controlplane exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    check_results: IntCounterVec,
    check_duration: Histogram,
    healthy_servers: IntGaugeVec,
    all_down: IntCounterVec,
    generation: IntGauge,
    subscribers: IntGauge,
    config_loaded_at: Gauge,
    configured_domains: IntGauge,
    configured_servers: IntGauge,
    reloads: IntCounterVec,
    overrides_active: IntGaugeVec,
    override_changes: IntCounter,
    push_seconds: Histogram,
    dataplane_generation: IntGaugeVec,
    /// Domains in the `when_all_down` fallback at the last compile.
    in_all_down: Mutex<HashSet<(String, &'static str)>>,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let check_results = IntCounterVec::new(
            Opts::new(
                "opengslb_health_check_results_total",
                "Health check results by region, server (address:port) and result.",
            ),
            &["region", "server", "result"],
        )
        .map_err(err)?;
        let check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "opengslb_health_check_duration_seconds",
                "Duration of health checks (connect to decision).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )
        .map_err(err)?;
        let healthy_servers = IntGaugeVec::new(
            Opts::new(
                "opengslb_healthy_servers",
                "Servers of the region healthy at the last compile.",
            ),
            &["region"],
        )
        .map_err(err)?;
        let all_down = IntCounterVec::new(
            Opts::new(
                "opengslb_routing_all_down_total",
                "Times a domain entered its when_all_down fallback, by mode.",
            ),
            &["domain", "mode"],
        )
        .map_err(err)?;
        let generation = IntGauge::new(
            "opengslb_snapshot_generation",
            "Generation of the snapshot being served (microseconds since the epoch at compile).",
        )
        .map_err(err)?;
        let subscribers = IntGauge::new(
            "opengslb_snapshot_subscribers",
            "Dataplanes subscribed to the snapshot stream.",
        )
        .map_err(err)?;
        let app_info = IntGaugeVec::new(
            Opts::new("opengslb_app_info", "Always 1; the labels name the build."),
            &["version", "component"],
        )
        .map_err(err)?;
        app_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "controlplane"])
            .set(1);
        let config_loaded_at = Gauge::new(
            "opengslb_config_load_timestamp_seconds",
            "When the config in force was loaded (start or last successful reload), Unix seconds.",
        )
        .map_err(err)?;
        let configured_domains = IntGauge::new(
            "opengslb_configured_domains",
            "Load-balanced domains in the config in force.",
        )
        .map_err(err)?;
        let configured_servers = IntGauge::new(
            "opengslb_configured_servers",
            "Servers (of every region) in the config in force.",
        )
        .map_err(err)?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "opengslb_config_reloads_total",
                "Config reloads (SIGHUP, REST, gRPC) by result: success or failure.",
            ),
            &["result"],
        )
        .map_err(err)?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let overrides_active = IntGaugeVec::new(
            Opts::new(
                "opengslb_overrides_active",
                "Manual overrides in force, by service.",
            ),
            &["service"],
        )
        .map_err(err)?;
        let override_changes = IntCounter::new(
            "opengslb_overrides_changes_total",
            "Overrides set or cleared through this controlplane's APIs.",
        )
        .map_err(err)?;
        let push_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "opengslb_snapshot_push_seconds",
                "From compile to a snapshot update handed to a dataplane's stream.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .map_err(err)?;
        let dataplane_generation = IntGaugeVec::new(
            Opts::new(
                "opengslb_dataplane_snapshot_generation",
                "Generation last sent to each subscribed dataplane, by its node id (removed when it unsubscribes).",
            ),
            &["node_id"],
        )
        .map_err(err)?;
        for c in [
            Box::new(app_info) as Box<dyn prometheus::core::Collector>,
            Box::new(config_loaded_at.clone()),
            Box::new(configured_domains.clone()),
            Box::new(configured_servers.clone()),
            Box::new(reloads.clone()),
            Box::new(overrides_active.clone()),
            Box::new(override_changes.clone()),
            Box::new(push_seconds.clone()),
            Box::new(dataplane_generation.clone()),
            Box::new(check_results.clone()),
            Box::new(check_duration.clone()),
            Box::new(healthy_servers.clone()),
            Box::new(all_down.clone()),
            Box::new(generation.clone()),
            Box::new(subscribers.clone()),
        ] {
            registry.register(c).map_err(err)?;
        }
        Ok(Self {
            registry,
            check_results,
            check_duration,
            healthy_servers,
            all_down,
            generation,
            subscribers,
            config_loaded_at,
            configured_domains,
            configured_servers,
            reloads,
            overrides_active,
            override_changes,
            push_seconds,
            dataplane_generation,
            in_all_down: Mutex::new(HashSet::new()),
        })
    }

    /// A config was loaded (at start or by a successful reload).
    pub fn config_loaded(&self, cfg: &crate::config::Config) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_loaded_at.set(now.as_secs_f64());
        self.configured_domains
            .set(i64::try_from(cfg.domains.len()).unwrap_or(i64::MAX));
        let servers: usize = cfg.regions.iter().map(|r| r.servers.len()).sum();
        self.configured_servers
            .set(i64::try_from(servers).unwrap_or(i64::MAX));
    }

    /// Counts one reload attempt.
    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Sets the active override counts from the overrides in force (the
    /// whole set: services without overrides disappear).
    pub fn overrides_in_force(&self, services: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        for s in services {
            *counts.entry(s.as_ref().to_owned()).or_default() += 1;
        }
        self.overrides_active.reset();
        for (service, n) in counts {
            self.overrides_active.with_label_values(&[&service]).set(n);
        }
    }

    /// Counts one override set or cleared through an API.
    pub fn override_changed(&self) {
        self.override_changes.inc();
    }

    /// A snapshot update of `generation` (microseconds since the epoch at
    /// compile) was handed to dataplane `node_id`'s stream. The first one of
    /// a stream (the snapshot in force, maybe old) is not a push latency.
    pub fn pushed(&self, node_id: &str, generation: u64, first: bool) {
        if !first {
            self.observe_push(generation);
        }
        self.dataplane_generation
            .with_label_values(&[node_id])
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    fn observe_push(&self, generation: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        #[allow(clippy::cast_precision_loss)]
        self.push_seconds
            .observe(now.saturating_sub(generation) as f64 / 1e6);
    }

    /// Dataplane `node_id` unsubscribed.
    pub fn unsubscribed(&self, node_id: &str) {
        let _ = self.dataplane_generation.remove_label_values(&[node_id]);
    }

    /// The registry, for metrics registered by other modules
    /// (`crate::overwatch`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers a collector of another part (e.g. the DNSSEC metrics).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<()> {
        self.registry.register(c).map_err(err)
    }

    /// Counts one probe for each (region, server) that uses its target.
    pub fn probed<'a>(
        &self,
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
        result: &str,
        elapsed: Duration,
    ) {
        for (region, server) in users {
            self.check_results
                .with_label_values(&[region, server, result])
                .inc();
        }
        self.check_duration.observe(elapsed.as_secs_f64());
    }

    /// Records what a compile decided: healthy servers per region (the
    /// whole set, regions removed by a reload disappear), the domains in
    /// their all-down fallback (counted when they enter it) and the
    /// generation now served.
    pub fn compiled(
        &self,
        healthy: &[(String, usize)],
        all_down: &[(String, &'static str)],
        generation: u64,
    ) {
        self.healthy_servers.reset();
        for (region, n) in healthy {
            self.healthy_servers
                .with_label_values(&[region.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let now: HashSet<(String, &'static str)> = all_down.iter().cloned().collect();
        let mut before = self
            .in_all_down
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (domain, mode) in now.difference(&before) {
            self.all_down
                .with_label_values(&[domain.as_str(), mode])
                .inc();
        }
        *before = now;
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The text exposition, with the subscriber count as of now.
    pub fn render(&self, subscribers: usize) -> String {
        self.subscribers
            .set(i64::try_from(subscribers).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn err(e: prometheus::Error) -> Error {
    Error::Metrics(e.to_string())
}

/// Binds the metrics listener (at start-up, so a taken port is an error).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Listen {
            addr,
            message: e.to_string(),
        })
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stream: SnapshotStream,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, stream));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

async fn scrape(
    State((metrics, stream)): State<(Arc<Metrics>, SnapshotStream)>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(stream.subscribers()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_down_counts_entries_not_compiles() {
        let m = Metrics::new().unwrap();
        let down = vec![("www.example.test".to_owned(), "servfail")];
        m.compiled(&[("eu".into(), 0)], &down, 7);
        m.compiled(&[("eu".into(), 0)], &down, 8);
        m.compiled(&[("eu".into(), 1)], &[], 9);
        m.compiled(&[("eu".into(), 0)], &down, 10);
        m.probed(
            [("eu", "192.0.2.1:80")],
            "timeout",
            Duration::from_millis(5),
        );
        let text = m.render(3);
        assert!(
            text.contains(
                "opengslb_routing_all_down_total{domain=\"www.example.test\",mode=\"servfail\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("opengslb_healthy_servers{region=\"eu\"} 0"));
        assert!(text.contains("opengslb_snapshot_generation 10"));
        assert!(text.contains("opengslb_snapshot_subscribers 3"));
        assert!(text.contains(
            "opengslb_health_check_results_total{region=\"eu\",result=\"timeout\",server=\"192.0.2.1:80\"} 1"
        ));
        assert!(text.contains("opengslb_health_check_duration_seconds_count 1"));
    }
}
