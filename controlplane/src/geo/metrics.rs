//! The controlplane's latency-routing metrics (the geo decisions are
//! counted per query by the dataplane). Labels: configured domains, the
//! `address` of configured servers, fixed reasons.

use prometheus::{GaugeVec, IntCounterVec, Opts};

use crate::{
    compile::LatencyReport,
    error::{Error, Result},
    metrics::Metrics,
};

/// `opengslb_routing_latency_*`.
#[derive(Debug, Clone)]
pub struct RoutingMetrics {
    selected_ms: GaugeVec,
    rejected: IntCounterVec,
    fallback: IntCounterVec,
    db_reloads: IntCounterVec,
}

impl RoutingMetrics {
    /// Registers the latency metrics in `metrics`' registry.
    pub fn new(metrics: &Metrics) -> Result<Self> {
        let err = |e: prometheus::Error| Error::Metrics(e.to_string());
        let selected_ms = GaugeVec::new(
            Opts::new(
                "opengslb_routing_latency_selected_ms",
                "Latency EMA (ms) of each server the latency policy answers with, at the last compile.",
            ),
            &["domain", "server"],
        )
        .map_err(err)?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "opengslb_routing_latency_rejected_total",
                "Healthy servers a latency decision left out (too_slow, insufficient_samples), counted per compile.",
            ),
            &["domain", "reason"],
        )
        .map_err(err)?;
        let fallback = IntCounterVec::new(
            Opts::new(
                "opengslb_routing_latency_fallback_total",
                "Latency decisions that fell back to round-robin (insufficient_samples, all_too_slow), counted per compile.",
            ),
            &["domain", "reason"],
        )
        .map_err(err)?;
        let db_reloads = IntCounterVec::new(
            Opts::new(
                "opengslb_geo_database_reloads_total",
                "GeoIP database reads on SIGHUP/config reload or a file change, by result (success, failure: the old table keeps serving).",
            ),
            &["result"],
        )
        .map_err(err)?;
        for result in ["success", "failure"] {
            db_reloads.with_label_values(&[result]);
        }
        metrics.register(Box::new(db_reloads.clone()))?;
        metrics.register(Box::new(selected_ms.clone()))?;
        metrics.register(Box::new(rejected.clone()))?;
        metrics.register(Box::new(fallback.clone()))?;
        Ok(Self {
            selected_ms,
            rejected,
            fallback,
            db_reloads,
        })
    }

    /// Counts one GeoIP database reload (`ok`: read and in use; else the
    /// old table keeps serving).
    pub fn geo_db_reloaded(&self, ok: bool) {
        self.db_reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Records the latency decisions of one compile.
    pub fn compiled(&self, reports: &[LatencyReport]) {
        self.selected_ms.reset();
        for r in reports {
            for (server, ms) in &r.selected {
                self.selected_ms
                    .with_label_values(&[r.domain.as_str(), server.as_str()])
                    .set(*ms);
            }
            for (reason, n) in &r.rejected {
                self.rejected
                    .with_label_values(&[r.domain.as_str(), reason])
                    .inc_by(*n);
            }
            if let Some(reason) = r.fallback {
                self.fallback
                    .with_label_values(&[r.domain.as_str(), reason])
                    .inc();
            }
        }
    }
}
