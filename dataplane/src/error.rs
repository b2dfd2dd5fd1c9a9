//! Start-up and control-stream errors. Hot-path errors are small `Copy`
//! enums in `wire` and never go through this type.

/// Errors of the dataplane outside the answer path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bootstrap file is unreadable or invalid.
    #[error("{file}: {message}")]
    Config {
        /// `file[:line:column]`
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A snapshot failed validation.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(#[from] crate::snapshot::InvalidSnapshot),
    /// The snapshot cache could not be read or written.
    #[error("snapshot cache {path}: {message}")]
    Cache {
        /// Cache file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A socket could not be set up.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
