//! Packaging, as far as this machine can check it without a Docker engine: the Dockerfile
//! against hadolint-style rules, the image's entrypoint script (with shellcheck where it is
//! installed; `.ci/run` installs it), and the release binary running in a root filesystem
//! holding nothing but itself and the libraries it links (what a distroless image gives it).

use std::path::{Path, PathBuf};
use std::process::Stdio;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn dockerfile() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap()
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            let (op, rest) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
            current.clear();
        }
    }
    out
}

#[test]
fn the_dockerfile_follows_the_usual_lint_rules() {
    let text = dockerfile();
    let ins = instructions(&text);
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(o, _)| o == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    for f in &froms {
        let image = f.split_whitespace().next().unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "DL3006/DL3007: pin {image}"
        );
    }
    // The final stage: everything after the last FROM.
    let last = ins.iter().rposition(|(o, _)| o == "FROM").unwrap();
    let runtime = &ins[last..];
    let user = runtime
        .iter()
        .rev()
        .find(|(o, _)| o == "USER")
        .map(|(_, r)| r.as_str())
        .expect("DL3002: a USER in the final stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "non-root: {user}"
    );
    assert!(
        runtime
            .iter()
            .any(|(o, r)| o == "VOLUME" && r.contains("/data"))
    );
    assert!(
        runtime
            .iter()
            .any(|(o, r)| o == "ENV" && r.contains("DATA_PATH=/data"))
    );
    assert!(runtime.iter().any(|(o, _)| o == "HEALTHCHECK"));
    let entry = runtime.iter().find(|(o, _)| o == "ENTRYPOINT").unwrap();
    assert!(entry.1.starts_with('['), "DL3025: exec form for ENTRYPOINT");
    assert!(
        runtime
            .iter()
            .any(|(o, r)| o == "RUN" && r.contains("setcap cap_net_bind_service=+ep")),
        "80/443 by capability, not root"
    );
    for (op, rest) in &ins {
        assert_ne!(op, "ADD", "DL3020: COPY, not ADD: {rest}");
        if op == "RUN" && rest.contains("apt-get install") {
            assert!(rest.contains("--no-install-recommends"), "DL3015: {rest}");
            assert!(rest.contains("-y"), "DL3014: {rest}");
            assert!(rest.contains("rm -rf /var/lib/apt/lists"), "DL3009: {rest}");
        }
        if op == "RUN" {
            assert!(!rest.contains("sudo "), "DL3004: {rest}");
            assert!(!rest.starts_with("cd "), "DL3003: use WORKDIR: {rest}");
        }
        if op == "COPY" {
            // Every local source exists.
            let parts: Vec<&str> = rest.split_whitespace().collect();
            if !parts[0].starts_with("--from") {
                for src in &parts[..parts.len() - 1] {
                    assert!(Path::new(ROOT).join(src).exists(), "COPY {src}: missing");
                }
            }
        }
    }
    // The Node and uv the stdio servers need are in the image.
    assert!(froms.iter().any(|f| f.starts_with("node:")));
    assert!(text.contains("/uvx"));
}

fn entrypoint() -> PathBuf {
    Path::new(ROOT).join("docker/entrypoint.sh")
}

fn installed(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_entrypoint_checks_the_data_directory_and_passes_every_argument() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for the binary that prints its arguments.
    let stub = dir.path().join("stub");
    std::fs::write(
        &stub,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"arg:$a\"; done\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", stub.to_str().unwrap()])
        .status()
        .unwrap();
    let run = |data: &Path, args: &[&str]| {
        let out = std::process::Command::new("sh")
            .arg(entrypoint())
            .args(args)
            .env("MCP_AUTH_PROXY", &stub)
            .env("DATA_PATH", data)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let data = dir.path().join("data");
    let (code, out, _) = run(&data, &["--password", "a b", "--", "npx", "-y", "srv"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        "arg:--password\narg:a b\narg:--\narg:npx\narg:-y\narg:srv\n"
    );
    assert!(data.is_dir(), "the data directory is created");

    // A data path that cannot be a directory (below a file): a clear message, no start.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let (code, out, err) = run(&file.join("data"), &["--password", "x"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "the proxy did not start");
    assert!(
        err.contains("not writable") && err.contains("chown"),
        "{err}"
    );
    // hash-password needs no data directory.
    let (code, out, _) = run(&file.join("data"), &["hash-password"]);
    assert_eq!((code, out.as_str()), (Some(0), "arg:hash-password\n"));

    if installed("shellcheck") {
        let st = std::process::Command::new("shellcheck")
            .arg(entrypoint())
            .status()
            .unwrap();
        assert!(st.success(), "shellcheck docker/entrypoint.sh");
    } else {
        assert!(std::env::var("CI").is_err(), "CI must install shellcheck");
        eprintln!("shellcheck is not installed: skipped");
    }
}

/// The libraries the binary links, from `ldd`.
fn linked_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

#[tokio::test]
async fn the_binary_runs_in_a_root_filesystem_of_itself_and_its_libraries() {
    // chroot needs root; CI runs as root.
    let root_user = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root_user {
        assert!(std::env::var("CI").is_err(), "CI runs as root");
        eprintln!("not root: skipped");
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mcp-auth-proxy"));
    let rootfs = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    std::fs::copy(&bin, r.join("mcp-auth-proxy")).unwrap();
    for lib in linked_libraries(&bin) {
        let dest = r.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &dest).unwrap();
    }
    std::fs::create_dir_all(r.join("data")).unwrap();
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chroot (coreutils)");

    // Without CA certificates it cannot make outbound HTTPS calls: it says so and stops.
    let out = tokio::process::Command::new(chroot)
        .arg(r)
        .args([
            "/mcp-auth-proxy",
            "--listen",
            "127.0.0.1:0",
            "--password",
            "x",
            "--data-path",
            "/data",
        ])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No CA certificates"), "{err}");

    // With them (as distroless images have), it serves.
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
    std::fs::copy(bundle, r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let files = walk(r) - walk(&r.join("data"));
    assert!(files <= 7, "nothing else in it: {files} files");

    let port = crate::helpers::dead_port().await;
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(chroot)
        .arg(r)
        .args([
            "/mcp-auth-proxy",
            "--listen",
            &listen,
            "--password",
            "a password",
            "--data-path",
            "/data",
        ])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{listen}/readyz");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = crate::helpers::client().get(&url).send().await {
            ready = r.status().is_success();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        ready,
        "not ready inside the minimal root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(walk(&r.join("data")) > 0, "its state went to /data");
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { 1 }
        })
        .sum()
}

#[test]
fn every_example_serves_a_directory_that_something_creates() {
    let read = |p: &str| std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap();
    // The image's examples serve /data/files: the entrypoint creates it, run for real.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let st = std::process::Command::new("sh")
        .arg(entrypoint())
        .arg("--version")
        .env("MCP_AUTH_PROXY", "true")
        .env("DATA_PATH", &data)
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new("sh")
        .arg(entrypoint())
        .args(["--", "npx", "srv", "/data/files"])
        .env("MCP_AUTH_PROXY", "true")
        .env("DATA_PATH", &data)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        data.join("files").is_dir(),
        "the entrypoint creates <data>/files"
    );
    for example in ["Dockerfile", "docker-compose.yml", "README.md"] {
        let text = read(example);
        for line in text.lines().filter(|l| l.contains("server-filesystem")) {
            let dirs: Vec<&str> = line
                .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == ']')
                .filter(|w| w.starts_with('/'))
                .collect();
            for d in dirs {
                assert!(
                    d == "/data/files" || d == "/srv" || d.starts_with("/home") || d == "/path",
                    "{example}: serves {d}, which nothing creates: {line}"
                );
            }
        }
    }
    // The systemd unit: the directory it serves is one of its StateDirectory entries.
    let unit = read("docs/systemd/mcp-auth-proxy.service");
    let states: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("StateDirectory="))
        .flat_map(|v| v.split_whitespace().map(|d| format!("/var/lib/{d}")))
        .collect();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    let served = exec.split_whitespace().last().unwrap();
    assert!(
        states.iter().any(|s| s == served),
        "{served} is not in {states:?}"
    );
    // Compose: hash-password must run before any secret is set (no `:?` on the hash).
    let compose = read("docker-compose.yml");
    assert!(
        !compose.contains("PASSWORD_HASH:?"),
        "compose refuses every command without it"
    );
    // Every compose file can build the image it runs.
    for f in [
        "docker-compose.yml",
        "docs/docker/docker-compose.github.yml",
    ] {
        assert!(read(f).contains("build:"), "{f} has no build:");
    }
}

#[test]
fn the_healthcheck_follows_the_listen_address_the_proxy_uses() {
    let dir = tempfile::tempdir().unwrap();
    let listen_file = dir.path().join("mcp-auth-proxy.listen");
    let run = |args: &[&str], env_listen: Option<&str>| {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg(entrypoint())
            .args(args)
            .env("MCP_AUTH_PROXY", "true")
            .env("DATA_PATH", dir.path().join("data"))
            .env("TMPDIR", dir.path())
            .env_remove("LISTEN");
        if let Some(l) = env_listen {
            cmd.env("LISTEN", l);
        }
        assert!(cmd.status().unwrap().success());
        std::fs::read_to_string(&listen_file)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(run(&[], None), ":80");
    assert_eq!(run(&[], Some(":8080")), ":8080");
    assert_eq!(
        run(&["--listen", ":9000"], Some(":8080")),
        ":9000",
        "the flag wins"
    );
    assert_eq!(run(&["--listen=127.0.0.1:7000"], None), "127.0.0.1:7000");
    assert_eq!(
        run(&["--", "srv", "--listen", ":1"], None),
        ":80",
        "a child's flag is not ours"
    );
    // The Dockerfile's healthcheck reads that file.
    assert!(dockerfile().contains("/tmp/mcp-auth-proxy.listen"));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !installed("systemd-analyze") {
        assert!(std::env::var("CI").is_err(), "CI must install systemd");
        eprintln!("systemd-analyze is not installed (apt-get install systemd): skipped");
        return;
    }
    // verify checks that ExecStart's program exists: the unit names the installed path, so
    // the copy checked here names the binary under test.
    let unit = std::fs::read_to_string(Path::new(ROOT).join("docs/systemd/mcp-auth-proxy.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/mcp-auth-proxy "));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mcp-auth-proxy.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/mcp-auth-proxy",
            env!("CARGO_BIN_EXE_mcp-auth-proxy"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    // An unknown key or a bad value is only a warning to systemd: any is a failure here.
    let about_the_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("mcp-auth-proxy"))
        .collect();
    assert!(about_the_unit.is_empty(), "{said}");
}
