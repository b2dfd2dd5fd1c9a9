//! The gRPC `AdminService` (tonic), served beside `SnapshotService` on
//! `overwatch.grpc_address`, with server reflection (so `grpcurl -plaintext
//! ADDR list` works). Same operations ([`crate::api::ops`]) and access rules
//! as the REST API: the peer address must be in `api.allowed_networks`, and
//! every change carries `authorization: Bearer <token>` metadata.

use std::{collections::HashMap, pin::Pin, time::SystemTime};

use futures::Stream;
use opengslb_proto::{
    admin_service_server::{AdminService, AdminServiceServer},
    AddGeoMappingRequest, DeleteOverrideRequest, DeleteOverrideResponse, GeoLookupRequest,
    GeoLookupResponse, GeoMapping, GetDnssecStatusRequest, GetDnssecStatusResponse, GetDsRequest,
    GetDsResponse, GetStatusRequest, GetStatusResponse, HealthEvent, ListGeoMappingsRequest,
    ListGeoMappingsResponse, ListOverridesRequest, ListOverridesResponse, ListServersRequest,
    ListServersResponse, Override, ReloadConfigRequest, ReloadConfigResponse,
    RemoveGeoMappingRequest, RemoveGeoMappingResponse, Server, SetOverrideRequest,
    ValidateConfigRequest, ValidateConfigResponse, WatchHealthRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::{
    ops::{self, Backend, BackendFilter, GeoMappingRequest, OverrideRequest, OverrideView},
    ApiError, App, Caller,
};

/// Largest YAML accepted by `ValidateConfig` (as the REST body limit).
const MAX_YAML: usize = crate::api::rest::MAX_BODY;

/// The admin service over one controlplane.
#[derive(Debug, Clone)]
pub struct Admin {
    app: App,
}

type Reply<T> = Result<Response<T>, Status>;

/// The `AdminService` server for `app`.
pub fn service(app: App) -> AdminServiceServer<Admin> {
    AdminServiceServer::new(Admin { app })
}

/// The reflection services (v1 and v1alpha, for older `grpcurl`) over the
/// whole `opengslb.v1` contract.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    crate::error::Error,
> {
    let err = |e: tonic_reflection::server::Error| crate::error::Error::Listen {
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        message: format!("gRPC reflection: {e}"),
    };
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(opengslb_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(err)?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(opengslb_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(err)?;
    Ok((v1, v1alpha))
}

// === impl Admin ===

impl Admin {
    /// Allowlist and rate limit; for a change, the bearer token too.
    fn guard<T>(&self, req: &Request<T>, change: bool) -> Result<Caller, Status> {
        let Some(peer) = req.remote_addr() else {
            return Err(ApiError::Forbidden("unknown client address".into()).into());
        };
        let from = peer.ip();
        self.app.access().admit(from)?;
        if !change {
            return Ok(Caller {
                who: String::new(),
                from,
            });
        }
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let who = self.app.access().authorize(auth)?;
        Ok(Caller { who, from })
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    type WatchHealthStream = Pin<Box<dyn Stream<Item = Result<HealthEvent, Status>> + Send>>;

    async fn get_status(&self, req: Request<GetStatusRequest>) -> Reply<GetStatusResponse> {
        self.guard(&req, false)?;
        let s = ops::stats(&self.app).await?;
        let ready = ops::readiness(&self.app).await.ready;
        Ok(Response::new(GetStatusResponse {
            node_id: s.node_id,
            version: s.version.to_owned(),
            generation: s.generation,
            subscribers: u32::try_from(s.subscribers).unwrap_or(u32::MAX),
            uptime_seconds: s.uptime_seconds,
            ready,
            servers_total: u32::try_from(s.total_backends).unwrap_or(u32::MAX),
            servers_healthy: u32::try_from(s.healthy_backends).unwrap_or(u32::MAX),
            overrides_active: u32::try_from(s.active_overrides).unwrap_or(u32::MAX),
            config_path: s.config_path,
        }))
    }

    async fn list_servers(&self, req: Request<ListServersRequest>) -> Reply<ListServersResponse> {
        self.guard(&req, false)?;
        let r = req.into_inner();
        let filter = BackendFilter {
            service: Some(r.service),
            region: Some(r.region),
            status: Some(r.status),
        };
        let servers = ops::backends(&self.app, &filter)
            .await?
            .into_iter()
            .map(server_message)
            .collect();
        Ok(Response::new(ListServersResponse { servers }))
    }

    async fn list_overrides(
        &self,
        req: Request<ListOverridesRequest>,
    ) -> Reply<ListOverridesResponse> {
        self.guard(&req, false)?;
        let overrides = ops::list_overrides(&self.app)
            .await?
            .into_iter()
            .map(override_message)
            .collect();
        Ok(Response::new(ListOverridesResponse { overrides }))
    }

    async fn set_override(&self, req: Request<SetOverrideRequest>) -> Reply<Override> {
        let caller = self.guard(&req, true)?;
        let Some(o) = req.into_inner().r#override else {
            return Err(ApiError::BadRequest("override is required".into()).into());
        };
        let set = ops::set_override(
            &self.app,
            &caller,
            &o.service,
            &o.address,
            OverrideRequest {
                healthy: o.healthy,
                reason: o.reason,
                source: o.source,
            },
        )
        .await?;
        Ok(Response::new(override_message(set)))
    }

    async fn delete_override(
        &self,
        req: Request<DeleteOverrideRequest>,
    ) -> Reply<DeleteOverrideResponse> {
        let caller = self.guard(&req, true)?;
        let r = req.into_inner();
        ops::delete_override(&self.app, &caller, &r.service, &r.address).await?;
        Ok(Response::new(DeleteOverrideResponse { deleted: true }))
    }

    async fn validate_config(
        &self,
        req: Request<ValidateConfigRequest>,
    ) -> Reply<ValidateConfigResponse> {
        self.guard(&req, true)?;
        let yaml = req.into_inner().yaml;
        if yaml.len() > MAX_YAML {
            return Err(ApiError::PayloadTooLarge(format!(
                "the config is larger than {MAX_YAML} bytes"
            ))
            .into());
        }
        let v = ops::validate(&yaml);
        Ok(Response::new(ValidateConfigResponse {
            valid: v.valid,
            errors: v.errors,
        }))
    }

    async fn reload_config(
        &self,
        req: Request<ReloadConfigRequest>,
    ) -> Reply<ReloadConfigResponse> {
        let caller = self.guard(&req, true)?;
        let r = ops::reload(&self.app, &caller).await?;
        Ok(Response::new(ReloadConfigResponse {
            reloaded: r.reloaded,
            generation: r.generation,
            message: r.message,
        }))
    }

    async fn geo_lookup(&self, req: Request<GeoLookupRequest>) -> Reply<GeoLookupResponse> {
        self.guard(&req, false)?;
        let a = ops::geo_lookup(&self.app, &req.into_inner().ip).await?;
        Ok(Response::new(GeoLookupResponse {
            ip: a.ip,
            region: a.region,
            source: a.source.to_owned(),
        }))
    }

    async fn get_ds(&self, req: Request<GetDsRequest>) -> Reply<GetDsResponse> {
        self.guard(&req, false)?;
        let ds = ops::dnssec_ds(&self.app, &req.into_inner().zone)?;
        Ok(Response::new(GetDsResponse { ds: ds.ds }))
    }

    async fn get_dnssec_status(
        &self,
        req: Request<GetDnssecStatusRequest>,
    ) -> Reply<GetDnssecStatusResponse> {
        self.guard(&req, false)?;
        let st = ops::dnssec_status(&self.app).await?;
        Ok(Response::new(crate::dnssec::status_proto(&st)))
    }

    async fn dnssec_rollover(
        &self,
        req: Request<opengslb_proto::DnssecRolloverRequest>,
    ) -> Reply<opengslb_proto::DnssecRolloverResponse> {
        use crate::dnssec::rollover::{self, Action};
        let r = req.get_ref();
        let action = Action::parse(&r.action, Some(r.key.as_str())).map_err(ops::rollover_error)?;
        let caller = self.guard(&req, action.is_change())?;
        let from = caller.from.to_string();
        let zone = req.into_inner().zone;
        let state = self.app.state()?;
        let st = rollover::perform(
            &state,
            action
                .is_change()
                .then_some((caller.who.as_str(), from.as_str())),
            &zone,
            action,
        )
        .await
        .map_err(ops::rollover_error)?;
        Ok(Response::new(opengslb_proto::DnssecRolloverResponse {
            rollover: st.as_ref().map(rollover::status_proto),
        }))
    }

    async fn watch_health(
        &self,
        req: Request<WatchHealthRequest>,
    ) -> Reply<Self::WatchHealthStream> {
        self.guard(&req, false)?;
        let state = self.app.state()?;
        let filter = BackendFilter {
            service: Some(req.into_inner().service),
            region: None,
            status: None,
        };
        let (tx, rx) = mpsc::channel::<Result<HealthEvent, Status>>(64);
        let mut snapshots = state.stream.watch();
        tokio::spawn(async move {
            // Every backend first, then each change of health, source or
            // reason as snapshots are published.
            let mut last: HashMap<(String, String, u16), (bool, &'static str, String)> =
                HashMap::new();
            loop {
                let cfg = state.config.lock().await.clone();
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                for b in ops::backends_of(&state, &cfg, &filter) {
                    let key = (b.service.clone(), b.address.clone(), b.port);
                    let seen = (b.healthy, b.source, b.reason.clone());
                    if last.get(&key) == Some(&seen) {
                        continue;
                    }
                    last.insert(key, seen);
                    let event = HealthEvent {
                        server: Some(server_message(b)),
                        at_unix_ms: now,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_geo_mappings(
        &self,
        req: Request<ListGeoMappingsRequest>,
    ) -> Reply<ListGeoMappingsResponse> {
        self.guard(&req, false)?;
        let mappings = ops::geo_mappings(&self.app)
            .await?
            .into_iter()
            .map(|m| GeoMapping {
                cidr: m.cidr,
                region: m.region,
                comment: m.comment,
                source: m.source.to_owned(),
                created_unix: 0,
            })
            .collect();
        Ok(Response::new(ListGeoMappingsResponse { mappings }))
    }

    async fn add_geo_mapping(&self, req: Request<AddGeoMappingRequest>) -> Reply<GeoMapping> {
        let caller = self.guard(&req, true)?;
        let Some(m) = req.into_inner().mapping else {
            return Err(ApiError::BadRequest("mapping is required".into()).into());
        };
        let added = ops::add_geo_mapping(
            &self.app,
            &caller,
            GeoMappingRequest {
                cidr: m.cidr,
                region: m.region,
                comment: m.comment,
            },
        )
        .await?;
        Ok(Response::new(GeoMapping {
            cidr: added.cidr,
            region: added.region,
            comment: added.comment,
            source: added.source.to_owned(),
            created_unix: 0,
        }))
    }

    async fn remove_geo_mapping(
        &self,
        req: Request<RemoveGeoMappingRequest>,
    ) -> Reply<RemoveGeoMappingResponse> {
        let caller = self.guard(&req, true)?;
        ops::delete_geo_mapping(&self.app, &caller, &req.into_inner().cidr).await?;
        Ok(Response::new(RemoveGeoMappingResponse { deleted: true }))
    }

    async fn list_agents(
        &self,
        req: Request<opengslb_proto::ListAgentsRequest>,
    ) -> Reply<opengslb_proto::ListAgentsResponse> {
        self.guard(&req, false)?;
        let state = self.app.state()?;
        let agents = crate::overwatch::list(&state)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|a| opengslb_proto::AgentInfo {
                agent_id: a.agent_id,
                region: a.region,
                fingerprint: a.fingerprint,
                services: a.services,
                revoked: a.revoked,
                connected: a.connected,
                stale: a.stale,
                heartbeat_age_seconds: a.heartbeat_age_seconds.unwrap_or(-1.0),
                backends: u32::try_from(a.backends).unwrap_or(u32::MAX),
                pinned_at: a.pinned_at,
            })
            .collect();
        Ok(Response::new(opengslb_proto::ListAgentsResponse { agents }))
    }

    async fn revoke_agent(
        &self,
        req: Request<opengslb_proto::RevokeAgentRequest>,
    ) -> Reply<opengslb_proto::RevokeAgentResponse> {
        let caller = self.guard(&req, true)?;
        let state = self.app.state()?;
        let id = req.into_inner().agent_id;
        let generation = crate::overwatch::revoke_and_publish(
            &state,
            &id,
            &caller.who,
            &caller.from.to_string(),
        )
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::NotFound("no such agent".into()))?;
        Ok(Response::new(opengslb_proto::RevokeAgentResponse {
            revoked: true,
            generation,
        }))
    }
}

fn server_message(b: Backend) -> Server {
    Server {
        service: b.service,
        address: b.address,
        port: u32::from(b.port),
        region: b.region,
        weight: b.weight,
        healthy: b.healthy,
        source: b.source.to_owned(),
        reason: b.reason,
    }
}

fn override_message(o: OverrideView) -> Override {
    Override {
        service: o.service,
        address: o.address,
        healthy: o.healthy,
        reason: o.reason,
        source: o.source,
        created_unix: o.created_at_unix_ms / 1000,
    }
}

#[cfg(test)]
mod tests;
