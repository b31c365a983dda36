//! The validated configuration.
//!
//! [`Config::from_cli`] turns the raw command line into typed values once, at startup. Every
//! wrong value stops startup with one line that says what to fix; nothing downstream
//! re-parses strings.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;
use url::Url;
use zeroize::Zeroize;

use crate::cli::Cli;

mod auth;
mod origin;
mod providers;
mod servers;
mod stdio;
mod tls;
mod upstream;

pub use auth::*;
pub use origin::*;
pub use providers::*;
pub use servers::{Admission, ServerDef, ServerDefs};
pub use stdio::*;
pub use tls::*;
pub use upstream::*;

/// A configuration mistake, phrased as what the user should change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where the proxy keeps its state.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// The embedded sled store in `--data-path` (one process).
    Local,
    /// A PostgreSQL database that several proxies may share.
    Postgres {
        /// The connection string (it may hold a password).
        dsn: Secret,
        /// How long startup waits for the database to answer.
        connect_timeout: Duration,
    },
}

/// `--replica-id`, or with PostgreSQL `<hostname>-<pid>` (unique on a host, and a pod's or
/// container's name where those are the host name).
fn replica_id(given: Option<&str>, store: &StoreChoice) -> Result<Option<String>, ConfigError> {
    let fits = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    match given.map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) if fits(id) => Ok(Some(id.to_string())),
        Some(_) => Err(bad(
            "--replica-id must be 1 to 64 letters, digits, '.', '_' or '-'",
        )),
        None if matches!(store, StoreChoice::Postgres { .. }) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host: String = host
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(48)
                .collect();
            let host = if host.is_empty() {
                "proxy".into()
            } else {
                host
            };
            Ok(Some(format!("{host}-{}", std::process::id())))
        }
        None => Ok(None),
    }
}

/// `--repository-backend` with `--repository-dsn` / `REPOSITORY_DSN` (sigbit's names), or
/// obot's `DATABASE_DSN`, which alone means PostgreSQL.
fn store_choice(cli: &Cli, notes: &mut Vec<String>) -> Result<StoreChoice, ConfigError> {
    let given = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let repository_dsn = given(&cli.repository_dsn);
    let database_dsn = given(&cli.database_dsn);
    let dsn = match (repository_dsn, database_dsn) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                "REPOSITORY_DSN and DATABASE_DSN name different databases; give one",
            ));
        }
        (a, b) => a.or(b),
    };
    let backend = cli.repository_backend.trim().to_ascii_lowercase();
    let postgres = match backend.as_str() {
        "postgres" | "postgresql" => true,
        // obot's variable alone chooses PostgreSQL.
        "local" | "" => cli
            .database_dsn
            .as_deref()
            .is_some_and(|d| !d.trim().is_empty()),
        other @ ("sqlite" | "mysql") => {
            return Err(bad(format!(
                "--repository-backend {other} is not supported; use local (the embedded store) or postgres"
            )));
        }
        other => {
            return Err(bad(format!(
                "--repository-backend {other:?} is unknown; use local or postgres"
            )));
        }
    };
    if !postgres {
        if dsn.is_some() {
            // As sigbit's proxy does: the DSN means something only for an external store.
            notes.push(
                "--repository-dsn (REPOSITORY_DSN) is ignored: --repository-backend is local, the embedded store in --data-path".to_string(),
            );
        }
        return Ok(StoreChoice::Local);
    }
    let Some(dsn) = dsn else {
        return Err(bad(
            "--repository-backend postgres needs a connection string: --repository-dsn or REPOSITORY_DSN (or DATABASE_DSN), such as postgres://user:password@host:5432/database",
        ));
    };
    if !(dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")) {
        return Err(bad(
            "the PostgreSQL connection string must start with postgres:// or postgresql://",
        ));
    }
    Ok(StoreChoice::Postgres {
        dsn: Secret::new(dsn),
        connect_timeout: parse_duration(
            "--repository-connect-timeout",
            &cli.repository_connect_timeout,
        )?,
    })
}

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
    /// Where the state lives.
    pub store: StoreChoice,
    /// This process's name among replicas (metrics label, startup log); `None` for one
    /// process on the embedded store.
    pub replica_id: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// `--require-dpop`: only DPoP-bound tokens are issued and accepted.
    pub require_dpop: bool,
    /// `--dpop-nonces`: proofs carry a nonce of ours.
    pub dpop_nonces: bool,
    pub mcp_path: String,
    /// Normalised origins (`scheme://host[:port]`, lower-case) allowed besides our own.
    pub allowed_origins: Vec<String>,
    pub backend: Backend,
    /// `--config`: several servers, each at `/<name>/mcp` (instead of `backend`).
    pub servers: Option<ServerDefs>,
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
    /// `--policy-file` and the audit log.
    pub governance: Governance,
}

/// Who may call what, and the record of calls.
#[derive(Debug, Clone)]
pub struct Governance {
    pub policy_file: Option<PathBuf>,
    /// `--audit-log`: a file, or `-` for standard output.
    pub audit_log: Option<String>,
    pub audit_arguments: crate::cli::AuditArguments,
    pub audit_fail_closed: bool,
    pub audit_max_bytes: u64,
    pub audit_keep: usize,
    /// `--admin-users`: who may use the operator console.
    pub admin_users: Vec<String>,
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
        let mut tls = tls_config(&cli, external_url.as_ref())?;

        let mut notes = Vec::new();
        let store = store_choice(&cli, &mut notes)?;
        let replica_id = replica_id(cli.replica_id.as_deref(), &store)?;

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
        let servers = cli.config.as_deref().map(servers::load).transpose()?;
        if servers.is_some() && backend != Backend::None {
            return Err(bad(
                "--config names the MCP servers; give no backend on the command line as well",
            ));
        }
        // The servers routed by host name are names of the one certificate.
        if let (
            Some(TlsConfig {
                source: TlsSource::Acme(acme),
                ..
            }),
            Some(defs),
        ) = (&mut tls, &servers)
        {
            acme.more_hosts = defs.servers.iter().filter_map(|s| s.host.clone()).collect();
        }
        if let Some(defs) = &servers {
            notes.extend(defs.notes.iter().cloned());
        }
        if servers.is_some() && mcp_path != "/mcp" {
            notes.push(format!(
                "--mcp-path {mcp_path} is ignored with --config: each server is at /<name>/mcp"
            ));
        }

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
            store,
            replica_id,
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
            require_dpop: cli.require_dpop,
            dpop_nonces: cli.dpop_nonces,
            mcp_path,
            allowed_origins,
            backend,
            servers,
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
            governance: Governance {
                policy_file: cli.policy_file.clone(),
                audit_log: cli.audit_log.clone().filter(|s| !s.trim().is_empty()),
                audit_arguments: cli.audit_arguments,
                audit_fail_closed: cli.audit_fail_closed,
                audit_max_bytes: cli.audit_max_bytes.max(4096),
                audit_keep: cli.audit_keep,
                admin_users: cli
                    .admin_users
                    .iter()
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect(),
            },
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

impl Config {
    /// What the upstream of `server` (a server of `--config`; `None`: the command line's)
    /// is sent and how it is waited for: the shared options, with the server's own in place.
    pub fn upstream_of(&self, server: Option<&ServerDef>) -> UpstreamOptions {
        let mut u = self.upstream.clone();
        let Some(d) = server else { return u };
        for (name, value) in &d.headers {
            u.headers.retain(|(n, _)| n != name);
            u.headers.push((name.clone(), value.clone()));
        }
        u.response_timeout = d.timeout.unwrap_or(u.response_timeout);
        u.connect_timeout = d.connect_timeout.unwrap_or(u.connect_timeout);
        u.streaming_only = d.streaming_only.unwrap_or(u.streaming_only);
        if let Some(mapping) = &d.header_mapping {
            u.mapping = mapping.clone();
        }
        u.pass_access_token = d.pass_access_token.unwrap_or(u.pass_access_token);
        u
    }

    /// How the children of `server` run: the shared `--stdio-*` options, with the server's
    /// own in place (its `env` after `--stdio-env`).
    pub fn stdio_of(&self, server: Option<&ServerDef>) -> StdioOptions {
        let mut s = self.stdio.clone();
        let Some(d) = server else { return s };
        s.env.extend(d.env.iter().cloned());
        if let Some(cwd) = &d.cwd {
            s.cwd = Some(cwd.clone());
        }
        s.shared = d.shared.unwrap_or(s.shared);
        if let Some(total) = d.max_sessions {
            s.max_sessions.total = total;
        }
        let per_user = d.max_sessions_per_user.unwrap_or(s.max_sessions.per_user);
        s.max_sessions.per_user = per_user.min(s.max_sessions.total);
        s.idle_timeout = d.idle_timeout.unwrap_or(s.idle_timeout);
        s.warm_spare = d.warm_spare.unwrap_or(s.warm_spare);
        if let Some(pass) = &d.pass_env {
            s.pass_env = pass.clone();
        }
        s.clean_env = d.clean_env.unwrap_or(s.clean_env);
        s.cache_ttl = d.cache_ttl.unwrap_or(s.cache_ttl);
        s
    }
}

/// The public face of a running proxy, fixed once the listener is bound: its origin and
/// one MCP server's resource. Each server behind the proxy is served with a `Site` of its
/// own ([`Site::serving`]); all of them share the origin and the catalog of servers.
#[derive(Debug, Clone)]
pub struct Site {
    /// The MCP server this site serves: where it is reached, its resource and metadata URL,
    /// its issuer and name. For the main site, the default server of `--config` (or the
    /// command line's one server) reached at the proxy's own origin.
    pub server: ServerFace,
    /// The proxy's own origin: sign-in, registration, revocation and every issuer live here.
    pub home: PublicOrigin,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// `--require-dpop`.
    pub require_dpop: bool,
    /// `--dpop-nonces`.
    pub dpop_nonces: bool,
    /// Every server this proxy issues tokens for.
    pub catalog: std::sync::Arc<Vec<ServerFace>>,
}

/// One MCP server as clients see it.
#[derive(Debug, Clone)]
pub struct ServerFace {
    /// The server's name in `--config`; `None` for the command line's one server, and for
    /// the main site of `--config` without a default server.
    pub name: Option<String>,
    /// The host name it is routed by (`host` in `--config`), if not by path.
    pub host: Option<String>,
    /// Where clients reach it: the proxy's origin, or its host's.
    pub origin: PublicOrigin,
    pub mcp_path: String,
    /// The protected resource: `<origin><mcp_path>`.
    pub resource: String,
    /// Absolute URL of the protected-resource metadata (RFC 9728 §3.1 path form).
    pub resource_metadata_url: String,
    /// The issuer of its tokens: the proxy's origin, or `<proxy's origin>/<name>` for a
    /// server of `--config`, also one routed by host name (RFC 8414 §3.1).
    pub issuer: String,
    /// Who may use it besides signing in.
    pub admits: Admission,
}

impl ServerFace {
    pub fn new(
        origin: &PublicOrigin,
        name: Option<&str>,
        mcp_path: &str,
        admits: Admission,
    ) -> Self {
        Self {
            name: name.map(str::to_string),
            host: None,
            origin: origin.clone(),
            mcp_path: mcp_path.to_string(),
            resource: origin.join(mcp_path),
            resource_metadata_url: origin.join(&format!("{RESOURCE_METADATA_PATH}{mcp_path}")),
            issuer: match name {
                Some(n) => origin.join(&format!("/{n}")),
                None => origin.as_str().to_string(),
            },
            admits,
        }
    }

    /// A server routed by `host`: its MCP endpoint is `/mcp` on that host (the proxy's
    /// scheme and port), its issuer still on the proxy's own origin, where people sign in.
    fn hosted(
        main: &PublicOrigin,
        name: &str,
        host: &str,
        admits: Admission,
    ) -> Result<Self, ConfigError> {
        if main.host().eq_ignore_ascii_case(host) {
            return Err(bad(format!(
                "server {name:?}: host {host} is the external URL's own; give the server a name of its own"
            )));
        }
        let port = match (main.scheme(), main.port()) {
            ("https", 443) | ("http", 80) => String::new(),
            (_, p) => format!(":{p}"),
        };
        let origin = PublicOrigin::parse(&format!("{}://{host}{port}", main.scheme()))?;
        Ok(Self {
            host: Some(host.to_string()),
            issuer: main.join(&format!("/{name}")),
            ..Self::new(&origin, Some(name), "/mcp", admits)
        })
    }

    /// How pages name it: its name, or "this MCP server".
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("this MCP server")
    }
}

impl Site {
    /// The same site, serving `server`.
    pub fn serving(&self, server: &ServerFace) -> Site {
        Site {
            server: server.clone(),
            ..self.clone()
        }
    }

    /// The server whose resource is `resource` (as stored: exactly).
    pub fn server_of(&self, resource: &str) -> Option<&ServerFace> {
        self.catalog.iter().find(|s| s.resource == resource)
    }

    /// The server named `name`.
    pub fn server_named(&self, name: &str) -> Option<&ServerFace> {
        self.catalog
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
    }

    /// The issuer of tokens for `resource`; the site's own for a resource it does not know.
    pub fn issuer_of(&self, resource: &str) -> &str {
        self.server_of(resource)
            .map_or(self.server.issuer.as_str(), |s| s.issuer.as_str())
    }

    /// Whether the server of `resource` lets `identity` use it (its `users` in `--config`).
    /// A resource no server has any more is not judged here: the gate refuses its tokens.
    pub fn admits(&self, resource: &str, identity: &crate::store::Identity) -> bool {
        self.server_of(resource)
            .is_none_or(|s| s.admits.admits(identity))
    }

    /// The server of `--config` whose paths `path` is under, and the rest of the path
    /// (`/files/mcp` is `files`' `/mcp`).
    pub fn server_at<'a>(&self, path: &'a str) -> Option<(&ServerFace, &'a str)> {
        let (first, rest) = path.strip_prefix('/')?.split_once('/')?;
        let server = self.server_named(first)?;
        Some((server, &path[first.len() + 1..])).filter(|_| !rest.is_empty())
    }

    /// The host names of the servers routed by host.
    pub fn server_hosts(&self) -> Vec<String> {
        self.catalog.iter().filter_map(|s| s.host.clone()).collect()
    }

    /// The server routed by the host of `authority` (`host[:port]`), if any.
    pub fn hosted_at(&self, authority: &str) -> Option<&ServerFace> {
        let host = authority
            .parse::<http::uri::Authority>()
            .ok()?
            .host()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.catalog
            .iter()
            .find(|s| s.host.as_deref() == Some(host.as_str()))
    }

    /// Whether the site serves one of the catalog's servers: the main site of `--config`
    /// without a default server does not (its `server` is in no catalog entry).
    pub fn serves(&self) -> bool {
        self.server_of(&self.server.resource).is_some()
    }
}

/// Whether a client's `resource` parameter names `ours`: equal after lower-casing scheme
/// and host (URL parsing does both) and ignoring one trailing slash.
pub fn resource_matches(ours: &str, given: &str) -> bool {
    let (Ok(a), Ok(b)) = (url::Url::parse(ours), url::Url::parse(given)) else {
        return false;
    };
    let path = |u: &url::Url| {
        let p = u.path();
        p.strip_suffix('/').unwrap_or(p).to_string()
    };
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && path(&a) == path(&b)
        && a.query() == b.query()
        && b.fragment().is_none()
        && b.username().is_empty()
}

impl Config {
    /// The site as seen from outside; `bound_port` is the port clients reach (the TLS
    /// listener's when TLS is on). With `--config` it serves the default server, or none.
    pub fn site(&self, bound_port: u16) -> Result<Site, ConfigError> {
        let origin = match (&self.external_url, &self.tls) {
            (Some(o), _) => o.clone(),
            (None, Some(_)) if bound_port == 443 => PublicOrigin::parse("https://localhost")?,
            (None, Some(_)) => PublicOrigin::parse(&format!("https://localhost:{bound_port}"))?,
            (None, None) => PublicOrigin::default_for_port(bound_port)?,
        };
        let (catalog, main) = match &self.servers {
            None => {
                let one = ServerFace::new(&origin, None, &self.mcp_path, Admission::everyone());
                (vec![one.clone()], one)
            }
            Some(defs) => {
                let catalog: Vec<ServerFace> = defs
                    .servers
                    .iter()
                    .map(|s| match &s.host {
                        Some(host) => ServerFace::hosted(&origin, &s.name, host, s.admits.clone()),
                        None => {
                            let path = format!("/{}/mcp", s.name);
                            Ok(ServerFace::new(
                                &origin,
                                Some(&s.name),
                                &path,
                                s.admits.clone(),
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                let main = defs
                    .default
                    .as_deref()
                    .and_then(|d| catalog.iter().find(|s| s.name.as_deref() == Some(d)))
                    .cloned()
                    // No default: the main site serves no server (its resource is in no
                    // catalog entry, so no token is ever for it).
                    .unwrap_or_else(|| {
                        ServerFace::new(&origin, None, &self.mcp_path, Admission::everyone())
                    });
                (catalog, main)
            }
        };
        Ok(Site {
            // The main site is reached at the proxy's own origin, even when its default
            // server is also routed by a host of its own.
            server: ServerFace {
                origin: origin.clone(),
                ..main
            },
            home: origin,
            allowed_origins: self.allowed_origins.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            require_dpop: self.require_dpop,
            dpop_nonces: self.dpop_nonces,
            catalog: std::sync::Arc::new(catalog),
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
    fn a_servers_own_options_replace_the_shared_ones_for_it_only() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "mcp-auth-proxy",
            "--password",
            "a long enough password",
            "--proxy-headers",
            "X-Team: all, X-Key: shared",
            "--upstream-timeout",
            "30s",
            "--max-sessions",
            "10",
            "--stdio-env",
            "LEVEL=info",
        ])
        .unwrap();
        let config = Config::from_cli(cli).unwrap();
        let defs = servers::parse(
            r#"
            [[server]]
            name = "web"
            url = "http://127.0.0.1:8080/mcp"
            headers = { "X-Key" = "own" }
            timeout = "5s"
            connect_timeout = "2s"
            streaming_only = true
            pass_access_token = true
            [[server]]
            name = "files"
            command = ["node", "files.js"]
            env = { ROOT = "/srv" }
            max_sessions = 4
            max_sessions_per_user = 9
            clean_env = true
            pass_env = ["PATH"]
            cache_ttl = "1m"
            "#,
            std::path::Path::new("/"),
        )
        .unwrap();
        let (web, files) = (&defs.servers[0], &defs.servers[1]);
        let u = config.upstream_of(Some(web));
        let header = |name: &str| {
            u.headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(header("x-key"), ["own"]);
        assert_eq!(header("x-team"), ["all"]);
        assert_eq!(u.response_timeout, Duration::from_secs(5));
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        assert!(u.streaming_only && u.pass_access_token);
        let shared = config.upstream_of(None);
        assert_eq!(shared.response_timeout, Duration::from_secs(30));
        assert!(!shared.streaming_only && !shared.pass_access_token);

        let s = config.stdio_of(Some(files));
        assert_eq!(
            s.env,
            [
                ("LEVEL".to_string(), "info".to_string()),
                ("ROOT".into(), "/srv".into())
            ]
        );
        assert_eq!((s.max_sessions.total, s.max_sessions.per_user), (4, 4));
        assert!(s.clean_env);
        assert_eq!(s.pass_env, ["PATH"]);
        assert_eq!(s.cache_ttl, Duration::from_secs(60));
        let shared = config.stdio_of(None);
        assert_eq!(
            (shared.max_sessions.total, shared.max_sessions.per_user),
            (10, 5)
        );
        assert!(!shared.clean_env);
    }

    #[test]
    fn proxy_headers() {
        let h = parse_proxy_headers("X-A: 1, X-B:two").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].1, "two");
        assert!(parse_proxy_headers("nocolon").is_err());
    }
}
