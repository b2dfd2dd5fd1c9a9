//! Set-up errors. Probe failures are [`crate::Failure`], a small `Copy` enum.

/// Errors while setting up checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS client configuration could not be built.
    #[error("tls client configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A check's settings are unusable.
    #[error("invalid check: {0}")]
    InvalidCheck(&'static str),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
