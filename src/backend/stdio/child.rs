//! Starting a stdio MCP server: its command line, its environment, its stderr.
//!
//! docs/design.md "Stdio children": the child inherits the proxy's environment minus every variable
//! the proxy reads for itself (so `-e API_KEY=…` set for the server still arrives, but our
//! password, keys and client secrets never do), or with `--stdio-clean-env` only an
//! allow-list. The list of our variables is taken from the command-line definition itself,
//! so a new flag can never be forgotten here.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio_util::codec::FramedRead;

use super::framing::{BoundedLines, RawLine, shown};

/// Passed even with `--stdio-clean-env`: what a program needs to find its tools and files.
const CLEAN_BASE: [&str; 8] = [
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM",
];

/// Longest stderr line kept whole in the log.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// How many recent stderr lines are kept to explain a crash.
const STDERR_TAIL: usize = 20;

/// How to start the child.
#[derive(Debug, Clone, Default)]
pub struct ChildSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// `--stdio-user`: the uid and gid the child runs as (std then drops every
    /// supplementary group).
    pub run_as: Option<(u32, u32)>,
    /// `--stdio-env KEY=VALUE`, applied last.
    pub extra_env: Vec<(String, String)>,
    /// `--stdio-clean-env`: start from an allow-list instead of our environment.
    pub clean_env: bool,
    /// `--stdio-pass-env`: names added to the allow-list.
    pub pass_env: Vec<String>,
}

/// Whether the command would be found: a path that is an executable file, or a name on the
/// child's `PATH`.
pub fn findable(spec: &ChildSpec) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if spec.program.contains('/') {
        let p = std::path::Path::new(&spec.program);
        return match &spec.cwd {
            Some(cwd) if p.is_relative() => executable(&cwd.join(p)),
            _ => executable(p),
        };
    }
    let path = spec
        .extra_env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    std::env::split_paths(&path).any(|dir| executable(&dir.join(&spec.program)))
}

fn is_own(name: &str, own: &BTreeSet<String>) -> bool {
    own.contains(name) || name.ends_with("_CLIENT_SECRET")
}

/// The child's environment given ours, and the names of our variables that were withheld.
pub fn environment(
    spec: &ChildSpec,
    parent: impl IntoIterator<Item = (String, String)>,
) -> (Vec<(String, String)>, Vec<String>) {
    let own = crate::cli::own_variables();
    let mut env = Vec::new();
    let mut withheld = Vec::new();
    for (k, v) in parent {
        if spec.clean_env {
            let allowed = CLEAN_BASE.contains(&k.as_str()) || spec.pass_env.contains(&k);
            if allowed && !is_own(&k, own) {
                env.push((k, v));
            } else if is_own(&k, own) {
                withheld.push(k);
            }
        } else if is_own(&k, own) {
            withheld.push(k);
        } else {
            env.push((k, v));
        }
    }
    for (k, v) in &spec.extra_env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    withheld.sort();
    (env, withheld)
}

/// The command for the child: piped stdio, its own process group (so `npx`'s grandchildren
/// are stopped with it), killed if the handle is dropped.
pub fn command(spec: &ChildSpec, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    if let Some((uid, gid)) = spec.run_as {
        cmd.uid(uid).gid(gid);
    }
    #[cfg(target_os = "linux")]
    run_as_batch(&mut cmd);
    cmd
}

/// The child runs under `SCHED_BATCH` (sched(7)): the same share of the CPU as before, but a
/// message the proxy writes to it no longer takes the core from the proxy's serving thread
/// at once. A normal task woken by another preempts it; a batch one waits until that thread
/// sleeps or its slice ends. So the proxy answers what it has (other calls, other
/// connections) before the child runs, and a child that is handed a message cannot take the
/// front's core each time. BENCHMARKS.md has the measurements. Where the system refuses the
/// policy, the child runs as a normal task.
#[cfg(target_os = "linux")]
fn run_as_batch(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec: it makes one system call
    // (async-signal-safe) with a parameter on its own stack, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // A refusal (a seccomp filter, say) leaves the normal policy: not worth failing for.
            let _ = libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
            Ok(())
        });
    }
}

/// The last lines a child wrote to stderr, for the log line that explains its exit.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        if let Ok(mut t) = self.0.lock() {
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    }

    /// The remembered lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Logs the child's stderr line by line, tagged with `session`, and keeps the tail.
/// Bounded: an over-long line is logged by its length only.
pub fn capture_stderr(
    stderr: ChildStderr,
    session: String,
) -> (StderrTail, tokio::task::JoinHandle<()>) {
    let tail = StderrTail::default();
    let keep = tail.clone();
    let task = tokio::spawn(async move {
        let mut lines = FramedRead::new(stderr, BoundedLines::new(MAX_STDERR_LINE));
        while let Some(Ok(line)) = lines.next().await {
            let text = match line {
                RawLine::Line(l) => shown(&l),
                RawLine::TooLong(n) => format!("<a line of {n} bytes, not shown>"),
            };
            tracing::info!(target: "mcp_auth_proxy::child", session = %session, "{text}");
            keep.push(text);
        }
    });
    (tail, task)
}

/// Spawns the child; also returns which of our variables were withheld, for the startup log.
pub fn spawn(spec: &ChildSpec) -> std::io::Result<(Child, Vec<String>)> {
    let (env, withheld) = environment(spec, std::env::vars());
    let child = command(spec, &env).spawn()?;
    Ok((child, withheld))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn our_secrets_are_withheld_theirs_pass() {
        let parent = vars(&[
            ("PATH", "/bin"),
            ("PASSWORD", "s3cret"),
            ("PASSWORD_HASH", "$2b$"),
            ("ENCRYPTION_KEY", "k"),
            ("PROXY_BEARER_TOKEN", "t"),
            ("GOOGLE_CLIENT_SECRET", "g"),
            ("EXTERNAL_URL", "https://x"),
            ("GITHUB_TOKEN", "theirs"),
            ("API_KEY", "theirs too"),
        ]);
        let spec = ChildSpec {
            extra_env: vars(&[("API_KEY", "override"), ("EXTRA", "1")]),
            ..ChildSpec::default()
        };
        let (env, withheld) = environment(&spec, parent.clone());
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["PATH", "GITHUB_TOKEN", "API_KEY", "EXTRA"]);
        assert!(env.contains(&("API_KEY".into(), "override".into())));
        assert_eq!(
            withheld,
            vec![
                "ENCRYPTION_KEY",
                "EXTERNAL_URL",
                "GOOGLE_CLIENT_SECRET",
                "PASSWORD",
                "PASSWORD_HASH",
                "PROXY_BEARER_TOKEN"
            ]
        );

        let clean = ChildSpec {
            clean_env: true,
            pass_env: vec!["API_KEY".into(), "PASSWORD".into()],
            ..ChildSpec::default()
        };
        let (env, _) = environment(&clean, parent);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["PATH", "API_KEY"],
            "an allow-list cannot let our own secrets through"
        );
    }

    #[test]
    fn every_flag_variable_is_ours() {
        let own = crate::cli::own_variables();
        for name in [
            "LISTEN",
            "PASSWORD",
            "PROXY_HEADERS",
            "MCP_SERVER_URL",
            "AUTH_HMAC_SECRET",
        ] {
            assert!(own.contains(name), "{name}");
        }
    }

    #[tokio::test]
    async fn stderr_is_captured_with_a_tail_and_the_child_sees_only_its_environment() {
        let spec = ChildSpec {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo \"pw=${PASSWORD:-unset} key=$API_KEY\" >&2; head -c 20000 /dev/zero | tr '\\\\0' x >&2; echo >&2; echo last >&2; exit 3"
                    .into(),
            ],
            extra_env: vars(&[("API_KEY", "k1")]),
            ..ChildSpec::default()
        };
        let (env, _) = environment(
            &spec,
            vars(&[("PATH", "/usr/bin:/bin"), ("PASSWORD", "s3cret")]),
        );
        let mut child = command(&spec, &env).spawn().unwrap();
        let (tail, task) = capture_stderr(child.stderr.take().unwrap(), "s1".into());
        let status = child.wait().await.unwrap();
        task.await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            tail.lines(),
            vec![
                "pw=unset key=k1".to_string(),
                "<a line of 20000 bytes, not shown>".into(),
                "last".into()
            ]
        );
    }

    /// The child is a batch task (policy 3 in `/proc/<pid>/stat`, sched(7)); the proxy is not.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_child_runs_as_a_batch_task() {
        fn policy(pid: u32) -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Field 41; the fields after the command's `)` start at field 3.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(41 - 3)?.parse().ok()
        }
        const SCHED_BATCH: u32 = 3;
        let spec = ChildSpec {
            program: "sleep".into(),
            args: vec!["30".into()],
            ..ChildSpec::default()
        };
        let env = vars(&[("PATH", "/usr/bin:/bin")]);
        let mut child = command(&spec, &env).spawn().unwrap();
        let pid = child.id().unwrap();
        let seen = policy(pid);
        child.kill().await.unwrap();
        assert_eq!(seen, Some(SCHED_BATCH));
        assert_ne!(policy(std::process::id()), Some(SCHED_BATCH));
    }
}
