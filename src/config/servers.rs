//! Several MCP servers behind one proxy: `--config`, a TOML file naming them.
//!
//! Each server is its own protected resource (`<external>/<name>/mcp`) with its own issuer
//! (`<external>/<name>`, an RFC 8414 §3.1 path issuer), so tokens are bound to one server
//! (RFC 8707) and a client that omits `resource` still gets a token for the server whose
//! issuer it used. The single-server command line is the one-server case of the same model:
//! one unnamed server at `--mcp-path` whose issuer is the origin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Backend, ConfigError, bad, parse_backend, parse_duration};
use crate::store::Identity;

/// Largest configuration file read; a server list is a few hundred bytes each.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most servers one proxy routes: each holds a backend, children and routes.
const MAX_SERVERS: usize = 64;
/// Most entries in one server's allow-list, and in its environment.
const MAX_ENTRIES: usize = 1000;

/// One server as the file declares it, validated.
#[derive(Debug, Clone)]
pub struct ServerDef {
    /// The first segment of its paths and issuer: `[a-z0-9][a-z0-9-]{0,31}`.
    pub name: String,
    /// Routed by this host name (its MCP endpoint `<scheme>://<host>[:port]/mcp`) instead
    /// of by path; lower-case.
    pub host: Option<String>,
    pub backend: Backend,
    /// Variables its stdio children get on top of the shared ones (`--stdio-env`).
    pub env: Vec<(String, String)>,
    /// The directory its stdio children start in (else one of its own under the data path).
    pub cwd: Option<PathBuf>,
    /// `shared = true`: one child for all of its sessions.
    pub shared: Option<bool>,
    /// Its own `--max-sessions`.
    pub max_sessions: Option<usize>,
    /// Its own `--stdio-idle-timeout`.
    pub idle_timeout: Option<Duration>,
    /// Its own `--stdio-warm-spare`.
    pub warm_spare: Option<bool>,
    /// Headers its HTTP upstream receives, on top of (and replacing) `--proxy-headers`.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Its own `--upstream-timeout`.
    pub timeout: Option<Duration>,
    /// Its own `--http-streaming-only`.
    pub streaming_only: Option<bool>,
    /// Its own `--upstream-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// Its own `--header-mapping`.
    pub header_mapping: Option<Vec<(String, http::HeaderName)>>,
    /// Its own `--pass-access-token`.
    pub pass_access_token: Option<bool>,
    /// Its own `--stdio-pass-env`.
    pub pass_env: Option<Vec<String>>,
    /// Its own `--stdio-clean-env`.
    pub clean_env: Option<bool>,
    /// Its own `--max-sessions-per-user`.
    pub max_sessions_per_user: Option<usize>,
    /// Its own `--stdio-cache-ttl`.
    pub cache_ttl: Option<Duration>,
    /// Who may use it, on top of who may sign in at all (empty: everyone who may sign in).
    pub admits: Admission,
    /// Its own `--policy-file` (else the shared one, if any).
    pub policy_file: Option<PathBuf>,
}

/// The servers of `--config`.
#[derive(Debug, Clone)]
pub struct ServerDefs {
    pub servers: Vec<ServerDef>,
    /// The server the root well-known URLs (and the plain `/authorize` and `/token`) serve;
    /// without one they answer 404 and a client must use a server's own issuer.
    pub default: Option<String>,
    /// Warnings for startup.
    pub notes: Vec<String>,
}

/// Who may use a server: entries `provider:pattern` match that provider's user id
/// (`password:admin`, `github:octocat`, `oidc:*`), any other entry matches the email the
/// provider vouched for (`alice@example.com`, `*@example.com`); `*` is a wildcard and the
/// match ignores case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    entries: Vec<String>,
}

const PROVIDERS: [&str; 4] = ["password", "google", "github", "oidc"];

impl Admission {
    /// Everyone who may sign in.
    pub fn everyone() -> Self {
        Self::default()
    }

    fn parse(server: &str, entries: Vec<String>) -> Result<Self, ConfigError> {
        if entries.len() > MAX_ENTRIES {
            return Err(bad(format!(
                "server {server:?}: users lists more than {MAX_ENTRIES} entries"
            )));
        }
        let mut out = Vec::new();
        for e in entries {
            let e = e.trim().to_ascii_lowercase();
            if e.is_empty() || e.len() > 320 {
                return Err(bad(format!(
                    "server {server:?}: a users entry is empty or longer than 320 characters"
                )));
            }
            if let Some((p, rest)) = e.split_once(':')
                && (!PROVIDERS.contains(&p) || rest.is_empty())
            {
                return Err(bad(format!(
                    "server {server:?}: users entry {e:?} names no provider of {PROVIDERS:?} before its ':'"
                )));
            }
            out.push(e);
        }
        Ok(Self { entries: out })
    }

    /// Whether `identity` may use the server.
    pub fn admits(&self, identity: &Identity) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let user = identity.user_id.to_ascii_lowercase();
        let email = identity.email.as_deref().map(str::to_ascii_lowercase);
        self.entries.iter().any(|e| match e.split_once(':') {
            Some((provider, pattern)) => {
                provider == identity.provider && wildmatch::WildMatch::new(pattern).matches(&user)
            }
            None => email
                .as_deref()
                .is_some_and(|m| wildmatch::WildMatch::new(e).matches(m)),
        })
    }

    /// Whether the list admits everyone who may sign in.
    pub fn is_everyone(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The file's shape; unknown keys are refused, so a misspelt one is said, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    server: Vec<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: String,
    url: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    mode: Option<String>,
    max_sessions: Option<usize>,
    idle_timeout: Option<String>,
    warm_spare: Option<bool>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    timeout: Option<String>,
    streaming_only: Option<bool>,
    connect_timeout: Option<String>,
    header_mapping: Option<String>,
    pass_access_token: Option<bool>,
    pass_env: Option<Vec<String>>,
    clean_env: Option<bool>,
    max_sessions_per_user: Option<usize>,
    cache_ttl: Option<String>,
    #[serde(default)]
    users: Vec<String>,
    policy_file: Option<PathBuf>,
    host: Option<String>,
}

/// Names that would shadow the proxy's own paths (`/<name>/…`).
const RESERVED_NAMES: [&str; 8] = [
    "authorize",
    "token",
    "register",
    "revoke",
    "introspect",
    "healthz",
    "readyz",
    "metrics",
];

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !RESERVED_NAMES.contains(&name)
}

/// A host name a server is routed by: a DNS name of at least two labels, without port.
fn valid_host(server: &str, host: &str) -> Result<String, ConfigError> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() > 253 || h.split('.').count() < 2 || !h.split('.').all(label_ok) {
        return Err(bad(format!(
            "server {server:?}: host {host:?} is not a host name like files.example.com (no scheme, port or path)"
        )));
    }
    Ok(h)
}

/// Reads and checks `--config`. Relative paths in it are taken from the file's directory.
pub fn load(path: &Path) -> Result<ServerDefs, ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("--config {shown}: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(bad(format!(
            "--config {shown} is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("--config {shown}: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut defs = parse(&text, base).map_err(|e| bad(format!("--config {shown}: {e}")))?;
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 && defs.servers.iter().any(|s| !s.headers.is_empty())
    {
        defs.notes.push(format!(
            "--config {shown} gives upstream headers (often secrets) and others may read it: chmod 600 it"
        ));
    }
    Ok(defs)
}

/// Checks the text of a configuration file; `base` anchors its relative paths.
pub fn parse(text: &str, base: &Path) -> Result<ServerDefs, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
    if file.server.is_empty() {
        return Err(bad("it declares no [[server]]"));
    }
    if file.server.len() > MAX_SERVERS {
        return Err(bad(format!("it declares more than {MAX_SERVERS} servers")));
    }
    let anchored = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let mut servers: Vec<ServerDef> = Vec::new();
    for raw in file.server {
        let name = raw.name.trim().to_string();
        if !valid_name(&name) {
            return Err(bad(format!(
                "server name {name:?} must be 1 to 32 lower-case letters, digits or '-', starting with a letter or digit, and not one of {RESERVED_NAMES:?}"
            )));
        }
        if servers.iter().any(|s| s.name == name) {
            return Err(bad(format!("server {name:?} is declared twice")));
        }
        let host = raw.host.map(|h| valid_host(&name, &h)).transpose()?;
        if let Some(h) = &host
            && servers.iter().any(|s| s.host.as_ref() == Some(h))
        {
            return Err(bad(format!("host {h:?} is given to two servers")));
        }
        let backend = match (raw.url, raw.command) {
            (Some(url), None) => match parse_backend(&[url])? {
                b @ Backend::Http(_) => b,
                _ => {
                    return Err(bad(format!(
                        "server {name:?}: url must be an http:// or https:// URL"
                    )));
                }
            },
            (None, Some(command)) if !command.is_empty() => match parse_backend(&command)? {
                b @ Backend::Stdio { .. } => b,
                _ => {
                    return Err(bad(format!(
                        "server {name:?}: command is a program and its arguments; an HTTP server is given as url"
                    )));
                }
            },
            _ => {
                return Err(bad(format!(
                    "server {name:?} needs exactly one of url (an HTTP MCP server) or command (a stdio one)"
                )));
            }
        };
        let stdio = matches!(backend, Backend::Stdio { .. });
        let stdio_only = raw.cwd.is_some()
            || !raw.env.is_empty()
            || raw.mode.is_some()
            || raw.max_sessions.is_some()
            || raw.idle_timeout.is_some()
            || raw.warm_spare.is_some()
            || raw.pass_env.is_some()
            || raw.clean_env.is_some()
            || raw.max_sessions_per_user.is_some()
            || raw.cache_ttl.is_some();
        if stdio_only && !stdio {
            return Err(bad(format!(
                "server {name:?}: env, cwd, mode, max_sessions, max_sessions_per_user, idle_timeout, warm_spare, pass_env, clean_env and cache_ttl are for a stdio server (command)"
            )));
        }
        let http_only = !raw.headers.is_empty()
            || raw.timeout.is_some()
            || raw.streaming_only.is_some()
            || raw.connect_timeout.is_some()
            || raw.header_mapping.is_some();
        if http_only && stdio {
            return Err(bad(format!(
                "server {name:?}: headers, timeout, connect_timeout, streaming_only and header_mapping are for an HTTP server (url)"
            )));
        }
        let duration = |key: &str, v: Option<String>| {
            v.map(|t| parse_duration(&format!("server {name:?}: {key}"), &t))
                .transpose()
        };
        let connect_timeout = duration("connect_timeout", raw.connect_timeout)?;
        let cache_ttl = duration("cache_ttl", raw.cache_ttl)?;
        let header_mapping = raw
            .header_mapping
            .as_deref()
            .map(super::parse_header_mapping)
            .transpose()?;
        if raw.pass_env.as_ref().is_some_and(|l| l.len() > MAX_ENTRIES) {
            return Err(bad(format!(
                "server {name:?}: pass_env names more than {MAX_ENTRIES} variables"
            )));
        }
        if raw.headers.len() > MAX_ENTRIES {
            return Err(bad(format!(
                "server {name:?}: headers has more than {MAX_ENTRIES} entries"
            )));
        }
        let headers = raw
            .headers
            .iter()
            .map(|(k, v)| {
                let header = http::HeaderName::from_bytes(k.trim().as_bytes());
                let mut value = http::HeaderValue::from_str(v.trim());
                if let Ok(v) = &mut value {
                    // Kept out of debug output and logs, like --proxy-bearer-token.
                    v.set_sensitive(true);
                }
                match (header, value) {
                    (Ok(n), Ok(v)) => Ok((n, v)),
                    _ => Err(bad(format!(
                        "server {name:?}: header {k:?} is not a valid header name and value"
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = raw
            .timeout
            .map(|t| parse_duration(&format!("server {name:?}: timeout"), &t))
            .transpose()?;
        if raw.env.len() > MAX_ENTRIES {
            return Err(bad(format!(
                "server {name:?}: env has more than {MAX_ENTRIES} variables"
            )));
        }
        let cwd = raw.cwd.map(anchored);
        if let Some(dir) = &cwd
            && !dir.is_dir()
        {
            return Err(bad(format!(
                "server {name:?}: cwd {} is not a directory",
                dir.display()
            )));
        }
        let shared = match raw.mode.as_deref() {
            None => None,
            Some("per-session") => Some(false),
            Some("shared") => Some(true),
            Some(other) => {
                return Err(bad(format!(
                    "server {name:?}: mode {other:?} is unknown; use per-session or shared"
                )));
            }
        };
        if raw.max_sessions == Some(0) {
            return Err(bad(format!(
                "server {name:?}: max_sessions must be at least 1"
            )));
        }
        let idle_timeout = raw
            .idle_timeout
            .map(|t| parse_duration(&format!("server {name:?}: idle_timeout"), &t))
            .transpose()?;
        let admits = Admission::parse(&name, raw.users)?;
        servers.push(ServerDef {
            backend,
            env: raw.env.into_iter().collect(),
            cwd,
            shared,
            max_sessions: raw.max_sessions,
            idle_timeout,
            admits,
            policy_file: raw.policy_file.map(anchored),
            warm_spare: raw.warm_spare,
            headers,
            timeout,
            streaming_only: raw.streaming_only,
            connect_timeout,
            header_mapping,
            pass_access_token: raw.pass_access_token,
            pass_env: raw.pass_env,
            clean_env: raw.clean_env,
            max_sessions_per_user: raw.max_sessions_per_user,
            cache_ttl,
            host,
            name,
        });
    }
    if let Some(d) = &file.default
        && !servers.iter().any(|s| &s.name == d)
    {
        return Err(bad(format!("default {d:?} names no declared server")));
    }
    Ok(ServerDefs {
        servers,
        default: file.default,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<ServerDefs, String> {
        parse(text, Path::new("/")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_of_two_servers() {
        let defs = parsed(
            r#"
            default = "files"
            [[server]]
            name = "files"
            command = ["node", "files.js", "--root", "/srv"]
            env = { LEVEL = "info" }
            mode = "shared"
            max_sessions = 4
            idle_timeout = "10m"
            users = ["password:admin", "*@example.com"]
            [[server]]
            name = "db"
            url = "http://127.0.0.1:8080/mcp"
            "#,
        )
        .unwrap();
        assert_eq!(defs.default.as_deref(), Some("files"));
        let [files, db] = &defs.servers[..] else {
            panic!("two servers");
        };
        assert_eq!(
            files.backend,
            Backend::Stdio {
                program: "node".into(),
                args: vec!["files.js".into(), "--root".into(), "/srv".into()]
            }
        );
        assert_eq!(files.env, vec![("LEVEL".into(), "info".into())]);
        assert_eq!(files.shared, Some(true));
        assert_eq!(files.max_sessions, Some(4));
        assert_eq!(files.idle_timeout, Some(Duration::from_secs(600)));
        assert!(matches!(db.backend, Backend::Http(_)));
        assert!(db.admits.is_everyone());
    }

    #[test]
    fn mistakes_are_said() {
        for (text, says) in [
            ("", "no [[server]]"),
            ("[[server]]\nname = \"a\"", "exactly one of url"),
            (
                "[[server]]\nname = \"a\"\nurl = \"http://x/mcp\"\ncommand = [\"x\"]",
                "exactly one of url",
            ),
            (
                "[[server]]\nname = \"A\"\nurl = \"http://x/mcp\"",
                "lower-case",
            ),
            (
                "[[server]]\nname = \"token\"\nurl = \"http://x/mcp\"",
                "not one of",
            ),
            (
                "[[server]]\nname = \"a\"\nurl = \"http://x/mcp\"\n[[server]]\nname = \"a\"\nurl = \"http://y/mcp\"",
                "declared twice",
            ),
            ("[[server]]\nname = \"a\"\nurl = \"ftp://x\"", "scheme"),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"http://x/mcp\"]",
                "given as url",
            ),
            (
                "[[server]]\nname = \"a\"\nurl = \"http://x/mcp\"\nenv = { A = \"1\" }",
                "stdio server",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = \"5s\"",
                "for an HTTP server",
            ),
            (
                "[[server]]\nname = \"a\"\nurl = \"http://x/mcp\"\nheaders = { \"bad name\" = \"v\" }",
                "not a valid header",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\nmode = \"pooled\"",
                "per-session or shared",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\nusers = [\"gitlab:bob\"]",
                "names no provider",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\nurls = []",
                "unknown field",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\nhost = \"https://a.example.com\"",
                "not a host name",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\nhost = \"a.example.com:443\"",
                "not a host name",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = [\"x\"]\nhost = \"a.example.com\"\n[[server]]\nname = \"b\"\ncommand = [\"x\"]\nhost = \"A.example.com.\"",
                "two servers",
            ),
            (
                "default = \"b\"\n[[server]]\nname = \"a\"\ncommand = [\"x\"]",
                "names no declared server",
            ),
        ] {
            let e = parsed(text).expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn who_a_server_admits() {
        let admits = Admission::parse(
            "s",
            vec![
                "password:admin".into(),
                "GitHub:octo*".into(),
                "*@Example.com".into(),
            ],
        )
        .unwrap();
        let who = |provider: &str, user: &str, email: Option<&str>| Identity {
            provider: provider.into(),
            user_id: user.into(),
            email: email.map(str::to_string),
            name: None,
            groups: vec![],
            claims: serde_json::Value::Null,
        };
        assert!(admits.admits(&who("password", "admin", None)));
        assert!(!admits.admits(&who("password", "alice", None)));
        assert!(admits.admits(&who("github", "OctoCat", None)));
        assert!(!admits.admits(&who("oidc", "octocat", None)));
        assert!(admits.admits(&who("google", "1234", Some("bob@example.com"))));
        assert!(!admits.admits(&who("google", "1234", Some("bob@example.org"))));
        assert!(Admission::everyone().admits(&who("oidc", "x", None)));
    }
}
