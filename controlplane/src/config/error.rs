//! Config errors: every one names the file, the line and the key path.

use std::fmt;
use std::path::PathBuf;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The config is invalid; every problem found is listed, one per line.
    #[error("{}", IssueList(.0))]
    Invalid(Vec<ConfigIssue>),
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file the problem is in (an included file where it is there).
    pub file: PathBuf,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// Key path, e.g. `domains[0].routing_algorithm` (`.` for the document).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

struct IssueList<'a>(&'a [ConfigIssue]);

// === impl ConfigError ===

impl ConfigError {
    /// The problems found, empty for an I/O error.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            Self::Io { .. } => &[],
            Self::Invalid(issues) => issues,
        }
    }
}

// === impl ConfigIssue ===

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
        }
        write!(f, " {}: {}", self.key, self.message)
    }
}

impl fmt::Display for IssueList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}
