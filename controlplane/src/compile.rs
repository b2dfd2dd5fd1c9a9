//! The snapshot compiler: a validated [`Config`] and the health of every
//! server in, one `opengslb_proto::Snapshot` out.
//!
//! Invariants: deterministic (the same config, health, time and compiler
//! state give byte-identical encoded snapshots: nodes in RFC 4034 canonical
//! order, everything else in config order); names lower-case, uncompressed
//! wire format; every owner name of a zone is a node, empty non-terminals and
//! each apex included.
//!
//! Policy decisions that depend on global state are made here (DESIGN.md,
//! "Where each decision is made"): who is healthy, the failover order and its
//! failback hold-down, the `when_all_down` fallback set. The [`Compiler`]
//! keeps the little state these need across compiles; per-query picks
//! (weighted draw, round-robin rotation) are left to the dataplane, on the
//! candidates compiled here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use opengslb_proto::{
    rtype, AnswerPlan, Candidate, Node, Policy, RRset, ServeOptions, Snapshot, WhenAllDown, Zone,
};

use crate::config::{
    Config, DnsName, DomainConfig, HealthCheckType, RegionSelection, RoutingAlgorithm, ServerRef,
    WhenAllDownConfig,
};
use crate::dnssec::{Dnssec, Signer};
use crate::geo::{GeoDb, RangeTable, VersionedTable};
use crate::store::GeoMappingRow;

pub mod incremental;
pub mod routing;
pub mod wire;

pub use routing::{LatencyReport, LatencySample, GEO_ANY_REGION};

#[cfg(test)]
mod geo_tests;
#[cfg(test)]
mod order_tests;
#[cfg(test)]
mod tests;

/// What the compiler needs to know about one server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHealth {
    /// Whether it may be answered.
    pub healthy: bool,
    /// When it last became healthy; `None` when unknown or healthy since
    /// before anyone looked (never held down by `failback_delay`).
    pub healthy_since: Option<SystemTime>,
}

/// The health hook of the compiler. It is asked only about servers of
/// probed regions (`health_check.type` other than `none`).
pub trait HealthView {
    /// Health of `server`.
    fn health(&self, server: &ServerRef<'_>) -> ServerHealth;

    /// A manual override of `server` as a member of `domain`. It outranks
    /// every other signal and is asked about every server, probed or not
    /// (`health_check.type: none` included).
    fn overridden(&self, _domain: &DnsName, _server: &ServerRef<'_>) -> Option<ServerHealth> {
        None
    }

    /// The latency EMA of `server` and its sample count (latency policy);
    /// `None` when never measured.
    fn latency(&self, _server: &ServerRef<'_>) -> Option<LatencySample> {
        None
    }

    /// Health of `server` in a region that is not probed
    /// (`health_check.type: none`): healthy unless an agent says otherwise
    /// (see `crate::overwatch`).
    fn unprobed(&self, _server: &ServerRef<'_>) -> ServerHealth {
        ServerHealth::UP
    }

    /// The weight to serve `server` with; `configured` unless predictive
    /// draining lowers it.
    fn weight(&self, _server: &ServerRef<'_>, configured: u32) -> u32 {
        configured
    }

    /// Backends registered at run time (by agents) for `domain`, beyond its
    /// configured servers; a registered address equal to a configured
    /// server's is that server and is skipped.
    fn registered(&self, _domain: &DnsName) -> Vec<Registered> {
        Vec::new()
    }
}

/// A backend an agent registered for a domain (see [`HealthView::registered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Address.
    pub address: IpAddr,
    /// Port.
    pub port: u16,
    /// Weight (after predictive draining).
    pub weight: u32,
    /// Index of the region it counts in (geolocation).
    pub region_index: usize,
    /// That region's name.
    pub region: String,
    /// Its health.
    pub health: ServerHealth,
}

/// The health view that calls every server healthy (since forever).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllHealthy;

/// The compiler, with the state it keeps across compiles: per domain and
/// address family, the last healthy set (`when_all_down: last_healthy`) and
/// the failover servers past their failback hold-down.
#[derive(Debug, Default)]
pub struct Compiler {
    /// Keyed by (domain, record type).
    memory: BTreeMap<(DnsName, u32), FamilyMemory>,
    /// DNSSEC signer (with its signature cache), when signing.
    signer: Option<Signer>,
    /// What the geo range table is compiled from besides the config.
    geo_inputs: GeoInputs,
    /// The table of the last compile, with the config fingerprint and
    /// inputs version it was built from.
    geo: Option<(Vec<u8>, u64, VersionedTable)>,
    /// The last result of `compile_update`, for the next incremental compile.
    base: Option<incremental::Base>,
}

/// The geo range table's inputs other than the config.
#[derive(Debug, Default)]
struct GeoInputs {
    db: Option<Arc<GeoDb>>,
    runtime: Arc<Vec<GeoMappingRow>>,
    /// Bumped on every change.
    version: u64,
}

/// The output of one compile.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The snapshot to publish.
    pub snapshot: Snapshot,
    /// When a failback hold-down expires: the caller recompiles then.
    pub recompile_at: Option<SystemTime>,
    /// Domains whose `when_all_down` fallback is in effect in this compile,
    /// with the mode (`"servfail"`, `"all"` or `"last_healthy"`), once per
    /// domain, in config order.
    pub all_down: Vec<(String, &'static str)>,
    /// The geo range table in the snapshot (the one `/api/v1/geo/test`
    /// answers from).
    pub geo: VersionedTable,
    /// Latency decisions of this compile, per domain and family.
    pub latency: Vec<LatencyReport>,
}

/// What the compiler remembers of one domain's family.
#[derive(Debug, Default, PartialEq)]
struct FamilyMemory {
    /// Addresses of the last non-empty healthy set.
    last_healthy: Vec<IpAddr>,
    /// Failover: servers that were past their hold-down (or served) in the
    /// last compile, with the `healthy_since` they had then. A server keeps
    /// this status while it stays healthy with the same `healthy_since`.
    settled: Vec<Settled>,
}

/// A failover server past its hold-down, with the `healthy_since` it had.
type Settled = (IpAddr, Option<SystemTime>);

/// One server as a domain sees it.
#[derive(Debug)]
struct Member {
    address: IpAddr,
    weight: u32,
    region: u32,
    health: ServerHealth,
    latency: Option<LatencySample>,
}

/// One plan compiled, and what the caller must learn of it.
struct PlanOutcome {
    plan: AnswerPlan,
    /// The `when_all_down` fallback is in effect.
    all_down: bool,
    recompile_at: Option<SystemTime>,
    latency: Option<LatencyReport>,
}

// === impl ServerHealth ===

impl ServerHealth {
    /// Healthy since before anyone looked.
    pub const UP: Self = Self {
        healthy: true,
        healthy_since: None,
    };

    /// Unhealthy.
    pub const DOWN: Self = Self {
        healthy: false,
        healthy_since: None,
    };
}

// === impl AllHealthy ===

impl HealthView for AllHealthy {
    fn health(&self, _: &ServerRef<'_>) -> ServerHealth {
        ServerHealth::UP
    }
}

impl<F: Fn(&ServerRef<'_>) -> ServerHealth> HealthView for F {
    fn health(&self, server: &ServerRef<'_>) -> ServerHealth {
        self(server)
    }
}

// === impl Compiler ===

impl Compiler {
    /// A compiler with no memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A compiler that signs every snapshot with the keys of `dnssec`
    /// (when `overwatch.dnssec.enabled`); see [`crate::dnssec`].
    pub fn with_dnssec(dnssec: Dnssec) -> Self {
        Self {
            signer: Some(Signer::new(dnssec)),
            ..Self::default()
        }
    }

    /// Sets the GeoIP database (`None`: none configured) the geo range
    /// table is compiled from, from the next compile on.
    pub fn set_geo_db(&mut self, db: Option<Arc<GeoDb>>) {
        self.geo_inputs.db = db;
        self.geo_inputs.version += 1;
    }

    /// The GeoIP database in use.
    pub fn geo_db(&self) -> Option<Arc<GeoDb>> {
        self.geo_inputs.db.clone()
    }

    /// The runtime geo mappings in use.
    pub fn geo_mappings(&self) -> Arc<Vec<GeoMappingRow>> {
        self.geo_inputs.runtime.clone()
    }

    /// Sets the runtime geo mappings (the store's), from the next compile on.
    pub fn set_geo_mappings(&mut self, rows: Arc<Vec<GeoMappingRow>>) {
        self.geo_inputs.runtime = rows;
        self.geo_inputs.version += 1;
    }

    /// The geo range table for `cfg`: rebuilt only when the config's geo
    /// part or the inputs changed, and published under a new generation
    /// only when its content did.
    fn geo_table(&mut self, cfg: &Config, generation: u64) -> VersionedTable {
        let key = geo_fingerprint(cfg);
        let version = self.geo_inputs.version;
        if let Some((k, v, t)) = &self.geo {
            if *k == key && *v == version {
                return t.clone();
            }
        }
        let table = RangeTable::build(cfg, self.geo_inputs.db.as_deref(), &self.geo_inputs.runtime);
        let next = VersionedTable::next(self.geo.as_ref().map(|g| &g.2), table, generation);
        self.geo = Some((key, version, next.clone()));
        next
    }

    /// Compiles `cfg` into a snapshot of `generation`, with SOA `serial`.
    ///
    /// `health` is asked about every server whose region is probed; servers
    /// of `none` regions are always healthy. `now` is compared with
    /// `healthy_since` for the failover hold-down. Per domain and family:
    ///
    /// - unhealthy servers leave the candidates (and, for `weighted`,
    ///   servers of weight 0, which are never answered);
    /// - `failover` candidates are in config order (the domain's regions in
    ///   its order, servers in region order), except that a server that
    ///   became healthy less than `failback_delay` ago moves behind the
    ///   servers already serving, until its hold-down ends
    ///   ([`Compiled::recompile_at`]);
    /// - when none is left, `when_all_down` decides: `servfail` leaves the
    ///   plan without candidates, `all` sends every configured server,
    ///   `last_healthy` the last set that was healthy (every server when
    ///   none ever was).
    pub fn compile(
        &mut self,
        cfg: &Config,
        generation: u64,
        serial: u32,
        health: &dyn HealthView,
        now: SystemTime,
    ) -> Compiled {
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
                    nsec3: None,
                }
            })
            .collect();

        let mut nodes = Nodes::default();
        // Most names come from the records and the domains.
        let names =
            cfg.dns.zones.iter().map(|z| z.records.len()).sum::<usize>() + cfg.domains.len();
        nodes.index.reserve(names);
        nodes.list.reserve(names);
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
                let code = rec.rtype.code();
                let at = match node.rrsets.binary_search_by_key(&code, |r| r.rtype) {
                    Ok(at) => at,
                    Err(at) => {
                        node.rrsets.insert(
                            at,
                            RRset {
                                rtype: code,
                                ttl,
                                rdata: Vec::new(),
                                rrsig: Vec::new(),
                            },
                        );
                        at
                    }
                };
                let set = &mut node.rrsets[at];
                set.ttl = set.ttl.min(ttl);
                if !set.rdata.contains(&rdata) {
                    set.rdata.push(rdata);
                }
            }
        }

        let mut recompile_at: Option<SystemTime> = None;
        let mut all_down = Vec::new();
        let mut latency = Vec::new();
        let mut live = HashSet::new();
        for domain in &cfg.domains {
            let Some(zi) = cfg.zone_of(&domain.name) else {
                continue;
            };
            let members = members(cfg, domain, health);
            let mut down = false;
            for (code, v4) in [(rtype::A, true), (rtype::AAAA, false)] {
                let family: Vec<&Member> = members
                    .iter()
                    .filter(|m| m.address.is_ipv4() == v4)
                    .collect();
                if family.is_empty() {
                    continue;
                }
                let key = (domain.name.clone(), code);
                let memory = self.memory.get(&key);
                let (out, next) = plan(cfg, domain, code, &family, memory, now);
                self.memory.insert(key.clone(), next);
                live.insert(key);
                down |= out.all_down;
                recompile_at = earliest(recompile_at, out.recompile_at);
                latency.extend(out.latency);
                nodes.entry(&domain.name, zi).plans.push(out.plan);
            }
            if down {
                all_down.push((domain.name.to_string(), mode_label(domain.when_all_down)));
            }
        }
        // Forget domains and families that left the config.
        self.memory.retain(|k, _| live.contains(k));
        nodes.add_empty_non_terminals(cfg);
        let geo = self.geo_table(cfg, generation);

        let mut snapshot = Snapshot {
            generation,
            origin: cfg.overwatch.identity.node_id.clone(),
            zones,
            nodes: nodes.finish(),
            geo: Some((*geo.proto).clone()),
            options: Some(ServeOptions {
                edns_udp_size: u32::from(cfg.dataplane.edns_udp_size),
                ecs_enabled: cfg.overwatch.geolocation.ecs_enabled,
            }),
        };
        if let Some(signer) = &mut self.signer {
            // Recompile (and so re-sign) before the first signature enters
            // its refresh window.
            let signed = signer.sign(&cfg.overwatch.dnssec, &mut snapshot, now);
            recompile_at = earliest(recompile_at, signed.refresh_at);
        }
        Compiled {
            snapshot,
            recompile_at,
            all_down,
            geo,
            latency,
        }
    }
}

// === functions ===

/// The servers of `domain`, in config order (its regions in its order,
/// servers in region order), deduplicated by address, with their health.
fn members(cfg: &Config, domain: &DomainConfig, health: &dyn HealthView) -> Vec<Member> {
    members_of(
        cfg,
        domain,
        &slots(cfg, domain),
        |ri, si| server_inputs(cfg, ri, si, health),
        health,
    )
}

/// What a compile asks about one configured server, overrides aside:
/// health, weight (after predictive draining), latency.
type ServerInputs = (ServerHealth, u32, Option<LatencySample>);

/// The configured servers of `domain` as (region index, server index):
/// its regions in its order, servers in region order, `service` filter
/// applied, deduplicated by address.
fn slots(cfg: &Config, domain: &DomainConfig) -> Vec<(usize, usize)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for region_name in &domain.regions {
        let Some(ri) = cfg.region_index(region_name) else {
            continue;
        };
        for (si, server) in cfg.regions[ri].servers.iter().enumerate() {
            if server.serves(&domain.name) && seen.insert(server.address) {
                out.push((ri, si));
            }
        }
    }
    out
}

/// The [`ServerInputs`] of server `si` of region `ri`: unprobed regions
/// (`health_check.type: none`) ask [`HealthView::unprobed`], others
/// [`HealthView::health`].
fn server_inputs(cfg: &Config, ri: usize, si: usize, health: &dyn HealthView) -> ServerInputs {
    let region = &cfg.regions[ri];
    let server = &region.servers[si];
    let r = cfg.server_ref(ri, si);
    let h = if region.health_check.kind == HealthCheckType::None {
        health.unprobed(&r)
    } else {
        health.health(&r)
    };
    (h, health.weight(&r, server.weight), health.latency(&r))
}

/// The members of `domain`: its configured servers (`slots`, each with
/// `inputs(region index, server index)`), then the backends registered for
/// it at run time whose address is not already a member; a manual override
/// outranks every other health signal of either. The one walk of a domain's
/// servers, shared by the full and the incremental compile.
fn members_of(
    cfg: &Config,
    domain: &DomainConfig,
    slots: &[(usize, usize)],
    inputs: impl Fn(usize, usize) -> ServerInputs,
    health: &dyn HealthView,
) -> Vec<Member> {
    let mut members = Vec::with_capacity(slots.len());
    for &(ri, si) in slots {
        let (h, weight, latency) = inputs(ri, si);
        let r = cfg.server_ref(ri, si);
        members.push(Member {
            address: r.address,
            weight,
            region: u32::try_from(ri).unwrap_or(u32::MAX),
            health: health.overridden(&domain.name, &r).unwrap_or(h),
            latency,
        });
    }
    let registered = health.registered(&domain.name);
    if registered.is_empty() {
        return members;
    }
    let mut seen: HashSet<IpAddr> = members.iter().map(|m| m.address).collect();
    for r in registered {
        if !seen.insert(r.address) {
            continue;
        }
        let server_ref = ServerRef {
            region_index: r.region_index,
            region: &r.region,
            server_index: usize::MAX,
            address: r.address,
            port: r.port,
        };
        members.push(Member {
            address: r.address,
            weight: r.weight,
            region: u32::try_from(r.region_index).unwrap_or(u32::MAX),
            health: health
                .overridden(&domain.name, &server_ref)
                .unwrap_or(r.health),
            latency: None,
        });
    }
    members
}

/// The plan of `domain` for record type `code` over `family` (its servers of
/// that address family, in config order), and what to remember of it.
fn plan(
    cfg: &Config,
    domain: &DomainConfig,
    code: u32,
    family: &[&Member],
    memory: Option<&FamilyMemory>,
    now: SystemTime,
) -> (PlanOutcome, FamilyMemory) {
    let algorithm = domain.routing_algorithm;
    let policy = match algorithm {
        RoutingAlgorithm::RoundRobin => Policy::RoundRobin,
        RoutingAlgorithm::Weighted => Policy::Weighted,
        RoutingAlgorithm::Failover => Policy::Failover,
        RoutingAlgorithm::Geolocation => Policy::Geolocation,
        RoutingAlgorithm::Latency => Policy::Latency,
    };
    let when_all_down = match domain.when_all_down {
        WhenAllDownConfig::Servfail => WhenAllDown::Servfail,
        WhenAllDownConfig::All => WhenAllDown::All,
        WhenAllDownConfig::LastHealthy => WhenAllDown::LastHealthy,
    };
    let ttl = domain.ttl.unwrap_or(cfg.dns.default_ttl);
    let round_robin = algorithm == RoutingAlgorithm::RoundRobin;
    // Geolocation may draw by weight inside the region.
    let geo_weighted = algorithm == RoutingAlgorithm::Geolocation
        && domain.region_selection == RegionSelection::Weighted;
    let by_weight = algorithm == RoutingAlgorithm::Weighted || geo_weighted;
    // Round-robin and geolocation answer the whole (region's) set by
    // default; drawn by weight, one server.
    let whole_set = round_robin || (algorithm == RoutingAlgorithm::Geolocation && !geo_weighted);
    let max_answers = domain.max_answers.unwrap_or(if whole_set { 0 } else { 1 });
    // A server of weight 0 drawn by weight is never answered: it counts as
    // absent.
    let servable = |m: &&&Member| !by_weight || m.weight > 0;

    let healthy: Vec<&Member> = family
        .iter()
        .filter(servable)
        .filter(|m| m.health.healthy)
        .copied()
        .collect();
    let mut next = FamilyMemory {
        last_healthy: match memory {
            Some(m) if healthy.is_empty() => m.last_healthy.clone(),
            _ => healthy.iter().map(|m| m.address).collect(),
        },
        settled: Vec::new(),
    };
    let mut recompile_at = None;

    let all_down = healthy.is_empty();
    let chosen: Vec<&Member> = if !all_down {
        if algorithm == RoutingAlgorithm::Failover {
            let (order, settled, until) = failover_order(
                &healthy,
                memory,
                domain.failback_delay.get(),
                max_answers,
                now,
            );
            next.settled = settled;
            recompile_at = until;
            order
        } else {
            healthy
        }
    } else {
        let every = || family.iter().filter(servable).copied().collect::<Vec<_>>();
        match domain.when_all_down {
            WhenAllDownConfig::Servfail => Vec::new(),
            WhenAllDownConfig::All => every(),
            WhenAllDownConfig::LastHealthy => {
                let last = memory.map_or(&[][..], |m| m.last_healthy.as_slice());
                let set: Vec<&Member> = family
                    .iter()
                    .filter(servable)
                    .filter(|m| last.contains(&m.address))
                    .copied()
                    .collect();
                if set.is_empty() {
                    every()
                } else {
                    set
                }
            }
        }
    };

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
    let set = |ms: &[&Member]| rrset(ms.iter().map(|m| rdata(m)).collect());
    let one = |ms: &[&Member]| {
        if ms.is_empty() {
            Vec::new()
        } else {
            vec![Candidate {
                rrset: Some(set(ms)),
                weight: 1,
                region: 0,
                geo_fallback: 0,
            }]
        }
    };
    let mut latency = None;
    let candidates = match algorithm {
        RoutingAlgorithm::RoundRobin => one(&chosen),
        // Each region's set, its fallback resolved here; under
        // `when_all_down` fallback every client gets the fallback set.
        RoutingAlgorithm::Geolocation if !all_down => {
            let mut c = routing::geo_candidates(cfg, &chosen, &set, geo_weighted);
            let any: Vec<Candidate> = c
                .iter()
                .filter(|c| c.region == GEO_ANY_REGION)
                .cloned()
                .collect();
            routing::mark_exhausted(&mut c, family, &any);
            c
        }
        RoutingAlgorithm::Geolocation => {
            let mut c = one(&chosen);
            for x in &mut c {
                x.region = GEO_ANY_REGION;
            }
            c
        }
        RoutingAlgorithm::Latency if !all_down => {
            let lc = domain.latency_config.clone().unwrap_or_default();
            let (pick, tie, report) =
                routing::latency_pick(&domain.name.to_string(), &lc, &chosen, max_answers);
            latency = Some(report);
            routing::latency_candidates(&pick, tie, max_answers, &set)
        }
        RoutingAlgorithm::Latency => {
            routing::latency_candidates(&chosen, chosen.len(), max_answers, &set)
        }
        RoutingAlgorithm::Weighted | RoutingAlgorithm::Failover => chosen
            .iter()
            .map(|m| Candidate {
                rrset: Some(rrset(vec![rdata(m)])),
                weight: m.weight,
                region: m.region,
                geo_fallback: 0,
            })
            .collect(),
    };
    let outcome = PlanOutcome {
        plan: AnswerPlan {
            rtype: code,
            policy: policy.into(),
            max_answers,
            candidates,
            when_all_down: when_all_down.into(),
            ecs_max_prefix_v4: u32::from(domain.ecs_max_prefix_v4),
            ecs_max_prefix_v6: u32::from(domain.ecs_max_prefix_v6),
        },
        all_down,
        recompile_at,
        latency,
    };
    (outcome, next)
}

/// Failover order over the healthy servers (config order): servers past
/// their hold-down first, then those still held, each group in config order.
///
/// A server is past its hold-down ("settled") when `delay` is zero, when the
/// compiler has no memory of this family (start-up, a new domain: nothing to
/// fail back from), when its `healthy_since` is unknown or at least `delay`
/// ago, or when it was settled in the last compile with the same
/// `healthy_since` (it stayed healthy since). Servers answered in this
/// compile (the first `max_answers`) become settled too, so the hold-down
/// only ever delays a return, never displaces the server that is serving.
///
/// Returns the order, the settled set to remember, and the earliest end of a
/// hold-down still running.
fn failover_order<'m>(
    healthy: &[&'m Member],
    memory: Option<&FamilyMemory>,
    delay: std::time::Duration,
    max_answers: u32,
    now: SystemTime,
) -> (Vec<&'m Member>, Vec<Settled>, Option<SystemTime>) {
    let hold_ends = |m: &Member| m.health.healthy_since.and_then(|t| t.checked_add(delay));
    let settled = |m: &Member| {
        let Some(mem) = memory else { return true };
        delay.is_zero()
            || hold_ends(m).is_none_or(|end| now >= end)
            || mem.settled.contains(&(m.address, m.health.healthy_since))
    };
    let (mut order, held): (Vec<&Member>, Vec<&Member>) =
        healthy.iter().copied().partition(|m| settled(m));
    order.extend(held);
    let answered = match max_answers {
        0 => order.len(),
        k => order.len().min(k as usize),
    };
    let mut remember = Vec::new();
    let mut until = None;
    for (i, m) in order.iter().enumerate() {
        if i < answered || settled(m) {
            remember.push((m.address, m.health.healthy_since));
        } else {
            until = earliest(until, hold_ends(m));
        }
    }
    (order, remember, until)
}

/// What of `cfg` the geo range table depends on, as bytes to compare.
fn geo_fingerprint(cfg: &Config) -> Vec<u8> {
    let geo = &cfg.overwatch.geolocation;
    let mut s = format!("{:?}\u{1}", geo.default_region);
    for r in &cfg.regions {
        s.push_str(&format!(
            "{}|{:?}|{:?}\u{1}",
            r.name, r.countries, r.continents
        ));
    }
    for m in &geo.custom_mappings {
        s.push_str(&format!("{}|{}\u{1}", m.cidr, m.region));
    }
    s.into_bytes()
}

fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The metric label of a `when_all_down` mode.
fn mode_label(mode: WhenAllDownConfig) -> &'static str {
    match mode {
        WhenAllDownConfig::Servfail => "servfail",
        WhenAllDownConfig::All => "all",
        WhenAllDownConfig::LastHealthy => "last_healthy",
    }
}

/// The nodes of a compile, built in one pass over the config and put in
/// canonical order once at the end: a name is found by hash (no per-record
/// allocation), and the sort is adaptive, so a config whose records are
/// already in zone order sorts in linear time.
#[derive(Default)]
struct Nodes {
    /// Name → index in `list`.
    index: HashMap<Box<str>, usize, BuildHasherDefault<FxHasher>>,
    list: Vec<NodeBuilder>,
}

struct NodeBuilder {
    name: DnsName,
    zone: u32,
    /// Kept sorted by type; a node has a handful at most.
    rrsets: Vec<RRset>,
    plans: Vec<AnswerPlan>,
}

/// A small, fast, non-cryptographic hasher (the multiply-rotate of
/// rustc's FxHash) for the compile's name index: its keys come from the
/// operator's own config, so hash flooding is not a concern there.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

/// RFC 4034 §6.1 canonical order of two names in the config's form
/// (lower-case, no final dot): label by label from the right, each label
/// as an octet string.
pub(crate) fn canonical_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.rsplit('.')
        .map(str::as_bytes)
        .cmp(b.rsplit('.').map(str::as_bytes))
}

// === impl Nodes ===

impl Nodes {
    fn entry(&mut self, name: &DnsName, zone: usize) -> &mut NodeBuilder {
        let i = match self.index.get(name.as_str()) {
            Some(&i) => i,
            None => self.insert(name.clone(), zone),
        };
        &mut self.list[i]
    }

    fn insert(&mut self, name: DnsName, zone: usize) -> usize {
        let i = self.list.len();
        self.index.insert(name.as_str().into(), i);
        self.list.push(NodeBuilder {
            name,
            zone: u32::try_from(zone).unwrap_or(u32::MAX),
            rrsets: Vec::new(),
            plans: Vec::new(),
        });
        i
    }

    /// Adds every name between a node and its zone apex that is not a node.
    /// A walk up stops at the first name that already is a node: its own
    /// ancestors are (or will be) added from it, so each name is visited a
    /// bounded number of times.
    fn add_empty_non_terminals(&mut self, cfg: &Config) {
        for i in 0..self.list.len() {
            let zone = self.list[i].zone;
            let Some(apex) = cfg.dns.zones.get(zone as usize).map(|z| z.name.as_str()) else {
                continue;
            };
            let name = self.list[i].name.as_str();
            // Only names strictly below their apex have names in between.
            let below = name.len() > apex.len()
                && name.ends_with(apex)
                && name.as_bytes()[name.len() - apex.len() - 1] == b'.';
            if !below {
                continue;
            }
            let mut missing = Vec::new();
            let mut cur = name;
            while let Some((_, parent)) = cur.split_once('.') {
                if parent.len() <= apex.len() || self.index.contains_key(parent) {
                    break;
                }
                missing.push(parent.to_owned());
                cur = parent;
            }
            for p in missing {
                // A suffix of a valid name is one.
                if let Ok(p) = DnsName::parse(&p) {
                    self.insert(p, zone as usize);
                }
            }
        }
    }

    fn finish(mut self) -> Vec<Node> {
        drop(self.index);
        self.list
            .sort_by(|a, b| canonical_cmp(a.name.as_str(), b.name.as_str()));
        self.list
            .into_iter()
            .map(|n| Node {
                name: n.name.to_wire(),
                zone: n.zone,
                rrsets: n.rrsets,
                plans: n.plans,
                denial: Vec::new(),
            })
            .collect()
    }
}
