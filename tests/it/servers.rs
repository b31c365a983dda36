//! Several MCP servers behind one proxy (`--config`): two stdio servers and an HTTP one, each
//! its own protected resource with its own issuer, tokens bound to one server, per-server
//! allow-lists, and one browser sign-in serving consent for each.

use futures_util::StreamExt;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::flow::{Browser, OAuthClient, location, query, refresh};
use crate::helpers::{
    TEST_PASSWORD, Target, TestProxy, client, get_json, start_proxy, start_proxy_with,
    start_upstream, unused_port,
};
use crate::stdio::{FIXTURE, init_body, session_post};

/// A configuration file in its own directory (kept alive by the returned guard).
pub fn config_file(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("servers.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path.display().to_string())
}

/// Two copies of the fixture told apart by `WHO`, and the echo upstream as `web`.
fn three_servers(upstream: &str, extra: &str) -> String {
    format!(
        r#"{extra}
[[server]]
name = "alpha"
command = ["node", "{FIXTURE}"]
env = {{ WHO = "alpha" }}
users = ["password:alice"]

[[server]]
name = "beta"
command = ["node", "{FIXTURE}"]
env = {{ WHO = "beta" }}
users = ["password:bob"]

[[server]]
name = "web"
url = "{upstream}"
headers = {{ "X-Api-Key" = "web's own key" }}
timeout = "20s"
"#
    )
}

/// A proxy for the servers of the configuration file at `path`, whose password user is
/// alice, with `more` flags.
async fn start_as_alice(path: &str, more: &[&str]) -> TestProxy {
    let mut args = vec![
        "--password",
        TEST_PASSWORD,
        "--password-user",
        "alice",
        "--config",
        path,
    ];
    args.extend(more);
    start_proxy(&args).await
}

/// The server `name` of proxy `p` as a test reaches it.
fn server(p: &TestProxy, name: &str) -> Target {
    let t = p.target();
    Target {
        resource: format!("{}/{name}/mcp", t.origin),
        ..t
    }
}

/// The authorization URL of `name`'s issuer, without `resource` (as Claude Code sends it).
fn auth_url_at(c: &OAuthClient, t: &Target, name: &str, changes: &[(&str, &str)]) -> String {
    let mut changes = changes.to_vec();
    if !changes.iter().any(|(k, _)| *k == "resource") {
        changes.push(("resource", ""));
    }
    c.auth_url(t, &changes)
        .replacen("/authorize?", &format!("/{name}/authorize?"), 1)
}

/// Signs in (or is signed in) with `browser` and approves, at `name`'s issuer; where the
/// browser is finally sent.
async fn approve_at(
    browser: &Browser,
    t: &Target,
    c: &OAuthClient,
    server: &Target,
    name: &str,
    changes: &[(&str, &str)],
) -> url::Url {
    let url = auth_url_at(c, server, name, changes);
    browser.authorize(t, &url, TEST_PASSWORD, "approve").await
}

async fn token_at(t: &Target, name: &str, params: &[(String, String)]) -> reqwest::Response {
    client()
        .post(t.url(&format!("/{name}/token")))
        .form(params)
        .send()
        .await
        .unwrap()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// `initialize` at `url` with `token`, through `http`.
async fn initialize(http: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    http.post(url)
        .bearer_auth(token)
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::CONTENT_TYPE, "application/json")
        .body(init_body(1))
        .send()
        .await
        .unwrap()
}

/// Opens a session at `url` with `token`; its id.
async fn open(url: &str, token: &str) -> String {
    let resp = initialize(&client(), url, token).await;
    assert_eq!(resp.status(), StatusCode::OK, "initialize at {url}");
    resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// What the fixture's `env` tool says `WHO` is, on session `sid` at `url`.
async fn who_answers(url: &str, token: &str, sid: &str) -> String {
    let body = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"env","arguments":{"name":"WHO"}}});
    let resp = session_post(url, token, sid, &body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
        .await
        .unwrap()
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    let answer: Value = serde_json::from_str(data).unwrap();
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_is_its_own_resource_with_its_own_issuer() {
    let upstream = start_upstream().await;
    let (_dir, path) = config_file(&three_servers(&upstream.url("/mcp"), ""));
    let p = start_as_alice(&path, &["--admin-users", "password:alice"]).await;
    let (alpha, beta, web) = (server(&p, "alpha"), server(&p, "beta"), server(&p, "web"));
    let o = alpha.origin.clone();

    // Each server's documents: its resource names its issuer, whose endpoints are its own.
    let prm = get_json(p.url("/.well-known/oauth-protected-resource/alpha/mcp")).await;
    assert_eq!(prm["resource"], format!("{o}/alpha/mcp"));
    assert_eq!(prm["authorization_servers"], json!([format!("{o}/alpha")]));
    let asm = get_json(p.url("/.well-known/oauth-authorization-server/beta")).await;
    assert_eq!(asm["issuer"], format!("{o}/beta"));
    assert_eq!(asm["authorization_endpoint"], format!("{o}/beta/authorize"));
    assert_eq!(asm["token_endpoint"], format!("{o}/beta/token"));
    assert_eq!(asm["registration_endpoint"], format!("{o}/register"));
    // No default server: the root documents and the root MCP path are not any server's.
    for root in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-authorization-server",
    ] {
        let resp = client().get(p.url(root)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{root}");
    }
    let resp = client().post(p.url("/mcp")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("/alpha/mcp, /beta/mcp, /web/mcp")
    );

    // A person opening the address is shown each server's URL.
    let home = client()
        .get(p.url("/"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in ["alpha", "beta", "web"] {
        let url = format!("value=\"{o}/{name}/mcp\"");
        assert!(home.contains(&url), "{url} in {home}");
    }
    assert!(!home.contains(&format!("value=\"{o}/mcp\"")), "{home}");

    // A client that omits `resource` gets a token for the server whose issuer it used.
    let oc = OAuthClient::public(&alpha).await;
    let browser = Browser::new();
    let back = approve_at(&browser, &alpha, &oc, &alpha, "alpha", &[]).await;
    assert_eq!(query(&back, "iss"), Some(format!("{o}/alpha")));
    let code = query(&back, "code").unwrap();
    // Redeemed at another server's token endpoint: refused, and the code still works.
    assert_eq!(
        error_of(token_at(&beta, "beta", &oc.code_params(&code, &[])).await).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    let resp = token_at(&alpha, "alpha", &oc.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let introspected = p
        .repo()
        .get::<mcp_auth_proxy::store::TokenRecord>(&mcp_auth_proxy::store::TokenHash::of(access).0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(introspected.resource, format!("{o}/alpha/mcp"));

    // Alpha's token reaches alpha's own child, and nothing else.
    let sid = open(&p.url("/alpha/mcp"), access).await;
    assert_eq!(
        who_answers(&p.url("/alpha/mcp"), access, &sid).await,
        "alpha"
    );
    for other in ["beta", "web"] {
        let resp = initialize(&client(), &p.url(&format!("/{other}/mcp")), access).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{other}");
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.contains(&format!(
                "resource_metadata=\"{o}/.well-known/oauth-protected-resource/{other}/mcp\""
            )),
            "{challenge}"
        );
    }

    // An issuer issues for its own server only.
    let back = approve_at(
        &browser,
        &alpha,
        &oc,
        &alpha,
        "alpha",
        &[("resource", &beta.resource)],
    )
    .await;
    assert_eq!(query(&back, "error").as_deref(), Some("invalid_target"));
    assert_eq!(query(&back, "iss"), Some(format!("{o}/alpha")));

    // A browser-based client's token request carries its Origin: a server's own token
    // endpoint is the authorization server's, not an MCP endpoint the Origin rule guards.
    let resp = client()
        .post(p.url("/alpha/token"))
        .header(header::ORIGIN, "https://inspector.example")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "nope"),
            ("client_id", oc.id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );

    // Refreshed at its own issuer only.
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let params = vec![
        ("grant_type".to_string(), "refresh_token".to_string()),
        ("refresh_token".to_string(), refresh_token.to_string()),
        ("client_id".to_string(), oc.id.clone()),
    ];
    assert_eq!(
        error_of(token_at(&web, "web", &params).await).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    assert_eq!(
        token_at(&alpha, "alpha", &params).await.status(),
        StatusCode::OK
    );

    // Beta admits bob only: the same browser's sign-in is refused there, on a page, and the
    // app is told `access_denied` by beta's issuer.
    let resp = browser
        .http
        .get(auth_url_at(&oc, &beta, "beta", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = browser
        .http
        .get(p.url(&location(&resp)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let html = resp.text().await.unwrap();
    assert!(html.contains("may not use the MCP server “beta”"), "{html}");
    assert!(html.contains("error=access_denied"), "{html}");
    assert!(
        html.contains(&format!("iss={}", urlencode(&format!("{o}/beta")))),
        "{html}"
    );

    // Web admits everyone who may sign in: the same sign-in, a consent page naming web, a
    // token for web that its upstream receives at its MCP path.
    let resp = browser
        .http
        .get(auth_url_at(&oc, &web, "web", &[]))
        .send()
        .await
        .unwrap();
    let consent = browser.follow(&web, &resp).await;
    assert!(consent.contains("to use the MCP server “web”"), "{consent}");
    let resp = browser
        .post_form(&web, "/.auth/consent", &consent, &[("decision", "approve")])
        .await;
    let back = url::Url::parse(&location(&resp)).unwrap();
    assert_eq!(query(&back, "iss"), Some(format!("{o}/web")));
    let code = query(&back, "code").unwrap();
    let tokens: Value = token_at(&web, "web", &oc.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    let web_token = tokens["access_token"].as_str().unwrap();
    let resp = initialize(&client(), &p.url("/web/mcp"), web_token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["path"], "/mcp");
    assert_eq!(seen["headers"]["x-api-key"], "web's own key");

    // The metrics count each server's requests.
    let metrics = p.state.metrics().render();
    for series in [
        r#"mcp_auth_proxy_server_requests_total{server="alpha",route="mcp",status="200"}"#,
        r#"mcp_auth_proxy_server_requests_total{server="beta",route="mcp",status="401"}"#,
        r#"mcp_auth_proxy_server_requests_total{server="web",route="token",status="200"}"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    // The person's apps page says which server each app may use.
    let apps = browser.text(&p.url("/.auth/apps")).await;
    for name in ["alpha", "web"] {
        let fact = format!("<dt>Server</dt><dd>{name}</dd>");
        assert!(apps.contains(&fact), "{fact} in {apps}");
    }
    // The probes and the console know every server.
    let console = browser.text(&p.url("/.auth/admin")).await;
    assert!(console.contains("MCP servers (3)"), "{console}");
    for url in ["/alpha/mcp", "/beta/mcp", "/web/mcp"] {
        assert!(console.contains(&format!("{o}{url}")), "{url} in {console}");
    }
    assert!(
        console.contains("<dt>Server</dt><dd>alpha</dd>"),
        "{console}"
    );
    let ready = get_json(p.url("/readyz")).await;
    for name in ["alpha", "beta", "web"] {
        assert!(
            ready["checks"][format!("backend:{name}")].is_string(),
            "{ready}"
        );
    }
    p.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_server_answers_at_the_root_and_a_narrowed_users_list_ends_its_grants() {
    let upstream = start_upstream().await;
    let (_dir, path) = config_file(&three_servers(&upstream.url("/mcp"), "default = \"alpha\""));
    // A fixed port, so the resources stay the same across the restart.
    let listen = format!("127.0.0.1:{}", unused_port());
    let args = [
        "--listen",
        &listen,
        "--password",
        TEST_PASSWORD,
        "--password-user",
        "alice",
        "--config",
        &path,
    ];
    let p = start_proxy(&args).await;
    let alpha = server(&p, "alpha");
    let o = alpha.origin.clone();
    let prm = get_json(p.url("/.well-known/oauth-protected-resource")).await;
    assert_eq!(prm["resource"], format!("{o}/alpha/mcp"));
    assert_eq!(prm["authorization_servers"], json!([format!("{o}/alpha")]));
    let asm = get_json(p.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(asm["issuer"], format!("{o}/alpha"));

    // The root's own endpoints issue for the default server.
    let oc = OAuthClient::public(&alpha).await;
    let back = Browser::new()
        .authorize(
            &alpha,
            &oc.auth_url(&alpha, &[("resource", "")]),
            TEST_PASSWORD,
            "approve",
        )
        .await;
    let code = query(&back, "code").unwrap();
    let tokens: Value = crate::flow::token(&alpha, &oc.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let sid = open(&p.url("/alpha/mcp"), access).await;
    assert_eq!(
        who_answers(&p.url("/alpha/mcp"), access, &sid).await,
        "alpha"
    );
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_string();
    let dir = p.stop().await;

    // Alpha no longer names alice: her grant for it ends at the next start.
    let narrowed = three_servers(&upstream.url("/mcp"), "default = \"alpha\"").replacen(
        "users = [\"password:alice\"]",
        "users = [\"password:carol\"]",
        1,
    );
    std::fs::write(&path, narrowed).unwrap();
    let p = start_proxy_with(&args, mcp_auth_proxy::clock::Clock::system(), dir).await;
    let resp = refresh(&server(&p, "alpha"), &oc.id, &refresh_token).await;
    assert_eq!(
        error_of(resp).await,
        (StatusCode::BAD_REQUEST, "invalid_grant".into())
    );
    p.stop().await;
}

#[tokio::test]
async fn a_configuration_file_and_a_backend_together_are_refused() {
    let (_dir, path) = config_file("[[server]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n");
    let (code, out) = crate::helpers::run_binary(
        &[
            "--config",
            &path,
            "--password",
            "x",
            "http://127.0.0.1:9/mcp",
        ],
        &[],
    )
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("give no backend on the command line"), "{out}");
    let (_dir, path) = config_file(
        "[[server]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\nhost = \"a.example.com:8443\"\n",
    );
    let (code, out) =
        crate::helpers::run_binary(&["--config", &path, "--password", "x"], &[]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("is not a host name like files.example.com"),
        "{out}"
    );
}

/// A client that reaches `host` at the proxy's address.
fn client_for(host: &str, p: &TestProxy) -> reqwest::Client {
    let addr: std::net::SocketAddr = p.base.trim_start_matches("http://").parse().unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(host, addr)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_routed_by_host_name_is_its_own_resource_on_its_own_host() {
    const HOST: &str = "files.example.test";
    let (_dir, path) = config_file(&format!(
        r#"
[[server]]
name = "files"
host = "{HOST}"
command = ["node", "{FIXTURE}"]
env = {{ WHO = "files" }}

[[server]]
name = "db"
command = ["node", "{FIXTURE}"]
env = {{ WHO = "db" }}
"#
    ));
    let p = start_proxy(&["--config", &path]).await;
    let main = p.target();
    let o = main.origin.clone();
    let port = o.rsplit(':').next().unwrap().to_string();
    let files_origin = format!("http://{HOST}:{port}");
    let files = client_for(HOST, &p);
    let at_files = |path: &str| format!("{files_origin}{path}");

    // Its resource is on its host; its issuer is on the main host, with sign-in.
    for prm in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let doc: Value = files
            .get(at_files(prm))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["resource"], format!("{files_origin}/mcp"), "{prm}");
        assert_eq!(doc["authorization_servers"], json!([format!("{o}/files")]));
    }
    let asm = get_json(p.url("/.well-known/oauth-authorization-server/files")).await;
    assert_eq!(asm["issuer"], format!("{o}/files"));
    assert_eq!(asm["token_endpoint"], format!("{o}/files/token"));
    // The shared endpoints are the main host's too (the server's host serves no /register).
    assert_eq!(asm["registration_endpoint"], format!("{o}/register"));
    assert_eq!(asm["revocation_endpoint"], format!("{o}/revoke"));
    let resp = files.post(at_files("/mcp")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{files_origin}/.well-known/oauth-protected-resource/mcp\""
        )),
        "{challenge}"
    );
    // Pages live on the main host; nothing else is served on the server's.
    let resp = files
        .get(at_files("/.auth/login?req=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(location(&resp), format!("{o}/.auth/login?req=x"));
    let resp = files.get(at_files("/db/mcp")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // A host of nobody's is still misdirected.
    let resp = client_for("other.example.test", &p)
        .post(format!("http://other.example.test:{port}/mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);

    // A token from files' issuer works on files' host, and not at db.
    let files_target = Target {
        resource: format!("{files_origin}/mcp"),
        ..main.clone()
    };
    let oc = OAuthClient::public(&main).await;
    let browser = Browser::new();
    let back = approve_at(&browser, &main, &oc, &files_target, "files", &[]).await;
    assert_eq!(query(&back, "iss"), Some(format!("{o}/files")));
    let code = query(&back, "code").unwrap();
    let tokens: Value = token_at(&main, "files", &oc.code_params(&code, &[]))
        .await
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let resp = initialize(&files, &at_files("/mcp"), access).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"env","arguments":{"name":"WHO"}}});
    let text = files
        .post(at_files("/mcp"))
        .bearer_auth(access)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"text\":\"files\""), "{text}");
    let resp = initialize(&client(), &p.url("/db/mcp"), access).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // And the main host's own /mcp is nobody's.
    let resp = client()
        .post(p.url("/mcp"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    p.stop().await;
}

/// A remembered approval is one server's: the same app asking for another server is asked
/// about that server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_for_one_server_is_no_approval_for_another() {
    let upstream = start_upstream().await;
    let (_dir, path) = config_file(&three_servers(&upstream.url("/mcp"), ""));
    let p = start_as_alice(&path, &[]).await;
    let (alpha, web) = (server(&p, "alpha"), server(&p, "web"));
    // Not a loopback redirect: its approval is remembered.
    let oc = OAuthClient::register(
        &alpha,
        json!({"client_name": "Remembered", "redirect_uris": ["https://app.example.com/cb"]}),
    )
    .await;
    let browser = Browser::new();
    let back = approve_at(&browser, &alpha, &oc, &alpha, "alpha", &[]).await;
    assert!(query(&back, "code").is_some());
    // Again at alpha: remembered, straight back to the app.
    let resp = browser
        .http
        .get(auth_url_at(&oc, &alpha, "alpha", &[]))
        .send()
        .await
        .unwrap();
    let consent = browser
        .http
        .get(p.url(&location(&resp)))
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), StatusCode::SEE_OTHER);
    assert!(location(&consent).starts_with("https://app.example.com/cb?code="));
    // At web: asked, about web.
    let resp = browser
        .http
        .get(auth_url_at(&oc, &web, "web", &[]))
        .send()
        .await
        .unwrap();
    let page = browser.follow(&web, &resp).await;
    assert!(page.contains("to use the MCP server “web”"), "{page}");
    p.stop().await;
}

/// Forward-auth with several servers: the server the front proxy names (by the path it
/// forwards, or the host) decides whose tokens pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_checks_the_token_against_the_server_the_front_proxy_names() {
    let (_dir, path) = config_file(&format!(
        r#"
[[server]]
name = "alpha"
command = ["node", "{FIXTURE}"]

[[server]]
name = "files"
host = "files.example.test"
command = ["node", "{FIXTURE}"]
"#
    ));
    let p = start_proxy(&[
        "--config",
        &path,
        "--forward-auth-path",
        "/authenticate",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    let o = p.target().origin;
    let port = o.rsplit(':').next().unwrap().to_string();
    let token_for = |resource: String| {
        let repo = p.repo().clone();
        async move { crate::helpers::mint(&repo, &resource, crate::helpers::Mint::default()).await }
    };
    let alpha = token_for(format!("{o}/alpha/mcp")).await;
    let files = token_for(format!("http://files.example.test:{port}/mcp")).await;
    let check = async |token: &str, uri: &str, host: Option<&str>| {
        let mut req = client()
            .get(p.url("/authenticate"))
            .bearer_auth(token)
            .header("x-forwarded-method", "POST")
            .header("x-forwarded-uri", uri);
        if let Some(h) = host {
            req = req.header("x-forwarded-host", h);
        }
        req.send().await.unwrap().status()
    };
    let files_host = format!("files.example.test:{port}");
    assert_eq!(check(&alpha, "/alpha/mcp", None).await, StatusCode::OK);
    assert_eq!(
        check(&alpha, "/mcp", Some(&files_host)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        check(&files, "/mcp", Some(&files_host)).await,
        StatusCode::OK
    );
    assert_eq!(
        check(&files, "/alpha/mcp", None).await,
        StatusCode::UNAUTHORIZED
    );
    p.stop().await;
}
