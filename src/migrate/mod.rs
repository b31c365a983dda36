//! `mcp-auth-proxy migrate --from <source>`: brings what can be reused from elsewhere into our
//! store, and says plainly what cannot. The proxy must not be running on the same data
//! directory (the store's lock refuses a second opener).
//!
//! Sources: `sigbit:<dir>`, the data directory of sigbit/mcp-auth-proxy ([`sigbit`]); or a
//! data directory of ours, copied into PostgreSQL with `--to` ([`data_dir`]).

pub mod data_dir;
pub mod sigbit;

use std::path::PathBuf;

use crate::assertion::AssertionError;
use crate::store::{KeyError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "--from {0:?}: expected a data directory of ours (with --to postgres://…) or sigbit:<directory> (the data directory of sigbit/mcp-auth-proxy)"
    )]
    UnknownSource(String),
    #[error(
        "--from {0}: copying a data directory of ours needs --to postgres://… (or --to postgres with REPOSITORY_DSN set)"
    )]
    NoDestination(String),
    #[error("{}: {why}", path.display())]
    Source { path: PathBuf, why: Unusable },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Assertion(#[from] AssertionError),
}

/// What is wrong with a file or directory we were asked to bring over.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("no private_key.pem and no certs/ here: not a data directory of sigbit/mcp-auth-proxy")]
    NotSigbit,
    #[error("no store/ here: not a data directory of mcp-auth-proxy")]
    NotOurs,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {0} bytes; not a file we know")]
    TooLarge(u64),
    #[error("not a PEM text")]
    NotPem,
    #[error("no private key in the file: {0}")]
    NoKey(rustls::pki_types::pem::Error),
    #[error("the key is not an ECDSA P-256 key")]
    KeyKind,
    #[error("the key is not an ECDSA P-256 key: {0}")]
    KeyRejected(aws_lc_rs::error::KeyRejected),
    #[error("the key cannot be re-encoded")]
    KeyEncoding,
    #[error("a certificate in the file cannot be read: {0}")]
    CertificatePem(rustls::pki_types::pem::Error),
    #[error("the file holds no certificate")]
    NoCertificate,
    #[error("the certificate cannot be read: {0}")]
    Certificate(x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error(
        "the certificate is not valid now (valid {from} to {until}); leave it, one is ordered at the first start"
    )]
    NotValidNow { from: String, until: String },
}

impl MigrateError {
    /// `why` as the problem of the file at `path`.
    pub(crate) fn source(path: &std::path::Path) -> impl FnOnce(Unusable) -> Self {
        let path = path.to_path_buf();
        move |why| Self::Source { path, why }
    }
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
    /// A data directory of ours (its embedded store).
    DataDir(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = MigrateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("sigbit", dir)) if !dir.is_empty() => Ok(Source::Sigbit(PathBuf::from(dir))),
            _ if !s.trim().is_empty() => Ok(Source::DataDir(PathBuf::from(s))),
            _ => Err(MigrateError::UnknownSource(s.to_string())),
        }
    }
}

/// Reads a file of at most `limit` bytes (the files we migrate are small; anything larger is
/// not what we expect).
fn read_bounded(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, MigrateError> {
    use std::io::Read;
    let read = || {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(limit + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(Unusable::TooLarge(limit));
        }
        Ok(bytes)
    };
    read().map_err(MigrateError::source(path))
}
