//! DNSSEC key sync between controlplanes (`overwatch.dnssec.key_sync`).
//!
//! Each controlplane polls every peer's REST API every `poll_interval`
//! (`POST /api/v1/dnssec/keys/export`, `http://` or `https://`) with the
//! **sealed key-sync protocol** ([`PROTOCOL`]), which needs no TLS to keep
//! the keys secret and authenticates both sides with the shared token of
//! `key_sync.token_file` (a change-level token of the peer's
//! `api.token_file`: exporting private keys is as privileged as any change)
//! without ever sending it:
//!
//! 1. The poller sends `{protocol, nonce, timestamp, mac}`: a fresh random
//!    32-byte nonce, its clock, and HMAC-SHA256, keyed with the token, over
//!    the protocol label, method, path, nonce and timestamp.
//! 2. The peer checks the MAC against each of its change-level tokens
//!    (constant time, no early exit), refuses a timestamp more than
//!    [`MAX_SKEW_SECS`] away from its clock and a nonce it has seen, audits
//!    `dnssec.keys.export`, and answers `{protocol, server_nonce, sealed}`:
//!    the export (JSON, [`KeyExport`]) sealed with AES-256-GCM under a key
//!    derived with HKDF-SHA256 from the token and both nonces, the request
//!    bound in as associated data.
//! 3. The poller opens it: success proves the peer knows the token and the
//!    answer is fresh (made for this nonce).
//!
//! Neither a private key nor the token crosses the wire in clear; a bearer
//! token alone is refused at the export path. `https://` peers add TLS
//! (verified against `key_sync.ca_file`, or the webpki roots).
//!
//! The export holds each zone's keys **with their private part** (PKCS#8)
//! and its latest key rollover. Per zone, the newest key set wins — the one
//! whose newest key was created last (ties: the higher key tag) — so that
//! peers converge on one key set, and the adopting node can sign with it:
//! the keys are checked (the private key must parse and give the advertised
//! tag and flags), stored (sealed with this node's own
//! `key_encryption_key_file`), the old ones retired, and the zone
//! re-signed. The rollover follows the keys: a node adopting a key set
//! adopts the peer's rollover with it (phase, timings, keys), and a node
//! in the same rollover as its peer moves on to the peer's later phase, so
//! `dnssec rollover --status` and the served DNSKEY/RRSIG sets agree across
//! the group.
//!
//! A failed poll (unreachable, timeout, refused, an answer that does not
//! open, a malformed export, a key that does not parse) changes nothing:
//! signing and serving go on with the keys in force; the failure is counted
//! in `opengslb_dnssec_key_sync_failures_total{peer}` and shown in
//! `dnssec status`. An older key set is ignored. With a shared PostgreSQL
//! store the keys are shared anyway; sync then finds nothing newer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ring::{aead, hkdf, hmac, rand::SecureRandom};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::keys::{self, KeyRole, ZoneKey};
use super::rollover::{self, Phase};
use super::{unix_now, Algorithm, Dnssec};
use crate::config::{Config, DnsName};
use crate::store::{DnssecKeyRow, RolloverRow, Store};

/// The export path on the peer's REST API.
pub const EXPORT_PATH: &str = "/api/v1/dnssec/keys/export";
/// Label of the sealed key-sync protocol; bound into the MAC, the key and
/// the associated data.
pub const PROTOCOL: &str = "opengslb-key-sync-v1";
/// Largest accepted difference between the poller's and the peer's clocks.
pub const MAX_SKEW_SECS: u64 = 300;
/// Largest export answer read.
const MAX_ANSWER: usize = 4 << 20;
/// Bytes of each side's nonce.
const NONCE_LEN: usize = 32;
/// Nonces remembered at most (only authenticated requests are remembered).
const MAX_REMEMBERED: usize = 100_000;

/// What the poller sends to [`EXPORT_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// [`PROTOCOL`].
    pub protocol: String,
    /// 32 random bytes, hexadecimal.
    pub nonce: String,
    /// The poller's clock, seconds since the epoch.
    pub timestamp: u64,
    /// HMAC-SHA256 (key: the token) over [`request_mac_input`],
    /// hexadecimal.
    pub mac: String,
}

/// The peer's answer: the export, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedExport {
    /// [`PROTOCOL`].
    pub protocol: String,
    /// 32 random bytes of the peer, hexadecimal.
    pub server_nonce: String,
    /// AES-256-GCM ciphertext and tag of the [`KeyExport`] JSON,
    /// hexadecimal.
    pub sealed: String,
}

/// Why a sealed-export request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a request of the sealed protocol (400).
    #[error("{0}")]
    Malformed(String),
    /// The peer has no change-level token (403).
    #[error("key export is disabled: no api.token_file is configured")]
    NoTokens,
    /// Wrong token, stale timestamp or replayed nonce (401).
    #[error("{0}")]
    Refused(String),
}

/// A request whose MAC matched one of the peer's tokens.
#[derive(Debug)]
pub struct Authenticated {
    /// The token's identity (audit).
    pub who: String,
    token: String,
    nonce: [u8; NONCE_LEN],
    nonce_hex: String,
    timestamp: u64,
}

/// Nonces of authenticated requests until their timestamp is too old to be
/// accepted anyway.
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<HashMap<[u8; NONCE_LEN], u64>>,
}

/// `POST /api/v1/dnssec/keys/export`, once opened: every zone's keys with
/// private parts and its latest rollover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyExport {
    /// Zones.
    pub zones: Vec<ZoneExport>,
}

/// One zone of a [`KeyExport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneExport {
    /// Apex, no final dot.
    pub zone: String,
    /// Keys in force.
    pub keys: Vec<KeyExportRow>,
    /// The zone's latest rollover (in progress or finished), if it ever
    /// rolled; on the wire without its local `id` and `zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover: Option<RolloverRow>,
}

/// One key of a [`ZoneExport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyExportRow {
    /// csk, ksk or zsk.
    pub role: String,
    /// Algorithm number.
    pub algorithm: u8,
    /// DNSKEY flags.
    pub flags: u16,
    /// Key tag.
    pub key_tag: u16,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    /// PKCS#8, hexadecimal.
    pub private_key_pkcs8_hex: String,
}

/// Sync state of one peer, for `dnssec status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSync {
    /// Peer URL.
    pub peer: String,
    /// Last successful poll, seconds since the epoch.
    pub last_success_unix: Option<u64>,
    /// Last failure (cleared by a success).
    pub last_error: Option<String>,
    /// Zones whose keys (or rollover) were last adopted from this peer.
    pub adopted_zones: Vec<String>,
}

// === the sealed protocol ===

/// What the request MAC covers.
pub fn request_mac_input(nonce_hex: &str, timestamp: u64) -> String {
    format!("{PROTOCOL}\nPOST\n{EXPORT_PATH}\n{nonce_hex}\n{timestamp}")
}

/// A fresh request proving knowledge of `token` at `now`.
pub fn make_request(token: &str, now: u64) -> Result<ExportRequest, String> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "no randomness for the key-sync nonce".to_owned())?;
    let nonce_hex = keys::hex_upper(&nonce);
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    let mac = hmac::sign(&key, request_mac_input(&nonce_hex, now).as_bytes());
    Ok(ExportRequest {
        protocol: PROTOCOL.to_owned(),
        nonce: nonce_hex,
        timestamp: now,
        mac: keys::hex_upper(mac.as_ref()),
    })
}

/// The peer's side: checks `body` (an [`ExportRequest`]) against every
/// change-level token `(identity, token)`, the clock `now` and `replay`.
pub fn authenticate<'t>(
    body: &[u8],
    tokens: impl IntoIterator<Item = (&'t str, &'t str)>,
    now: u64,
    replay: &ReplayCache,
) -> Result<Authenticated, SealError> {
    let req: ExportRequest = serde_json::from_slice(body).map_err(|e| {
        SealError::Malformed(format!(
            "the key export speaks only the sealed key-sync protocol ({PROTOCOL}: a JSON body {{protocol, nonce, timestamp, mac}} as a peer controlplane's key_sync sends it); a bearer token alone is not accepted here ({e})"
        ))
    })?;
    if req.protocol != PROTOCOL {
        return Err(SealError::Malformed(format!(
            "unknown key-sync protocol {:?}; this controlplane speaks {PROTOCOL}",
            req.protocol
        )));
    }
    let nonce: [u8; NONCE_LEN] = unhex(&req.nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| SealError::Malformed("nonce: expected 64 hex digits".to_owned()))?;
    let mac = unhex(&req.mac)
        .filter(|m| m.len() == 32)
        .ok_or_else(|| SealError::Malformed("mac: expected 64 hex digits".to_owned()))?;
    let mut tokens = tokens.into_iter().peekable();
    if tokens.peek().is_none() {
        return Err(SealError::NoTokens);
    }
    // The MAC first (so that only token holders reach the replay cache),
    // against every token, without an early exit.
    let msg = request_mac_input(&req.nonce, req.timestamp);
    let mut found = None;
    for (who, token) in tokens {
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
        if hmac::verify(&key, msg.as_bytes(), &mac).is_ok() && found.is_none() {
            found = Some((who.to_owned(), token.to_owned()));
        }
    }
    let (who, token) = found.ok_or_else(|| {
        SealError::Refused(
            "key-sync request not authenticated: its MAC matches no change-level token of api.token_file"
                .to_owned(),
        )
    })?;
    if req.timestamp.abs_diff(now) > MAX_SKEW_SECS {
        return Err(SealError::Refused(format!(
            "key-sync request timestamp {} is more than {MAX_SKEW_SECS} s away from this controlplane's clock ({now}); check the clocks",
            req.timestamp
        )));
    }
    replay.remember(nonce, req.timestamp, now)?;
    Ok(Authenticated {
        who,
        token,
        nonce,
        nonce_hex: req.nonce,
        timestamp: req.timestamp,
    })
}

/// The peer's side: `plaintext` (the export JSON) sealed for the
/// authenticated request.
pub fn seal(auth: &Authenticated, plaintext: &[u8]) -> Result<SealedExport, String> {
    let mut server_nonce = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut server_nonce)
        .map_err(|_| "no randomness for the key-sync nonce".to_owned())?;
    let server_nonce_hex = keys::hex_upper(&server_nonce);
    let key = answer_key(&auth.token, &auth.nonce, &server_nonce)?;
    let aad = answer_aad(&auth.nonce_hex, auth.timestamp, &server_nonce_hex);
    let mut buf = plaintext.to_vec();
    // Each key seals one answer (it is derived from two fresh nonces), so
    // a fixed AEAD nonce is safe.
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key([0; aead::NONCE_LEN]),
        aead::Aad::from(aad.as_bytes()),
        &mut buf,
    )
    .map_err(|_| "sealing the key export failed".to_owned())?;
    Ok(SealedExport {
        protocol: PROTOCOL.to_owned(),
        server_nonce: server_nonce_hex,
        sealed: keys::hex_upper(&buf),
    })
}

/// The poller's side: opens the answer to `req` (made with `token`).
pub fn open(token: &str, req: &ExportRequest, answer: &SealedExport) -> Result<Vec<u8>, String> {
    if answer.protocol != PROTOCOL {
        return Err(format!(
            "the peer answered protocol {:?}, not {PROTOCOL}",
            answer.protocol
        ));
    }
    let nonce: [u8; NONCE_LEN] = unhex(&req.nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or("bad request nonce")?;
    let server_nonce: [u8; NONCE_LEN] = unhex(&answer.server_nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or("malformed sealed export: server_nonce is not 64 hex digits")?;
    let mut buf = unhex(&answer.sealed).ok_or("malformed sealed export: sealed is not hex")?;
    let key = answer_key(token, &nonce, &server_nonce)?;
    let aad = answer_aad(&req.nonce, req.timestamp, &answer.server_nonce);
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0; aead::NONCE_LEN]),
            aead::Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .map_err(|_| {
            "the sealed export does not open: the peer does not know this token, or the answer was altered or is not for this request".to_owned()
        })?;
    Ok(plain.to_vec())
}

/// AES-256-GCM key of one answer: HKDF-SHA256, salt = both nonces, input =
/// the token.
fn answer_key(
    token: &str,
    nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
) -> Result<aead::LessSafeKey, String> {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(nonce);
    salt[NONCE_LEN..].copy_from_slice(server_nonce);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(token.as_bytes());
    let info = [PROTOCOL.as_bytes(), b" export key".as_slice()];
    let okm = prk
        .expand(&info, &aead::AES_256_GCM)
        .map_err(|_| "key derivation failed".to_owned())?;
    Ok(aead::LessSafeKey::new(aead::UnboundKey::from(okm)))
}

/// Associated data of an answer: the request and the peer's nonce.
fn answer_aad(nonce_hex: &str, timestamp: u64, server_nonce_hex: &str) -> String {
    format!("{PROTOCOL}\n{EXPORT_PATH}\n{nonce_hex}\n{timestamp}\n{server_nonce_hex}")
}

// === impl ReplayCache ===

impl ReplayCache {
    /// The process's cache (the REST API's export handler).
    pub fn global() -> &'static ReplayCache {
        static CACHE: OnceLock<ReplayCache> = OnceLock::new();
        CACHE.get_or_init(ReplayCache::default)
    }

    /// Remembers `nonce` of a request made at `timestamp`; refuses one
    /// seen before.
    fn remember(&self, nonce: [u8; NONCE_LEN], timestamp: u64, now: u64) -> Result<(), SealError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains_key(&nonce) {
            return Err(SealError::Refused(
                "key-sync request replayed: its nonce was used before".to_owned(),
            ));
        }
        if seen.len() >= 1024 {
            seen.retain(|_, until| *until >= now);
        }
        if seen.len() >= MAX_REMEMBERED {
            return Err(SealError::Refused(
                "too many key-sync requests; try again later".to_owned(),
            ));
        }
        // After this, the timestamp is refused as too old anyway.
        seen.insert(nonce, timestamp.saturating_add(MAX_SKEW_SECS));
        Ok(())
    }
}

// === impl Dnssec (export, sync state) ===

impl Dnssec {
    /// Every zone's keys with their private parts and its latest rollover,
    /// for a peer controlplane.
    pub fn export(&self) -> KeyExport {
        let inner = self.read();
        KeyExport {
            zones: inner
                .keyring
                .zones()
                .map(|(apex, keys)| ZoneExport {
                    zone: super::presentation(apex),
                    keys: keys
                        .iter()
                        .map(|k| KeyExportRow {
                            role: k.role.as_str().to_owned(),
                            algorithm: k.algorithm.number(),
                            flags: k.flags,
                            key_tag: k.key_tag,
                            created_unix: k.created_unix,
                            private_key_pkcs8_hex: keys::hex_upper(k.pkcs8()),
                        })
                        .collect(),
                    rollover: inner.rollovers.get(apex).cloned(),
                })
                .collect(),
        }
    }

    fn note_sync(&self, peer: &str, result: Result<Vec<String>, String>) {
        self.record_sync(peer, result.is_ok());
        let mut inner = self.write();
        let entry = match inner.peers.iter_mut().position(|p| p.peer == peer) {
            Some(i) => &mut inner.peers[i],
            None => {
                inner.peers.push(PeerSync {
                    peer: peer.to_owned(),
                    ..PeerSync::default()
                });
                let last = inner.peers.len() - 1;
                &mut inner.peers[last]
            }
        };
        match result {
            Ok(adopted) => {
                entry.last_success_unix = Some(unix_now());
                entry.last_error = None;
                if !adopted.is_empty() {
                    entry.adopted_zones = adopted;
                }
            }
            Err(e) => entry.last_error = Some(e),
        }
    }
}

// === the poll loop ===

/// What a poll needs besides the peer: the token and the TLS roots.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The shared token (never sent).
    pub token: String,
    /// Roots for `https://` peers (`key_sync.ca_file`, else the webpki
    /// roots).
    pub roots: Arc<rustls::RootCertStore>,
}

/// Polls the configured peers until the task is dropped; a no-op without
/// peers. Reads the config in force at each round (a reload may change the
/// peers).
pub async fn run(state: Arc<crate::server::State>) {
    loop {
        let cfg = state.config.lock().await.clone();
        let Some(ks) = cfg
            .overwatch
            .dnssec
            .key_sync
            .clone()
            .filter(|k| !k.peers.is_empty() && cfg.overwatch.dnssec.enabled)
        else {
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        };
        let creds = credentials(&ks);
        let mut changed = false;
        for peer in &ks.peers {
            let result = match &creds {
                Ok(c) => {
                    sync_peer(&state.dnssec, &state.store, &cfg, peer, c, ks.timeout.get()).await
                }
                Err(e) => Err(e.clone()),
            };
            match &result {
                Ok(adopted) if !adopted.is_empty() => {
                    changed = true;
                    tracing::info!(%peer, zones = ?adopted, "adopted newer DNSSEC keys or rollover state from a peer controlplane");
                }
                Ok(_) => tracing::debug!(%peer, "DNSSEC key sync: nothing newer"),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "DNSSEC key sync failed; signing goes on with the keys in force")
                }
            }
            state.dnssec.note_sync(peer, result);
        }
        if changed {
            if let Err(e) = state.recompile("dnssec key sync").await {
                tracing::error!(error = %e, "re-signing after a key sync failed");
            }
        }
        tokio::time::sleep(ks.poll_interval.get()).await;
    }
}

/// The token and roots of `key_sync`, or why there are none.
pub fn credentials(ks: &crate::config::KeySyncConfig) -> Result<Credentials, String> {
    let path = ks
        .token_file
        .as_deref()
        .ok_or("overwatch.dnssec.key_sync.token_file is not set")?;
    let token = read_token(path).map_err(|e| format!("key_sync.token_file: {e}"))?;
    let roots = match &ks.ca_file {
        Some(p) => {
            crate::overwatch::tls::roots_from(p).map_err(|e| format!("key_sync.ca_file: {e}"))?
        }
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    Ok(Credentials {
        token,
        roots: Arc::new(roots),
    })
}

/// One poll of `peer`: fetch, open, check, adopt what is newer. Returns the
/// zones adopted.
pub async fn sync_peer(
    dnssec: &Dnssec,
    store: &Store,
    cfg: &Config,
    peer: &str,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let export = tokio::time::timeout(timeout, fetch_export(peer, creds))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    adopt(dnssec, store, cfg, &export).await
}

/// Fetches and opens `peer`'s export.
pub async fn fetch_export(peer: &str, creds: &Credentials) -> Result<KeyExport, String> {
    let req = make_request(&creds.token, unix_now())?;
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let answer = fetch(peer, &body, &creds.roots).await?;
    let sealed: SealedExport =
        serde_json::from_slice(&answer).map_err(|e| format!("malformed sealed export: {e}"))?;
    let plain = open(&creds.token, &req, &sealed)?;
    serde_json::from_slice(&plain).map_err(|e| format!("malformed key export: {e}"))
}

/// Adopts, per configured zone, the exported key set when it is newer than
/// the one in force, with the zone's rollover; with the same key set, the
/// peer's later phase of the same rollover. Every exported key (and
/// rollover) of a zone is checked before anything is stored; a malformed
/// one fails the whole sync.
pub async fn adopt(
    dnssec: &Dnssec,
    store: &Store,
    cfg: &Config,
    export: &KeyExport,
) -> Result<Vec<String>, String> {
    let sec = &cfg.overwatch.dnssec;
    let kek = match &sec.key_encryption_key_file {
        Some(p) => Some(keys::read_kek(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let err = |e: crate::error::Error| e.to_string();
    let _guard = dnssec.roll.lock.lock().await;
    let ring = dnssec.keyring();
    let mut adopted = Vec::new();
    for z in &export.zones {
        let name = DnsName::parse(&z.zone).map_err(|e| format!("zone {:?}: {e}", z.zone))?;
        if !cfg.dns.zones.iter().any(|c| c.name == name) {
            continue;
        }
        let theirs = z
            .keys
            .iter()
            .map(|k| check_key(&name, k))
            .collect::<Result<Vec<_>, String>>()?;
        let their_roll = z
            .rollover
            .as_ref()
            .map(|r| check_rollover(&name, r, &theirs))
            .transpose()?;
        let Some(their_newest) = newest(theirs.iter().map(|(k, _)| k)) else {
            continue;
        };
        let ours = ring.keys(&name.to_wire()).unwrap_or(&[]);
        let our_newest = newest(ours.iter().map(|k| &**k));
        let our_roll = store.dnssec_rollover(name.as_str()).await.map_err(err)?;
        let rows = || -> Result<Vec<DnssecKeyRow>, String> {
            theirs
                .iter()
                .map(|(key, pkcs8)| {
                    super::key_row(key, pkcs8.clone(), kek.as_ref()).map_err(|e| e.to_string())
                })
                .collect()
        };
        if let (Some(t), Some(o)) = (&their_roll, &our_roll) {
            if same_rollover(t, o) {
                // The same rollover on both sides: its phase decides, not
                // the age of the keys (a cancelled rollover's peer has
                // retired the newest key). Follow the peer's later phase (a
                // timed step it took first, the operator's confirmation of
                // the DS, a cancel) and the keys it retired; a peer behind
                // catches up from us.
                if rank(t) <= rank(o) {
                    continue;
                }
                let moved = RolloverRow {
                    id: o.id,
                    ..t.clone()
                };
                if !store
                    .update_dnssec_rollover(&moved, &o.phase)
                    .await
                    .map_err(err)?
                {
                    continue;
                }
                let mut our_tags: Vec<u16> = ours.iter().map(|k| k.key_tag).collect();
                let mut their_tags: Vec<u16> = theirs.iter().map(|(k, _)| k.key_tag).collect();
                our_tags.sort_unstable();
                their_tags.sort_unstable();
                if our_tags != their_tags {
                    store
                        .replace_dnssec_keys(name.as_str(), &rows()?)
                        .await
                        .map_err(err)?;
                }
                adopted.push(name.to_string());
                continue;
            }
        }
        // A peer rolling our key (its rollover replaces one of our keys with
        // a key we lack) is ahead of us even when its new key is no newer
        // by the clock (made in the same second); when we roll a key of our
        // own, the newest key decides, as always.
        let in_progress =
            |r: &RolloverRow| rollover::parse_row(r).is_some_and(|(_, p)| p.in_progress());
        let rolls_ours = their_roll.as_ref().is_some_and(|t| {
            in_progress(t)
                && ours.iter().any(|k| k.key_tag == t.old_key_tag)
                && !ours.iter().any(|k| k.key_tag == t.new_key_tag)
        }) && !our_roll.as_ref().is_some_and(in_progress);
        if !rolls_ours && our_newest.is_some_and(|o| o >= their_newest) {
            continue;
        }
        // A newer key set: the keys, and the rollover they belong to.
        store
            .replace_dnssec_keys(name.as_str(), &rows()?)
            .await
            .map_err(err)?;
        match (&their_roll, &our_roll) {
            (Some(t), _) => {
                store.insert_dnssec_rollover(t).await.map_err(err)?;
            }
            (None, Some(o)) if rollover::parse_row(o).is_some_and(|(_, p)| p.in_progress()) => {
                // Our rollover's keys are gone: it ends here.
                let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
                let ended = RolloverRow {
                    phase: Phase::Cancelled.as_str().to_owned(),
                    phase_since_unix: now,
                    next_unix: 0,
                    ..o.clone()
                };
                store
                    .update_dnssec_rollover(&ended, &o.phase)
                    .await
                    .map_err(err)?;
            }
            (None, _) => {}
        }
        adopted.push(name.to_string());
    }
    if !adopted.is_empty() {
        dnssec
            .ensure_keys(store, cfg)
            .await
            .map_err(|e| e.to_string())?;
        dnssec.roll.wake.notify_one();
    }
    Ok(adopted)
}

/// (created, tag) of the newest key: the order in which key sets compete.
fn newest<'k>(keys: impl Iterator<Item = &'k ZoneKey>) -> Option<(u64, u16)> {
    keys.map(|k| (k.created_unix, k.key_tag)).max()
}

/// Whether two rows are the same rollover (maybe in different phases).
fn same_rollover(a: &RolloverRow, b: &RolloverRow) -> bool {
    (
        &a.method,
        &a.role,
        a.old_key_tag,
        a.new_key_tag,
        a.started_unix,
    ) == (
        &b.method,
        &b.role,
        b.old_key_tag,
        b.new_key_tag,
        b.started_unix,
    )
}

/// How far a rollover has gone: phases only ever move up.
fn rank(r: &RolloverRow) -> u8 {
    match rollover::parse_row(r).map(|(_, p)| p) {
        Some(Phase::Publish) | None => 0,
        Some(Phase::Sign | Phase::Ds) => 1,
        Some(Phase::Retire) => 2,
        Some(Phase::Done | Phase::Cancelled) => 3,
    }
}

/// A peer's key, made usable: it must parse and match what it claims.
fn check_key(zone: &DnsName, k: &KeyExportRow) -> Result<(ZoneKey, Vec<u8>), String> {
    let bad = |why: &str| format!("malformed key {} of {zone}: {why}", k.key_tag);
    let role = KeyRole::parse(&k.role).ok_or_else(|| bad("unknown role"))?;
    let algorithm = Algorithm::from_number(k.algorithm).map_err(|e| bad(&e.to_string()))?;
    if k.flags != role.flags() {
        return Err(bad("flags do not match the role"));
    }
    if k.created_unix > unix_now() + 86_400 {
        return Err(bad("created in the future"));
    }
    let pkcs8 = unhex(&k.private_key_pkcs8_hex).ok_or_else(|| bad("private key is not hex"))?;
    let key = ZoneKey::from_pkcs8(zone, role, algorithm, k.flags, &pkcs8, k.created_unix)
        .map_err(|e| bad(&e.to_string()))?;
    if key.key_tag != k.key_tag {
        return Err(bad("key tag does not match the private key"));
    }
    Ok((key, pkcs8))
}

/// A peer's rollover, as a row to store: readable, and an unfinished one
/// must be between two of the exported keys.
fn check_rollover(
    zone: &DnsName,
    r: &RolloverRow,
    keys: &[(ZoneKey, Vec<u8>)],
) -> Result<RolloverRow, String> {
    let bad = |why: &str| format!("malformed rollover of {zone}: {why}");
    let row = RolloverRow {
        id: 0,
        zone: zone.to_string(),
        ..r.clone()
    };
    let (_, phase) = rollover::parse_row(&row).ok_or_else(|| bad("unknown method or phase"))?;
    KeyRole::parse(&r.role).ok_or_else(|| bad("unknown role"))?;
    if [
        r.started_unix,
        r.phase_since_unix,
        r.next_unix,
        r.ds_published_unix,
    ]
    .iter()
    .any(|t| *t < 0)
        || r.phase_since_unix < r.started_unix
    {
        return Err(bad("impossible times"));
    }
    let has = |tag: u16| keys.iter().any(|(k, _)| k.key_tag == tag);
    if phase.in_progress() && !(has(r.old_key_tag) && has(r.new_key_tag)) {
        return Err(bad(
            "an unfinished rollover between keys that are not exported",
        ));
    }
    Ok(row)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The token of a token file: the first non-comment line, `TOKEN` or
/// `NAME:TOKEN`.
fn read_token(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no token", path.display()),
            )
        })?;
    Ok(line
        .split_once(':')
        .map_or(line, |(_, t)| t.trim())
        .to_owned())
}

// === HTTP(S) ===

/// Where a peer URL points: `(tls, host:port, host)`.
fn target(peer: &str) -> Result<(bool, String, String), String> {
    let (tls, rest) = if let Some(r) = peer.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = peer.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{peer:?}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("{peer:?}: no host"));
    }
    // [v6]:port, [v6], host:port, host.
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{peer:?}: bad IPv6 host"))?;
        (h.to_owned(), after.strip_prefix(':').map(str::to_owned))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
            None => (authority.to_owned(), None),
        }
    };
    let port = port.unwrap_or_else(|| if tls { "443" } else { "80" }.to_owned());
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((tls, addr, host))
}

/// `POST {peer}/api/v1/dnssec/keys/export` with `body` over HTTP/1.1 (TLS
/// for `https://`); the body of a 200 answer.
async fn fetch(
    peer: &str,
    body: &[u8],
    roots: &Arc<rustls::RootCertStore>,
) -> Result<Vec<u8>, String> {
    let (tls, addr, host) = target(peer)?;
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if !tls {
        return exchange(tcp, &addr, body).await;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("{peer:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    exchange(stream, &addr, body).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let mut req = format!(
        "POST {EXPORT_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.map_err(|e| format!("send: {e}"))?;
    s.flush().await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let read = (&mut s)
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut buf)
        .await;
    // A TLS peer closing without close_notify after a complete answer is
    // fine: the answer is authenticated by its seal anyway.
    if let Err(e) = read {
        if buf.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("read: {e}"));
        }
    }
    if buf.len() > MAX_ANSWER {
        return Err("answer too large".to_owned());
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP answer")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap_or("");
    let body = buf[split + 4..].to_vec();
    if status != "200" {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    if head.contains("transfer-encoding: chunked") {
        return dechunk(&body).ok_or_else(|| "malformed chunked answer".to_owned());
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.trim(), 16).ok()?;
        b = b.get(eol + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
#[path = "sync/tests.rs"]
mod tests;
