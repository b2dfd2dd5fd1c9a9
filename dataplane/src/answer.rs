//! The answer path: one query in, one reply out, into a caller's buffer.
//!
//! [`answer`] is synchronous and runs once per datagram (or TCP message) on a
//! worker thread. It must never allocate, lock, log, format or panic, and
//! every octet it writes is bounds-checked against the output buffer.
//!
//! Narrative of one query:
//!
//! 1. Fewer than 12 octets, or QR=1: no reply (never answer a response).
//! 2. Opcode other than QUERY: NOTIMP. QDCOUNT≠1 or a malformed question:
//!    FORMERR without a question; a malformed rest of message (answer or
//!    authority records, OPT): FORMERR echoing the question. EDNS version
//!    above 0: BADVERS.
//! 3. Class other than IN/ANY: REFUSED. Meta types: OPT and TSIG FORMERR,
//!    AXFR/IXFR REFUSED, the rest NOTIMP.
//! 4. The header and the question (client's case, uncompressed) are written;
//!    that prefix is what a truncated reply keeps.
//! 5. Resolution: the lower-cased name is looked up once. A miss looks for
//!    the closest enclosing zone: none → REFUSED, else NXDOMAIN with the SOA.
//!    A hit answers the plan or static RRset of the type, or follows a CNAME
//!    (at most [`MAX_CNAME_CHAIN`] hops, never twice to one node), or gives
//!    NODATA with the SOA. Owners are compression pointers: to the question
//!    (offset 12), to a suffix of it, or to a CNAME target written earlier.
//!    A plan answers by its policy on the controlplane's candidates:
//!    round-robin rotates its one candidate's records; weighted draws
//!    `max_answers` distinct candidates by weight with the worker's
//!    generator; failover takes the first `max_answers` (already ordered and
//!    filtered); latency answers its candidates (one per rotation of the tie
//!    group) in turn, each whole; geolocation answers the group of the
//!    client's region, its one set rotated or its servers drawn by weight. Each answered plan counts one routing decision on the
//!    worker's stripe. A plan with nothing to answer is SERVFAIL under
//!    `when_all_down: servfail`, else NODATA (the fallback sets of the other
//!    modes arrive as candidates, so they are empty only when no server is).
//! 6. If any record does not fit the size limit (512 without EDNS, the
//!    negotiated EDNS size, 65535 over TCP), the reply is cut back to the
//!    prefix of step 4 with TC=1: never a partial RRset.
//! 7. OPT is appended when the query had one (room for it is reserved in
//!    step 6), then the header counts and flags are patched in.

use std::{
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use opengslb_proto::{Policy, WhenAllDown};

use crate::ecs::ClientSubnet;
use crate::geo::GeoPlan;
use crate::select::{self, Picks, Rng, MAX_PICKS};
use crate::snapshot::{Candidate, HotSet, Node, NsecOwner, Plan, RRset, Records, Snapshot, Zone};
use crate::wire::{self, flags, rtype, Edns, Header, LabelOffsets, Question, HEADER_LEN};

#[cfg(test)]
mod dnssec_tests;
#[cfg(test)]
mod geo_tests;
#[cfg(test)]
mod hot_tests;
mod nsec3;
#[cfg(test)]
mod nsec3_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
pub(crate) mod tests;

// === constants ===

/// Longest CNAME chain followed inside our zones.
pub const MAX_CNAME_CHAIN: usize = 8;

/// Size of the OPT record we append: root owner, TYPE, CLASS, TTL, RDLENGTH 0.
const OPT_LEN: usize = 11;
/// Largest reply without EDNS (RFC 1035 §4.2.1).
const MIN_UDP: usize = 512;
/// Largest DNS message over TCP (RFC 7766).
const MAX_TCP: usize = 65535;

/// Response codes (RFC 1035 §4.1.1, RFC 6891 §9).
mod rcode {
    pub(super) const NOERROR: u16 = 0;
    pub(super) const FORMERR: u16 = 1;
    pub(super) const SERVFAIL: u16 = 2;
    pub(super) const NXDOMAIN: u16 = 3;
    pub(super) const NOTIMP: u16 = 4;
    pub(super) const REFUSED: u16 = 5;
    pub(super) const BADVERS: u16 = 16;
}

// === types ===

/// How the query arrived: it sets the reply size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: 512 octets without EDNS, else the negotiated size.
    Udp,
    /// TCP (RFC 7766): up to 65535 octets.
    Tcp,
}

/// Per-worker mutable state. One per worker thread (or TCP connection),
/// never shared.
#[derive(Clone, Debug)]
pub struct WorkerState {
    /// Round-robin rotation: advanced once per answered plan.
    rotation: u64,
    /// Weighted draws.
    rng: Rng,
    /// Which stripe of the decision counters this worker writes.
    stripe: usize,
    /// DNS cookies: the secrets, the client and clock of the query, and
    /// whether its server cookie was valid (read by RRL).
    pub cookies: crate::cookie::CookieState,
}

/// The writer ran out of room (the reply will be truncated).
#[derive(Clone, Copy, Debug)]
struct Full;

/// A bounds-checked cursor over the output buffer.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
    limit: usize,
}

/// The reply under construction.
struct Reply<'a> {
    w: Writer<'a>,
    /// Flags copied from the query (opcode, RD, CD) plus QR.
    flags: u16,
    aa: bool,
    tc: bool,
    rcode: u16,
    qdcount: u16,
    /// Offset just past the question: what a truncated reply keeps.
    question_end: usize,
    ancount: u16,
    nscount: u16,
    arcount: u16,
    /// Echo the query's ECS option (RFC 7871) with this SCOPE.
    ecs_scope: Option<u8>,
}

/// Where a name appears uncompressed in the reply, so that later owners can
/// point to it or to one of its suffixes.
#[derive(Clone, Copy)]
struct NameAt<'n> {
    at: usize,
    /// The name, lower-case (used when a pointer cannot reach `at`).
    name: &'n [u8],
}

/// A query answered without records: its RCODE, and what of it parsed.
struct Early {
    /// Whether the question parsed (it is then in the caller's `Question`).
    question: bool,
    edns: Option<Edns>,
    rcode: u16,
}

/// What a node holds for a query type.
enum Data<'s> {
    Plan(&'s Plan),
    Static(&'s RRset),
    /// An unsigned static RRset kept in the node's key block.
    Hot(HotSet<'s>),
}

/// Creation index of the next [`WorkerState`]: spreads workers over the
/// decision-counter stripes.
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

// === impl WorkerState ===

impl WorkerState {
    /// Fresh state, with a generator seeded from the process' random hash
    /// keys and the worker's creation index (distinct per worker).
    pub fn new() -> Self {
        let index = NEXT_WORKER.fetch_add(1, Relaxed);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(index);
        Self {
            rotation: 0,
            rng: Rng::new(h.finish()),
            stripe: index,
            cookies: crate::cookie::CookieState::default(),
        }
    }

    /// Fresh state with a fixed generator seed (tests and benchmarks).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            ..Self::new()
        }
    }
}

impl Default for WorkerState {
    fn default() -> Self {
        Self::new()
    }
}

// === functions ===

/// Answers one query from `snapshot` into `out`. Returns the reply length, or
/// `None` when nothing must be sent (runt message, a response, or an `out`
/// too small for even the header). `out` should hold 65535 octets for TCP and
/// at least 4096 for UDP; the reply never exceeds it.
pub fn answer(
    snapshot: &Snapshot,
    query: &[u8],
    transport: Transport,
    state: &mut WorkerState,
    out: &mut [u8],
) -> Option<usize> {
    let header = Header::parse(query)?;
    if header.is_response() {
        return None;
    }
    let reply_flags = flags::QR | (header.flags & (flags::OPCODE_MASK | flags::RD | flags::CD));
    let our_udp = snapshot.edns_udp_size();

    // On the stack once per query and parsed in place: never moved.
    let mut q = Question::EMPTY;
    let edns = match screen(query, &header, &mut q) {
        Ok(edns) => edns,
        Err(e) => {
            let q = Some(&q).filter(|_| e.question);
            let cookie = state
                .cookies
                .reply(e.edns.as_ref().and_then(|e| e.cookie.as_ref()));
            return error_reply(
                out,
                reply_flags,
                header.id,
                q,
                e.edns,
                our_udp,
                e.rcode,
                cookie,
            );
        }
    };

    let limit = match (transport, edns) {
        (Transport::Tcp, _) => MAX_TCP,
        (Transport::Udp, None) => MIN_UDP,
        (Transport::Udp, Some(e)) => usize::from(e.udp_size)
            .max(MIN_UDP)
            .min(usize::from(our_udp)),
    };
    let mut r = Reply::start(out, limit, reply_flags, header.id, Some(&q))?;
    let prefix = r.w.len;
    // Keep room for OPT (and its COOKIE option) while writing records.
    let cookie = state
        .cookies
        .reply(edns.as_ref().and_then(|e| e.cookie.as_ref()));
    let opt_room = match (edns, cookie) {
        (None, _) => 0,
        (Some(_), None) => OPT_LEN,
        (Some(_), Some(c)) => OPT_LEN + c.len(),
    };
    // ECS is echoed (scope 0 unless a geolocation answer narrows it).
    let ecs = edns.and_then(|e| e.ecs).filter(|_| snapshot.ecs_enabled());
    let opt_room = opt_room + ecs.map_or(0, |e| e.reply_len());
    if ecs.is_some() {
        r.ecs_scope = Some(0);
    }
    r.w.limit = r.w.limit.saturating_sub(opt_room);
    let dnssec_ok = edns.is_some_and(|e| e.dnssec_ok);
    if resolve(snapshot, &q, dnssec_ok, ecs, state, &mut r).is_err() {
        r.truncate(prefix);
        r.tc = true;
    }
    r.w.limit = r.w.limit.saturating_add(opt_room);
    r.finish(edns, our_udp, cookie)
}

/// Steps 2 and 3: the query is parsed (the question into `q`) and
/// checked; `Err` carries the RCODE of a reply without records.
fn screen(query: &[u8], header: &Header, q: &mut Question) -> Result<Option<Edns>, Early> {
    if header.opcode() != 0 {
        let question = q.parse_into(query, header).is_ok();
        let edns = if question {
            wire::parse_edns(query, header, q.end).ok().flatten()
        } else {
            None
        };
        return Err(Early {
            question,
            edns,
            rcode: rcode::NOTIMP,
        });
    }
    if q.parse_into(query, header).is_err() {
        return Err(Early {
            question: false,
            edns: None,
            rcode: rcode::FORMERR,
        });
    }
    let Ok(edns) = wire::parse_edns(query, header, q.end) else {
        return Err(Early {
            question: true,
            edns: None,
            rcode: rcode::FORMERR,
        });
    };
    let early = |rcode| {
        Err(Early {
            question: true,
            edns,
            rcode,
        })
    };
    if edns.is_some_and(|e| e.version > 0) {
        return early(rcode::BADVERS);
    }
    if q.qclass != wire::class::IN && q.qclass != wire::class::ANY {
        return early(rcode::REFUSED);
    }
    match q.qtype {
        rtype::OPT | rtype::TSIG => early(rcode::FORMERR),
        rtype::AXFR | rtype::IXFR => early(rcode::REFUSED),
        128..=249 | rtype::MAILB | rtype::MAILA => early(rcode::NOTIMP),
        _ => Ok(edns),
    }
}

/// A reply with no records: header, the question if it parsed, OPT if the
/// query had a valid one.
#[allow(clippy::too_many_arguments)]
fn error_reply(
    out: &mut [u8],
    reply_flags: u16,
    id: u16,
    q: Option<&Question>,
    edns: Option<Edns>,
    our_udp: u16,
    code: u16,
    cookie: Option<[u8; crate::cookie::OPTION_LEN]>,
) -> Option<usize> {
    let r = Reply::start(out, MIN_UDP, reply_flags, id, q);
    let mut r = match r {
        Some(r) => r,
        // A question that cannot fit is not echoed.
        None => Reply::start(out, MIN_UDP, reply_flags, id, None)?,
    };
    r.rcode = code;
    r.finish(edns, our_udp, cookie)
}

/// Looks the question up and writes the answer and authority sections.
fn resolve(
    snap: &Snapshot,
    q: &Question,
    dnssec_ok: bool,
    ecs: Option<ClientSubnet>,
    state: &mut WorkerState,
    r: &mut Reply<'_>,
) -> Result<(), Full> {
    let qname = q.lower();
    let qname_at = NameAt {
        at: HEADER_LEN,
        name: qname,
    };
    let Some((first, mut node)) = snap.node(qname) else {
        return match snap.closest_zone(qname) {
            None => {
                r.rcode = rcode::REFUSED;
                Ok(())
            }
            Some((_, zone)) => {
                r.aa = true;
                r.rcode = rcode::NXDOMAIN;
                r.put_negative_soa(zone, qname_at, dnssec_ok)?;
                r.put_nxdomain_proof(snap, zone, qname_at, dnssec_ok)
            }
        };
    };
    r.aa = true;
    let mut cur = qname_at;
    let mut visited = [u32::MAX; MAX_CNAME_CHAIN + 1];
    visited[0] = first;
    for hop in 1..=MAX_CNAME_CHAIN + 1 {
        if let Some(data) = find(node, q.qtype) {
            return match data {
                Data::Hot(set) => r.put_hot(cur, set),
                Data::Static(rrset) => r
                    .put_rrset(cur, rrset, 0, rrset.records.len(), dnssec_ok)
                    .map(drop),
                Data::Plan(plan) => {
                    let answered = match plan.geo.as_deref() {
                        Some(g) => r.put_geo(snap, plan, g, cur, dnssec_ok, ecs, state)?,
                        None => r.put_plan(plan, cur, dnssec_ok, state)?,
                    };
                    if answered {
                        snap.count_decision(plan, state.stripe);
                        return Ok(());
                    }
                    match plan.when_all_down {
                        // Fail open: the controlplane sends the fallback set
                        // as candidates, so an empty plan here means no data.
                        WhenAllDown::All | WhenAllDown::LastHealthy => match snap.zone(node.zone) {
                            Some(zone) => {
                                r.put_negative_soa(zone, cur, dnssec_ok)?;
                                r.put_nodata_proof(zone, node, cur, dnssec_ok)
                            }
                            None => Ok(()),
                        },
                        WhenAllDown::Unspecified | WhenAllDown::Servfail => {
                            r.truncate(r.question_end);
                            r.aa = false;
                            r.rcode = rcode::SERVFAIL;
                            Ok(())
                        }
                    }
                }
            };
        }
        let (Some(target), false) = (&node.cname_target, q.qtype == rtype::CNAME) else {
            // NODATA (empty non-terminals included).
            return match snap.zone(node.zone) {
                Some(zone) => {
                    r.put_negative_soa(zone, cur, dnssec_ok)?;
                    r.put_nodata_proof(zone, node, cur, dnssec_ok)
                }
                None => Ok(()),
            };
        };
        let Some(cname) = node.rrsets.iter().find(|s| s.rtype == rtype::CNAME) else {
            return Ok(());
        };
        let target_at = r.put_rrset(cur, cname, 0, 1, dnssec_ok)?;
        let target_at = NameAt {
            at: target_at,
            name: target,
        };
        match snap.node(target) {
            Some((i, next)) => {
                if hop > MAX_CNAME_CHAIN || visited.contains(&i) {
                    // A loop or a long chain: the resolver gets what we have.
                    return Ok(());
                }
                if let Some(v) = visited.get_mut(hop) {
                    *v = i;
                }
                node = next;
                cur = target_at;
            }
            None => {
                // RFC 6604: the RCODE is that of the last name in the chain.
                return match snap.closest_zone(target) {
                    Some((_, zone)) => {
                        r.rcode = rcode::NXDOMAIN;
                        r.put_negative_soa(zone, target_at, dnssec_ok)?;
                        r.put_nxdomain_proof(snap, zone, target_at, dnssec_ok)
                    }
                    // Out of our zones: the resolver follows it.
                    None => Ok(()),
                };
            }
        }
    }
    Ok(())
}

/// The data a node holds for `qtype` (RFC 8482 for ANY: one RRset, the A plan
/// first, else the first static RRset).
fn find(node: &Node, qtype: u16) -> Option<Data<'_>> {
    if qtype == rtype::ANY {
        let plan = node
            .plans
            .iter()
            .find(|p| p.rtype == rtype::A)
            .or_else(|| node.plans.first());
        return match plan {
            Some(p) if p.is_servable() => Some(Data::Plan(p)),
            // The key's RRsets come before `rrsets`.
            _ => match node.key.first() {
                Some(set) => Some(Data::Hot(set)),
                None => node.rrsets.first().map(Data::Static),
            },
        };
    }
    // First the key (the node's first cache line): its RRsets share no
    // type with the plans (the snapshot refuses that) and are never NSEC.
    if let Some(set) = node.key.find(qtype) {
        return Some(Data::Hot(set));
    }
    if let Some(p) = node.plans.iter().find(|p| p.rtype == qtype) {
        return Some(Data::Plan(p));
    }
    if qtype == rtype::NSEC {
        return node.denial.as_deref().map(Data::Static);
    }
    node.rrsets
        .iter()
        .find(|s| s.rtype == qtype)
        .map(Data::Static)
}

/// The NSEC owner that covers `name` in canonical order: the last one
/// sorting before it (the chain wraps, so the last owner covers every name
/// after it). Binary search, no allocation.
fn covering<'z>(owners: &'z [NsecOwner], name: &[u8]) -> Option<&'z NsecOwner> {
    let i = owners.partition_point(|o| wire::canonical_cmp(&o.name, name).is_lt());
    owners.get(i.checked_sub(1)?)
}

/// Candidates one answer of a weighted or failover plan carries:
/// `max_answers` (0 = no limit), at most [`MAX_PICKS`].
fn picks_wanted(max_answers: u32) -> usize {
    match max_answers {
        0 => MAX_PICKS,
        m => (m as usize).min(MAX_PICKS),
    }
}

// === impl Writer ===

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self
            .len
            .checked_add(bytes.len())
            .filter(|&e| e <= self.limit)
            .ok_or(Full)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Full)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn put_u16(&mut self, v: u16) -> Result<(), Full> {
        self.put(&v.to_be_bytes())
    }

    /// Writes the owner: a pointer to the suffix of length `suffix_len` of
    /// the name at `name`, or the suffix itself when no pointer can reach it.
    fn put_owner(&mut self, name: NameAt<'_>, suffix_len: usize) -> Result<(), Full> {
        let skip = name.name.len().saturating_sub(suffix_len);
        let target = name.at + skip;
        if target < 0x4000 {
            self.put_u16(0xC000 | target as u16)
        } else {
            self.put(name.name.get(skip..).ok_or(Full)?)
        }
    }

    fn set_u16(&mut self, at: usize, v: u16) {
        if let Some(b) = self.buf.get_mut(at..at + 2) {
            b.copy_from_slice(&v.to_be_bytes());
        }
    }
}

// === impl Reply ===

impl<'a> Reply<'a> {
    /// Writes a header placeholder and the question (if any).
    fn start(
        out: &'a mut [u8],
        limit: usize,
        flags: u16,
        id: u16,
        q: Option<&Question>,
    ) -> Option<Self> {
        let limit = limit.min(out.len());
        let mut r = Self {
            w: Writer {
                buf: out,
                len: 0,
                limit,
            },
            flags,
            aa: false,
            tc: false,
            rcode: rcode::NOERROR,
            qdcount: 0,
            question_end: HEADER_LEN,
            ancount: 0,
            nscount: 0,
            arcount: 0,
            ecs_scope: None,
        };
        r.w.put(&[0; HEADER_LEN]).ok()?;
        r.w.set_u16(0, id);
        if let Some(q) = q {
            r.w.put(q.name()).ok()?;
            r.w.put_u16(q.qtype).ok()?;
            r.w.put_u16(q.qclass).ok()?;
            r.qdcount = 1;
            r.question_end = r.w.len;
        }
        Some(r)
    }

    /// Drops every record written after `len`.
    fn truncate(&mut self, len: usize) {
        self.w.len = len;
        self.ancount = 0;
        self.nscount = 0;
        self.arcount = 0;
    }

    /// Writes `count` records of `rrset` starting at record `start` (wrapping),
    /// all owned by `owner`, plus the RRSIGs when `dnssec_ok`. Returns the
    /// offset of the first record's RDATA.
    fn put_rrset(
        &mut self,
        owner: NameAt<'_>,
        rrset: &RRset,
        start: usize,
        count: usize,
        dnssec_ok: bool,
    ) -> Result<usize, Full> {
        let first = self.put_records(owner, &rrset.records, start, count)?;
        self.ancount = self.ancount.saturating_add(count as u16);
        // DNSSEC hook: signatures are precomputed by the controlplane; a
        // rotated RRset keeps them valid (validators sort records).
        if dnssec_ok && !rrset.sigs.is_empty() {
            self.put_records(owner, &rrset.sigs, 0, rrset.sigs.len())?;
            self.ancount = self.ancount.saturating_add(rrset.sigs.len() as u16);
        }
        Ok(first)
    }

    /// Writes the records of a key's RRset, all owned by `owner` (what
    /// `put_rrset` writes for the same unsigned RRset).
    fn put_hot(&mut self, owner: NameAt<'_>, set: HotSet<'_>) -> Result<(), Full> {
        for record in set.records() {
            self.w.put_owner(owner, owner.name.len())?;
            self.w.put(record)?;
        }
        self.ancount = self.ancount.saturating_add(set.len() as u16);
        Ok(())
    }

    fn put_records(
        &mut self,
        owner: NameAt<'_>,
        records: &Records,
        start: usize,
        count: usize,
    ) -> Result<usize, Full> {
        let n = records.len();
        let mut first = self.w.len;
        for i in 0..count.min(n) {
            self.w.put_owner(owner, owner.name.len())?;
            if i == 0 {
                first = self.w.len + 10;
            }
            self.w.put(records.get((start + i) % n).ok_or(Full)?)?;
        }
        Ok(first)
    }

    /// Answers `plan` by its policy. `Ok(false)` when it has nothing to
    /// answer (no candidate, or none of positive weight).
    fn put_plan(
        &mut self,
        plan: &Plan,
        owner: NameAt<'_>,
        dnssec_ok: bool,
        state: &mut WorkerState,
    ) -> Result<bool, Full> {
        if !plan.is_servable() {
            return Ok(false);
        }
        // Signed single-record candidates validate one at a time: a DNSSEC
        // client gets one (their union would be an RRset nobody signed).
        let wanted = if dnssec_ok && plan.candidates.iter().any(|c| !c.rrset.sigs.is_empty()) {
            1
        } else {
            picks_wanted(plan.max_answers)
        };
        let picks = match plan.policy {
            Policy::Weighted => select::weighted(&plan.cumulative, wanted, &mut state.rng),
            Policy::Failover => select::first(plan.candidates.len(), wanted),
            // Latency: one candidate per rotation of the tie group, each
            // already cut to `max_answers` and signed as a whole; they
            // answer in turn.
            Policy::Latency => {
                let n = plan.candidates.len() as u64;
                let i = state.rotation.checked_rem(n).unwrap_or(0) as usize;
                state.rotation = state.rotation.wrapping_add(1);
                let Some(c) = plan.candidates.get(i) else {
                    return Ok(false);
                };
                let n = c.rrset.records.len();
                self.put_rrset(owner, &c.rrset, 0, n, dnssec_ok)?;
                return Ok(n > 0);
            }
            Policy::RoundRobin | Policy::Unspecified | Policy::Geolocation => {
                let Some(c) = plan.candidates.first() else {
                    return Ok(false);
                };
                self.put_candidate(plan, c, owner, dnssec_ok, state)?;
                return Ok(true);
            }
        };
        self.put_picks(plan, &picks, owner, dnssec_ok)?;
        Ok(!picks.is_empty())
    }

    /// Answers a geolocation plan: the client's region (the ECS address,
    /// truncated to the plan's privacy cap, when the query has ECS and it
    /// is enabled; else the source address) picks the group: its one set,
    /// rotated like round-robin, or its servers drawn by weight. Sets the
    /// ECS scope (widened over ranges of the same answer class) and counts
    /// the decision.
    #[allow(clippy::too_many_arguments)]
    fn put_geo(
        &mut self,
        snap: &Snapshot,
        plan: &Plan,
        g: &GeoPlan,
        owner: NameAt<'_>,
        dnssec_ok: bool,
        ecs: Option<ClientSubnet>,
        state: &mut WorkerState,
    ) -> Result<bool, Full> {
        // The address looked up and how many of its bits count.
        let (ip, used) = match ecs {
            Some(e) if e.source > 0 => {
                let cap = if e.family == 1 { g.max_v4 } else { g.max_v6 };
                let used = e.source.min(cap);
                (Some(crate::ecs::truncate(e.ip(), used)), used)
            }
            // Source prefix 0: the client asks not to be located; the
            // resolver's address decides and the scope stays 0.
            _ => (state.cookies.client, 0),
        };
        let hit = match (snap.geo(), ip) {
            // The scope only matters when it is sent back.
            (Some(t), Some(ip)) if ecs.is_some() && used > 0 => {
                t.lookup_scoped(ip, |r| g.class_of(r))
            }
            (Some(t), Some(ip)) => t.lookup(ip),
            (Some(t), None) => t.unplaced(),
            (None, _) => crate::geo::GeoHit {
                region: None,
                custom: false,
                scope: 0,
            },
        };
        let (group, reason) = g.pick(hit.region);
        let Some(group) = group else {
            return Ok(false);
        };
        let start = usize::from(group.start);
        let Some(cands) = plan.candidates.get(start..start + usize::from(group.len)) else {
            return Ok(false);
        };
        match cands {
            // The region's set, rotated.
            [c] => {
                if c.rrset.records.is_empty() {
                    return Ok(false);
                }
                self.put_candidate(plan, c, owner, dnssec_ok, state)?;
            }
            // One single-record candidate per server: drawn by weight. A
            // DNSSEC client gets one (each is signed alone).
            _ => {
                let wanted = if dnssec_ok && cands.iter().any(|c| !c.rrset.sigs.is_empty()) {
                    1
                } else {
                    picks_wanted(plan.max_answers)
                };
                let picks = select::weighted(g.cumulative(group), wanted, &mut state.rng);
                if picks.is_empty() {
                    return Ok(false);
                }
                for &i in picks.as_slice() {
                    if let Some(c) = cands.get(i as usize) {
                        self.put_rrset(owner, &c.rrset, 0, c.rrset.records.len(), dnssec_ok)?;
                    }
                }
            }
        }
        if ecs.is_some() {
            self.ecs_scope = Some(hit.scope.min(used));
        }
        snap.count_geo(g, state.stripe, hit, reason);
        Ok(true)
    }

    /// Writes the records of each picked candidate, in pick order.
    fn put_picks(
        &mut self,
        plan: &Plan,
        picks: &Picks,
        owner: NameAt<'_>,
        dnssec_ok: bool,
    ) -> Result<(), Full> {
        for &i in picks.as_slice() {
            if let Some(c) = plan.candidates.get(i as usize) {
                self.put_rrset(owner, &c.rrset, 0, c.rrset.records.len(), dnssec_ok)?;
            }
        }
        Ok(())
    }

    /// Answers a plan's one candidate, rotated by the worker's counter.
    fn put_candidate(
        &mut self,
        plan: &Plan,
        c: &Candidate,
        owner: NameAt<'_>,
        dnssec_ok: bool,
        state: &mut WorkerState,
    ) -> Result<(), Full> {
        let n = c.rrset.records.len();
        let count = match plan.max_answers {
            // The RRSIG covers the whole RRset: a DNSSEC client gets all of it.
            _ if dnssec_ok && !c.rrset.sigs.is_empty() => n,
            0 => n,
            m => n.min(m as usize),
        };
        let start = state.rotation.checked_rem(n as u64).unwrap_or(0) as usize;
        state.rotation = state.rotation.wrapping_add(1);
        self.put_rrset(owner, &c.rrset, start, count, dnssec_ok)
            .map(drop)
    }

    /// SOA of `zone` in the authority section, TTL = negative TTL; its owner
    /// points at the apex suffix of `name`.
    fn put_negative_soa(
        &mut self,
        zone: &Zone,
        name: NameAt<'_>,
        dnssec_ok: bool,
    ) -> Result<(), Full> {
        let sigs = if dnssec_ok {
            zone.soa_negative_sigs.len()
        } else {
            0
        };
        let soa = zone.soa_negative.len();
        for (records, count) in [(&zone.soa_negative, soa), (&zone.soa_negative_sigs, sigs)] {
            for i in 0..count {
                self.w.put_owner(name, zone.apex.len())?;
                self.w.put(records.get(i).ok_or(Full)?)?;
                self.nscount = self.nscount.saturating_add(1);
            }
        }
        Ok(())
    }

    /// DNSSEC, NODATA: the NSEC of the node (its type bitmap lacks the
    /// query type) with its RRSIGs, in the authority section.
    fn put_nodata_proof(
        &mut self,
        zone: &Zone,
        node: &Node,
        owner: NameAt<'_>,
        dnssec_ok: bool,
    ) -> Result<(), Full> {
        if let (Some(chain), true) = (&zone.nsec3, dnssec_ok) {
            return self.put_nsec3_nodata(chain, zone, owner);
        }
        match &node.denial {
            Some(nsec) if dnssec_ok => self.put_authority(owner, nsec),
            _ => Ok(()),
        }
    }

    /// DNSSEC, NXDOMAIN (RFC 4035 §3.1.3.2): the NSEC covering `name`, and
    /// the NSEC covering the wildcard at its closest encloser (the longest
    /// existing ancestor) when that is another one, each with its RRSIGs.
    fn put_nxdomain_proof(
        &mut self,
        snap: &Snapshot,
        zone: &Zone,
        name: NameAt<'_>,
        dnssec_ok: bool,
    ) -> Result<(), Full> {
        if let (Some(chain), true) = (&zone.nsec3, dnssec_ok) {
            return self.put_nsec3_nxdomain(snap, chain, zone, name);
        }
        if !dnssec_ok || zone.nsec_owners.is_empty() {
            return Ok(());
        }
        let owners = &zone.nsec_owners;
        let Some(cover) = covering(owners, name.name) else {
            return Ok(());
        };
        self.put_nsec_of(snap, cover, name)?;
        // `*.` + closest encloser, on the stack (at most 255 octets).
        let mut wildcard = [0u8; wire::MAX_NAME_LEN];
        let encloser = LabelOffsets::new(name.name)
            .skip(1)
            .filter_map(|at| name.name.get(at..))
            .find(|suffix| snap.node(suffix).is_some());
        let Some(encloser) = encloser else {
            return Ok(());
        };
        let len = encloser.len() + 2;
        let Some(slot) = wildcard.get_mut(..len) else {
            return Ok(());
        };
        slot[0] = 1;
        slot[1] = b'*';
        slot[2..].copy_from_slice(encloser);
        match covering(owners, slot) {
            Some(w) if !std::ptr::eq(w, cover) => self.put_nsec_of(snap, w, name),
            _ => Ok(()),
        }
    }

    /// The NSEC RRset of `owner` in the authority section; its owner name
    /// points into `name` when it is a suffix of it, else is written out.
    fn put_nsec_of(
        &mut self,
        snap: &Snapshot,
        owner: &NsecOwner,
        name: NameAt<'_>,
    ) -> Result<(), Full> {
        let Some(nsec) = snap.node_at(owner.node).and_then(|n| n.denial.as_deref()) else {
            return Ok(());
        };
        let at = LabelOffsets::new(name.name)
            .find(|&at| name.name.get(at..) == Some(&owner.name[..]))
            .map(|at| NameAt {
                at: name.at + at,
                name: &owner.name,
            });
        // Beyond 0x3FFF no pointer can reach: `put_owner` writes the name.
        let at = at.unwrap_or(NameAt {
            at: 0x4000,
            name: &owner.name,
        });
        self.put_authority(at, nsec)
    }

    /// An RRset and its RRSIGs in the authority section.
    fn put_authority(&mut self, owner: NameAt<'_>, set: &RRset) -> Result<(), Full> {
        self.put_records(owner, &set.records, 0, set.records.len())?;
        self.put_records(owner, &set.sigs, 0, set.sigs.len())?;
        let n = set.records.len() + set.sigs.len();
        self.nscount = self.nscount.saturating_add(n as u16);
        Ok(())
    }

    /// Appends OPT when the query had one (with `cookie`, the COOKIE
    /// option, as its RDATA), patches the header, returns the length.
    fn finish(
        mut self,
        edns: Option<Edns>,
        our_udp: u16,
        cookie: Option<[u8; crate::cookie::OPTION_LEN]>,
    ) -> Option<usize> {
        let ext = self.rcode >> 4;
        if let Some(e) = edns {
            let ttl = (u32::from(ext) << 24) | if e.dnssec_ok { 0x8000 } else { 0 };
            let rdata: &[u8] = cookie.as_ref().map_or(&[], |c| &c[..]);
            let mut ecs_buf = [0u8; crate::ecs::MAX_OPTION_LEN];
            let ecs_len = match (self.ecs_scope, e.ecs) {
                (Some(scope), Some(c)) => c.reply_option(scope, &mut ecs_buf),
                _ => 0,
            };
            let ecs = ecs_buf.get(..ecs_len).unwrap_or(&[]);
            let mut opt = [0u8; OPT_LEN];
            opt[1..3].copy_from_slice(&rtype::OPT.to_be_bytes());
            opt[3..5].copy_from_slice(&our_udp.to_be_bytes());
            opt[5..9].copy_from_slice(&ttl.to_be_bytes());
            opt[9..11].copy_from_slice(&((rdata.len() + ecs.len()) as u16).to_be_bytes());
            let put_opt = |w: &mut Writer<'_>| {
                w.put(&opt)
                    .and_then(|()| w.put(rdata))
                    .and_then(|()| w.put(ecs))
            };
            if put_opt(&mut self.w).is_err() {
                // Not even OPT fits: drop records, keep the question.
                self.truncate(self.question_end);
                self.tc = true;
                put_opt(&mut self.w).ok()?;
            }
            self.arcount = self.arcount.saturating_add(1);
        }
        let mut f = self.flags | (self.rcode & flags::RCODE_MASK);
        if self.aa {
            f |= flags::AA;
        }
        if self.tc {
            f |= flags::TC;
        }
        self.w.set_u16(2, f);
        self.w.set_u16(4, self.qdcount);
        self.w.set_u16(6, self.ancount);
        self.w.set_u16(8, self.nscount);
        self.w.set_u16(10, self.arcount);
        Some(self.w.len)
    }
}
