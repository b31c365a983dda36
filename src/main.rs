//! The `mcp-auth-proxy` binary: parse, set up logging, run until a signal.

use clap::Parser;

use mcp_auth_proxy::cli::Cli;
use mcp_auth_proxy::config::Config;
use mcp_auth_proxy::{EnvSecrets, log_line, log_writer, run};

/// Logging to stderr through a writer thread ([`log_writer`]), so a request never waits for
/// the terminal or the log collector and a burst of lines costs one write; nothing is
/// dropped (past a limit a writer waits for room). The guard writes what is left when it is
/// dropped.
fn init_tracing() -> std::io::Result<log_writer::Guard> {
    use tracing_subscriber::EnvFilter;
    // sled's own records (page cache, flushes) drown everything at debug: at warn unless
    // RUST_LOG names sled itself.
    let asked = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let directives = if asked.contains("sled") {
        asked
    } else {
        format!("{asked},sled=warn")
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,sled=warn"));
    let human = std::env::var("MODE").is_ok_and(|m| m.eq_ignore_ascii_case("debug"));
    let (writer, guard) = log_writer::spawn(std::io::stderr())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if human {
        // Colour codes only for a terminal, not for a file or a log collector.
        use std::io::IsTerminal;
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    } else {
        builder.event_format(log_line::JsonLine).init();
    }
    Ok(guard)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

/// `mcp-auth-proxy hash-password`: a password from the terminal (asked twice, not echoed) or
/// one line of standard input; its bcrypt hash on standard output.
fn hash_password(rest: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::io::{BufRead, IsTerminal};
    if !rest.is_empty() {
        let help = rest.iter().any(|a| a == "-h" || a == "--help");
        eprintln!(
            "usage: mcp-auth-proxy hash-password < password-file\n\nReads a password (asked twice on a terminal, else one line of standard input) and\nprints its bcrypt hash for --password-hash / PASSWORD_HASH. The password is never\ntaken from the command line, where other users could see it."
        );
        return std::process::ExitCode::from(if help { 0 } else { 2 });
    }
    let line = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ");
        let again = rpassword::prompt_password("Again: ");
        match (first, again) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("mcp-auth-proxy: the two passwords differ");
                return std::process::ExitCode::FAILURE;
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("mcp-auth-proxy: cannot read the password: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("mcp-auth-proxy: cannot read the password: {e}");
            return std::process::ExitCode::FAILURE;
        }
        line
    };
    match mcp_auth_proxy::login::password::hash_for_config(&zeroize::Zeroizing::new(line)) {
        Ok(hash) => {
            println!("{hash}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-auth-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `mcp-auth-proxy migrate --from …`: what it brought and left on standard output.
async fn migrate(rest: &[std::ffi::OsString]) -> std::process::ExitCode {
    let name = std::ffi::OsString::from("mcp-auth-proxy migrate");
    let cli = mcp_auth_proxy::cli::MigrateCli::parse_from(std::iter::once(&name).chain(rest));
    match mcp_auth_proxy::migrate(cli, EnvSecrets::from_env()).await {
        Ok(report) => {
            print!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-auth-proxy migrate: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Masks the values of secret flags (`cli::secret_values`: `--password`, client secrets,
/// tokens, connection strings) in this process's command line, which every local user reads
/// in `/proc/<pid>/cmdline` (`ps`), whatever the process's dumpable flag: from here on it shows
/// `--password ***`. The words are written back over the kernel's copy through
/// `/proc/self/mem` (a process may always write its own memory), shortened, with the bytes
/// they freed at the end as empty words, so not even a secret's length shows. Until this
/// runs the values are readable: some 1.5 ms after `exec` (measured on a release build,
/// most of it the loading of the binary before `main`), so it runs before anything else,
/// the runtime included. The help for `--password` says to prefer a file or the
/// environment.
#[cfg(target_os = "linux")]
fn hide_secret_values(args: &[std::ffi::OsString]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileExt;
    let secrets = mcp_auth_proxy::cli::secret_values(args);
    if secrets.is_empty() {
        return Ok(());
    }
    // Fields 48 and 49 of stat(5), `arg_start` and `arg_end`: counted after the name in
    // parentheses (which may hold spaces), where field 3 begins.
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let unreadable = || std::io::Error::other("arg_start and arg_end are not in /proc/self/stat");
    let (start, end) = (
        field(48).ok_or_else(unreadable)?,
        field(49).ok_or_else(unreadable)?,
    );
    let now = std::fs::read("/proc/self/cmdline")?;
    let expected: Vec<u8> = args
        .iter()
        .flat_map(|a| a.as_bytes().iter().copied().chain([0]))
        .collect();
    if now != expected || end.checked_sub(start) != u64::try_from(now.len()).ok() {
        return Err(std::io::Error::other(
            "the command line is not the one this process was given",
        ));
    }
    let mut masked: Vec<u8> = Vec::with_capacity(now.len());
    for (n, word) in args.iter().enumerate() {
        let word = word.as_bytes();
        match secrets.iter().find(|(w, _)| *w == n) {
            Some(&(_, from)) => {
                let kept = word.get(..from).unwrap_or(word);
                masked.extend_from_slice(kept);
                masked.extend_from_slice(&b"***"[..3.min(word.len() - kept.len())]);
            }
            None => masked.extend_from_slice(word),
        }
        masked.push(0);
    }
    masked.resize(now.len(), 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?
        .write_all_at(&masked, start)
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "hash-password") {
        return hash_password(&args[2..]);
    }
    // First, before the runtime is built: until this has run, every local user can read
    // the secrets in `/proc/<pid>/cmdline`.
    #[cfg(target_os = "linux")]
    if let Err(e) = hide_secret_values(&args) {
        eprintln!(
            "mcp-auth-proxy: warning: could not hide secret flags from /proc/self/cmdline: {e}"
        );
    }
    // The main runtime is one thread: connections are served on the server's workers
    // (`src/server/workers.rs`), each a runtime of its own.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main_on_runtime(args)),
        Err(e) => {
            eprintln!("mcp-auth-proxy: the runtime did not start: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The rest of `main`, once the command line's secrets are hidden: `migrate`, or the proxy
/// until a signal.
async fn main_on_runtime(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    if args.get(1).is_some_and(|a| a == "migrate") {
        return migrate(&args[2..]).await;
    }
    // Our /proc entries (environ, mem, fd) become unreadable to processes of the same user,
    // the stdio children among them: PASSWORD and the other secrets live in our environment
    // and memory. (Root reads them regardless; a separate user for children is the boundary.)
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("mcp-auth-proxy: warning: could not make the process non-dumpable: {e}");
    }
    // The one process-wide TLS crypto provider, for the listeners, ACME and every client.
    // (aws-lc-rs is the only one compiled in, so a library or test that builds a rustls
    // config without this gets the same one.)
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // From the words read before they were masked (`std::env::args_os` reads the process's
    // argv again at each call, so it would now read the masks).
    let cli = Cli::parse_from(&args);
    let log = match init_tracing() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("mcp-auth-proxy: the log's writer thread did not start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            drop(log);
            eprintln!("mcp-auth-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for (flag, times) in mcp_auth_proxy::cli::repeated_flags(&args) {
        tracing::warn!(
            flag,
            times,
            "{flag} is given {times} times; the last one is used"
        );
    }
    let result = run(config, EnvSecrets::from_env(), shutdown_signal()).await;
    // Everything logged is out before the last word.
    drop(log);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-auth-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
