//! DNSSEC key rollover (`opengslb dnssec rollover`, issue 6 point 7).
//!
//! Two methods (RFC 6781 §4.1, RFC 7583), chosen by the role of the rolled
//! key:
//!
//! - **ZSK pre-publish** (split keys, the default there):
//!   `publish` — the new ZSK is in the DNSKEY RRset but signs nothing, for
//!   DNSKEY TTL + delay, so every cached DNSKEY RRset knows it; `sign` —
//!   the new ZSK signs everything, the old one stays published for the
//!   largest TTL of the signed data + delay, so every cached signature by
//!   the old key expires; `done` — the old ZSK is retired. The DS is
//!   unchanged throughout.
//! - **CSK (or KSK) double-signature** (the default with one CSK):
//!   `publish` — the new key is published and signs alongside the old one
//!   (two RRSIGs per RRset), for max(DNSKEY TTL, largest TTL) + delay; `ds`
//!   — the operator replaces the old DS at the parent with the new one and
//!   confirms (`--ds-published`); the step waits for that; `retire` — the
//!   old DS expires from caches: parent DS TTL + delay; `done` — the old
//!   key and its signatures go.
//!
//! The delay is `overwatch.dnssec.rollover.propagation_delay`, the parent's
//! DS TTL `rollover.parent_ds_ttl`; the TTLs are those of the last signed
//! snapshot of the zone (the DNSKEY RRset's, the largest of every signed
//! RRset's). Signature validity adds nothing: every signing pass re-signs
//! every RRset with the keys in force at once, so no older signature by a
//! key survives in a served snapshot once it stops signing, and caches
//! drop it within its RRset's TTL.
//!
//! State lives in the store (table `dnssec_rollovers`; the new key in
//! `dnssec_keys` from the start), so a rollover survives a restart; the
//! background task [`run`] moves timed phases on and re-signs. Every phase
//! keeps a key that validates against the DS at the parent signing every
//! RRset, so answers never go unsigned or invalid during the roll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::keys::{self, KeyRole, ZoneKey};
use super::{unix_now, Dnssec};
use crate::config::{Config, DnsName, RolloverConfig};
use crate::store::{RolloverRow, Store};

/// Longest sleep of [`run`] (a shared store may be advanced elsewhere).
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Rollover method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ZSK pre-publish.
    PrePublish,
    /// CSK or KSK double-signature.
    DoubleSignature,
}

/// Rollover phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The new key is published (pre-publish: not signing; double
    /// signature: signing too).
    Publish,
    /// Pre-publish: the new key signs, the old one is still published.
    Sign,
    /// Double signature: waiting for the operator to swap the DS.
    Ds,
    /// Double signature: the new DS is published; the old key still signs
    /// until the old DS has left caches.
    Retire,
    /// Finished: the old key is retired.
    Done,
    /// Cancelled: the new key is retired.
    Cancelled,
}

/// What a rollover waits for, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// TTL of the DNSKEY RRset.
    pub dnskey_ttl: u64,
    /// Largest TTL of any signed RRset of the zone.
    pub max_ttl: u64,
    /// TTL of the DS RRset at the parent.
    pub parent_ds_ttl: u64,
    /// Propagation delay added to every wait.
    pub delay: u64,
}

/// Why a rollover request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloverError {
    /// No such signed zone.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current phase.
    #[error("{0}")]
    Conflict(String),
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Store or key failure.
    #[error(transparent)]
    Internal(#[from] crate::error::Error),
}

/// What `POST /api/v1/dnssec/rollover` (and gRPC `DnssecRollover`) asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Show the zone's rollover.
    Status,
    /// Start a rollover of the key with this role (default: the ZSK with
    /// split keys, else the CSK).
    Start(Option<KeyRole>),
    /// The operator published the new DS at the parent.
    DsPublished,
    /// Abandon the rollover (only while the old key is still complete).
    Cancel,
}

/// A zone's rollover as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloverStatus {
    /// Zone apex, no final dot.
    pub zone: String,
    /// `pre-publish` or `double-signature`.
    pub method: Method,
    /// Role of the rolled key.
    pub role: String,
    /// Current phase.
    pub phase: Phase,
    /// Whether the rollover is still going.
    pub in_progress: bool,
    /// Tag of the key being replaced.
    pub old_key_tag: u16,
    /// Tag of the new key.
    pub new_key_tag: u16,
    /// Start, seconds since the epoch.
    pub started_unix: u64,
    /// Start of the current phase.
    pub phase_since_unix: u64,
    /// When the current phase ends by itself (absent: it waits for the
    /// operator, or the rollover is over).
    pub next_step_unix: Option<u64>,
    /// The operator must act (publish the DS and confirm).
    pub waiting_for_operator: bool,
    /// What happens next, in words.
    pub next_step: String,
    /// The DS set the parent should hold now (what validators trust).
    pub ds_at_parent: Vec<String>,
    /// DS lines to add at the parent now.
    pub ds_to_publish: Vec<String>,
    /// DS lines to remove from the parent now.
    pub ds_to_withdraw: Vec<String>,
    /// The new key's DS (double signature), shown from the start.
    pub new_ds: Option<String>,
}

/// Serialises rollover changes and wakes [`run`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) lock: tokio::sync::Mutex<()>,
    pub(crate) wake: tokio::sync::Notify,
}

// === impl Method, Phase ===

impl Method {
    /// Store and API label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrePublish => "pre-publish",
            Self::DoubleSignature => "double-signature",
        }
    }

    /// Parses a store label.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pre-publish" => Some(Self::PrePublish),
            "double-signature" => Some(Self::DoubleSignature),
            _ => None,
        }
    }

    /// The method that rolls a key of `role`.
    pub fn for_role(role: KeyRole) -> Self {
        match role {
            KeyRole::Zsk => Self::PrePublish,
            KeyRole::Csk | KeyRole::Ksk => Self::DoubleSignature,
        }
    }
}

impl Phase {
    /// Store and API label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Sign => "sign",
            Self::Ds => "ds",
            Self::Retire => "retire",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a store label.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "publish" => Self::Publish,
            "sign" => Self::Sign,
            "ds" => Self::Ds,
            "retire" => Self::Retire,
            "done" => Self::Done,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Not finished.
    pub fn in_progress(self) -> bool {
        !matches!(self, Self::Done | Self::Cancelled)
    }
}

// === impl Timings ===

impl Timings {
    /// From the zone's TTLs and the config.
    pub fn new(dnskey_ttl: u32, max_ttl: u32, cfg: &RolloverConfig) -> Self {
        Self {
            dnskey_ttl: u64::from(dnskey_ttl),
            max_ttl: u64::from(max_ttl.max(dnskey_ttl)),
            parent_ds_ttl: cfg.parent_ds_ttl.get().as_secs(),
            delay: cfg.propagation_delay.get().as_secs(),
        }
    }

    /// How long `phase` of `method` lasts by itself; `None` for a phase that
    /// waits for the operator, and for the end.
    pub fn wait(self, method: Method, phase: Phase) -> Option<u64> {
        let w = match (method, phase) {
            (Method::PrePublish, Phase::Publish) => self.dnskey_ttl,
            (Method::PrePublish, Phase::Sign) => self.max_ttl,
            (Method::DoubleSignature, Phase::Publish) => self.dnskey_ttl.max(self.max_ttl),
            (Method::DoubleSignature, Phase::Retire) => self.parent_ds_ttl,
            _ => return None,
        };
        Some(w.saturating_add(self.delay))
    }
}

// === the state machine (pure) ===

/// The phase a timed phase turns into when its time is up.
pub fn next_timed(method: Method, phase: Phase) -> Option<Phase> {
    match (method, phase) {
        (Method::PrePublish, Phase::Publish) => Some(Phase::Sign),
        (Method::PrePublish, Phase::Sign) => Some(Phase::Done),
        (Method::DoubleSignature, Phase::Publish) => Some(Phase::Ds),
        (Method::DoubleSignature, Phase::Retire) => Some(Phase::Done),
        _ => None,
    }
}

/// Keys of a rollover in `phase` that are published but sign nothing.
pub fn passive_tags(method: Method, phase: Phase, old: u16, new: u16) -> Vec<u16> {
    match (method, phase) {
        (Method::PrePublish, Phase::Publish) => vec![new],
        (Method::PrePublish, Phase::Sign) => vec![old],
        _ => Vec::new(),
    }
}

/// A new rollover of `old` by `new` (role `role`), starting at `now`.
pub fn begin(zone: &str, role: KeyRole, old: u16, new: u16, now: i64, t: Timings) -> RolloverRow {
    let method = Method::for_role(role);
    let mut row = RolloverRow {
        id: 0,
        zone: zone.to_owned(),
        method: method.as_str().to_owned(),
        role: role.as_str().to_owned(),
        old_key_tag: old,
        new_key_tag: new,
        phase: String::new(),
        started_unix: now,
        phase_since_unix: now,
        next_unix: 0,
        ds_published_unix: 0,
    };
    enter(&mut row, method, Phase::Publish, now, t);
    row
}

/// Method and phase of a stored row (`None`: a row this build cannot read).
pub fn parse_row(r: &RolloverRow) -> Option<(Method, Phase)> {
    Some((Method::parse(&r.method)?, Phase::parse(&r.phase)?))
}

/// Moves `r` on when its timed phase is over at `now`; returns whether it
/// moved.
pub fn advance(r: &mut RolloverRow, now: i64, t: Timings) -> bool {
    let Some((method, phase)) = parse_row(r) else {
        return false;
    };
    if r.next_unix == 0 || now < r.next_unix {
        return false;
    }
    let Some(next) = next_timed(method, phase) else {
        return false;
    };
    enter(r, method, next, now, t);
    true
}

/// The operator confirms the new DS is at the parent.
pub fn confirm_ds(r: &mut RolloverRow, now: i64, t: Timings) -> Result<(), RolloverError> {
    let (method, phase) = parse_row(r).ok_or_else(unreadable)?;
    match (method, phase) {
        (Method::DoubleSignature, Phase::Ds) => {
            r.ds_published_unix = now;
            enter(r, method, Phase::Retire, now, t);
            Ok(())
        }
        (Method::DoubleSignature, Phase::Publish) => Err(RolloverError::Conflict(format!(
            "too early: the new key reaches every cache at {} (unix); replace the DS only then",
            r.next_unix
        ))),
        (Method::PrePublish, p) if p.in_progress() => Err(RolloverError::BadRequest(
            "a ZSK rollover does not change the DS; nothing to confirm".to_owned(),
        )),
        _ => Err(RolloverError::Conflict(
            "no rollover of this zone waits for the DS".to_owned(),
        )),
    }
}

/// Cancels `r`: allowed while the old key still signs everything and the
/// DS still points at it.
pub fn cancel(r: &mut RolloverRow, now: i64) -> Result<(), RolloverError> {
    let (method, phase) = parse_row(r).ok_or_else(unreadable)?;
    match (method, phase) {
        (_, Phase::Publish) | (Method::DoubleSignature, Phase::Ds) => {
            r.phase = Phase::Cancelled.as_str().to_owned();
            r.phase_since_unix = now;
            r.next_unix = 0;
            Ok(())
        }
        (Method::PrePublish, Phase::Sign) => Err(RolloverError::Conflict(
            "too late to cancel: the new ZSK already signs; let the rollover finish".to_owned(),
        )),
        (Method::DoubleSignature, Phase::Retire) => Err(RolloverError::Conflict(
            "too late to cancel: the new DS is published; let the rollover finish".to_owned(),
        )),
        _ => Err(RolloverError::Conflict(
            "no rollover of this zone is in progress".to_owned(),
        )),
    }
}

fn enter(r: &mut RolloverRow, method: Method, phase: Phase, now: i64, t: Timings) {
    r.phase = phase.as_str().to_owned();
    r.phase_since_unix = now;
    r.next_unix = t.wait(method, phase).map_or(0, |w| {
        now.saturating_add(i64::try_from(w).unwrap_or(i64::MAX))
    });
}

fn unreadable() -> RolloverError {
    RolloverError::Conflict("the stored rollover is unreadable".to_owned())
}

/// The status of `r` over the zone's keys in force.
pub fn status_of(r: &RolloverRow, keys: &[Arc<ZoneKey>]) -> Option<RolloverStatus> {
    let (method, phase) = parse_row(r)?;
    let ds_of = |tag: u16| {
        keys.iter()
            .find(|k| k.key_tag == tag && k.flags == keys::FLAGS_SEP)
            .map(|k| k.ds_line())
    };
    let sep_except = |tag: Option<u16>| -> Vec<String> {
        keys.iter()
            .filter(|k| k.flags == keys::FLAGS_SEP && Some(k.key_tag) != tag)
            .map(|k| k.ds_line())
            .collect()
    };
    let zone = &r.zone;
    let mut publish = Vec::new();
    let mut withdraw = Vec::new();
    let (at_parent, next_step) = match (method, phase) {
        (Method::PrePublish, Phase::Publish) => (
            sep_except(None),
            "the new ZSK is published, not signing; it starts signing when every cache knows it; the DS does not change".to_owned(),
        ),
        (Method::PrePublish, Phase::Sign) => (
            sep_except(None),
            "the new ZSK signs; the old one stays published until its signatures left every cache, then it is removed; the DS does not change".to_owned(),
        ),
        (Method::DoubleSignature, Phase::Publish) => (
            sep_except(Some(r.new_key_tag)),
            "the new key is published and signs alongside the old one; keep the DS at the parent until this phase ends, then replace it with new_ds".to_owned(),
        ),
        (Method::DoubleSignature, Phase::Ds) => {
            publish.extend(ds_of(r.new_key_tag));
            withdraw.extend(ds_of(r.old_key_tag));
            (
                sep_except(Some(r.new_key_tag)),
                format!("at the parent, replace the DS in ds_to_withdraw with the one in ds_to_publish, then run `opengslb dnssec rollover --zone {zone} --ds-published`"),
            )
        }
        (Method::DoubleSignature, Phase::Retire) => (
            sep_except(Some(r.old_key_tag)),
            "the new DS is published; the old key keeps signing until the old DS left every cache, then it is removed".to_owned(),
        ),
        (_, Phase::Done) => (sep_except(None), "finished: the old key is retired".to_owned()),
        (_, Phase::Cancelled) => (
            sep_except(None),
            "cancelled: the new key is retired; the DS at the parent is unchanged".to_owned(),
        ),
        (Method::PrePublish, _) => (sep_except(None), String::new()),
        (Method::DoubleSignature, Phase::Sign) => (sep_except(None), String::new()),
    };
    let secs = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(RolloverStatus {
        zone: r.zone.clone(),
        method,
        role: r.role.clone(),
        phase,
        in_progress: phase.in_progress(),
        old_key_tag: r.old_key_tag,
        new_key_tag: r.new_key_tag,
        started_unix: secs(r.started_unix),
        phase_since_unix: secs(r.phase_since_unix),
        next_step_unix: (r.next_unix > 0).then(|| secs(r.next_unix)),
        waiting_for_operator: method == Method::DoubleSignature && phase == Phase::Ds,
        next_step,
        ds_at_parent: at_parent,
        ds_to_publish: publish,
        ds_to_withdraw: withdraw,
        new_ds: if method == Method::DoubleSignature {
            ds_of(r.new_key_tag)
        } else {
            None
        },
    })
}

// === impl Dnssec (rollover) ===

impl Dnssec {
    /// The latest rollover of `zone` (`Ok(None)`: it never rolled).
    pub fn rollover_status(&self, zone: &str) -> Result<Option<RolloverStatus>, RolloverError> {
        let name = self.signed_zone(zone)?;
        let apex = name.to_wire();
        let inner = self.read();
        let keys = inner.keyring.keys(&apex).unwrap_or(&[]);
        Ok(inner.rollovers.get(&apex).and_then(|r| status_of(r, keys)))
    }

    /// Zones with a rollover in progress, with its phase (metrics).
    pub fn rollover_phases(&self) -> Vec<(String, Phase)> {
        self.read()
            .rollovers
            .values()
            .filter_map(|r| Some((r.zone.clone(), parse_row(r)?.1)))
            .filter(|(_, p)| p.in_progress())
            .collect()
    }

    /// When the next timed phase ends, over every zone.
    pub(crate) fn next_rollover_step(&self) -> Option<i64> {
        self.read()
            .rollovers
            .values()
            .filter(|r| parse_row(r).is_some_and(|(_, p)| p.in_progress()) && r.next_unix > 0)
            .map(|r| r.next_unix)
            .min()
    }

    /// Starts a rollover of `zone`'s key of `role` (default: the ZSK when
    /// the zone has one, else the CSK): a new key of the same role and
    /// algorithm is stored and published at once. The caller re-signs.
    pub async fn start_rollover(
        &self,
        store: &Store,
        cfg: &Config,
        zone: &str,
        role: Option<KeyRole>,
    ) -> Result<RolloverStatus, RolloverError> {
        let name = self.signed_zone(zone)?;
        let apex = name.to_wire();
        let _guard = self.roll.lock.lock().await;
        if let Some(r) = store.dnssec_rollover(name.as_str()).await? {
            if parse_row(&r).is_some_and(|(_, p)| p.in_progress()) {
                return Err(RolloverError::Conflict(format!(
                    "a {} rollover of {name} is in progress (phase {}); see `opengslb dnssec rollover --zone {name} --status`",
                    r.method, r.phase
                )));
            }
        }
        let ring = self.keyring();
        let keys = ring
            .keys(&apex)
            .ok_or_else(|| RolloverError::NotFound(format!("no signed zone {name}")))?;
        let role = role.unwrap_or(if keys.iter().any(|k| k.role == KeyRole::Zsk) {
            KeyRole::Zsk
        } else {
            KeyRole::Csk
        });
        let old = keys
            .iter()
            .filter(|k| k.role == role)
            .max_by_key(|k| (k.created_unix, k.key_tag))
            .ok_or_else(|| {
                RolloverError::BadRequest(format!(
                    "{name} has no {} key (its keys: {})",
                    role.as_str(),
                    keys.iter()
                        .map(|k| k.role.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let kek = match &cfg.overwatch.dnssec.key_encryption_key_file {
            Some(p) => Some(keys::read_kek(p).map_err(super::dnssec_err)?),
            None => None,
        };
        let now = unix_now();
        // A new key whose tag no key of the zone has (tags identify keys in
        // the rollover).
        let mut made = None;
        for _ in 0..16 {
            let (key, pkcs8) =
                ZoneKey::generate(&name, role, old.algorithm, now).map_err(super::dnssec_err)?;
            if !keys.iter().any(|k| k.key_tag == key.key_tag) {
                made = Some((key, pkcs8));
                break;
            }
        }
        let (key, pkcs8) = made.ok_or_else(|| {
            RolloverError::Internal(crate::error::Error::Dnssec(
                "no key with a fresh key tag could be made".to_owned(),
            ))
        })?;
        let row = super::key_row(&key, pkcs8, kek.as_ref()).map_err(super::dnssec_err)?;
        store.insert_dnssec_key(&row).await?;
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let t = self.timings(&apex, cfg);
        let mut row = begin(name.as_str(), role, old.key_tag, key.key_tag, now_i, t);
        row.id = store.insert_dnssec_rollover(&row).await?;
        tracing::info!(
            zone = %name,
            method = row.method,
            old_key_tag = row.old_key_tag,
            new_key_tag = row.new_key_tag,
            next_step_unix = row.next_unix,
            "DNSSEC key rollover started"
        );
        self.ensure_keys(store, cfg).await?;
        self.roll.wake.notify_one();
        self.rollover_status(name.as_str())?
            .ok_or_else(|| RolloverError::Conflict("the rollover vanished".to_owned()))
    }

    /// The operator published the new DS: the old key's retirement clock
    /// starts.
    pub async fn rollover_ds_published(
        &self,
        store: &Store,
        cfg: &Config,
        zone: &str,
    ) -> Result<RolloverStatus, RolloverError> {
        self.change_rollover(store, cfg, zone, confirm_ds).await
    }

    /// Cancels the zone's rollover; the new key is retired.
    pub async fn cancel_rollover(
        &self,
        store: &Store,
        cfg: &Config,
        zone: &str,
    ) -> Result<RolloverStatus, RolloverError> {
        self.change_rollover(store, cfg, zone, |r, now, _| cancel(r, now))
            .await
    }

    async fn change_rollover(
        &self,
        store: &Store,
        cfg: &Config,
        zone: &str,
        f: impl FnOnce(&mut RolloverRow, i64, Timings) -> Result<(), RolloverError>,
    ) -> Result<RolloverStatus, RolloverError> {
        let name = self.signed_zone(zone)?;
        let apex = name.to_wire();
        {
            let _guard = self.roll.lock.lock().await;
            let mut row = store.dnssec_rollover(name.as_str()).await?.ok_or_else(|| {
                RolloverError::Conflict(format!("no rollover of {name} is in progress"))
            })?;
            let from = row.phase.clone();
            let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            f(&mut row, now, self.timings(&apex, cfg))?;
            if !store.update_dnssec_rollover(&row, &from).await? {
                return Err(RolloverError::Conflict(
                    "the rollover moved on meanwhile; see --status".to_owned(),
                ));
            }
            if row.phase == Phase::Cancelled.as_str() {
                store.retire_dnssec_key(&row.zone, row.new_key_tag).await?;
            }
            tracing::info!(zone = %name, phase = row.phase, "DNSSEC key rollover changed");
        }
        self.ensure_keys(store, cfg).await?;
        self.roll.wake.notify_one();
        self.rollover_status(name.as_str())?
            .ok_or_else(|| RolloverError::Conflict("the rollover vanished".to_owned()))
    }

    /// Moves on every rollover whose timed phase is over; retires the old
    /// key of a finished one. Returns whether the keys changed (re-sign).
    pub async fn advance_rollovers(
        &self,
        store: &Store,
        cfg: &Config,
    ) -> crate::error::Result<bool> {
        if !self.enabled() {
            return Ok(false);
        }
        let mut changed = false;
        {
            let _guard = self.roll.lock.lock().await;
            let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            for zone in &cfg.dns.zones {
                let Some(mut row) = store.dnssec_rollover(zone.name.as_str()).await? else {
                    continue;
                };
                let apex = zone.name.to_wire();
                // Another controlplane sharing the store moved it.
                if self.read().rollovers.get(&apex) != Some(&row) {
                    changed = true;
                }
                let from = row.phase.clone();
                if !advance(&mut row, now, self.timings(&apex, cfg)) {
                    continue;
                }
                if store.update_dnssec_rollover(&row, &from).await? {
                    if row.phase == Phase::Done.as_str() {
                        store.retire_dnssec_key(&row.zone, row.old_key_tag).await?;
                    }
                    tracing::info!(
                        zone = %zone.name,
                        phase = row.phase,
                        next_step_unix = row.next_unix,
                        "DNSSEC key rollover moved on"
                    );
                }
                changed = true;
            }
        }
        if changed {
            self.ensure_keys(store, cfg).await?;
        }
        Ok(changed)
    }

    /// The rollover timings of the zone with this apex, from its last
    /// signing pass (a day each when it was never signed).
    fn timings(&self, apex: &[u8], cfg: &Config) -> Timings {
        let (dnskey, max) = self
            .read()
            .stats
            .zone_ttls
            .iter()
            .find(|(a, _, _)| a.as_slice() == apex)
            .map_or((86_400, 86_400), |(_, d, m)| (*d, *m));
        Timings::new(dnskey, max, &cfg.overwatch.dnssec.rollover)
    }

    fn signed_zone(&self, zone: &str) -> Result<DnsName, RolloverError> {
        if !self.enabled() {
            return Err(RolloverError::NotFound("DNSSEC is off".to_owned()));
        }
        let name = DnsName::parse(zone)
            .map_err(|e| RolloverError::BadRequest(format!("zone {zone:?}: {e}")))?;
        if self.keyring().keys(&name.to_wire()).is_none() {
            return Err(RolloverError::NotFound(format!("no signed zone {name}")));
        }
        Ok(name)
    }
}

/// Per zone (wire apex): its latest rollover.
pub(crate) type ZoneRollovers = BTreeMap<Vec<u8>, RolloverRow>;
/// Per zone (wire apex): tags of keys published but not signing.
pub(crate) type PassiveKeys = BTreeMap<Vec<u8>, Vec<u16>>;

/// The rollovers of `zones` as `ensure_keys` loads them: the latest row per
/// zone, and the keys each keeps passive.
pub(crate) fn load_state(rows: Vec<(Vec<u8>, RolloverRow)>) -> (ZoneRollovers, PassiveKeys) {
    let mut passive = BTreeMap::new();
    for (apex, r) in &rows {
        if let Some((m, p)) = parse_row(r) {
            let tags = passive_tags(m, p, r.old_key_tag, r.new_key_tag);
            if !tags.is_empty() {
                passive.insert(apex.clone(), tags);
            }
        }
    }
    (rows.into_iter().collect(), passive)
}

// === API ===

impl Action {
    /// From the API's `action` (`start`, `ds-published`, `cancel`,
    /// `status`) and `key` (`csk`, `ksk`, `zsk`; start only).
    pub fn parse(action: &str, key: Option<&str>) -> Result<Self, RolloverError> {
        let role = match key.filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => Some(KeyRole::parse(&k.to_ascii_lowercase()).ok_or_else(|| {
                RolloverError::BadRequest(format!("key {k:?}: expected csk, ksk or zsk"))
            })?),
        };
        let a = match action {
            "" | "status" => Self::Status,
            "start" => Self::Start(role),
            "ds-published" => Self::DsPublished,
            "cancel" => Self::Cancel,
            other => {
                return Err(RolloverError::BadRequest(format!(
                    "action {:?}: expected start, ds-published, cancel or status",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        if role.is_some() && !matches!(a, Self::Start(_)) {
            return Err(RolloverError::BadRequest(
                "key applies to start only".to_owned(),
            ));
        }
        Ok(a)
    }

    /// Whether it changes anything (needs a change-level token).
    pub fn is_change(self) -> bool {
        !matches!(self, Self::Status)
    }

    fn audit_name(self) -> &'static str {
        match self {
            Self::Status => "dnssec.rollover.status",
            Self::Start(_) => "dnssec.rollover.start",
            Self::DsPublished => "dnssec.rollover.ds_published",
            Self::Cancel => "dnssec.rollover.cancel",
        }
    }
}

/// Performs `action` on `zone` for `caller` (`(who, from)`, audited for
/// changes); a change re-signs and publishes before it returns.
pub async fn perform(
    state: &crate::server::State,
    caller: Option<(&str, &str)>,
    zone: &str,
    action: Action,
) -> Result<Option<RolloverStatus>, RolloverError> {
    let cfg = state.config.lock().await.clone();
    let st = match action {
        Action::Status => return state.dnssec.rollover_status(zone),
        Action::Start(role) => {
            state
                .dnssec
                .start_rollover(&state.store, &cfg, zone, role)
                .await?
        }
        Action::DsPublished => {
            state
                .dnssec
                .rollover_ds_published(&state.store, &cfg, zone)
                .await?
        }
        Action::Cancel => {
            state
                .dnssec
                .cancel_rollover(&state.store, &cfg, zone)
                .await?
        }
    };
    if let Some((who, from)) = caller {
        let detail = serde_json::json!({
            "zone": st.zone, "phase": st.phase, "old_key_tag": st.old_key_tag,
            "new_key_tag": st.new_key_tag,
        })
        .to_string();
        if let Err(e) = state
            .store
            .audit(who, from, action.audit_name(), &detail)
            .await
        {
            tracing::error!(error = %e, "audit log write failed");
        }
    }
    state.recompile("dnssec rollover").await?;
    Ok(Some(st))
}

/// [`RolloverStatus`] as gRPC carries it.
pub fn status_proto(s: &RolloverStatus) -> opengslb_proto::DnssecRollover {
    opengslb_proto::DnssecRollover {
        zone: s.zone.clone(),
        method: s.method.as_str().to_owned(),
        role: s.role.clone(),
        phase: s.phase.as_str().to_owned(),
        in_progress: s.in_progress,
        old_key_tag: u32::from(s.old_key_tag),
        new_key_tag: u32::from(s.new_key_tag),
        started_unix: s.started_unix,
        phase_since_unix: s.phase_since_unix,
        next_step_unix: s.next_step_unix.unwrap_or(0),
        waiting_for_operator: s.waiting_for_operator,
        next_step: s.next_step.clone(),
        ds_at_parent: s.ds_at_parent.clone(),
        ds_to_publish: s.ds_to_publish.clone(),
        ds_to_withdraw: s.ds_to_withdraw.clone(),
        new_ds: s.new_ds.clone().unwrap_or_default(),
    }
}

// === the background task ===

/// Moves timed rollover phases on when they end, re-signs and publishes;
/// runs until dropped.
pub async fn run(state: Arc<crate::server::State>) {
    loop {
        let wait = state.dnssec.next_rollover_step().map_or(MAX_IDLE, |t| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
            at.duration_since(SystemTime::now())
                .unwrap_or_default()
                .min(MAX_IDLE)
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.dnssec.roll.wake.notified() => continue,
        }
        let cfg = state.config.lock().await.clone();
        match state.dnssec.advance_rollovers(&state.store, &cfg).await {
            Ok(true) => {
                if let Err(e) = state.recompile("dnssec rollover").await {
                    tracing::error!(error = %e, "re-signing after a rollover step failed");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "DNSSEC rollover step failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // Never spin: a step due in the past that did not move waits a bit.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests;
