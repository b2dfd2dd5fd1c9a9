//! DNSSEC key sync between controlplanes (`overwatch.dnssec.key_sync`).
//!
//! Each controlplane polls every peer's REST API every `poll_interval`:
//! `POST /api/v1/dnssec/keys/export` with the bearer token of
//! `key_sync.token_file` (a change-level token of the peer's
//! `api.token_file`: exporting private keys is as privileged as any change).
//! The answer holds each zone's keys **with their private part** (PKCS#8).
//! Per zone, the newest key set wins — the one whose newest key was created
//! last (ties: the higher key tag) — so that peers converge on one key set,
//! and the adopting node can sign with it: the keys are checked (the
//! private key must parse and give the advertised tag and flags), stored
//! (sealed with this node's own `key_encryption_key_file`), the old ones
//! retired, and the zone re-signed.
//!
//! A failed poll (unreachable, timeout, refused, malformed answer, a key
//! that does not parse) changes nothing: signing and serving go on with the
//! keys in force; the failure is counted in
//! `opengslb_dnssec_key_sync_failures_total{peer}` and shown in
//! `dnssec status`. An older key set is ignored. With a shared PostgreSQL
//! store the keys are shared anyway; sync then finds nothing newer.
//!
//! The channel is plain HTTP to the peer's REST API: run it on a trusted
//! network or behind TLS, as for every other change-level API call.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::keys::{self, KeyRole, ZoneKey};
use super::{unix_now, Algorithm, Dnssec};
use crate::config::{Config, DnsName};
use crate::store::{DnssecKeyRow, Store};

/// The export path on the peer's REST API.
pub const EXPORT_PATH: &str = "/api/v1/dnssec/keys/export";
/// Largest export answer read.
const MAX_ANSWER: usize = 4 << 20;

/// `POST /api/v1/dnssec/keys/export`: every zone's keys with private parts.
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
    /// Zones whose keys were last adopted from this peer.
    pub adopted_zones: Vec<String>,
}

// === impl Dnssec (export, sync state) ===

impl Dnssec {
    /// Every zone's keys with their private parts, for a peer controlplane.
    pub fn export(&self) -> KeyExport {
        let ring = self.keyring();
        KeyExport {
            zones: ring
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
        let token = ks
            .token_file
            .as_deref()
            .map(read_token)
            .transpose()
            .map_err(|e| e.to_string());
        let mut changed = false;
        for peer in &ks.peers {
            let result = match &token {
                Ok(Some(t)) => {
                    sync_peer(&state.dnssec, &state.store, &cfg, peer, t, ks.timeout.get()).await
                }
                Ok(None) => Err("overwatch.dnssec.key_sync.token_file is not set".to_owned()),
                Err(e) => Err(e.clone()),
            };
            match &result {
                Ok(adopted) if !adopted.is_empty() => {
                    changed = true;
                    tracing::info!(%peer, zones = ?adopted, "adopted newer DNSSEC keys from a peer controlplane");
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

/// One poll of `peer`: fetch, check, adopt what is newer. Returns the zones
/// adopted.
pub async fn sync_peer(
    dnssec: &Dnssec,
    store: &Store,
    cfg: &Config,
    peer: &str,
    token: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let body = tokio::time::timeout(timeout, fetch(peer, token))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let export: KeyExport =
        serde_json::from_slice(&body).map_err(|e| format!("malformed key export: {e}"))?;
    adopt(dnssec, store, cfg, &export).await
}

/// Adopts, per configured zone, the exported key set when it is newer than
/// the one in force. Every exported key of a zone is checked before
/// anything is stored; a malformed one fails the whole sync.
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
        let Some(their_newest) = newest(theirs.iter().map(|(k, _)| k)) else {
            continue;
        };
        let ours = ring.keys(&name.to_wire()).unwrap_or(&[]);
        let our_newest = newest(ours.iter().map(|k| &**k));
        if our_newest.is_some_and(|o| o >= their_newest) {
            continue;
        }
        let mut rows = Vec::with_capacity(theirs.len());
        for (key, pkcs8) in &theirs {
            let aad = super::aad(&name, key.key_tag);
            let private_key = match &kek {
                Some(kek) => keys::seal(kek, &aad, pkcs8).map_err(|e| e.to_string())?,
                None => pkcs8.clone(),
            };
            rows.push(DnssecKeyRow {
                zone: name.to_string(),
                role: key.role.as_str().to_owned(),
                algorithm: key.algorithm.number(),
                flags: key.flags,
                key_tag: key.key_tag,
                public_key: key.public_key.clone(),
                private_key,
                encrypted: kek.is_some(),
                created_unix: i64::try_from(key.created_unix).unwrap_or(i64::MAX),
            });
        }
        store
            .replace_dnssec_keys(&name.to_string(), &rows)
            .await
            .map_err(|e| e.to_string())?;
        adopted.push(name.to_string());
    }
    if !adopted.is_empty() {
        dnssec
            .ensure_keys(store, cfg)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(adopted)
}

/// (created, tag) of the newest key: the order in which key sets compete.
fn newest<'k>(keys: impl Iterator<Item = &'k ZoneKey>) -> Option<(u64, u16)> {
    keys.map(|k| (k.created_unix, k.key_tag)).max()
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

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
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

/// `POST {peer}/api/v1/dnssec/keys/export` over HTTP/1.1; the body of a
/// 200 answer.
async fn fetch(peer: &str, token: &str) -> Result<Vec<u8>, String> {
    let rest = peer
        .strip_prefix("http://")
        .ok_or_else(|| format!("{peer:?}: only http:// peers are supported"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let req = format!(
        "POST {EXPORT_PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    (&mut s)
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
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
                .take(200)
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
