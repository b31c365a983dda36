//! The command line: every flag, its environment variable and its help.
//!
//! Names follow sigbit/mcp-auth-proxy so its users can swap binaries (docs/design.md,
//! "Compatibility with sigbit/mcp-auth-proxy"); flags of our own are named in the same style.
//! This module only describes the shape; [`crate::config::Config::from_cli`] validates it.

use clap::Parser;

/// Let's Encrypt's production ACME directory: where certificates come from by default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// One rule for every boolean, flag or environment variable: `true`/`1`/`yes`/`on` and
/// `false`/`0`/`no`/`off`, any case; anything else is an error (clap names the flag or
/// variable), never a silent `false`.
fn env_bool(s: &str) -> Result<bool, NotABoolean> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(NotABoolean(s)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a boolean: use true/false, 1/0, yes/no or on/off")]
struct NotABoolean(String);

/// The end of `--help`: what only the environment sets, the subcommand, and examples.
const AFTER_HELP: &str = "\
Set only in the environment:
  ENCRYPTION_KEY     base64 of 32 bytes sealing secrets at rest (default: generated into the data directory)
  AUTH_HMAC_SECRET   base64 of 32 bytes signing cookies (default: generated likewise)
  JWT_PRIVATE_KEY    PKCS#8 PEM (P-256, or RSA as sigbit makes) signing identity assertions (default: generated into the store)
  MODE               debug: a human-readable log (JSON lines otherwise)
  RUST_LOG           log filter (default: info)

Durations: 30s, 10m, 1h, 7d (a bare number is seconds). Booleans: true/false, 1/0, yes/no, on/off.

`mcp-auth-proxy hash-password` reads a password on standard input and prints its bcrypt hash,
for --password-hash (PASSWORD_HASH).
`mcp-auth-proxy migrate --from sigbit:<dir>` brings sigbit/mcp-auth-proxy's signing key and
certificate into the data directory (see `mcp-auth-proxy migrate --help`).

Examples:
  # A stdio MCP server, bridged to Streamable HTTP, on this machine:
  mcp-auth-proxy --listen 127.0.0.1:8080 --password-file ./password \\
      -- npx -y @modelcontextprotocol/server-everything
  # An HTTP MCP server on a VPS, with a Let's Encrypt certificate:
  mcp-auth-proxy --external-url https://mcp.example.com --tls-accept-tos \\
      --password-hash \"$(mcp-auth-proxy hash-password < ./password)\" http://localhost:3000/mcp
  # Members of a GitHub organisation:
  mcp-auth-proxy --external-url https://mcp.example.com --tls-accept-tos \\
      --github-client-id ID --github-client-secret SECRET --github-allowed-orgs my-org \\
      http://localhost:3000/mcp";

/// OAuth 2.1 in front of any MCP server.
///
/// The backend comes last: an `http(s)://` URL proxies an HTTP MCP server; anything else
/// (after `--`) is a stdio command. With no backend the proxy serves sign-in and the
/// authorization server only.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mcp-auth-proxy",
    version,
    about,
    long_about = None,
    // A flag given twice: the last one wins, as in sigbit's proxy (scripts that append an
    // override keep working).
    args_override_self = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Plain HTTP listen address: HOST:PORT, [V6]:PORT or :PORT (all interfaces).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "LISTEN",
        default_value = ":80"
    )]
    pub listen: String,

    /// HTTPS listen address (used when TLS is on: ACME or certificate files).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "TLS_LISTEN",
        default_value = ":443"
    )]
    pub tls_listen: String,

    /// Do not turn ACME on automatically for an https external URL.
    #[arg(help_heading = "Listening and TLS", long, env = "NO_AUTO_TLS", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub no_auto_tls: bool,

    /// Host name of the ACME certificate (default: the external URL's host).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        short = 'H',
        env = "TLS_HOST"
    )]
    pub tls_host: Option<String>,

    /// ACME directory URL (Let's Encrypt production by default).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "TLS_DIRECTORY_URL",
        default_value = LETS_ENCRYPT_DIRECTORY
    )]
    pub tls_directory_url: String,

    /// Accept the ACME CA's terms of service (required whenever ACME is used).
    #[arg(help_heading = "Listening and TLS", long, env = "TLS_ACCEPT_TOS", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub tls_accept_tos: bool,

    /// Contact email given to the ACME CA (expiry warnings).
    #[arg(help_heading = "Listening and TLS", long, env = "TLS_CONTACT_EMAIL")]
    pub tls_contact_email: Option<String>,

    /// PEM file of a CA to trust for the ACME directory (a private CA, pebble).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "TLS_DIRECTORY_CA_FILE"
    )]
    pub tls_directory_ca_file: Option<std::path::PathBuf>,

    /// ACME challenge: tls-alpn-01 (on the TLS listener) or http-01 (on the plain listener).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "TLS_CHALLENGE",
        default_value = "tls-alpn-01"
    )]
    pub tls_challenge: String,

    /// PEM certificate chain (with --tls-key-file; reloaded when the files change).
    #[arg(help_heading = "Listening and TLS", long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(help_heading = "Listening and TLS", long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// Public origin of this proxy (issuer, resource, callback base). No path.
    /// Default: http://localhost, plus the listen port when it is not 80.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        short = 'e',
        env = "EXTERNAL_URL"
    )]
    pub external_url: Option<String>,

    /// State directory (the embedded store, generated keys).
    #[arg(
        help_heading = "Store and operations",
        long,
        short = 'd',
        env = "DATA_PATH",
        default_value = "./data"
    )]
    pub data_path: std::path::PathBuf,

    /// Store backend: `local` (the embedded sled store in --data-path) or `postgres` (a
    /// database several proxies share; needs --repository-dsn and ENCRYPTION_KEY).
    #[arg(
        help_heading = "Store and operations",
        long,
        env = "REPOSITORY_BACKEND",
        default_value = "local"
    )]
    pub repository_backend: String,

    /// PostgreSQL connection string, such as
    /// postgres://user:password@host:5432/database?sslmode=verify-full. On a command line it
    /// is masked once the proxy starts, readable by every local user until then: prefer the
    /// REPOSITORY_DSN variable.
    #[arg(
        help_heading = "Store and operations",
        long,
        env = "REPOSITORY_DSN",
        hide_env_values = true
    )]
    pub repository_dsn: Option<String>,

    /// This process's name among several on one PostgreSQL store: logged at startup and
    /// carried by every metric as `replica="…"` (default with PostgreSQL: <hostname>-<pid>;
    /// the embedded store has one process and no label). Letters, digits, `.`, `_`, `-`.
    #[arg(help_heading = "Store and operations", long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,

    /// How long startup waits for PostgreSQL to answer before it gives up (exit 1).
    #[arg(
        help_heading = "Store and operations",
        long,
        env = "REPOSITORY_CONNECT_TIMEOUT",
        default_value = "60s"
    )]
    pub repository_connect_timeout: String,

    /// IPs or CIDRs of reverse proxies whose X-Forwarded-* headers are believed (comma-separated).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Public path of the MCP endpoint.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "MCP_PATH",
        default_value = "/mcp"
    )]
    pub mcp_path: String,

    /// Several MCP servers behind this one proxy: a TOML file naming each (its path
    /// `/<name>/mcp`, its backend, who may use it); see docs/servers.md. Instead of a backend
    /// on the command line.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "MCP_AUTH_PROXY_CONFIG"
    )]
    pub config: Option<std::path::PathBuf>,

    /// Extra browser origins allowed on the MCP endpoint and metadata (comma-separated).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Sends `Authorization: Bearer <token>` to the HTTP upstream.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "PROXY_BEARER_TOKEN",
        hide_env_values = true
    )]
    pub proxy_bearer_token: Option<String>,

    /// obot-compatible name for the PostgreSQL store's connection string (alone, it chooses
    /// that store).
    #[arg(
        help_heading = "Store and operations",
        long,
        env = "DATABASE_DSN",
        hide = true,
        hide_env_values = true
    )]
    pub database_dsn: Option<String>,

    /// TOML file of clients declared by the operator (see the README).
    #[arg(help_heading = "Clients and tokens", long, env = "CLIENTS_FILE")]
    pub clients_file: Option<std::path::PathBuf>,

    /// Refuse client ID metadata documents (https URLs used as client_id).
    #[arg(help_heading = "Clients and tokens", long, env = "NO_CIMD", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub no_cimd: bool,

    /// Hosts whose client metadata documents may be fetched from private or loopback
    /// addresses (testing, private deployments; comma-separated).
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "CIMD_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub cimd_allow_hosts: Vec<String>,

    /// PEM file of CA certificates trusted, besides the system's, for client metadata
    /// documents (a private CA).
    #[arg(help_heading = "Clients and tokens", long, env = "CIMD_CA_FILE")]
    pub cimd_ca_file: Option<std::path::PathBuf>,

    /// Forward-auth endpoint for nginx auth_request, Traefik ForwardAuth, Caddy forward_auth
    /// (empty: off).
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "FORWARD_AUTH_PATH",
        default_value = "/authenticate"
    )]
    pub forward_auth_path: String,

    /// User claims sent upstream as headers: `/pointer:Header-Name,…` (client copies stripped).
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "HEADER_MAPPING"
    )]
    pub header_mapping: Option<String>,

    /// Header naming the signed-in user's id to the HTTP upstream.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "USER_HEADER",
        default_value = "X-Forwarded-User"
    )]
    pub user_header: String,

    /// Header carrying the signed-in user's email.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "EMAIL_HEADER",
        default_value = "X-Forwarded-Email"
    )]
    pub email_header: String,

    /// Header carrying the signed-in user's name.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "NAME_HEADER",
        default_value = "X-Forwarded-Name"
    )]
    pub name_header: String,

    /// Header carrying the signed-in user's groups (comma-separated).
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "GROUPS_HEADER",
        default_value = "X-Forwarded-Groups"
    )]
    pub groups_header: String,

    /// Send the HTTP upstream a short-lived JWT signed by us about the caller (never the
    /// client's token); keys at /.well-known/jwks.json.
    #[arg(help_heading = "HTTP upstream and identity", long, env = "PROXY_FORWARD_AUTHORIZATION", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub proxy_forward_authorization: bool,

    /// Send the HTTP upstream the user's access token at their sign-in provider
    /// (X-Forwarded-Access-Token), refreshed before it expires.
    #[arg(help_heading = "HTTP upstream and identity", long, env = "PASS_ACCESS_TOKEN", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub pass_access_token: bool,

    /// How long a generated assertion signing key signs before it is replaced.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "JWT_KEY_ROTATION",
        default_value = "30d"
    )]
    pub jwt_key_rotation: String,

    /// Static headers sent to the HTTP upstream: `Name:Value,Name2:Value2`.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "PROXY_HEADERS",
        hide_env_values = true
    )]
    pub proxy_headers: Option<String>,

    /// Answer 405 to the GET SSE stream on the MCP path.
    #[arg(help_heading = "HTTP upstream and identity", long, env = "HTTP_STREAMING_ONLY", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub http_streaming_only: bool,

    /// Time allowed to connect to the HTTP upstream.
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "UPSTREAM_CONNECT_TIMEOUT",
        default_value = "10s"
    )]
    pub upstream_connect_timeout: String,

    /// Time allowed for the MCP server to start answering (headers; an open stream is not
    /// limited).
    #[arg(
        help_heading = "HTTP upstream and identity",
        long,
        env = "UPSTREAM_TIMEOUT",
        default_value = "60s"
    )]
    pub upstream_timeout: String,

    /// Prometheus metrics address (`/metrics`, plus `/healthz` and `/readyz`); off when unset.
    #[arg(help_heading = "Store and operations", long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Requests per minute per client IP on registration, token, revocation and provider
    /// sign-in (0: no limit).
    #[arg(
        help_heading = "Limits",
        long,
        env = "RATE_LIMIT",
        default_value_t = 120
    )]
    pub rate_limit: u32,

    /// Largest request body accepted on the MCP endpoint and proxied paths.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MAX_BODY",
        default_value = "4MiB"
    )]
    pub max_body: String,

    /// Most connections served at once; more wait in the kernel's queue.
    #[arg(
        help_heading = "Limits",
        long,
        env = "MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,

    /// Time a client has to send a request's headers (slow clients are cut off).
    #[arg(
        help_heading = "Limits",
        long,
        env = "HEADER_READ_TIMEOUT",
        default_value = "10s"
    )]
    pub header_read_timeout: String,

    /// Time a client has to send a request's whole body once its headers are in (a body
    /// that trickles in is cut off: 408, or the connection closed).
    #[arg(
        help_heading = "Limits",
        long,
        env = "BODY_READ_TIMEOUT",
        default_value = "30s"
    )]
    pub body_read_timeout: String,

    /// Shared password for the login page (hashed with bcrypt at startup, never stored).
    /// On a command line it is masked (ps, /proc/*/cmdline) once the proxy starts, readable
    /// by every local user until then: prefer --password-hash, --password-file or the
    /// PASSWORD variable.
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// File holding the login password (its first line), readable by its owner only.
    #[arg(help_heading = "Password sign-in", long, env = "PASSWORD_FILE")]
    pub password_file: Option<std::path::PathBuf>,

    /// bcrypt hash(es) of accepted passwords (comma-separated); may be given with --password.
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "PASSWORD_HASH",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub password_hash: Vec<String>,

    /// Google sign-in: OAuth client id.
    #[arg(help_heading = "Google sign-in", long, env = "GOOGLE_CLIENT_ID")]
    pub google_client_id: Option<String>,

    /// Google sign-in: OAuth client secret.
    #[arg(
        help_heading = "Google sign-in",
        long,
        env = "GOOGLE_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub google_client_secret: Option<String>,

    /// Google accounts allowed to sign in (exact emails, comma-separated).
    #[arg(
        help_heading = "Google sign-in",
        long,
        env = "GOOGLE_ALLOWED_USERS",
        value_delimiter = ','
    )]
    pub google_allowed_users: Vec<String>,

    /// Google Workspace domains (`hd` claim) whose verified accounts may sign in.
    #[arg(
        help_heading = "Google sign-in",
        long,
        env = "GOOGLE_ALLOWED_WORKSPACES",
        value_delimiter = ','
    )]
    pub google_allowed_workspaces: Vec<String>,

    /// Let every Google account with a verified email sign in.
    #[arg(help_heading = "Google sign-in", long, env = "GOOGLE_ALLOW_ALL_USERS", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub google_allow_all_users: bool,

    /// Advanced: Google's authorization endpoint.
    #[arg(
        help_heading = "Google sign-in",
        long,
        env = "GOOGLE_AUTH_URL",
        default_value = "https://accounts.google.com/o/oauth2/v2/auth"
    )]
    pub google_auth_url: String,

    /// Advanced: Google's token endpoint.
    #[arg(
        help_heading = "Google sign-in",
        long,
        env = "GOOGLE_TOKEN_URL",
        default_value = "https://oauth2.googleapis.com/token"
    )]
    pub google_token_url: String,

    /// Advanced: Google's userinfo endpoint.
    #[arg(
        help_heading = "Google sign-in",
        long,
        env = "GOOGLE_USERINFO_URL",
        default_value = "https://openidconnect.googleapis.com/v1/userinfo"
    )]
    pub google_userinfo_url: String,

    /// GitHub sign-in: OAuth app client id.
    #[arg(help_heading = "GitHub sign-in", long, env = "GITHUB_CLIENT_ID")]
    pub github_client_id: Option<String>,

    /// GitHub sign-in: OAuth app client secret.
    #[arg(
        help_heading = "GitHub sign-in",
        long,
        env = "GITHUB_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub github_client_secret: Option<String>,

    /// GitHub logins allowed to sign in (comma-separated).
    #[arg(
        help_heading = "GitHub sign-in",
        long,
        env = "GITHUB_ALLOWED_USERS",
        value_delimiter = ','
    )]
    pub github_allowed_users: Vec<String>,

    /// GitHub organisations (`org`) or teams (`org:team-slug`) whose members may sign in.
    #[arg(
        help_heading = "GitHub sign-in",
        long,
        env = "GITHUB_ALLOWED_ORGS",
        value_delimiter = ','
    )]
    pub github_allowed_orgs: Vec<String>,

    /// Let every GitHub account sign in.
    #[arg(help_heading = "GitHub sign-in", long, env = "GITHUB_ALLOW_ALL_USERS", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub github_allow_all_users: bool,

    /// GitHub (Enterprise) web address, for the authorization pages.
    #[arg(
        help_heading = "GitHub sign-in",
        long,
        env = "GITHUB_URL",
        default_value = "https://github.com"
    )]
    pub github_url: String,

    /// GitHub (Enterprise) API address.
    #[arg(
        help_heading = "GitHub sign-in",
        long,
        env = "GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,

    /// OpenID Connect sign-in: the provider's discovery document URL.
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_CONFIGURATION_URL"
    )]
    pub oidc_configuration_url: Option<String>,

    /// OpenID Connect client id.
    #[arg(help_heading = "OpenID Connect sign-in", long, env = "OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,

    /// OpenID Connect client secret (leave out for a public client).
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub oidc_client_secret: Option<String>,

    /// OpenID Connect scopes (comma-separated).
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_SCOPES",
        value_delimiter = ',',
        default_value = "openid,profile,email"
    )]
    pub oidc_scopes: Vec<String>,

    /// JSON Pointer to the user id in the claims (ID token merged with userinfo).
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_USER_ID_FIELD",
        default_value = "/email"
    )]
    pub oidc_user_id_field: String,

    /// Label of the OpenID Connect button.
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_PROVIDER_NAME",
        default_value = "OIDC"
    )]
    pub oidc_provider_name: String,

    /// OpenID Connect user ids allowed to sign in (exact, comma-separated).
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_ALLOWED_USERS",
        value_delimiter = ','
    )]
    pub oidc_allowed_users: Vec<String>,

    /// OpenID Connect user ids allowed by glob (`*@example.com`; `\,` escapes a comma).
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_ALLOWED_USERS_GLOB"
    )]
    pub oidc_allowed_users_glob: Option<String>,

    /// Claims that admit a user: `/pointer=value` (comma-separated; arrays match any element).
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_ALLOWED_ATTRIBUTES"
    )]
    pub oidc_allowed_attributes: Option<String>,

    /// Like --oidc-allowed-attributes, with globs as values.
    #[arg(
        help_heading = "OpenID Connect sign-in",
        long,
        env = "OIDC_ALLOWED_ATTRIBUTES_GLOB"
    )]
    pub oidc_allowed_attributes_glob: Option<String>,

    /// Let every account at the OpenID Connect provider sign in.
    #[arg(help_heading = "OpenID Connect sign-in", long, env = "OIDC_ALLOW_ALL_USERS", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub oidc_allow_all_users: bool,

    /// With exactly one provider and no password, show the login page instead of going
    /// straight to the provider.
    #[arg(help_heading = "Password sign-in", long, env = "NO_PROVIDER_AUTO_SELECT", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub no_provider_auto_select: bool,

    /// Once the password account has a passkey, sign in with it only: the password then
    /// signs in by itself just to add the account's first passkey (docs/passkeys.md).
    #[arg(help_heading = "Password sign-in", long, env = "REQUIRE_PASSKEY", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub require_passkey: bool,

    /// User name of the password sign-in (the subject is `password:<name>`).
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "PASSWORD_USER",
        default_value = "admin"
    )]
    pub password_user: String,

    /// Failed passwords from one IP within --login-failure-window that lock it.
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "LOGIN_MAX_FAILURES",
        default_value_t = 10
    )]
    pub login_max_failures: u32,

    /// Window in which failed passwords are counted.
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "LOGIN_FAILURE_WINDOW",
        default_value = "5m"
    )]
    pub login_failure_window: String,

    /// How long an IP stays locked after too many failed passwords.
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "LOGIN_LOCKOUT",
        default_value = "2m"
    )]
    pub login_lockout: String,

    /// Lifetime of access tokens.
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "ACCESS_TOKEN_TTL",
        default_value = "1h"
    )]
    pub access_token_ttl: String,

    /// Issue and accept only DPoP-bound tokens (RFC 9449): a token request without a DPoP
    /// proof and a bearer token at the MCP endpoint are refused. Off by default, since most
    /// MCP clients do not send proofs yet.
    #[arg(help_heading = "Clients and tokens", long, env = "REQUIRE_DPOP")]
    pub require_dpop: bool,

    /// Require DPoP proofs to carry a nonce this server issued within 5 minutes (RFC 9449
    /// §8-9: clients get one with a `use_dpop_nonce` answer and retry). Any replica sharing
    /// the store's key can check them.
    #[arg(help_heading = "Clients and tokens", long, env = "DPOP_NONCES")]
    pub dpop_nonces: bool,

    /// Absolute lifetime of refresh tokens, from the first grant.
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "REFRESH_TOKEN_TTL",
        default_value = "30d"
    )]
    pub refresh_token_ttl: String,

    /// How long a rotated refresh token still returns the same new pair.
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "REFRESH_GRACE",
        default_value = "30s"
    )]
    pub refresh_grace: String,

    /// Lifetime of authorization codes.
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "AUTH_CODE_TTL",
        default_value = "60s"
    )]
    pub auth_code_ttl: String,

    /// Registered clients that never complete a sign-in are deleted after this long.
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "CLIENT_TTL",
        default_value = "7d"
    )]
    pub client_ttl: String,

    /// Lifetime of a browser sign-in on the login page.
    #[arg(
        help_heading = "Password sign-in",
        long,
        env = "LOGIN_SESSION_TTL",
        default_value = "12h"
    )]
    pub login_session_ttl: String,

    /// Private-use URI schemes allowed in redirect URIs (comma-separated).
    #[arg(
        help_heading = "Clients and tokens",
        long,
        env = "ALLOWED_REDIRECT_SCHEMES",
        value_delimiter = ',',
        default_value = "cursor,vscode,vscode-insiders,windsurf"
    )]
    pub allowed_redirect_schemes: Vec<String>,

    /// Threads serving connections (0: one per CPU core).
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "WORKERS",
        default_value_t = 0
    )]
    pub workers: usize,

    /// Serve every request through the general HTTP stack, without the HTTP/1 fast lane for
    /// POST on the MCP endpoint (for diagnosis: the answers are the same).
    #[arg(help_heading = "Listening and TLS", long, env = "NO_FAST_LANE", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub no_fast_lane: bool,

    /// After SIGTERM/SIGINT, how long open requests and streams may run before they are cut.
    #[arg(
        help_heading = "Listening and TLS",
        long,
        env = "SHUTDOWN_GRACE",
        default_value = "10s"
    )]
    pub shutdown_grace: String,

    /// Working directory of the stdio MCP server (default: a directory of its own,
    /// <data-path>/stdio-cwd, or the --stdio-user's home; relative file arguments of the
    /// command are resolved against the proxy's directory).
    #[arg(help_heading = "Stdio servers", long, env = "STDIO_CWD")]
    pub stdio_cwd: Option<std::path::PathBuf>,

    /// Run stdio MCP servers as this user (the proxy must start as root): the real boundary
    /// between a server and the proxy's keys and store.
    #[arg(help_heading = "Stdio servers", long, env = "STDIO_USER")]
    pub stdio_user: Option<String>,

    /// Extra environment for the stdio MCP server: KEY=VALUE (repeatable).
    #[arg(
        help_heading = "Stdio servers",
        long = "stdio-env",
        env = "STDIO_ENV",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub stdio_env: Vec<String>,

    /// Variables passed to the stdio MCP server with --stdio-clean-env (comma-separated).
    #[arg(
        help_heading = "Stdio servers",
        long,
        env = "STDIO_PASS_ENV",
        value_delimiter = ','
    )]
    pub stdio_pass_env: Vec<String>,

    /// Start the stdio MCP server with only PATH, HOME, locale and --stdio-pass-env variables.
    #[arg(help_heading = "Stdio servers", long, env = "STDIO_CLEAN_ENV", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub stdio_clean_env: bool,

    /// stdio children: one per MCP session (per-session), or one for all sessions (shared).
    #[arg(
        help_heading = "Stdio servers",
        long,
        env = "STDIO_MODE",
        default_value = "per-session"
    )]
    pub stdio_mode: String,

    /// The signed-in user in each session's stdio child: `user=VAR,email=VAR,name=VAR,
    /// groups=VAR,/claim=VAR` (per-session mode only).
    #[arg(help_heading = "Stdio servers", long, env = "STDIO_IDENTITY_ENV")]
    pub stdio_identity_env: Option<String>,

    /// Most live MCP sessions (each runs its own stdio child).
    #[arg(
        help_heading = "Stdio servers",
        long,
        env = "MAX_SESSIONS",
        default_value_t = 100
    )]
    pub max_sessions: usize,

    /// Who may call which tools, prompts and resources: a TOML policy file (rules in order,
    /// first match decides; see docs/policy.md). Reloaded when it changes; a file that does
    /// not parse keeps the last good one. Without it every signed-in user may call
    /// everything.
    #[arg(help_heading = "Policy and audit", long, env = "POLICY_FILE")]
    pub policy_file: Option<std::path::PathBuf>,

    /// Write one JSON line per tools/call, resources/read, prompts/get and refused attempt
    /// to this file (`-`: standard output).
    #[arg(help_heading = "Policy and audit", long, env = "AUDIT_LOG")]
    pub audit_log: Option<String>,

    /// How the audit log records a call's arguments: `digest` (SHA-256 of their JSON),
    /// `redact` (argument names only) or `full`. The policy file may say otherwise per tool.
    #[arg(
        help_heading = "Policy and audit",
        long,
        env = "AUDIT_ARGUMENTS",
        value_enum,
        default_value = "digest"
    )]
    pub audit_arguments: AuditArguments,

    /// Refuse calls (JSON-RPC error) while the audit log cannot be written, rather than
    /// serve them unrecorded.
    #[arg(help_heading = "Policy and audit", long, env = "AUDIT_FAIL_CLOSED", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub audit_fail_closed: bool,

    /// Size at which the audit log file is rotated (`<file>.1`, `<file>.2`, …).
    #[arg(help_heading = "Policy and audit", long, env = "AUDIT_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub audit_max_bytes: u64,

    /// The operators: users who may open the console at /.auth/admin, named as the proxy
    /// names them (`password:admin`, `github:<login>`, `google:<email>`, `oidc:<id>`),
    /// comma-separated.
    #[arg(
        help_heading = "Policy and audit",
        long,
        env = "ADMIN_USERS",
        value_delimiter = ','
    )]
    pub admin_users: Vec<String>,

    /// Rotated audit log files kept.
    #[arg(
        help_heading = "Policy and audit",
        long,
        env = "AUDIT_KEEP",
        default_value_t = 5
    )]
    pub audit_keep: usize,

    /// Most live MCP sessions of one user, so one user cannot take every slot (0: half of
    /// --max-sessions).
    #[arg(
        help_heading = "Stdio servers",
        long,
        env = "MAX_SESSIONS_PER_USER",
        default_value_t = 0
    )]
    pub max_sessions_per_user: usize,

    /// Keep one started stdio server waiting, so a new session does not wait for it to start.
    #[arg(help_heading = "Stdio servers", long, env = "STDIO_WARM_SPARE", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub stdio_warm_spare: bool,

    /// An MCP session nobody used for this long (and with no open stream) is ended.
    #[arg(
        help_heading = "Stdio servers",
        long,
        env = "SESSION_IDLE_TIMEOUT",
        default_value = "30m"
    )]
    pub session_idle_timeout: String,

    /// How long a 2026-07-28 client may treat a stdio server's lists and reads as fresh
    /// (`ttlMs` on tools/list, resources/read, server/discover…; 0: refetch every time).
    #[arg(
        help_heading = "Stdio servers",
        long,
        env = "STDIO_CACHE_TTL",
        default_value = "0s"
    )]
    pub stdio_cache_ttl: String,

    /// The backend: an http(s) URL, or a stdio command and its arguments after `--`.
    // Not `allow_hyphen_values`: a mistyped `--flag` before the backend is an error naming it
    // (with the closest flag), not the first word of a stdio command. After the first word,
    // or after `--`, everything is the command's.
    #[arg(env = "MCP_SERVER_URL", num_args = 0.., trailing_var_arg = true)]
    pub backend: Vec<String>,
}

/// `mcp-auth-proxy migrate`: brings what can be reused into the data directory. Run it with
/// the proxy stopped.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mcp-auth-proxy migrate",
    about,
    long_about = None,
    after_help = "\
From sigbit/mcp-auth-proxy (--from sigbit:<its data directory>):
  private_key.pem  becomes the identity-assertion signing key (RS256, sigbit's key id)
  certs/<host>     becomes the cached certificate: served at once, no new ACME order
  certs/acme_account+key, secret, db  stay: a new ACME account is made at renewal, people
                   sign in again, MCP clients register again by themselves

Example (sigbit's directory and ours may be the same one):
  mcp-auth-proxy migrate --from sigbit:./data --data-path ./data \\
      --external-url https://mcp.example.com"
)]
pub struct MigrateCli {
    /// What to bring: a data directory of ours (with --to), or sigbit:<directory>
    /// (sigbit/mcp-auth-proxy's data directory).
    #[arg(long)]
    pub from: String,

    /// Where to bring it: a PostgreSQL connection string, or `postgres` to take it from
    /// REPOSITORY_DSN (or DATABASE_DSN). Without it: the embedded store in --data-path.
    /// Needs ENCRYPTION_KEY, as the proxy on that database does.
    #[arg(long)]
    pub to: Option<String>,

    /// Our data directory, as the proxy will be given it (without --to).
    #[arg(long, short = 'd', env = "DATA_PATH", default_value = "./data")]
    pub data_path: std::path::PathBuf,

    /// The proxy's public URL: only the certificate for its host is brought.
    #[arg(long, short = 'e', env = "EXTERNAL_URL")]
    pub external_url: Option<String>,

    /// The ACME directory the proxy will renew from (as its --tls-directory-url).
    #[arg(
        long,
        env = "TLS_DIRECTORY_URL",
        default_value = LETS_ENCRYPT_DIRECTORY
    )]
    pub tls_directory_url: String,
}

/// Where a flag's value is on the command line (indexes into the words, the program's name
/// first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueAt {
    /// A switch, or a flag whose value is missing.
    Nowhere,
    /// After the `=` of `--flag=value`, in word `n`.
    Inline(usize),
    /// The whole of word `n`, after the flag's.
    Next(usize),
}

/// Each flag given before the backend, with where its value is, as clap reads them: the one
/// walk of the command line that both [`repeated_flags`] and [`secret_values`] rest on.
fn flags_given(
    cmd: &clap::Command,
    args: &[std::ffi::OsString],
    mut each: impl FnMut(&clap::Arg, ValueAt),
) {
    let mut at = 0;
    while let Some(word) = args.get(at + 1).and_then(|w| w.to_str()) {
        at += 1;
        if word == "--" {
            break;
        }
        let (arg, inline) = if let Some(long) = word.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let arg = cmd.get_arguments().find(|a| {
                a.get_long() == Some(name)
                    || a.get_all_aliases()
                        .is_some_and(|aliases| aliases.contains(&name))
            });
            (arg, value.is_some())
        } else if let Some(short) = word.strip_prefix('-').filter(|s| s.len() == 1) {
            let c = short.chars().next();
            (cmd.get_arguments().find(|a| a.get_short() == c), false)
        } else {
            // The backend begins: everything after it is the command's.
            break;
        };
        let Some(arg) = arg else {
            continue;
        };
        let takes_value = arg.get_action().takes_values() && !arg.is_require_equals_set();
        let value = if inline {
            ValueAt::Inline(at)
        } else if takes_value && at + 1 < args.len() {
            at += 1;
            ValueAt::Next(at)
        } else {
            ValueAt::Nowhere
        };
        each(arg, value);
    }
}

/// Flags given more than once before the backend, with how often. The last one wins (as in
/// sigbit's proxy: a script that appends an override keeps working), but a person who typed
/// one twice by mistake should hear of it. Flags that collect several values are not counted.
pub fn repeated_flags(args: &[std::ffi::OsString]) -> Vec<(String, usize)> {
    use clap::CommandFactory;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    flags_given(&Cli::command(), args, |arg, _| {
        if matches!(
            arg.get_action(),
            clap::ArgAction::Set | clap::ArgAction::SetTrue
        ) {
            let name = arg.get_long().unwrap_or_else(|| arg.get_id().as_str());
            *counts.entry(format!("--{name}")).or_default() += 1;
        }
    });
    counts.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// The secret values on a command line: of each flag whose variable's value the help hides
/// (passwords, client secrets, bearer tokens, connection strings, extra headers and the
/// child's extra environment), and of `migrate --to` (a connection string), the word it is
/// in and the byte its value starts at there. `main` masks them where every local user can
/// read them (`/proc/<pid>/cmdline`).
pub fn secret_values(args: &[std::ffi::OsString]) -> Vec<(usize, usize)> {
    use clap::CommandFactory;
    let migrating = args.get(1).is_some_and(|a| a == "migrate");
    // `migrate`'s words are its own, after its name.
    let (cmd, skipped) = if migrating {
        (MigrateCli::command(), 1)
    } else {
        (Cli::command(), 0)
    };
    let words = args.get(skipped..).unwrap_or_default();
    let mut found = Vec::new();
    flags_given(&cmd, words, |arg, value| {
        let secret = if migrating {
            arg.get_id() == "to"
        } else {
            arg.is_hide_env_values_set()
        };
        if !secret {
            return;
        }
        match value {
            ValueAt::Nowhere => {}
            ValueAt::Next(word) => found.push((word + skipped, 0)),
            ValueAt::Inline(word) => {
                let text = words[word].to_str().unwrap_or_default();
                let from = text.find('=').map_or(text.len(), |i| i + 1);
                found.push((word + skipped, from));
            }
        }
    });
    found
}

/// Variables we read without a flag of their own.
const OWN_EXTRA: [&str; 7] = [
    "ENCRYPTION_KEY",
    "AUTH_HMAC_SECRET",
    "JWT_PRIVATE_KEY",
    "DATABASE_DSN",
    "REPOSITORY_DSN",
    "MODE",
    "RUST_LOG",
];

/// Every environment variable the proxy reads for itself (each flag's, and the ones above),
/// taken from the command line's definition once, so a new flag cannot be forgotten where
/// a stdio child's environment is cleaned of them.
pub fn own_variables() -> &'static std::collections::BTreeSet<String> {
    static OWN: std::sync::LazyLock<std::collections::BTreeSet<String>> =
        std::sync::LazyLock::new(|| {
            use clap::CommandFactory;
            let mut names: std::collections::BTreeSet<String> = Cli::command()
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect();
            names.extend(OWN_EXTRA.iter().map(|s| s.to_string()));
            names
        });
    &OWN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<std::ffi::OsString> {
        s.split(' ').map(Into::into).collect()
    }

    #[test]
    fn secret_values_are_found_wherever_clap_reads_them_and_nowhere_else() {
        let args = words(
            "p --password pw1 --listen :1 --password=pw2 --google-client-secret gs --oidc-client-id id --proxy-bearer-token=tok --stdio-env K=V -- node s.js --password not-ours",
        );
        let found: Vec<(String, String)> = secret_values(&args)
            .into_iter()
            .map(|(w, from)| {
                let word = args[w].to_str().unwrap();
                (word[..from].to_string(), word[from..].to_string())
            })
            .collect();
        let expected = [
            ("", "pw1"),
            ("--password=", "pw2"),
            ("", "gs"),
            ("--proxy-bearer-token=", "tok"),
            ("", "K=V"),
        ];
        assert_eq!(found, expected.map(|(a, b)| (a.to_string(), b.to_string())));
        assert!(secret_values(&words("p --password")).is_empty(), "no value");
        // `migrate --to` names a database, perhaps with its password; `--from` a directory.
        assert_eq!(
            secret_values(&words("p migrate --from ./data --to postgres://u:pw@db/x")),
            [(5, 0)]
        );
        assert_eq!(
            secret_values(&words("p migrate --to=postgres://u:pw@db/x --from ./data")),
            [(2, 5)]
        );
        assert_eq!(
            secret_values(&words("p --password-hash h http://u/mcp")),
            [(2, 0)]
        );
    }

    #[test]
    fn a_flag_given_twice_is_found_but_not_the_commands_own() {
        assert_eq!(
            repeated_flags(&words(
                "mcp-auth-proxy --listen :80 -e https://a.example --listen=:8080 --tls-accept-tos --external-url https://b.example -- server --listen x --listen y"
            )),
            vec![("--external-url".into(), 2), ("--listen".into(), 2)]
        );
        // A value that looks like a flag is a value; a stdio command's flags are its own.
        assert!(
            repeated_flags(&words("p --password --listen --listen :1 http://u/mcp")).is_empty()
        );
        assert!(repeated_flags(&words("p --listen :1 node s.js --listen :2")).is_empty());
    }
}

/// How a call's arguments are written to the audit log (`--audit-arguments`, and per tool in
/// the policy file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuditArguments {
    /// A SHA-256 digest of the arguments' JSON: equal arguments can be matched, none read.
    Digest,
    /// Only the argument names.
    Redact,
    /// The arguments as sent.
    Full,
}
