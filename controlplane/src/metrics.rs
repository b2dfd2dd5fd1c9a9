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
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
        for c in [
            Box::new(check_results.clone()) as Box<dyn prometheus::core::Collector>,
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
            in_all_down: Mutex::new(HashSet::new()),
        })
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
