//! Semantic validation: everything serde cannot check, reported all at once,
//! each problem with the file and line it comes from.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::include::{Origins, Source};
use super::{Config, ConfigIssue, DnsName, HealthCheckConfig, HealthCheckType, RecordType};

/// Largest TTL allowed (RFC 2181 §8).
pub(crate) const MAX_TTL: u32 = (1 << 31) - 1;

/// The exact statement `overwatch.dnssec.security_acknowledgment` must hold
/// for `overwatch.dnssec.enabled: false` (docs/configuration.md, DNSSEC).
pub(crate) const DNSSEC_OFF_ACKNOWLEDGMENT: &str =
    "I understand that answers will be unsigned and that resolvers cannot detect forged answers";

const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

#[derive(Clone, Copy)]
enum List {
    Regions,
    Domains,
    Zones,
}

struct Report<'a> {
    sources: &'a [Source],
    origins: &'a Origins,
    issues: Vec<ConfigIssue>,
}

pub(crate) fn validate(cfg: &Config, sources: &[Source], origins: &Origins) -> Vec<ConfigIssue> {
    let mut r = Report {
        sources,
        origins,
        issues: Vec::new(),
    };
    if cfg.has_gossip() {
        r.at(
            "gossip",
            "the gossip section is not supported: agents connect to the controlplanes \
             directly (agent.controlplanes, overwatch.agent_listen); see \
             docs/configuration.md#migrating-from-gossip",
        );
    }
    check_dns(cfg, &mut r);
    check_regions(cfg, &mut r);
    check_domains(cfg, &mut r);
    check_records(cfg, &mut r);
    check_sections(cfg, &mut r);
    r.issues
}

fn check_dns(cfg: &Config, r: &mut Report<'_>) {
    if cfg.dns.default_ttl > MAX_TTL {
        r.at("dns.default_ttl", format!("TTL must be at most {MAX_TTL}"));
    }
    let mut seen = HashMap::new();
    for (z, zone) in cfg.dns.zones.iter().enumerate() {
        if let Some(&first) = seen.get(&zone.name) {
            let also = r.place(List::Zones, first, ".name");
            r.item(
                List::Zones,
                z,
                ".name",
                format!("zone {} is configured twice (also at {also})", zone.name),
            );
        } else {
            seen.insert(&zone.name, z);
        }
        let soa = &zone.soa;
        for (key, v) in [
            ("ttl", soa.ttl),
            ("minimum", soa.minimum),
            ("refresh", soa.refresh),
            ("retry", soa.retry),
            ("expire", soa.expire),
        ] {
            if v.is_some_and(|v| v > MAX_TTL) {
                r.item(
                    List::Zones,
                    z,
                    &format!(".soa.{key}"),
                    format!("must be at most {MAX_TTL}"),
                );
            }
        }
    }
}

fn check_regions(cfg: &Config, r: &mut Report<'_>) {
    let names: HashSet<&str> = cfg.regions.iter().map(|g| g.name.as_str()).collect();
    let mut seen = HashMap::new();
    for (i, region) in cfg.regions.iter().enumerate() {
        if region.name.trim().is_empty() {
            r.item(List::Regions, i, ".name", "region name must not be empty");
        } else if let Some(&first) = seen.get(region.name.as_str()) {
            let also = r.place(List::Regions, first, ".name");
            r.item(
                List::Regions,
                i,
                ".name",
                format!("region {:?} is defined twice (also at {also})", region.name),
            );
        } else {
            seen.insert(region.name.as_str(), i);
        }
        for (c, code) in region.countries.iter().enumerate() {
            if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                r.item(
                    List::Regions,
                    i,
                    &format!(".countries[{c}]"),
                    format!("{code:?} is not an ISO-3166 alpha-2 country code (e.g. US)"),
                );
            }
        }
        for (c, code) in region.continents.iter().enumerate() {
            if !CONTINENTS.contains(&code.as_str()) {
                r.item(
                    List::Regions,
                    i,
                    &format!(".continents[{c}]"),
                    format!(
                        "{code:?} is not a continent code (expected one of {})",
                        CONTINENTS.join(", ")
                    ),
                );
            }
        }
        for (f, name) in region.fallback.iter().enumerate() {
            if !names.contains(name.as_str()) {
                r.item(
                    List::Regions,
                    i,
                    &format!(".fallback[{f}]"),
                    format!("unknown region {name:?}"),
                );
            } else if name == &region.name {
                r.item(
                    List::Regions,
                    i,
                    &format!(".fallback[{f}]"),
                    "a region cannot fall back to itself",
                );
            }
        }
        let mut addrs = HashSet::new();
        for (s, server) in region.servers.iter().enumerate() {
            let key = format!(".servers[{s}]");
            if server.port == 0 {
                r.item(
                    List::Regions,
                    i,
                    &format!("{key}.port"),
                    "port must be 1-65535",
                );
            }
            if server.weight > 1000 {
                r.item(
                    List::Regions,
                    i,
                    &format!("{key}.weight"),
                    "weight must be 0-1000",
                );
            }
            if let Some(service) = server.service.as_deref().filter(|s| !s.trim().is_empty()) {
                if let Err(e) = DnsName::parse(service.trim()) {
                    r.item(List::Regions, i, &format!("{key}.service"), e.to_string());
                }
            }
            if !addrs.insert((server.address, server.port, server.service.clone())) {
                r.item(
                    List::Regions,
                    i,
                    &key,
                    format!(
                        "server {} port {} is listed twice",
                        server.address, server.port
                    ),
                );
            }
        }
        check_health(&region.health_check, &mut |sub, msg| {
            r.item(List::Regions, i, &format!(".health_check{sub}"), msg)
        });
    }
}

fn check_health(hc: &HealthCheckConfig, report: &mut dyn FnMut(&str, String)) {
    if hc.kind == HealthCheckType::None {
        return;
    }
    if hc.interval.is_zero() {
        report(".interval", "interval must be greater than 0".to_owned());
    }
    if hc.timeout.is_zero() {
        report(".timeout", "timeout must be greater than 0".to_owned());
    } else if hc.timeout >= hc.interval {
        report(
            ".timeout",
            format!(
                "timeout ({}) must be shorter than interval ({})",
                hc.timeout, hc.interval
            ),
        );
    }
    if hc.failure_threshold == 0 {
        report(".failure_threshold", "must be at least 1".to_owned());
    }
    if hc.success_threshold == 0 {
        report(".success_threshold", "must be at least 1".to_owned());
    }
    if matches!(hc.kind, HealthCheckType::Http | HealthCheckType::Https)
        && !hc.path.starts_with('/')
    {
        report(".path", format!("path {:?} must start with '/'", hc.path));
    }
    for (i, code) in hc.expected_status.iter().enumerate() {
        if !(100..=599).contains(code) {
            report(
                &format!(".expected_status[{i}]"),
                format!("{code} is not an HTTP status"),
            );
        }
    }
}

fn check_domains(cfg: &Config, r: &mut Report<'_>) {
    let mut seen = HashMap::new();
    for (i, domain) in cfg.domains.iter().enumerate() {
        if let Some(&first) = seen.get(&domain.name) {
            let also = r.place(List::Domains, first, ".name");
            r.item(
                List::Domains,
                i,
                ".name",
                format!("domain {} is defined twice (also at {also})", domain.name),
            );
        } else {
            seen.insert(&domain.name, i);
        }
        if cfg.zone_of(&domain.name).is_none() {
            r.item(
                List::Domains,
                i,
                ".name",
                format!("{} is not inside any zone of dns.zones", domain.name),
            );
        }
        if domain.regions.is_empty() {
            r.item(
                List::Domains,
                i,
                ".regions",
                "a domain needs at least one region",
            );
        }
        let mut serving = false;
        let mut unknown = false;
        for (g, name) in domain.regions.iter().enumerate() {
            match cfg.regions.iter().find(|reg| &reg.name == name) {
                None => {
                    unknown = true;
                    r.item(
                        List::Domains,
                        i,
                        &format!(".regions[{g}]"),
                        format!("unknown region {name:?}"),
                    );
                }
                Some(region) => serving |= region.servers.iter().any(|s| s.serves(&domain.name)),
            }
        }
        if !domain.regions.is_empty() && !unknown && !serving {
            r.item(
                List::Domains,
                i,
                ".regions",
                format!("no server in these regions serves {}", domain.name),
            );
        }
        if domain.ttl.is_some_and(|t| t > MAX_TTL) {
            r.item(
                List::Domains,
                i,
                ".ttl",
                format!("TTL must be at most {MAX_TTL}"),
            );
        }
        if domain.ecs_max_prefix_v4 > 32 {
            r.item(List::Domains, i, ".ecs_max_prefix_v4", "must be 0-32");
        }
        if domain.ecs_max_prefix_v6 > 128 {
            r.item(List::Domains, i, ".ecs_max_prefix_v6", "must be 0-128");
        }
        if let Some(l) = &domain.latency_config {
            if !(l.smoothing_factor > 0.0 && l.smoothing_factor <= 1.0) {
                r.item(
                    List::Domains,
                    i,
                    ".latency_config.smoothing_factor",
                    "must be in (0, 1]",
                );
            }
        }
    }
}

fn check_records(cfg: &Config, r: &mut Report<'_>) {
    let apexes: HashSet<&DnsName> = cfg.dns.zones.iter().map(|z| &z.name).collect();
    let domains: HashSet<&DnsName> = cfg.domains.iter().map(|d| &d.name).collect();
    // Owner name → (zone, record, type) of every static record, in order.
    let mut owners: BTreeMap<&DnsName, Vec<(usize, usize, RecordType)>> = BTreeMap::new();
    for (z, zone) in cfg.dns.zones.iter().enumerate() {
        for (k, rec) in zone.records.iter().enumerate() {
            let key = format!(".records[{k}]");
            if !rec.name.is_in(&zone.name) {
                r.item(
                    List::Zones,
                    z,
                    &format!("{key}.name"),
                    format!("{} is not inside zone {}", rec.name, zone.name),
                );
                continue;
            }
            if let Some(owner) = cfg.zone_of(&rec.name).filter(|&o| o != z) {
                r.item(
                    List::Zones,
                    z,
                    &format!("{key}.name"),
                    format!(
                        "{} belongs to the more specific zone {}",
                        rec.name, cfg.dns.zones[owner].name
                    ),
                );
                continue;
            }
            if let Err(e) = rec.rtype.parse_value(&rec.value) {
                r.item(List::Zones, z, &format!("{key}.value"), e);
            }
            if rec.ttl.is_some_and(|t| t > MAX_TTL) {
                r.item(
                    List::Zones,
                    z,
                    &format!("{key}.ttl"),
                    format!("TTL must be at most {MAX_TTL}"),
                );
            }
            if rec.rtype == RecordType::NS && rec.name == zone.name {
                r.item(
                    List::Zones,
                    z,
                    &format!("{key}.type"),
                    "apex NS records come from the zone's ns: list",
                );
            }
            if matches!(rec.rtype, RecordType::A | RecordType::AAAA) && domains.contains(&rec.name)
            {
                r.item(
                    List::Zones,
                    z,
                    &format!("{key}.type"),
                    format!(
                        "{} is a load-balanced domain; its addresses come from its regions",
                        rec.name
                    ),
                );
            }
            owners.entry(&rec.name).or_default().push((z, k, rec.rtype));
        }
    }
    let cname_rule = "(RFC 1034 §3.6.2, RFC 2181 §10.1)";
    for (name, recs) in &owners {
        let Some(&(cz, ck, _)) = recs.iter().find(|(_, _, t)| *t == RecordType::CNAME) else {
            continue;
        };
        let key = format!(".records[{ck}].type");
        if apexes.contains(name) {
            r.item(
                List::Zones,
                cz,
                &key,
                format!("a CNAME is not allowed at the zone apex {name} {cname_rule}"),
            );
        }
        if domains.contains(name) {
            r.item(
                List::Zones,
                cz,
                &key,
                format!("CNAME at {name} conflicts with the load-balanced domain of that name {cname_rule}"),
            );
        }
        for &(z, k, t) in recs {
            if (z, k) == (cz, ck) {
                continue;
            }
            let what = if t == RecordType::CNAME {
                "a second CNAME".to_owned()
            } else {
                format!("a {t:?} record")
            };
            r.item(
                List::Zones,
                z,
                &format!(".records[{k}].type"),
                format!("{what} cannot coexist with the CNAME at {name} {cname_rule}"),
            );
        }
    }
}

fn check_sections(cfg: &Config, r: &mut Report<'_>) {
    let regions: HashSet<&str> = cfg.regions.iter().map(|g| g.name.as_str()).collect();
    let dp = &cfg.dataplane;
    if dp.edns_udp_size < 512 {
        r.at("dataplane.edns_udp_size", "must be at least 512");
    }
    if dp.rrl.ipv4_prefix > 32 {
        r.at("dataplane.rrl.ipv4_prefix", "must be 0-32");
    }
    if dp.rrl.ipv6_prefix > 128 {
        r.at("dataplane.rrl.ipv6_prefix", "must be 0-128");
    }
    if dp.rrl.enabled && dp.rrl.window.is_zero() {
        r.at("dataplane.rrl.window", "must be greater than 0");
    }
    if dp.tcp.io_timeout.is_zero() {
        r.at("dataplane.tcp.io_timeout", "must be greater than 0");
    }
    if dp.tcp.idle_timeout.is_zero() {
        r.at("dataplane.tcp.idle_timeout", "must be greater than 0");
    }
    if dp.tcp.max_connections == 0 {
        r.at("dataplane.tcp.max_connections", "must be at least 1");
    }
    if dp.tcp.max_output_bytes < 512 {
        r.at("dataplane.tcp.max_output_bytes", "must be at least 512");
    }
    if !(1..=100).contains(&dp.tcp.one_shot_percent) {
        r.at("dataplane.tcp.one_shot_percent", "must be 1-100");
    }
    let ow = &cfg.overwatch;
    if ow.identity.node_id.trim().is_empty() {
        r.at("overwatch.identity.node_id", "must not be empty");
    }
    for (service, token) in &ow.agent_tokens {
        if token.chars().count() < 16 {
            r.at(
                &format!("overwatch.agent_tokens.{service}"),
                "token must be at least 16 characters",
            );
        }
    }
    let v = &ow.validation;
    if v.enabled && v.check_timeout >= v.check_interval {
        r.at(
            "overwatch.validation.check_timeout",
            format!(
                "check_timeout ({}) must be shorter than check_interval ({})",
                v.check_timeout, v.check_interval
            ),
        );
    }
    if ow.stale.threshold.is_zero() {
        r.at("overwatch.stale.threshold", "must be greater than 0");
    } else if ow.stale.remove_after < ow.stale.threshold {
        r.at(
            "overwatch.stale.remove_after",
            "must not be shorter than threshold",
        );
    }
    if !(1..=1_000_000).contains(&ow.max_agent_connections) {
        r.at("overwatch.max_agent_connections", "must be 1-1000000");
    }
    let geo = &ow.geolocation;
    if geo.database_poll_interval.is_zero() {
        r.at(
            "overwatch.geolocation.database_poll_interval",
            "must be greater than 0",
        );
    }
    if let Some(name) = &geo.default_region {
        if !regions.contains(name.as_str()) {
            r.at(
                "overwatch.geolocation.default_region",
                format!("unknown region {name:?}"),
            );
        }
    }
    for (i, m) in geo.custom_mappings.iter().enumerate() {
        if !regions.contains(m.region.as_str()) {
            r.at(
                &format!("overwatch.geolocation.custom_mappings[{i}].region"),
                format!("unknown region {:?}", m.region),
            );
        }
    }
    let sec = &ow.dnssec;
    if !sec.enabled
        && sec.security_acknowledgment.as_deref().map(str::trim) != Some(DNSSEC_OFF_ACKNOWLEDGMENT)
    {
        r.at(
            "overwatch.dnssec.enabled",
            format!(
                "turning DNSSEC off needs overwatch.dnssec.security_acknowledgment set to exactly {DNSSEC_OFF_ACKNOWLEDGMENT:?}"
            ),
        );
    }
    if !(1..=1_000_000).contains(&cfg.api.max_connections) {
        r.at("api.max_connections", "must be 1-1000000");
    }
    if cfg.api.tls_cert_file.is_some() != cfg.api.tls_key_file.is_some() {
        r.at(
            "api.tls_cert_file",
            "api.tls_cert_file and api.tls_key_file go together (TLS needs both)",
        );
    }
    // Key sync: peers must be URLs; what cannot work (no token_file, an
    // unreadable ca_file) fails each poll at run time, visibly (status,
    // metrics), without stopping signing.
    if let Some(ks) = &sec.key_sync {
        for (i, p) in ks.peers.iter().enumerate() {
            let rest = p
                .strip_prefix("http://")
                .or_else(|| p.strip_prefix("https://"));
            if rest.is_none_or(str::is_empty) {
                r.at(
                    &format!("overwatch.dnssec.key_sync.peers[{i}]"),
                    format!("{p:?}: expected a peer REST API URL, http://HOST:PORT or https://HOST:PORT"),
                );
            }
        }
    }
    if sec.enabled && sec.refresh_before >= sec.signature_validity {
        r.at(
            "overwatch.dnssec.refresh_before",
            "must be shorter than signature_validity",
        );
    }
    if let Some(agent) = &cfg.agent {
        if agent.identity.service_token.chars().count() < 16 {
            r.at(
                "agent.identity.service_token",
                "token must be at least 16 characters",
            );
        }
        for (i, b) in agent.backends.iter().enumerate() {
            let key = format!("agent.backends[{i}]");
            if b.port == 0 {
                r.at(&format!("{key}.port"), "port must be 1-65535");
            }
            if b.weight > 1000 {
                r.at(&format!("{key}.weight"), "weight must be 0-1000");
            }
            let mut issues = Vec::new();
            check_health(&b.health_check, &mut |sub, msg| {
                issues.push((format!("{key}.health_check{sub}"), msg))
            });
            for (k, msg) in issues {
                r.at(&k, msg);
            }
        }
        if agent.heartbeat.interval.is_zero() {
            r.at("agent.heartbeat.interval", "must be greater than 0");
        }
        if let Some(url) = &agent.predictive.error_rate.endpoint {
            if let Err(e) = crate::config::parse_local_http_url(url) {
                r.at("agent.predictive.error_rate.endpoint", e);
            }
        }
    }
}

// === impl Report ===

impl Report<'_> {
    /// An issue at `key` of the main file.
    fn at(&mut self, key: &str, message: impl Into<String>) {
        let source = &self.sources[0];
        self.issues.push(ConfigIssue {
            file: source.file.clone(),
            line: source.lines.line(key),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// `file:line` of `sub` of item `index` of a merged list.
    fn place(&self, list: List, index: usize, sub: &str) -> String {
        let (origins, prefix) = match list {
            List::Regions => (&self.origins.regions, "regions"),
            List::Domains => (&self.origins.domains, "domains"),
            List::Zones => (&self.origins.zones, "dns.zones"),
        };
        let origin = origins
            .get(index)
            .copied()
            .unwrap_or(super::include::Origin { source: 0, index });
        let source = &self.sources[origin.source.min(self.sources.len() - 1)];
        let key = format!("{prefix}[{}]{sub}", origin.index);
        match source.lines.line(&key) {
            Some(line) => format!("{}:{line}", source.file.display()),
            None => source.file.display().to_string(),
        }
    }

    /// An issue at `sub` (e.g. `.servers[0].port`) of item `index` of a
    /// merged list, reported in the file and at the index it came from.
    fn item(&mut self, list: List, index: usize, sub: &str, message: impl Into<String>) {
        let (origins, prefix) = match list {
            List::Regions => (&self.origins.regions, "regions"),
            List::Domains => (&self.origins.domains, "domains"),
            List::Zones => (&self.origins.zones, "dns.zones"),
        };
        let origin = origins
            .get(index)
            .copied()
            .unwrap_or(super::include::Origin { source: 0, index });
        let source = &self.sources[origin.source.min(self.sources.len() - 1)];
        let key = format!("{prefix}[{}]{sub}", origin.index);
        self.issues.push(ConfigIssue {
            file: source.file.clone(),
            line: source.lines.line(&key),
            key,
            message: message.into(),
        });
    }
}
