//! The command line: every flag, its environment variable and its help.
//!
//! Names follow sigbit/mcp-auth-proxy so its users can swap binaries (see
//! `shared/reference/cli-compat.md`); flags of our own follow `decisions.md`. This module only
//! describes the shape; [`crate::config::Config::from_cli`] validates it.

use clap::Parser;

/// Parses a boolean given on the command line or in the environment: only `true` and `1`
/// (any case) are true, everything else is false.
fn env_bool(s: &str) -> Result<bool, std::convert::Infallible> {
    let s = s.trim();
    Ok(s == "1" || s.eq_ignore_ascii_case("true"))
}

/// OAuth 2.1 in front of any MCP server.
///
/// The backend comes last: an `http(s)://` URL proxies an HTTP MCP server; anything else
/// (after `--`) is a stdio command. With no backend the proxy serves sign-in and the
/// authorization server only.
#[derive(Debug, Clone, Parser)]
#[command(name = "mcp-auth-proxy", version, about, long_about = None)]
pub struct Cli {
    /// Plain HTTP listen address: HOST:PORT, [V6]:PORT or :PORT (all interfaces).
    #[arg(long, env = "LISTEN", default_value = ":80")]
    pub listen: String,

    /// Public origin of this proxy (issuer, resource, callback base). No path.
    /// Default: http://localhost, plus the listen port when it is not 80.
    #[arg(long, short = 'e', env = "EXTERNAL_URL")]
    pub external_url: Option<String>,

    /// State directory (the embedded store, generated keys).
    #[arg(long, short = 'd', env = "DATA_PATH", default_value = "./data")]
    pub data_path: std::path::PathBuf,

    /// Store backend: `local` (embedded sled). `postgres`, `sqlite` and `mysql` are refused for now.
    #[arg(long, env = "REPOSITORY_BACKEND", default_value = "local")]
    pub repository_backend: String,

    /// Connection string of an external store (not supported yet).
    #[arg(long, env = "REPOSITORY_DSN", hide_env_values = true)]
    pub repository_dsn: Option<String>,

    /// IPs or CIDRs of reverse proxies whose X-Forwarded-* headers are believed (comma-separated).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Public path of the MCP endpoint.
    #[arg(long, env = "MCP_PATH", default_value = "/mcp")]
    pub mcp_path: String,

    /// Extra browser origins allowed on the MCP endpoint and metadata (comma-separated).
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Sends `Authorization: Bearer <token>` to the HTTP upstream.
    #[arg(long, env = "PROXY_BEARER_TOKEN", hide_env_values = true)]
    pub proxy_bearer_token: Option<String>,

    /// Static headers sent to the HTTP upstream: `Name:Value,Name2:Value2`.
    #[arg(long, env = "PROXY_HEADERS", hide_env_values = true)]
    pub proxy_headers: Option<String>,

    /// Answer 405 to the GET SSE stream on the MCP path (default: false).
    #[arg(long, env = "HTTP_STREAMING_ONLY", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub http_streaming_only: bool,

    /// Time allowed to connect to the HTTP upstream (default: 10s).
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT", default_value = "10s")]
    pub upstream_connect_timeout: String,

    /// Shared password for the login page (hashed with bcrypt at startup, never stored).
    #[arg(long, env = "PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// bcrypt hash(es) of accepted passwords (comma-separated); may be given with --password.
    #[arg(
        long,
        env = "PASSWORD_HASH",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub password_hash: Vec<String>,

    /// User name of the password sign-in (the subject is `password:<name>`).
    #[arg(long, env = "PASSWORD_USER", default_value = "admin")]
    pub password_user: String,

    /// Failed passwords from one IP within --login-failure-window that lock it.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 10)]
    pub login_max_failures: u32,

    /// Window in which failed passwords are counted.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW", default_value = "5m")]
    pub login_failure_window: String,

    /// How long an IP stays locked after too many failed passwords.
    #[arg(long, env = "LOGIN_LOCKOUT", default_value = "2m")]
    pub login_lockout: String,

    /// Lifetime of access tokens.
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "1h")]
    pub access_token_ttl: String,

    /// Absolute lifetime of refresh tokens, from the first grant.
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "30d")]
    pub refresh_token_ttl: String,

    /// How long a rotated refresh token still returns the same new pair.
    #[arg(long, env = "REFRESH_GRACE", default_value = "30s")]
    pub refresh_grace: String,

    /// Lifetime of authorization codes.
    #[arg(long, env = "AUTH_CODE_TTL", default_value = "60s")]
    pub auth_code_ttl: String,

    /// Registered clients that never complete a sign-in are deleted after this long.
    #[arg(long, env = "CLIENT_TTL", default_value = "7d")]
    pub client_ttl: String,

    /// Lifetime of a browser sign-in on the login page.
    #[arg(long, env = "LOGIN_SESSION_TTL", default_value = "12h")]
    pub login_session_ttl: String,

    /// Private-use URI schemes allowed in redirect URIs (comma-separated).
    #[arg(
        long,
        env = "ALLOWED_REDIRECT_SCHEMES",
        value_delimiter = ',',
        default_value = "cursor,vscode,vscode-insiders,windsurf"
    )]
    pub allowed_redirect_schemes: Vec<String>,

    /// Threads serving connections (0: one per CPU core).
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// After SIGTERM/SIGINT, how long open requests and streams may run before they are cut.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,

    /// Working directory of the stdio MCP server (default: the proxy's).
    #[arg(long, env = "STDIO_CWD")]
    pub stdio_cwd: Option<std::path::PathBuf>,

    /// Extra environment for the stdio MCP server: KEY=VALUE (repeatable).
    #[arg(
        long = "stdio-env",
        env = "STDIO_ENV",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub stdio_env: Vec<String>,

    /// Variables passed to the stdio MCP server with --stdio-clean-env (comma-separated).
    #[arg(long, env = "STDIO_PASS_ENV", value_delimiter = ',')]
    pub stdio_pass_env: Vec<String>,

    /// Start the stdio MCP server with only PATH, HOME, locale and --stdio-pass-env variables.
    #[arg(long, env = "STDIO_CLEAN_ENV", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub stdio_clean_env: bool,

    /// stdio children: one per MCP session (per-session), or one for all sessions (shared).
    #[arg(long, env = "STDIO_MODE", default_value = "per-session")]
    pub stdio_mode: String,

    /// Most live MCP sessions (each runs its own stdio child).
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 100)]
    pub max_sessions: usize,

    /// Keep one started stdio server waiting, so a new session does not wait for it to start.
    #[arg(long, env = "STDIO_WARM_SPARE", value_parser = env_bool, default_value = "false",
          default_missing_value = "true", num_args = 0..=1, require_equals = true)]
    pub stdio_warm_spare: bool,

    /// An MCP session nobody used for this long (and with no open stream) is ended.
    #[arg(long, env = "SESSION_IDLE_TIMEOUT", default_value = "30m")]
    pub session_idle_timeout: String,

    /// The backend: an http(s) URL, or a stdio command and its arguments after `--`.
    #[arg(env = "MCP_SERVER_URL", num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub backend: Vec<String>,
}
