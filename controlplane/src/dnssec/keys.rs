//! Zone keys: generation with `ring`, the DNSKEY RDATA and key tag
//! (RFC 4034 §2, App. B), the DS (RFC 4509, SHA-256), and the at-rest
//! encryption of private keys (AES-256-GCM).

use std::fmt;
use std::path::Path;

use ring::{
    aead, digest,
    rand::{SecureRandom, SystemRandom},
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};

use crate::config::{DnsName, DnssecAlgorithm};

/// DNSKEY flags of a zone key that is not a secure entry point (a ZSK).
pub const FLAGS_ZSK: u16 = 256;
/// DNSKEY flags of a secure entry point (a KSK or a CSK).
pub const FLAGS_SEP: u16 = 257;
/// DNSKEY protocol field, always 3 (RFC 4034 §2.1.2).
const PROTOCOL: u8 = 3;
/// DS digest type SHA-256 (RFC 4509).
pub const DIGEST_SHA256: u8 = 2;
/// Length of the key that encrypts private keys at rest.
pub const KEK_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// Why a key could not be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The random generator or the key generator failed.
    #[error("key generation failed")]
    Generate,
    /// Stored private key bytes that `ring` refuses.
    #[error("stored private key of {zone} (tag {key_tag}) is corrupt: {reason}")]
    Corrupt {
        /// Zone.
        zone: String,
        /// Key tag.
        key_tag: u16,
        /// What `ring` said.
        reason: String,
    },
    /// A stored key encrypted with another key, or tampered with.
    #[error("private key of {zone} (tag {key_tag}) does not decrypt: wrong overwatch.dnssec.key_encryption_key_file, or the stored key was altered")]
    Decrypt {
        /// Zone.
        zone: String,
        /// Key tag.
        key_tag: u16,
    },
    /// A stored key is encrypted but no key file is configured.
    #[error("private key of {zone} (tag {key_tag}) is encrypted; set overwatch.dnssec.key_encryption_key_file")]
    NoKek {
        /// Zone.
        zone: String,
        /// Key tag.
        key_tag: u16,
    },
    /// The key encryption key file is unreadable or malformed.
    #[error("{path}: {reason}")]
    KekFile {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// An algorithm number this build does not sign with.
    #[error("unsupported DNSSEC algorithm {0}")]
    Algorithm(u8),
}

/// Role of a zone key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Combined signing key: signs everything (flags 257).
    Csk,
    /// Key signing key: signs the DNSKEY RRset only (flags 257).
    Ksk,
    /// Zone signing key: signs everything but the DNSKEY RRset (flags 256).
    Zsk,
}

/// Signing algorithm (the DNSSEC algorithm numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256 (13).
    EcdsaP256Sha256,
    /// Ed25519 (15).
    Ed25519,
}

/// One zone key with its private half, ready to sign.
pub struct ZoneKey {
    /// The zone apex.
    pub zone: DnsName,
    /// Role.
    pub role: KeyRole,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// DNSKEY flags.
    pub flags: u16,
    /// Key tag (RFC 4034 App. B).
    pub key_tag: u16,
    /// Public key in DNSKEY form (ECDSA: x‖y, 64 octets; Ed25519: 32 octets).
    pub public_key: Vec<u8>,
    /// Creation time, seconds since the epoch.
    pub created_unix: u64,
    pair: Pair,
    /// The PKCS#8 document (key sync hands it to peer controlplanes).
    pkcs8: Vec<u8>,
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

// === impl KeyRole ===

impl KeyRole {
    /// Store and API label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csk => "csk",
            Self::Ksk => "ksk",
            Self::Zsk => "zsk",
        }
    }

    /// Parses a store label.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csk" => Some(Self::Csk),
            "ksk" => Some(Self::Ksk),
            "zsk" => Some(Self::Zsk),
            _ => None,
        }
    }

    /// DNSKEY flags of this role.
    pub fn flags(self) -> u16 {
        match self {
            Self::Csk | Self::Ksk => FLAGS_SEP,
            Self::Zsk => FLAGS_ZSK,
        }
    }

    /// Signs the DNSKEY RRset.
    pub fn signs_keys(self) -> bool {
        matches!(self, Self::Csk | Self::Ksk)
    }

    /// Signs every other RRset.
    pub fn signs_zone(self) -> bool {
        matches!(self, Self::Csk | Self::Zsk)
    }
}

// === impl Algorithm ===

impl Algorithm {
    /// The DNSSEC algorithm number.
    pub fn number(self) -> u8 {
        match self {
            Self::EcdsaP256Sha256 => 13,
            Self::Ed25519 => 15,
        }
    }

    /// From an algorithm number.
    pub fn from_number(n: u8) -> Result<Self, KeyError> {
        match n {
            13 => Ok(Self::EcdsaP256Sha256),
            15 => Ok(Self::Ed25519),
            n => Err(KeyError::Algorithm(n)),
        }
    }

    /// Mnemonic (RFC 8624).
    pub fn mnemonic(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ECDSAP256SHA256",
            Self::Ed25519 => "ED25519",
        }
    }
}

impl From<DnssecAlgorithm> for Algorithm {
    fn from(a: DnssecAlgorithm) -> Self {
        match a {
            DnssecAlgorithm::EcdsaP256Sha256 => Self::EcdsaP256Sha256,
            DnssecAlgorithm::Ed25519 => Self::Ed25519,
        }
    }
}

// === impl ZoneKey ===

impl ZoneKey {
    /// Generates a key; returns it and its PKCS#8 document (to store).
    pub fn generate(
        zone: &DnsName,
        role: KeyRole,
        algorithm: Algorithm,
        created_unix: u64,
    ) -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| KeyError::Generate)?
        .as_ref()
        .to_vec();
        let key = Self::from_pkcs8(zone, role, algorithm, role.flags(), &pkcs8, created_unix)
            .map_err(|_| KeyError::Generate)?;
        Ok((key, pkcs8))
    }

    /// A key from its stored PKCS#8 document.
    pub fn from_pkcs8(
        zone: &DnsName,
        role: KeyRole,
        algorithm: Algorithm,
        flags: u16,
        pkcs8: &[u8],
        created_unix: u64,
    ) -> Result<Self, KeyError> {
        let corrupt = |reason: String| KeyError::Corrupt {
            zone: zone.to_string(),
            key_tag: 0,
            reason,
        };
        let (pair, public_key) = match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                let p = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .map_err(|e| corrupt(e.to_string()))?;
                // Uncompressed point 0x04‖x‖y; DNSKEY carries x‖y (RFC 6605 §4).
                let public = p.public_key().as_ref().get(1..).unwrap_or(&[]).to_vec();
                (Pair::Ecdsa(p), public)
            }
            Algorithm::Ed25519 => {
                let p = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| corrupt(e.to_string()))?;
                let public = p.public_key().as_ref().to_vec();
                (Pair::Ed25519(p), public)
            }
        };
        let mut key = Self {
            zone: zone.clone(),
            role,
            algorithm,
            flags,
            key_tag: 0,
            public_key,
            created_unix,
            pair,
            pkcs8: pkcs8.to_vec(),
        };
        key.key_tag = key_tag(&key.dnskey_rdata());
        Ok(key)
    }

    /// The private key as PKCS#8, for peer controlplanes only.
    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// DNSKEY RDATA: flags, protocol 3, algorithm, public key.
    pub fn dnskey_rdata(&self) -> Vec<u8> {
        dnskey_rdata(self.flags, self.algorithm.number(), &self.public_key)
    }

    /// Signs `data` (ECDSA: the 64-octet r‖s form of RFC 6605).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ecdsa(p) => p
                .sign(&SystemRandom::new(), data)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Pair::Ed25519(p) => Ok(p.sign(data).as_ref().to_vec()),
        }
    }

    /// The SHA-256 DS RDATA digest: SHA-256(owner ‖ DNSKEY RDATA).
    pub fn ds_digest(&self) -> Vec<u8> {
        let mut data = self.zone.to_wire();
        data.extend_from_slice(&self.dnskey_rdata());
        digest::digest(&digest::SHA256, &data).as_ref().to_vec()
    }

    /// The DS record in presentation form, ready for the registrar:
    /// `example.com. IN DS 12345 13 2 ABCD…`.
    pub fn ds_line(&self) -> String {
        format!(
            "{}. IN DS {} {} {} {}",
            self.zone,
            self.key_tag,
            self.algorithm.number(),
            DIGEST_SHA256,
            hex_upper(&self.ds_digest())
        )
    }

    /// The DNSKEY record in presentation form.
    pub fn dnskey_line(&self, ttl: u32) -> String {
        format!(
            "{}. {ttl} IN DNSKEY {} {PROTOCOL} {} {}",
            self.zone,
            self.flags,
            self.algorithm.number(),
            base64(&self.public_key)
        )
    }
}

impl fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_struct("ZoneKey")
            .field("zone", &self.zone)
            .field("role", &self.role)
            .field("algorithm", &self.algorithm)
            .field("flags", &self.flags)
            .field("key_tag", &self.key_tag)
            .finish_non_exhaustive()
    }
}

// === functions ===

/// DNSKEY RDATA.
pub fn dnskey_rdata(flags: u16, algorithm: u8, public_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + public_key.len());
    out.extend_from_slice(&flags.to_be_bytes());
    out.push(PROTOCOL);
    out.push(algorithm);
    out.extend_from_slice(public_key);
    out
}

/// Key tag of DNSKEY RDATA (RFC 4034 App. B, for every algorithm but 1).
pub fn key_tag(rdata: &[u8]) -> u16 {
    let mut ac: u32 = 0;
    for (i, &b) in rdata.iter().enumerate() {
        ac += if i & 1 == 1 {
            u32::from(b)
        } else {
            u32::from(b) << 8
        };
    }
    ac += (ac >> 16) & 0xFFFF;
    (ac & 0xFFFF) as u16
}

/// Reads the key encryption key: 64 hex digits (whitespace around ignored)
/// or exactly 32 raw octets. A file that group or others may read is refused.
pub fn read_kek(path: &Path) -> Result<[u8; KEK_LEN], KeyError> {
    let err = |reason: String| KeyError::KekFile {
        path: path.display().to_string(),
        reason,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err("readable by group or others; chmod 600 it".to_owned()));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if let Ok(raw) = <[u8; KEK_LEN]>::try_from(bytes.as_slice()) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(&bytes)
        .map(str::trim)
        .map_err(|_| err("expected 64 hex digits (e.g. `openssl rand -hex 32`)".to_owned()))?;
    let mut out = [0u8; KEK_LEN];
    if text.len() != 2 * KEK_LEN {
        return Err(err(format!(
            "expected 64 hex digits (e.g. `openssl rand -hex 32`), found {} characters",
            text.len()
        )));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = text
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| err("not hexadecimal".to_owned()))?;
    }
    Ok(out)
}

/// Encrypts a private key: nonce ‖ ciphertext ‖ tag; `aad` binds it to its row.
pub fn seal(kek: &[u8; KEK_LEN], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_256_GCM, kek).map_err(|_| KeyError::Generate)?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| KeyError::Generate)?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| KeyError::Generate)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts what [`seal`] made; `None` when the key or the AAD is wrong or
/// the bytes were altered.
pub fn open(kek: &[u8; KEK_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, kek).ok()?);
    let nonce: [u8; NONCE_LEN] = sealed.get(..NONCE_LEN)?.try_into().ok()?;
    let mut buf = sealed.get(NONCE_LEN..)?.to_vec();
    let plain = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    Some(plain.to_vec())
}

/// Upper-case hexadecimal.
pub fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}
