//! DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018).
//!
//! The server cookie is version 1, three reserved octets, a 32-bit
//! timestamp, and SipHash-2-4 over client cookie | version | reserved |
//! timestamp | client address, keyed with the current secret: 16 octets.
//!
//! Secrets rotate without coordination: the secret of rotation period `n`
//! (`n` = Unix time ÷ `rotate`) is SipHash of `n` under the master secret
//! (`cookies.secret_file`). So dataplanes sharing the master file mint and
//! accept each other's cookies (anycast), and a cookie minted in period `n`
//! stays valid through period `n + 1` (the previous secret).
//!
//! Per worker, [`CookieState`] keeps the derived secrets of the current and
//! previous period (re-derived when the period changes), the client address
//! and the clock of the batch. Nothing here allocates.

use std::{
    io::{Read, Write},
    net::IpAddr,
    path::Path,
};

use crate::wire::Cookie;

// === constants ===

/// EDNS option code of COOKIE.
pub const OPTION_CODE: u16 = 10;
/// Octets of the COOKIE option we write: code, length, client, server.
pub const OPTION_LEN: usize = 4 + 8 + 16;
/// A server cookie older than this is not accepted (RFC 9018 §4.3).
const MAX_AGE: u32 = 3600;
/// Nor one from further in the future than this.
const MAX_SKEW: u32 = 300;

// === types ===

/// The master secret and rotation of one process.
#[derive(Clone, Copy, Debug)]
pub struct CookieConfig {
    /// Master secret; per-period secrets derive from it.
    pub master: [u8; 16],
    /// Rotation period in seconds (at least 1).
    pub rotate_secs: u64,
}

/// One worker's cookie state.
#[derive(Clone, Debug, Default)]
pub struct CookieState {
    config: Option<CookieConfig>,
    /// Period whose secret is `current`.
    period: u64,
    current: [u8; 16],
    previous: [u8; 16],
    /// The client of the query being answered.
    pub client: Option<IpAddr>,
    /// Unix time, seconds.
    pub now: u64,
    /// Whether the last query answered carried a valid server cookie.
    pub valid: bool,
}

// === impl CookieState ===

impl CookieState {
    /// Cookies on with `config`.
    pub fn new(config: CookieConfig) -> Self {
        Self {
            config: Some(config),
            period: u64::MAX,
            ..Self::default()
        }
    }

    /// Whether cookies are on.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Sets the client and clock for the next queries.
    pub fn set(&mut self, client: Option<IpAddr>, now: u64) {
        self.client = client;
        self.now = now;
    }

    /// Checks the query's cookie (sets [`Self::valid`]) and returns the
    /// COOKIE option to append to the reply: `None` when cookies are off or
    /// the query had none.
    pub fn reply(&mut self, cookie: Option<&Cookie>) -> Option<[u8; OPTION_LEN]> {
        self.valid = false;
        let config = self.config?;
        let cookie = cookie?;
        let period = self.now / config.rotate_secs.max(1);
        if period != self.period {
            self.current = derive(&config.master, period);
            self.previous = derive(&config.master, period.wrapping_sub(1));
            self.period = period;
        }
        let client = self.client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if let Some(server) = cookie.server() {
            self.valid = self.check(&cookie.client, server, client);
        }
        let minted = mint(&self.current, &cookie.client, self.now as u32, client);
        let mut opt = [0u8; OPTION_LEN];
        opt[0..2].copy_from_slice(&OPTION_CODE.to_be_bytes());
        opt[2..4].copy_from_slice(&((OPTION_LEN - 4) as u16).to_be_bytes());
        opt[4..12].copy_from_slice(&cookie.client);
        opt[12..].copy_from_slice(&minted);
        Some(opt)
    }

    fn check(&self, client_cookie: &[u8; 8], server: &[u8], client: IpAddr) -> bool {
        let Ok(server) = <[u8; 16]>::try_from(server) else {
            return false;
        };
        if server[0] != 1 {
            return false;
        }
        let ts = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
        // Serial arithmetic (RFC 1982): age in either direction.
        let now = self.now as u32;
        let age = now.wrapping_sub(ts);
        if age > MAX_AGE && ts.wrapping_sub(now) > MAX_SKEW {
            return false;
        }
        [&self.current, &self.previous]
            .into_iter()
            .any(|secret| mint(secret, client_cookie, ts, client) == server)
    }
}

// === functions ===

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The RFC 9018 server cookie for `client_cookie` from `client` at `ts`.
pub fn mint(secret: &[u8; 16], client_cookie: &[u8; 8], ts: u32, client: IpAddr) -> [u8; 16] {
    let mut input = [0u8; 8 + 8 + 16];
    input[..8].copy_from_slice(client_cookie);
    input[8] = 1;
    input[12..16].copy_from_slice(&ts.to_be_bytes());
    let len = match client {
        IpAddr::V4(a) => {
            input[16..20].copy_from_slice(&a.octets());
            20
        }
        IpAddr::V6(a) => {
            input[16..32].copy_from_slice(&a.octets());
            32
        }
    };
    let hash = siphash24(secret, input.get(..len).unwrap_or(&input));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(input.get(8..16).unwrap_or(&[0; 8]));
    out[8..].copy_from_slice(&hash.to_le_bytes());
    out
}

/// The secret of rotation period `period`.
fn derive(master: &[u8; 16], period: u64) -> [u8; 16] {
    let mut input = [0u8; 9];
    input[..8].copy_from_slice(&period.to_le_bytes());
    let mut out = [0u8; 16];
    input[8] = b'A';
    out[..8].copy_from_slice(&siphash24(master, &input).to_le_bytes());
    input[8] = b'B';
    out[8..].copy_from_slice(&siphash24(master, &input).to_le_bytes());
    out
}

/// Reads the master secret from `path`, creating it (mode 0600, 16 random
/// octets) if it does not exist. `None` for `path`: a random secret for
/// this process only.
pub fn load_secret(path: Option<&Path>) -> std::io::Result<[u8; 16]> {
    let Some(path) = path else {
        return random_secret();
    };
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mut secret = [0u8; 16];
            f.read_exact(&mut secret)?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_secret()?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            opts.open(path)?.write_all(&secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

fn random_secret() -> std::io::Result<[u8; 16]> {
    let mut secret = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    Ok(secret)
}

/// SipHash-2-4 of `msg` under `key` (Aumasson & Bernstein).
pub fn siphash24(key: &[u8; 16], msg: &[u8]) -> u64 {
    let k0 = u64::from_le_bytes(key[..8].try_into().unwrap_or([0; 8]));
    let k1 = u64::from_le_bytes(key[8..].try_into().unwrap_or([0; 8]));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = msg.chunks_exact(8);
    for chunk in &mut chunks {
        let m = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    let b = u64::from_le_bytes(last);
    v[3] ^= b;
    round(&mut v);
    round(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn siphash_reference_vectors() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..64).collect();
        // First vectors of the reference implementation's vectors.h.
        assert_eq!(
            siphash24(&key, &msg[..0]).to_le_bytes(),
            hex("310e0edd47db6f72")[..]
        );
        assert_eq!(
            siphash24(&key, &msg[..1]).to_le_bytes(),
            hex("fd67dc93c539f874")[..]
        );
        assert_eq!(
            siphash24(&key, &msg[..8]).to_le_bytes(),
            hex("6224939a79f5f593")[..]
        );
        assert_eq!(
            siphash24(&key, &msg[..15]).to_le_bytes(),
            hex("e545be4961ca29a1")[..]
        );
        assert_eq!(
            siphash24(&key, &msg[..63]).to_le_bytes(),
            hex("724506eb4c328a95")[..]
        );
    }

    #[test]
    fn rfc9018_test_vectors() {
        // RFC 9018 Appendix A.1: learning a new server cookie.
        let secret: [u8; 16] = hex("e5e973e5a6b2a43f48e7dc849e37bfcf").try_into().unwrap();
        let cc: [u8; 8] = hex("2464c4abcf10c957").try_into().unwrap();
        let got = mint(
            &secret,
            &cc,
            1_559_731_985,
            "198.51.100.100".parse().unwrap(),
        );
        assert_eq!(got[..], hex("010000005cf79f111f8130c3eee29480")[..]);
        // A.4: IPv6.
        let secret: [u8; 16] = hex("e5e973e5a6b2a43f48e7dc849e37bfcf").try_into().unwrap();
        let cc: [u8; 8] = hex("2253b53d6aa6a6d6").try_into().unwrap();
        let got = mint(
            &secret,
            &cc,
            1_559_731_986,
            "2001:db8:220:1:59de:d0f4:8769:82b8".parse().unwrap(),
        );
        assert_eq!(got[..8], hex("010000005cf79f12")[..]);
    }

    fn cookie(client: [u8; 8], server: &[u8]) -> Cookie {
        Cookie::new(&[&client[..], server].concat()).unwrap()
    }

    #[test]
    fn round_trip_and_rotation() {
        let config = CookieConfig {
            master: [7; 16],
            rotate_secs: 86_400,
        };
        let client = Some("192.0.2.1".parse().unwrap());
        let mut s = CookieState::new(config);
        let t0 = 1_700_000_000;
        s.set(client, t0);
        let first = s.reply(Some(&cookie([1; 8], &[]))).unwrap();
        assert!(!s.valid);
        assert_eq!(&first[..4], &[0, 10, 0, 24]);
        assert_eq!(&first[4..12], &[1; 8]);
        // Echoed back a little later: valid.
        s.set(client, t0 + 60);
        s.reply(Some(&cookie([1; 8], &first[12..]))).unwrap();
        assert!(s.valid);
        // From another address, or another client cookie: not valid.
        s.set(Some("192.0.2.2".parse().unwrap()), t0 + 60);
        s.reply(Some(&cookie([1; 8], &first[12..])));
        assert!(!s.valid);
        s.set(client, t0 + 60);
        s.reply(Some(&cookie([2; 8], &first[12..])));
        assert!(!s.valid);
        // Too old.
        s.set(client, t0 + 2 * 3600);
        s.reply(Some(&cookie([1; 8], &first[12..])));
        assert!(!s.valid);
        // Minted just before a rotation: still valid just after it.
        let edge = (t0 / 86_400 + 1) * 86_400;
        s.set(client, edge - 10);
        let before = s.reply(Some(&cookie([1; 8], &[]))).unwrap();
        s.set(client, edge + 10);
        s.reply(Some(&cookie([1; 8], &before[12..])));
        assert!(s.valid);
        // Another node with the same master accepts it.
        let mut other = CookieState::new(config);
        other.set(client, edge + 10);
        other.reply(Some(&cookie([1; 8], &before[12..])));
        assert!(other.valid);
        // Off: no option.
        let mut off = CookieState::default();
        assert!(off.reply(Some(&cookie([1; 8], &[]))).is_none());
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie.secret");
        let a = load_secret(Some(&path)).unwrap();
        let b = load_secret(Some(&path)).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
