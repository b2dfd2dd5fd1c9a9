//! The controlplane's external validation: turns the config's regions into
//! health-check targets, runs them with an [`opengslb_health::Prober`] and
//! answers the compiler's [`HealthView`].
//!
//! Start-up truth: a server is never served before its first result. At
//! start and on reload, [`Health::add`] starts the new targets (first probe
//! at once) and the caller awaits [`Health::settle`] (bounded by one
//! timeout) before it compiles with them. A target unchanged by a reload
//! (same address, port and check settings) keeps its state; [`Health::retain`]
//! drops the others once the new config is in force.
//!
//! Every decision change wakes [`Health::changed`]; the server recompiles and
//! publishes at once.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
};

use opengslb_health::{Check, CheckKind, Observer, Outcome, Prober, Status, Target};
use tokio::sync::Notify;

use crate::{
    compile::{HealthView, ServerHealth},
    config::{Config, HealthCheckConfig, HealthCheckType, ServerRef},
    error::Result,
    metrics::Metrics,
};

/// EMA factor when no domain using a server sets `latency_config`.
const DEFAULT_SMOOTHING: f64 = 0.3;

/// Health checking for one controlplane.
#[derive(Debug)]
pub struct Health {
    prober: Prober,
    shared: Arc<Shared>,
}

/// What the probing tasks report into.
#[derive(Debug)]
struct Shared {
    metrics: Arc<Metrics>,
    changed: Notify,
    /// Per target, the (region, `address:port`) pairs that use it.
    users: RwLock<HashMap<Target, Vec<(String, String)>>>,
}

/// One probed server of a config.
#[derive(Debug, Clone)]
struct Planned {
    region_index: usize,
    server_index: usize,
    region: String,
    server: String,
    target: Target,
    alpha: f64,
}

/// The health of every server of one config, frozen for one compile.
#[derive(Debug)]
pub struct View {
    /// Probing is off (`overwatch.validation.enabled: false`): all healthy.
    off: bool,
    servers: HashMap<(usize, usize), ServerHealth>,
    /// Latency EMA and samples of each probed server that has any.
    latency: HashMap<(usize, usize), crate::compile::LatencySample>,
    /// Healthy servers per region, config order.
    pub healthy_per_region: Vec<(String, usize)>,
}

// === impl Health ===

impl Health {
    /// Health checking with no targets yet.
    pub fn new(metrics: Arc<Metrics>) -> Result<Self> {
        let shared = Arc::new(Shared {
            metrics,
            changed: Notify::new(),
            users: RwLock::new(HashMap::new()),
        });
        let prober = Prober::new(shared.clone())?;
        Ok(Self { prober, shared })
    }

    /// Starts probing the targets of `cfg` not probed yet; returns them
    /// (await [`Health::settle`] before serving them). Keeps every target
    /// already running.
    pub fn add(&self, cfg: &Config) -> Vec<Target> {
        let planned = plan(cfg);
        {
            let mut users = self
                .shared
                .users
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for p in &planned {
                let list = users.entry(p.target.clone()).or_default();
                let user = (p.region.clone(), p.server.clone());
                if !list.contains(&user) {
                    list.push(user);
                }
            }
        }
        self.prober
            .add(planned.into_iter().map(|p| (p.target, p.alpha)))
    }

    /// Waits for the first result of each of `targets`, bounded by the
    /// longest of their timeouts.
    pub async fn settle(&self, targets: &[Target]) {
        self.prober.settled(targets).await;
    }

    /// Stops probing targets `cfg` does not use.
    pub fn retain(&self, cfg: &Config) {
        let planned = plan(cfg);
        let mut users: HashMap<Target, Vec<(String, String)>> = HashMap::new();
        for p in planned {
            let list = users.entry(p.target).or_default();
            let user = (p.region, p.server);
            if !list.contains(&user) {
                list.push(user);
            }
        }
        let keep: HashSet<Target> = users.keys().cloned().collect();
        *self
            .shared
            .users
            .write()
            .unwrap_or_else(PoisonError::into_inner) = users;
        self.prober.retain(&keep);
    }

    /// Resolves at the next health decision change (or at once if one
    /// happened since the last call).
    pub async fn changed(&self) {
        self.shared.changed.notified().await;
    }

    /// The health of every server of `cfg`, now.
    pub fn view(&self, cfg: &Config) -> View {
        let off = !cfg.overwatch.validation.enabled;
        let mut servers = HashMap::new();
        let mut latency = HashMap::new();
        if !off {
            for p in plan(cfg) {
                let status = self.prober.status(&p.target);
                if let Some(ema) = status.as_ref().and_then(|s| s.latency_ema) {
                    let samples = status.as_ref().map_or(0, |s| s.samples);
                    latency.insert(
                        (p.region_index, p.server_index),
                        crate::compile::LatencySample { ema, samples },
                    );
                }
                let health = status.map_or(ServerHealth::DOWN, server_health);
                servers.insert((p.region_index, p.server_index), health);
            }
        }
        let healthy_per_region = cfg
            .regions
            .iter()
            .enumerate()
            .map(|(ri, r)| {
                let n = if off || r.health_check.kind == HealthCheckType::None {
                    r.servers.len()
                } else {
                    (0..r.servers.len())
                        .filter(|si| servers.get(&(ri, *si)).is_some_and(|h| h.healthy))
                        .count()
                };
                (r.name.clone(), n)
            })
            .collect();
        View {
            off,
            servers,
            latency,
            healthy_per_region,
        }
    }

    /// The probe state of server `server_index` of region `region_index`.
    pub fn status(&self, cfg: &Config, region_index: usize, server_index: usize) -> Option<Status> {
        let region = cfg.regions.get(region_index)?;
        let server = region.servers.get(server_index)?;
        let check = check_of(&region.health_check, server.host.as_deref())?;
        self.prober.status(&Target {
            addr: SocketAddr::new(server.address, server.port),
            check,
        })
    }

    /// Distinct targets probed.
    pub fn targets(&self) -> usize {
        self.prober.len()
    }
}

/// The compiler's view of one target's state: healthy only once a result
/// said so; `healthy_since` only when it recovered after being seen down
/// (a server healthy from its first check is not held down by
/// `failback_delay`).
fn server_health(s: Status) -> ServerHealth {
    let healthy = s.healthy == Some(true);
    ServerHealth {
        healthy,
        healthy_since: if healthy && s.changes > 0 {
            s.since
        } else {
            None
        },
    }
}

// === impl Shared ===

impl Observer for Shared {
    fn probed(&self, target: &Target, outcome: &Outcome, _: &Status, changed: bool) {
        if changed {
            // First, so the recompile starts while the metrics are counted.
            self.changed.notify_one();
        }
        let users = self.users.read().unwrap_or_else(PoisonError::into_inner);
        let list = users.get(target).map(Vec::as_slice).unwrap_or_default();
        self.metrics.probed(
            list.iter().map(|(r, s)| (r.as_str(), s.as_str())),
            outcome.label(),
            outcome.elapsed,
        );
    }
}

// === impl View ===

impl HealthView for View {
    fn health(&self, server: &ServerRef<'_>) -> ServerHealth {
        if self.off {
            return ServerHealth::UP;
        }
        self.servers
            .get(&(server.region_index, server.server_index))
            .copied()
            .unwrap_or(ServerHealth::DOWN)
    }

    fn latency(&self, server: &ServerRef<'_>) -> Option<crate::compile::LatencySample> {
        self.latency
            .get(&(server.region_index, server.server_index))
            .copied()
    }
}

/// Every probed server of `cfg` with its target (none when validation is off).
fn plan(cfg: &Config) -> Vec<Planned> {
    if !cfg.overwatch.validation.enabled {
        return Vec::new();
    }
    // The EMA factor of a server: the first domain (config order) that
    // uses it and sets `latency_config`.
    let mut alpha: HashMap<(usize, usize), f64> = HashMap::new();
    for d in &cfg.domains {
        let Some(lc) = &d.latency_config else {
            continue;
        };
        for region in &d.regions {
            let Some(ri) = cfg.region_index(region) else {
                continue;
            };
            for (si, s) in cfg.regions[ri].servers.iter().enumerate() {
                if s.serves(&d.name) {
                    alpha.entry((ri, si)).or_insert(lc.smoothing_factor);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (ri, region) in cfg.regions.iter().enumerate() {
        for (si, server) in region.servers.iter().enumerate() {
            let Some(check) = check_of(&region.health_check, server.host.as_deref()) else {
                continue;
            };
            let addr = SocketAddr::new(server.address, server.port);
            out.push(Planned {
                region_index: ri,
                server_index: si,
                region: region.name.clone(),
                server: addr.to_string(),
                target: Target { addr, check },
                alpha: alpha.get(&(ri, si)).copied().unwrap_or(DEFAULT_SMOOTHING),
            });
        }
    }
    out
}

/// The check of a server of a region with `hc`; `None` for `type: none`.
/// The server's own `host` wins over the region's.
pub fn check_of(hc: &HealthCheckConfig, server_host: Option<&str>) -> Option<Check> {
    let kind = match hc.kind {
        HealthCheckType::Http => CheckKind::Http,
        HealthCheckType::Https => CheckKind::Https,
        HealthCheckType::Tcp => CheckKind::Tcp,
        HealthCheckType::None => return None,
    };
    Some(Check {
        kind,
        path: hc.path.clone(),
        host: server_host.map(str::to_owned).or_else(|| hc.host.clone()),
        interval: hc.interval.get(),
        timeout: hc.timeout.get(),
        failure_threshold: hc.failure_threshold,
        success_threshold: hc.success_threshold,
        expected_status: hc.expected_status.clone(),
        body_contains: hc.body_contains.clone(),
        tls_verify: hc.tls_verify,
    })
}

#[cfg(test)]
mod tests;
