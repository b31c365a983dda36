//! Shared fixtures: an in-process proxy, a scriptable upstream MCP server, token minting,
//! and a way to run the real binary.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use clap::Parser;
use mcp_auth_proxy::cli::Cli;
use mcp_auth_proxy::clock::Clock;
use mcp_auth_proxy::config::Config;
use mcp_auth_proxy::server::AppState;
use mcp_auth_proxy::store::{Repo, TokenHash, TokenKind, TokenRecord};
use mcp_auth_proxy::tokens;
use mcp_auth_proxy::{EnvSecrets, prepare, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The password of every test proxy that is not given another.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// A proxy running in this process on 127.0.0.1:0.
pub struct TestProxy {
    pub base: String,
    /// The HTTPS listener's address, when TLS is on.
    pub tls_addr: Option<std::net::SocketAddr>,
    /// The `--metrics-listen` address, when on.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

/// Where a proxy under test is reached and what it calls itself.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://127.0.0.1:PORT`: where to connect.
    pub base: String,
    /// The external origin (issuer).
    pub origin: String,
    /// The protected resource.
    pub resource: String,
}

impl Target {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn target(&self) -> Target {
        Target {
            base: self.base.clone(),
            origin: self.state.site().server.origin.as_str().to_string(),
            resource: self.state.site().server.resource.clone(),
        }
    }

    pub fn repo(&self) -> &Repo {
        self.state.repo()
    }

    /// Stops the proxy, waits until the store is closed, and hands back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let dir = self.dir.take().unwrap();
        drop(self);
        dir
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Opens the embedded store in `dir` again after the process of this test closed it.
///
/// The store's locks are `flock`s, which every copy of the file descriptor holds: a process
/// that another test forks at that moment has a copy until it `exec`s (the descriptors are
/// close-on-exec), so a reopen right after the close can find the lock still held for a
/// moment on a loaded machine. Tried again until it opens, for at most ten seconds.
pub fn reopen_sled(dir: &std::path::Path) -> mcp_auth_proxy::store::sled::SledStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match mcp_auth_proxy::store::sled::SledStore::open(dir) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("the store is not free yet, trying again: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the store did not open again: {e}"),
        }
    }
}

/// Starts a proxy with the given extra arguments (flags, then the backend).
pub async fn start_proxy(args: &[&str]) -> TestProxy {
    start_proxy_with(args, Clock::system(), tempfile::tempdir().unwrap()).await
}

/// Starts a proxy on the given clock and data directory.
pub async fn start_proxy_with(args: &[&str], clock: Clock, dir: tempfile::TempDir) -> TestProxy {
    start_proxy_with_secrets(args, EnvSecrets::default(), clock, dir).await
}

/// Starts a proxy on the given clock and data directory, with secrets as from the
/// environment (`ENCRYPTION_KEY` for a PostgreSQL store).
pub async fn start_proxy_with_secrets(
    args: &[&str],
    secrets: EnvSecrets,
    clock: Clock,
    dir: tempfile::TempDir,
) -> TestProxy {
    let mut argv = vec![
        "mcp-auth-proxy".to_string(),
        "--data-path".into(),
        dir.path().display().to_string(),
    ];
    if !args.contains(&"--listen") {
        argv.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    // `--no-password` (ours, not the proxy's): start without the test password.
    let no_password = args.contains(&"--no-password");
    if !no_password && !args.iter().any(|a| a.starts_with("--password")) {
        argv.extend(["--password".to_string(), TEST_PASSWORD.to_string()]);
    }
    argv.extend(
        args.iter()
            .filter(|a| **a != "--no-password")
            .map(|s| s.to_string()),
    );
    let config = Config::from_cli(Cli::try_parse_from(argv).unwrap()).unwrap();
    let prepared = prepare(config, secrets, clock).await.unwrap();
    let base = format!("http://{}", prepared.local_addr);
    let tls_addr = prepared.tls_local_addr;
    let metrics_addr = prepared.metrics_local_addr;
    let state = prepared.state.clone();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        serve(prepared, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestProxy {
        base,
        tls_addr,
        metrics_addr,
        state,
        stop: Some(tx),
        task: Some(task),
        dir: Some(dir),
    }
}

/// Options for a minted token.
pub struct Mint<'a> {
    pub subject: &'a str,
    pub kind: TokenKind,
    pub scopes: &'a [&'a str],
    pub resource: Option<&'a str>,
    pub ttl: i64,
    pub grant_id: &'a str,
    pub identity: Option<mcp_auth_proxy::store::Identity>,
    /// The DPoP key thumbprint the token is bound to.
    pub jkt: Option<&'a str>,
}

impl Default for Mint<'_> {
    fn default() -> Self {
        Self {
            subject: "password:alice",
            kind: TokenKind::Access,
            scopes: &["mcp"],
            resource: None,
            ttl: 3600,
            grant_id: "grant-1",
            identity: None,
            jkt: None,
        }
    }
}

/// Stores a token the way the authorization server will, and returns it.
pub async fn mint(repo: &Repo, resource: &str, m: Mint<'_>) -> String {
    let token = tokens::generate(tokens::ACCESS_PREFIX);
    let now = repo.clock().now() as i64;
    let rec = TokenRecord {
        kind: m.kind,
        grant_id: m.grant_id.into(),
        client_id: "client-1".into(),
        subject: m.subject.into(),
        scopes: m.scopes.iter().map(|s| s.to_string()).collect(),
        resource: m.resource.unwrap_or(resource).into(),
        issued_at: now as u64,
        expires_at: (now + m.ttl).max(0) as u64,
        rotation: None,
        identity: m.identity,
        jkt: m.jkt.map(str::to_string),
    };
    repo.put_token(&TokenHash::of(&token), &rec).await.unwrap();
    token
}

/// An access token for `subject` on this proxy.
pub async fn token_for(p: &TestProxy, subject: &str) -> String {
    mint(
        p.repo(),
        &p.state.site().server.resource,
        Mint {
            subject,
            ..Mint::default()
        },
    )
    .await
}

/// `GET url` and its JSON body (any status).
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    json_of(client().get(url)).await
}

/// Sends `req` and reads its answer's JSON body (any status).
pub async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// An HTTP client that never uses a proxy and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A small upstream MCP server:
/// - any method on any path echoes method, path, query, headers and body as JSON; a body
///   mentioning `"initialize"` gets a fresh `Mcp-Session-Id`;
/// - `GET /mcp` with `Accept: text/event-stream` streams three events 300 ms apart;
/// - `GET /big-events` streams [`big_events`], one event a write;
/// - `/status/{code}` answers that status (with a challenge for 401);
/// - `/mcp` on the `/starlette` prefix 307-redirects to the slash form;
/// - `/elsewhere` 307-redirects to another origin.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// An upstream of a test's own, served by `task` at `addr` (stopped when dropped).
    pub fn from_parts(addr: SocketAddr, task: JoinHandle<()>) -> Self {
        Upstream { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or("<bin>"))))
        .collect();
    let text = String::from_utf8_lossy(&body).to_string();
    let mut resp = axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body": if body.len() < 4096 { Value::String(text.clone()) } else { Value::Null },
    }))
    .into_response();
    if text.contains("\"initialize\"") {
        let id = tokens::generate_id();
        resp.headers_mut()
            .insert("mcp-session-id", id.parse().unwrap());
    }
    resp
}

async fn sse(headers: HeaderMap, req: Request) -> Response {
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !wants_sse {
        return echo(req).await;
    }
    let events = futures_util::stream::unfold(0u32, |i| async move {
        if i == 3 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let chunk = format!("id: {i}\nevent: message\ndata: {{\"n\":{i}}}\n\n");
        Some((Ok::<_, std::io::Error>(chunk), i + 1))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

/// What the echo upstream ([`start_upstream`]) received for a `ping` sent with `req` (a
/// POST to the MCP endpoint, with its token and any headers set).
pub async fn echoed_ping(req: reqwest::RequestBuilder) -> Value {
    json_of(req.json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))).await
}

/// Three SSE events of 10 bytes, 3 000 and 200 000 (larger than any read buffer).
pub fn big_events() -> Vec<String> {
    [10usize, 3_000, 200_000]
        .iter()
        .enumerate()
        .map(|(i, &size)| format!("id: {i}\ndata: {}\n\n", "x".repeat(size)))
        .collect()
}

async fn big_events_stream() -> Response {
    let events = futures_util::stream::iter(big_events().into_iter().map(Ok::<_, std::io::Error>));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

/// An SSE stream that never ends (an event every 200 ms).
async fn forever() -> Response {
    let events = futures_util::stream::unfold(0u64, |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some((
            Ok::<_, std::io::Error>(format!("id: {i}\ndata: {{}}\n\n")),
            i + 1,
        ))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

async fn status(axum::extract::Path(code): axum::extract::Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap();
    let mut resp = (code, "upstream says no").into_response();
    if code == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer resource_metadata=\"http://upstream-as/.well-known/x\""
                .parse()
                .unwrap(),
        );
    }
    resp
}

/// Reads the request's body (as uvicorn, under Starlette, does with the rest of a request it
/// has answered, so the connection stays usable) and redirects.
async fn redirect_to(loc: &'static str, body: axum::body::Bytes) -> Response {
    drop(body);
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, loc)
        .body(Body::empty())
        .unwrap()
}

pub async fn start_upstream() -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, upstream_app()).await;
    });
    Upstream { addr, task }
}

/// The same upstream over TLS (HTTP/1.1), with the certificate and key in `dir` (cert.pem,
/// key.pem: `tls::leaf`).
pub async fn start_tls_upstream(dir: &std::path::Path) -> Upstream {
    // Loaded as the proxy loads its own (`--tls-cert-file`).
    let pair = mcp_auth_proxy::server::tls::load_pair(&dir.join("cert.pem"), &dir.join("key.pem"))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(rustls::sign::SingleCertAndKey::from(
            pair,
        )));
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = upstream_app();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    tower::ServiceExt::oneshot(app.clone(), req.map(Body::new))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

fn upstream_app() -> Router {
    Router::new()
        .route("/mcp", get(sse).post(echo).delete(echo))
        .route("/status/{code}", any(status))
        .route("/forever", get(forever))
        .route("/big-events", get(big_events_stream))
        .route(
            "/starlette/mcp",
            any(|body| redirect_to("/starlette/mcp/", body)),
        )
        .route("/starlette/mcp/", any(echo))
        .route(
            "/elsewhere",
            any(|body| redirect_to("http://example.invalid/mcp", body)),
        )
        .fallback(echo)
}

/// The status of an MCP post with `access` (the gate's verdict, or the upstream's answer).
pub async fn gate_status(t: &Target, access: &str) -> StatusCode {
    client()
        .post(t.url("/mcp"))
        .bearer_auth(access)
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
}

/// Sends every request at once; their statuses, in order.
pub async fn all_at_once(requests: Vec<reqwest::RequestBuilder>) -> Vec<u16> {
    let sent: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(async move { r.send().await.unwrap().status().as_u16() }))
        .collect();
    let mut statuses = Vec::new();
    for s in sent {
        statuses.push(s.await.unwrap());
    }
    statuses
}

/// A throwaway CA and a leaf (CA:FALSE) it signed for 127.0.0.1 and localhost: the PEM of
/// the CA, the leaf and the leaf's key.
pub struct LoopbackCert {
    pub ca: String,
    pub leaf: String,
    pub key: String,
}

pub fn loopback_cert() -> LoopbackCert {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    LoopbackCert {
        ca: ca.pem(),
        leaf: leaf.pem(),
        key: key.serialize_pem(),
    }
}

/// A port nothing listens on (bound, then released).
pub async fn dead_port() -> u16 {
    unused_port()
}

/// A loopback port free now, below the kernel's ephemeral range: a port chosen for a server
/// that starts later (a restart on the same origin, pebble's validation port, a database)
/// must not be taken meanwhile as the source port of one of the many outgoing connections
/// the other tests make, which the kernel draws from that range.
pub fn unused_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(16_000).max(1024), low);
    // Never the same port twice in this process: a port handed out is free until its test
    // binds it, and free again while its server restarts on it; another test must not be
    // given it meanwhile.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..1000 {
        let port = rand::random_range(from..to);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// A data directory and a fixed loopback address for runs of the real binary, so a restart
/// comes back on the same origin and store.
pub struct BinarySite {
    pub dir: tempfile::TempDir,
    pub origin: String,
    listen: String,
}

impl BinarySite {
    pub async fn new() -> Self {
        let port = dead_port().await;
        Self {
            dir: tempfile::tempdir().unwrap(),
            origin: format!("http://127.0.0.1:{port}"),
            listen: format!("127.0.0.1:{port}"),
        }
    }

    /// A site whose public URL names `localhost` (browsers allow passkeys there, never on an
    /// IP address).
    pub async fn on_localhost() -> Self {
        let port = dead_port().await;
        Self {
            dir: tempfile::tempdir().unwrap(),
            origin: format!("http://localhost:{port}"),
            listen: format!("127.0.0.1:{port}"),
        }
    }

    /// The protected resource of this site.
    pub fn resource(&self) -> String {
        format!("{}/mcp", self.origin)
    }

    /// `--listen`, `--external-url` and `--data-path` for this site, then `rest`.
    pub fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let data = self.dir.path().to_str().unwrap();
        let mut args = vec![
            "--listen",
            &self.listen,
            "--external-url",
            &self.origin,
            "--data-path",
            data,
        ];
        args.extend_from_slice(rest);
        args
    }

    /// Starts the binary on this site.
    pub async fn start(&self, rest: &[&str]) -> Binary {
        Binary::start(&self.args(rest), &[]).await
    }
}

/// The real binary, started with `args`; killed when dropped.
pub struct Binary {
    pub child: tokio::process::Child,
    pub base: String,
    /// The binary's log lines before `listening on`.
    pub before_listening: Vec<String>,
    /// The binary's log lines after `listening on`.
    pub stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Binary {
    /// Starts the binary and waits for its `listening on` line.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Binary {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth-proxy"));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("PASSWORD", TEST_PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (before, base) = tokio::time::timeout(Duration::from_secs(20), async {
            let mut before = Vec::new();
            while let Some(line) = rx.recv().await {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let url: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    return (before, url);
                }
                before.push(line);
            }
            panic!(
                "the binary exited before listening; it said:\n{}",
                before.join("\n")
            );
        })
        .await
        .expect("the binary did not start listening within 20 s");
        Binary {
            child,
            base,
            before_listening: before,
            stderr: rx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The target, given the external origin the binary was started with.
    pub fn target(&self, origin: &str) -> Target {
        Target {
            base: self.base.clone(),
            origin: origin.to_string(),
            resource: format!("{origin}/mcp"),
        }
    }

    /// The log lines printed so far.
    pub fn log_so_far(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(l) = self.stderr.try_recv() {
            out.push(l);
        }
        out
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit code.
    pub async fn terminate(mut self, limit: Duration) -> Option<i32> {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the binary did not exit in time")
            .unwrap()
            .code()
    }

    /// SIGKILL, no chance to flush anything.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Runs the binary to completion (it is expected to exit by itself) and returns its exit
/// code and stderr.
pub async fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = binary_output(args, envs).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs the binary to its end: exit status, standard output and error.
pub async fn binary_output(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth-proxy"));
    cmd.args(args)
        .env("PASSWORD", TEST_PASSWORD)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the binary did not exit within 20 s")
        .unwrap()
}

/// Waits (polling, at most 10 s) until the fixture has written `mark`; fails with `what`.
pub async fn wait_for_file(mark: &std::path::Path, what: &str) {
    wait_until(|| mark.exists(), what).await;
}

/// Waits (polling, at most 10 s) until `done` holds; fails naming `what` it waited for.
pub async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILL to process `pid` (a child of a child, which the test does not own).
pub fn kill9_pid(pid: &str) {
    let killed = std::process::Command::new("kill")
        .args(["-9", pid])
        .status();
    assert!(killed.unwrap().success(), "kill -9 {pid}");
}
