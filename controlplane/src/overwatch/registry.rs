//! The agents this controlplane hears from: sessions, sequence numbers,
//! last-seen times, staleness and the backends each one reports.
//!
//! Invariants: only [`Registry::register`] creates an agent (after the
//! token and pin checks of the service); a heartbeat changes state only when
//! its session is live, it arrives over the agent's pinned certificate and
//! its sequence is above the last one; a backend a heartbeat names that the
//! agent did not register is refused, never added. Times are
//! `tokio::time::Instant`, so paused-time tests drive staleness.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

/// Bounds on what one agent may register.
pub const MAX_BACKENDS_PER_AGENT: usize = 1024;

/// What an agent claims about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Registered, no heartbeat about it yet: not served.
    Unknown,
    /// The agent's check passes.
    Healthy,
    /// The agent's check fails.
    Unhealthy,
}

/// The validation check an agent declared for a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    /// `http`, `https`, `tcp` or `none`.
    pub kind: String,
    /// HTTP path.
    pub path: String,
    /// HTTP Host header.
    pub host: String,
}

/// One backend as reported by one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    /// Domain (lower-case, no final dot).
    pub service: String,
    /// Address and port.
    pub addr: SocketAddr,
    /// Configured weight.
    pub weight: u32,
    /// How the controlplane may validate it.
    pub check: Option<CheckSpec>,
    /// The agent's claim.
    pub claim: Claim,
    /// Share of the weight to serve, per mille (predictive draining).
    pub permille: u32,
    /// The agent's reason for its claim.
    pub reason: String,
    /// When the claim last changed.
    pub changed_at: SystemTime,
}

/// One agent heard from.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Fingerprint of the pinned certificate it connects with.
    pub fingerprint: String,
    session: u64,
    last_seq: u64,
    /// Last register or accepted heartbeat.
    pub last_seen: Instant,
    /// No heartbeat for this long: stale.
    pub stale_after: Duration,
    /// Since when it is stale.
    pub stale_since: Option<Instant>,
    /// Its backends, by (service, address).
    pub backends: BTreeMap<(String, SocketAddr), Reported>,
}

/// Why a heartbeat (or part of it) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The session is unknown (never opened, deregistered, revoked, removed).
    #[error("unknown session")]
    Session,
    /// The session belongs to another certificate.
    #[error("session belongs to another certificate")]
    Certificate,
    /// The sequence number is not above the last one.
    #[error("replayed or out-of-order sequence number")]
    Replay,
}

/// The result of an accepted heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Something that decides answers changed.
    pub changed: bool,
    /// Backends named that the agent never registered (refused).
    pub unknown: usize,
}

/// One backend update of a heartbeat.
#[derive(Debug, Clone)]
pub struct Update {
    /// Service.
    pub service: String,
    /// Address and port.
    pub addr: SocketAddr,
    /// Claim.
    pub claim: Claim,
    /// Weight share, per mille (clamped to 1000).
    pub permille: u32,
    /// Reason.
    pub reason: String,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Agents that became stale.
    pub stale: Vec<String>,
    /// Agents removed (stale for `remove_after`).
    pub removed: Vec<String>,
}

/// Every agent heard from.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    agents: HashMap<String, Agent>,
    sessions: HashMap<u64, String>,
    next_session: u64,
}

// === impl Registry ===

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// No agents.
    pub fn new() -> Self {
        // Sessions start at a random point so one from a previous run of
        // this controlplane is unknown, not someone else's.
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            inner: Mutex::new(Inner {
                agents: HashMap::new(),
                sessions: HashMap::new(),
                next_session: seed | 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers (or re-registers) an agent whose token and certificate were
    /// accepted; its backends start with claim `Unknown`, keeping the claim
    /// of a backend it registered before. Returns the new session; an older
    /// session of the same agent ends.
    pub fn register(
        &self,
        id: &str,
        region: &str,
        fingerprint: &str,
        backends: Vec<Reported>,
        stale_after: Duration,
        now: Instant,
    ) -> u64 {
        let mut inner = self.lock();
        let session = inner.next_session;
        inner.next_session = inner.next_session.wrapping_add(0x9E37_79B9_7F4A_7C15) | 1;
        let old = inner.agents.remove(id);
        if let Some(old) = &old {
            inner.sessions.remove(&old.session);
        }
        let mut map = BTreeMap::new();
        for mut b in backends.into_iter().take(MAX_BACKENDS_PER_AGENT) {
            let key = (b.service.clone(), b.addr);
            if let Some(prev) = old.as_ref().and_then(|o| o.backends.get(&key)) {
                b.claim = prev.claim;
                b.permille = prev.permille;
                b.reason.clone_from(&prev.reason);
                b.changed_at = prev.changed_at;
            }
            map.insert(key, b);
        }
        inner.sessions.insert(session, id.to_owned());
        inner.agents.insert(
            id.to_owned(),
            Agent {
                id: id.to_owned(),
                region: region.to_owned(),
                fingerprint: fingerprint.to_owned(),
                session,
                last_seq: 0,
                last_seen: now,
                stale_after,
                stale_since: None,
                backends: map,
            },
        );
        session
    }

    /// Applies one heartbeat of `session` arriving over a connection with
    /// certificate `fingerprint`.
    pub fn heartbeat(
        &self,
        session: u64,
        fingerprint: &str,
        sequence: u64,
        updates: &[Update],
        now: Instant,
    ) -> Result<Applied, Refused> {
        let mut inner = self.lock();
        let id = inner
            .sessions
            .get(&session)
            .cloned()
            .ok_or(Refused::Session)?;
        let agent = inner.agents.get_mut(&id).ok_or(Refused::Session)?;
        if agent.fingerprint != fingerprint {
            return Err(Refused::Certificate);
        }
        if sequence <= agent.last_seq {
            return Err(Refused::Replay);
        }
        agent.last_seq = sequence;
        agent.last_seen = now;
        let mut applied = Applied {
            changed: agent.stale_since.take().is_some(),
            unknown: 0,
        };
        for u in updates {
            let Some(b) = agent.backends.get_mut(&(u.service.clone(), u.addr)) else {
                applied.unknown += 1;
                continue;
            };
            let permille = u.permille.min(1000);
            if b.claim != u.claim || b.permille != permille {
                if b.claim != u.claim {
                    b.changed_at = SystemTime::now();
                }
                b.claim = u.claim;
                b.permille = permille;
                applied.changed = true;
            }
            if b.reason != u.reason {
                b.reason = u.reason.chars().take(256).collect();
            }
        }
        Ok(applied)
    }

    /// Ends `session` (graceful shutdown); whether it was live. The agent
    /// and its backends are forgotten.
    pub fn deregister(&self, session: u64, fingerprint: &str) -> Result<String, Refused> {
        let mut inner = self.lock();
        let id = inner
            .sessions
            .get(&session)
            .cloned()
            .ok_or(Refused::Session)?;
        if inner
            .agents
            .get(&id)
            .is_some_and(|a| a.fingerprint != fingerprint)
        {
            return Err(Refused::Certificate);
        }
        inner.sessions.remove(&session);
        inner.agents.remove(&id);
        Ok(id)
    }

    /// Forgets agent `id` (revocation); whether it was known.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.agents.remove(id) {
            Some(a) => {
                inner.sessions.remove(&a.session);
                true
            }
            None => false,
        }
    }

    /// The agent id whose live session uses certificate `fingerprint`.
    pub fn agent_with(&self, fingerprint: &str) -> Option<String> {
        self.lock()
            .agents
            .values()
            .find(|a| a.fingerprint == fingerprint)
            .map(|a| a.id.clone())
    }

    /// After a certificate rotation: the agent's live session now belongs
    /// to `new`.
    pub fn set_fingerprint(&self, id: &str, new: &str) {
        if let Some(a) = self.lock().agents.get_mut(id) {
            new.clone_into(&mut a.fingerprint);
        }
    }

    /// Marks agents silent for their `stale_after` stale and removes those
    /// stale for `remove_after`.
    pub fn sweep(&self, now: Instant, remove_after: Duration) -> Swept {
        let mut inner = self.lock();
        let mut out = Swept::default();
        for a in inner.agents.values_mut() {
            if a.stale_since.is_none() && now.saturating_duration_since(a.last_seen) > a.stale_after
            {
                a.stale_since = Some(now);
                out.stale.push(a.id.clone());
            }
            if a.stale_since
                .is_some_and(|s| now.saturating_duration_since(s) >= remove_after)
            {
                out.removed.push(a.id.clone());
            }
        }
        for id in &out.removed {
            if let Some(a) = inner.agents.remove(id) {
                inner.sessions.remove(&a.session);
            }
        }
        out.stale.sort();
        out.removed.sort();
        out
    }

    /// Every agent now (copies).
    pub fn agents(&self) -> Vec<Agent> {
        let mut v: Vec<Agent> = self.lock().agents.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.lock().agents.len()
    }

    /// Whether no agent is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl Agent ===

impl Agent {
    /// Whether it is stale now.
    pub fn is_stale(&self) -> bool {
        self.stale_since.is_some()
    }
}
