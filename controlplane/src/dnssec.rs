//! DNSSEC for dynamic answers (DESIGN.md, "DNSSEC with dynamic answers").
//!
//! Every RRset the dataplane may send is signed here, when the snapshot is
//! compiled ([`Signer`], called by `compile::Compiler`): DNSKEY, SOA, NS,
//! static RRsets, each candidate RRset of each answer plan, and an NSEC
//! chain for authenticated denial. The dataplane never holds a private key.
//!
//! Keys ([`keys`]) are made with `ring` on first start per zone — one CSK
//! (flags 257) by default, a KSK + ZSK pair with `split_keys` — and kept in
//! the store, their private half encrypted with AES-256-GCM when
//! `key_encryption_key_file` is set. [`Dnssec`] is the shared handle: the
//! keyring, the last signing pass' numbers, the DS records and the status
//! the admin API serves.
//!
//! Invariants: a zone with keys is never published unsigned (signing failures
//! are logged and leave that RRset without RRSIG, which validators reject
//! rather than accept); the private half never appears in logs or `Debug`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, DnsName};
use crate::error::{Error, Result};
use crate::store::{DnssecKeyRow, Store};

pub mod keys;
pub mod metrics;
pub mod nsec;
pub mod nsec3;
pub mod rollover;
pub mod sign;
pub mod sync;

#[cfg(test)]
mod tests;

pub use keys::{Algorithm, KeyError, KeyRole, ZoneKey};
pub use sign::{SignOutcome, Signer};

/// Record types DNSSEC adds.
pub mod rtype {
    /// Name server.
    pub const NS: u16 = 2;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Signature.
    pub const RRSIG: u16 = 46;
    /// Next secure.
    pub const NSEC: u16 = 47;
    /// Public key.
    pub const DNSKEY: u16 = 48;
}

/// The keys of every signed zone, by wire-format apex.
#[derive(Debug, Default)]
pub struct Keyring {
    zones: BTreeMap<Vec<u8>, Vec<Arc<ZoneKey>>>,
    /// Per zone: tags of keys that are published but sign nothing (a
    /// rollover's pre-published or outgoing ZSK).
    passive: BTreeMap<Vec<u8>, Vec<u16>>,
}

/// Shared DNSSEC state of a controlplane. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Dnssec {
    inner: Arc<RwLock<Inner>>,
    /// Rollover changes: one at a time; wakes the rollover task.
    roll: Arc<rollover::Shared>,
}

#[derive(Debug, Default)]
struct Inner {
    enabled: bool,
    algorithm: Option<Algorithm>,
    encrypted_at_rest: bool,
    keyring: Arc<Keyring>,
    stats: SigningStats,
    /// Metrics: the signing-pass histogram (when a collector exists), RRSIGs
    /// made per zone, key sync outcomes.
    latency: Option<prometheus::Histogram>,
    signatures_total: BTreeMap<String, u64>,
    sync_success: u64,
    sync_failures: BTreeMap<String, u64>,
    /// Key sync state per peer.
    peers: Vec<sync::PeerSync>,
    /// Latest rollover per zone (wire apex), as stored.
    rollovers: BTreeMap<Vec<u8>, crate::store::RolloverRow>,
}

/// What [`metrics::DnssecCollector`] reads at a scrape.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Signing is on.
    pub enabled: bool,
    /// Keys in force.
    pub keyring: Arc<Keyring>,
    /// Per zone (wire apex): earliest signature expiration.
    pub zone_next_expiry: Vec<(Vec<u8>, Option<u64>)>,
    /// RRSIGs made, per zone (presentation form).
    pub signatures_total: BTreeMap<String, u64>,
    /// Successful key sync polls.
    pub sync_success: u64,
    /// Failed key sync polls per peer.
    pub sync_failures: BTreeMap<String, u64>,
}

/// Numbers of the last signing pass.
#[derive(Debug, Clone, Default)]
pub struct SigningStats {
    /// RRSIGs in the last snapshot.
    pub signatures: usize,
    /// RRSIGs made by the last pass (the rest came from the cache).
    pub signed_last: usize,
    /// Duration of the last pass.
    pub signing_micros: u64,
    /// Earliest signature expiration, seconds since the epoch.
    pub next_expiry_unix: Option<u64>,
    /// Per zone (wire apex): earliest signature expiration.
    pub zone_next_expiry_unix: Vec<(Vec<u8>, Option<u64>)>,
    /// Per zone (wire apex): RRSIGs made by the last pass.
    pub zone_signed: Vec<(Vec<u8>, usize)>,
    /// Per zone (wire apex): the DNSKEY RRset's TTL and the largest TTL of
    /// any signed RRset (rollover timings).
    pub zone_ttls: Vec<(Vec<u8>, u32, u32)>,
}

/// `GET /api/v1/dnssec/status`, `opengslb dnssec status`.
#[derive(Debug, Clone, Serialize)]
pub struct DnssecStatus {
    /// Signing is on.
    pub enabled: bool,
    /// Algorithm new keys get.
    pub algorithm: Option<&'static str>,
    /// Private keys are encrypted in the store.
    pub keys_encrypted_at_rest: bool,
    /// RRSIGs in the last snapshot.
    pub signatures: usize,
    /// RRSIGs made by the last signing pass.
    pub signed_last_pass: usize,
    /// Duration of the last signing pass, milliseconds.
    pub last_signing_ms: f64,
    /// Earliest signature expiration, seconds since the epoch.
    pub next_expiry_unix: Option<u64>,
    /// Per zone.
    pub zones: Vec<ZoneStatus>,
    /// Key sync between controlplanes.
    pub key_sync: KeySyncStatus,
}

/// One zone in [`DnssecStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct ZoneStatus {
    /// Apex, no final dot.
    pub zone: String,
    /// Its keys.
    pub keys: Vec<KeyStatus>,
    /// DS records to publish at the parent.
    pub ds: Vec<String>,
    /// Earliest signature expiration, seconds since the epoch.
    pub next_expiry_unix: Option<u64>,
    /// The latest key rollover, if the zone ever rolled.
    pub rollover: Option<rollover::RolloverStatus>,
}

/// One key in [`ZoneStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    /// Key tag.
    pub key_tag: u16,
    /// csk, ksk or zsk.
    pub role: KeyRole,
    /// Algorithm number.
    pub algorithm: u8,
    /// Algorithm mnemonic.
    pub algorithm_name: &'static str,
    /// DNSKEY flags.
    pub flags: u16,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    /// Seconds since creation.
    pub age_seconds: u64,
}

/// Key sync state in [`DnssecStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct KeySyncStatus {
    /// Peers are configured.
    pub configured: bool,
    /// `disabled` (no peers), `pending` (not polled yet), `ok` (every
    /// peer's last poll succeeded) or `failing`.
    pub state: &'static str,
    /// Per peer.
    pub peers: Vec<sync::PeerSync>,
}

// === impl Keyring ===

impl Keyring {
    /// Keys of the zone with this wire-format apex.
    pub fn keys(&self, apex: &[u8]) -> Option<&[Arc<ZoneKey>]> {
        self.zones
            .get(apex)
            .map(Vec::as_slice)
            .filter(|k| !k.is_empty())
    }

    /// Whether key `key_tag` of the zone with this apex signs (a key a
    /// rollover only publishes does not).
    pub fn signs(&self, apex: &[u8], key_tag: u16) -> bool {
        self.passive
            .get(apex)
            .is_none_or(|tags| !tags.contains(&key_tag))
    }

    /// Every zone with its keys.
    pub fn zones(&self) -> impl Iterator<Item = (&[u8], &[Arc<ZoneKey>])> {
        self.zones.iter().map(|(a, k)| (a.as_slice(), k.as_slice()))
    }
}

// === impl Dnssec ===

impl Dnssec {
    /// DNSSEC off: nothing is signed.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Loads the keys of every zone of `cfg` from `store`, generating (and
    /// storing) those missing. Off when `overwatch.dnssec.enabled` is false.
    pub async fn open(store: &Store, cfg: &Config) -> Result<Self> {
        let this = Self::disabled();
        if !cfg.overwatch.dnssec.enabled {
            tracing::warn!("DNSSEC is off (acknowledged in the config): answers are unsigned");
            return Ok(this);
        }
        if cfg.overwatch.dnssec.key_encryption_key_file.is_none() {
            tracing::warn!(
                "overwatch.dnssec.key_encryption_key_file is not set: DNSSEC private keys are stored unencrypted"
            );
        }
        this.ensure_keys(store, cfg).await?;
        Ok(this)
    }

    /// Makes sure every zone of `cfg` has keys (a reload may add zones);
    /// keys of zones no longer configured stay in the store.
    pub async fn ensure_keys(&self, store: &Store, cfg: &Config) -> Result<()> {
        let sec = &cfg.overwatch.dnssec;
        if !sec.enabled {
            self.write().enabled = false;
            return Ok(());
        }
        let kek = match &sec.key_encryption_key_file {
            Some(p) => Some(keys::read_kek(p).map_err(dnssec_err)?),
            None => None,
        };
        let algorithm = Algorithm::from(sec.algorithm);
        let now = unix_now();
        let mut ring = Keyring::default();
        let mut rolls = Vec::new();
        for zone in &cfg.dns.zones {
            if let Some(r) = store.dnssec_rollover(zone.name.as_str()).await? {
                rolls.push((zone.name.to_wire(), r));
            }
            let rows = store.dnssec_keys(zone.name.as_str()).await?;
            let mut zone_keys = Vec::with_capacity(rows.len().max(2));
            for row in &rows {
                zone_keys.push(Arc::new(load_key(&zone.name, row, kek.as_ref())?));
            }
            if zone_keys.is_empty() {
                let roles: &[KeyRole] = if sec.split_keys {
                    &[KeyRole::Ksk, KeyRole::Zsk]
                } else {
                    &[KeyRole::Csk]
                };
                for &role in roles {
                    let (key, pkcs8) =
                        ZoneKey::generate(&zone.name, role, algorithm, now).map_err(dnssec_err)?;
                    let row = key_row(&key, pkcs8, kek.as_ref()).map_err(dnssec_err)?;
                    store.insert_dnssec_key(&row).await?;
                    tracing::info!(
                        zone = %zone.name,
                        key_tag = key.key_tag,
                        role = role.as_str(),
                        algorithm = algorithm.mnemonic(),
                        ds = %key.ds_line(),
                        "generated DNSSEC key; publish the DS at the parent zone"
                    );
                    zone_keys.push(Arc::new(key));
                }
            } else if zone_keys.iter().any(|k| k.algorithm != algorithm) {
                tracing::warn!(
                    zone = %zone.name,
                    "stored DNSSEC keys use another algorithm than overwatch.dnssec.algorithm; they stay in use (an algorithm change needs a rollover)"
                );
            }
            ring.zones.insert(zone.name.to_wire(), zone_keys);
        }
        let (rollovers, passive) = rollover::load_state(rolls);
        ring.passive = passive;
        let mut inner = self.write();
        inner.rollovers = rollovers;
        inner.enabled = true;
        inner.algorithm = Some(algorithm);
        inner.encrypted_at_rest = kek.is_some();
        inner.keyring = Arc::new(ring);
        Ok(())
    }

    /// Whether signing is on.
    pub fn enabled(&self) -> bool {
        self.read().enabled
    }

    /// The keys in force.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.read().keyring.clone()
    }

    /// Numbers of the last signing pass.
    pub fn stats(&self) -> SigningStats {
        self.read().stats.clone()
    }

    pub(crate) fn record(&self, stats: SigningStats) {
        let mut inner = self.write();
        if let Some(h) = &inner.latency {
            h.observe(stats.signing_micros as f64 / 1e6);
        }
        for (apex, n) in &stats.zone_signed {
            *inner
                .signatures_total
                .entry(presentation(apex))
                .or_default() += *n as u64;
        }
        inner.stats = stats;
    }

    /// Times signing passes into `h` (the metrics collector's histogram).
    pub(crate) fn set_latency_histogram(&self, h: prometheus::Histogram) {
        self.write().latency = Some(h);
    }

    /// Counts a key sync poll of `peer`: success or failure.
    pub fn record_sync(&self, peer: &str, ok: bool) {
        let mut inner = self.write();
        if ok {
            inner.sync_success += 1;
        } else {
            *inner.sync_failures.entry(peer.to_owned()).or_default() += 1;
        }
    }

    /// What the metrics collector reads.
    pub fn counters(&self) -> Counters {
        let inner = self.read();
        Counters {
            enabled: inner.enabled,
            keyring: inner.keyring.clone(),
            zone_next_expiry: inner.stats.zone_next_expiry_unix.clone(),
            signatures_total: inner.signatures_total.clone(),
            sync_success: inner.sync_success,
            sync_failures: inner.sync_failures.clone(),
        }
    }

    /// The metrics collector of this DNSSEC state, to register once.
    pub fn collector(&self) -> Result<metrics::DnssecCollector> {
        metrics::DnssecCollector::new(self.clone()).map_err(|e| Error::Metrics(e.to_string()))
    }

    /// The DS records of `zone` (presentation form, no final dot needed),
    /// one per secure-entry-point key, each a full line ready for the
    /// registrar. Served as `GET /api/v1/dnssec/ds?zone=`, gRPC
    /// `AdminService.GetDs` and `opengslb dnssec ds`.
    pub fn ds_records(&self, zone: &str) -> Result<Vec<String>> {
        if !self.enabled() {
            return Err(Error::Dnssec("DNSSEC is off".to_owned()));
        }
        let name =
            DnsName::parse(zone).map_err(|e| Error::Dnssec(format!("zone {zone:?}: {e}")))?;
        let ring = self.keyring();
        let keys = ring
            .keys(&name.to_wire())
            .ok_or_else(|| Error::Dnssec(format!("no signed zone {name}")))?;
        Ok(keys
            .iter()
            .filter(|k| k.flags == keys::FLAGS_SEP)
            .map(|k| k.ds_line())
            .collect())
    }

    /// Status for the admin API and `opengslb dnssec status`.
    pub fn status(&self, key_sync_configured: bool) -> DnssecStatus {
        let inner = self.read();
        let now = unix_now();
        let zones = inner
            .keyring
            .zones()
            .map(|(apex, keys)| ZoneStatus {
                zone: presentation(apex),
                keys: keys
                    .iter()
                    .map(|k| KeyStatus {
                        key_tag: k.key_tag,
                        role: k.role,
                        algorithm: k.algorithm.number(),
                        algorithm_name: k.algorithm.mnemonic(),
                        flags: k.flags,
                        created_unix: k.created_unix,
                        age_seconds: now.saturating_sub(k.created_unix),
                    })
                    .collect(),
                ds: keys
                    .iter()
                    .filter(|k| k.flags == keys::FLAGS_SEP)
                    .map(|k| k.ds_line())
                    .collect(),
                next_expiry_unix: inner
                    .stats
                    .zone_next_expiry_unix
                    .iter()
                    .find(|(a, _)| a.as_slice() == apex)
                    .and_then(|(_, e)| *e),
                rollover: inner
                    .rollovers
                    .get(apex)
                    .and_then(|r| rollover::status_of(r, keys)),
            })
            .collect();
        DnssecStatus {
            enabled: inner.enabled,
            algorithm: inner.algorithm.map(Algorithm::mnemonic),
            keys_encrypted_at_rest: inner.encrypted_at_rest,
            signatures: inner.stats.signatures,
            signed_last_pass: inner.stats.signed_last,
            last_signing_ms: inner.stats.signing_micros as f64 / 1000.0,
            next_expiry_unix: inner.stats.next_expiry_unix,
            zones,
            key_sync: KeySyncStatus {
                configured: key_sync_configured,
                state: if !key_sync_configured {
                    "disabled"
                } else if inner.peers.is_empty() {
                    "pending"
                } else if inner.peers.iter().all(|p| p.last_error.is_none()) {
                    "ok"
                } else {
                    "failing"
                },
                peers: inner.peers.clone(),
            },
        }
    }

    #[cfg(test)]
    pub(crate) fn with_keys(keys: Vec<ZoneKey>) -> Self {
        let mut ring = Keyring::default();
        for k in keys {
            ring.zones
                .entry(k.zone.to_wire())
                .or_default()
                .push(Arc::new(k));
        }
        let this = Self::default();
        {
            let mut inner = this.write();
            inner.enabled = true;
            inner.keyring = Arc::new(ring);
        }
        this
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

// === functions ===

/// [`DnssecStatus`] as gRPC `AdminService.GetDnssecStatus` answers it.
pub fn status_proto(st: &DnssecStatus) -> opengslb_proto::GetDnssecStatusResponse {
    use opengslb_proto::{DnssecKey, DnssecZone, GetDnssecStatusResponse};
    GetDnssecStatusResponse {
        enabled: st.enabled,
        algorithm: st.algorithm.unwrap_or_default().to_owned(),
        keys_encrypted_at_rest: st.keys_encrypted_at_rest,
        signatures: st.signatures as u64,
        signed_last_pass: st.signed_last_pass as u64,
        last_signing_ms: st.last_signing_ms,
        next_expiry_unix: st.next_expiry_unix.unwrap_or(0),
        zones: st
            .zones
            .iter()
            .map(|z| DnssecZone {
                zone: z.zone.clone(),
                keys: z
                    .keys
                    .iter()
                    .map(|k| DnssecKey {
                        key_tag: u32::from(k.key_tag),
                        role: k.role.as_str().to_owned(),
                        algorithm: u32::from(k.algorithm),
                        flags: u32::from(k.flags),
                        created_unix: k.created_unix,
                        age_seconds: k.age_seconds,
                    })
                    .collect(),
                ds: z.ds.clone(),
                next_expiry_unix: z.next_expiry_unix.unwrap_or(0),
                rollover: z.rollover.as_ref().map(rollover::status_proto),
            })
            .collect(),
        key_sync_state: st.key_sync.state.to_owned(),
    }
}

/// The store row of `key` with its private part `pkcs8`, sealed under
/// `kek` (bound to the zone and key tag) when one is set: what
/// [`load_key`] reads back. Used for new keys, rolled-in keys and keys
/// adopted from a key-sync peer alike.
fn key_row(
    key: &ZoneKey,
    pkcs8: Vec<u8>,
    kek: Option<&[u8; keys::KEK_LEN]>,
) -> std::result::Result<DnssecKeyRow, KeyError> {
    let private_key = match kek {
        Some(kek) => keys::seal(kek, &aad(&key.zone, key.key_tag), &pkcs8)?,
        None => pkcs8,
    };
    Ok(DnssecKeyRow {
        zone: key.zone.to_string(),
        role: key.role.as_str().to_owned(),
        algorithm: key.algorithm.number(),
        flags: key.flags,
        key_tag: key.key_tag,
        public_key: key.public_key.clone(),
        private_key,
        encrypted: kek.is_some(),
        created_unix: i64::try_from(key.created_unix).unwrap_or(i64::MAX),
    })
}

/// A stored key, decrypted when sealed.
fn load_key(
    zone: &DnsName,
    row: &DnssecKeyRow,
    kek: Option<&[u8; keys::KEK_LEN]>,
) -> Result<ZoneKey> {
    let corrupt = |reason: &str| {
        dnssec_err(KeyError::Corrupt {
            zone: zone.to_string(),
            key_tag: row.key_tag,
            reason: reason.to_owned(),
        })
    };
    let role = KeyRole::parse(&row.role).ok_or_else(|| corrupt("unknown role"))?;
    let algorithm = Algorithm::from_number(row.algorithm).map_err(dnssec_err)?;
    let pkcs8 = if row.encrypted {
        let kek = kek.ok_or_else(|| {
            dnssec_err(KeyError::NoKek {
                zone: zone.to_string(),
                key_tag: row.key_tag,
            })
        })?;
        keys::open(kek, &aad(zone, row.key_tag), &row.private_key).ok_or_else(|| {
            dnssec_err(KeyError::Decrypt {
                zone: zone.to_string(),
                key_tag: row.key_tag,
            })
        })?
    } else {
        row.private_key.clone()
    };
    let created = u64::try_from(row.created_unix).unwrap_or(0);
    let key = ZoneKey::from_pkcs8(zone, role, algorithm, row.flags, &pkcs8, created).map_err(
        |e| match e {
            KeyError::Corrupt { reason, .. } => corrupt(&reason),
            e => dnssec_err(e),
        },
    )?;
    if key.key_tag != row.key_tag || key.public_key != row.public_key {
        return Err(corrupt("public key does not match the private key"));
    }
    Ok(key)
}

/// AAD binding a sealed private key to its zone and tag.
fn aad(zone: &DnsName, key_tag: u16) -> Vec<u8> {
    format!("opengslb-dnssec:{zone}:{key_tag}").into_bytes()
}

fn dnssec_err(e: KeyError) -> Error {
    Error::Dnssec(e.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Presentation form of a wire name, no final dot.
pub(crate) fn presentation(name: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let label = name.get(i + 1..i + 1 + usize::from(len)).unwrap_or(&[]);
        out.push_str(&String::from_utf8_lossy(label));
        i += 1 + usize::from(len);
    }
    out
}
