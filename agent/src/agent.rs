//! The running agent: checks its backends with the shared health crate,
//! drains them predictively, and reports to every controlplane over its own
//! link (TLS, token, pinned certificate), each link independent of the
//! others: one controlplane down never delays another.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use opengslb_controlplane::{
    config::{AgentConfig, HealthCheckType, PredictiveConfig},
    health::check_of,
    overwatch::tls::{self, Identity, Trust},
};
use opengslb_health::{Observer, Outcome, Prober, Status, Target};
use opengslb_proto::{
    agent_service_client::AgentServiceClient, BackendHealth, BackendRef, CheckSpec,
    DeregisterRequest, HealthClaim, HeartbeatRequest, RegisterRequest, RotateCertificateRequest,
};
use tokio::{sync::watch, time::Instant};

use crate::{
    error_endpoint::ErrorEndpoint,
    metrics::AgentMetrics,
    predictive::{sample_memory, CpuSampler, ErrorWindow, Ramp, Signal},
};

/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One configured backend.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    /// Service (domain).
    pub(crate) service: String,
    /// Address and port.
    pub(crate) addr: SocketAddr,
    /// Configured weight.
    pub(crate) weight: u32,
    /// Its check (`None`: `type: none`, always healthy).
    pub(crate) target: Option<Target>,
    /// What the controlplane may use to validate it.
    pub(crate) spec: CheckSpec,
}

/// The mutable state of one backend.
#[derive(Debug, Clone)]
struct BackendState {
    claim: HealthClaim,
    permille: u32,
    reason: String,
    latency_us: u32,
    /// Bumped on every change that is reported.
    version: u64,
    errors: ErrorWindow,
    ramp: Ramp,
    error_signal: Signal,
}

/// What every task of the agent shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Backends, config order.
    pub(crate) backends: Vec<Backend>,
    states: Mutex<Vec<BackendState>>,
    by_target: HashMap<Target, Vec<usize>>,
    /// Bumped on every reported change: links send at once.
    changed: watch::Sender<u64>,
    /// Metrics.
    pub(crate) metrics: AgentMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The backends of `cfg`.
    pub(crate) fn new(cfg: &AgentConfig, metrics: AgentMetrics) -> Arc<Self> {
        let mut backends = Vec::new();
        let mut by_target: HashMap<Target, Vec<usize>> = HashMap::new();
        for (i, b) in cfg.backends.iter().enumerate() {
            let addr = SocketAddr::new(b.address, b.port);
            let target = check_of(&b.health_check, None).map(|check| Target { addr, check });
            if let Some(t) = &target {
                by_target.entry(t.clone()).or_default().push(i);
            }
            let kind = match b.health_check.kind {
                HealthCheckType::Http => "http",
                HealthCheckType::Https => "https",
                HealthCheckType::Tcp => "tcp",
                HealthCheckType::None => "none",
            };
            backends.push(Backend {
                service: b.service.trim_end_matches('.').to_ascii_lowercase(),
                addr,
                weight: b.weight,
                target,
                spec: CheckSpec {
                    kind: kind.to_owned(),
                    path: b.health_check.path.clone(),
                    host: b.health_check.host.clone().unwrap_or_default(),
                },
            });
        }
        let states = backends
            .iter()
            .map(|b| BackendState {
                // `type: none` is healthy from the start; checked ones wait
                // for their first result.
                claim: if b.target.is_none() {
                    HealthClaim::Healthy
                } else {
                    HealthClaim::Unhealthy
                },
                permille: 1000,
                reason: if b.target.is_none() {
                    String::new()
                } else {
                    "not checked yet".to_owned()
                },
                latency_us: 0,
                version: 1,
                errors: ErrorWindow::default(),
                ramp: Ramp::default(),
                error_signal: Signal::default(),
            })
            .collect();
        metrics.backends.set(backends.len() as i64);
        Arc::new(Self {
            backends,
            states: Mutex::new(states),
            by_target,
            changed: watch::Sender::new(0),
            metrics,
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The report of every backend whose version is above `sent` (all when
    /// `full`), and the versions now.
    fn report(&self, sent: &mut [u64], full: bool) -> Vec<BackendHealth> {
        let states = lock(&self.states);
        let mut out = Vec::new();
        for (i, (b, s)) in self.backends.iter().zip(states.iter()).enumerate() {
            if full || s.version > sent[i] {
                sent[i] = s.version;
                out.push(BackendHealth {
                    service: b.service.clone(),
                    address: b.addr.ip().to_string(),
                    port: u32::from(b.addr.port()),
                    claim: s.claim.into(),
                    weight_permille: s.permille,
                    latency_us: s.latency_us,
                    reason: s.reason.clone(),
                });
            }
        }
        out
    }
}

impl Observer for Shared {
    fn probed(&self, target: &Target, outcome: &Outcome, status: &Status, changed: bool) {
        let Some(idx) = self.by_target.get(target) else {
            return;
        };
        let now = Instant::now();
        let mut bump = false;
        {
            let mut states = lock(&self.states);
            for &i in idx {
                let s = &mut states[i];
                s.errors.record(now, outcome.result.is_ok());
                if let Ok(ok) = &outcome.result {
                    s.latency_us = u32::try_from(ok.connect.as_micros()).unwrap_or(u32::MAX);
                }
                if changed {
                    let healthy = status.healthy == Some(true);
                    s.claim = if healthy {
                        HealthClaim::Healthy
                    } else {
                        HealthClaim::Unhealthy
                    };
                    s.reason = match &outcome.result {
                        Ok(_) => String::new(),
                        Err(f) => f.to_string(),
                    };
                    s.version += 1;
                    bump = true;
                    tracing::info!(backend = %self.backends[i].addr, service = %self.backends[i].service, healthy, "backend health changed");
                }
            }
        }
        if bump {
            self.bump();
        }
    }
}

/// Starts the checks of every backend (first result at once).
pub(crate) fn start_checks(shared: &Arc<Shared>) -> opengslb_health::Result<Prober> {
    let prober = Prober::new(shared.clone())?;
    prober.add(
        shared
            .backends
            .iter()
            .filter_map(|b| b.target.clone())
            .map(|t| (t, 0.3)),
    );
    Ok(prober)
}

/// Samples CPU, memory and error rates every `check_interval` and moves
/// each backend's weight share (see [`crate::predictive`]).
pub(crate) async fn predictive_loop(shared: Arc<Shared>, cfg: PredictiveConfig) {
    let every = cfg.check_interval.get().max(Duration::from_millis(50));
    // The ramp moves in steps of at most a second (or the interval).
    let step = every.min(Duration::from_secs(1));
    let mut cpu = CpuSampler::default();
    let (mut cpu_sig, mut mem_sig) = (Signal::default(), Signal::default());
    // An operator-named endpoint replaces the failed-check error rate.
    let mut endpoint = cfg.error_rate.endpoint.as_deref().and_then(|url| {
        ErrorEndpoint::new(url)
            .map_err(|e| tracing::error!(error = %e, "predictive.error_rate.endpoint ignored"))
            .ok()
    });
    let mut endpoint_sig = Signal::default();
    let fetch_timeout = every.min(Duration::from_secs(2));
    let mut next_sample = Instant::now();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let dt = now.saturating_duration_since(last);
        last = now;
        if now >= next_sample {
            next_sample = now + every;
            if let Some(v) = cpu.sample() {
                cpu_sig.update(v, cfg.cpu.threshold);
            }
            if let Some(v) = sample_memory() {
                mem_sig.update(v, cfg.memory.threshold);
            }
            if let Some(ep) = endpoint.as_mut() {
                match ep
                    .poll(now, cfg.error_rate.window.get(), fetch_timeout)
                    .await
                {
                    Ok(Some(rate)) => {
                        endpoint_sig.update(rate, cfg.error_rate.threshold);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Not knowing is no reason to drain.
                        shared.metrics.endpoint_failures.inc();
                        endpoint_sig = Signal::default();
                        tracing::warn!(error = %e, "predictive.error_rate.endpoint unreadable; its signal is off until it answers");
                    }
                }
            }
        }
        let mut bump = false;
        {
            let mut states = lock(&shared.states);
            for (i, s) in states.iter_mut().enumerate() {
                if endpoint.is_some() {
                    s.error_signal = endpoint_sig;
                } else if let Some(rate) = s.errors.rate(now, cfg.error_rate.window.get()) {
                    s.error_signal.update(rate, cfg.error_rate.threshold);
                }
                let mut bleed: Option<Duration> = None;
                let mut take = |on: bool, d: Duration| {
                    if on {
                        bleed = Some(bleed.map_or(d, |b| b.min(d)));
                    }
                };
                take(cpu_sig.active, cfg.cpu.bleed_duration.get());
                take(mem_sig.active, cfg.memory.bleed_duration.get());
                take(s.error_signal.active, cfg.error_rate.bleed_duration.get());
                let draining = bleed.is_some();
                // Back up at the slowest configured rate.
                let rate = bleed.unwrap_or_else(|| {
                    cfg.cpu
                        .bleed_duration
                        .get()
                        .max(cfg.memory.bleed_duration.get())
                        .max(cfg.error_rate.bleed_duration.get())
                });
                let p = s.ramp.step(draining, dt, rate);
                let service = shared.backends[i].service.as_str();
                for (signal, on) in [
                    ("cpu", cpu_sig.active),
                    ("memory", mem_sig.active),
                    ("error_rate", s.error_signal.active),
                ] {
                    shared
                        .metrics
                        .predictive
                        .with_label_values(&[service, signal])
                        .set(i64::from(on));
                }
                if p != s.permille {
                    s.permille = p;
                    s.version += 1;
                    bump = true;
                }
            }
        }
        if bump {
            shared.bump();
        }
    }
}

/// How one link reaches and trusts its controlplane.
#[derive(Debug, Clone)]
pub(crate) struct LinkSettings {
    /// `host:port`.
    pub(crate) endpoint: String,
    /// Controlplane trust.
    pub(crate) trust: Trust,
    /// Agent id.
    pub(crate) agent_id: String,
    /// Region.
    pub(crate) region: String,
    /// Token.
    pub(crate) token: String,
    /// Heartbeat period.
    pub(crate) interval: Duration,
    /// Missed heartbeats before stale.
    pub(crate) missed_threshold: u32,
    /// Identity files (rotation writes them).
    pub(crate) cert_path: PathBuf,
    /// Key file.
    pub(crate) key_path: PathBuf,
}

/// The agent's identities: the current one, and the one it replaced (kept
/// until every controlplane pinned the new one).
#[derive(Debug, Clone)]
pub(crate) struct Identities {
    /// Presented on every new connection.
    pub(crate) current: Identity,
    /// Before the last rotation.
    pub(crate) previous: Option<Identity>,
}

/// Shared by the links (rotation replaces it).
pub(crate) type SharedIdentity = Arc<Mutex<Identities>>;

/// One controlplane link: connect, register, stream heartbeats; on any
/// failure back off (doubling, with jitter) and start over. Returns after a
/// deregistration once `stop` turns true.
pub(crate) async fn link(
    settings: LinkSettings,
    shared: Arc<Shared>,
    identity: SharedIdentity,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&settings, &shared, &identity, &mut stop, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                shared.metrics.heartbeat_failures.inc();
                tracing::warn!(controlplane = %settings.endpoint, error = %e, retry_ms = backoff.as_millis() as u64, "controlplane link down");
            }
        }
        let jitter = backoff.mul_f64(0.2 * jitter_unit());
        tokio::select! {
            () = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A number in [0, 1) that differs per call (no RNG dependency needed).
fn jitter_unit() -> f64 {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(n % 1000) / 1000.0
}

/// Counts an open link while alive.
struct Active(prometheus::IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Connects with `id` and registers.
async fn connect_register(
    s: &LinkSettings,
    shared: &Arc<Shared>,
    id: &Identity,
) -> Result<
    (
        AgentServiceClient<tonic::transport::Channel>,
        u64,
        Vec<String>,
    ),
    Failure,
> {
    let config =
        tls::client_config(id, &s.endpoint, &s.trust).map_err(|e| Failure::Other(e.to_string()))?;
    let channel = tls::connect(&s.endpoint, config, Duration::from_secs(3))
        .await
        .map_err(|e| Failure::Other(format!("connect: {e}: {}", source_chain(&e))))?;
    let mut client = AgentServiceClient::new(channel);
    let reg = client
        .register(RegisterRequest {
            agent_id: s.agent_id.clone(),
            region: s.region.clone(),
            service_token: s.token.clone(),
            backends: shared
                .backends
                .iter()
                .map(|b| BackendRef {
                    service: b.service.clone(),
                    address: b.addr.ip().to_string(),
                    port: u32::from(b.addr.port()),
                    weight: b.weight,
                    check: Some(b.spec.clone()),
                })
                .collect(),
            heartbeat_interval_ms: u32::try_from(s.interval.as_millis()).unwrap_or(u32::MAX),
            missed_threshold: s.missed_threshold,
        })
        .await
        .map_err(|e| {
            if e.message().contains("pinned to another certificate") {
                Failure::PinnedOther
            } else {
                Failure::Other(format!("register refused: {}", e.message()))
            }
        })?
        .into_inner();
    Ok((client, reg.session, reg.refused))
}

/// Why a registration failed.
#[derive(Debug)]
enum Failure {
    /// The controlplane has another certificate of ours pinned (a rotation
    /// it has not seen yet).
    PinnedOther,
    /// Anything else.
    Other(String),
}

async fn session(
    s: &LinkSettings,
    shared: &Arc<Shared>,
    identity: &SharedIdentity,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let ids = lock(identity).clone();
    let (mut client, session, refused) = match connect_register(s, shared, &ids.current).await {
        Ok(r) => r,
        Err(Failure::PinnedOther) => {
            // This controlplane still pins our previous certificate: rotate
            // it over a connection made with that one, then reconnect.
            let Some(prev) = &ids.previous else {
                return Err("register refused: pinned to another certificate".into());
            };
            let (mut client, _, _) = connect_register(s, shared, prev)
                .await
                .map_err(|e| format!("register with the previous certificate: {e:?}"))?;
            client
                .rotate_certificate(RotateCertificateRequest {
                    certificate_der: ids.current.cert_der.clone(),
                })
                .await
                .map_err(|e| format!("certificate rotation refused: {}", e.message()))?;
            tracing::info!(controlplane = %s.endpoint, "rotated certificate pinned");
            *backoff = BACKOFF_MIN / 2;
            return Err("reconnecting with the rotated certificate".into());
        }
        Err(Failure::Other(e)) => return Err(e),
    };
    let reg = opengslb_proto::RegisterResponse {
        accepted: true,
        message: String::new(),
        session,
        refused,
    };
    if !reg.refused.is_empty() {
        tracing::warn!(controlplane = %s.endpoint, refused = ?reg.refused, "backends refused: their service is not covered by the token");
    }
    tracing::info!(controlplane = %s.endpoint, "registered");
    *backoff = BACKOFF_MIN;
    shared.metrics.connections.inc();
    let _active = Active(shared.metrics.connections.clone());

    let (tx, rx) = tokio::sync::mpsc::channel::<HeartbeatRequest>(16);
    let mut sent = vec![0u64; shared.backends.len()];
    let mut sequence = 0u64;
    let mut send = |full: bool, sent: &mut Vec<u64>| {
        sequence += 1;
        HeartbeatRequest {
            session: reg.session,
            sequence,
            backends: shared.report(sent, full),
            full,
        }
    };
    tx.send(send(true, &mut sent))
        .await
        .map_err(|_| "heartbeat stream closed".to_owned())?;
    let mut inbound = client
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("heartbeat refused: {}", e.message()))?
        .into_inner();
    shared.metrics.heartbeats.inc();
    let mut changed = shared.changed.subscribe();
    let mut tick = tokio::time::interval_at(Instant::now() + s.interval, s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.deregister(DeregisterRequest { session: reg.session, reason: "shutdown".into() }),
                    ).await;
                    tracing::info!(controlplane = %s.endpoint, "deregistered");
                    return Ok(());
                }
                continue;
            }
            r = changed.changed() => {
                if r.is_err() { return Err("agent stopping".into()); }
                false
            }
            _ = tick.tick() => {
                rotate_if_due(s, &mut client, identity).await?;
                false
            }
            m = inbound.message() => match m {
                Ok(Some(r)) if r.accepted => continue,
                Ok(Some(r)) => {
                    tracing::warn!(controlplane = %s.endpoint, message = %r.message, "heartbeat refused");
                    continue;
                }
                Ok(None) => return Err("heartbeat stream ended".into()),
                Err(e) => return Err(format!("heartbeat stream: {}", e.message())),
            },
        };
        tx.send(send(full, &mut sent))
            .await
            .map_err(|_| "heartbeat stream closed".to_owned())?;
        shared.metrics.heartbeats.inc();
    }
}

/// Renews the certificate (same key) when it nears its end and has this
/// controlplane pin the new one over the current authenticated channel;
/// the link then reconnects with it.
async fn rotate_if_due(
    s: &LinkSettings,
    client: &mut AgentServiceClient<tonic::transport::Channel>,
    identity: &SharedIdentity,
) -> Result<(), String> {
    let current = lock(identity).current.clone();
    if !current.renewal_due(SystemTime::now()) {
        return Ok(());
    }
    // Kept so a restart can still reach controlplanes that pin the old one.
    std::fs::copy(&s.cert_path, previous_path(&s.cert_path))
        .map_err(|e| format!("keeping the previous certificate: {e}"))?;
    let next = current
        .renew(&s.cert_path, &s.key_path, &s.agent_id)
        .map_err(|e| format!("certificate renewal: {e}"))?;
    client
        .rotate_certificate(RotateCertificateRequest {
            certificate_der: next.cert_der.clone(),
        })
        .await
        .map_err(|e| format!("certificate rotation refused: {}", e.message()))?;
    tracing::info!(controlplane = %s.endpoint, fingerprint = %next.fingerprint(), "certificate rotated");
    *lock(identity) = Identities {
        current: next,
        previous: Some(current),
    };
    Err("reconnecting with the rotated certificate".into())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push(c.to_string());
        cur = c.source();
    }
    out.join(": ")
}

/// Where the certificate replaced by the last rotation is kept.
pub(crate) fn previous_path(cert_path: &std::path::Path) -> PathBuf {
    let mut p = cert_path.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent config with one unchecked backend whose error rate comes
    /// from `endpoint`; CPU and memory off.
    fn config(endpoint: &str) -> AgentConfig {
        let text = format!(
            r#"
agent:
  identity: {{service_token: "token-0123456789abcdef"}}
  controlplanes: ["127.0.0.1:7946"]
  backends:
    - {{service: www.example.com, address: 127.0.0.1, port: 8080, health_check: {{type: none}}}}
  predictive:
    enabled: true
    check_interval: 50ms
    cpu: {{threshold: 0, bleed_duration: 200ms}}
    memory: {{threshold: 0, bleed_duration: 200ms}}
    error_rate: {{threshold: 10, window: 10s, bleed_duration: 200ms, endpoint: "{endpoint}"}}
"#
        );
        let cfg = opengslb_controlplane::config::parse(&text, std::path::Path::new("agent.yaml"))
            .unwrap();
        cfg.agent.unwrap()
    }

    /// Serves `{"requests": 100·n, "errors": errors_per_100·n}` on its n-th
    /// connection (or garbage), on loopback.
    async fn endpoint(errors_per_100: u64, garbage: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 1u64..=400 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut req = [0u8; 512];
                let _ = s.read(&mut req).await;
                let body = if garbage {
                    "<html>oops</html>".to_owned()
                } else {
                    format!(
                        "{{\"requests\": {}, \"errors\": {}}}",
                        100 * n,
                        errors_per_100 * n
                    )
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        format!("http://{addr}/errors")
    }

    /// Runs the predictive loop for `d`; the backend's share and the
    /// endpoint failures counted.
    async fn run_for(cfg: &AgentConfig, d: Duration) -> (u32, u64, i64) {
        let shared = Shared::new(cfg, AgentMetrics::new().unwrap());
        let task = tokio::spawn(predictive_loop(shared.clone(), cfg.predictive.clone()));
        tokio::time::sleep(d).await;
        task.abort();
        let permille = lock(&shared.states)[0].permille;
        let active = shared
            .metrics
            .predictive
            .with_label_values(&["www.example.com", "error_rate"])
            .get();
        (permille, shared.metrics.endpoint_failures.get(), active)
    }

    #[tokio::test]
    async fn endpoint_error_rate_drains_the_backend() {
        // 30 % errors, threshold 10 %: drained to 0 within the bleed.
        let cfg = config(&endpoint(30, false).await);
        let (permille, failures, active) = run_for(&cfg, Duration::from_millis(1200)).await;
        assert_eq!(permille, 0);
        assert_eq!(failures, 0);
        assert_eq!(active, 1);
        // 2 % errors: stays in.
        let cfg = config(&endpoint(2, false).await);
        let (permille, failures, active) = run_for(&cfg, Duration::from_millis(800)).await;
        assert_eq!(permille, 1000);
        assert_eq!(failures, 0);
        assert_eq!(active, 0);
    }

    #[test]
    fn a_bad_endpoint_url_is_a_config_error() {
        let good = config("http://127.0.0.1:9102/errors");
        assert_eq!(
            good.predictive.error_rate.endpoint.as_deref(),
            Some("http://127.0.0.1:9102/errors")
        );
        for bad in [
            "https://127.0.0.1:9102/errors",
            "127.0.0.1:9102",
            "http://:80/x",
        ] {
            let text = format!(
                "agent:\n  identity: {{service_token: \"token-0123456789abcdef\"}}\n  controlplanes: [\"127.0.0.1:7946\"]\n  backends: [{{service: www.example.com, address: 127.0.0.1, port: 8080}}]\n  predictive: {{error_rate: {{endpoint: \"{bad}\"}}}}\n"
            );
            let e = opengslb_controlplane::config::parse(&text, std::path::Path::new("agent.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("agent.predictive.error_rate.endpoint"),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn unreadable_endpoint_is_counted_and_never_drains() {
        let cfg = config(&endpoint(0, true).await);
        let (permille, failures, active) = run_for(&cfg, Duration::from_millis(800)).await;
        assert_eq!(permille, 1000, "garbage never drains");
        assert!(failures >= 3, "each failed read counted: {failures}");
        assert_eq!(active, 0);

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let cfg = config(&format!("http://{dead}/errors"));
        let (permille, failures, _) = run_for(&cfg, Duration::from_millis(800)).await;
        assert_eq!(permille, 1000, "an unreachable endpoint never drains");
        assert!(failures >= 3, "{failures}");
    }
}
