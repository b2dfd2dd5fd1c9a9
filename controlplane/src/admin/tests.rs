//! gRPC `AdminService` access rules on the server side: the real tonic
//! server (admin and reflection services, as `server::run` mounts them) on
//! 127.0.0.1:0 over a temp store, called with the generated clients.

use std::{sync::Arc, time::Duration};

use opengslb_proto::{
    admin_service_client::AdminServiceClient, GetStatusRequest, ListOverridesRequest, Override,
    SetOverrideRequest, WatchHealthRequest,
};
use tonic::{transport::Channel, Code, Request};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

use crate::{
    api::{Access, App},
    config,
    server::State,
    store::Store,
};

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
domains:
  - {name: www.gslb.test, regions: [local]}
overwatch:
  data_dir: cp-data
"#;

struct Setup {
    _dir: tempfile::TempDir,
    state: Arc<State>,
    client: AdminServiceClient<Channel>,
    channel: Channel,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The admin server with `allowed` as `api.allowed_networks` and one token.
async fn setup(allowed: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gslb.yaml");
    std::fs::write(&path, CONFIG).unwrap();
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
    let access = Access::new(
        allowed.iter().map(|n| n.parse().unwrap()).collect(),
        false,
        vec![("alice".to_owned(), TOKEN.to_owned())],
        None,
    );
    let app = App::new(access);
    app.set_state(state.clone()).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reflection_v1, reflection_v1alpha) = super::reflection().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(super::service(app))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    Setup {
        _dir: dir,
        state,
        client: AdminServiceClient::new(channel.clone()),
        channel,
        server,
    }
}

fn set_request(token: Option<&str>) -> Request<SetOverrideRequest> {
    let mut req = Request::new(SetOverrideRequest {
        r#override: Some(Override {
            service: "www.gslb.test".into(),
            address: "192.0.2.1".into(),
            healthy: false,
            reason: "maintenance".into(),
            source: "grpc-test".into(),
            created_unix: 0,
        }),
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn overrides(s: &mut Setup) -> Vec<Override> {
    s.client
        .list_overrides(ListOverridesRequest {})
        .await
        .unwrap()
        .into_inner()
        .overrides
}

#[tokio::test]
async fn change_without_or_with_wrong_token_is_refused_and_changes_nothing() {
    let mut s = setup(&["127.0.0.1/32", "::1/128"]).await;
    let generation = s.state.stream.current().generation;

    let err = s.client.set_override(set_request(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = s
        .client
        .set_override(set_request(Some("not-the-token-0000000")))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );

    // Nothing changed: no override, no new snapshot, no audit entry.
    assert!(overrides(&mut s).await.is_empty());
    assert!(s.state.overrides.current().is_empty());
    assert_eq!(s.state.stream.current().generation, generation);
    let audit = s.state.store.audit_entries(100).await.unwrap();
    assert!(
        !audit.iter().any(|e| e.action.starts_with("override")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn change_with_the_token_works_and_reads_need_none() {
    let mut s = setup(&["127.0.0.1/32", "::1/128"]).await;
    // A read without any token.
    let status = s
        .client
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.servers_total, 2);
    assert_eq!(status.overrides_active, 0);

    let set = s
        .client
        .set_override(set_request(Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.address, "192.0.2.1");
    assert!(!set.healthy);
    let listed = overrides(&mut s).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].reason, "maintenance");
    let audit = s.state.store.audit_entries(100).await.unwrap();
    let entry = audit
        .iter()
        .find(|e| e.action.starts_with("override"))
        .expect("an audit entry for the override");
    assert_eq!(entry.actor, "alice");
    assert_eq!(entry.source, "127.0.0.1");
}

#[tokio::test]
async fn caller_outside_allowed_networks_is_refused() {
    let mut s = setup(&["192.0.2.0/24"]).await;
    let err = s.client.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Even with the token, a change is refused and nothing changes.
    let err = s
        .client
        .set_override(set_request(Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(s.state.overrides.current().is_empty());
}

#[tokio::test]
async fn watch_health_streams_an_override_change() {
    let mut s = setup(&["127.0.0.1/32", "::1/128"]).await;
    let mut stream = s
        .client
        .watch_health(WatchHealthRequest {
            service: "www.gslb.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // First every backend, as it is now.
    let mut initial = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("initial event in time")
            .unwrap()
            .expect("stream open");
        initial.push(ev.server.unwrap());
    }
    assert!(
        initial.iter().all(|b| b.healthy && b.source != "override"),
        "{initial:?}"
    );

    s.client
        .set_override(set_request(Some(TOKEN)))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an update after the override")
        .unwrap()
        .expect("stream open");
    let server = ev.server.unwrap();
    assert_eq!(server.address, "192.0.2.1");
    assert!(!server.healthy, "{server:?}");
    assert_eq!(server.source, "override");
    assert_eq!(server.reason, "maintenance");
    assert!(ev.at_unix_ms > 0);
}

#[tokio::test]
async fn reflection_lists_the_admin_service() {
    let s = setup(&["127.0.0.1/32", "::1/128"]).await;
    let mut reflection = ServerReflectionClient::new(s.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .expect("reflection reply in time")
        .unwrap()
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"opengslb.v1.AdminService"), "{names:?}");
}
