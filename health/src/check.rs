//! What to probe and how: [`Check`] (the settings) and [`Target`] (an
//! address with its check). Two servers with the same address, port and
//! settings are one target and are probed once.

use std::{net::SocketAddr, time::Duration};

use crate::error::{Error, Result};

/// Probe kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// HTTP/1.1 GET.
    Http,
    /// HTTP/1.1 GET over TLS.
    Https,
    /// TCP connect only.
    Tcp,
}

/// The settings of one check (OpenGSLB's `health_check` keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    /// Probe kind.
    pub kind: CheckKind,
    /// HTTP(S) path.
    pub path: String,
    /// Host header and TLS SNI; the address when unset.
    pub host: Option<String>,
    /// Time between probes.
    pub interval: Duration,
    /// Bound on one probe, connect to last body byte; < `interval`.
    pub timeout: Duration,
    /// Consecutive failures that make a healthy target unhealthy (≥ 1).
    pub failure_threshold: u32,
    /// Consecutive successes that make an unhealthy target healthy (≥ 1).
    pub success_threshold: u32,
    /// Accepted status codes; empty = any 2xx.
    pub expected_status: Vec<u16>,
    /// The (capped) body must contain this.
    pub body_contains: Option<String>,
    /// Verify the server certificate (https).
    pub tls_verify: bool,
}

/// One distinct thing to probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Address and port probed.
    pub addr: SocketAddr,
    /// How.
    pub check: Check,
}

// === impl Check ===

impl Default for Check {
    /// OpenGSLB's defaults: http, `/health`, every 30s, 5s timeout, 3/2.
    fn default() -> Self {
        Self {
            kind: CheckKind::Http,
            path: "/health".to_owned(),
            host: None,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            failure_threshold: 3,
            success_threshold: 2,
            expected_status: Vec::new(),
            body_contains: None,
            tls_verify: true,
        }
    }
}

impl Check {
    /// Refuses settings a scheduler cannot honour.
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(Error::InvalidCheck("interval must be positive"));
        }
        if self.timeout.is_zero() || self.timeout >= self.interval {
            return Err(Error::InvalidCheck(
                "timeout must be positive and < interval",
            ));
        }
        if self.failure_threshold == 0 || self.success_threshold == 0 {
            return Err(Error::InvalidCheck("thresholds must be at least 1"));
        }
        if !self.path.starts_with('/') {
            return Err(Error::InvalidCheck("path must start with /"));
        }
        Ok(())
    }

    /// Whether `status` counts as a success.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_status.contains(&status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_accept_2xx_only() {
        let c = Check::default();
        c.validate().unwrap();
        assert!(c.accepts(200) && c.accepts(204) && c.accepts(299));
        assert!(!c.accepts(199) && !c.accepts(301) && !c.accepts(500));
        let c = Check {
            expected_status: vec![200, 301],
            ..Check::default()
        };
        assert!(c.accepts(301) && !c.accepts(204));
    }

    #[test]
    fn unusable_settings_are_refused() {
        for bad in [
            Check {
                timeout: Duration::from_secs(30),
                ..Check::default()
            },
            Check {
                failure_threshold: 0,
                ..Check::default()
            },
            Check {
                success_threshold: 0,
                ..Check::default()
            },
            Check {
                path: "health".into(),
                ..Check::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
