//! The agent's Prometheus metrics and their `/metrics` endpoint (the
//! `metrics:` section of the agent's config file).

use std::net::SocketAddr;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric the agent exports.
#[derive(Debug, Clone)]
pub(crate) struct AgentMetrics {
    registry: Registry,
    /// `opengslb_agent_backends_registered`.
    pub(crate) backends: IntGauge,
    /// `opengslb_agent_heartbeats_sent_total`.
    pub(crate) heartbeats: IntCounter,
    /// `opengslb_agent_heartbeat_failures_total`.
    pub(crate) heartbeat_failures: IntCounter,
    /// `opengslb_agent_overwatch_connections_active`.
    pub(crate) connections: IntGauge,
    /// `opengslb_agent_predictive_state_active{service,signal_type}`.
    pub(crate) predictive: IntGaugeVec,
    /// `opengslb_agent_error_rate_endpoint_failures_total`.
    pub(crate) endpoint_failures: IntCounter,
}

impl AgentMetrics {
    /// Registers every metric.
    pub(crate) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let m = Self {
            backends: IntGauge::new(
                "opengslb_agent_backends_registered",
                "Backends this agent reports.",
            )?,
            heartbeats: IntCounter::new(
                "opengslb_agent_heartbeats_sent_total",
                "Heartbeats sent, all controlplanes together.",
            )?,
            heartbeat_failures: IntCounter::new(
                "opengslb_agent_heartbeat_failures_total",
                "Controlplane links lost or refused (each is retried with backoff).",
            )?,
            connections: IntGauge::new(
                "opengslb_agent_overwatch_connections_active",
                "Controlplanes this agent is registered with now.",
            )?,
            predictive: IntGaugeVec::new(
                Opts::new(
                    "opengslb_agent_predictive_state_active",
                    "1 while a predictive signal drains the service's backend.",
                ),
                &["service", "signal_type"],
            )?,
            endpoint_failures: IntCounter::new(
                "opengslb_agent_error_rate_endpoint_failures_total",
                "Failed reads of predictive.error_rate.endpoint (unreachable, timeout, not the expected JSON).",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.backends.clone()))?;
        m.registry.register(Box::new(m.heartbeats.clone()))?;
        m.registry
            .register(Box::new(m.heartbeat_failures.clone()))?;
        m.registry.register(Box::new(m.connections.clone()))?;
        m.registry.register(Box::new(m.predictive.clone()))?;
        m.registry.register(Box::new(m.endpoint_failures.clone()))?;
        Ok(m)
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, metrics: AgentMetrics) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

async fn scrape(State(metrics): State<AgentMetrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// Binds the metrics listener (a taken port is a start-up error).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
