//! Secrets stay ours: not readable by the stdio child through `/proc`, not taken from a
//! file others can read.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::run_binary;

/// Waits (bounded) until `path` exists and holds a line.
async fn written(path: &std::path::Path) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} was never written", path.display()))
}

#[tokio::test]
async fn the_stdio_child_cannot_read_the_proxys_environment_from_proc() {
    // Reading another process's /proc/<pid>/environ is decided by ptrace rules, which root
    // passes regardless: the proxy and its child run as an unprivileged user here, which
    // needs root to arrange.
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching to an unprivileged user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The binary where the unprivileged user can run it, whatever the checkout's modes.
    let bin = dir.path().join("mcp-auth-proxy");
    std::fs::copy(env!("CARGO_BIN_EXE_mcp-auth-proxy"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    let out = dir.path().display().to_string();
    // The child reads its parent's (the proxy's) environment, then waits on stdin.
    let script = format!(
        "cat /proc/$PPID/environ > {out}/environ 2> {out}/err; echo $? > {out}/done; exec cat"
    );
    let mut proxy = tokio::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .args(["--listen", "127.0.0.1:0", "--data-path"])
        .arg(&data)
        .args(["--stdio-warm-spare", "--", "sh", "-c", &script])
        .env("PASSWORD", "the-secret-in-our-environment")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = written(&dir.path().join("done")).await;
    let environ = std::fs::read(dir.path().join("environ")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    proxy.start_kill().unwrap();
    proxy.wait().await.unwrap();
    assert_ne!(status.trim(), "0", "the child read /proc/<proxy>/environ");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        !String::from_utf8_lossy(&environ).contains("the-secret"),
        "the password reached the child"
    );
}

#[tokio::test]
async fn a_password_file_must_be_the_owners_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "from a file\n").unwrap();
    let data = dir.path().join("data").display().to_string();
    let path = file.display().to_string();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = run_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-path",
            &data,
            "--password-file",
            &path,
        ],
        &[("PASSWORD", "")],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // Owner-only: its first line is the password.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = crate::helpers::start_proxy(&["--no-password", "--password-file", &path]).await;
    let t = p.target();
    let oc = crate::flow::OAuthClient::public(&t).await;
    let b = crate::flow::Browser::new();
    let back = b
        .authorize(&t, &oc.auth_url(&t, &[]), "from a file", "approve")
        .await;
    assert!(crate::flow::query(&back, "code").is_some(), "{back}");
}

/// Starts a proxy whose warm spare child runs `script` (sh) and waits for its `done` file.
async fn child_report(
    args: &[&str],
    script: &str,
    out: &std::path::Path,
    data: tempfile::TempDir,
) -> crate::helpers::TestProxy {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--stdio-warm-spare", "--", "sh", "-c", script]);
    let clock = mcp_auth_proxy::clock::Clock::system();
    let p = crate::helpers::start_proxy_with(&all, clock, data).await;
    written(&out.join("done")).await;
    p
}

#[tokio::test]
async fn stdio_children_start_in_a_directory_of_their_own() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().display().to_string();
    let p = child_report(
        &[],
        &format!("pwd > {o}/pwd; ls -A > {o}/ls; echo ok > {o}/done; exec cat"),
        out.path(),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let pwd = std::fs::read_to_string(out.path().join("pwd")).unwrap();
    drop(p);
    assert!(pwd.trim().ends_with("/stdio-cwd"), "{pwd}");
    let listing = std::fs::read_to_string(out.path().join("ls")).unwrap();
    assert_eq!(listing, "", "nothing of ours where the child starts");
}

#[tokio::test]
async fn stdio_user_runs_children_as_that_user_away_from_the_keys() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running children as another user needs root");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = out.path().display().to_string();
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = data.path().display().to_string();
    let script = format!(
        "id -u > {o}/uid; id -G > {o}/groups; ls {d} > {o}/ls 2> {o}/ls-err; echo ok > {o}/done; exec cat"
    );
    let p = child_report(&["--stdio-user", "nobody"], &script, out.path(), data).await;
    let read = |f: &str| std::fs::read_to_string(out.path().join(f)).unwrap();
    assert_eq!(read("uid").trim(), "65534");
    assert!(
        !read("groups").split_whitespace().any(|g| g == "0"),
        "root's groups dropped: {}",
        read("groups")
    );
    assert!(
        read("ls-err").contains("Permission denied"),
        "the data directory is closed: {}",
        read("ls")
    );
    drop(p);
}

#[tokio::test]
async fn the_plaintext_password_is_not_kept_once_hashed() {
    let p = crate::helpers::start_proxy(&[]).await;
    let authn = &p.state.signin.authn;
    assert!(authn.password.is_some(), "password sign-in is on");
    assert!(
        authn.cfg.password.is_none(),
        "the plaintext stayed in memory"
    );
}

/// Secrets given as flags are masked in the proxy's command line, which every local user
/// reads in `/proc/<pid>/cmdline` (`ps`), whatever the process's dumpable flag; the proxy
/// itself still runs on the real values.
#[tokio::test]
async fn secrets_given_as_flags_are_masked_in_proc_cmdline() {
    use crate::flow::{Browser, OAuthClient, query, token};
    use crate::helpers::{BinarySite, client, echoed_ping, start_upstream};
    let site = BinarySite::new().await;
    let up = start_upstream().await;
    let password = "flag-password-0123456789";
    let bearer = "flag-bearer-token-0123456789";
    let bearer_flag = format!("--proxy-bearer-token={bearer}");
    let upstream = up.url("/mcp");
    let bin = site
        .start(&["--password", password, &bearer_flag, &upstream])
        .await;
    let pid = bin.child.id().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let text = String::from_utf8_lossy(&cmdline);
    assert!(
        !text.contains(password) && !text.contains(bearer),
        "{text:?}"
    );
    let words: Vec<&str> = text.trim_end_matches('\0').split('\0').collect();
    assert!(
        words.windows(2).any(|w| w == ["--password", "***"]),
        "{words:?}"
    );
    assert!(words.contains(&"--proxy-bearer-token=***"), "{words:?}");
    assert_eq!(words.last(), Some(&upstream.as_str()), "the rest as given");
    // Not even the lengths show: what the masks freed is at the end.
    assert_eq!(
        cmdline.len() - text.trim_end_matches('\0').len() - 1,
        password.len() + bearer.len() - 6
    );

    // What the proxy read is the real thing: the password signs in, the token goes upstream.
    let t = bin.target(&site.origin);
    let oc = OAuthClient::public(&t).await;
    let back = Browser::new()
        .authorize(&t, &oc.auth_url(&t, &[]), password, "approve")
        .await;
    let code = query(&back, "code").expect("signed in with the password from the flag");
    let tokens: serde_json::Value = token(&t, &oc.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    let echoed = echoed_ping(
        client()
            .post(bin.url("/mcp"))
            .bearer_auth(tokens["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        echoed["headers"]["authorization"],
        format!("Bearer {bearer}")
    );
}
