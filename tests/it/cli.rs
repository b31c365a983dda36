//! Startup validation through the real binary: one clear line, non-zero exit.

use crate::helpers::run_binary;

async fn refuses(args: &[&str], envs: &[(&str, &str)], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    // Later flags win, so a test can still give its own --listen.
    let mut all = vec!["--data-path", &data];
    if !args.contains(&"--listen") {
        all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
    }
    if !args.iter().any(|a| a.starts_with("--password"))
        && !envs.iter().any(|(k, _)| k.starts_with("PASSWORD"))
    {
        all.extend_from_slice(&["--password", "pw"]);
    }
    all.extend_from_slice(args);
    let (code, stderr) = run_binary(&all, envs).await;
    assert_ne!(code, Some(0), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr:?}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
}

#[tokio::test]
async fn wrong_values_stop_startup_with_one_clear_line() {
    refuses(
        &["--external-url", "https://mcp.example.com/sub"],
        &[],
        "--external-url",
    )
    .await;
    refuses(
        &["--external-url", "mcp.example.com"],
        &[],
        "--external-url",
    )
    .await;
    // Messages that say what is wrong and what to do.
    refuses(
        &["--listen", "127.0.0.1:99999"],
        &[],
        "port 99999 is out of range",
    )
    .await;
    refuses(
        &["--data-path", "/etc/hostname"],
        &[],
        "is a file, not a directory",
    )
    .await;
    refuses(
        &["--password-hash", "nothash"],
        &[],
        "mcp-auth-proxy hash-password",
    )
    .await;
    refuses(
        &["-H", "mcp.example.com", "--no-auto-tls"],
        &[],
        "drop one of them",
    )
    .await;
    refuses(
        &["--google-allowed-users", "a@example.com"],
        &[],
        "add --google-client-id",
    )
    .await;
    refuses(
        &["--github-allowed-orgs", "acme"],
        &[],
        "add --github-client-id",
    )
    .await;
    // bcrypt checks only 72 bytes: a longer password would sign in with any tail.
    let long = "p".repeat(94);
    refuses(&["--password", &long], &[], "at most 72 bytes").await;
    refuses(&[], &[("PASSWORD", &long)], "at most 72 bytes").await;
    refuses(
        &["--repository-backend", "postgres"],
        &[],
        "needs a connection string",
    )
    .await;
    refuses(
        &["--repository-backend", "sqlite"],
        &[],
        "use local (the embedded store) or postgres",
    )
    .await;
    refuses(
        &[
            "--repository-backend",
            "postgres",
            "--repository-dsn",
            "mysql://db/x",
        ],
        &[],
        "must start with postgres://",
    )
    .await;
    refuses(
        &[],
        &[
            ("REPOSITORY_DSN", "postgres://u@db/a"),
            ("DATABASE_DSN", "postgres://u@db/b"),
        ],
        "name different databases",
    )
    .await;
    refuses(
        &["--trusted-proxies", "10.0.0.0/33"],
        &[],
        "--trusted-proxies",
    )
    .await;
    refuses(
        &["--stdio-mode", "pooled", "--", "node", "server.js"],
        &[],
        "use per-session or shared",
    )
    .await;
    refuses(&[], &[("STDIO_MODE", "one")], "--stdio-mode").await;
    refuses(
        &["--external-url", "https://mcp.example.com"],
        &[],
        "pass --tls-accept-tos",
    )
    .await;
    refuses(&["--tls-cert-file", "/x.pem"], &[], "needs --tls-key-file").await;
    refuses(
        &[
            "--tls-host",
            "mcp.example.com",
            "--tls-accept-tos",
            "--tls-challenge",
            "dns-01",
        ],
        &[],
        "--tls-challenge",
    )
    .await;
    // obot's variable alone chooses PostgreSQL, which needs the key.
    refuses(
        &[],
        &[("DATABASE_DSN", "postgres://u@db/mcp")],
        "ENCRYPTION_KEY is required",
    )
    .await;
    refuses(&["--header-mapping", "sub:X-Sub"], &[], "--header-mapping").await;
    refuses(
        &[
            "--stdio-mode",
            "shared",
            "--stdio-identity-env",
            "user=U",
            "--",
            "node",
            "s.js",
        ],
        &[],
        "needs --stdio-mode per-session",
    )
    .await;
    refuses(
        &["--stdio-identity-env", "user=1X", "--", "node", "s.js"],
        &[],
        "not a variable name",
    )
    .await;
    let clients = tempfile::tempdir().unwrap();
    let bad_file = clients.path().join("clients.toml");
    std::fs::write(
        &bad_file,
        "[[client]]\nid = \"x\"\nredirect_uris = [\"javascript:alert(1)\"]\n",
    )
    .unwrap();
    refuses(
        &["--clients-file", &bad_file.display().to_string()],
        &[],
        "redirect URI",
    )
    .await;
    refuses(&["--mcp-path", "mcp"], &[], "--mcp-path").await;
    refuses(&["--mcp-path", "/token"], &[], "collides").await;
    refuses(
        &["--allowed-origins", "not an origin"],
        &[],
        "--allowed-origins",
    )
    .await;
    refuses(&["--proxy-headers", "NoColon"], &[], "--proxy-headers").await;
    refuses(&["http://up:1/mcp", "extra"], &[], "no further arguments").await;
    refuses(
        &["--max-sessions", "0", "--", "node", "server.js"],
        &[],
        "--max-sessions",
    )
    .await;
    refuses(
        &["--stdio-env", "NOEQUALS", "--", "node", "server.js"],
        &[],
        "--stdio-env",
    )
    .await;
    refuses(
        &["--stdio-cwd", "/no/such/dir", "--", "node", "server.js"],
        &[],
        "--stdio-cwd",
    )
    .await;
    refuses(&[], &[("ENCRYPTION_KEY", "dG9vIHNob3J0")], "ENCRYPTION_KEY").await;
    // A signing key that cannot sign stops the start before anything listens (the one line
    // is the error: no "listening on" before it), whether or not assertions are on.
    refuses(&[], &[("JWT_PRIVATE_KEY", "not a pem")], "JWT_PRIVATE_KEY").await;
    let p384 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let p384 = rcgen::KeyPair::try_from(p384.as_ref())
        .unwrap()
        .serialize_pem();
    refuses(
        &["--proxy-forward-authorization", "http://127.0.0.1:9/mcp"],
        &[("JWT_PRIVATE_KEY", &p384)],
        "neither a P-256 key nor an RSA key",
    )
    .await;
    refuses(&["--listen", "nonsense"], &[], "--listen").await;
    refuses(&["--password", ""], &[], "no way to sign in").await;
    refuses(&["--password-hash", "plain-text"], &[], "--password-hash").await;
    refuses(&["--access-token-ttl", "0s"], &[], "--access-token-ttl").await;
    refuses(
        &["--allowed-redirect-schemes", "javascript"],
        &[],
        "--allowed-redirect-schemes",
    )
    .await;
}

/// Runs `mcp-auth-proxy hash-password` with `input` on standard input.
async fn hash_password(input: &str) -> (Option<i32>, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth-proxy"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn hash_password_prints_a_hash_that_signs_in() {
    use crate::flow::{Browser, OAuthClient};
    let (code, hash, _) = hash_password(&format!("{}\n", crate::helpers::TEST_PASSWORD)).await;
    assert_eq!(code, Some(0));
    assert!(hash.starts_with("$2b$12$"), "{hash}");
    assert!(!hash.contains(crate::helpers::TEST_PASSWORD));
    // The hash is the whole configuration: the password signs in.
    let p = crate::helpers::start_proxy(&["--password-hash", &hash]).await;
    let t = p.target();
    let tokens = OAuthClient::public(&t)
        .await
        .sign_in(&t, &Browser::new())
        .await;
    assert!(tokens["access_token"].is_string());

    let (code, out, err) = hash_password("").await;
    assert_ne!(code, Some(0));
    assert!(out.is_empty() && err.contains("empty"), "{err}");
}

#[tokio::test]
async fn help_names_every_environment_variable() {
    use clap::CommandFactory;
    let (code, help) = {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth-proxy"))
            .arg("--help")
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    assert_eq!(code, Some(0));
    for arg in mcp_auth_proxy::cli::Cli::command().get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                help.contains(&format!("[env: {env}")),
                "--help does not show {env}"
            );
        }
    }
    assert!(help.contains("hash-password"));
    // Grouped for people, with what only the environment sets and examples.
    for heading in [
        "Listening and TLS:",
        "Password sign-in:",
        "GitHub sign-in:",
        "Stdio servers:",
        "Limits:",
        "Examples:",
    ] {
        assert!(help.contains(heading), "--help has no {heading}");
    }
    for var in [
        "ENCRYPTION_KEY",
        "AUTH_HMAC_SECRET",
        "JWT_PRIVATE_KEY",
        "MODE",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(&format!("  {var} ")),
            "--help does not name {var}"
        );
    }
}

/// Runs the binary with `args` (and a password); its exit code and stderr.
async fn run_with(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut all = vec!["--data-path", data.as_str(), "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    run_binary(&all, envs).await
}

#[tokio::test]
async fn what_the_command_line_does_not_understand_is_refused_not_run() {
    // (arguments, environment, what stderr must say)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        // A mistyped flag is not the first word of a stdio command.
        (
            vec!["--no-such-flag", "http://127.0.0.1:3000/mcp"],
            vec![],
            "unexpected argument '--no-such-flag'",
        ),
        (
            vec!["--pasword", "x", "http://127.0.0.1:3000/mcp"],
            vec![],
            "a similar argument exists: '--password'",
        ),
        // A backend that is an address without its scheme, or another scheme.
        (
            vec!["127.0.0.1:3000/mcp"],
            vec![],
            "did you mean http://127.0.0.1:3000/mcp",
        ),
        (
            vec!["localhost:3000"],
            vec![],
            "did you mean http://localhost:3000",
        ),
        (
            vec!["ftp://files.example/mcp"],
            vec![],
            "ftp:// scheme is not an MCP transport",
        ),
        // One boolean rule: words other than true/false, 1/0, yes/no, on/off are errors.
        (vec!["--tls-accept-tos=maybe"], vec![], "is not a boolean"),
        (vec![], vec![("NO_CIMD", "sometimes")], "is not a boolean"),
        (vec![], vec![("NO_FAST_LANE", "maybe")], "is not a boolean"),
    ];
    for (args, envs, needle) in cases {
        let (code, stderr) = run_with(&args, &envs).await;
        assert_ne!(code, Some(0), "{args:?} {envs:?} started");
        assert!(stderr.contains(needle), "{args:?} {envs:?}: {stderr}");
    }
}

#[tokio::test]
async fn every_boolean_reads_yes_on_1_and_true_alike() {
    use clap::Parser;
    use mcp_auth_proxy::cli::Cli;
    for word in ["true", "TRUE", "1", "yes", "On"] {
        let flag = format!("--tls-accept-tos={word}");
        let cli = Cli::try_parse_from(["x", flag.as_str(), "--no-cimd", "--no-fast-lane"]).unwrap();
        assert!(
            cli.tls_accept_tos && cli.no_cimd && cli.no_fast_lane,
            "{word}"
        );
    }
    for word in ["false", "0", "no", "OFF"] {
        let flag = format!("--no-cimd={word}");
        let cli = Cli::try_parse_from(["x", flag.as_str()]).unwrap();
        assert!(!cli.no_cimd, "{word}");
    }
    // A flag given twice: the last wins (as sigbit); repeatable ones keep every value.
    let cli = Cli::try_parse_from(["x", "--listen", ":1", "--listen", ":2"]).unwrap();
    assert_eq!(cli.listen, ":2");
    let cli = Cli::try_parse_from(["x", "--stdio-env", "A=1", "--stdio-env", "B=2"]).unwrap();
    assert_eq!(cli.stdio_env, ["A=1", "B=2"]);
    // A stdio command keeps its own flags, with or without `--`.
    let cli = Cli::try_parse_from(["x", "npx", "-y", "server", "--port", "1"]).unwrap();
    assert_eq!(cli.backend, ["npx", "-y", "server", "--port", "1"]);
    let cli = Cli::try_parse_from(["x", "--", "node", "--inspect", "s.js"]).unwrap();
    assert_eq!(cli.backend, ["node", "--inspect", "s.js"]);
}

#[tokio::test]
async fn the_log_has_plain_values_a_person_can_read() {
    use crate::flow::{Browser, OAuthClient};
    let site = crate::helpers::BinarySite::new().await;
    let mut bin = site.start(&[]).await;
    let t = bin.target(&site.origin);
    let oc = OAuthClient::register(
        &t,
        serde_json::json!({"client_name": "Readable App", "redirect_uris": [crate::flow::REDIRECT]}),
    )
    .await;
    Browser::new()
        .authorize(
            &t,
            &oc.auth_url(&t, &[]),
            crate::helpers::TEST_PASSWORD,
            "approve",
        )
        .await;
    // The lines arrive through a pipe: wait (bounded) for the sign-in's.
    let mut lines: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lines.iter().any(|l| l.contains("signed in")) && tokio::time::Instant::now() < deadline {
        if let Ok(Some(l)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), bin.stderr.recv()).await
        {
            lines.push(l);
        }
    }
    let text = lines.join("\n");
    assert!(!text.contains("Some("), "{text}");
    assert!(!text.contains("[\\\""), "no JSON inside strings: {text}");
    let registered = lines
        .iter()
        .find(|l| l.contains("registered a client"))
        .unwrap();
    assert!(
        registered.contains(r#""client_name":"Readable App""#),
        "{registered}"
    );
    let signed_in = lines.iter().find(|l| l.contains("signed in")).unwrap();
    assert!(signed_in.contains(r#""user":"admin""#), "{signed_in}");
    for line in lines
        .iter()
        .filter(|l| l.contains(r#""message":"request""#))
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ms = v["ms"].as_f64().unwrap();
        assert_eq!((ms * 100.0).round() / 100.0, ms, "rounded: {line}");
        assert_eq!(v["client"], "127.0.0.1", "{line}");
    }
}

/// The log lines of a start of the binary with `args`, up to the sign-in methods line.
async fn startup_lines(args: &[&str]) -> String {
    startup_lines_at(&crate::helpers::BinarySite::new().await, args).await
}

/// The same, in `site`'s data directory.
async fn startup_lines_at(site: &crate::helpers::BinarySite, args: &[&str]) -> String {
    let mut bin = site.start(args).await;
    let mut lines = std::mem::take(&mut bin.before_listening);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("sign-in with")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sign-in line: {lines:?}"
        );
        if let Ok(Some(l)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), bin.stderr.recv()).await
        {
            lines.push(l);
        }
    }
    lines.join("\n")
}

#[tokio::test]
async fn startup_says_what_is_wrong_before_anyone_signs_in() {
    let dead = format!("http://127.0.0.1:{}/mcp", crate::helpers::dead_port().await);
    let log = startup_lines(&["--password", "changeme", &dead]).await;
    assert!(log.contains("does not answer yet"), "{log}");
    assert!(log.contains("the password is weak"), "{log}");

    let log = startup_lines(&["--", "no-such-mcp-server-command"]).await;
    assert!(log.contains("cannot be started"), "{log}");
    assert!(log.contains("is not found"), "{log}");
    assert!(
        !log.contains("the password is weak"),
        "the test password is long: {log}"
    );

    let log = startup_lines(&[]).await;
    assert!(log.contains("no MCP server behind this proxy"), "{log}");
    assert!(!log.contains("MCP clients connect to"), "{log}");
    assert!(!log.contains("sigbit"), "{log}");
    assert!(!log.contains("is given"), "{log}");

    // What has no effect is said: a flag given twice, a DSN for a store not in use.
    let log = startup_lines(&[
        "--mcp-path",
        "/a",
        "--mcp-path=/mcp",
        "--repository-dsn",
        "x",
    ])
    .await;
    assert!(
        log.contains("--mcp-path is given 2 times; the last one is used"),
        "{log}"
    );
    assert!(
        log.contains("--repository-dsn (REPOSITORY_DSN) is ignored"),
        "{log}"
    );

    // sigbit's files in the data directory (the same default, ./data) are not passed over
    // in silence.
    let site = crate::helpers::BinarySite::new().await;
    std::fs::create_dir(site.dir.path().join("certs")).unwrap();
    let log = startup_lines_at(&site, &[]).await;
    assert!(
        log.contains("mcp-auth-proxy migrate --from sigbit:"),
        "{log}"
    );
}

#[tokio::test]
async fn migrate_names_what_it_cannot_read() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().display().to_string();
    // (The database named is never reached: the source is read first.)
    let to = format!(
        "postgres://u@127.0.0.1:{}/x",
        crate::helpers::dead_port().await
    );
    for (from, to, expected) in [
        ("elsewhere:/x", "", "needs --to postgres://"),
        (
            "/no/such/dir",
            &*to,
            "not a data directory of mcp-auth-proxy",
        ),
        ("sigbit:/no/such/dir", "", "not a data directory of sigbit"),
    ] {
        let mut args = vec!["migrate", "--from", from, "--data-path", &data];
        if !to.is_empty() {
            args.extend(["--to", to]);
        }
        let out = crate::helpers::binary_output(&args, &[("ENCRYPTION_KEY", "")]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{from}");
        assert!(stderr.contains(expected), "{from}: {stderr}");
    }
}

#[tokio::test]
async fn a_person_at_a_terminal_sees_a_banner_a_log_collector_does_not() {
    use tokio::io::AsyncBufReadExt;
    // `script` (util-linux) gives the binary a terminal.
    let data = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}/mcp", crate::helpers::dead_port().await);
    // The shell writes its pid, then becomes the proxy (`exec`): the test stops that pid
    // itself rather than trust a hangup to reach it.
    let pid_file = data.path().join("proxy.pid");
    let command = format!(
        "echo $$ > {}; exec {} --data-path {} --listen 127.0.0.1:0 --password a-long-test-password {dead}",
        pid_file.display(),
        env!("CARGO_BIN_EXE_mcp-auth-proxy"),
        data.path().display()
    );
    let mut script = tokio::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script (util-linux) runs");
    let mut lines = tokio::io::BufReader::new(script.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.starts_with('{') {
                banner.push(line.clone());
            }
            if line.contains("Listening on") {
                break;
            }
        }
    })
    .await
    .expect("a banner within 20 s");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(stopped.success(), "the proxy ({pid}) was running");
    script.kill().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy ({pid}) did not stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let banner = banner.join("\n");
    for expected in [
        "is running",
        &format!("MCP server       {dead} (NOT READY: "),
        "Give clients     http://localhost:",
        "Sign-in page     http://localhost:",
        "Sign-in with     password",
        "HTTPS            off here",
    ] {
        assert!(banner.contains(expected), "{expected:?} not in:\n{banner}");
    }
    let log = startup_lines(&[]).await;
    assert!(!log.contains("is running"), "{log}");
}
