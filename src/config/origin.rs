//! Where the proxy listens (`--listen`, `--tls-listen`) and the public origin it is addressed
//! by (`--external-url`).

use std::net::IpAddr;
use std::net::SocketAddr;

use url::Url;

use super::{ConfigError, bad};

/// Where to listen: a socket address, or `:PORT` for every interface (IPv4 and IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `:PORT`.
    AllInterfaces(u16),
    /// `HOST:PORT` or `[V6]:PORT`; a host name is resolved when binding.
    Host(String, u16),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        let hint = || {
            bad(format!(
                "--listen {s:?} is not HOST:PORT, [V6]:PORT or :PORT"
            ))
        };
        // A number that is not a port (`:99999`) says so, not "not HOST:PORT".
        let port_of = |p: &str| -> Result<u16, ConfigError> {
            match p.parse::<u64>() {
                Ok(n) if n > u64::from(u16::MAX) => Err(bad(format!(
                    "--listen {s:?}: port {n} is out of range (1 to 65535; 0 picks a free one)"
                ))),
                Ok(n) => u16::try_from(n).map_err(|_| hint()),
                Err(_) => Err(hint()),
            }
        };
        if let Some(port) = s.strip_prefix(':') {
            return port_of(port).map(Self::AllInterfaces);
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self::Host(sa.ip().to_string(), sa.port()));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(hint)?;
        if host.is_empty() || host.contains(':') || host.contains('[') {
            return Err(hint());
        }
        Ok(Self::Host(host.to_string(), port_of(port)?))
    }

    pub fn port(&self) -> u16 {
        match self {
            Self::AllInterfaces(p) | Self::Host(_, p) => *p,
        }
    }
}

/// The public origin the proxy is reached at: `scheme://host[:port]`, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    url: Url,
}

impl PublicOrigin {
    /// Parses an origin; a path, query or fragment is refused.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let url = Url::parse(s.trim())
            .map_err(|e| bad(format!("--external-url {s:?} is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "--external-url {s:?} must start with http:// or https://"
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad(format!("--external-url {s:?} has no host")));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad(format!(
                "--external-url {s:?} has a path, query or fragment; give only the origin, e.g. {}://{}",
                url.scheme(),
                url.host_str().unwrap_or("host")
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(format!(
                "--external-url {s:?} must not carry credentials"
            )));
        }
        Ok(Self { url })
    }

    /// The default origin: `http://localhost`, plus the port when it is not 80.
    pub fn default_for_port(port: u16) -> Result<Self, ConfigError> {
        if port == 80 {
            Self::parse("http://localhost")
        } else {
            Self::parse(&format!("http://localhost:{port}"))
        }
    }

    /// `scheme://host[:port]` without a trailing slash: the issuer.
    pub fn as_str(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// `host[:port]` as the origin is written (no credentials: [`Self::parse`] refuses
    /// them; no default port: the url crate drops it).
    pub fn authority(&self) -> &str {
        self.url.authority()
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// The host, lower-case; IPv6 without brackets.
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string().to_ascii_lowercase(),
            None => String::new(),
        }
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(80)
    }

    /// The origin's URL with `path` appended (path starts with `/`).
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.as_str(), path)
    }

    /// Whether the host is a loopback name or address.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.url.host_str().unwrap_or_default())
    }

    /// Whether `host` (from `Host` or a TLS server name, without port or brackets) names
    /// this origin's host: compared without case or a trailing dot. A loopback origin also
    /// answers to any loopback name, since DNS rebinding needs a name that is not one.
    pub fn names_host(&self, host: &str) -> bool {
        // Runs on every request: compared in place (the url crate keeps the host
        // lower-case), where building `host()` cost 3 000 instructions a request.
        let host = host.trim_end_matches('.');
        let ours = self.url.host_str().unwrap_or_default();
        let ours = ours.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case(ours) || (self.is_loopback() && is_loopback_host(host))
    }
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]` in canonical lower-case form, default ports dropped.
pub fn normalize_origin(s: &str) -> Option<String> {
    let url = Url::parse(s.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    if !(url.path() == "/" || url.path().is_empty()) || url.query().is_some() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}
