//! The incremental compile (issue 6: "only changed RRsets are re-signed on
//! a health change"): after a health, agent or override change, only the
//! answer plans of the domains whose servers changed are compiled and signed
//! again, and the change leaves as a `SnapshotDelta` (those nodes and the
//! zones, whose SOA serial moved), not as a whole snapshot.
//!
//! [`Compiler::compile_update`] keeps the last snapshot and, per domain, the
//! inputs its plans were compiled from (its member servers with their
//! health, weight, region and latency). On the next call it compiles in
//! full (and remembers the result) when anything beyond health changed: a
//! new `Arc<Config>` (every reload), another geo input, another DNSSEC
//! keyring (a rollover or a key sync), a signature due for refresh, or a
//! change in the record types of a name (its NSEC bitmap would change).
//! Otherwise it re-plans only the domains whose inputs differ, plus those
//! with a failback hold-down running (their plan depends on the time),
//! signs the changed candidate RRsets through the signature cache, signs
//! the new SOA, and patches its kept snapshot in place.
//!
//! Invariant (tested): the snapshot an incremental compile leaves equals
//! the one a full compile of the same inputs gives, RRSIGs included when
//! signatures are deterministic (Ed25519) and the time is the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use opengslb_proto::{AnswerPlan, RRset, Snapshot, SnapshotDelta};

use super::{
    earliest, members_of, mode_label, plan, server_inputs, slots, wire, Compiler, FamilyMemory,
    HealthView, LatencyReport, Member, ServerInputs,
};
use crate::config::{Config, RoutingAlgorithm};
use crate::dnssec::Keyring;
use crate::geo::VersionedTable;

/// What [`Compiler::compile_update`] publishes.
#[derive(Debug, Clone)]
pub enum Published {
    /// A whole snapshot (a full compile).
    Full(Snapshot),
    /// The change from the previous result (an incremental compile).
    Delta(SnapshotDelta),
}

/// The output of [`Compiler::compile_update`]: what [`super::Compiled`]
/// says, with the snapshot whole or as a delta.
#[derive(Debug, Clone)]
pub struct Update {
    /// The snapshot or the delta to publish.
    pub published: Published,
    /// When a failback hold-down expires or signatures need refreshing.
    pub recompile_at: Option<SystemTime>,
    /// Domains whose `when_all_down` fallback is in effect, in config order.
    pub all_down: Vec<(String, &'static str)>,
    /// The geo range table in force.
    pub geo: VersionedTable,
    /// Latency decisions, per domain and family.
    pub latency: Vec<LatencyReport>,
    /// Domains compiled again (all of them after a full compile).
    pub replanned: usize,
}

/// What the compiler keeps of its last result.
#[derive(Debug)]
pub(super) struct Base {
    cfg: Arc<Config>,
    geo_version: u64,
    keyring: Option<Arc<Keyring>>,
    /// Signatures must be refreshed from then on: compile in full.
    full_at: Option<SystemTime>,
    snapshot: Snapshot,
    geo: VersionedTable,
    domains: Vec<DomainMemo>,
}

/// One domain (by its index in `Config::domains`).
#[derive(Debug)]
struct DomainMemo {
    /// Its node in `Base::snapshot` and its zone; `None` when it lies in no zone.
    node: Option<(usize, usize)>,
    /// Its configured servers, as `members` walks them: config order,
    /// deduplicated by address, `service` filter applied.
    slots: Vec<(usize, usize)>,
    members: Vec<Member>,
    all_down: bool,
    /// When a failback hold-down running ends.
    recompile_at: Option<SystemTime>,
    /// Re-plan at the next compile even with the same members: a hold-down
    /// runs, or the last plan changed what the compiler remembers (a
    /// failover server answered while held is settled from then on, which
    /// can reorder the next plan).
    replan: bool,
    latency: Vec<LatencyReport>,
}

/// Per region and server: health (override aside), weight, latency.
type ServerTable = Vec<Vec<ServerInputs>>;

/// A re-planned domain, before it is committed.
struct Replanned {
    domain: usize,
    members: Vec<Member>,
    plans: Vec<AnswerPlan>,
    memory: Vec<((crate::config::DnsName, u32), FamilyMemory)>,
    all_down: bool,
    recompile_at: Option<SystemTime>,
    changed_memory: bool,
    latency: Vec<LatencyReport>,
}

// === impl Compiler ===

impl Compiler {
    /// [`Compiler::compile`], incrementally when it can be: the same `cfg`
    /// (the same `Arc`) as the last call, and nothing but health changed.
    /// Returns the whole snapshot or the delta from the last result.
    pub fn compile_update(
        &mut self,
        cfg: &Arc<Config>,
        generation: u64,
        serial: u32,
        health: &dyn HealthView,
        now: SystemTime,
    ) -> Update {
        if let Some(u) = self.try_incremental(cfg, generation, serial, health, now) {
            return u;
        }
        let compiled = self.compile(cfg, generation, serial, health, now);
        self.remember(cfg, &compiled, health, now);
        Update {
            replanned: cfg.domains.len(),
            published: Published::Full(compiled.snapshot),
            recompile_at: compiled.recompile_at,
            all_down: compiled.all_down,
            geo: compiled.geo,
            latency: compiled.latency,
        }
    }

    /// The snapshot of the last [`Compiler::compile_update`] (tests, bench).
    pub fn last_snapshot(&self) -> Option<&Snapshot> {
        self.base.as_ref().map(|b| &b.snapshot)
    }

    /// Keeps the snapshot of `compiled` and each domain's inputs for the
    /// next call.
    fn remember(
        &mut self,
        cfg: &Arc<Config>,
        compiled: &super::Compiled,
        health: &dyn HealthView,
        now: SystemTime,
    ) {
        let snapshot = &compiled.snapshot;
        let positions = Positions::new(&snapshot.nodes);
        let table = server_table(cfg, health);
        let down: std::collections::HashSet<&str> =
            compiled.all_down.iter().map(|(d, _)| d.as_str()).collect();
        let mut latency: HashMap<&str, Vec<LatencyReport>> = HashMap::new();
        for r in &compiled.latency {
            latency
                .entry(r.domain.as_str())
                .or_default()
                .push(r.clone());
        }
        let mut domains = Vec::with_capacity(cfg.domains.len());
        for domain in &cfg.domains {
            let node = cfg
                .zone_of(&domain.name)
                .and_then(|zi| positions.find(&domain.name.to_wire()).map(|i| (i, zi)));
            let slots = slots(cfg, domain);
            let members = members_fast(cfg, domain, &slots, &table, health);
            // Failover: would planning again change the plan? (Others
            // plan the same from the same members.)
            let (recompile_at, replan) = if domain.routing_algorithm == RoutingAlgorithm::Failover {
                let at = failback_end(domain, &members, now);
                (
                    at,
                    at.is_some() || !self.at_fixpoint(cfg, domain, &members, now),
                )
            } else {
                (None, false)
            };
            let name = domain.name.to_string();
            domains.push(DomainMemo {
                node,
                slots,
                members,
                all_down: down.contains(name.as_str()),
                recompile_at,
                replan,
                latency: latency.remove(name.as_str()).unwrap_or_default(),
            });
        }
        let keyring = self.signer.as_ref().map(|s| s.dnssec().keyring());
        let full_at = self.signer.as_ref().and_then(|s| {
            let sec = &cfg.overwatch.dnssec;
            (sec.enabled && s.dnssec().enabled()).then_some(())?;
            let expiry = s.dnssec().stats().next_expiry_unix?;
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(expiry);
            Some(
                at.checked_sub(sec.refresh_before.get())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
        });
        self.base = Some(Base {
            cfg: cfg.clone(),
            geo_version: self.geo_inputs.version,
            keyring,
            full_at,
            snapshot: snapshot.clone(),
            geo: compiled.geo.clone(),
            domains,
        });
    }

    /// Whether planning `domain` again over `members` leaves the compiler's
    /// memory of it as it is (then the plan is the same too).
    fn at_fixpoint(
        &self,
        cfg: &Config,
        domain: &crate::config::DomainConfig,
        members: &[Member],
        now: SystemTime,
    ) -> bool {
        [
            (opengslb_proto::rtype::A, true),
            (opengslb_proto::rtype::AAAA, false),
        ]
        .into_iter()
        .all(|(code, v4)| {
            let family: Vec<&Member> = members
                .iter()
                .filter(|m| m.address.is_ipv4() == v4)
                .collect();
            if family.is_empty() {
                return true;
            }
            let used = self.memory.get(&(domain.name.clone(), code));
            let (_, next) = plan(cfg, domain, code, &family, used, now);
            used == Some(&next)
        })
    }

    /// The incremental compile, or `None` when a full one is needed
    /// (nothing is changed then).
    fn try_incremental(
        &mut self,
        cfg: &Arc<Config>,
        generation: u64,
        serial: u32,
        health: &dyn HealthView,
        now: SystemTime,
    ) -> Option<Update> {
        let base = self.base.as_ref()?;
        let keyring = self.signer.as_ref().map(|s| s.dnssec().keyring());
        let same_keys = match (&base.keyring, &keyring) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !Arc::ptr_eq(&base.cfg, cfg)
            || base.geo_version != self.geo_inputs.version
            || !same_keys
            || base.full_at.is_some_and(|t| now >= t)
            || generation <= base.snapshot.generation
        {
            return None;
        }
        let sec = &cfg.overwatch.dnssec;
        let signing = self
            .signer
            .as_ref()
            .is_some_and(|s| sec.enabled && s.dnssec().enabled());
        let table = server_table(cfg, health);

        // Re-plan the domains whose inputs changed (nothing is kept yet).
        let mut replanned = Vec::new();
        for (di, (domain, memo)) in cfg.domains.iter().zip(&base.domains).enumerate() {
            let Some((node, _)) = memo.node else {
                continue;
            };
            let members = members_fast(cfg, domain, &memo.slots, &table, health);
            if !memo.replan && same_members(&members, &memo.members) {
                continue;
            }
            let mut r = Replanned {
                domain: di,
                members,
                plans: Vec::new(),
                memory: Vec::new(),
                all_down: false,
                recompile_at: None,
                changed_memory: false,
                latency: Vec::new(),
            };
            for (code, v4) in [
                (opengslb_proto::rtype::A, true),
                (opengslb_proto::rtype::AAAA, false),
            ] {
                let family: Vec<&Member> = r
                    .members
                    .iter()
                    .filter(|m| m.address.is_ipv4() == v4)
                    .collect();
                if family.is_empty() {
                    continue;
                }
                let key = (domain.name.clone(), code);
                let used = self.memory.get(&key);
                let (out, next) = plan(cfg, domain, code, &family, used, now);
                r.changed_memory |= used != Some(&next);
                r.all_down |= out.all_down;
                r.recompile_at = earliest(r.recompile_at, out.recompile_at);
                r.latency.extend(out.latency);
                r.plans.push(out.plan);
                r.memory.push((key, next));
            }
            // Another set of record types changes the NSEC bitmap.
            let old = &base.snapshot.nodes[node].plans;
            if old.len() != r.plans.len()
                || old.iter().zip(&r.plans).any(|(a, b)| a.rtype != b.rtype)
            {
                return None;
            }
            replanned.push(r);
        }

        // Sign the new candidates (cache first) and the new SOAs.
        let started = std::time::Instant::now();
        let mut made: Vec<(Vec<u8>, usize)> = Vec::new();
        let default_ttl = cfg.dns.default_ttl;
        let mut zones = base.snapshot.zones.clone();
        for (zi, z) in cfg.dns.zones.iter().enumerate() {
            let soa = z.soa(default_ttl);
            let slot = zones.get_mut(zi)?;
            let mut set = RRset {
                rtype: opengslb_proto::rtype::SOA,
                ttl: soa.ttl,
                rdata: vec![wire::soa(&soa, serial)],
                rrsig: Vec::new(),
            };
            if signing {
                let signer = self.signer.as_mut()?;
                let apex = slot.apex.clone();
                let n = signer.sign_rrsets(sec, &apex, &apex, &mut [&mut set], now)?;
                made.push((apex, n));
            }
            slot.soa = Some(set);
        }
        let base = self.base.as_ref()?;
        let mut signed_nodes: Vec<(usize, Vec<AnswerPlan>)> = Vec::with_capacity(replanned.len());
        for r in &mut replanned {
            let Some((node, zi)) = base.domains[r.domain].node else {
                continue;
            };
            let mut plans = std::mem::take(&mut r.plans);
            if signing {
                let apex = base.snapshot.zones.get(zi)?.apex.clone();
                let owner = base.snapshot.nodes[node].name.clone();
                let mut sets: Vec<&mut RRset> = plans
                    .iter_mut()
                    .flat_map(|p| {
                        let t = p.rtype;
                        p.candidates.iter_mut().filter_map(move |c| {
                            let s = c.rrset.as_mut().filter(|s| !s.rdata.is_empty())?;
                            if s.rtype == 0 {
                                s.rtype = t;
                            }
                            Some(s)
                        })
                    })
                    .collect();
                let n = self
                    .signer
                    .as_mut()?
                    .sign_rrsets(sec, &apex, &owner, &mut sets, now)?;
                if let Some(m) = made.iter_mut().find(|(a, _)| *a == apex) {
                    m.1 += n;
                }
            }
            signed_nodes.push((node, plans));
        }

        if let Some(signer) = self.signer.as_ref().filter(|_| signing) {
            let prev = signer.dnssec().stats();
            signer.dnssec().record(crate::dnssec::SigningStats {
                signed_last: made.iter().map(|(_, n)| n).sum(),
                signing_micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                zone_signed: made,
                ..prev
            });
        }

        // Commit.
        let base = self.base.as_mut()?;
        let old_generation = base.snapshot.generation;
        base.snapshot.generation = generation;
        base.snapshot.zones = zones.clone();
        let mut upsert = Vec::with_capacity(signed_nodes.len());
        for (node, plans) in signed_nodes {
            let n = &mut base.snapshot.nodes[node];
            if n.plans != plans {
                n.plans = plans;
                upsert.push(n.clone());
            }
        }
        let count = replanned.len();
        for r in replanned {
            for (k, m) in r.memory {
                self.memory.insert(k, m);
            }
            let memo = &mut base.domains[r.domain];
            memo.members = r.members;
            memo.all_down = r.all_down;
            memo.recompile_at = r.recompile_at;
            memo.replan = r.recompile_at.is_some() || r.changed_memory;
            memo.latency = r.latency;
        }
        let mut recompile_at = base.full_at;
        let mut all_down = Vec::new();
        let mut latency = Vec::new();
        for (domain, memo) in cfg.domains.iter().zip(&base.domains) {
            if memo.all_down {
                all_down.push((domain.name.to_string(), mode_label(domain.when_all_down)));
            }
            latency.extend(memo.latency.iter().cloned());
            recompile_at = earliest(recompile_at, memo.recompile_at);
        }
        Some(Update {
            published: Published::Delta(SnapshotDelta {
                base_generation: old_generation,
                generation,
                zones,
                upsert_nodes: upsert,
                remove_nodes: Vec::new(),
                geo: None,
                options: None,
            }),
            recompile_at,
            all_down,
            geo: base.geo.clone(),
            latency,
            replanned: count,
        })
    }
}

/// Finds nodes by name in a snapshot: by binary search, nodes being in
/// canonical order (the compiler's invariant), with a hash index built only
/// if a name is missed that way.
struct Positions<'s> {
    nodes: &'s [opengslb_proto::Node],
    fallback: std::cell::OnceCell<HashMap<&'s [u8], usize>>,
}

impl<'s> Positions<'s> {
    fn new(nodes: &'s [opengslb_proto::Node]) -> Self {
        Self {
            nodes,
            fallback: std::cell::OnceCell::new(),
        }
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        if let Ok(i) = self
            .nodes
            .binary_search_by(|n| wire::canonical_cmp(&n.name, name))
        {
            return Some(i);
        }
        self.fallback
            .get_or_init(|| {
                self.nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.name.as_slice(), i))
                    .collect()
            })
            .get(name)
            .copied()
    }
}

// === functions ===

/// The end of the earliest failback hold-down still running among
/// `members` (failover domains).
fn failback_end(
    domain: &crate::config::DomainConfig,
    members: &[Member],
    now: SystemTime,
) -> Option<SystemTime> {
    let delay = domain.failback_delay.get();
    members
        .iter()
        .filter_map(|m| m.health.healthy_since.and_then(|t| t.checked_add(delay)))
        .filter(|&end| end > now)
        .min()
}

/// Health (override aside), weight and latency of every configured server,
/// asked once per compile rather than once per domain.
fn server_table(cfg: &Config, health: &dyn HealthView) -> ServerTable {
    cfg.regions
        .iter()
        .enumerate()
        .map(|(ri, region)| {
            (0..region.servers.len())
                .map(|si| server_inputs(cfg, ri, si, health))
                .collect()
        })
        .collect()
}

/// [`members_of`], with the server inputs from the table.
fn members_fast(
    cfg: &Config,
    domain: &crate::config::DomainConfig,
    slots: &[(usize, usize)],
    table: &ServerTable,
    health: &dyn HealthView,
) -> Vec<Member> {
    members_of(cfg, domain, slots, |ri, si| table[ri][si], health)
}

fn same_members(a: &[Member], b: &[Member]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.address == y.address
                && x.weight == y.weight
                && x.region == y.region
                && x.health == y.health
                && x.latency == y.latency
        })
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
