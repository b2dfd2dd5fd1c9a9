//! Errors of the controlplane library. Binaries wrap them in `anyhow`.

/// Controlplane errors outside config parsing (which has its own
/// `config::ConfigError` that names file, line and key).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// Health checking could not be set up.
    #[error("health checks: {0}")]
    Health(#[from] opengslb_health::Error),
    /// DNSSEC keys could not be made, read or used.
    #[error("dnssec: {0}")]
    Dnssec(String),
    /// The GeoIP database could not be read (file and reason).
    #[error("{0}")]
    Geo(#[from] crate::geo::GeoDbError),
    /// The metrics registry could not be set up.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A listener could not be started.
    #[error("listen on {addr}: {message}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
