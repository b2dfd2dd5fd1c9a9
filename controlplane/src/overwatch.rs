//! Agents: the `AgentService` on `overwatch.agent_listen` and what the
//! controlplane makes of what agents report.
//!
//! Authentication (DESIGN.md, "Security"): TLS where the agent presents its
//! self-signed certificate ([`tls`]); on its first accepted `Register` the
//! controlplane checks the service token against `overwatch.agent_tokens`
//! and pins the certificate's SHA-256 in the store (TOFU). Every later
//! connection of that agent id must present the pinned certificate; a
//! revoked agent is refused for good. An agent reports only backends of the
//! services its token covers.
//!
//! Health authority, highest first, shown per backend as `authority`:
//! `override` (manual) > `predictive` (the agent drains the backend's
//! weight) > `validation` (this controlplane's own check, when
//! `overwatch.validation` probes the backend; it always wins over the
//! agent's claim, and can keep a stale backend in) > `stale` (no heartbeat
//! for `min(interval × missed_threshold, overwatch.stale.threshold)`) >
//! `agent` (the claim). Overrides are applied by
//! [`crate::overrides::WithOverrides`] around the [`AgentView`] built here.
//!
//! Agent backends and configured servers: a backend is known by its address;
//! a configured server with the address an agent reports *is* that backend
//! (the agent's signals apply to it by the order above). An address no
//! configured server of the domain has joins the domain's answers as a
//! registered backend, counted in the agent's region when the domain uses
//! it, else in the domain's first region.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use opengslb_health::{Check, CheckKind, Observer, Outcome, Prober, Status, Target};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio::sync::Notify;

use crate::{
    compile::{HealthView, Registered, ServerHealth},
    config::{Config, DnsName, HealthCheckType, ServerRef},
    error::{Error, Result},
    health::{Health, View},
    metrics::Metrics,
    server::State,
};

pub mod registry;
pub mod service;
pub mod tls;

#[cfg(test)]
mod tests;

pub use registry::{Claim, Registry};

/// Most agent connections open at once (TLS handshakes included), unless
/// `overwatch.max_agent_connections` says otherwise.
pub const MAX_CONNECTIONS: usize = 8192;

/// Largest gRPC message accepted from an agent.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// How often staleness is checked.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Which signal decided a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Authority {
    /// A manual override.
    Override,
    /// The agent's predictive draining (weight below full).
    Predictive,
    /// This controlplane's own check.
    Validation,
    /// The agent stopped sending heartbeats.
    Stale,
    /// The agent's claim.
    Agent,
    /// Nothing but the config (no check, no agent).
    Config,
}

// === impl Authority ===

impl Authority {
    /// The API and metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Override => "override",
            Self::Predictive => "predictive",
            Self::Validation => "validation",
            Self::Stale => "stale",
            Self::Agent => "agent",
            Self::Config => "config",
        }
    }

    const ALL: [Self; 6] = [
        Self::Override,
        Self::Predictive,
        Self::Validation,
        Self::Stale,
        Self::Agent,
        Self::Config,
    ];
}

/// The signals about one backend, and the decision they make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    /// Weight share from predictive draining, per mille.
    pub permille: u32,
    /// The controlplane's own check: `None` when it does not check this
    /// backend; `Some(None)` when it does but has no result yet.
    pub validation: Option<Option<bool>>,
    /// The agent is stale.
    pub stale: bool,
    /// The agent's claim.
    pub claim: Claim,
}

/// What the signals decide (overrides are laid over this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Served.
    pub healthy: bool,
    /// Weight share, per mille.
    pub permille: u32,
    /// Which signal decided.
    pub authority: Authority,
    /// Validation and the agent's claim disagree.
    pub veto: bool,
}

/// Decides one backend by the authority order (see the module docs).
pub fn decide(s: Signals) -> Decision {
    let permille = s.permille.min(1000);
    let claimed = match s.claim {
        Claim::Healthy => Some(true),
        Claim::Unhealthy => Some(false),
        Claim::Unknown => None,
    };
    let veto = matches!((s.validation, claimed), (Some(Some(v)), Some(c)) if v != c);
    let (healthy, authority) = match s.validation {
        Some(v) => (v == Some(true), Authority::Validation),
        None if s.stale => (false, Authority::Stale),
        None => (claimed == Some(true), Authority::Agent),
    };
    if permille == 0 {
        return Decision {
            healthy: false,
            permille,
            authority: Authority::Predictive,
            veto,
        };
    }
    Decision {
        healthy,
        permille,
        authority: if healthy && permille < 1000 {
            Authority::Predictive
        } else {
            authority
        },
        veto,
    }
}

/// The controlplane's agent side.
#[derive(Debug)]
pub struct Overwatch {
    /// Agents heard from.
    pub registry: Registry,
    /// Prometheus metrics of this module.
    pub metrics: OverwatchMetrics,
    changed: Arc<Notify>,
    /// External validation of agent-only backends.
    prober: Prober,
    /// Backends currently vetoed by validation (counted on entry).
    vetoed: Mutex<HashSet<(String, SocketAddr)>>,
}

/// Wakes the recompile loop when a validation decision changes.
#[derive(Debug)]
struct Wake(Arc<Notify>);

impl Observer for Wake {
    fn probed(&self, _: &Target, _: &Outcome, _: &Status, changed: bool) {
        if changed {
            self.0.notify_one();
        }
    }
}

// === impl Overwatch ===

impl Overwatch {
    /// No agents yet; metrics registered in `metrics`.
    pub fn new(metrics: &Metrics) -> Result<Self> {
        let changed = Arc::new(Notify::new());
        Ok(Self {
            registry: Registry::new(),
            metrics: OverwatchMetrics::new(metrics.registry())?,
            prober: Prober::new(Arc::new(Wake(changed.clone())))?,
            changed,
            vetoed: Mutex::new(HashSet::new()),
        })
    }

    /// Resolves at the next change agents made to what is served.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Asks for a recompile.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// Starts or stops validation of agent-only backends so that exactly
    /// the registered ones with a check are probed (`overwatch.validation`).
    pub fn sync_validation(&self, cfg: &Config) {
        let targets = self.validation_targets(cfg);
        let keep: HashSet<Target> = targets.values().cloned().collect();
        self.prober.add(keep.iter().cloned().map(|t| (t, 0.3)));
        self.prober.retain(&keep);
    }

    /// The validation target of every agent-only backend (by address).
    fn validation_targets(&self, cfg: &Config) -> HashMap<SocketAddr, Target> {
        let mut out = HashMap::new();
        let v = &cfg.overwatch.validation;
        if !v.enabled {
            return out;
        }
        let configured = configured_addresses(cfg);
        for a in self.registry.agents() {
            for b in a.backends.values() {
                if configured.contains_key(&b.addr.ip()) {
                    continue;
                }
                let Some(spec) = &b.check else { continue };
                let kind = match spec.kind.as_str() {
                    "http" => CheckKind::Http,
                    "https" => CheckKind::Https,
                    "tcp" => CheckKind::Tcp,
                    _ => continue,
                };
                let check = Check {
                    kind,
                    path: if spec.path.is_empty() {
                        "/health".to_owned()
                    } else {
                        spec.path.clone()
                    },
                    host: (!spec.host.is_empty()).then(|| spec.host.clone()),
                    interval: v.check_interval.get(),
                    timeout: v.check_timeout.get(),
                    tls_verify: false,
                    ..Check::default()
                };
                out.insert(
                    b.addr,
                    Target {
                        addr: b.addr,
                        check,
                    },
                );
            }
        }
        out
    }

    /// Every agent backend with its signals and decision, in agent then
    /// backend order. `health` answers for configured servers.
    pub fn decisions(&self, cfg: &Config, health: &Health) -> Vec<BackendDecision> {
        let configured = configured_addresses(cfg);
        let targets = self.validation_targets(cfg);
        let mut out = Vec::new();
        for a in self.registry.agents() {
            for b in a.backends.values() {
                let validation = match configured.get(&b.addr.ip()) {
                    Some(&(ri, si)) => {
                        let probed = cfg.overwatch.validation.enabled
                            && cfg.regions[ri].health_check.kind != HealthCheckType::None;
                        probed.then(|| health.status(cfg, ri, si).and_then(|s| s.healthy))
                    }
                    None => targets
                        .get(&b.addr)
                        .map(|t| self.prober.status(t).and_then(|s| s.healthy)),
                };
                let decision = decide(Signals {
                    permille: b.permille,
                    validation,
                    stale: a.is_stale(),
                    claim: b.claim,
                });
                out.push(BackendDecision {
                    agent_id: a.id.clone(),
                    region: a.region.clone(),
                    service: b.service.clone(),
                    addr: b.addr,
                    weight: b.weight,
                    configured: configured.get(&b.addr.ip()).copied(),
                    claim: b.claim,
                    reason: b.reason.clone(),
                    stale: a.is_stale(),
                    validation,
                    decision,
                });
            }
        }
        out
    }

    /// The compiler's view: `inner` (configured servers, validation) with
    /// every agent's backends and signals laid over it. Counts vetoes on
    /// entry and sets the per-authority gauge.
    pub fn view(&self, cfg: &Config, health: &Health, inner: View) -> AgentView {
        // Agents come and go between compiles: probe exactly those left.
        self.sync_validation(cfg);
        let decisions = self.decisions(cfg, health);
        let mut vetoed = HashSet::new();
        let mut by_addr: HashMap<IpAddr, Decision> = HashMap::new();
        let mut registered: BTreeMap<String, Vec<Registered>> = BTreeMap::new();
        let mut by_authority: BTreeMap<Authority, i64> = BTreeMap::new();
        for d in &decisions {
            if d.decision.veto {
                vetoed.insert((d.agent_id.clone(), d.addr));
            }
            *by_authority.entry(d.decision.authority).or_default() += 1;
            match d.configured {
                Some(_) => {
                    by_addr.entry(d.addr.ip()).or_insert(d.decision);
                }
                None => {
                    let Ok(name) = DnsName::parse(&d.service) else {
                        continue;
                    };
                    let Some(domain) = cfg.domains.iter().find(|x| x.name == name) else {
                        continue;
                    };
                    let region_index = domain
                        .regions
                        .iter()
                        .find(|r| **r == d.region)
                        .or_else(|| domain.regions.first())
                        .and_then(|r| cfg.region_index(r));
                    let Some(ri) = region_index else { continue };
                    let weight = scale(d.weight, d.decision.permille);
                    registered
                        .entry(name.as_str().to_owned())
                        .or_default()
                        .push(Registered {
                            address: d.addr.ip(),
                            port: d.addr.port(),
                            weight,
                            region_index: ri,
                            region: cfg.regions[ri].name.clone(),
                            health: if d.decision.healthy {
                                ServerHealth::UP
                            } else {
                                ServerHealth::DOWN
                            },
                        });
                }
            }
        }
        {
            let mut before = self.vetoed.lock().unwrap_or_else(PoisonError::into_inner);
            let entered = vetoed.difference(&before).count();
            self.metrics.vetoes.inc_by(entered as u64);
            *before = vetoed;
        }
        for a in Authority::ALL {
            self.metrics
                .by_authority
                .with_label_values(&[a.label()])
                .set(by_authority.get(&a).copied().unwrap_or(0));
        }
        AgentView {
            inner,
            by_addr,
            registered,
        }
    }
}

/// `weight × permille / 1000`, at least 1 while the share is above 0.
fn scale(weight: u32, permille: u32) -> u32 {
    if permille >= 1000 {
        return weight;
    }
    if permille == 0 || weight == 0 {
        return 0;
    }
    ((u64::from(weight) * u64::from(permille)) / 1000).max(1) as u32
}

/// (region index, server index) of the first configured server per address.
fn configured_addresses(cfg: &Config) -> HashMap<IpAddr, (usize, usize)> {
    let mut out = HashMap::new();
    for (ri, r) in cfg.regions.iter().enumerate() {
        for (si, s) in r.servers.iter().enumerate() {
            out.entry(s.address).or_insert((ri, si));
        }
    }
    out
}

/// One agent backend, decided.
#[derive(Debug, Clone)]
pub struct BackendDecision {
    /// Reporting agent.
    pub agent_id: String,
    /// Its region.
    pub region: String,
    /// Service.
    pub service: String,
    /// Address and port.
    pub addr: SocketAddr,
    /// Configured weight (agent side).
    pub weight: u32,
    /// The configured server it is, if any.
    pub configured: Option<(usize, usize)>,
    /// The agent's claim.
    pub claim: Claim,
    /// The agent's reason.
    pub reason: String,
    /// The agent is stale.
    pub stale: bool,
    /// The controlplane's own check (see [`Signals::validation`]).
    pub validation: Option<Option<bool>>,
    /// The decision.
    pub decision: Decision,
}

/// The compiler's health view with agents laid over the validation view.
#[derive(Debug)]
pub struct AgentView {
    /// Configured servers, external validation.
    pub inner: View,
    by_addr: HashMap<IpAddr, Decision>,
    registered: BTreeMap<String, Vec<Registered>>,
}

impl HealthView for AgentView {
    fn health(&self, server: &ServerRef<'_>) -> ServerHealth {
        match self.by_addr.get(&server.address) {
            // Validation decides: keep its `healthy_since` (failback).
            Some(d) if d.authority == Authority::Validation => self.inner.health(server),
            Some(d) if d.permille < 1000 && d.healthy => self.inner.health(server),
            Some(d) => own(d),
            None => self.inner.health(server),
        }
    }

    fn unprobed(&self, server: &ServerRef<'_>) -> ServerHealth {
        self.by_addr
            .get(&server.address)
            .map_or(ServerHealth::UP, own)
    }

    fn weight(&self, server: &ServerRef<'_>, configured: u32) -> u32 {
        self.by_addr
            .get(&server.address)
            .map_or(configured, |d| scale(configured, d.permille))
    }

    fn registered(&self, domain: &DnsName) -> Vec<Registered> {
        self.registered
            .get(domain.as_str())
            .cloned()
            .unwrap_or_default()
    }
}

fn own(d: &Decision) -> ServerHealth {
    if d.healthy {
        ServerHealth::UP
    } else {
        ServerHealth::DOWN
    }
}

/// Prometheus metrics of the agent side.
#[derive(Debug, Clone)]
pub struct OverwatchMetrics {
    /// `opengslb_overwatch_agents_registered`.
    pub agents: IntGauge,
    /// `opengslb_overwatch_agent_heartbeat_age_seconds{agent_id}`.
    pub heartbeat_age: prometheus::GaugeVec,
    /// `opengslb_overwatch_stale_agents_total`.
    pub stale: IntCounter,
    /// `opengslb_overwatch_agent_certs_pinned`.
    pub pinned: IntGauge,
    /// `opengslb_overwatch_agent_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `opengslb_overwatch_backends_by_authority{authority}`.
    pub by_authority: IntGaugeVec,
    /// `opengslb_overwatch_vetoes_total`.
    pub vetoes: IntCounter,
    /// `opengslb_overwatch_refused_total{reason}`: malformed, replayed,
    /// unknown-service input and dropped connections.
    pub refused: IntCounterVec,
    /// `opengslb_overwatch_heartbeats_total`.
    pub heartbeats: IntCounter,
}

// === impl OverwatchMetrics ===

impl OverwatchMetrics {
    fn new(registry: &prometheus::Registry) -> Result<Self> {
        let m = Self {
            agents: IntGauge::new(
                "opengslb_overwatch_agents_registered",
                "Agents with a live session.",
            )
            .map_err(err)?,
            heartbeat_age: prometheus::GaugeVec::new(
                Opts::new(
                    "opengslb_overwatch_agent_heartbeat_age_seconds",
                    "Seconds since the agent's last accepted heartbeat.",
                ),
                &["agent_id"],
            )
            .map_err(err)?,
            stale: IntCounter::new(
                "opengslb_overwatch_stale_agents_total",
                "Times an agent became stale (missed heartbeats).",
            )
            .map_err(err)?,
            pinned: IntGauge::new(
                "opengslb_overwatch_agent_certs_pinned",
                "Agent certificates pinned in the store (revoked ones excluded).",
            )
            .map_err(err)?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "opengslb_overwatch_agent_auth_failures_total",
                    "Refused agent authentications by reason.",
                ),
                &["reason"],
            )
            .map_err(err)?,
            by_authority: IntGaugeVec::new(
                Opts::new(
                    "opengslb_overwatch_backends_by_authority",
                    "Agent backends by the signal that decides their health.",
                ),
                &["authority"],
            )
            .map_err(err)?,
            vetoes: IntCounter::new(
                "opengslb_overwatch_vetoes_total",
                "Times validation started to disagree with an agent's claim.",
            )
            .map_err(err)?,
            refused: IntCounterVec::new(
                Opts::new(
                    "opengslb_overwatch_refused_total",
                    "Refused agent input by reason (malformed, replay, unknown_service, unknown_backend, connections_full, handshake).",
                ),
                &["reason"],
            )
            .map_err(err)?,
            heartbeats: IntCounter::new(
                "opengslb_overwatch_heartbeats_total",
                "Accepted agent heartbeats.",
            )
            .map_err(err)?,
        };
        for c in [
            Box::new(m.agents.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.heartbeat_age.clone()),
            Box::new(m.stale.clone()),
            Box::new(m.pinned.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.by_authority.clone()),
            Box::new(m.vetoes.clone()),
            Box::new(m.refused.clone()),
            Box::new(m.heartbeats.clone()),
        ] {
            registry.register(c).map_err(err)?;
        }
        Ok(m)
    }

    /// Counts one refused authentication.
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Counts one piece of refused input.
    pub fn refuse(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

fn err(e: prometheus::Error) -> Error {
    Error::Metrics(e.to_string())
}

/// One sweep: staleness and removal, gauges; wakes a recompile when an
/// agent became stale or was removed.
pub fn sweep(state: &State, now: tokio::time::Instant, remove_after: Duration) {
    let ow = &state.overwatch;
    let swept = ow.registry.sweep(now, remove_after);
    for id in &swept.stale {
        tracing::warn!(agent_id = %id, "agent stale: heartbeats missed");
        ow.metrics.stale.inc();
    }
    for id in &swept.removed {
        tracing::warn!(agent_id = %id, "stale agent removed");
        let _ = ow.metrics.heartbeat_age.remove_label_values(&[id]);
    }
    let agents = ow.registry.agents();
    ow.metrics.agents.set(agents.len() as i64);
    for a in &agents {
        ow.metrics
            .heartbeat_age
            .with_label_values(&[&a.id])
            .set(now.saturating_duration_since(a.last_seen).as_secs_f64());
    }
    if !swept.stale.is_empty() || !swept.removed.is_empty() {
        ow.notify();
    }
}

/// Runs the agent side of a running controlplane: the sweeper and, when
/// `overwatch.agent_tokens` is set, the TLS listener on
/// `overwatch.agent_listen` (no tokens: no agent could register, so nothing
/// listens). Returns the bound address.
pub async fn start(state: Arc<State>) -> Result<Option<SocketAddr>> {
    let cfg = state.config.lock().await.clone();
    let pins = state.store.agent_pins().await?;
    state
        .overwatch
        .metrics
        .pinned
        .set(pins.iter().filter(|p| !p.revoked).count() as i64);
    let sweeper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let remove_after = sweeper
                .config
                .lock()
                .await
                .overwatch
                .stale
                .remove_after
                .get();
            sweep(&sweeper, tokio::time::Instant::now(), remove_after);
        }
    });
    if state.store.engine() == "postgres" {
        tokio::spawn(follow_revocations(state.clone()));
    }
    if cfg.overwatch.agent_tokens.is_empty() {
        return Ok(None);
    }
    let addr = cfg.overwatch.agent_listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Listen {
            addr,
            message: e.to_string(),
        })?;
    let bound = listener.local_addr().unwrap_or(addr);
    serve(state, listener)?;
    tracing::info!(addr = %bound, "agent listener (TLS) up");
    Ok(Some(bound))
}

/// The controlplane's own identity on the agent port, under `data_dir`.
pub fn server_identity(cfg: &Config) -> Result<tls::Identity> {
    let dir = &cfg.overwatch.data_dir;
    let (id, created) = tls::Identity::load_or_create(
        &dir.join("agent-listener.crt"),
        &dir.join("agent-listener.key"),
        &cfg.overwatch.identity.node_id,
    )
    .map_err(|e| Error::Listen {
        addr: cfg.overwatch.agent_listen,
        message: format!("agent listener certificate: {e}"),
    })?;
    if created {
        tracing::info!(fingerprint = %id.fingerprint(), "agent listener certificate created");
    }
    Ok(id)
}

/// Serves `AgentService` on `listener` (already bound) in the background.
pub fn serve(state: Arc<State>, listener: tokio::net::TcpListener) -> Result<()> {
    let cfg = state.config.try_lock().map(|c| c.clone()).ok();
    let (identity, max_connections) = match cfg {
        Some(cfg) => (server_identity(&cfg)?, cfg.overwatch.max_agent_connections),
        None => return Err(Error::Metrics("config locked while starting".into())),
    };
    let config = tls::server_config(&identity).map_err(|e| Error::Listen {
        addr: listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        message: e.to_string(),
    })?;
    let metrics = state.overwatch.metrics.clone();
    let dropped: Arc<dyn Fn(tls::Dropped) + Send + Sync> = Arc::new(move |d| match d {
        tls::Dropped::Full => metrics.refuse("connections_full"),
        tls::Dropped::Handshake => metrics.auth_failure("tls"),
        tls::Dropped::Timeout => metrics.refuse("handshake_timeout"),
    });
    let incoming = tls::incoming(listener, config, max_connections, dropped);
    let svc = service::server(state);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .concurrency_limit_per_connection(16)
            .max_concurrent_streams(16)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "agent listener stopped");
        }
    });
    Ok(())
}

/// One agent as the API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentInfo {
    /// Id.
    pub agent_id: String,
    /// Region.
    pub region: String,
    /// Pinned certificate (SHA-256).
    pub fingerprint: String,
    /// Services its token covered at pinning.
    pub services: Vec<String>,
    /// Cut off.
    pub revoked: bool,
    /// Has a live session on this controlplane.
    pub connected: bool,
    /// Missed heartbeats.
    pub stale: bool,
    /// Seconds since its last heartbeat (connected agents).
    pub heartbeat_age_seconds: Option<f64>,
    /// Backends it reports.
    pub backends: usize,
    /// RFC 3339 of the first pin.
    pub pinned_at: String,
}

/// Every pinned agent, with its live state on this controlplane.
pub async fn list(state: &State) -> Result<Vec<AgentInfo>> {
    let pins = state.store.agent_pins().await?;
    let live: HashMap<String, registry::Agent> = state
        .overwatch
        .registry
        .agents()
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let now = tokio::time::Instant::now();
    Ok(pins
        .into_iter()
        .map(|p| {
            let a = live.get(&p.agent_id);
            AgentInfo {
                connected: a.is_some(),
                stale: a.is_some_and(registry::Agent::is_stale),
                heartbeat_age_seconds: a
                    .map(|a| now.saturating_duration_since(a.last_seen).as_secs_f64()),
                backends: a.map_or(0, |a| a.backends.len()),
                services: p
                    .services
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                pinned_at: crate::api::ops::rfc3339_ms(p.pinned_at_unix_ms),
                agent_id: p.agent_id,
                region: p.region,
                fingerprint: p.fingerprint,
                revoked: p.revoked,
            }
        })
        .collect())
}

/// Revokes agent `id`: refused from now on, its session ended and its
/// backends out of the answers at once (the caller publishes). Whether it
/// was pinned.
pub async fn revoke(state: &State, id: &str) -> Result<bool> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let was_pinned = state.store.agent_pin(id).await?.is_some_and(|p| !p.revoked);
    let known = state.store.revoke_agent(id, now).await?;
    let removed = state.overwatch.registry.remove(id);
    if was_pinned {
        state.overwatch.metrics.pinned.dec();
    }
    if removed {
        let _ = state
            .overwatch
            .metrics
            .heartbeat_age
            .remove_label_values(&[id]);
        state
            .overwatch
            .metrics
            .agents
            .set(state.overwatch.registry.len() as i64);
    }
    state.overwatch.notify();
    Ok(known || removed)
}

/// Applies revocations made through other controlplanes sharing the store:
/// every agent with a live session here whose pin is revoked is cut off
/// (session ended, backends out of the answers once published). Returns
/// the agents cut off.
pub async fn apply_revocations(state: &State) -> Result<Vec<String>> {
    let pins = state.store.agent_pins().await?;
    let live: HashSet<String> = state
        .overwatch
        .registry
        .agents()
        .into_iter()
        .map(|a| a.id)
        .collect();
    let mut cut = Vec::new();
    for p in &pins {
        if p.revoked && live.contains(&p.agent_id) && state.overwatch.registry.remove(&p.agent_id) {
            let _ = state
                .overwatch
                .metrics
                .heartbeat_age
                .remove_label_values(&[&p.agent_id]);
            tracing::warn!(agent_id = %p.agent_id, "agent revoked through another controlplane: cut off");
            cut.push(p.agent_id.clone());
        }
    }
    let ow = &state.overwatch;
    ow.metrics
        .pinned
        .set(pins.iter().filter(|p| !p.revoked).count() as i64);
    if !cut.is_empty() {
        ow.metrics.agents.set(ow.registry.len() as i64);
        ow.notify();
    }
    Ok(cut)
}

/// Follows revocations made through other controlplanes sharing a
/// PostgreSQL store: [`apply_revocations`] every
/// [`crate::overrides::FOLLOW_EVERY`], publishing when an agent was cut
/// off. A store error is logged and retried at the next tick.
pub async fn follow_revocations(state: Arc<State>) {
    let mut tick = tokio::time::interval(crate::overrides::FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match apply_revocations(&state).await {
            Ok(cut) if !cut.is_empty() => {
                if let Err(e) = state.recompile("agent.revoke").await {
                    tracing::error!(error = %e, "publishing after a shared revocation failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "re-reading agent revocations failed"),
        }
    }
}

/// [`revoke`], then publish and audit: the REST and admin gRPC entry
/// point. `None` when no such agent is known.
pub async fn revoke_and_publish(
    state: &State,
    id: &str,
    who: &str,
    from: &str,
) -> Result<Option<u64>> {
    if !revoke(state, id).await? {
        return Ok(None);
    }
    let generation = match state.recompile("agent.revoke").await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "publishing after a revocation failed");
            0
        }
    };
    let detail = format!(
        "{{\"agent_id\":{},\"generation\":{generation}}}",
        serde_json::Value::String(id.to_owned())
    );
    if let Err(e) = state.store.audit(who, from, "agent.revoke", &detail).await {
        tracing::error!(error = %e, "audit record not written");
    }
    tracing::warn!(agent_id = %id, who, from, "agent revoked");
    Ok(Some(generation))
}
