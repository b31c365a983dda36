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
    refuses(
        &["--repository-backend", "postgres"],
        &[],
        "not supported yet",
    )
    .await;
    refuses(
        &["--repository-backend", "sqlite"],
        &[],
        "use --repository-backend local",
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
    refuses(
        &[],
        &[("DATABASE_DSN", "postgres://u@db/mcp")],
        "not supported yet",
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
