//! Who may call the admin APIs (REST and gRPC alike): the client network
//! allowlist, the bearer tokens required for every change, and a per-client
//! request rate limit.
//!
//! The token file holds one token per line, `TOKEN` or `NAME:TOKEN` (blank
//! lines and `#` comments ignored); the name (default `api`) is who the
//! audit log says made a change. A configured but missing, empty or
//! world-readable token file is a start-up error.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Mutex, PoisonError},
};

use ipnet::IpNet;
use tokio::time::Instant;

use super::ApiError;
use crate::{
    config::ApiConfig,
    error::{Error, Result},
};

/// Sustained requests per second per client.
const RATE_PER_SECOND: f64 = 50.0;
/// Burst per client.
const BURST: f64 = 200.0;
/// Clients remembered by the limiter before idle ones are forgotten.
const MAX_CLIENTS: usize = 10_000;

/// The access rules of one controlplane.
#[derive(Debug)]
pub struct Access {
    allowed: Vec<IpNet>,
    trust_proxy_headers: bool,
    /// (identity, token); empty = changes refused.
    tokens: Vec<(String, String)>,
    token_file: Option<String>,
    limiter: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Who made a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's identity (`api` for an unnamed token).
    pub who: String,
    /// The client address.
    pub from: IpAddr,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

// === impl Access ===

impl Access {
    /// The rules of `api`; reads `api.token_file`.
    pub fn from_config(api: &ApiConfig) -> Result<Self> {
        let (tokens, token_file) = match &api.token_file {
            None => (Vec::new(), None),
            Some(path) => (read_tokens(path)?, Some(path.display().to_string())),
        };
        Ok(Self::new(
            api.allowed_networks.clone(),
            api.trust_proxy_headers,
            tokens,
            token_file,
        ))
    }

    /// Rules from their parts (tests).
    pub fn new(
        allowed: Vec<IpNet>,
        trust_proxy_headers: bool,
        tokens: Vec<(String, String)>,
        token_file: Option<String>,
    ) -> Self {
        Self {
            allowed,
            trust_proxy_headers,
            tokens,
            token_file,
            limiter: Mutex::new(HashMap::new()),
        }
    }

    /// The client of a request from `peer`: the peer itself, or, when proxy
    /// headers are trusted, the first address of `X-Forwarded-For`.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trust_proxy_headers {
            return peer;
        }
        forwarded_for
            .and_then(|v| v.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok())
            .unwrap_or(peer)
    }

    /// Refuses clients outside `allowed_networks`, and clients over their
    /// request rate.
    pub fn admit(&self, client: IpAddr) -> Result<(), ApiError> {
        let client = canonical(client);
        if !self.allowed.iter().any(|n| n.contains(&client)) {
            return Err(ApiError::Forbidden(format!(
                "client {client} is not in api.allowed_networks"
            )));
        }
        if !self.take(client) {
            return Err(ApiError::TooManyRequests(
                "too many requests; slow down".into(),
            ));
        }
        Ok(())
    }

    /// Checks the `Authorization` header (or gRPC metadata) of a change;
    /// returns the caller's identity.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<String, ApiError> {
        if self.tokens.is_empty() {
            return Err(ApiError::Forbidden(
                "changes are disabled: no api.token_file is configured".into(),
            ));
        }
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized(
                "this change needs an 'Authorization: Bearer <token>' header".into(),
            ));
        };
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or_default();
        // Compare against every token, without an early exit.
        let mut found = None;
        for (who, token) in &self.tokens {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(who.clone());
            }
        }
        found.ok_or_else(|| ApiError::Unauthorized("invalid bearer token".into()))
    }

    /// Every change-level token, `(identity, token)` (the sealed DNSSEC
    /// key export checks its MAC against each).
    pub fn change_tokens(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tokens.iter().map(|(w, t)| (w.as_str(), t.as_str()))
    }

    /// The token file in force, if any.
    pub fn token_file(&self) -> Option<&str> {
        self.token_file.as_deref()
    }

    fn take(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CLIENTS && !map.contains_key(&client) {
            map.retain(|_, b| now.duration_since(b.at).as_secs_f64() * RATE_PER_SECOND < BURST);
        }
        let b = map.entry(client).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * RATE_PER_SECOND;
        b.tokens = (b.tokens + refill).min(BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// IPv4-mapped IPv6 clients are checked as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a token file: a clear error when missing, empty or readable by
/// others.
fn read_tokens(path: &Path) -> Result<Vec<(String, String)>> {
    let fail = |why: String| {
        Error::Config(crate::config::ConfigError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(format!("api.token_file: {why}")),
        })
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(fail(
                "readable by others; chmod 600 (or 640) the token file".into(),
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let tokens: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(':') {
            Some((who, token)) if !who.trim().is_empty() => {
                (who.trim().to_owned(), token.trim().to_owned())
            }
            _ => ("api".to_owned(), l.to_owned()),
        })
        .filter(|(_, t)| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Err(fail("holds no token".into()));
    }
    if let Some((who, _)) = tokens.iter().find(|(_, t)| t.len() < 16) {
        return Err(fail(format!(
            "the token of {who:?} is shorter than 16 characters"
        )));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(trust: bool) -> Access {
        Access::new(
            vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()],
            trust,
            vec![
                ("api".into(), "0123456789abcdef".into()),
                ("alice".into(), "alice-token-0123456".into()),
            ],
            None,
        )
    }

    #[test]
    fn allowlist_and_proxy_headers() {
        let a = access(false);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(a.admit(local).is_ok());
        assert!(a.admit("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(matches!(a.admit(far), Err(ApiError::Forbidden(_))));
        // Not trusted: the header is ignored.
        assert_eq!(a.client(far, Some("127.0.0.1")), far);
        let t = access(true);
        assert_eq!(t.client(far, Some("127.0.0.1, 10.0.0.1")), local);
        assert_eq!(t.client(far, Some("garbage")), far);
    }

    #[test]
    fn tokens() {
        let a = access(false);
        assert_eq!(a.authorize(Some("Bearer 0123456789abcdef")).unwrap(), "api");
        assert_eq!(
            a.authorize(Some("Bearer alice-token-0123456")).unwrap(),
            "alice"
        );
        assert!(matches!(a.authorize(None), Err(ApiError::Unauthorized(_))));
        assert!(matches!(
            a.authorize(Some("Bearer nope")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.authorize(Some("0123456789abcdef")),
            Err(ApiError::Unauthorized(_))
        ));
        let none = Access::new(Vec::new(), false, Vec::new(), None);
        assert!(matches!(
            none.authorize(Some("Bearer x")),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn rate_limited() {
        let a = access(false);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mut refused = 0;
        for _ in 0..(BURST as usize + 50) {
            if a.admit(local).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 40, "{refused}");
        assert!(a.admit("::1".parse().unwrap()).is_ok(), "per client");
    }

    #[test]
    fn token_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let missing = read_tokens(&path).unwrap_err().to_string();
        assert!(missing.contains("api.token_file"), "{missing}");
        std::fs::write(
            &path,
            "# ops\nalice: alice-token-0123456\n0123456789abcdef\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = read_tokens(&path).unwrap_err().to_string();
        assert!(open.contains("readable by others"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tokens = read_tokens(&path).unwrap();
        assert_eq!(tokens[0], ("alice".into(), "alice-token-0123456".into()));
        assert_eq!(tokens[1].0, "api");
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_tokens(&path).unwrap_err().to_string().contains("16"));
    }
}
