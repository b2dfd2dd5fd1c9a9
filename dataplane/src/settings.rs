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
    /// A limited network is logged at most once per this many seconds
    /// (0 = never); see [`crate::rrl::LOG_LINES_PER_INTERVAL`].
    pub log_interval_secs: u64,
}

/// RFC 7766 connection handling.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpSettings {
    /// Close a connection idle this long between queries.
    pub idle_timeout_ms: u64,
    /// Limit for one message: from its first octet to its last (so a slow
    /// sender cannot hold a slot), and for one write.
    pub io_timeout_ms: u64,
    /// Concurrent connections in total; more are closed at once.
    pub max_connections: usize,
    /// Concurrent connections per TCP worker (one accept loop per worker
    /// and listen address); 0 = the same as `max_connections`.
    pub max_connections_per_worker: usize,
    /// Replies queued per connection before they must be written (a client
    /// that pipelines and never reads is closed after `io_timeout_ms`).
    pub max_output_bytes: usize,
    /// Past this share of a cap (percent), a new connection gets one query
    /// answered and is closed; 100 = never.
    pub one_shot_percent: u8,
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
        if self.tcp.io_timeout_ms == 0 || self.tcp.idle_timeout_ms == 0 {
            return fail("tcp: idle_timeout_ms and io_timeout_ms must be at least 1");
        }
        if self.tcp.max_output_bytes < 512 {
            return fail("tcp.max_output_bytes: must be at least 512");
        }
        if !(1..=100).contains(&self.tcp.one_shot_percent) {
            return fail("tcp.one_shot_percent: must be 1 to 100");
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

    /// Every abuse limit as (name, value), for the `opengslb_limit` gauge.
    pub fn limit_gauges(&self) -> Vec<(&'static str, u64)> {
        let n = |v: usize| v as u64;
        let workers = self.worker_count();
        vec![
            ("tcp_max_connections", n(self.tcp.max_connections)),
            (
                "tcp_max_connections_per_worker",
                n(self.tcp.per_worker_cap()),
            ),
            ("tcp_workers", n(workers * self.listen_addresses.len())),
            ("tcp_idle_timeout_ms", self.tcp.idle_timeout_ms),
            ("tcp_io_timeout_ms", self.tcp.io_timeout_ms),
            ("tcp_max_output_bytes", n(self.tcp.max_output_bytes)),
            ("tcp_one_shot_percent", u64::from(self.tcp.one_shot_percent)),
            ("rrl_enabled", u64::from(self.rrl.enabled)),
            (
                "rrl_responses_per_second",
                u64::from(self.rrl.responses_per_second),
            ),
            ("rrl_ipv4_prefix", u64::from(self.rrl.ipv4_prefix)),
            ("rrl_ipv6_prefix", u64::from(self.rrl.ipv6_prefix)),
            ("rrl_slip", u64::from(self.rrl.slip)),
            ("rrl_window_secs", self.rrl.window_secs),
            ("rrl_log_interval_secs", self.rrl.log_interval_secs),
            ("rrl_table_buckets_per_worker", n(crate::rrl::TABLE)),
            ("cookies_enabled", u64::from(self.cookies.enabled)),
            ("cookies_rotate_secs", self.cookies.rotate_secs),
        ]
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
            max_connections_per_worker: 0,
            max_output_bytes: 65_536,
            one_shot_percent: 90,
        }
    }
}

impl TcpSettings {
    /// Idle timeout between queries.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Timeout for one message (first octet to last) or one write.
    pub fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.io_timeout_ms)
    }

    /// The per-worker cap with 0 resolved.
    pub fn per_worker_cap(&self) -> usize {
        match self.max_connections_per_worker {
            0 => self.max_connections,
            n => n.min(self.max_connections),
        }
    }

    /// Open connections at or past which a new one is one-shot, for `cap`.
    pub fn one_shot_at(&self, cap: usize) -> usize {
        (cap * usize::from(self.one_shot_percent.min(100))).div_ceil(100)
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
            log_interval_secs: 60,
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
            r#"{"tcp": {"io_timeout_ms": 0}}"#,
            r#"{"tcp": {"max_output_bytes": 100}}"#,
            r#"{"tcp": {"one_shot_percent": 0}}"#,
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
