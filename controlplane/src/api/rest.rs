//! The REST API (axum): OpenGSLB's paths and JSON shapes.
//!
//! Every route is one entry of [`routes`]; the router is built from that
//! table and a test checks it against `openapi.json` both ways, so adding a
//! route means adding it there and to the document. Errors are
//! `{"error", "code"}` JSON (see [`ApiError`]).

use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, PathRejection, QueryRejection},
        ConnectInfo, DefaultBodyLimit, Path, Query, Request, State,
    },
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put, MethodRouter},
    Extension, Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::json;

use super::{
    ops::{self, BackendFilter, GeoMappingRequest, OverrideRequest},
    ApiError, App, Caller,
};

/// Largest request body (a config upload included).
pub const MAX_BODY: usize = 256 * 1024;

/// The OpenAPI 3 document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Paths anyone may call (orchestrator probes); everything else checks the
/// allowlist.
const OPEN_PATHS: &[&str] = &["/api/health", "/api/v1/live", "/api/v1/ready"];

/// One route: method, path (axum syntax, as in the OpenAPI document),
/// handler.
pub type Route = (Method, &'static str, MethodRouter<App>);

type Reply = Result<Response, ApiError>;

/// Every route of the REST API. Add new ones here (and to `openapi.json`).
pub fn routes() -> Vec<Route> {
    vec![
        (Method::GET, "/api/health", get(simple_health)),
        (Method::GET, "/api/v1/live", get(live)),
        (Method::GET, "/api/v1/ready", get(ready)),
        (Method::GET, "/api/v1/version", get(version)),
        (Method::GET, "/api/v1/openapi.json", get(openapi)),
        (Method::GET, "/api/v1/health/servers", get(health_servers)),
        (Method::GET, "/api/v1/health/regions", get(health_regions)),
        (Method::GET, "/api/v1/overwatch/backends", get(backends)),
        (Method::GET, "/api/v1/overwatch/stats", get(stats)),
        (Method::POST, "/api/v1/overwatch/validate", post(validate)),
        (Method::GET, "/api/v1/overrides", get(list_overrides)),
        (
            Method::GET,
            "/api/v1/overrides/{service}/{address}",
            get(get_override),
        ),
        (
            Method::PUT,
            "/api/v1/overrides/{service}/{address}",
            put(set_override),
        ),
        (
            Method::DELETE,
            "/api/v1/overrides/{service}/{address}",
            delete(delete_override),
        ),
        (Method::GET, "/api/v1/geo/test", get(geo_lookup)),
        (Method::GET, "/api/v1/geo/lookup", get(geo_lookup)),
        (Method::GET, "/api/v1/geo/mappings", get(geo_mappings)),
        (Method::POST, "/api/v1/geo/mappings", post(add_geo_mapping)),
        (
            Method::DELETE,
            "/api/v1/geo/mappings/{cidr}",
            delete(delete_geo_mapping),
        ),
        (Method::POST, "/api/v1/config/reload", post(reload)),
        (Method::GET, "/api/v1/audit", get(audit)),
        (Method::GET, "/api/v1/dnssec/ds", get(dnssec_ds)),
        (Method::GET, "/api/v1/dnssec/status", get(dnssec_status)),
        (
            Method::GET,
            "/api/v1/dnssec/rollover",
            get(dnssec_rollover_status),
        ),
        (
            Method::POST,
            "/api/v1/dnssec/rollover",
            post(dnssec_rollover),
        ),
        (
            Method::POST,
            "/api/v1/dnssec/keys/export",
            post(dnssec_export),
        ),
        (Method::GET, "/api/v1/overwatch/agents", get(list_agents)),
        (
            Method::DELETE,
            "/api/v1/overwatch/agents/{id}",
            delete(revoke_agent),
        ),
        (
            Method::POST,
            "/api/v1/overwatch/agents/{id}/revoke",
            post(revoke_agent),
        ),
    ]
}

/// The REST router over `app`.
pub fn router(app: App) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Allowlist and rate limit (but for the open probes), and a bearer token
/// for every change.
async fn guard(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<super::tls::TlsPeer>>()
                .map(|c| c.0 .0.ip())
        })
    else {
        return ApiError::Forbidden("unknown client address".into()).into_response();
    };
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = app.access().client(peer, forwarded);
    if !OPEN_PATHS.contains(&req.uri().path()) {
        if let Err(e) = app.access().admit(client) {
            return e.into_response();
        }
    }
    if req.method() == Method::POST && req.uri().path() == crate::dnssec::sync::EXPORT_PATH {
        // The DNSSEC key export authenticates with the sealed key-sync
        // protocol (a MAC of the token, never the token): the handler
        // checks it and names the caller.
        req.extensions_mut().insert(Caller {
            who: String::new(),
            from: client,
        });
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match app.access().authorize(auth) {
            Ok(who) => {
                req.extensions_mut().insert(Caller { who, from: client });
            }
            Err(e) => return e.into_response(),
        }
    }
    next.run(req).await
}

// === handlers ===

async fn simple_health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn live() -> Response {
    Json(json!({"alive": true})).into_response()
}

async fn ready(State(app): State<App>) -> Response {
    let r = ops::readiness(&app).await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

async fn version() -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "service": "opengslb-controlplane",
        "api": "v1",
    }))
    .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn health_servers(State(app): State<App>) -> Reply {
    let servers = ops::servers(&app).await?;
    Ok(Json(json!({"servers": servers, "generated_at": now()})).into_response())
}

async fn health_regions(State(app): State<App>) -> Reply {
    let regions = ops::regions(&app).await?;
    Ok(Json(json!({"regions": regions, "generated_at": now()})).into_response())
}

async fn backends(
    State(app): State<App>,
    q: Result<Query<BackendFilter>, QueryRejection>,
) -> Reply {
    let Query(filter) = q.map_err(query_rejection)?;
    let backends = ops::backends(&app, &filter).await?;
    Ok(Json(json!({"backends": backends, "generated_at": now()})).into_response())
}

async fn stats(State(app): State<App>) -> Reply {
    Ok(Json(ops::stats(&app).await?).into_response())
}

async fn validate(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Reply {
    // Validation reads nothing of the running state, but answers only once
    // the controlplane is up, like every other admin call.
    app.state()?;
    let bytes = body.map_err(body_rejection)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8 YAML text".into()))?;
    Ok(Json(ops::validate(text)).into_response())
}

async fn list_overrides(State(app): State<App>) -> Reply {
    let overrides = ops::list_overrides(&app).await?;
    Ok(Json(json!({"overrides": overrides})).into_response())
}

async fn get_override(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Reply {
    let Path((service, address)) = path.map_err(path_rejection)?;
    Ok(Json(ops::get_override(&app, &service, &address).await?).into_response())
}

async fn set_override(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let Path((service, address)) = path.map_err(path_rejection)?;
    let req: OverrideRequest = json_body(body)?;
    let o = ops::set_override(&app, &caller, &service, &address, req).await?;
    Ok(Json(o).into_response())
}

async fn delete_override(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Reply {
    let Path((service, address)) = path.map_err(path_rejection)?;
    ops::delete_override(&app, &caller, &service, &address).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpQuery {
    #[serde(default)]
    ip: Option<String>,
}

async fn geo_lookup(State(app): State<App>, q: Result<Query<IpQuery>, QueryRejection>) -> Reply {
    let Query(q) = q.map_err(query_rejection)?;
    let ip =
        q.ip.ok_or_else(|| ApiError::BadRequest("the ip query parameter is required".into()))?;
    Ok(Json(ops::geo_lookup(&app, &ip).await?).into_response())
}

async fn geo_mappings(State(app): State<App>) -> Reply {
    let mappings = ops::geo_mappings(&app).await?;
    Ok(Json(json!({"mappings": mappings})).into_response())
}

async fn add_geo_mapping(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let req: GeoMappingRequest = json_body(body)?;
    let m = ops::add_geo_mapping(&app, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(m)).into_response())
}

async fn delete_geo_mapping(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Reply {
    let Path(cidr) = path.map_err(path_rejection)?;
    ops::delete_geo_mapping(&app, &caller, &cidr).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_agents(State(app): State<App>) -> Reply {
    let state = app.state()?;
    let agents = crate::overwatch::list(&state).await?;
    Ok(Json(json!({"agents": agents, "generated_at": now()})).into_response())
}

/// Revokes an agent (both `DELETE …/agents/{id}` and `POST …/{id}/revoke`):
/// refused from now on, its backends out of the answers at once.
async fn revoke_agent(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Reply {
    let Path(id) = path.map_err(path_rejection)?;
    let state = app.state()?;
    let generation =
        crate::overwatch::revoke_and_publish(&state, &id, &caller.who, &caller.from.to_string())
            .await?
            .ok_or_else(|| ApiError::NotFound("no such agent".into()))?;
    Ok(Json(json!({"agent_id": id, "revoked": true, "generation": generation})).into_response())
}

async fn reload(State(app): State<App>, Extension(caller): Extension<Caller>) -> Reply {
    Ok(Json(ops::reload(&app, &caller).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<i64>,
}

async fn audit(State(app): State<App>, q: Result<Query<AuditQuery>, QueryRejection>) -> Reply {
    let Query(q) = q.map_err(query_rejection)?;
    let entries = ops::audit(&app, q.limit).await?;
    Ok(Json(json!({"entries": entries})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneQuery {
    #[serde(default)]
    zone: Option<String>,
}

async fn dnssec_ds(State(app): State<App>, q: Result<Query<ZoneQuery>, QueryRejection>) -> Reply {
    let Query(q) = q.map_err(query_rejection)?;
    let zone = q
        .zone
        .ok_or_else(|| ApiError::BadRequest("the zone query parameter is required".into()))?;
    Ok(Json(ops::dnssec_ds(&app, &zone)?).into_response())
}

async fn dnssec_status(State(app): State<App>) -> Reply {
    Ok(Json(ops::dnssec_status(&app).await?).into_response())
}

/// The zone's latest rollover: `{"zone", "rollover"}` (`null` when it
/// never rolled).
async fn dnssec_rollover_status(
    State(app): State<App>,
    q: Result<Query<ZoneQuery>, QueryRejection>,
) -> Reply {
    let Query(q) = q.map_err(query_rejection)?;
    let zone = q
        .zone
        .ok_or_else(|| ApiError::BadRequest("the zone query parameter is required".into()))?;
    let state = app.state()?;
    let st = crate::dnssec::rollover::perform(
        &state,
        None,
        &zone,
        crate::dnssec::rollover::Action::Status,
    )
    .await
    .map_err(ops::rollover_error)?;
    Ok(
        Json(json!({"zone": zone.trim_end_matches('.').to_ascii_lowercase(), "rollover": st}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloverRequest {
    zone: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

/// Starts (`action` absent or `start`), confirms the DS of
/// (`ds-published`) or cancels (`cancel`) a zone's key rollover.
async fn dnssec_rollover(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let req: RolloverRequest = json_body(body)?;
    let action = crate::dnssec::rollover::Action::parse(
        req.action.as_deref().unwrap_or("start"),
        req.key.as_deref(),
    )
    .map_err(ops::rollover_error)?;
    let state = app.state()?;
    let from = caller.from.to_string();
    let st = crate::dnssec::rollover::perform(
        &state,
        Some((caller.who.as_str(), from.as_str())),
        &req.zone,
        action,
    )
    .await
    .map_err(ops::rollover_error)?;
    Ok(
        Json(json!({"zone": req.zone.trim_end_matches('.').to_ascii_lowercase(), "rollover": st}))
            .into_response(),
    )
}

async fn dnssec_export(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(body_rejection)?;
    Ok(Json(ops::dnssec_export(&app, &caller, &body).await?).into_response())
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /api/v1/openapi.json".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}

// === helpers ===

fn now() -> String {
    ops::rfc3339(std::time::SystemTime::now())
}

fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(body_rejection)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("the request body is larger than {MAX_BODY} bytes"))
    } else {
        ApiError::BadRequest(r.body_text())
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    ApiError::BadRequest(r.body_text())
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::BadRequest(r.body_text())
}
