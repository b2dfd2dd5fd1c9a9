//! REST contract tests: the router in process (`tower::ServiceExt::oneshot`)
//! over a real store and a compiled snapshot; the client address is set per
//! request, as the listener would.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{rest, Access, App};
use crate::{config, server::State, store::Store};

const TOKEN: &str = "alice-token-0123456789";

const CONFIG: &str = r#"
dns:
  listen_address: "127.0.0.1:5353"
  zones: [gslb.test]
regions:
  - name: local
    servers:
      - {address: 192.0.2.1, port: 80}
      - {address: 192.0.2.2, port: 80}
    health_check: {type: none}
  - name: eu
    servers:
      - {address: 198.51.100.1, port: 80}
    health_check: {type: none}
domains:
  - {name: www.gslb.test, regions: [local]}
  - {name: eu.gslb.test, regions: [eu]}
overwatch:
  data_dir: cp-data
  geolocation:
    default_region: local
    custom_mappings:
      - {cidr: 203.0.113.0/24, region: eu, comment: lab}
"#;

struct Setup {
    dir: tempfile::TempDir,
    router: Router,
    state: Arc<State>,
    app: App,
}

async fn setup_with(tokens: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gslb.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    // The controlplane refuses a config readable by other users.
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&path, private).unwrap();
    let cfg = config::load(&path).unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("db/opengslb.db").display()
    ))
    .await
    .unwrap();
    let state = crate::server::test_state(path, cfg, store).await;
    let tokens = if tokens {
        vec![("alice".to_owned(), TOKEN.to_owned())]
    } else {
        Vec::new()
    };
    let access = Access::new(
        vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()],
        false,
        tokens,
        None,
    );
    let app = App::new(access);
    app.set_state(state.clone()).await.unwrap();
    Setup {
        dir,
        router: rest::router(app.clone()),
        state,
        app,
    }
}

async fn setup() -> Setup {
    setup_with(true).await
}

const LOCAL: &str = "127.0.0.1:40000";

/// One request; returns the status and the JSON body (Null when empty).
async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    call_from(router, LOCAL, method, path, token, body, &[]).await
}

async fn call_from(
    router: &Router,
    peer: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<Body>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(body.into()).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {bytes:?}"))
    };
    (status, value)
}

fn assert_error(v: &Value, code: StatusCode) {
    assert_eq!(v["code"], code.as_u16(), "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let doc: Value = serde_json::from_str(rest::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if method != "parameters" {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = rest::routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_string(), p.to_owned()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json documents unknown routes: {extra:?}"
    );
}

#[tokio::test]
async fn every_route_is_routed() {
    let s = setup().await;
    for (method, path, _) in rest::routes() {
        let concrete = path
            .replace("{service}", "www.gslb.test")
            .replace("{address}", "192.0.2.1")
            .replace("{cidr}", "10.0.0.0%2F8");
        let (status, body) = call(&s.router, method.clone(), &concrete, Some(TOKEN), "").await;
        let unrouted = body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no such route") || e.starts_with("method not allowed"));
        assert!(!unrouted, "{method} {path}: {status} {body}");
    }
}

#[tokio::test]
async fn probes_version_and_readiness() {
    let s = setup().await;
    let (st, v) = call(&s.router, Method::GET, "/api/v1/live", None, "").await;
    assert_eq!(
        (st, v["alive"].clone()),
        (StatusCode::OK, Value::Bool(true))
    );
    let (st, v) = call(&s.router, Method::GET, "/api/v1/ready", None, "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ready"], true);
    assert!(v["generation"].as_u64().unwrap() > 0);
    let (st, v) = call(&s.router, Method::GET, "/api/health", None, "").await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (st, v) = call(&s.router, Method::GET, "/api/v1/version", None, "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    // Before the first snapshot: live, but not ready, and 503 elsewhere.
    let starting = rest::router(App::new(Access::new(
        vec!["127.0.0.1/32".parse().unwrap()],
        false,
        Vec::new(),
        None,
    )));
    let (st, v) = call(&starting, Method::GET, "/api/v1/ready", None, "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["ready"], false);
    let (st, _) = call(&starting, Method::GET, "/api/v1/live", None, "").await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = call(&starting, Method::GET, "/api/v1/overrides", None, "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, st);
}

#[tokio::test]
async fn allowlist_and_tokens() {
    let s = setup().await;
    let far = "203.0.113.5:5000";
    let (st, v) = call_from(
        &s.router,
        far,
        Method::GET,
        "/api/v1/overrides",
        None,
        "",
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_error(&v, st);
    // Proxy headers are not trusted by default.
    let (st, _) = call_from(
        &s.router,
        far,
        Method::GET,
        "/api/v1/health/servers",
        None,
        "",
        &[("x-forwarded-for", "127.0.0.1")],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Probes answer anyone.
    let (st, _) = call_from(&s.router, far, Method::GET, "/api/v1/live", None, "", &[]).await;
    assert_eq!(st, StatusCode::OK);

    let path = "/api/v1/overrides/www.gslb.test/192.0.2.1";
    let body = r#"{"healthy": false, "reason": "x", "source": "test"}"#;
    let (st, v) = call(&s.router, Method::PUT, path, None, body).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_error(&v, st);
    let (st, _) = call(
        &s.router,
        Method::PUT,
        path,
        Some("wrong-token-0123456789"),
        body,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(&s.router, Method::POST, "/api/v1/config/reload", None, "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s.state.overrides.is_empty(), "refused calls change nothing");
    assert_eq!(s.state.store.audit_count().await.unwrap(), 0);

    let no_tokens = setup_with(false).await;
    let (st, v) = call(&no_tokens.router, Method::PUT, path, Some(TOKEN), body).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(v["error"].as_str().unwrap().contains("token_file"), "{v}");
}

#[tokio::test]
async fn override_lifecycle_publishes_and_audits() {
    let s = setup().await;
    let path = "/api/v1/overrides/WWW.gslb.test./192.0.2.1";
    let before = s.state.stream.current().generation;
    let (st, v) = call(
        &s.router,
        Method::PUT,
        path,
        Some(TOKEN),
        r#"{"healthy": false, "reason": "maintenance", "source": "change-42"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["service"], "www.gslb.test");
    assert_eq!(v["address"], "192.0.2.1");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["source"], "change-42");
    assert_eq!(v["authority"], "alice@127.0.0.1");
    assert!(
        s.state.stream.current().generation > before,
        "a new snapshot is published at once"
    );

    let (st, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/overrides/www.gslb.test/192.0.2.1",
        None,
        "",
    )
    .await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (StatusCode::OK, Some("maintenance"))
    );
    let (_, v) = call(&s.router, Method::GET, "/api/v1/overrides", None, "").await;
    assert_eq!(v["overrides"].as_array().unwrap().len(), 1);

    let (_, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/overwatch/backends?service=www.gslb.test&status=unhealthy",
        None,
        "",
    )
    .await;
    let b = v["backends"].as_array().unwrap();
    assert_eq!(b.len(), 1, "{v}");
    assert_eq!(b[0]["address"], "192.0.2.1");
    assert_eq!(b[0]["source"], "override");
    assert_eq!(b[0]["override_by"], "alice@127.0.0.1");
    let (_, v) = call(&s.router, Method::GET, "/api/v1/overwatch/stats", None, "").await;
    assert_eq!(v["active_overrides"], 1);
    assert_eq!(v["total_backends"], 3);
    assert_eq!(v["healthy_backends"], 2);

    let (st, v) = call(&s.router, Method::DELETE, path, Some(TOKEN), "").await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (st, v) = call(&s.router, Method::DELETE, path, Some(TOKEN), "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v, st);
    let (st, _) = call(&s.router, Method::GET, path, None, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (_, v) = call(&s.router, Method::GET, "/api/v1/audit", None, "").await;
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[0]["action"], "override.delete");
    assert_eq!(entries[1]["action"], "override.set");
    assert_eq!(entries[1]["actor"], "alice");
    assert_eq!(entries[1]["source"], "127.0.0.1");
}

#[tokio::test]
async fn hostile_and_malformed_input() {
    let s = setup().await;
    let put = |path: &'static str, body: &'static str| {
        let router = s.router.clone();
        async move { call(&router, Method::PUT, path, Some(TOKEN), body).await }
    };
    let ok_path = "/api/v1/overrides/www.gslb.test/192.0.2.1";
    for (path, body, want) in [
        (ok_path, "{not json", StatusCode::BAD_REQUEST),
        (
            ok_path,
            r#"{"healthy": "no", "source": "x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            ok_path,
            r#"{"healthy": false, "source": "x", "evil": 1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (ok_path, r#"{"healthy": false}"#, StatusCode::BAD_REQUEST),
        (
            "/api/v1/overrides/nowhere.gslb.test/192.0.2.1",
            r#"{"source": "x"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/overrides/www.gslb.test/192.0.2.99",
            r#"{"source": "x"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/overrides/www.gslb.test/192.0.2.1:8080",
            r#"{"source": "x"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/overrides/www.gslb.test/not-an-ip",
            r#"{"source": "x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/overrides/..%2F..%2Fetc%2Fpasswd/192.0.2.1",
            r#"{"source": "x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/overrides/x'%3B%20DROP%20TABLE%20overrides%3B--/192.0.2.1",
            r#"{"source": "x"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/overrides/%FF%FE/192.0.2.1",
            r#"{"source": "x"}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (st, v) = put(path, body).await;
        assert_eq!(st, want, "{path} {body}: {v}");
        assert_error(&v, st);
    }
    let huge = vec![b'a'; rest::MAX_BODY + 1];
    let (st, v) = call(&s.router, Method::PUT, ok_path, Some(TOKEN), huge.clone()).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_error(&v, st);
    let (st, _) = call(
        &s.router,
        Method::POST,
        "/api/v1/overwatch/validate",
        Some(TOKEN),
        huge,
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/overwatch/validate",
        Some(TOKEN),
        vec![0xff, 0xfe, 0x00],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(s.state.overrides.is_empty(), "nothing was stored");
    assert_eq!(s.state.store.audit_count().await.unwrap(), 0);

    let (st, v) = call(&s.router, Method::GET, "/api/v1/nope", None, "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v, st);
    let (st, v) = call(
        &s.router,
        Method::PATCH,
        "/api/v1/overrides",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&v, st);
    let (st, _) = call(
        &s.router,
        Method::GET,
        "/api/v1/overwatch/backends?status=weird",
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = call(
        &s.router,
        Method::GET,
        "/api/v1/overwatch/backends?bogus=1",
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = call(&s.router, Method::GET, "/api/v1/audit?limit=abc", None, "").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn geo_lookup_and_mappings() {
    let s = setup().await;
    let (st, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/geo/test?ip=203.0.113.7",
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["region"].as_str(), v["source"].as_str()),
        (Some("eu"), Some("custom_mapping"))
    );
    let (_, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/geo/lookup?ip=192.0.2.9",
        None,
        "",
    )
    .await;
    assert_eq!(
        (v["region"].as_str(), v["source"].as_str()),
        (Some("local"), Some("default_region"))
    );
    for bad in [
        "/api/v1/geo/test",
        "/api/v1/geo/test?ip=999.1.1.1",
        "/api/v1/geo/test?ip=%FF",
    ] {
        let (st, v) = call(&s.router, Method::GET, bad, None, "").await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    let add = r#"{"cidr": "192.0.2.77/24", "region": "eu", "comment": "partner"}"#;
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/geo/mappings",
        Some(TOKEN),
        add,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["cidr"], "192.0.2.0/24");
    let (st, _) = call(
        &s.router,
        Method::POST,
        "/api/v1/geo/mappings",
        Some(TOKEN),
        add,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/geo/mappings",
        Some(TOKEN),
        r#"{"cidr": "10.0.0.0/8", "region": "mars"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (st, _) = call(
        &s.router,
        Method::POST,
        "/api/v1/geo/mappings",
        Some(TOKEN),
        r#"{"cidr": "203.0.113.0/24", "region": "local"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "config mapping");
    let (_, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/geo/test?ip=192.0.2.9",
        None,
        "",
    )
    .await;
    assert_eq!(
        (v["region"].as_str(), v["source"].as_str()),
        (Some("eu"), Some("runtime_mapping"))
    );
    let (_, v) = call(&s.router, Method::GET, "/api/v1/geo/mappings", None, "").await;
    assert_eq!(v["mappings"].as_array().unwrap().len(), 2, "{v}");

    let (st, _) = call(
        &s.router,
        Method::DELETE,
        "/api/v1/geo/mappings/192.0.2.0%2F24",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(
        &s.router,
        Method::DELETE,
        "/api/v1/geo/mappings/192.0.2.0%2F24",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        &s.router,
        Method::DELETE,
        "/api/v1/geo/mappings/203.0.113.0%2F24",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = call(
        &s.router,
        Method::DELETE,
        "/api/v1/geo/mappings/nonsense",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(s.state.store.audit_count().await.unwrap(), 2);
}

#[tokio::test]
async fn validate_and_reload() {
    let s = setup().await;
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/overwatch/validate",
        Some(TOKEN),
        CONFIG,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["valid"], true, "{v}");
    let bad = "domains:\n  - name: www.gslb.test\n    routing_algorithm: fastest\n";
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/overwatch/validate",
        Some(TOKEN),
        bad,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["valid"], false);
    let first = v["errors"][0].as_str().unwrap();
    assert!(first.starts_with("request.yaml:3:"), "{first}");
    assert!(first.contains("routing_algorithm"), "{first}");

    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/config/reload",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["reloaded"], true);
    let path: PathBuf = s.dir.path().join("gslb.yaml");
    std::fs::write(&path, bad).unwrap();
    let generation = s.state.stream.current().generation;
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/config/reload",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("gslb.yaml:3"),
        "{v}"
    );
    assert_eq!(
        s.state.stream.current().generation,
        generation,
        "nothing changed"
    );
}

#[tokio::test]
async fn a_failed_store_refuses_changes_with_503_and_keeps_serving() {
    let s = setup().await;
    let before = s.state.stream.current().generation;
    s.state.store.close().await;
    let path = "/api/v1/overrides/www.gslb.test/192.0.2.1";
    let (st, v) = call(
        &s.router,
        Method::PUT,
        path,
        Some(TOKEN),
        r#"{"healthy": false, "source": "x"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_error(&v, st);
    assert!(v["error"].as_str().unwrap().contains("store"), "{v}");
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/geo/mappings",
        Some(TOKEN),
        r#"{"cidr": "10.9.0.0/16", "region": "local"}"#,
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // Nothing changed; the snapshot dataplanes serve is the one before, and
    // what is held in memory is still readable.
    assert!(s.state.overrides.is_empty());
    assert_eq!(s.state.stream.current().generation, before);
    let (st, v) = call(&s.router, Method::GET, "/api/v1/overrides", None, "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _) = call(&s.router, Method::GET, "/api/v1/live", None, "").await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_from_one_client_gets_429_and_others_are_served() {
    let s = setup().await;
    // (The probes /api/health, /api/v1/live and /api/v1/ready are never
    // limited: orchestrators poll them.)
    let mut limited = 0;
    let mut last = Value::Null;
    for _ in 0..400 {
        let (st, v) = call(&s.router, Method::GET, "/api/v1/version", None, "").await;
        if st == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            last = v;
        } else {
            assert_eq!(st, StatusCode::OK);
        }
    }
    assert!(limited >= 150, "only {limited} of 400 refused");
    assert_error(&last, StatusCode::TOO_MANY_REQUESTS);
    let (st, _) = call_from(
        &s.router,
        "[::1]:40000",
        Method::GET,
        "/api/v1/version",
        None,
        "",
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "another client is not limited");
}

#[tokio::test]
async fn health_regions_counts_validations_view_per_region() {
    let s = setup().await;
    let region = |v: &Value, name: &str| -> Value {
        v["regions"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no region {name}: {v}"))
    };
    let (st, v) = call(&s.router, Method::GET, "/api/v1/health/regions", None, "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["regions"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["generated_at"].is_string(), "{v}");
    let local = region(&v, "local");
    assert_eq!(local["total_servers"], 2, "{v}");
    assert_eq!(local["healthy_count"], 2, "{v}");
    assert_eq!(local["unhealthy_count"], 0, "{v}");
    assert_eq!(local["health_percent"], 100.0, "{v}");
    assert_eq!(region(&v, "eu")["total_servers"], 1, "{v}");

    // Regions are validation's view (as /health/servers): an override
    // changes the answers, not these counts; the server lists it.
    let body = r#"{"healthy": false, "reason": "drain", "source": "test"}"#;
    let (st, _) = call(
        &s.router,
        Method::PUT,
        "/api/v1/overrides/www.gslb.test/192.0.2.1",
        Some(TOKEN),
        body,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = call(&s.router, Method::GET, "/api/v1/health/regions", None, "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let local = region(&v, "local");
    assert_eq!(local["healthy_count"], 2, "{v}");
    assert_eq!(local["unhealthy_count"], 0, "{v}");
    assert_eq!(region(&v, "eu")["healthy_count"], 1, "{v}");
    let (_, v) = call(&s.router, Method::GET, "/api/v1/health/servers", None, "").await;
    let server = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == "192.0.2.1")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(server["overrides"], 1, "{v}");

    // Outside the allowlist: refused.
    let (st, v) = call_from(
        &s.router,
        "192.0.2.200:5000",
        Method::GET,
        "/api/v1/health/regions",
        None,
        "",
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_error(&v, st);
}

fn agent_pin(id: &str) -> crate::store::AgentPinRow {
    crate::store::AgentPinRow {
        agent_id: id.to_owned(),
        fingerprint: "ab".repeat(32),
        region: "local".to_owned(),
        services: "www.gslb.test".to_owned(),
        revoked: false,
        pinned_at_unix_ms: 1_700_000_000_000,
        updated_at_unix_ms: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn agents_list_and_revoke_contract() {
    let s = setup().await;
    let agents = "/api/v1/overwatch/agents";
    let (st, v) = call(&s.router, Method::GET, agents, None, "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agents"], serde_json::json!([]), "{v}");

    s.state
        .store
        .pin_agent(&agent_pin("agent-a"))
        .await
        .unwrap();
    s.state
        .store
        .pin_agent(&agent_pin("agent-b"))
        .await
        .unwrap();
    let (st, v) = call(&s.router, Method::GET, agents, None, "").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let list = v["agents"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["agent_id"], "agent-a", "{v}");
    assert_eq!(list[0]["region"], "local", "{v}");
    assert_eq!(list[0]["revoked"], false, "{v}");
    assert_eq!(list[0]["connected"], false, "{v}");

    // Missing and wrong tokens: 401, nothing revoked, nothing audited.
    for method in [Method::DELETE, Method::POST] {
        let path = if method == Method::DELETE {
            "/api/v1/overwatch/agents/agent-a".to_owned()
        } else {
            "/api/v1/overwatch/agents/agent-a/revoke".to_owned()
        };
        let (st, v) = call(&s.router, method.clone(), &path, None, "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
        assert_error(&v, st);
        let (st, _) = call(
            &s.router,
            method.clone(),
            &path,
            Some("wrong-token-0123456789"),
            "",
        )
        .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert!(
        !s.state
            .store
            .agent_pin("agent-a")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert_eq!(s.state.store.audit_count().await.unwrap(), 0);

    // Unknown ids: 404, both forms.
    let (st, v) = call(
        &s.router,
        Method::DELETE,
        "/api/v1/overwatch/agents/nobody",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_error(&v, st);
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/overwatch/agents/nobody/revoke",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_error(&v, st);

    // Outside the allowlist, even with the token: 403.
    let (st, _) = call_from(
        &s.router,
        "192.0.2.200:5000",
        Method::POST,
        "/api/v1/overwatch/agents/agent-a/revoke",
        Some(TOKEN),
        "",
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        !s.state
            .store
            .agent_pin("agent-a")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );

    // With the token: POST …/revoke and DELETE both revoke.
    let (st, v) = call(
        &s.router,
        Method::POST,
        "/api/v1/overwatch/agents/agent-a/revoke",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agent_id"], "agent-a", "{v}");
    assert_eq!(v["revoked"], true, "{v}");
    assert!(v["generation"].as_u64().is_some_and(|g| g > 0), "{v}");
    let (st, v) = call(
        &s.router,
        Method::DELETE,
        "/api/v1/overwatch/agents/agent-b",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["revoked"], true, "{v}");

    let (_, v) = call(&s.router, Method::GET, agents, None, "").await;
    let list = v["agents"].as_array().unwrap();
    assert!(list.iter().all(|a| a["revoked"] == true), "{v}");
    let audit = s.state.store.audit_entries(10).await.unwrap();
    let revokes: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "agent.revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{audit:?}");
    assert!(revokes.iter().all(|e| e.actor == "alice"), "{audit:?}");
}

#[tokio::test]
async fn geo_mappings_changed_through_a_shared_store_are_followed() {
    let s = setup().await;
    // A second controlplane's store on the same database file.
    let other = Store::open(&format!(
        "sqlite://{}",
        s.dir.path().join("db/opengslb.db").display()
    ))
    .await
    .unwrap();
    let before = s.state.stream.current().generation;
    assert!(!s.app.refresh_geo().await.unwrap(), "nothing changed yet");
    assert_eq!(s.state.stream.current().generation, before);

    let row = crate::store::GeoMappingRow {
        cidr: "198.18.0.0/15".to_owned(),
        region: "eu".to_owned(),
        comment: "other controlplane".to_owned(),
        created_at_unix_ms: 1_700_000_000_000,
    };
    assert!(other.add_geo_mapping(&row).await.unwrap());
    // Not seen until re-read.
    let (_, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/geo/test?ip=198.18.0.1",
        None,
        "",
    )
    .await;
    assert_ne!(v["region"], "eu", "{v}");

    assert!(s.app.refresh_geo().await.unwrap());
    assert!(
        s.state.stream.current().generation > before,
        "geo table published"
    );
    let (st, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/geo/test?ip=198.18.0.1",
        None,
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["region"], "eu", "{v}");
    let (_, v) = call(&s.router, Method::GET, "/api/v1/geo/mappings", None, "").await;
    assert!(
        v["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["cidr"] == "198.18.0.0/15"),
        "{v}"
    );
    assert!(!s.app.refresh_geo().await.unwrap(), "already current");

    // A removal elsewhere is followed too.
    assert!(other.delete_geo_mapping("198.18.0.0/15").await.unwrap());
    assert!(s.app.refresh_geo().await.unwrap());
    let (_, v) = call(
        &s.router,
        Method::GET,
        "/api/v1/geo/test?ip=198.18.0.1",
        None,
        "",
    )
    .await;
    assert_ne!(v["region"], "eu", "{v}");
}

/// The REST listener on real loopback sockets: the connection cap
/// (`api.max_connections`) and, over TLS, `api.allowed_networks` before
/// the handshake.
mod listener {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use ipnet::IpNet;
    use tokio::{
        io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
        net::TcpStream,
        task::JoinHandle,
    };

    use super::super::listener::{ConnMetrics, Gate, Refused};
    use super::{setup, App};

    /// Bound on every wait in these tests.
    const WAIT: Duration = Duration::from_secs(5);

    struct Served {
        addr: SocketAddr,
        metrics: ConnMetrics,
        task: JoinHandle<()>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(
        app: App,
        tls: Option<tokio_rustls::TlsAcceptor>,
        max: usize,
        allowed: Option<&[&str]>,
    ) -> Served {
        serve_idle(app, tls, max, allowed, super::super::listener::IDLE_TIMEOUT).await
    }

    async fn serve_idle(
        app: App,
        tls: Option<tokio_rustls::TlsAcceptor>,
        max: usize,
        allowed: Option<&[&str]>,
        idle: Duration,
    ) -> Served {
        let metrics = ConnMetrics::new(&prometheus::Registry::new()).unwrap();
        let allowed: Option<Vec<IpNet>> =
            allowed.map(|a| a.iter().map(|n| n.parse().unwrap()).collect());
        let gate = Gate::with_parts(max, allowed, idle, metrics.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(super::super::serve(l, app, tls, gate));
        Served {
            addr,
            metrics,
            task,
        }
    }

    /// One keep-alive `GET`; the status and body. An error when the server
    /// closes the connection first; a panic when nothing happens in
    /// [`WAIT`].
    async fn get<S: AsyncRead + AsyncWrite + Unpin>(
        io: &mut S,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let exchange = async {
            io.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
                .await?;
            let mut buf = Vec::new();
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        let status = head[9..12].parse().unwrap();
                        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
                        return Ok((status, body.into_owned()));
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = io.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .expect("the server neither answered nor closed the connection")
    }

    /// Polls `f` until it holds, for at most [`WAIT`].
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let start = tokio::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (server acceptor, client connector) over a fresh CA and a leaf for
    /// 127.0.0.1, read through `api.tls_cert_file`/`tls_key_file`.
    fn tls_pair(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let (ca, leaf, key) = crate::test_support::ca_and_leaf();
        let (cert_file, key_file) = (dir.join("api.crt"), dir.join("api.key"));
        std::fs::write(&cert_file, leaf).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let api = crate::config::ApiConfig {
            tls_cert_file: Some(cert_file),
            tls_key_file: Some(key_file),
            ..Default::default()
        };
        let acceptor = super::super::tls::acceptor(&api).unwrap().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        (acceptor, tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    async fn tls_connect(
        connector: &tokio_rustls::TlsConnector,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("the TLS handshake neither finished nor failed")
    }

    #[tokio::test]
    async fn plain_http_over_the_cap_is_closed_and_the_cap_frees() {
        let s = setup().await;
        let srv = serve(s.app.clone(), None, 2, None).await;
        let mut c1 = TcpStream::connect(srv.addr).await.unwrap();
        let mut c2 = TcpStream::connect(srv.addr).await.unwrap();
        assert_eq!(get(&mut c1, "/api/v1/live").await.unwrap().0, 200);
        assert_eq!(get(&mut c2, "/api/v1/live").await.unwrap().0, 200);
        assert_eq!(srv.metrics.open.get(), 2);

        // A third is accepted and closed at once, without an answer.
        let mut c3 = TcpStream::connect(srv.addr).await.unwrap();
        assert!(get(&mut c3, "/api/v1/live").await.is_err());
        assert_eq!(srv.metrics.refused(Refused::Full), 1);
        // The open ones keep working (and still pass the allowlist check
        // per request).
        let (st, body) = get(&mut c1, "/api/v1/overrides").await.unwrap();
        assert_eq!(st, 200, "{body}");
        assert_eq!(get(&mut c2, "/api/v1/live").await.unwrap().0, 200);

        // Closing one frees its slot for a new connection.
        drop(c1);
        eventually("the closed connection's slot", || {
            srv.metrics.open.get() == 1
        })
        .await;
        let mut c4 = TcpStream::connect(srv.addr).await.unwrap();
        assert_eq!(get(&mut c4, "/api/v1/live").await.unwrap().0, 200);
        assert_eq!(srv.metrics.open.get(), 2);
        assert_eq!(srv.metrics.refused(Refused::Full), 1);
        // Plain HTTP keeps the allowlist per request (403 with a body,
        // probes open): a plain peer is never refused for its address.
        assert_eq!(srv.metrics.refused(Refused::NotAllowed), 0);
    }

    #[tokio::test]
    async fn tls_peer_outside_allowed_networks_gets_no_handshake() {
        let s = setup().await;
        let (acceptor, connector) = tls_pair(s.dir.path());

        let far = serve(
            s.app.clone(),
            Some(acceptor.clone()),
            16,
            Some(&["10.0.0.0/8"]),
        )
        .await;
        let refused = tls_connect(&connector, far.addr).await;
        let e = refused.expect_err("a handshake with a peer outside the allowlist");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ),
            "closed without a TLS answer, got {e:?}"
        );
        assert_eq!(far.metrics.refused(Refused::NotAllowed), 1);
        assert_eq!(
            far.metrics.refused(Refused::Handshake),
            0,
            "no handshake ran"
        );
        assert_eq!(far.metrics.open.get(), 0, "and no slot was taken");

        let near = serve(
            s.app.clone(),
            Some(acceptor.clone()),
            16,
            Some(&["127.0.0.0/8"]),
        )
        .await;
        let mut tls = tls_connect(&connector, near.addr).await.unwrap();
        assert_eq!(get(&mut tls, "/api/v1/live").await.unwrap().0, 200);
        let (st, body) = get(&mut tls, "/api/v1/overrides").await.unwrap();
        assert_eq!(st, 200, "{body}");
        assert_eq!(near.metrics.refused(Refused::NotAllowed), 0);

        // Behind a trusted proxy the peer is not the client: no check at
        // accept (the request's forwarded client is checked instead).
        let proxied = serve(s.app.clone(), Some(acceptor), 16, None).await;
        let mut tls = tls_connect(&connector, proxied.addr).await.unwrap();
        assert_eq!(get(&mut tls, "/api/v1/live").await.unwrap().0, 200);
    }

    #[tokio::test]
    async fn tls_handshakes_in_progress_count_against_the_cap() {
        let s = setup().await;
        let (acceptor, connector) = tls_pair(s.dir.path());
        let srv = serve(s.app.clone(), Some(acceptor), 1, Some(&["127.0.0.0/8"])).await;

        // A client that never starts its handshake holds the only slot.
        let idle = TcpStream::connect(srv.addr).await.unwrap();
        eventually("the idle connection's slot", || srv.metrics.open.get() == 1).await;
        assert!(tls_connect(&connector, srv.addr).await.is_err());
        assert_eq!(srv.metrics.refused(Refused::Full), 1);

        // Once it goes, its handshake fails and the slot is free again.
        drop(idle);
        eventually("the failed handshake's slot", || {
            srv.metrics.open.get() == 0
        })
        .await;
        assert_eq!(srv.metrics.refused(Refused::Handshake), 1);
        let mut tls = tls_connect(&connector, srv.addr).await.unwrap();
        assert_eq!(get(&mut tls, "/api/v1/live").await.unwrap().0, 200);
        assert_eq!(srv.metrics.open.get(), 1);
        drop(tls);
        eventually("the closed session's slot", || srv.metrics.open.get() == 0).await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_free_their_slot() {
        let s = setup().await;
        let idle = Duration::from_millis(300);
        let srv = serve_idle(s.app.clone(), None, 2, None, idle).await;

        // Activity keeps a connection: requests 150 ms apart, 750 ms in all.
        let mut busy = TcpStream::connect(srv.addr).await.unwrap();
        for _ in 0..5 {
            assert_eq!(get(&mut busy, "/api/v1/live").await.unwrap().0, 200);
            tokio::time::sleep(idle / 2).await;
        }
        // A client that never sends its request, and the keep-alive one
        // left idle, are closed and free their slots.
        let mut silent = TcpStream::connect(srv.addr).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(WAIT, silent.read(&mut byte))
            .await
            .expect("an idle connection is closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let closed = tokio::time::timeout(WAIT, busy.read(&mut byte))
            .await
            .expect("an idle keep-alive connection is closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        eventually("the idle connections' slots", || {
            srv.metrics.open.get() == 0
        })
        .await;
        let mut next = TcpStream::connect(srv.addr).await.unwrap();
        assert_eq!(get(&mut next, "/api/v1/live").await.unwrap().0, 200);
    }
}
