//! The validated configuration.
//!
//! [`Config::from_cli`] turns the raw command line into typed values once, at startup. Every
//! wrong value stops startup with one line that says what to fix; nothing downstream
//! re-parses strings.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use url::Url;
use zeroize::Zeroize;

use crate::cli::Cli;

/// What part of the identity a header or variable carries.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentityPart {
    User,
    /// The sign-in method: `password`, `google`, `github`, `oidc`.
    Provider,
    Email,
    Name,
    /// Comma-separated.
    Groups,
    /// A claim, by JSON Pointer.
    Claim(String),
}

impl IdentityPart {
    /// `user`, `email`, `name`, `groups` or a `/pointer`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "user" => Some(IdentityPart::User),
            "provider" => Some(IdentityPart::Provider),
            "email" => Some(IdentityPart::Email),
            "name" => Some(IdentityPart::Name),
            "groups" => Some(IdentityPart::Groups),
            p if jsonptr::Pointer::parse(p).is_ok() && p.starts_with('/') => {
                Some(IdentityPart::Claim(p.to_string()))
            }
            _ => None,
        }
    }
}

/// The account children run as (`--stdio-user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks `name` up in the system's user database; only root can switch to it.
    pub fn lookup(name: &str) -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err(format!(
                "--stdio-user {name}: the proxy must start as root to run children as another user"
            ));
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("--stdio-user {name}: {e}"))?
            .ok_or_else(|| format!("--stdio-user {name}: no such user"))?;
        if user.uid.is_root() {
            return Err(format!(
                "--stdio-user {name} is root: name an unprivileged user"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
}

/// A configuration mistake, phrased as what the user should change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where the protected resource's metadata (RFC 9728) is served, before the MCP path.
pub const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// A secret value: never printed, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call sites are the only places it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

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
        is_loopback_host(&self.host())
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

/// What the proxy puts in front of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// No backend: sign-in and the authorization server only.
    None,
    /// An HTTP MCP server.
    Http(Url),
    /// A stdio MCP server: program and arguments.
    Stdio { program: String, args: Vec<String> },
}

/// How stdio children are started and how many may run.
/// How many MCP sessions may live at once, in all and per user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLimits {
    pub total: usize,
    pub per_user: usize,
}

#[derive(Debug, Clone, Default)]
pub struct StdioOptions {
    pub cwd: Option<PathBuf>,
    /// `--stdio-user`: the account children run as.
    pub run_as: Option<RunAs>,
    pub env: Vec<(String, String)>,
    pub pass_env: Vec<String>,
    pub clean_env: bool,
    pub max_sessions: SessionLimits,
    pub idle_timeout: Duration,
    pub warm_spare: bool,
    /// One child for every session (`--stdio-mode shared`) instead of one each.
    pub shared: bool,
    /// `--stdio-identity-env`: what of the user goes into which variable of their child.
    pub identity_env: Vec<(IdentityPart, String)>,
}

/// How requests are sent to an HTTP upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Static headers, `--proxy-bearer-token` already folded in as `Authorization`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub connect_timeout: Duration,
    /// Until the upstream's response headers (`--upstream-timeout`).
    pub response_timeout: Duration,
    /// Answer 405 to GET on the MCP path.
    pub streaming_only: bool,
    /// The identity headers' names.
    pub identity: IdentityHeaders,
    /// `--header-mapping`: claim pointer → header.
    pub mapping: Vec<(String, HeaderName)>,
    /// `--proxy-forward-authorization`: a signed assertion as the upstream's `Authorization`.
    pub forward_authorization: bool,
    /// How long a generated assertion key signs.
    pub jwt_key_rotation: Duration,
    /// `--pass-access-token`: the user's provider token as `X-Forwarded-Access-Token`.
    pub pass_access_token: bool,
}

/// Names of the headers that tell the upstream who is calling.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub email: HeaderName,
    pub name: HeaderName,
    pub groups: HeaderName,
    /// With more than one sign-in method, the user is sent as `provider:user id` (as the
    /// proxy itself keys users): a GitHub login `admin` is not the password user `admin`.
    /// With one, the bare id, as upstreams written for sigbit's proxy expect.
    pub qualified_user: bool,
}

/// The header that names the sign-in method of the caller (`password`, `google`, `github`,
/// `oidc`), always sent.
pub const PROVIDER_HEADER: &str = "x-forwarded-provider";

fn header_name(flag: &str, v: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(v.trim().as_bytes())
        .map_err(|_| bad(format!("{flag}: {v:?} is not a header name")))
}

/// `--header-mapping /pointer:Header-Name,…`.
pub fn parse_header_mapping(s: &str) -> Result<Vec<(String, HeaderName)>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (pointer, name) = m.rsplit_once(':').ok_or_else(|| {
                bad(format!(
                    "--header-mapping: {m:?} is not /pointer:Header-Name"
                ))
            })?;
            jsonptr::Pointer::parse(pointer.trim()).map_err(|e| {
                bad(format!(
                    "--header-mapping: {pointer:?} is not a JSON Pointer: {e}"
                ))
            })?;
            Ok((
                pointer.trim().to_string(),
                header_name("--header-mapping", name)?,
            ))
        })
        .collect()
}

/// Sign-in and token issuance settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Plain `--password`, kept only until it is hashed at startup.
    pub password: Option<Secret>,
    /// `--password-hash` values (bcrypt).
    pub password_hashes: Vec<Secret>,
    pub password_user: String,
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

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Things given that have no effect, said at startup as warnings.
    pub notes: Vec<String>,
    pub listen: ListenAddr,
    /// HTTPS, when on.
    pub tls: Option<TlsConfig>,
    /// `None` means "the default for the port actually bound".
    pub external_url: Option<PublicOrigin>,
    pub data_path: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
    pub mcp_path: String,
    /// Normalised origins (`scheme://host[:port]`, lower-case) allowed besides our own.
    pub allowed_origins: Vec<String>,
    pub backend: Backend,
    pub upstream: UpstreamOptions,
    /// The forward-auth endpoint's path, if on.
    pub forward_auth_path: Option<String>,
    /// `--clients-file`, read and checked.
    pub clients_file: Option<PathBuf>,
    pub auth: AuthConfig,
    /// How long connections may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Threads serving connections (at least one).
    pub workers: usize,
    /// The HTTP/1 fast lane for POST on the MCP endpoint (off with `--no-fast-lane`).
    pub fast_lane: bool,
    pub stdio: StdioOptions,
    pub limits: Limits,
    /// `--metrics-listen`: Prometheus and the probes on a listener of their own.
    pub metrics_listen: Option<ListenAddr>,
}

/// Protection against load and slow or oversized clients (defaults: the flags').
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests per minute per client IP on the rate-limited endpoints (0: off).
    pub rate_limit: u32,
    pub max_body: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// A size: `1048576`, `512KiB`, `4MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_size(flag: &str, s: &str) -> Result<usize, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n
        .parse()
        .map_err(|_| bad(format!("{flag} {s:?} is not a size like 4MiB")))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad(format!("{flag} {s:?} is not a size like 4MiB"))),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| bad(format!("{flag} {s:?} is out of range")))
}

impl Config {
    /// Validates the command line.
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let listen = ListenAddr::parse(&cli.listen)?;
        let auth = auth_config(&cli)?;
        let stdio = stdio_options(&cli)?;
        let external_url = cli
            .external_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(PublicOrigin::parse)
            .transpose()?;
        let tls = tls_config(&cli, external_url.as_ref())?;

        if cli
            .database_dsn
            .as_deref()
            .is_some_and(|d| !d.trim().is_empty())
        {
            return Err(bad(
                "DATABASE_DSN names a PostgreSQL store, which is not supported yet; unset it to use the embedded store",
            ));
        }
        match cli.repository_backend.trim().to_ascii_lowercase().as_str() {
            "local" | "" => {}
            other @ ("postgres" | "sqlite" | "mysql") => {
                return Err(bad(format!(
                    "--repository-backend {other} is not supported yet; use --repository-backend local (the embedded store)"
                )));
            }
            other => {
                return Err(bad(format!(
                    "--repository-backend {other:?} is unknown; use local"
                )));
            }
        }
        let mut notes = Vec::new();
        if cli.repository_dsn.as_deref().is_some_and(|s| !s.is_empty()) {
            // As sigbit's proxy does: the DSN means something only for an external store.
            notes.push(
                "--repository-dsn (REPOSITORY_DSN) is ignored: --repository-backend is local, the embedded store in --data-path".to_string(),
            );
        }

        let trusted_proxies = cli
            .trusted_proxies
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()?;

        let mcp_path = cli.mcp_path.trim().to_string();
        if !mcp_path.starts_with('/')
            || mcp_path.len() < 2
            || mcp_path.ends_with('/')
            || mcp_path.contains(['?', '#', ' '])
        {
            return Err(bad(format!(
                "--mcp-path {mcp_path:?} must be an absolute path like /mcp, without a trailing slash"
            )));
        }
        if reserved_path(&mcp_path) {
            return Err(bad(format!(
                "--mcp-path {mcp_path:?} collides with the proxy's own endpoints; choose another"
            )));
        }

        let allowed_origins = cli
            .allowed_origins
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                normalize_origin(s).ok_or_else(|| {
                    bad(format!(
                        "--allowed-origins entry {s:?} is not an origin like https://app.example.com"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let backend = parse_backend(&cli.backend)?;

        let mut headers = parse_proxy_headers(cli.proxy_headers.as_deref().unwrap_or(""))?;
        let proxy_bearer_token = cli
            .proxy_bearer_token
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        if let Some(token) = &proxy_bearer_token {
            headers.retain(|(name, _)| name != http::header::AUTHORIZATION);
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    bad("--proxy-bearer-token contains characters not allowed in a header")
                })?;
            value.set_sensitive(true);
            headers.push((http::header::AUTHORIZATION, value));
        }

        if cli.proxy_forward_authorization
            && (proxy_bearer_token.is_some()
                || headers
                    .iter()
                    .any(|(n, _)| n == axum::http::header::AUTHORIZATION))
        {
            return Err(bad(
                "--proxy-forward-authorization sends the upstream our signed assertion as Authorization; drop --proxy-bearer-token (or the Authorization of --proxy-headers)",
            ));
        }
        let connect_timeout =
            parse_duration("--upstream-connect-timeout", &cli.upstream_connect_timeout)?;

        let forward_auth_path = match cli.forward_auth_path.trim() {
            "" => None,
            p if !p.starts_with('/') || p.starts_with("/.auth/") || p == mcp_path => {
                return Err(bad(format!(
                    "--forward-auth-path {p:?} must be a path of its own, like /authenticate"
                )));
            }
            p => Some(p.to_string()),
        };
        Ok(Self {
            notes,
            clients_file: cli.clients_file.clone(),
            forward_auth_path,
            listen,
            tls,
            external_url,
            data_path: match &cli.data_path {
                d if d.exists() && !d.is_dir() => {
                    return Err(bad(format!(
                        "--data-path {} is a file, not a directory: name a directory (it is created if missing)",
                        d.display()
                    )));
                }
                d => d.clone(),
            },
            trusted_proxies,
            mcp_path,
            allowed_origins,
            backend,
            upstream: UpstreamOptions {
                headers,
                connect_timeout,
                response_timeout: parse_duration("--upstream-timeout", &cli.upstream_timeout)?,
                streaming_only: cli.http_streaming_only,
                identity: IdentityHeaders {
                    user: header_name("--user-header", &cli.user_header)?,
                    email: header_name("--email-header", &cli.email_header)?,
                    name: header_name("--name-header", &cli.name_header)?,
                    groups: header_name("--groups-header", &cli.groups_header)?,
                    qualified_user: usize::from(auth.has_password()) + auth.providers.count() > 1,
                },
                mapping: parse_header_mapping(cli.header_mapping.as_deref().unwrap_or(""))?,
                forward_authorization: cli.proxy_forward_authorization,
                jwt_key_rotation: parse_duration("--jwt-key-rotation", &cli.jwt_key_rotation)?,
                pass_access_token: cli.pass_access_token,
            },
            auth,
            shutdown_grace: parse_duration("--shutdown-grace", &cli.shutdown_grace)?,
            metrics_listen: cli
                .metrics_listen
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(ListenAddr::parse)
                .transpose()?,
            limits: Limits {
                rate_limit: cli.rate_limit,
                max_body: parse_size("--max-body", &cli.max_body)?,
                max_connections: cli.max_connections.max(1),
                header_read_timeout: parse_duration(
                    "--header-read-timeout",
                    &cli.header_read_timeout,
                )?,
                body_read_timeout: parse_duration("--body-read-timeout", &cli.body_read_timeout)?,
            },
            fast_lane: !cli.no_fast_lane,
            workers: match cli.workers {
                0 => crate::worker::default_count(),
                n => n,
            },
            stdio,
        })
    }
}

/// bcrypt reads at most this many bytes of a password and ignores the rest. A longer
/// password is refused where it is configured and never matches at sign-in: otherwise its
/// first 72 bytes followed by anything would sign in.
pub const BCRYPT_MAX_BYTES: usize = 72;

/// Why a password cannot be used with bcrypt, if it cannot (checked where a password is
/// configured; sign-in refuses longer attempts by the same constant).
pub fn unusable_password(password: &str) -> Option<String> {
    (password.len() > BCRYPT_MAX_BYTES).then(|| {
        format!(
            "the password is {} bytes long; bcrypt checks only the first {BCRYPT_MAX_BYTES}, so \
             anything after them would be ignored: choose one of at most {BCRYPT_MAX_BYTES} bytes",
            password.len()
        )
    })
}

/// `--password-file`: the first line of a file that only its owner may read (a secret others
/// can read is no secret; a symlink is followed, and the file it names is what is checked).
fn read_password_file(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, ConfigError> {
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

fn auth_config(cli: &Cli) -> Result<AuthConfig, ConfigError> {
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
        .map(|p| match unusable_password(p) {
            Some(why) => Err(bad(format!(
                "--password (PASSWORD): {why}, or give its hash with --password-hash"
            ))),
            None => Ok(Secret::new(p)),
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

fn cimd_options(cli: &Cli) -> Result<Option<CimdOptions>, ConfigError> {
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

fn stdio_options(cli: &Cli) -> Result<StdioOptions, ConfigError> {
    let env = cli
        .stdio_env
        .iter()
        .map(|kv| kv.trim())
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(bad(format!("--stdio-env {kv:?} is not KEY=VALUE"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cli.max_sessions == 0 {
        return Err(bad("--max-sessions must be at least 1"));
    }
    if let Some(dir) = &cli.stdio_cwd
        && !dir.is_dir()
    {
        return Err(bad(format!(
            "--stdio-cwd {} is not a directory",
            dir.display()
        )));
    }
    let identity_env = cli
        .stdio_identity_env
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (part, var) = e
                .split_once('=')
                .ok_or_else(|| bad(format!("--stdio-identity-env: {e:?} is not part=VARIABLE")))?;
            let part = IdentityPart::parse(part).ok_or_else(|| {
                bad(format!(
                    "--stdio-identity-env: {part:?} is not user, provider, email, name, groups or a /pointer"
                ))
            })?;
            let var = var.trim();
            let valid = !var.is_empty()
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(bad(format!(
                    "--stdio-identity-env: {var:?} is not a variable name"
                )));
            }
            Ok((part, var.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shared = match cli.stdio_mode.trim().to_ascii_lowercase().as_str() {
        "per-session" | "" => false,
        "shared" => true,
        other => {
            return Err(bad(format!(
                "--stdio-mode {other:?} is unknown; use per-session or shared"
            )));
        }
    };
    if shared && !identity_env.is_empty() {
        return Err(bad(
            "--stdio-identity-env needs --stdio-mode per-session: one shared child cannot be every user",
        ));
    }
    Ok(StdioOptions {
        cwd: cli.stdio_cwd.clone(),
        run_as: cli
            .stdio_user
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(RunAs::lookup)
            .transpose()
            .map_err(bad)?,
        env,
        pass_env: cli
            .stdio_pass_env
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        clean_env: cli.stdio_clean_env,
        max_sessions: SessionLimits {
            total: cli.max_sessions,
            per_user: match cli.max_sessions_per_user {
                0 => cli.max_sessions.div_ceil(2),
                n => n.min(cli.max_sessions),
            },
        },
        idle_timeout: parse_duration("--session-idle-timeout", &cli.session_idle_timeout)?,
        warm_spare: cli.stdio_warm_spare,
        shared,
        identity_env,
    })
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, and 53 more characters.
fn bcrypt_shaped(h: &str) -> bool {
    let b = h.as_bytes();
    h.len() == 60
        && (h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$"))
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}

/// The public face of a running proxy, fixed once the listener is bound.
#[derive(Debug, Clone)]
pub struct Site {
    pub origin: PublicOrigin,
    pub mcp_path: String,
    /// The protected resource: `<origin><mcp_path>`.
    pub resource: String,
    /// Absolute URL of the protected-resource metadata (RFC 9728 §3.1 path form).
    pub resource_metadata_url: String,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
}

impl Config {
    /// The site as seen from outside, given the port the plain listener actually bound.
    /// The site; `bound_port` is the port clients reach (the TLS listener's when TLS is on).
    pub fn site(&self, bound_port: u16) -> Result<Site, ConfigError> {
        let origin = match (&self.external_url, &self.tls) {
            (Some(o), _) => o.clone(),
            (None, Some(_)) if bound_port == 443 => PublicOrigin::parse("https://localhost")?,
            (None, Some(_)) => PublicOrigin::parse(&format!("https://localhost:{bound_port}"))?,
            (None, None) => PublicOrigin::default_for_port(bound_port)?,
        };
        Ok(Site {
            resource: origin.join(&self.mcp_path),
            resource_metadata_url: origin
                .join(&format!("{}{}", RESOURCE_METADATA_PATH, self.mcp_path)),
            origin,
            mcp_path: self.mcp_path.clone(),
            allowed_origins: self.allowed_origins.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
        })
    }
}

/// Paths the proxy answers itself; the MCP path may not shadow them.
pub fn reserved_path(path: &str) -> bool {
    const OWN: [&str; 5] = [
        "/authorize",
        "/token",
        "/register",
        "/revoke",
        "/.well-known",
    ];
    OWN.iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || path.starts_with("/.auth")
}

fn parse_net(s: &str) -> Result<IpNet, ConfigError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            bad(format!(
                "--trusted-proxies entry {s:?} is not an IP address or CIDR"
            ))
        })
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

/// `host:port` or `host:port/path` (a name, an IPv4 or a bracketed IPv6 address, then a
/// port): an HTTP backend written without `http://`, never a command.
fn looks_like_host_port(s: &str) -> bool {
    let authority = s.split('/').next().unwrap_or_default();
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let host_ok = (host.starts_with('[') && host.ends_with(']'))
        || (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    host_ok && !port.is_empty() && port.chars().all(|c| c.is_ascii_digit())
}

fn parse_backend(args: &[String]) -> Result<Backend, ConfigError> {
    let Some(first) = args.first() else {
        return Ok(Backend::None);
    };
    let lower = first.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        if args.len() > 1 {
            return Err(bad(format!(
                "an HTTP backend takes no further arguments, but got {:?}",
                &args[1..]
            )));
        }
        let url = Url::parse(first)
            .map_err(|e| bad(format!("backend URL {first:?} does not parse ({e})")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad(format!("backend URL {first:?} has no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "backend URL must not carry credentials; use --proxy-bearer-token or --proxy-headers",
            ));
        }
        return Ok(Backend::Http(url));
    }
    if first.is_empty() {
        return Err(bad("the stdio command is empty"));
    }
    if let Some((scheme, _)) = first.split_once("://") {
        return Err(bad(format!(
            "backend {first:?}: the {scheme}:// scheme is not an MCP transport; give an http:// or https:// URL, or a stdio command after --"
        )));
    }
    if looks_like_host_port(first) {
        return Err(bad(format!(
            "backend {first:?} looks like an address without its scheme; did you mean http://{first} ?"
        )));
    }
    Ok(Backend::Stdio {
        program: first.clone(),
        args: args[1..].to_vec(),
    })
}

/// Parses `Name:Value,Name2:Value2` (sigbit's `--proxy-headers`).
pub fn parse_proxy_headers(s: &str) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once(':')
            .ok_or_else(|| bad(format!("--proxy-headers entry {item:?} is not Name:Value")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            bad(format!(
                "--proxy-headers: {:?} is not a header name",
                name.trim()
            ))
        })?;
        let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
            bad(format!(
                "--proxy-headers: the value of {name} is not a valid header value"
            ))
        })?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}

/// Parses durations like `90s`, `10m`, `1h`, `30d`, `500ms`.
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        bad(format!(
            "{flag} {s:?} is not a duration like 30s, 10m, 1h or 7d"
        ))
    })?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" | "" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| {
        bad(format!(
            "{flag} {s:?} is not a duration like 30s, 10m, 1h or 7d"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("--max-body", "4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("--max-body", "512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("--max-body", "1000").unwrap(), 1000);
        assert_eq!(parse_size("--max-body", "2MB").unwrap(), 2_000_000);
        for bad in [
            "",
            "0",
            "4 parsecs",
            "MiB",
            "-1KiB",
            "99999999999999999999GiB",
        ] {
            let e = parse_size("--max-body", bad).unwrap_err().to_string();
            assert!(e.contains("--max-body"), "{bad}: {e}");
        }
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            ListenAddr::parse(":8080").ok(),
            Some(ListenAddr::AllInterfaces(8080))
        );
        assert_eq!(
            ListenAddr::parse("127.0.0.1:0").ok(),
            Some(ListenAddr::Host("127.0.0.1".into(), 0))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:443").ok(),
            Some(ListenAddr::Host("::1".into(), 443))
        );
        assert_eq!(
            ListenAddr::parse("localhost:80").ok(),
            Some(ListenAddr::Host("localhost".into(), 80))
        );
        assert!(ListenAddr::parse("8080").is_err());
        assert!(ListenAddr::parse("::1:80").is_err());
        assert!(ListenAddr::parse(":http").is_err());
    }

    #[test]
    fn external_url_is_an_origin() {
        let o = PublicOrigin::parse("https://MCP.example.com").ok();
        assert_eq!(
            o.as_ref().map(|o| o.as_str()),
            Some("https://mcp.example.com")
        );
        assert_eq!(o.as_ref().map(|o| o.port()), Some(443));
        assert!(PublicOrigin::parse("https://mcp.example.com/").is_ok());
        assert!(PublicOrigin::parse("https://mcp.example.com/sub").is_err());
        assert!(PublicOrigin::parse("ftp://x").is_err());
        assert_eq!(
            PublicOrigin::default_for_port(80).unwrap().as_str(),
            "http://localhost"
        );
        assert_eq!(
            PublicOrigin::default_for_port(8080).unwrap().as_str(),
            "http://localhost:8080"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("f", "30d").ok(),
            Some(Duration::from_secs(2_592_000))
        );
        assert_eq!(
            parse_duration("f", "60s").ok(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_duration("f", "250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert!(parse_duration("f", "1y").is_err());
        assert!(parse_duration("f", "").is_err());
    }

    #[test]
    fn proxy_headers() {
        let h = parse_proxy_headers("X-A: 1, X-B:two").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].1, "two");
        assert!(parse_proxy_headers("nocolon").is_err());
    }
}

/// The sign-in providers besides the password.
#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    pub google: Option<GoogleConfig>,
    pub github: Option<GitHubConfig>,
    pub oidc: Option<OidcConfig>,
    /// With exactly one provider and no password, the login page goes straight to it.
    pub auto_select: bool,
}

impl ProvidersConfig {
    pub fn count(&self) -> usize {
        usize::from(self.google.is_some())
            + usize::from(self.github.is_some())
            + usize::from(self.oidc.is_some())
    }
}

#[derive(Debug, Clone)]
pub struct GoogleConfig {
    pub client_id: String,
    pub client_secret: Secret,
    /// Normalised emails.
    pub allowed_users: Vec<String>,
    /// Lower-case `hd` values.
    pub allowed_workspaces: Vec<String>,
    pub allow_all: bool,
    pub auth_url: Url,
    pub token_url: Url,
    pub userinfo_url: Url,
}

#[derive(Debug, Clone)]
pub struct GitHubConfig {
    pub client_id: String,
    pub client_secret: Secret,
    /// Lower-case logins.
    pub allowed_users: Vec<String>,
    /// Lower-case `org` or `org:team-slug`.
    pub allowed_orgs: Vec<String>,
    pub allow_all: bool,
    pub web_url: Url,
    pub api_url: Url,
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub configuration_url: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    /// JSON Pointer to the user id in the claims.
    pub user_id_field: String,
    pub label: String,
    /// Normalised user ids.
    pub allowed_users: Vec<String>,
    pub allowed_globs: Vec<String>,
    pub attributes: Vec<AttributeRule>,
    pub attribute_globs: Vec<AttributeRule>,
    pub allow_all: bool,
}

/// `/pointer=value`: the claim at the pointer equals the value (or, for an array, one of
/// its elements does).
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeRule {
    pub pointer: String,
    pub value: String,
}

/// A user id or email as allow-lists compare it: trimmed, and lower-case when it is an
/// email. `None` for a value with several `@` (never allowed: mail systems disagree on
/// which one counts).
pub fn normalize_user(s: &str) -> Option<String> {
    let s = s.trim();
    match s.matches('@').count() {
        0 => Some(s.to_string()),
        1 => Some(s.to_ascii_lowercase()),
        _ => None,
    }
}

/// Splits a comma-separated list where `\,` is a literal comma.
pub fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn url_flag(flag: &str, v: &str) -> Result<Url, ConfigError> {
    let u = Url::parse(v.trim()).map_err(|e| bad(format!("{flag} {v:?} is not a URL: {e}")))?;
    if !matches!(u.scheme(), "https" | "http") {
        return Err(bad(format!("{flag} must be an http(s) URL")));
    }
    Ok(u)
}

fn list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The id and secret of a provider: both or neither.
fn client_pair(
    name: &str,
    id: &Option<String>,
    secret: &Option<String>,
) -> Result<Option<(String, Secret)>, ConfigError> {
    let id = id.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let secret = secret.as_deref().filter(|v| !v.is_empty());
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Ok(Some((id.to_string(), Secret::new(secret)))),
        (Some(_), None) => Err(bad(format!(
            "--{name}-client-id needs --{name}-client-secret"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "--{name}-client-secret needs --{name}-client-id"
        ))),
    }
}

fn attribute_rules(flag: &str, v: Option<&str>) -> Result<Vec<AttributeRule>, ConfigError> {
    split_escaped(v.unwrap_or_default())
        .into_iter()
        .map(|rule| {
            let (pointer, value) = rule
                .split_once('=')
                .ok_or_else(|| bad(format!("{flag}: {rule:?} is not /pointer=value")))?;
            let pointer = pointer.trim();
            jsonptr::Pointer::parse(pointer)
                .map_err(|e| bad(format!("{flag}: {pointer:?} is not a JSON Pointer: {e}")))?;
            Ok(AttributeRule {
                pointer: pointer.to_string(),
                value: value.trim().to_string(),
            })
        })
        .collect()
}

/// An allow-list given for a provider that is not configured would be silently ignored: the
/// operator believes something is restricted or allowed that is not there at all.
fn lists_without_provider(cli: &Cli) -> Result<(), ConfigError> {
    let orphans = [
        (
            cli.google_client_id.is_none(),
            "--google-client-id",
            [
                (
                    "--google-allowed-users",
                    !cli.google_allowed_users.is_empty(),
                ),
                (
                    "--google-allowed-workspaces",
                    !cli.google_allowed_workspaces.is_empty(),
                ),
                ("--google-allow-all-users", cli.google_allow_all_users),
            ],
        ),
        (
            cli.github_client_id.is_none(),
            "--github-client-id",
            [
                (
                    "--github-allowed-users",
                    !cli.github_allowed_users.is_empty(),
                ),
                ("--github-allowed-orgs", !cli.github_allowed_orgs.is_empty()),
                ("--github-allow-all-users", cli.github_allow_all_users),
            ],
        ),
        (
            cli.oidc_configuration_url.is_none(),
            "--oidc-configuration-url",
            [
                ("--oidc-allowed-users", !cli.oidc_allowed_users.is_empty()),
                (
                    "--oidc-allowed-users-glob",
                    cli.oidc_allowed_users_glob.is_some(),
                ),
                ("--oidc-allow-all-users", cli.oidc_allow_all_users),
            ],
        ),
    ];
    for (missing, needed, lists) in orphans {
        if let Some((flag, _)) = lists.iter().find(|(_, given)| *given).filter(|_| missing) {
            return Err(bad(format!(
                "{flag} is set but that provider is not: add {needed} (and its other settings), or drop {flag}"
            )));
        }
    }
    Ok(())
}

fn providers_config(cli: &Cli) -> Result<ProvidersConfig, ConfigError> {
    lists_without_provider(cli)?;
    let google = match client_pair("google", &cli.google_client_id, &cli.google_client_secret)? {
        None => None,
        Some((client_id, client_secret)) => {
            let allowed_users = list(&cli.google_allowed_users)
                .iter()
                .map(|u| {
                    normalize_user(u)
                        .filter(|u| u.contains('@'))
                        .ok_or_else(|| {
                            bad(format!("--google-allowed-users: {u:?} is not an email"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let allowed_workspaces: Vec<String> = list(&cli.google_allowed_workspaces)
                .iter()
                .map(|w| w.to_ascii_lowercase())
                .collect();
            if allowed_users.is_empty()
                && allowed_workspaces.is_empty()
                && !cli.google_allow_all_users
            {
                return Err(bad(
                    "Google sign-in would let every Google account in: set --google-allowed-users or --google-allowed-workspaces (or --google-allow-all-users if you mean it)",
                ));
            }
            Some(GoogleConfig {
                client_id,
                client_secret,
                allowed_users,
                allowed_workspaces,
                allow_all: cli.google_allow_all_users,
                auth_url: url_flag("--google-auth-url", &cli.google_auth_url)?,
                token_url: url_flag("--google-token-url", &cli.google_token_url)?,
                userinfo_url: url_flag("--google-userinfo-url", &cli.google_userinfo_url)?,
            })
        }
    };
    let github = match client_pair("github", &cli.github_client_id, &cli.github_client_secret)? {
        None => None,
        Some((client_id, client_secret)) => {
            let allowed_users: Vec<String> = list(&cli.github_allowed_users)
                .iter()
                .map(|u| u.to_ascii_lowercase())
                .collect();
            let allowed_orgs: Vec<String> = list(&cli.github_allowed_orgs)
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect();
            if let Some(o) = allowed_orgs
                .iter()
                .find(|o| o.split(':').count() > 2 || o.split(':').any(str::is_empty))
            {
                return Err(bad(format!(
                    "--github-allowed-orgs: {o:?} is not org or org:team-slug"
                )));
            }
            if allowed_users.is_empty() && allowed_orgs.is_empty() && !cli.github_allow_all_users {
                return Err(bad(
                    "GitHub sign-in would let every GitHub account in: set --github-allowed-users or --github-allowed-orgs (or --github-allow-all-users if you mean it)",
                ));
            }
            Some(GitHubConfig {
                client_id,
                client_secret,
                allowed_users,
                allowed_orgs,
                allow_all: cli.github_allow_all_users,
                web_url: url_flag("--github-url", &cli.github_url)?,
                api_url: url_flag("--github-api-url", &cli.github_api_url)?,
            })
        }
    };
    let oidc_url = cli
        .oidc_configuration_url
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let oidc_id = cli
        .oidc_client_id
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let oidc = match (oidc_url, oidc_id) {
        (None, None) => None,
        (None, Some(_)) => return Err(bad("--oidc-client-id needs --oidc-configuration-url")),
        (Some(_), None) => return Err(bad("--oidc-configuration-url needs --oidc-client-id")),
        (Some(url), Some(client_id)) => {
            let user_id_field = cli.oidc_user_id_field.trim().to_string();
            jsonptr::Pointer::parse(&user_id_field).map_err(|e| {
                bad(format!(
                    "--oidc-user-id-field {user_id_field:?} is not a JSON Pointer (like /email): {e}"
                ))
            })?;
            let allowed_users = list(&cli.oidc_allowed_users)
                .iter()
                .map(|u| {
                    normalize_user(u)
                        .ok_or_else(|| bad(format!("--oidc-allowed-users: {u:?} has several @")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let allowed_globs: Vec<String> =
                split_escaped(cli.oidc_allowed_users_glob.as_deref().unwrap_or_default())
                    .iter()
                    .map(|g| {
                        if g.contains('@') {
                            g.to_ascii_lowercase()
                        } else {
                            g.clone()
                        }
                    })
                    .collect();
            let attributes = attribute_rules(
                "--oidc-allowed-attributes",
                cli.oidc_allowed_attributes.as_deref(),
            )?;
            let attribute_globs = attribute_rules(
                "--oidc-allowed-attributes-glob",
                cli.oidc_allowed_attributes_glob.as_deref(),
            )?;
            if allowed_users.is_empty()
                && allowed_globs.is_empty()
                && attributes.is_empty()
                && attribute_globs.is_empty()
                && !cli.oidc_allow_all_users
            {
                return Err(bad(
                    "OIDC sign-in would let every account at the provider in: set --oidc-allowed-users, --oidc-allowed-users-glob or --oidc-allowed-attributes (or --oidc-allow-all-users if you mean it)",
                ));
            }
            let scopes = list(&cli.oidc_scopes);
            if !scopes.iter().any(|s| s == "openid") {
                return Err(bad("--oidc-scopes must include openid"));
            }
            Some(OidcConfig {
                configuration_url: url_flag("--oidc-configuration-url", url)?,
                client_id: client_id.to_string(),
                client_secret: cli
                    .oidc_client_secret
                    .as_deref()
                    .filter(|v| !v.is_empty())
                    .map(Secret::new),
                scopes,
                user_id_field,
                label: cli.oidc_provider_name.trim().to_string(),
                allowed_users,
                allowed_globs,
                attributes,
                attribute_globs,
                allow_all: cli.oidc_allow_all_users,
            })
        }
    };
    Ok(ProvidersConfig {
        google,
        github,
        oidc,
        auto_select: !cli.no_provider_auto_select,
    })
}

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
    pub host: String,
    pub directory_url: String,
    pub contact: Option<String>,
    pub directory_ca_file: Option<PathBuf>,
    /// HTTP-01 on the plain listener instead of TLS-ALPN-01 on the TLS listener.
    pub http01: bool,
}

/// HTTPS settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: ListenAddr,
    pub source: TlsSource,
}

/// The TLS rule (docs/design.md, "Compatibility with sigbit/mcp-auth-proxy"): certificate files win; otherwise ACME for an https external
/// URL whose host is not localhost (unless `--no-auto-tls`), or when `--tls-host` is given.
fn tls_config(
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
