//! The dataplane's own settings: where it listens, which controlplanes it
//! follows, where it caches the last good snapshot, how many workers it runs.
//!
//! The dataplane never reads the operator's YAML: these few bootstrap values
//! come from a small JSON file (`--config`, rendered from the YAML's `dns:` and
//! `dataplane:` sections by `opengslb-controlplane dataplane-config`) and/or
//! command-line flags, which win over the file. Everything else — zones,
//! records, policies, health — arrives in the snapshot stream.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Bootstrap settings, as read from the JSON file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSettings {
    /// UDP and TCP listen addresses (IPv4 and/or IPv6).
    pub listen_addresses: Vec<SocketAddr>,
    /// UDP workers, one `SO_REUSEPORT` socket each per listen address; 0 = one per CPU.
    pub workers: usize,
    /// Controlplane snapshot-stream endpoints (`host:port` or `http://host:port`).
    pub controlplanes: Vec<String>,
    /// Directory holding the last good snapshot.
    pub cache_dir: PathBuf,
    /// Prometheus text endpoint; `None` disables it.
    pub metrics_address: Option<SocketAddr>,
    /// Node id sent to controlplanes.
    pub node_id: String,
    /// TCP limits (RFC 7766).
    pub tcp: TcpSettings,
    /// `logging.level` / `logging.format`.
    pub logging: LoggingSettings,
    /// Response rate limiting (UDP).
    pub rrl: RrlSettings,
    /// DNS cookies (RFC 7873, RFC 9018).
    pub cookies: CookiesSettings,
}

/// DNS cookies ([`crate::cookie`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CookiesSettings {
    /// On by default.
    pub enabled: bool,
    /// Master secret (16 octets), created mode 0600 if missing; `None`: a
    /// random secret per process (cookies then do not survive a restart
    /// nor work across anycast nodes).
    pub secret_file: Option<PathBuf>,
    /// Secret rotation period in seconds.
    pub rotate_secs: u64,
}

/// Response rate limiting ([`crate::rrl`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RrlSettings {
    /// On by default.
    pub enabled: bool,
    /// Responses per second per client network and response kind.
    pub responses_per_second: u32,
    /// IPv4 client network prefix length.
    pub ipv4_prefix: u8,
    /// IPv6 client network prefix length.
    pub ipv6_prefix: u8,
    /// Every n-th limited response goes out truncated (TC=1); 0 = drop all.
    pub slip: u32,
    /// Longest debt a limited network carries, in seconds.
    pub window_secs: u64,
    /// Networks never limited (`addr/prefix`).
    pub exempt: Vec<String>,
}

/// RFC 7766 connection handling.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpSettings {
    /// Close a connection idle this long between queries.
    pub idle_timeout_ms: u64,
    /// Limit for reading the rest of a started message, and for a write.
    pub io_timeout_ms: u64,
    /// Concurrent connections; more are closed at once.
    pub max_connections: usize,
}

/// Log level and format.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    /// debug | info | warn | error
    pub level: String,
    /// json | text
    pub format: String,
}

// === impl DataplaneSettings ===

impl Default for DataplaneSettings {
    fn default() -> Self {
        Self {
            listen_addresses: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            workers: 0,
            controlplanes: vec!["127.0.0.1:9443".to_string()],
            cache_dir: PathBuf::from("/var/lib/opengslb/dataplane"),
            metrics_address: None,
            node_id: String::new(),
            tcp: TcpSettings::default(),
            logging: LoggingSettings::default(),
            rrl: RrlSettings::default(),
            cookies: CookiesSettings::default(),
        }
    }
}

impl DataplaneSettings {
    /// Reads the JSON bootstrap file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses the JSON bootstrap text; errors name file:line:column.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self> {
        let settings: Self = serde_json::from_str(text).map_err(|e| Error::Config {
            file: format!("{}:{}:{}", path.display(), e.line(), e.column()),
            message: e.to_string(),
        })?;
        settings.validate(path)?;
        Ok(settings)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self, path: &std::path::Path) -> Result<()> {
        let fail = |message: &str| {
            Err(Error::Config {
                file: path.display().to_string(),
                message: message.to_string(),
            })
        };
        if self.listen_addresses.is_empty() {
            return fail("listen_addresses: at least one address is required");
        }
        if self.controlplanes.is_empty() {
            return fail("controlplanes: at least one controlplane is required");
        }
        if self.tcp.max_connections == 0 {
            return fail("tcp.max_connections: must be at least 1");
        }
        if self.rrl.ipv4_prefix > 32 || self.rrl.ipv6_prefix > 128 {
            return fail("rrl: ipv4_prefix is at most 32, ipv6_prefix at most 128");
        }
        if let Some(bad) = self
            .rrl
            .exempt
            .iter()
            .find(|n| crate::rrl::Net::parse(n).is_none())
        {
            return fail(&format!("rrl.exempt: {bad:?} is not an address/prefix"));
        }
        if self.cookies.rotate_secs == 0 {
            return fail("cookies.rotate_secs: must be at least 1");
        }
        if !["debug", "info", "warn", "error", "trace"].contains(&self.logging.level.as_str()) {
            return fail("logging.level: expected debug, info, warn or error");
        }
        if !["json", "text"].contains(&self.logging.format.as_str()) {
            return fail("logging.format: expected json or text");
        }
        Ok(())
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Controlplane endpoints as URIs tonic accepts.
    pub fn controlplane_uris(&self) -> Vec<String> {
        self.controlplanes
            .iter()
            .map(|c| {
                if c.starts_with("http://") || c.starts_with("https://") {
                    c.clone()
                } else {
                    format!("http://{c}")
                }
            })
            .collect()
    }
}

// === impl TcpSettings ===

impl Default for TcpSettings {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 10_000,
            io_timeout_ms: 500,
            max_connections: 1024,
        }
    }
}

impl TcpSettings {
    /// Idle timeout between queries.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Timeout for a started read or a write.
    pub fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.io_timeout_ms)
    }
}

// === impl RrlSettings ===

impl Default for RrlSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            responses_per_second: 50,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            slip: 2,
            window_secs: 15,
            exempt: vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
        }
    }
}

// === impl CookiesSettings ===

impl Default for CookiesSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            secret_file: None,
            rotate_secs: 86_400,
        }
    }
}

// === impl LoggingSettings ===

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: "text".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = DataplaneSettings::parse(
            r#"{"listen_addresses": ["127.0.0.1:5353", "[::1]:5353"], "workers": 2}"#,
            std::path::Path::new("dp.json"),
        )
        .unwrap();
        assert_eq!(s.listen_addresses.len(), 2);
        assert_eq!(s.worker_count(), 2);
        assert_eq!(s.tcp.max_connections, 1024);
        assert_eq!(s.controlplane_uris(), vec!["http://127.0.0.1:9443"]);
    }

    #[test]
    fn unknown_key_names_line() {
        let err = DataplaneSettings::parse(
            "{\n  \"workers\": 1,\n  \"wokers\": 2\n}",
            std::path::Path::new("dp.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dp.json:3:"), "{err}");
        assert!(err.contains("wokers"), "{err}");
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            r#"{"listen_addresses": []}"#,
            r#"{"controlplanes": []}"#,
            r#"{"logging": {"level": "loud", "format": "text"}}"#,
            r#"{"tcp": {"max_connections": 0}}"#,
            r#"{"rrl": {"exempt": ["10.0.0.0/40"]}}"#,
            r#"{"rrl": {"ipv4_prefix": 33}}"#,
        ] {
            assert!(
                DataplaneSettings::parse(bad, std::path::Path::new("x")).is_err(),
                "{bad}"
            );
        }
    }
}
