//! The snapshot compiler: a validated [`Config`] and the health of every
//! server in, one `opengslb_proto::Snapshot` out.
//!
//! Invariants: pure and deterministic (the same inputs give byte-identical
//! encoded snapshots: nodes in RFC 4034 canonical order, everything else in
//! config order); names lower-case, uncompressed wire format; every owner
//! name of a zone is a node, empty non-terminals and each apex included.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use opengslb_proto::{
    rtype, AnswerPlan, Candidate, GeoTable, Node, Policy, RRset, ServeOptions, Snapshot,
    WhenAllDown, Zone,
};

use crate::config::{
    Config, DnsName, DomainConfig, HealthCheckType, RoutingAlgorithm, ServerRef, WhenAllDownConfig,
};

pub mod wire;

#[cfg(test)]
mod tests;

/// The health hook that calls every server healthy.
pub fn all_healthy(_: &ServerRef<'_>) -> bool {
    true
}

/// Compiles `cfg` into a snapshot of `generation`, with SOA `serial`.
///
/// `health` is asked about every server whose region is probed
/// (`health_check.type` other than `none`); servers of `none` regions are
/// always healthy. Unhealthy servers leave the candidates; when a domain has
/// none left of a family, `when_all_down: all` (and, until health history
/// exists, `last_healthy`) answers with every server of that family
/// (fail open) while `servfail` leaves the plan without candidates.
pub fn compile(
    cfg: &Config,
    generation: u64,
    serial: u32,
    health: &dyn Fn(&ServerRef<'_>) -> bool,
) -> Snapshot {
    let default_ttl = cfg.dns.default_ttl;
    let zones = cfg
        .dns
        .zones
        .iter()
        .map(|z| {
            let soa = z.soa(default_ttl);
            Zone {
                apex: z.name.to_wire(),
                soa: Some(RRset {
                    rtype: rtype::SOA,
                    ttl: soa.ttl,
                    rdata: vec![wire::soa(&soa, serial)],
                    rrsig: Vec::new(),
                }),
                ns: Some(RRset {
                    rtype: rtype::NS,
                    ttl: soa.ttl,
                    rdata: z.ns_names().iter().map(wire::name).collect(),
                    rrsig: Vec::new(),
                }),
                dnskey: None,
                negative_ttl: soa.ttl.min(soa.minimum),
            }
        })
        .collect();

    let mut nodes = Nodes::default();
    for (zi, z) in cfg.dns.zones.iter().enumerate() {
        nodes.entry(&z.name, zi);
        for rec in &z.records {
            // Validation guarantees the value parses and the zone is `zi`.
            let Ok(data) = rec.rtype.parse_value(&rec.value) else {
                continue;
            };
            let ttl = rec.ttl.unwrap_or(default_ttl);
            let rdata = wire::rdata(&data);
            let node = nodes.entry(&rec.name, zi);
            let set = node
                .rrsets
                .entry(rec.rtype.code())
                .or_insert_with(|| RRset {
                    rtype: rec.rtype.code(),
                    ttl,
                    rdata: Vec::new(),
                    rrsig: Vec::new(),
                });
            set.ttl = set.ttl.min(ttl);
            if !set.rdata.contains(&rdata) {
                set.rdata.push(rdata);
            }
        }
    }
    for domain in &cfg.domains {
        let Some(zi) = cfg.zone_of(&domain.name) else {
            continue;
        };
        let plans = plans(cfg, domain, health);
        nodes.entry(&domain.name, zi).plans.extend(plans);
    }
    nodes.add_empty_non_terminals(cfg);

    Snapshot {
        generation,
        origin: cfg.overwatch.identity.node_id.clone(),
        zones,
        nodes: nodes.finish(),
        geo: Some(GeoTable {
            generation: 1,
            regions: cfg.regions.iter().map(|r| r.name.clone()).collect(),
            v4: Vec::new(),
            v6: Vec::new(),
        }),
        options: Some(ServeOptions {
            edns_udp_size: u32::from(cfg.dataplane.edns_udp_size),
            ecs_enabled: cfg.overwatch.geolocation.ecs_enabled,
        }),
    }
}

/// One server as a domain sees it.
struct Member {
    address: IpAddr,
    weight: u32,
    region: u32,
    healthy: bool,
}

/// The A and AAAA plans of `domain`.
fn plans(
    cfg: &Config,
    domain: &DomainConfig,
    health: &dyn Fn(&ServerRef<'_>) -> bool,
) -> Vec<AnswerPlan> {
    let mut seen = HashSet::new();
    let mut members = Vec::new();
    for region_name in &domain.regions {
        let Some(ri) = cfg.region_index(region_name) else {
            continue;
        };
        let region = &cfg.regions[ri];
        let always = region.health_check.kind == HealthCheckType::None;
        for (si, server) in region.servers.iter().enumerate() {
            if !server.serves(&domain.name) || !seen.insert(server.address) {
                continue;
            }
            let healthy = always
                || health(&ServerRef {
                    region_index: ri,
                    region: &region.name,
                    server_index: si,
                    address: server.address,
                    port: server.port,
                });
            members.push(Member {
                address: server.address,
                weight: server.weight,
                region: u32::try_from(ri).unwrap_or(u32::MAX),
                healthy,
            });
        }
    }

    let round_robin = domain.routing_algorithm == RoutingAlgorithm::RoundRobin;
    let policy = match domain.routing_algorithm {
        RoutingAlgorithm::RoundRobin => Policy::RoundRobin,
        RoutingAlgorithm::Weighted => Policy::Weighted,
        RoutingAlgorithm::Failover => Policy::Failover,
        RoutingAlgorithm::Geolocation => Policy::Geolocation,
        RoutingAlgorithm::Latency => Policy::Latency,
    };
    let when_all_down = match domain.when_all_down {
        WhenAllDownConfig::Servfail => WhenAllDown::Servfail,
        WhenAllDownConfig::All | WhenAllDownConfig::LastHealthy => WhenAllDown::All,
    };
    let ttl = domain.ttl.unwrap_or(cfg.dns.default_ttl);
    let max_answers = domain
        .max_answers
        .unwrap_or(if round_robin { 0 } else { 1 });

    let mut out = Vec::new();
    for (code, v4) in [(rtype::A, true), (rtype::AAAA, false)] {
        let family: Vec<&Member> = members
            .iter()
            .filter(|m| m.address.is_ipv4() == v4)
            .collect();
        if family.is_empty() {
            continue;
        }
        let mut chosen: Vec<&Member> = family.iter().copied().filter(|m| m.healthy).collect();
        if chosen.is_empty() && when_all_down == WhenAllDown::All {
            chosen = family;
        }
        let rdata = |m: &Member| match m.address {
            IpAddr::V4(a) => wire::a(a),
            IpAddr::V6(a) => wire::aaaa(a),
        };
        let rrset = |rdata: Vec<Vec<u8>>| RRset {
            rtype: code,
            ttl,
            rdata,
            rrsig: Vec::new(),
        };
        let candidates = if round_robin {
            if chosen.is_empty() {
                Vec::new()
            } else {
                vec![Candidate {
                    rrset: Some(rrset(chosen.iter().map(|m| rdata(m)).collect())),
                    weight: 1,
                    region: 0,
                }]
            }
        } else {
            chosen
                .iter()
                .map(|m| Candidate {
                    rrset: Some(rrset(vec![rdata(m)])),
                    weight: m.weight,
                    region: m.region,
                })
                .collect()
        };
        out.push(AnswerPlan {
            rtype: code,
            policy: policy.into(),
            max_answers,
            candidates,
            when_all_down: when_all_down.into(),
        });
    }
    out
}

#[derive(Default)]
struct Nodes {
    /// Keyed by canonical order (labels reversed).
    map: BTreeMap<Vec<Vec<u8>>, NodeBuilder>,
}

struct NodeBuilder {
    name: DnsName,
    zone: u32,
    rrsets: BTreeMap<u32, RRset>,
    plans: Vec<AnswerPlan>,
}

// === impl Nodes ===

impl Nodes {
    fn entry(&mut self, name: &DnsName, zone: usize) -> &mut NodeBuilder {
        let key = name
            .canonical_key()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        self.map.entry(key).or_insert_with(|| NodeBuilder {
            name: name.clone(),
            zone: u32::try_from(zone).unwrap_or(u32::MAX),
            rrsets: BTreeMap::new(),
            plans: Vec::new(),
        })
    }

    /// Adds every name between a node and its zone apex that is not a node.
    fn add_empty_non_terminals(&mut self, cfg: &Config) {
        let names: Vec<(DnsName, u32)> = self
            .map
            .values()
            .map(|n| (n.name.clone(), n.zone))
            .collect();
        for (name, zone) in names {
            let Some(apex) = cfg.dns.zones.get(zone as usize).map(|z| &z.name) else {
                continue;
            };
            let mut cur = name.parent();
            while let Some(p) = cur {
                if !p.is_in(apex) || &p == apex {
                    break;
                }
                self.entry(&p, zone as usize);
                cur = p.parent();
            }
        }
    }

    fn finish(self) -> Vec<Node> {
        self.map
            .into_values()
            .map(|n| Node {
                name: n.name.to_wire(),
                zone: n.zone,
                rrsets: n.rrsets.into_values().collect(),
                plans: n.plans,
                denial: Vec::new(),
            })
            .collect()
    }
}
