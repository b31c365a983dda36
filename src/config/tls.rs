//! HTTPS: certificate files, or a certificate from an ACME CA, and the rule that picks one
//! (docs/design.md, "Compatibility with sigbit/mcp-auth-proxy").

use std::path::PathBuf;

use super::{ConfigError, ListenAddr, PublicOrigin, bad, url_flag};
use crate::cli::Cli;

/// Where HTTPS certificates come from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files, reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// An ACME CA (Let's Encrypt by default).
    Acme(AcmeOptions),
}

/// How the ACME certificate is obtained.
#[derive(Debug, Clone)]
pub struct AcmeOptions {
    /// The certificate's first name (the external URL's host, or `--tls-host`).
    pub host: String,
    /// Its other names: the hosts of the servers of `--config` routed by host name.
    pub more_hosts: Vec<String>,
    pub directory_url: String,
    pub contact: Option<String>,
    pub directory_ca_file: Option<PathBuf>,
    /// HTTP-01 on the plain listener instead of TLS-ALPN-01 on the TLS listener.
    pub http01: bool,
}

impl AcmeOptions {
    /// Every name of the certificate, the first one first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.host.clone())
            .chain(self.more_hosts.iter().cloned())
            .collect()
    }
}

/// HTTPS settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: ListenAddr,
    pub source: TlsSource,
}

/// The TLS rule (docs/design.md, "Compatibility with sigbit/mcp-auth-proxy"): certificate files win; otherwise ACME for an https external
/// URL whose host is not localhost (unless `--no-auto-tls`), or when `--tls-host` is given.
pub(super) fn tls_config(
    cli: &Cli,
    external: Option<&PublicOrigin>,
) -> Result<Option<TlsConfig>, ConfigError> {
    let listen = || ListenAddr::parse(&cli.tls_listen);
    match (&cli.tls_cert_file, &cli.tls_key_file) {
        (Some(cert), Some(key)) => {
            return Ok(Some(TlsConfig {
                listen: listen()?,
                source: TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
            }));
        }
        (Some(_), None) => return Err(bad("--tls-cert-file needs --tls-key-file")),
        (None, Some(_)) => return Err(bad("--tls-key-file needs --tls-cert-file")),
        (None, None) => {}
    }
    let explicit_host = cli
        .tls_host
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty());
    if let Some(h) = explicit_host
        && cli.no_auto_tls
    {
        return Err(bad(format!(
            "--tls-host {h} asks for an ACME certificate and --no-auto-tls says not to: drop one of them"
        )));
    }
    let auto = external.filter(|o| {
        o.is_https() && !o.host().eq_ignore_ascii_case("localhost") && !cli.no_auto_tls
    });
    let host = match (explicit_host, auto) {
        (Some(h), _) => h.to_ascii_lowercase(),
        (None, Some(o)) => o.host(),
        (None, None) => return Ok(None),
    };
    if !cli.tls_accept_tos {
        return Err(bad(format!(
            "automatic HTTPS for {host} uses an ACME CA ({}): pass --tls-accept-tos to accept its terms of service (or --no-auto-tls, or --tls-cert-file/--tls-key-file)",
            cli.tls_directory_url
        )));
    }
    if host.parse::<std::net::IpAddr>().is_ok() || !host.contains('.') {
        return Err(bad(format!(
            "ACME needs a public DNS name; {host:?} is not one (use --tls-cert-file for it)"
        )));
    }
    let directory_url = url_flag("--tls-directory-url", &cli.tls_directory_url)?;
    let http01 = match cli.tls_challenge.trim().to_ascii_lowercase().as_str() {
        "tls-alpn-01" | "" => false,
        "http-01" => true,
        other => {
            return Err(bad(format!(
                "--tls-challenge {other:?} is unknown; use tls-alpn-01 or http-01"
            )));
        }
    };
    Ok(Some(TlsConfig {
        listen: listen()?,
        source: TlsSource::Acme(AcmeOptions {
            host,
            more_hosts: Vec::new(),
            directory_url: directory_url.to_string(),
            contact: cli
                .tls_contact_email
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            directory_ca_file: cli.tls_directory_ca_file.clone(),
            http01,
        }),
    }))
}
