use std::{path::Path, time::Duration};

use tokio::net::TcpListener;

use super::*;
use crate::config::parse;

fn cfg(text: &str) -> Config {
    parse(text, Path::new("gslb.yaml")).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn health() -> Health {
    Health::new(Arc::new(Metrics::new().unwrap())).unwrap()
}

fn two_regions(port_a: u16, port_b: u16, check_b: &str) -> String {
    format!(
        "\
dns:
  zones: [example.com]
regions:
  - name: a
    servers:
      - {{address: 127.0.0.1, port: {port_a}}}
    health_check: {{type: tcp, interval: 300ms, timeout: 100ms}}
  - name: b
    servers:
      - {{address: 127.0.0.1, port: {port_a}}}
      - {{address: 127.0.0.1, port: {port_b}}}
    health_check: {check_b}
  - name: c
    servers:
      - {{address: 192.0.2.9}}
    health_check: {{type: none}}
domains:
  - name: www.example.com
    regions: [a, b, c]
    latency_config: {{smoothing_factor: 0.5}}
"
    )
}

#[test]
fn plan_shares_identical_targets_and_skips_none_regions() {
    let c = cfg(&two_regions(
        1,
        2,
        "{type: tcp, interval: 300ms, timeout: 100ms}",
    ));
    let planned = plan(&c);
    assert_eq!(planned.len(), 3, "{planned:#?}");
    let distinct: HashSet<&Target> = planned.iter().map(|p| &p.target).collect();
    assert_eq!(distinct.len(), 2);
    assert!(planned.iter().all(|p| p.alpha == 0.5));
    assert_eq!(planned[1].server, "127.0.0.1:1");
    // Other settings make another target.
    let c = cfg(&two_regions(
        1,
        2,
        "{type: tcp, interval: 400ms, timeout: 100ms}",
    ));
    let distinct: HashSet<Target> = plan(&c).into_iter().map(|p| p.target).collect();
    assert_eq!(distinct.len(), 3);
}

#[test]
fn server_host_wins_and_validation_off_probes_nothing() {
    let c = cfg("\
dns:
  zones: [example.com]
regions:
  - name: a
    servers:
      - {address: 192.0.2.1, host: own.example.com}
      - {address: 192.0.2.2}
    health_check: {type: https, host: region.example.com, expected_status: [200, 301], body_contains: ok, tls_verify: false}
overwatch:
  validation: {enabled: false}
");
    assert!(plan(&c).is_empty());
    let mut c = c;
    c.overwatch.validation.enabled = true;
    let planned = plan(&c);
    assert_eq!(
        planned[0].target.check.host.as_deref(),
        Some("own.example.com")
    );
    assert_eq!(
        planned[1].target.check.host.as_deref(),
        Some("region.example.com")
    );
    let check = &planned[0].target.check;
    assert_eq!(check.kind, CheckKind::Https);
    assert_eq!(check.expected_status, vec![200, 301]);
    assert!(!check.tls_verify);
    assert_eq!(planned[0].alpha, DEFAULT_SMOOTHING);
}

#[tokio::test]
async fn unknown_is_down_until_the_first_result_then_reload_keeps_state() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port_up = up.local_addr().unwrap().port();
    tokio::spawn(async move { while up.accept().await.is_ok() {} });
    let port_down = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let h = health();
    let c = cfg(&two_regions(
        port_up,
        port_down,
        "{type: tcp, interval: 300ms, timeout: 100ms}",
    ));
    let view = h.view(&c);
    let server = |ri, si, port| ServerRef {
        region_index: ri,
        region: "",
        server_index: si,
        address: "127.0.0.1".parse().unwrap(),
        port,
    };
    assert!(
        !view.health(&server(0, 0, port_up)).healthy,
        "served before checked"
    );
    let new = h.add(&c);
    assert_eq!(new.len(), 2);
    let t = tokio::time::Instant::now();
    h.settle(&new).await;
    assert!(t.elapsed() < Duration::from_millis(200));
    let view = h.view(&c);
    assert_eq!(view.health(&server(0, 0, port_up)), ServerHealth::UP);
    assert!(view.health(&server(1, 0, port_up)).healthy);
    assert!(!view.health(&server(1, 1, port_down)).healthy);
    assert_eq!(
        view.healthy_per_region,
        vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]
    );
    let probes_before = h.status(&c, 0, 0).unwrap().probes;

    // Reload: region b's check changes; a's target is kept with its state.
    let c2 = cfg(&two_regions(
        port_up,
        port_down,
        "{type: tcp, interval: 350ms, timeout: 100ms}",
    ));
    let new = h.add(&c2);
    assert_eq!(new.len(), 2, "only b's servers are new targets");
    h.settle(&new).await;
    h.retain(&c2);
    assert_eq!(h.targets(), 3);
    assert!(h.status(&c2, 0, 0).unwrap().probes >= probes_before);
    assert!(h.status(&c, 1, 1).is_none(), "old target still probed");
}

#[test]
fn healthy_since_only_after_a_recovery() {
    let first = Status {
        healthy: Some(true),
        since: Some(std::time::SystemTime::UNIX_EPOCH),
        ..Status::default()
    };
    assert_eq!(server_health(first), ServerHealth::UP);
    let recovered = Status {
        changes: 2,
        ..first
    };
    assert_eq!(server_health(recovered).healthy_since, first.since);
    assert_eq!(server_health(Status::default()), ServerHealth::DOWN);
}
