//! The replicas' compose example: `docs/docker/nginx-replicas.conf` run by Debian's nginx, as
//! written but for the addresses (the compose service names become two local servers that
//! say who they are, the certificate a throwaway one for 127.0.0.1). A stdio session's
//! requests must reach the replica its id names; a client's other requests stay on one
//! replica, chosen by its token, and clients spread over both.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn nginx() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A server that answers every request with its name and the forwarding headers it got.
async fn replica(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move |headers: HeaderMap| async move {
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        axum::Json(json!({
            "replica": name,
            "forwarded_for": header("x-forwarded-for"),
            "forwarded_proto": header("x-forwarded-proto"),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, task)
}

pub struct Nginx {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// SIGTERM to the master, which stops its workers first (SIGKILL would leave them
    /// running), and waits for it.
    pub async fn stop(mut self) {
        terminate(&self.child);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

impl Nginx {
    /// Runs Debian's nginx (`binary`) with `site` inside its `http` block, writing its
    /// files to `dir`; returns once `probe` answers through it.
    pub async fn start(
        binary: &str,
        site: &str,
        dir: tempfile::TempDir,
        client: &reqwest::Client,
        probe: &str,
    ) -> Nginx {
        let d = dir.path().display();
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir(dir.path().join(temp)).unwrap();
        }
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\nhttp {{\naccess_log off;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{site}\n}}\n"
        );
        let conf_file = dir.path().join("nginx.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&conf_file)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut front = Nginx { child, _dir: dir };

        // nginx is up once it answers.
        let mut started = false;
        for _ in 0..100 {
            if client.get(probe).send().await.is_ok() {
                started = true;
                break;
            }
            if let Ok(Some(status)) = front.child.try_wait() {
                let log = std::fs::read_to_string(front._dir.path().join("error.log"));
                panic!("nginx exited ({status}): {log:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started, "nginx did not answer");
        front
    }
}

impl Drop for Nginx {
    /// A test that failed midway still stops nginx and its workers.
    fn drop(&mut self) {
        terminate(&self.child);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_configuration_keeps_a_stdio_session_on_its_replica() {
    let Some(nginx) = nginx() else {
        assert!(std::env::var("CI").is_err(), "CI must install nginx");
        eprintln!("nginx is not installed (apt-get install nginx): skipped");
        return;
    };
    let (a, _a) = replica("proxy-a").await;
    let (b, _b) = replica("proxy-b").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::helpers::loopback_cert();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, format!("{}{}", cert.leaf, cert.ca)).unwrap();
    std::fs::write(&key_file, &cert.key).unwrap();
    let port = crate::helpers::unused_port();

    let documented =
        std::fs::read_to_string(Path::new(ROOT).join("docs/docker/nginx-replicas.conf")).unwrap();
    let mut site = documented.clone();
    for (from, to) in [
        ("proxy-a:8080", format!("127.0.0.1:{a}")),
        ("proxy-b:8080", format!("127.0.0.1:{b}")),
        ("listen 443 ssl", format!("listen 127.0.0.1:{port} ssl")),
        (
            "/etc/nginx/certs/fullchain.pem",
            cert_file.display().to_string(),
        ),
        (
            "/etc/nginx/certs/privkey.pem",
            key_file.display().to_string(),
        ),
    ] {
        assert!(site.contains(from), "the example no longer has {from:?}");
        site = site.replace(from, &to);
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.ca.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/mcp");
    let ask = async |session: Option<&str>, token: &str| -> Value {
        let mut r = client.post(&url).body("{}");
        if !token.is_empty() {
            r = r.bearer_auth(token);
        }
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        r.send().await.unwrap().json().await.unwrap()
    };
    let front = Nginx::start(nginx, &site, dir, &client, &url).await;

    for n in 0..10 {
        let token = format!("token-{n}");
        let said = ask(Some("proxy-b.0123456789abcdef"), &token).await;
        assert_eq!(said["replica"], "proxy-b", "a session of proxy-b: {said}");
        let said = ask(Some("proxy-a.fedcba9876543210"), &token).await;
        assert_eq!(said["replica"], "proxy-a", "a session of proxy-a: {said}");
    }
    // Without a session (or with one no replica's id names) a client stays on one replica,
    // chosen by its token, and clients spread over both.
    let mut reached = BTreeMap::<String, usize>::new();
    for n in 0..16 {
        let token = format!("client-{n}");
        let mut own = None;
        for session in [None, Some("unknown-replica.0123"), Some("no-prefix")] {
            let said = ask(session, &token).await;
            assert_eq!(said["forwarded_proto"], "https");
            assert_eq!(said["forwarded_for"], "127.0.0.1");
            let replica = said["replica"].as_str().unwrap().to_string();
            assert_eq!(
                own.get_or_insert_with(|| replica.clone()),
                &replica,
                "{token} moved"
            );
        }
        *reached.entry(own.unwrap()).or_default() += 1;
    }
    assert_eq!(
        reached.keys().collect::<Vec<_>>(),
        ["proxy-a", "proxy-b"],
        "clients spread over both: {reached:?}"
    );
    // Requests without a token (sign-in pages, registration, the token endpoint) go round
    // robin: nginx's hash falls back to it for an empty key.
    let mut anonymous = BTreeMap::<String, usize>::new();
    for _ in 0..8 {
        let said = ask(None, "").await;
        *anonymous
            .entry(said["replica"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        anonymous.values().copied().collect::<Vec<_>>(),
        [4, 4],
        "{anonymous:?}"
    );
    front.stop().await;
}

#[test]
fn the_replicas_compose_example_names_the_replicas_nginx_routes_to() {
    let read = |p: &str| std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap();
    let compose = read("docs/docker/docker-compose.replicas.yml");
    let nginx = read("docs/docker/nginx-replicas.conf");
    for id in ["proxy-a", "proxy-b"] {
        assert!(compose.contains(&format!("REPLICA_ID: {id}")), "{id}");
        assert!(compose.contains(&format!("  {id}:\n")), "service {id}");
        assert!(
            nginx.contains(&format!("    {id} replica_")),
            "map entry {id}"
        );
    }
    // The replicas trust nginx's fixed address for X-Forwarded-For, and share one key.
    assert!(compose.contains("TRUSTED_PROXIES: 172.28.0.10"));
    assert!(compose.contains("ipv4_address: 172.28.0.10"));
    assert!(compose.contains("ENCRYPTION_KEY: ${ENCRYPTION_KEY:?}"));
    assert!(compose.contains("NO_AUTO_TLS: \"true\""));
    assert!(compose.contains("build:"));
}
