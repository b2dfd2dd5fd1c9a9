//! The admin operations, once, for both transports: REST handlers serialize
//! these values as JSON; the gRPC service maps them to `opengslb.v1`
//! messages. Every change is validated before it touches anything, written
//! to the store first, audited, and published as a new snapshot at once.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc, time::SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ApiError, App, Caller};
use crate::{
    config::{self, Config, DnsName, HealthCheckType},
    geo::{RangeSource, RangeTable},
    overrides::{OverrideKey, WithOverrides},
    server::State,
    store::{GeoMappingRow, OverrideRow},
};

/// Largest page of audit records.
const MAX_AUDIT: i64 = 1000;

/// `GET /api/v1/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// All of the below.
    pub ready: bool,
    /// The config is loaded and valid.
    pub config_loaded: bool,
    /// The first health round is done.
    pub health_ready: bool,
    /// A snapshot is published to the stream.
    pub snapshot_published: bool,
    /// Its generation (0 before).
    pub generation: u64,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /api/v1/overwatch/stats` and the status RPC.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Node id.
    pub node_id: String,
    /// Version of this build.
    pub version: &'static str,
    /// Generation of the snapshot being served.
    pub generation: u64,
    /// Connected dataplanes.
    pub subscribers: usize,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Config file in force.
    pub config_path: String,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// Backends (service × server).
    pub total_backends: usize,
    /// Healthy backends (overrides applied).
    pub healthy_backends: usize,
    /// Unhealthy backends.
    pub unhealthy_backends: usize,
    /// Stale backends (agents arrive later: always 0).
    pub stale_backends: usize,
    /// Overrides in force.
    pub active_overrides: usize,
    /// Controlplane validation on.
    pub validation_enabled: bool,
    /// Backends with a validation result.
    pub validated_backends: usize,
    /// Distinct services.
    pub unique_services: usize,
    /// Backends per service.
    pub backends_by_service: BTreeMap<String, usize>,
    /// Backends per region.
    pub backends_by_region: BTreeMap<String, usize>,
    /// RFC 3339.
    pub generated_at: String,
}

/// One configured server (`GET /api/v1/health/servers`), as validation sees
/// it (overrides are per service: see [`Backend`]).
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// IP.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Region.
    pub region: String,
    /// Healthy now (validation, or always for unprobed servers).
    pub healthy: bool,
    /// `healthy`, `unhealthy` or `unknown` (not checked yet).
    pub status: &'static str,
    /// Check kind: `http`, `https`, `tcp` or `none`.
    pub check: &'static str,
    /// RFC 3339 of the last probe.
    pub last_check: Option<String>,
    /// RFC 3339 of the last decision change.
    pub last_change: Option<String>,
    /// Consecutive failed probes.
    pub consecutive_failures: u32,
    /// Consecutive successful probes.
    pub consecutive_successes: u32,
    /// Why the last probe failed.
    pub last_error: Option<String>,
    /// Overrides naming this server (any service).
    pub overrides: usize,
}

/// One region (`GET /api/v1/health/regions`).
#[derive(Debug, Clone, Serialize)]
pub struct RegionStatus {
    /// Name.
    pub name: String,
    /// Servers.
    pub total_servers: usize,
    /// Healthy servers.
    pub healthy_count: usize,
    /// Unhealthy servers.
    pub unhealthy_count: usize,
    /// Percent healthy (100 for an empty region).
    pub health_percent: f64,
}

/// One server as a member of one service, with its effective health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    /// Domain name.
    pub service: String,
    /// IP.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Weight.
    pub weight: u32,
    /// Region.
    pub region: String,
    /// `healthy` or `unhealthy` (`stale` arrives with agents).
    pub effective_status: &'static str,
    /// Healthy after every signal and override.
    pub healthy: bool,
    /// The deciding signal: `override`, `validation` or `config`.
    pub source: &'static str,
    /// The health authority in force, highest first: `override`,
    /// `predictive`, `validation`, `stale`, `agent`, or `config` (see
    /// `docs/agent.md`).
    pub authority: &'static str,
    /// The agent reporting it, if any.
    pub agent_id: Option<String>,
    /// Why, when there is something to say.
    pub reason: String,
    /// Validation's own verdict (None when not probed or not yet checked).
    pub validation_healthy: Option<bool>,
    /// RFC 3339 of the last probe.
    pub validation_last_check: Option<String>,
    /// Why the last probe failed.
    pub validation_error: Option<String>,
    /// The override's forced health, if any.
    pub override_status: Option<bool>,
    /// Its reason.
    pub override_reason: String,
    /// Who set it.
    pub override_by: String,
    /// RFC 3339 of when.
    pub override_at: Option<String>,
}

/// Filters of `GET /api/v1/overwatch/backends`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFilter {
    /// Domain name.
    #[serde(default)]
    pub service: Option<String>,
    /// Region name.
    #[serde(default)]
    pub region: Option<String>,
    /// `healthy`, `unhealthy` or `stale`.
    #[serde(default)]
    pub status: Option<String>,
}

/// An override as the API shows it (OpenGSLB's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideView {
    /// Domain name.
    pub service: String,
    /// IP or IP:port.
    pub address: String,
    /// Forced health.
    pub healthy: bool,
    /// Why.
    pub reason: String,
    /// The system that set it.
    pub source: String,
    /// RFC 3339.
    pub created_at: String,
    /// Milliseconds since the epoch.
    pub created_at_unix_ms: i64,
    /// Who set it, from where.
    pub authority: String,
}

/// The body of `PUT /api/v1/overrides/{service}/{address}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// Forced health (default false: take it out of rotation).
    #[serde(default)]
    pub healthy: bool,
    /// Why (free text, at most 1024 characters).
    #[serde(default)]
    pub reason: String,
    /// The system setting it (required).
    #[serde(default)]
    pub source: String,
}

/// The answer of a config validation.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// Whether it is valid.
    pub valid: bool,
    /// Each problem, `file:line: key: message`.
    pub errors: Vec<String>,
}

/// The answer of a reload.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Always true (a refused reload is an error).
    pub reloaded: bool,
    /// Generation published.
    pub generation: u64,
    /// Human summary.
    pub message: String,
}

/// The answer of a geo lookup.
#[derive(Debug, Clone, Serialize)]
pub struct GeoAnswer {
    /// The address asked about.
    pub ip: String,
    /// Region, empty when none applies.
    pub region: String,
    /// `runtime_mapping`, `custom_mapping`, `geoip`, `default_region` or `none`.
    pub source: &'static str,
    /// The matching network, for mappings.
    pub cidr: Option<String>,
}

/// One geo mapping as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeoMappingView {
    /// Network.
    pub cidr: String,
    /// Region.
    pub region: String,
    /// Free text.
    pub comment: String,
    /// `runtime` (API/CLI, in the store) or `config` (the YAML file).
    pub source: &'static str,
    /// RFC 3339, runtime mappings only.
    pub created_at: Option<String>,
}

/// The body of `POST /api/v1/geo/mappings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoMappingRequest {
    /// Network.
    pub cidr: String,
    /// Region (must exist).
    pub region: String,
    /// Free text.
    #[serde(default)]
    pub comment: String,
}

/// One audit record as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    /// Row id.
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    /// Who.
    pub actor: String,
    /// From where.
    pub source: String,
    /// What.
    pub action: String,
    /// Details (JSON text).
    pub detail: String,
}

// === read operations ===

/// Readiness; never fails.
pub async fn readiness(app: &App) -> Readiness {
    match app.state() {
        Err(_) => Readiness {
            ready: false,
            config_loaded: false,
            health_ready: false,
            snapshot_published: false,
            generation: 0,
            message: Some("starting: first health round not done yet".into()),
        },
        Ok(state) => {
            let generation = state.stream.current().generation;
            let published = generation > 0;
            Readiness {
                ready: published,
                config_loaded: true,
                health_ready: true,
                snapshot_published: published,
                generation,
                message: (!published).then(|| "no snapshot published yet".into()),
            }
        }
    }
}

/// Counters and identity.
pub async fn stats(app: &App) -> Result<Stats, ApiError> {
    let state = app.state()?;
    let cfg = state.config.lock().await.clone();
    let backends = backends_of(&state, &cfg, &BackendFilter::default());
    let mut by_service = BTreeMap::new();
    let mut by_region = BTreeMap::new();
    for b in &backends {
        *by_service.entry(b.service.clone()).or_insert(0) += 1;
        *by_region.entry(b.region.clone()).or_insert(0) += 1;
    }
    let healthy = backends.iter().filter(|b| b.healthy).count();
    Ok(Stats {
        node_id: cfg.overwatch.identity.node_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        generation: state.stream.current().generation,
        subscribers: state.stream.subscribers(),
        uptime_seconds: app.uptime().as_secs(),
        config_path: state.config_path.display().to_string(),
        store: state.store.engine(),
        total_backends: backends.len(),
        healthy_backends: healthy,
        unhealthy_backends: backends.len() - healthy,
        stale_backends: 0,
        active_overrides: state.overrides.len(),
        validation_enabled: cfg.overwatch.validation.enabled,
        validated_backends: backends
            .iter()
            .filter(|b| b.validation_healthy.is_some())
            .count(),
        unique_services: by_service.len(),
        backends_by_service: by_service,
        backends_by_region: by_region,
        generated_at: rfc3339(SystemTime::now()),
    })
}

/// Every configured server, validation's view.
pub async fn servers(app: &App) -> Result<Vec<ServerStatus>, ApiError> {
    let state = app.state()?;
    let cfg = state.config.lock().await.clone();
    let overrides = state.overrides.current();
    let mut out = Vec::new();
    for (ri, region) in cfg.regions.iter().enumerate() {
        for (si, server) in region.servers.iter().enumerate() {
            let probed = cfg.overwatch.validation.enabled
                && region.health_check.kind != HealthCheckType::None;
            let status = if probed {
                state.health.status(&cfg, ri, si)
            } else {
                None
            };
            let healthy = if probed {
                status.as_ref().and_then(|s| s.healthy).unwrap_or(false)
            } else {
                true
            };
            let label = match (probed, status.as_ref().and_then(|s| s.healthy)) {
                (false, _) | (true, Some(true)) => "healthy",
                (true, Some(false)) => "unhealthy",
                (true, None) => "unknown",
            };
            let address = server.address;
            out.push(ServerStatus {
                address: address.to_string(),
                port: server.port,
                region: region.name.clone(),
                healthy,
                status: label,
                check: check_kind(region.health_check.kind),
                last_check: status.as_ref().and_then(|s| s.last_checked).map(rfc3339),
                last_change: status.as_ref().and_then(|s| s.since).map(rfc3339),
                consecutive_failures: status.as_ref().map_or(0, |s| s.consecutive_failures),
                consecutive_successes: status.as_ref().map_or(0, |s| s.consecutive_successes),
                last_error: status
                    .as_ref()
                    .and_then(|s| s.last_failure)
                    .map(|f| f.to_string()),
                overrides: overrides
                    .keys()
                    .filter(|k| {
                        k.target().is_some_and(|(ip, port)| {
                            ip == address && port.is_none_or(|p| p == server.port)
                        })
                    })
                    .count(),
            });
        }
    }
    Ok(out)
}

/// Per region counts.
pub async fn regions(app: &App) -> Result<Vec<RegionStatus>, ApiError> {
    let servers = servers(app).await?;
    let state = app.state()?;
    let cfg = state.config.lock().await.clone();
    Ok(cfg
        .regions
        .iter()
        .map(|r| {
            let total = servers.iter().filter(|s| s.region == r.name).count();
            let healthy = servers
                .iter()
                .filter(|s| s.region == r.name && s.healthy)
                .count();
            let percent = if total == 0 {
                100.0
            } else {
                (healthy as f64 * 10_000.0 / total as f64).round() / 100.0
            };
            RegionStatus {
                name: r.name.clone(),
                total_servers: total,
                healthy_count: healthy,
                unhealthy_count: total - healthy,
                health_percent: percent,
            }
        })
        .collect())
}

/// Every (service, server) pair with its effective health.
pub async fn backends(app: &App, filter: &BackendFilter) -> Result<Vec<Backend>, ApiError> {
    if let Some(s) = filter.status.as_deref() {
        if !matches!(s, "healthy" | "unhealthy" | "stale" | "") {
            return Err(ApiError::BadRequest(format!(
                "invalid status {:?}: expected healthy, unhealthy or stale",
                truncate(s)
            )));
        }
    }
    let state = app.state()?;
    let cfg = state.config.lock().await.clone();
    Ok(backends_of(&state, &cfg, filter))
}

/// [`backends`] on a config already in hand (also used by `WatchHealth`).
pub fn backends_of(state: &State, cfg: &Config, filter: &BackendFilter) -> Vec<Backend> {
    let view = WithOverrides::new((), state.overrides.current());
    let agents = state.overwatch.decisions(cfg, &state.health);
    let mut by_addr = std::collections::HashMap::new();
    for d in agents.iter().filter(|d| d.configured.is_some()) {
        by_addr.entry(d.addr.ip()).or_insert(d);
    }
    let service = filter
        .service
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            DnsName::parse(s)
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default()
        });
    let mut out = Vec::new();
    for domain in &cfg.domains {
        if service.as_ref().is_some_and(|s| s != domain.name.as_str()) {
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        for region_name in &domain.regions {
            let Some(ri) = cfg.region_index(region_name) else {
                continue;
            };
            let region = &cfg.regions[ri];
            if filter
                .region
                .as_deref()
                .is_some_and(|r| !r.is_empty() && r != region.name)
            {
                continue;
            }
            for (si, server) in region.servers.iter().enumerate() {
                if !server.serves(&domain.name) || !seen.insert(server.address) {
                    continue;
                }
                let probed = cfg.overwatch.validation.enabled
                    && region.health_check.kind != HealthCheckType::None;
                let status = if probed {
                    state.health.status(cfg, ri, si)
                } else {
                    None
                };
                let validation_healthy = status.as_ref().and_then(|s| s.healthy);
                let validation_error = status
                    .as_ref()
                    .and_then(|s| s.last_failure)
                    .map(|f| f.to_string());
                let ovr = view.lookup(domain.name.as_str(), server.address, server.port);
                let (healthy, source, reason) = match (ovr, probed, validation_healthy) {
                    (Some(o), _, _) => (o.healthy, "override", o.reason.clone()),
                    (None, false, _) => (
                        true,
                        "config",
                        if region.health_check.kind == HealthCheckType::None {
                            "health_check.type is none".to_owned()
                        } else {
                            "overwatch.validation is disabled".to_owned()
                        },
                    ),
                    (None, true, Some(true)) => (true, "validation", String::new()),
                    (None, true, Some(false)) => (
                        false,
                        "validation",
                        validation_error.clone().unwrap_or_default(),
                    ),
                    (None, true, None) => (false, "validation", "not checked yet".to_owned()),
                };
                let agent = by_addr.get(&server.address).copied();
                let (healthy, authority, reason) = match (ovr, agent) {
                    (Some(_), _) | (None, None) => (healthy, source, reason),
                    (None, Some(d)) => (
                        if region.health_check.kind == HealthCheckType::None
                            || d.decision.authority != crate::overwatch::Authority::Validation
                        {
                            d.decision.healthy
                        } else {
                            healthy
                        },
                        d.decision.authority.label(),
                        if d.reason.is_empty() {
                            reason
                        } else {
                            d.reason.clone()
                        },
                    ),
                };
                let effective = match (authority, healthy) {
                    ("stale", _) => "stale",
                    (_, true) => "healthy",
                    (_, false) => "unhealthy",
                };
                if filter
                    .status
                    .as_deref()
                    .is_some_and(|s| !s.is_empty() && s != effective)
                {
                    continue;
                }
                out.push(Backend {
                    service: domain.name.as_str().to_owned(),
                    address: server.address.to_string(),
                    port: server.port,
                    weight: server.weight,
                    region: region.name.clone(),
                    effective_status: effective,
                    healthy,
                    source,
                    authority,
                    agent_id: agent.map(|d| d.agent_id.clone()),
                    reason,
                    validation_healthy,
                    validation_last_check: status
                        .as_ref()
                        .and_then(|s| s.last_checked)
                        .map(rfc3339),
                    validation_error,
                    override_status: ovr.map(|o| o.healthy),
                    override_reason: ovr.map(|o| o.reason.clone()).unwrap_or_default(),
                    override_by: ovr.map(|o| o.authority.clone()).unwrap_or_default(),
                    override_at: ovr.map(|o| rfc3339_ms(o.created_at_unix_ms)),
                });
            }
        }
    }
    // Backends only agents know of (see `crate::overwatch`).
    for d in agents.iter().filter(|d| d.configured.is_none()) {
        if service.as_ref().is_some_and(|s| *s != d.service)
            || filter
                .region
                .as_deref()
                .is_some_and(|r| !r.is_empty() && r != d.region)
        {
            continue;
        }
        let ovr = view.lookup(&d.service, d.addr.ip(), d.addr.port());
        let healthy = ovr.map_or(d.decision.healthy, |o| o.healthy);
        let authority = if ovr.is_some() {
            "override"
        } else {
            d.decision.authority.label()
        };
        let effective = match (authority, healthy) {
            ("stale", _) => "stale",
            (_, true) => "healthy",
            (_, false) => "unhealthy",
        };
        if filter
            .status
            .as_deref()
            .is_some_and(|s| !s.is_empty() && s != effective)
        {
            continue;
        }
        out.push(Backend {
            service: d.service.clone(),
            address: d.addr.ip().to_string(),
            port: d.addr.port(),
            weight: d.weight,
            region: d.region.clone(),
            effective_status: effective,
            healthy,
            source: if ovr.is_some() { "override" } else { "agent" },
            authority,
            agent_id: Some(d.agent_id.clone()),
            reason: d.reason.clone(),
            validation_healthy: d.validation.flatten(),
            validation_last_check: None,
            validation_error: None,
            override_status: ovr.map(|o| o.healthy),
            override_reason: ovr.map(|o| o.reason.clone()).unwrap_or_default(),
            override_by: ovr.map(|o| o.authority.clone()).unwrap_or_default(),
            override_at: ovr.map(|o| rfc3339_ms(o.created_at_unix_ms)),
        });
    }
    out
}

/// Every override.
pub async fn list_overrides(app: &App) -> Result<Vec<OverrideView>, ApiError> {
    let state = app.state()?;
    Ok(state
        .overrides
        .current()
        .values()
        .map(override_view)
        .collect())
}

/// One override.
pub async fn get_override(
    app: &App,
    service: &str,
    address: &str,
) -> Result<OverrideView, ApiError> {
    let state = app.state()?;
    let key = parse_key(service, address)?;
    state
        .overrides
        .get(&key)
        .map(|o| override_view(&o))
        .ok_or_else(|| ApiError::NotFound("override not found".into()))
}

/// Config validation of `text` (no `includes:`: the server would read its
/// own files on the caller's behalf).
pub fn validate(text: &str) -> Validation {
    if let Ok(serde_yaml::Value::Mapping(m)) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        let has_includes = m.get("includes").is_some_and(|v| {
            !matches!(v, serde_yaml::Value::Null) && v.as_sequence().is_none_or(|s| !s.is_empty())
        });
        if has_includes {
            return Validation {
                valid: false,
                errors: vec![
                    "request.yaml: includes: not accepted in an uploaded config; validate the \
                     files on the host (opengslb config validate FILE)"
                        .into(),
                ],
            };
        }
    }
    match config::parse(text, Path::new("request.yaml")) {
        Ok(_) => Validation {
            valid: true,
            errors: Vec::new(),
        },
        Err(e) => Validation {
            valid: false,
            errors: if e.issues().is_empty() {
                vec![e.to_string()]
            } else {
                e.issues().iter().map(ToString::to_string).collect()
            },
        },
    }
}

/// The region of `ip`, from the geo range table of the snapshot in force
/// (the one the dataplanes answer from): custom mappings (runtime or
/// config, longest prefix), then the GeoIP database, then `default_region`.
pub async fn geo_lookup(app: &App, ip: &str) -> Result<GeoAnswer, ApiError> {
    let state = app.state()?;
    let addr: IpAddr = ip.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid ip {:?}: expected an IP address",
            truncate(ip)
        ))
    })?;
    let geo = state.geo_table();
    let t = &geo.table;
    let m = t.lookup(addr);
    let region = m
        .region
        .and_then(|r| t.regions.get(r as usize).cloned())
        .unwrap_or_default();
    let (source, cidr) = match m.range {
        Some(r) => {
            let v4 = matches!(addr, IpAddr::V4(_))
                || matches!(addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
            let source = match r.source {
                RangeSource::Runtime => "runtime_mapping",
                RangeSource::Config => "custom_mapping",
                RangeSource::Database => "geoip",
            };
            (source, Some(RangeTable::network(&r, v4).to_string()))
        }
        None if m.region.is_some() => ("default_region", None),
        None => ("none", None),
    };
    Ok(GeoAnswer {
        ip: addr.to_string(),
        region,
        source,
        cidr,
    })
}

/// Runtime mappings, then the config's.
pub async fn geo_mappings(app: &App) -> Result<Vec<GeoMappingView>, ApiError> {
    let state = app.state()?;
    let cfg = state.config.lock().await.clone();
    let mut out: Vec<GeoMappingView> = app
        .geo_mappings()
        .iter()
        .map(|m| GeoMappingView {
            cidr: m.cidr.clone(),
            region: m.region.clone(),
            comment: m.comment.clone(),
            source: "runtime",
            created_at: Some(rfc3339_ms(m.created_at_unix_ms)),
        })
        .collect();
    out.extend(
        cfg.overwatch
            .geolocation
            .custom_mappings
            .iter()
            .map(|m| GeoMappingView {
                cidr: m.cidr.trunc().to_string(),
                region: m.region.clone(),
                comment: m.comment.clone().unwrap_or_default(),
                source: "config",
                created_at: None,
            }),
    );
    Ok(out)
}

/// The newest audit records.
pub async fn audit(app: &App, limit: Option<i64>) -> Result<Vec<AuditView>, ApiError> {
    let state = app.state()?;
    let limit = limit.unwrap_or(100).clamp(1, MAX_AUDIT);
    Ok(state
        .store
        .audit_entries(limit)
        .await?
        .into_iter()
        .map(|a| AuditView {
            id: a.id,
            at: rfc3339_ms(a.at_unix_ms),
            actor: a.actor,
            source: a.source,
            action: a.action,
            detail: a.detail,
        })
        .collect())
}

// === changes ===

/// Sets an override and publishes at once.
pub async fn set_override(
    app: &App,
    caller: &Caller,
    service: &str,
    address: &str,
    req: OverrideRequest,
) -> Result<OverrideView, ApiError> {
    let state = app.state()?;
    let key = parse_key(service, address)?;
    if req.source.trim().is_empty() {
        return Err(ApiError::BadRequest("source is required".into()));
    }
    if req.reason.chars().count() > 1024 || req.source.chars().count() > 128 {
        return Err(ApiError::BadRequest(
            "reason is limited to 1024 characters, source to 128".into(),
        ));
    }
    {
        let cfg = state.config.lock().await.clone();
        check_target(&cfg, &key)?;
    }
    let row = OverrideRow {
        service: key.service.clone(),
        address: key.address.clone(),
        healthy: req.healthy,
        reason: req.reason,
        source: req.source.trim().to_owned(),
        authority: format!("{}@{}", caller.who, caller.from),
        created_at_unix_ms: now_ms(),
    };
    state.overrides.set(&state.store, row.clone()).await?;
    state.metrics.override_changed();
    let generation = publish(&state, "override").await;
    let detail = serde_json::json!({
        "service": row.service, "address": row.address, "healthy": row.healthy,
        "reason": row.reason, "source": row.source, "generation": generation,
    });
    audit_change(&state, caller, "override.set", &detail).await;
    tracing::info!(service = %row.service, address = %row.address, healthy = row.healthy, who = %caller.who, from = %caller.from, "override set");
    Ok(override_view(&row))
}

/// Deletes an override and publishes at once.
pub async fn delete_override(
    app: &App,
    caller: &Caller,
    service: &str,
    address: &str,
) -> Result<(), ApiError> {
    let state = app.state()?;
    let key = parse_key(service, address)?;
    if state.overrides.get(&key).is_none() {
        return Err(ApiError::NotFound("override not found".into()));
    }
    state.overrides.delete(&state.store, &key).await?;
    state.metrics.override_changed();
    let generation = publish(&state, "override").await;
    let detail = serde_json::json!({
        "service": key.service, "address": key.address, "generation": generation,
    });
    audit_change(&state, caller, "override.delete", &detail).await;
    tracing::info!(service = %key.service, address = %key.address, who = %caller.who, from = %caller.from, "override cleared");
    Ok(())
}

/// Reloads the config file.
pub async fn reload(app: &App, caller: &Caller) -> Result<Reloaded, ApiError> {
    let state = app.state()?;
    let generation = state
        .reload(&format!("{}@{}", caller.who, caller.from))
        .await?;
    Ok(Reloaded {
        reloaded: true,
        generation,
        message: format!("config reloaded; generation {generation} published"),
    })
}

/// Adds a runtime geo mapping.
pub async fn add_geo_mapping(
    app: &App,
    caller: &Caller,
    req: GeoMappingRequest,
) -> Result<GeoMappingView, ApiError> {
    let state = app.state()?;
    let net: IpNet = req.cidr.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid cidr {:?}: expected a network such as 10.0.0.0/8",
            truncate(&req.cidr)
        ))
    })?;
    let net = net.trunc();
    if req.comment.chars().count() > 256 {
        return Err(ApiError::BadRequest(
            "comment is limited to 256 characters".into(),
        ));
    }
    {
        let cfg = state.config.lock().await.clone();
        if cfg.region_index(&req.region).is_none() {
            return Err(ApiError::Invalid {
                message: format!("unknown region {:?}", truncate(&req.region)),
                errors: vec![format!(
                    "region: {:?} is not a configured region",
                    truncate(&req.region)
                )],
            });
        }
        if cfg
            .overwatch
            .geolocation
            .custom_mappings
            .iter()
            .any(|m| m.cidr.trunc() == net)
        {
            return Err(ApiError::Conflict(format!(
                "{net} is mapped in the config file (overwatch.geolocation.custom_mappings)"
            )));
        }
    }
    let row = GeoMappingRow {
        cidr: net.to_string(),
        region: req.region,
        comment: req.comment,
        created_at_unix_ms: now_ms(),
    };
    let _w = app.geo_writer().await;
    if !state.store.add_geo_mapping(&row).await? {
        return Err(ApiError::Conflict(format!("{net} is already mapped")));
    }
    app.reload_geo(&state).await?;
    let detail =
        serde_json::json!({"cidr": row.cidr, "region": row.region, "comment": row.comment});
    audit_change(&state, caller, "geo.mapping.add", &detail).await;
    Ok(GeoMappingView {
        cidr: row.cidr,
        region: row.region,
        comment: row.comment,
        source: "runtime",
        created_at: Some(rfc3339_ms(row.created_at_unix_ms)),
    })
}

/// Deletes a runtime geo mapping.
pub async fn delete_geo_mapping(app: &App, caller: &Caller, cidr: &str) -> Result<(), ApiError> {
    let state = app.state()?;
    let net: IpNet = cidr.trim().parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid cidr {:?}: expected a network such as 10.0.0.0/8 (URL-encode '/' as %2F)",
            truncate(cidr)
        ))
    })?;
    let net = net.trunc();
    let _w = app.geo_writer().await;
    if !state.store.delete_geo_mapping(&net.to_string()).await? {
        let cfg = state.config.lock().await.clone();
        if cfg
            .overwatch
            .geolocation
            .custom_mappings
            .iter()
            .any(|m| m.cidr.trunc() == net)
        {
            return Err(ApiError::Conflict(format!(
                "{net} is mapped in the config file; edit the file and reload"
            )));
        }
        return Err(ApiError::NotFound(format!("no runtime mapping for {net}")));
    }
    app.reload_geo(&state).await?;
    audit_change(
        &state,
        caller,
        "geo.mapping.delete",
        &serde_json::json!({"cidr": net.to_string()}),
    )
    .await;
    Ok(())
}

// === helpers ===

fn parse_key(service: &str, address: &str) -> Result<OverrideKey, ApiError> {
    OverrideKey::parse(service, address).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// 404 unless `key` names a configured service and one of its servers.
fn check_target(cfg: &Config, key: &OverrideKey) -> Result<(), ApiError> {
    let Some(domain) = cfg.domains.iter().find(|d| d.name.as_str() == key.service) else {
        return Err(ApiError::NotFound(format!(
            "unknown service {:?}: not a configured domain",
            key.service
        )));
    };
    let Some((ip, port)) = key.target() else {
        return Err(ApiError::BadRequest("invalid address".into()));
    };
    let found = domain.regions.iter().any(|r| {
        cfg.region_index(r).is_some_and(|ri| {
            cfg.regions[ri].servers.iter().any(|s| {
                s.address == ip && port.is_none_or(|p| p == s.port) && s.serves(&domain.name)
            })
        })
    });
    if !found {
        return Err(ApiError::NotFound(format!(
            "service {:?} has no server {}",
            key.service, key.address
        )));
    }
    Ok(())
}

/// Publishes a snapshot with the change; a failure is logged (the change
/// is stored and the recompile loop retries on the next event).
async fn publish(state: &Arc<State>, reason: &'static str) -> u64 {
    match state.recompile(reason).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, reason, "publishing after an admin change failed");
            0
        }
    }
}

/// Writes the audit record of a change; a failure is logged, not returned
/// (the change itself is done and published).
async fn audit_change(state: &State, caller: &Caller, action: &str, detail: &serde_json::Value) {
    if let Err(e) = state
        .store
        .audit(
            &caller.who,
            &caller.from.to_string(),
            action,
            &detail.to_string(),
        )
        .await
    {
        tracing::error!(error = %e, action, "audit record not written");
    }
}

fn override_view(o: &OverrideRow) -> OverrideView {
    OverrideView {
        service: o.service.clone(),
        address: o.address.clone(),
        healthy: o.healthy,
        reason: o.reason.clone(),
        source: o.source.clone(),
        created_at: rfc3339_ms(o.created_at_unix_ms),
        created_at_unix_ms: o.created_at_unix_ms,
        authority: o.authority.clone(),
    }
}

fn check_kind(k: HealthCheckType) -> &'static str {
    match k {
        HealthCheckType::Http => "http",
        HealthCheckType::Https => "https",
        HealthCheckType::Tcp => "tcp",
        HealthCheckType::None => "none",
    }
}

/// At most 64 characters of hostile input in a message.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `GET /api/v1/dnssec/ds?zone=`, gRPC `GetDs`, `opengslb dnssec ds`.
#[derive(Debug, Clone, Serialize)]
pub struct DsRecords {
    /// The zone, lower-case, no final dot.
    pub zone: String,
    /// One full DS line per secure-entry-point key, ready for the registrar.
    pub ds: Vec<String>,
}

/// `POST /api/v1/dnssec/keys/export`: every zone's keys with private
/// parts, for a peer controlplane's key sync (change-level token; audited).
///
/// The request is the sealed key-sync protocol's (see
/// `crate::dnssec::sync`): a MAC of a change-level token over a fresh nonce
/// and timestamp; the answer is the export sealed for that request. A
/// bearer token alone is refused (400).
pub async fn dnssec_export(
    app: &App,
    caller: &Caller,
    body: &[u8],
) -> Result<crate::dnssec::sync::SealedExport, ApiError> {
    use crate::dnssec::sync::{self, SealError};
    let state = app.state()?;
    if !state.dnssec.enabled() {
        return Err(ApiError::NotFound("DNSSEC is off".into()));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = sync::authenticate(
        body,
        app.access().change_tokens(),
        now,
        sync::ReplayCache::global(),
    )
    .map_err(|e| match e {
        SealError::Malformed(m) => ApiError::BadRequest(m),
        SealError::NoTokens => ApiError::Forbidden(e.to_string()),
        SealError::Refused(m) => ApiError::Unauthorized(m),
    })?;
    let export = state.dnssec.export();
    let zones: Vec<&str> = export.zones.iter().map(|z| z.zone.as_str()).collect();
    let caller = Caller {
        who: auth.who.clone(),
        from: caller.from,
    };
    audit_change(
        &state,
        &caller,
        "dnssec.keys.export",
        &serde_json::json!({"zones": zones, "protocol": sync::PROTOCOL}),
    )
    .await;
    let plain =
        serde_json::to_vec(&export).map_err(|e| ApiError::Internal(format!("key export: {e}")))?;
    sync::seal(&auth, &plain).map_err(ApiError::Internal)
}

/// The DS records of `zone`.
pub fn dnssec_ds(app: &App, zone: &str) -> Result<DsRecords, ApiError> {
    let state = app.state()?;
    let ds = state
        .dnssec
        .ds_records(zone)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    Ok(DsRecords {
        zone: zone.trim_end_matches('.').to_ascii_lowercase(),
        ds,
    })
}

/// `GET /api/v1/dnssec/status`, `opengslb dnssec status`: keys, tags, ages,
/// signatures and the next expiry.
pub async fn dnssec_status(app: &App) -> Result<crate::dnssec::DnssecStatus, ApiError> {
    let state = app.state()?;
    let sync = state
        .config
        .lock()
        .await
        .overwatch
        .dnssec
        .key_sync
        .as_ref()
        .is_some_and(|k| !k.peers.is_empty());
    Ok(state.dnssec.status(sync))
}

/// A refused rollover request as an API error.
pub fn rollover_error(e: crate::dnssec::rollover::RolloverError) -> ApiError {
    use crate::dnssec::rollover::RolloverError as E;
    match e {
        E::NotFound(m) => ApiError::NotFound(m),
        E::Conflict(m) => ApiError::Conflict(m),
        E::BadRequest(m) => ApiError::BadRequest(m),
        E::Internal(e) => ApiError::from(e),
    }
}

/// RFC 3339 (UTC, seconds) of `t`.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rfc3339_ms(ms)
}

/// RFC 3339 (UTC, seconds) of milliseconds since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn validate_reports_file_line_key_and_refuses_includes() {
        let v = validate("domains:\n  - {name: www.example.com, routing_algorithm: fastest}\n");
        assert!(!v.valid);
        assert!(
            v.errors.iter().any(|e| e.starts_with("request.yaml:2:")),
            "{:?}",
            v.errors
        );
        let v = validate("includes: [\"/etc/*\"]\n");
        assert!(!v.valid);
        assert!(v.errors[0].contains("includes"), "{:?}", v.errors);
        assert!(validate("{}\n").valid || !validate("{}\n").errors.is_empty());
    }
}
