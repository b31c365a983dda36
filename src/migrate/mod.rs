//! `mcp-auth-proxy migrate --from <source>`: brings what can be reused from elsewhere into our
//! store, and says plainly what cannot. The proxy must not be running on the same data
//! directory (the store's lock refuses a second opener).
//!
//! Sources: `sigbit:<dir>`, the data directory of sigbit/mcp-auth-proxy ([`sigbit`]).

pub mod sigbit;

use std::path::PathBuf;

use crate::assertion::AssertionError;
use crate::store::{KeyError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "--from {0:?}: expected sigbit:<directory> (the data directory of sigbit/mcp-auth-proxy)"
    )]
    UnknownSource(String),
    #[error("{}: {why}", path.display())]
    Source { path: PathBuf, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Assertion(#[from] AssertionError),
}

/// What a migration brought over and what it left, one sentence each, for a person.
#[derive(Debug, Default)]
pub struct Report {
    pub brought: Vec<String>,
    pub left: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.brought.is_empty() {
            writeln!(f, "Nothing was brought over.")?;
        } else {
            writeln!(f, "Brought over:")?;
            for line in &self.brought {
                writeln!(f, "  - {line}")?;
            }
        }
        if !self.left.is_empty() {
            writeln!(f, "Not brought over:")?;
            for line in &self.left {
                writeln!(f, "  - {line}")?;
            }
        }
        Ok(())
    }
}

/// Where `--from` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Sigbit(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = MigrateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("sigbit", dir)) if !dir.is_empty() => Ok(Source::Sigbit(PathBuf::from(dir))),
            _ => Err(MigrateError::UnknownSource(s.to_string())),
        }
    }
}

/// Reads a file of at most `limit` bytes (the files we migrate are small; anything larger is
/// not what we expect).
fn read_bounded(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, MigrateError> {
    use std::io::Read;
    let source = |why: String| MigrateError::Source {
        path: path.to_path_buf(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| source(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| source(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(source(format!(
            "larger than {limit} bytes; not a file we know"
        )));
    }
    Ok(bytes)
}
