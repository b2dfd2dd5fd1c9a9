//! Geolocation end to end: a GeoIP2-format database written by the test
//! (the repository's MMDB writer), EDNS Client Subnet answers with their
//! scope, runtime mappings through the REST API changing DNS answers and
//! `/api/v1/geo/test`, database reload on file change, bad databases.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, ResponseCode},
    rr::{
        rdata::opt::{ClientSubnet, EdnsCode, EdnsOption},
        RData, RecordType,
    },
};

use crate::harness::*;

#[allow(dead_code)]
#[path = "../../../controlplane/src/geo/mmdb_writer.rs"]
mod mmdb_writer;

use mmdb_writer::{write_mmdb, MmdbNet};

const GEO: &str = "regions:
  - name: us
    countries: [US]
    servers: [{address: 203.0.113.1}]
    health_check: {type: none}
  - name: eu
    continents: [EU]
    servers: [{address: 203.0.113.2}]
    health_check: {type: none}
  - name: lab
    servers: [{address: 203.0.113.9}]
    health_check: {type: none}
";

const DOMAIN: &str = "domains:
  - {name: geo.gslb.test, routing_algorithm: geo, regions: [us, eu, lab], ecs_max_prefix_v4: 24}
";

fn net(addr: &str, prefix: u8, country: &str, continent: &str) -> MmdbNet {
    MmdbNet {
        addr: addr.parse().unwrap(),
        prefix,
        country: country.into(),
        continent: continent.into(),
    }
}

fn database(second_is_us: bool) -> Vec<u8> {
    let (c, k) = if second_is_us {
        ("US", "NA")
    } else {
        ("DE", "EU")
    };
    write_mmdb(
        &[
            net("1.0.0.0", 8, "US", "NA"),
            net("2.0.0.0", 8, c, k),
            net("2a00::", 12, "FR", "EU"),
        ],
        "GeoLite2-Country",
    )
}

/// A controlplane + dataplane with the geo config and `db` at `geo.mmdb`.
fn start(db: Option<&[u8]>, database_path: &str) -> Gslb {
    start_polling(db, database_path, None)
}

/// As [`start`], with `database_poll_interval` set when given.
fn start_polling(db: Option<&[u8]>, database_path: &str, poll: Option<&str>) -> Gslb {
    let poll = poll.map_or(String::new(), |p| {
        format!("    database_poll_interval: {p}\n")
    });
    let mut g = Gslb::prepare(|c| {
        c.replacen("regions:\n", GEO, 1)
            .replacen("domains:\n", DOMAIN, 1)
            .replacen(
                "overwatch:\n",
                &format!(
                    "overwatch:\n  geolocation:\n    database_path: {database_path}\n{poll}    custom_mappings:\n      - {{cidr: 100.64.0.0/10, region: lab}}\n"
                ),
                1,
            )
    });
    if let Some(db) = db {
        std::fs::write(g.dir.path().join("geo.mmdb"), db).unwrap();
    }
    g.start_cp();
    g.start_dp();
    g
}

fn ecs_query(name: &str, subnet: Option<(&str, u8)>) -> Message {
    let mut m = query(name, RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    if let Some((a, p)) = subnet {
        e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
            a.parse().unwrap(),
            p,
            0,
        )));
    }
    m.set_edns(e);
    m
}

/// (sorted A addresses, ECS scope) of the answer for `subnet`.
fn ask(g: &Gslb, subnet: Option<(&str, u8)>) -> (Vec<String>, Option<u8>) {
    let m = g.udp(&ecs_query("geo.gslb.test.", subnet));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m}");
    let mut a: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    a.sort();
    let scope = m
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Subnet))
        .and_then(|o| match o {
            EdnsOption::Subnet(c) => Some(c.scope_prefix()),
            _ => None,
        });
    (a, scope)
}

fn one(a: &str) -> Vec<String> {
    vec![a.to_owned()]
}

/// One HTTP/1.1 exchange: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the REST API");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls (bounded) until `f` holds.
fn eventually(what: &str, g: &Gslb, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} never happened:\n{}", g.logs());
}

#[test]
fn ecs_answers_by_region_with_scope_and_runtime_mappings_change_them() {
    let mut g = start(Some(&database(false)), "geo.mmdb");
    g.wait_answering();

    assert_eq!(
        ask(&g, Some(("1.2.3.0", 24))),
        (one("203.0.113.1"), Some(8))
    );
    assert_eq!(
        ask(&g, Some(("2.2.0.0", 16))),
        (one("203.0.113.2"), Some(8))
    );
    assert_eq!(
        ask(&g, Some(("100.64.1.0", 24))),
        (one("203.0.113.9"), Some(10))
    );
    assert_eq!(
        ask(&g, Some(("2a00:1::", 48))),
        (one("203.0.113.2"), Some(12))
    );
    // The privacy cap: a /32 is used as its /24.
    assert_eq!(
        ask(&g, Some(("1.2.3.4", 32))),
        (one("203.0.113.1"), Some(8))
    );
    // No ECS: the source (127.0.0.1) is in no range, no default region:
    // every server, and no ECS option in the reply.
    let (all, scope) = ask(&g, None);
    assert_eq!(all.len(), 3);
    assert_eq!(scope, None);

    // Malformed ECS (bits past the prefix): FORMERR.
    let mut bad = ecs_query("geo.gslb.test.", Some(("1.2.3.0", 24)))
        .to_vec()
        .unwrap();
    let n = bad.len();
    // ... 0,8 (ECS) 0,7 | 0,1 (IPv4) 24 0 | 1 2 3: SOURCE PREFIX-LENGTH 20
    // leaves bits set past the prefix in the third octet.
    bad[n - 5] = 20;
    let reply = g.udp_raw(&bad, 2000).expect("a reply");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::FormErr,
        "{reply}"
    );

    // /api/v1/geo/test answers from the same table.
    let (st, body) = http(g.api, "GET", "/api/v1/geo/test?ip=1.9.9.9", "");
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("\"region\":\"us\"") && body.contains("\"source\":\"geoip\""),
        "{body}"
    );
    assert!(body.contains("\"cidr\":\"1.0.0.0/8\""), "{body}");

    // A runtime mapping: stored, compiled into the table, answered at once.
    let (st, body) = http(
        g.api,
        "POST",
        "/api/v1/geo/mappings",
        r#"{"cidr": "1.2.3.0/24", "region": "eu", "comment": "partner"}"#,
    );
    assert_eq!(st, 201, "{body}");
    eventually("the runtime mapping answering", &g, 5, || {
        ask(&g, Some(("1.2.3.0", 24))) == (one("203.0.113.2"), Some(24))
    });
    // Its neighbour keeps the database's answer, with a scope that does
    // not cover the mapping.
    let (a, scope) = ask(&g, Some(("1.2.4.0", 24)));
    assert_eq!(a, one("203.0.113.1"));
    assert!(scope.unwrap() > 8 && scope.unwrap() <= 24, "{scope:?}");
    let (_, body) = http(g.api, "GET", "/api/v1/geo/test?ip=1.2.3.4", "");
    assert!(
        body.contains("\"region\":\"eu\"") && body.contains("\"source\":\"runtime_mapping\""),
        "{body}"
    );
    // And removed again.
    let (st, _) = http(g.api, "DELETE", "/api/v1/geo/mappings/1.2.3.0%2F24", "");
    assert_eq!(st, 204);
    eventually("the mapping gone", &g, 5, || {
        ask(&g, Some(("1.2.3.0", 24))) == (one("203.0.113.1"), Some(8))
    });

    // Per-region counters, custom hits, fallbacks in the dataplane.
    let us = g
        .dp_metric("opengslb_routing_geo_decisions_total{domain=\"geo.gslb.test\",region=\"us\"}")
        .unwrap();
    assert!(us >= 3.0, "{us}");
    let lab = g
        .dp_metric(
            "opengslb_routing_geo_custom_hits_total{domain=\"geo.gslb.test\",region=\"lab\"}",
        )
        .unwrap();
    assert!(lab >= 1.0, "{lab}");
    let unmapped = g
        .dp_metric(
            "opengslb_routing_geo_fallback_total{domain=\"geo.gslb.test\",reason=\"unmapped\"}",
        )
        .unwrap();
    assert!(unmapped >= 1.0, "{unmapped}");
}

#[test]
fn database_file_change_swaps_the_table_and_a_bad_one_keeps_it() {
    let mut g = start(Some(&database(false)), "geo.mmdb");
    g.wait_answering();
    assert_eq!(ask(&g, Some(("2.2.0.0", 16))).0, one("203.0.113.2"));

    // A truncated file: logged, the old table keeps serving.
    let db = database(true);
    let path = g.dir.path().join("geo.mmdb");
    std::fs::write(&path, &db[..db.len() / 3]).unwrap();
    eventually("the reload failure logged", &g, 15, || {
        g.logs().contains("GeoIP database reload failed")
    });
    assert!(g.logs().contains("geo.mmdb"), "the file is named");
    assert_eq!(ask(&g, Some(("2.2.0.0", 16))).0, one("203.0.113.2"));

    // A good new file: 2.0.0.0/8 is US now.
    std::fs::write(&path, &db).unwrap();
    eventually("the new table answering", &g, 15, || {
        ask(&g, Some(("2.2.0.0", 16))).0 == one("203.0.113.1")
    });
}

#[test]
fn a_missing_database_stops_start_up_with_the_file_and_reason() {
    let mut g = start(None, "missing.mmdb");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = g.cp.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "controlplane kept running:\n{}",
            g.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let logs = g.logs();
    assert!(
        logs.contains("missing.mmdb") && logs.contains("No such file"),
        "{logs}"
    );
}

#[test]
fn database_poll_interval_sets_how_soon_a_file_change_is_seen() {
    let mut g = start_polling(Some(&database(false)), "geo.mmdb", Some("200ms"));
    g.wait_answering();
    assert_eq!(ask(&g, Some(("2.2.0.0", 16))).0, one("203.0.113.2"));
    let changed = Instant::now();
    std::fs::write(g.dir.path().join("geo.mmdb"), database(true)).unwrap();
    // The default (5 s) would not see it this soon.
    eventually("the new table answering within 3 s", &g, 3, || {
        ask(&g, Some(("2.2.0.0", 16))).0 == one("203.0.113.1")
    });
    assert!(changed.elapsed() < Duration::from_secs(3));
    let reloads = g
        .cp_metric("opengslb_geo_database_reloads_total{result=\"success\"}")
        .unwrap_or(0.0);
    assert!(reloads >= 1.0, "{reloads}");
}

#[test]
fn a_bad_database_on_reload_keeps_the_old_table_and_applies_the_config() {
    // Polling too slow to matter: only the SIGHUP reads the file.
    let mut g = start_polling(Some(&database(false)), "geo.mmdb", Some("1h"));
    g.wait_answering();
    assert_eq!(ask(&g, Some(("2.2.0.0", 16))).0, one("203.0.113.2"));
    assert_eq!(ask(&g, Some(("100.64.1.0", 24))).0, one("203.0.113.9"));

    // A truncated database (that would make 2.0.0.0/8 US) and a config
    // change (lab's server) in one reload.
    let db = database(true);
    std::fs::write(g.dir.path().join("geo.mmdb"), &db[..db.len() / 3]).unwrap();
    let text = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("{address: 203.0.113.9}", "{address: 203.0.113.10}");
    std::fs::write(&g.config, text).unwrap();
    // Past the default 5 s poll: a 1 h interval has not looked yet.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        !g.logs().contains("GeoIP database reload failed"),
        "polled early:\n{}",
        g.logs()
    );
    g.reload_cp();
    eventually("the reloaded config answering", &g, 15, || {
        ask(&g, Some(("100.64.1.0", 24))).0 == one("203.0.113.10")
    });
    // The old table keeps serving.
    assert_eq!(ask(&g, Some(("2.2.0.0", 16))).0, one("203.0.113.2"));
    let logs = g.logs();
    assert!(
        logs.contains("GeoIP database reload failed") && logs.contains("geo.mmdb"),
        "{logs}"
    );
    assert_eq!(
        g.cp_metric("opengslb_geo_database_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );
    assert_eq!(
        g.cp_metric("opengslb_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );

    // Fixed and reloaded: the new table.
    std::fs::write(g.dir.path().join("geo.mmdb"), &db).unwrap();
    g.reload_cp();
    eventually("the new table answering", &g, 15, || {
        ask(&g, Some(("2.2.0.0", 16))).0 == one("203.0.113.1")
    });
}
