//! `AgentService`: register (token + TOFU pin), heartbeat stream,
//! certificate rotation, deregistration. Every refusal is counted and
//! changes nothing.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures::Stream;
use opengslb_proto::{
    agent_service_server::{AgentService, AgentServiceServer},
    BackendHealth, DeregisterRequest, DeregisterResponse, HealthClaim, HeartbeatRequest,
    HeartbeatResponse, RegisterRequest, RegisterResponse, RotateCertificateRequest,
    RotateCertificateResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{
    registry::{CheckSpec, Claim, Refused, Reported, Update, MAX_BACKENDS_PER_AGENT},
    tls::{fingerprint, PeerInfo},
    MAX_MESSAGE,
};
use crate::{config::DnsName, server::State, store::AgentPinRow};

/// Longest agent id accepted.
const MAX_ID: usize = 128;

/// The tonic service over `state`, with message size limits.
pub fn server(state: Arc<State>) -> AgentServiceServer<AgentApi> {
    AgentServiceServer::new(AgentApi { state })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentApi {
    state: Arc<State>,
}

type HeartbeatStream = Pin<Box<dyn Stream<Item = Result<HeartbeatResponse, Status>> + Send>>;

fn peer<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))
}

/// Constant-time equality of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A normalized service name (lower-case, no final dot).
fn service_name(s: &str) -> Option<String> {
    DnsName::parse(s.trim()).ok().map(|n| n.as_str().to_owned())
}

fn addr_of(address: &str, port: u32) -> Option<SocketAddr> {
    let ip: IpAddr = address.trim().parse().ok()?;
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

fn claim_of(c: i32) -> Option<Claim> {
    match HealthClaim::try_from(c).ok()? {
        HealthClaim::Healthy => Some(Claim::Healthy),
        HealthClaim::Unhealthy => Some(Claim::Unhealthy),
        // Draining: served while its weight share lasts.
        HealthClaim::Draining => Some(Claim::Healthy),
        HealthClaim::Unspecified => None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl AgentApi {
    fn refuse_auth(&self, reason: &str, message: String) -> Status {
        self.state.overwatch.metrics.auth_failure(reason);
        tracing::warn!(reason, %message, "agent refused");
        Status::permission_denied(message)
    }

    fn refuse_input(&self, reason: &str, message: String) -> Status {
        self.state.overwatch.metrics.refuse(reason);
        Status::invalid_argument(message)
    }

    /// Parses one heartbeat's backend updates; malformed entries are
    /// refused (counted) and skipped.
    fn updates(&self, backends: &[BackendHealth]) -> Vec<Update> {
        let mut out = Vec::with_capacity(backends.len());
        for b in backends {
            let (Some(service), Some(addr), Some(claim)) = (
                service_name(&b.service),
                addr_of(&b.address, b.port),
                claim_of(b.claim),
            ) else {
                self.state.overwatch.metrics.refuse("malformed");
                continue;
            };
            out.push(Update {
                service,
                addr,
                claim,
                permille: b.weight_permille.min(1000),
                reason: b.reason.chars().take(256).collect(),
            });
        }
        out
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let peer = peer(&req)?;
        let r = req.into_inner();
        let ow = &self.state.overwatch;
        if r.agent_id.is_empty()
            || r.agent_id.len() > MAX_ID
            || !r
                .agent_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(self.refuse_input("malformed", "invalid agent_id".into()));
        }
        if r.backends.is_empty() || r.backends.len() > MAX_BACKENDS_PER_AGENT {
            return Err(self.refuse_input(
                "malformed",
                format!("1 to {MAX_BACKENDS_PER_AGENT} backends expected"),
            ));
        }
        let cfg = self.state.config.lock().await.clone();
        // Which services does this token cover?
        let covered: BTreeSet<&String> = cfg
            .overwatch
            .agent_tokens
            .iter()
            .filter(|(_, t)| same_token(t, &r.service_token))
            .map(|(s, _)| s)
            .collect();
        if covered.is_empty() {
            return Err(self.refuse_auth("token", "service token not accepted".into()));
        }
        let mut backends = Vec::new();
        let mut refused = Vec::new();
        for b in &r.backends {
            let (Some(service), Some(addr)) =
                (service_name(&b.service), addr_of(&b.address, b.port))
            else {
                ow.metrics.refuse("malformed");
                refused.push(format!("{} {}:{}", b.service, b.address, b.port));
                continue;
            };
            let ok = covered
                .iter()
                .any(|s| service_name(s).as_deref() == Some(service.as_str()));
            if !ok {
                ow.metrics.refuse("unknown_service");
                refused.push(format!("{service} {addr}"));
                continue;
            }
            backends.push(Reported {
                service,
                addr,
                weight: b.weight.min(1000),
                check: b.check.as_ref().map(|c| CheckSpec {
                    kind: c.kind.chars().take(8).collect(),
                    path: c.path.chars().take(256).collect(),
                    host: c.host.chars().take(256).collect(),
                }),
                claim: Claim::Unknown,
                permille: 1000,
                reason: String::new(),
                changed_at: std::time::SystemTime::now(),
            });
        }
        if backends.is_empty() {
            return Err(self.refuse_auth(
                "service",
                format!(
                    "no backend of a service this token covers: refused {}",
                    refused.join(", ")
                ),
            ));
        }
        // TOFU: pin on first contact, else the certificate must be the pin.
        let services: Vec<String> = covered.iter().map(|s| (*s).clone()).collect();
        let row = AgentPinRow {
            agent_id: r.agent_id.clone(),
            fingerprint: peer.fingerprint.clone(),
            region: r.region.chars().take(64).collect(),
            services: services.join(","),
            revoked: false,
            pinned_at_unix_ms: now_ms(),
            updated_at_unix_ms: now_ms(),
        };
        let pinned = match self.state.store.agent_pin(&r.agent_id).await {
            Ok(Some(p)) => p,
            Ok(None) => match self.state.store.pin_agent(&row).await {
                Ok(p) => {
                    if p.fingerprint == row.fingerprint && !p.revoked {
                        ow.metrics.pinned.inc();
                        tracing::info!(agent_id = %r.agent_id, fingerprint = %p.fingerprint, "agent certificate pinned (first contact)");
                    }
                    p
                }
                Err(e) => return Err(Status::unavailable(format!("store: {e}"))),
            },
            Err(e) => return Err(Status::unavailable(format!("store: {e}"))),
        };
        if pinned.revoked {
            return Err(self.refuse_auth("revoked", format!("agent {} is revoked", r.agent_id)));
        }
        if pinned.fingerprint != peer.fingerprint {
            return Err(self.refuse_auth(
                "certificate",
                format!("agent {} is pinned to another certificate", r.agent_id),
            ));
        }
        let declared = Duration::from_millis(u64::from(r.heartbeat_interval_ms))
            .saturating_mul(r.missed_threshold.max(1));
        let limit = cfg.overwatch.stale.threshold.get();
        let stale_after = if declared.is_zero() {
            limit
        } else {
            declared.min(limit)
        }
        .max(Duration::from_millis(100));
        let n = backends.len();
        let session = ow.registry.register(
            &r.agent_id,
            &row.region,
            &peer.fingerprint,
            backends,
            stale_after,
            tokio::time::Instant::now(),
        );
        ow.metrics.agents.set(ow.registry.len() as i64);
        ow.sync_validation(&cfg);
        ow.notify();
        tracing::info!(agent_id = %r.agent_id, backends = n, refused = refused.len(), peer = %peer.addr, "agent registered");
        Ok(Response::new(RegisterResponse {
            accepted: true,
            message: String::new(),
            session,
            refused,
        }))
    }

    type HeartbeatStream = HeartbeatStream;

    async fn heartbeat(
        &self,
        req: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        let peer = peer(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<HeartbeatResponse, Status>>(8);
        let this = self.clone();
        tokio::spawn(async move {
            let ow = &this.state.overwatch;
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        // Oversized or undecodable: counted, stream ends.
                        ow.metrics.refuse("malformed");
                        tracing::debug!(error = %e, peer = %peer.addr, "agent heartbeat stream error");
                        return;
                    }
                };
                let updates = this.updates(&msg.backends);
                let reply = match ow.registry.heartbeat(
                    msg.session,
                    &peer.fingerprint,
                    msg.sequence,
                    &updates,
                    tokio::time::Instant::now(),
                ) {
                    Ok(applied) => {
                        ow.metrics.heartbeats.inc();
                        if applied.unknown > 0 {
                            ow.metrics
                                .refused
                                .with_label_values(&["unknown_backend"])
                                .inc_by(applied.unknown as u64);
                        }
                        if applied.changed {
                            ow.notify();
                        }
                        HeartbeatResponse {
                            sequence: msg.sequence,
                            accepted: true,
                            message: String::new(),
                            send_full: false,
                        }
                    }
                    Err(Refused::Replay) => {
                        ow.metrics.refuse("replay");
                        HeartbeatResponse {
                            sequence: msg.sequence,
                            accepted: false,
                            message: Refused::Replay.to_string(),
                            send_full: false,
                        }
                    }
                    Err(e) => {
                        // Unknown session (revoked, removed, restarted) or
                        // someone else's: the agent must register again.
                        ow.metrics.auth_failure(match e {
                            Refused::Certificate => "certificate",
                            _ => "session",
                        });
                        let _ = tx
                            .send(Err(Status::unauthenticated(format!("{e}: register again"))))
                            .await;
                        return;
                    }
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn rotate_certificate(
        &self,
        req: Request<RotateCertificateRequest>,
    ) -> Result<Response<RotateCertificateResponse>, Status> {
        let peer = peer(&req)?;
        let der = req.into_inner().certificate_der;
        let ow = &self.state.overwatch;
        if der.is_empty() || der.len() > 16 * 1024 {
            return Err(self.refuse_input(
                "malformed",
                "certificate of 1 to 16384 bytes expected".into(),
            ));
        }
        let Some(id) = ow.registry.agent_with(&peer.fingerprint) else {
            return Err(self.refuse_auth(
                "session",
                "rotation needs a registered agent on its pinned certificate".into(),
            ));
        };
        let new = fingerprint(&der);
        match self
            .state
            .store
            .rotate_agent_pin(&id, &peer.fingerprint, &new, now_ms())
            .await
        {
            Ok(true) => {
                ow.registry.set_fingerprint(&id, &new);
                tracing::info!(agent_id = %id, old = %peer.fingerprint, new = %new, "agent certificate rotated");
                Ok(Response::new(RotateCertificateResponse {
                    accepted: true,
                    fingerprint: new,
                }))
            }
            Ok(false) => Err(self.refuse_auth(
                "certificate",
                format!("agent {id} is not pinned to this certificate (or revoked)"),
            )),
            Err(e) => Err(Status::unavailable(format!("store: {e}"))),
        }
    }

    async fn deregister(
        &self,
        req: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let peer = peer(&req)?;
        let r = req.into_inner();
        let ow = &self.state.overwatch;
        match ow.registry.deregister(r.session, &peer.fingerprint) {
            Ok(id) => {
                let _ = ow.metrics.heartbeat_age.remove_label_values(&[&id]);
                ow.metrics.agents.set(ow.registry.len() as i64);
                ow.notify();
                tracing::info!(agent_id = %id, reason = %r.reason.chars().take(128).collect::<String>(), "agent deregistered");
                Ok(Response::new(DeregisterResponse {}))
            }
            Err(e) => Err(self.refuse_auth("session", e.to_string())),
        }
    }
}
