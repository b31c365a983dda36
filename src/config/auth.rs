//! Signing people in and registering clients: passwords (bcrypt's 72-byte limit included),
//! lifetimes, lockout, redirect schemes, client ID metadata documents.

use std::time::Duration;

use super::{ConfigError, ProvidersConfig, Secret, bad, parse_duration, providers_config};
use crate::cli::Cli;

/// Sign-in and token issuance settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Plain `--password`, kept only until it is hashed at startup.
    pub password: Option<Secret>,
    /// `--password-hash` values (bcrypt).
    pub password_hashes: Vec<Secret>,
    pub password_user: String,
    /// `--require-passkey`.
    pub require_passkey: bool,
    pub login_max_failures: u32,
    pub login_failure_window: Duration,
    pub login_lockout: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_grace: Duration,
    pub auth_code_ttl: Duration,
    pub client_ttl: Duration,
    pub login_session_ttl: Duration,
    /// Lower-case private-use schemes allowed in redirect URIs.
    pub redirect_schemes: Vec<String>,
    pub providers: ProvidersConfig,
    /// Client ID metadata documents: off (`--no-cimd`) or on.
    pub cimd: Option<CimdOptions>,
}

/// How client ID metadata documents are fetched.
#[derive(Debug, Clone, Default)]
pub struct CimdOptions {
    /// Lower-case hosts exempt from the public-address rule.
    pub allow_hosts: Vec<String>,
    /// Extra trusted CA certificates (PEM), read at startup.
    pub ca_pem: Option<Vec<u8>>,
}

impl AuthConfig {
    /// Whether password sign-in is configured.
    pub fn has_password(&self) -> bool {
        self.password.is_some() || !self.password_hashes.is_empty()
    }
}

/// Schemes that never make a redirect URI, whatever the allow-list says.
const FORBIDDEN_SCHEMES: [&str; 7] = [
    "javascript",
    "data",
    "file",
    "vbscript",
    "blob",
    "about",
    "ftp",
];

/// bcrypt reads at most this many bytes of a password and ignores the rest. A longer
/// password is refused where it is configured and never matches at sign-in: otherwise its
/// first 72 bytes followed by anything would sign in.
pub const BCRYPT_MAX_BYTES: usize = 72;

/// Why a password cannot be used with bcrypt, if it cannot (checked where a password is
/// configured; sign-in refuses longer attempts by the same constant).
pub fn check_password_length(password: &str) -> Result<(), PasswordTooLong> {
    match password.len() {
        bytes if bytes > BCRYPT_MAX_BYTES => Err(PasswordTooLong { bytes }),
        _ => Ok(()),
    }
}

/// A password longer than bcrypt reads.
#[derive(Debug, thiserror::Error)]
#[error(
    "the password is {bytes} bytes long; bcrypt checks only the first {BCRYPT_MAX_BYTES}, so \
     anything after them would be ignored: choose one of at most {BCRYPT_MAX_BYTES} bytes"
)]
pub struct PasswordTooLong {
    pub bytes: usize,
}

/// `--password-file`: the first line of a file that only its owner may read (a secret others
/// can read is no secret; a symlink is followed, and the file it names is what is checked).
pub(super) fn read_password_file(
    path: &std::path::Path,
) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("--password-file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(bad(format!("--password-file {shown} is not a file")));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "--password-file {shown} can be read by others (mode {:o}); run: chmod 600 {shown}",
            meta.permissions().mode() & 0o777
        )));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| bad(format!("--password-file {shown}: {e}")))?,
    );
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(bad(format!("--password-file {shown} is empty")));
    }
    Ok(zeroize::Zeroizing::new(line.to_string()))
}

pub(super) fn auth_config(cli: &Cli) -> Result<AuthConfig, ConfigError> {
    let from_file = cli
        .password_file
        .as_deref()
        .map(read_password_file)
        .transpose()?;
    let given = cli.password.as_deref().filter(|p| !p.is_empty());
    if given.is_some() && from_file.is_some() {
        return Err(bad(
            "give the password once: --password (PASSWORD) or --password-file (PASSWORD_FILE)",
        ));
    }
    let password = given
        .or(from_file.as_deref().map(|p| p.as_str()))
        .map(|p| match check_password_length(p) {
            Err(why) => Err(bad(format!(
                "--password (PASSWORD): {why}, or give its hash with --password-hash"
            ))),
            Ok(()) => Ok(Secret::new(p)),
        })
        .transpose()?;
    let password_hashes = cli
        .password_hash
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(|h| {
            if bcrypt_shaped(h) {
                Ok(Secret::new(h))
            } else {
                Err(bad(
                    "--password-hash is not a bcrypt hash ($2b$…); make one with: mcp-auth-proxy hash-password",
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let providers = providers_config(cli)?;
    if password.is_none() && password_hashes.is_empty() && providers.count() == 0 {
        return Err(bad(
            "no way to sign in is configured; set --password (PASSWORD), --password-hash (PASSWORD_HASH) or a sign-in provider (--google-client-id, --github-client-id, --oidc-configuration-url)",
        ));
    }
    let password_user = cli.password_user.trim().to_string();
    if password_user.is_empty() || password_user.contains(char::is_whitespace) {
        return Err(bad(
            "--password-user must be a non-empty name without spaces",
        ));
    }
    if cli.login_max_failures == 0 {
        return Err(bad("--login-max-failures must be at least 1"));
    }
    let redirect_schemes = cli
        .allowed_redirect_schemes
        .iter()
        .map(|s| s.trim().trim_end_matches("://").trim_end_matches(':').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let valid = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                Err(bad(format!("--allowed-redirect-schemes entry {s:?} is not a URI scheme")))
            } else if FORBIDDEN_SCHEMES.contains(&s.as_str()) || s == "http" || s == "https" {
                Err(bad(format!(
                    "--allowed-redirect-schemes cannot list {s:?}: it is either never allowed or governed by its own rule"
                )))
            } else {
                Ok(s)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let d = |flag: &str, v: &str| -> Result<Duration, ConfigError> {
        let d = parse_duration(flag, v)?;
        if d.is_zero() {
            return Err(bad(format!("{flag} must be longer than zero")));
        }
        Ok(d)
    };
    Ok(AuthConfig {
        password,
        password_hashes,
        password_user,
        require_passkey: cli.require_passkey,
        login_max_failures: cli.login_max_failures,
        login_failure_window: d("--login-failure-window", &cli.login_failure_window)?,
        login_lockout: d("--login-lockout", &cli.login_lockout)?,
        access_token_ttl: d("--access-token-ttl", &cli.access_token_ttl)?,
        refresh_token_ttl: d("--refresh-token-ttl", &cli.refresh_token_ttl)?,
        refresh_grace: parse_duration("--refresh-grace", &cli.refresh_grace)?,
        auth_code_ttl: d("--auth-code-ttl", &cli.auth_code_ttl)?,
        client_ttl: d("--client-ttl", &cli.client_ttl)?,
        login_session_ttl: d("--login-session-ttl", &cli.login_session_ttl)?,
        redirect_schemes,
        providers,
        cimd: cimd_options(cli)?,
    })
}

pub(super) fn cimd_options(cli: &Cli) -> Result<Option<CimdOptions>, ConfigError> {
    if cli.no_cimd {
        return Ok(None);
    }
    let ca_pem = match &cli.cimd_ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| bad(format!("--cimd-ca-file {}: {e}", path.display())))?;
            if reqwest::Certificate::from_pem_bundle(&pem).is_err() || !pem.starts_with(b"-----") {
                return Err(bad(format!(
                    "--cimd-ca-file {}: not PEM certificates",
                    path.display()
                )));
            }
            Some(pem)
        }
        None => None,
    };
    let allow_hosts = cli
        .cimd_allow_hosts
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .map(|h| {
            let host = h.trim_start_matches('[').trim_end_matches(']');
            if url::Host::parse(host).is_err() || h.contains(['/', ':']) && !h.starts_with('[') {
                Err(bad(format!(
                    "--cimd-allow-hosts entry {h:?} is not a host name (no scheme, port or path)"
                )))
            } else {
                Ok(h)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(CimdOptions {
        allow_hosts,
        ca_pem,
    }))
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, and 53 more characters.
pub(super) fn bcrypt_shaped(h: &str) -> bool {
    let b = h.as_bytes();
    h.len() == 60
        && (h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$"))
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}
