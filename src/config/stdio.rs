//! Stdio MCP servers: the children's directory, user, environment and session limits.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, IdentityPart, bad, parse_duration};
use crate::cli::Cli;

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
    pub fn lookup(name: &str) -> Result<Self, ConfigError> {
        if !rustix::process::geteuid().is_root() {
            return Err(bad(format!(
                "--stdio-user {name}: the proxy must start as root to run children as another user"
            )));
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| bad(format!("--stdio-user {name}: {e}")))?
            .ok_or_else(|| bad(format!("--stdio-user {name}: no such user")))?;
        if user.uid.is_root() {
            return Err(bad(format!(
                "--stdio-user {name} is root: name an unprivileged user"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }
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
    /// `--stdio-cache-ttl`: the freshness modern clients are told of lists and reads.
    pub cache_ttl: Duration,
    pub warm_spare: bool,
    /// One child for every session (`--stdio-mode shared`) instead of one each.
    pub shared: bool,
    /// `--stdio-identity-env`: what of the user goes into which variable of their child.
    pub identity_env: Vec<(IdentityPart, String)>,
}

pub(super) fn stdio_options(cli: &Cli) -> Result<StdioOptions, ConfigError> {
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
            .transpose()?,
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
        cache_ttl: parse_duration("--stdio-cache-ttl", &cli.stdio_cache_ttl)?,
        warm_spare: cli.stdio_warm_spare,
        shared,
        identity_env,
    })
}
