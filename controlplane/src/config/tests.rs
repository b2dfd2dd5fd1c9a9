use std::path::{Path, PathBuf};

use super::*;

const BASE: &str = "\
dns:
  zones: [example.com]
regions:
  - name: r1
    servers:
      - {address: 192.0.2.1}
    health_check: {type: none}
";

fn ok(text: &str) -> Config {
    match parse(text, Path::new("gslb.yaml")) {
        Ok(cfg) => cfg,
        Err(e) => panic!("config should load:\n{e}\n---\n{text}"),
    }
}

fn errors(text: &str) -> Vec<ConfigIssue> {
    match parse(text, Path::new("gslb.yaml")) {
        Ok(_) => panic!("config should not load:\n{text}"),
        Err(e) => e.issues().to_vec(),
    }
}

/// Asserts exactly one issue, at `line` and `key`, whose message contains `needle`.
fn one(text: &str, line: usize, key: &str, needle: &str) {
    let issues = errors(text);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    has(&issues, line, key, needle);
}

fn has(issues: &[ConfigIssue], line: usize, key: &str, needle: &str) {
    assert!(
        issues
            .iter()
            .any(|i| i.line == Some(line) && i.key == key && i.message.contains(needle)),
        "no issue at line {line} key {key} containing {needle:?} in {issues:#?}"
    );
}

fn domain(extra: &str) -> String {
    format!("{BASE}domains:\n  - name: www.example.com\n    regions: [r1]\n{extra}")
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn reference_config_loads() {
    let path = repo_file("../../shared/config-reference.yaml");
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    // Every section deserializes with the shown values...
    let (cfg, _) = include::parse_one::<Config>(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.includes, ["conf.d/*.yaml"]);
    assert_eq!(cfg.dns.zones.len(), 2);
    assert_eq!(cfg.dns.zones[1].records.len(), 3);
    assert_eq!(cfg.dns.zones[1].soa.minimum, Some(60));
    assert_eq!(
        cfg.domains[0].routing_algorithm,
        RoutingAlgorithm::Geolocation
    );
    assert_eq!(cfg.domains[0].max_answers, Some(2));
    assert_eq!(cfg.dataplane.tcp.io_timeout, Duration::from_millis(500));
    assert_eq!(cfg.dataplane.rrl.exempt.len(), 2);
    assert_eq!(cfg.dataplane.cookies.rotate, Duration::from_secs(86_400));
    assert_eq!(cfg.regions[0].health_check.expected_status, [200, 204]);
    assert_eq!(
        cfg.overwatch.dnssec.signature_validity,
        Duration::from_secs(14 * 86_400)
    );
    assert_eq!(
        cfg.overwatch.geolocation.custom_mappings[0].region,
        "us-east"
    );
    assert_eq!(cfg.overwatch.agent_tokens.len(), 1);
    let agent = cfg.agent.as_ref().expect("agent section");
    assert_eq!(agent.backends[0].port, 8080);
    assert_eq!(agent.predictive.error_rate.window, Duration::from_secs(60));
    // ...and the only semantic problems are the reference's own dangling
    // names: region eu-west is never defined and www.example.com lies in
    // none of its zones.
    // (`parse`, not `load`: a checkout's files are readable by others.)
    let e = parse(&text, &path).unwrap_err();
    let keys: Vec<&str> = e.issues().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "regions[0].fallback[0]",
            "domains[0].name",
            "domains[0].regions[1]"
        ],
        "{e}"
    );
}

#[test]
fn example_config_loads_with_paths_resolved() {
    let path = repo_file("../examples/gslb.yaml");
    // `parse`, not `load`: a checkout's files are readable by others.
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.dns.listen_address, "127.0.0.1:5353".parse().unwrap());
    assert_eq!(
        cfg.overwatch.grpc_address,
        "127.0.0.1:9443".parse().unwrap()
    );
    assert_eq!(cfg.logging.format, LogFormat::Text);
    let examples = path.parent().unwrap();
    assert_eq!(cfg.overwatch.data_dir, examples.join("../.opengslb/data"));
    assert_eq!(
        cfg.dataplane.cache_dir,
        examples.join("../.opengslb/dataplane")
    );
    assert!(cfg
        .regions
        .iter()
        .all(|r| r.health_check.kind == HealthCheckType::None));
}

#[test]
fn opengslb_minimal_file_loads_with_defaults() {
    let cfg = ok("\
dns:
  listen_address: \"0.0.0.0:53\"
  default_ttl: 30
  zones:
    - gslb.example.com
regions:
  - name: us-east
    countries: [US]
    continents: [NA]
    servers:
      - address: 10.0.1.10
        port: 80
        weight: 100
    health_check:
      type: http
      path: /health
      interval: 30s
      timeout: 5s
      failure_threshold: 3
      success_threshold: 2
domains:
  - name: app.gslb.example.com
    routing_algorithm: roundrobin
    regions: [us-east]
    ttl: 30
overwatch:
  identity: {node_id: overwatch-1, region: us-east}
  data_dir: /var/lib/opengslb
  validation: {enabled: true, check_interval: 30s, check_timeout: 5s}
  dnssec: {enabled: false, security_acknowledgment: \"I understand that answers will be unsigned and that resolvers cannot detect forged answers\"}
api:
  enabled: true
  address: 127.0.0.1:8080
  allowed_networks: [127.0.0.1/32]
");
    assert_eq!(
        cfg.domains[0].routing_algorithm,
        RoutingAlgorithm::RoundRobin
    );
    assert_eq!(cfg.dataplane.edns_udp_size, 1232);
    assert_eq!(
        cfg.overwatch.grpc_address,
        "127.0.0.1:9443".parse().unwrap()
    );
    assert_eq!(cfg.logging.level, LogLevel::Info);
    assert_eq!(cfg.regions[0].servers[0].weight, 100);
}

#[test]
fn empty_file_is_all_defaults() {
    let cfg = ok("# nothing\n");
    assert_eq!(cfg.dns.default_ttl, 60);
    assert!(cfg.agent.is_none());
}

#[test]
fn aliases_and_durations() {
    for (alias, want) in [
        ("rr", RoutingAlgorithm::RoundRobin),
        ("weight", RoutingAlgorithm::Weighted),
        ("active-standby", RoutingAlgorithm::Failover),
        ("geo", RoutingAlgorithm::Geolocation),
        ("latency", RoutingAlgorithm::Latency),
    ] {
        let cfg = ok(&domain(&format!("    routing_algorithm: {alias}\n")));
        assert_eq!(cfg.domains[0].routing_algorithm, want, "{alias}");
    }
    assert_eq!(
        "1h30m".parse::<Duration>().unwrap(),
        Duration::from_secs(5400)
    );
    assert_eq!("14d".parse::<Duration>().unwrap().to_string(), "14d");
    assert_eq!("500ms".parse::<Duration>().unwrap().to_string(), "500ms");
    assert!("5".parse::<Duration>().is_err());
    assert!("-5s".parse::<Duration>().is_err());
}

#[test]
fn unknown_key_names_line_and_path() {
    one(
        &domain("    colour: red\n"),
        11,
        "domains[0].colour",
        "unknown field `colour`",
    );
    one(
        "logging:\n  level: info\n  colour: red\n",
        3,
        "logging.colour",
        "unknown field",
    );
}

#[test]
fn unknown_routing_algorithm() {
    let issues = errors(&domain("    routing_algorithm: fastest\n"));
    assert_eq!(
        issues[0].to_string(),
        "gslb.yaml:11: domains[0].routing_algorithm: unknown routing algorithm \"fastest\" \
         (expected round-robin, weighted, failover, geolocation, latency or an alias)"
    );
}

#[test]
fn bad_type_and_bad_duration() {
    one(
        &domain("    ttl: abc\n"),
        11,
        "domains[0].ttl",
        "invalid type",
    );
    one(
        &domain("    failback_delay: 5x\n"),
        11,
        "domains[0].failback_delay",
        "invalid duration \"5x\"",
    );
    one(
        &domain("    failback_delay: 30\n"),
        11,
        "domains[0].failback_delay",
        "missing unit",
    );
    one(
        "dns:\n  listen_address: nope\n",
        2,
        "dns.listen_address",
        "socket address",
    );
    one(
        "regions:\n  - name: a\n    servers:\n      - {address: not-an-ip}\n",
        4,
        "regions[0].servers[0].address",
        "IP address",
    );
}

#[test]
fn yaml_syntax_error_names_line() {
    let issues = errors("dns:\n  zones: [a.com\nregions: []\n");
    assert_eq!(issues.len(), 1);
    assert!(
        issues[0].message.contains("YAML syntax error"),
        "{issues:?}"
    );
    assert!(issues[0].line.is_some());
}

#[test]
fn semantic_errors_are_all_reported_with_lines() {
    let text = format!(
        "{BASE}  - name: r1\n    servers:\n      - {{address: 192.0.2.2, port: 0, weight: 2000}}\n\
         domains:\n  - name: www.example.com\n    regions: [r1, nowhere]\n  - name: www.example.org\n    regions: [r1]\n"
    );
    let issues = errors(&text);
    has(&issues, 8, "regions[1].name", "defined twice");
    has(&issues, 10, "regions[1].servers[0].port", "1-65535");
    has(&issues, 10, "regions[1].servers[0].weight", "0-1000");
    has(
        &issues,
        13,
        "domains[0].regions[1]",
        "unknown region \"nowhere\"",
    );
    has(&issues, 14, "domains[1].name", "not inside any zone");
    assert_eq!(issues.len(), 5, "{issues:#?}");
    // Sorted by line.
    assert!(issues.windows(2).all(|w| w[0].line <= w[1].line));
}

#[test]
fn timeout_must_be_below_interval() {
    let text = "regions:\n  - name: a\n    servers: [{address: 192.0.2.1}]\n    health_check:\n      type: http\n      interval: 5s\n      timeout: 5s\n";
    one(
        text,
        7,
        "regions[0].health_check.timeout",
        "shorter than interval",
    );
}

#[test]
fn gossip_section_is_refused() {
    one(
        "gossip:\n  overwatch_nodes: [a:7946]\n",
        1,
        "gossip",
        "docs/configuration.md#migrating-from-gossip",
    );
}

#[test]
fn longest_zone_wins_and_records_stay_in_their_zone() {
    let cfg = ok("dns:\n  zones: [example.com, sub.example.com]\n");
    let name = DnsName::parse("a.sub.example.com").unwrap();
    assert_eq!(cfg.zone_of(&name), Some(1));
    let text = "dns:\n  zones:\n    - name: example.com\n      records:\n        - {name: www.example.org, type: TXT, value: x}\n";
    one(
        text,
        5,
        "dns.zones[0].records[0].name",
        "not inside zone example.com",
    );
}

#[test]
fn record_values_are_parsed() {
    let text = "dns:\n  zones:\n    - name: example.com\n      records:\n        - {name: example.com, type: MX, value: \"mail.example.com\"}\n        - {name: example.com, type: MX, value: \"10 mail.example.com\"}\n        - {name: a.example.com, type: A, value: \"2001:db8::1\"}\n";
    let issues = errors(text);
    has(&issues, 5, "dns.zones[0].records[0].value", "preference");
    has(
        &issues,
        7,
        "dns.zones[0].records[2].value",
        "not an IPv4 address",
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
}

#[test]
fn cname_conflicts() {
    let text = format!(
        "{}domains:\n  - name: www.example.com\n    regions: [r1]\n",
        BASE.replace(
            "  zones: [example.com]\n",
            "  zones:\n    - name: example.com\n      records:\n        \
             - {name: a.example.com, type: CNAME, value: b.example.com}\n        \
             - {name: a.example.com, type: TXT, value: hello}\n        \
             - {name: example.com, type: CNAME, value: b.example.com}\n        \
             - {name: www.example.com, type: CNAME, value: b.example.com}\n",
        )
    );
    let issues = errors(&text);
    has(
        &issues,
        6,
        "dns.zones[0].records[1].type",
        "cannot coexist with the CNAME at a.example.com",
    );
    has(
        &issues,
        7,
        "dns.zones[0].records[2].type",
        "not allowed at the zone apex",
    );
    has(
        &issues,
        8,
        "dns.zones[0].records[3].type",
        "load-balanced domain",
    );
    assert_eq!(issues.len(), 3, "{issues:#?}");
}

#[test]
fn service_limits_a_server_to_its_domain() {
    let cfg = ok(&domain("").replace(
        "      - {address: 192.0.2.1}\n",
        "      - {address: 192.0.2.1}\n      - {address: 192.0.2.2, service: api.example.com}\n",
    ));
    let www = &cfg.domains[0].name;
    assert!(cfg.regions[0].servers[0].serves(www));
    assert!(!cfg.regions[0].servers[1].serves(www));
}

#[test]
fn dnssec_off_needs_acknowledgment() {
    one(
        "overwatch:\n  dnssec:\n    enabled: false\n",
        3,
        "overwatch.dnssec.enabled",
        "security_acknowledgment",
    );
    // Any other statement is refused, even a close one.
    one(
        "overwatch:\n  dnssec:\n    enabled: false\n    security_acknowledgment: I understand\n",
        3,
        "overwatch.dnssec.enabled",
        "exactly",
    );
    let exact = format!(
        "overwatch:\n  dnssec:\n    enabled: false\n    security_acknowledgment: \"{}\"\n",
        validate::DNSSEC_OFF_ACKNOWLEDGMENT
    );
    assert!(!ok(&domain(&exact)).overwatch.dnssec.enabled);
}

#[test]
fn includes_merge_and_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-regions.yaml"),
        "regions:\n  - name: r2\n    servers: [{address: 192.0.2.9}]\n    health_check: {type: none}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/20-domains.yaml"),
        "dns:\n  zones: [example.net]\ndomains:\n  - name: api.example.net\n    regions: [r2, r1]\n",
    )
    .unwrap();
    let main = dir.path().join("gslb.yaml");
    std::fs::write(&main, format!("includes: [\"conf.d/*.yaml\"]\n{BASE}")).unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(&main, mode).unwrap();
    let cfg = load(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.regions.len(), 2);
    assert_eq!(cfg.dns.zones.len(), 2);
    assert_eq!(cfg.domains[0].name.as_str(), "api.example.net");

    // A semantic error in an included file names that file and its line.
    let bad = dir.path().join("conf.d/30-bad.yaml");
    std::fs::write(
        &bad,
        "domains:\n  - name: x.example.net\n    regions: [nowhere]\n",
    )
    .unwrap();
    let e = load(&main).unwrap_err();
    let issue = &e.issues()[0];
    assert_eq!(issue.file, bad);
    assert_eq!(issue.line, Some(3));
    assert_eq!(issue.key, "domains[0].regions[0]");

    // So does a deserialization error.
    std::fs::write(&bad, "domains:\n  - name: x.example.net\n    bogus: 1\n").unwrap();
    let e = load(&main).unwrap_err();
    assert_eq!(e.issues()[0].file, bad);
    assert_eq!(e.issues()[0].line, Some(3));
    assert!(
        e.to_string()
            .contains("30-bad.yaml:3: domains[0].bogus: unknown field"),
        "{e}"
    );

    // A missing literal include is an error at the includes line.
    std::fs::remove_file(&bad).unwrap();
    std::fs::write(&main, format!("{BASE}includes: [missing.yaml]\n")).unwrap();
    let e = load(&main).unwrap_err();
    assert_eq!(e.issues()[0].key, "includes[0]");
    assert_eq!(e.issues()[0].line, Some(8));
}

#[test]
fn api_max_connections_is_bounded() {
    assert_eq!(ok(&domain("")).api.max_connections, 512);
    assert_eq!(
        ok(&domain("api:\n  max_connections: 64\n"))
            .api
            .max_connections,
        64
    );
    for bad in ["0", "1000001"] {
        one(
            &domain(&format!("api:\n  max_connections: {bad}\n")),
            12,
            "api.max_connections",
            "must be 1-1000000",
        );
    }
    // Not a number: a type error naming the key.
    let issues = errors(&domain("api:\n  max_connections: lots\n"));
    assert!(
        issues.iter().any(|i| i.key.contains("max_connections")),
        "{issues:#?}"
    );
}
