//! Client ID metadata documents against a real HTTPS document server on loopback (a test CA
//! made with rcgen): refused by the address rule unless the host is allowed by the operator,
//! then the whole flow with the URL as client id, caching, and every refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode as AxStatus, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::flow::{Browser, OAuthClient, hidden, location, query, refresh, token};
use crate::helpers::{TEST_PASSWORD, TestProxy, client, start_proxy};
use crate::tls::{ca, leaf};

/// An HTTPS server for `localhost` publishing client metadata documents.
pub struct DocServer {
    pub origin: String,
    fetches: Arc<AtomicUsize>,
    /// What `/changing.json` serves now (with `max-age=60`); `Null` serves 404.
    changing: Arc<std::sync::Mutex<Value>>,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DocServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DocServer {
    pub fn id(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    async fn start() -> DocServer {
        Self::start_with(|_| Vec::new()).await
    }

    /// Also serves `extra(origin)`: paths and their documents.
    pub async fn start_with(extra: impl Fn(&str) -> Vec<(&'static str, Value)>) -> DocServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        leaf(&ca, dir.path(), "documents");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let fetches = Arc::new(AtomicUsize::new(0));

        let doc = |origin: &str, path: &str, uris: Value| {
            json!({
                "client_id": format!("{origin}{path}"),
                "client_name": "Document App",
                "client_uri": origin,
                "redirect_uris": uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
            })
        };
        let counted = fetches.clone();
        let changing = Arc::new(std::sync::Mutex::new(doc(
            &origin,
            "/changing.json",
            json!([crate::flow::REDIRECT]),
        )));
        let now_served = changing.clone();
        let good = doc(&origin, "/client.json", json!([crate::flow::REDIRECT]));
        let web = doc(&origin, "/web.json", json!(["https://app.example/cb"]));
        let other = doc("https://elsewhere.example", "/client.json", json!([]));
        let mut app = Router::new();
        for (path, doc) in extra(&origin) {
            let body = doc.to_string();
            app = app.route(path, get(move || async move { body }));
        }
        let app = app
            .route(
                "/client.json",
                get(move |h: HeaderMap| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    assert!(h[header::ACCEPT].to_str().unwrap().contains("json"));
                    let body = good.to_string();
                    async move { ([(header::CACHE_CONTROL, "max-age=3600")], body) }
                }),
            )
            .route(
                "/web.json",
                get(move || {
                    let body = web.to_string();
                    async move { body }
                }),
            )
            .route(
                "/other.json",
                get(move || {
                    let body = other.to_string();
                    async move { body }
                }),
            )
            .route(
                "/moved.json",
                get(|| async {
                    (AxStatus::FOUND, [(header::LOCATION, "/client.json")]).into_response()
                }),
            )
            .route(
                "/big.json",
                get(|| async { format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000)) }),
            )
            .route("/gone.json", get(|| async { AxStatus::NOT_FOUND }))
            .route("/list.json", get(|| async { "[\"client_id\"]" }))
            // Two client names: which one a reader keeps depends on the reader.
            .route("/twice.json", {
                let body = format!(
                    r#"{{"client_id": "{origin}/twice.json", "client_name": "Document App", "client_name": "Other App", "redirect_uris": ["{}"]}}"#,
                    crate::flow::REDIRECT
                );
                get(move || async move { body })
            })
            .route(
                "/changing.json",
                get(move || {
                    let body = now_served.lock().unwrap().clone();
                    async move {
                        if body.is_null() {
                            return AxStatus::NOT_FOUND.into_response();
                        }
                        ([(header::CACHE_CONTROL, "max-age=60")], body.to_string()).into_response()
                    }
                }),
            )
            // Never answers.
            .route("/hang.json", get(std::future::pending::<String>))
            // Answers at once, then sends its body a byte every 100 ms, for ever.
            .route(
                "/trickle.json",
                get(|| async {
                    let bytes = futures_util::stream::unfold((), |()| async {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
                    });
                    axum::body::Body::from_stream(bytes)
                }),
            );

        let cert = std::fs::read(dir.path().join("cert.pem")).unwrap();
        let key = std::fs::read(dir.path().join("key.pem")).unwrap();
        let certs = rustls_pemfile_certs(&cert);
        let key = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(&key).unwrap()
        };
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        DocServer {
            origin,
            fetches,
            changing,
            ca_file,
            _dir: dir,
            task,
        }
    }

    async fn proxy(&self, allow: bool) -> TestProxy {
        self.proxy_with(allow, &[]).await
    }

    /// A proxy trusting this server's CA, allowing its host when `allow`, with `rest`.
    pub async fn proxy_with(&self, allow: bool, rest: &[&str]) -> TestProxy {
        let ca = self.ca_file.display().to_string();
        let mut args = vec!["--cimd-ca-file", ca.as_str()];
        if allow {
            args.extend(["--cimd-allow-hosts", "localhost"]);
        }
        args.extend(rest);
        start_proxy(&args).await
    }

    /// A proxy allowing this server's host, on `clock`.
    async fn proxy_on(&self, clock: &mcp_auth_proxy::clock::Clock) -> TestProxy {
        let ca = self.ca_file.display().to_string();
        let args = [
            "--cimd-ca-file",
            ca.as_str(),
            "--cimd-allow-hosts",
            "localhost",
        ];
        crate::helpers::start_proxy_with(&args, clock.clone(), tempfile::tempdir().unwrap()).await
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(Result::unwrap)
        .collect()
}

/// A client whose id is the document's URL (nothing registered).
fn document_client(id: &str) -> OAuthClient {
    let verifier = mcp_auth_proxy::tokens::generate("v").replace('_', "-");
    OAuthClient {
        id: id.to_string(),
        secret: None,
        redirect_uri: crate::flow::REDIRECT.to_string(),
        registration: Value::Null,
        challenge: mcp_auth_proxy::oauth::pkce::s256(&verifier),
        verifier,
    }
}

/// The error page `/authorize` shows for a client id.
async fn refused(p: &TestProxy, id: &str) -> String {
    let t = p.target();
    let resp = client()
        .get(document_client(id).auth_url(&t, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{id}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn loopback_documents_are_refused_unless_the_operator_allows_the_host() {
    let docs = DocServer::start().await;
    let p = docs.proxy(false).await;
    let page = refused(&p, &docs.id("/client.json")).await;
    // What went wrong, not why: the cause would tell a stranger which names resolve to
    // which internal addresses.
    assert!(page.contains("could not be reached"), "{page}");
    assert!(!page.contains("public address"), "{page}");
    let port = docs.origin.rsplit(':').next().unwrap();
    let page = refused(&p, &format!("https://127.0.0.1:{port}/client.json")).await;
    assert!(page.contains("not a public address"), "{page}");
    assert_eq!(
        docs.fetches.load(Ordering::SeqCst),
        0,
        "no connection was made"
    );

    let m: Value =
        crate::helpers::get_json(p.target().url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(m["client_id_metadata_document_supported"], true);
    assert_eq!(m["token_endpoint_auth_methods_supported"][0], "none");
}

#[tokio::test]
async fn a_document_is_a_client_through_the_whole_flow() {
    let docs = DocServer::start().await;
    let p = docs.proxy(true).await;
    let t = p.target();
    let c = document_client(&docs.id("/client.json"));
    let browser = Browser::new();

    // authorize → login → the consent page names the document's host and warns that every
    // redirect goes to this computer.
    let resp = browser.http.get(c.auth_url(&t, &[])).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let login = browser.follow(&t, &resp).await;
    assert!(login.contains("Document App"), "{login}");
    let resp = browser
        .post_form(&t, "/.auth/login", &login, &[("password", TEST_PASSWORD)])
        .await;
    let consent = browser.follow(&t, &resp).await;
    let host = docs.origin.trim_start_matches("https://");
    assert!(consent.contains("Described by"), "{consent}");
    assert!(
        consent.contains(&format!("<code>{host}</code>")),
        "{consent}"
    );
    assert!(
        consent.contains("only returns to programs on this computer"),
        "{consent}"
    );
    assert!(
        !consent.contains("sent to a program running on this computer"),
        "one loopback warning, the specific one"
    );
    assert!(hidden(&consent, "csrf").is_some());
    let resp = browser
        .post_form(&t, "/.auth/consent", &consent, &[("decision", "approve")])
        .await;
    let back = url::Url::parse(&location(&resp)).unwrap();
    let code = query(&back, "code").expect("a code");

    // The token endpoint knows the client by its URL; it is public (no secret).
    let with_secret = token(&t, &c.code_params(&code, &[("client_secret", "x")])).await;
    assert_eq!(with_secret.status(), StatusCode::UNAUTHORIZED);
    let resp = token(&t, &c.code_params(&code, &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let tokens: Value = resp.json().await.unwrap();
    let resp = refresh(&t, &c.id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // One fetch served all of that: the document said max-age=3600.
    assert_eq!(docs.fetches.load(Ordering::SeqCst), 1);

    // A registered redirect URI only: another one is refused before anything is sent.
    let resp = client()
        .get(c.auth_url(&t, &[("redirect_uri", "https://evil.example/cb")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A document with an https redirect gets no loopback warning.
    let web = OAuthClient {
        redirect_uri: "https://app.example/cb".into(),
        ..document_client(&docs.id("/web.json"))
    };
    let back = browser
        .authorize(
            &t,
            &web.auth_url(&t, &[("prompt", "consent")]),
            TEST_PASSWORD,
            "approve",
        )
        .await;
    assert!(query(&back, "code").is_some());
}

#[tokio::test]
async fn documents_that_do_not_describe_themselves_properly_are_refused() {
    let docs = DocServer::start().await;
    let p = docs.proxy(true).await;
    for (path, why) in [
        ("/other.json", "client_id is not its own URL"),
        ("/moved.json", "redirects are not followed"),
        ("/big.json", "larger than"),
        ("/gone.json", "404"),
        ("/twice.json", "names a member twice"),
        ("/list.json", "not a JSON object: invalid type: sequence"),
    ] {
        let page = refused(&p, &docs.id(path)).await;
        assert!(page.contains(why), "{path}: {page}");
    }
    // Not document ids at all: unknown clients.
    for id in [
        format!("http://localhost{}", "/client.json"),
        format!("{}/", docs.origin),
    ] {
        let page = refused(&p, &id).await;
        assert!(page.contains("not registered"), "{id}: {page}");
    }

    // With --no-cimd a document id is just an unknown client, and nothing is advertised.
    let off = start_proxy(&["--no-cimd"]).await;
    let page = refused(&off, &docs.id("/client.json")).await;
    assert!(page.contains("not registered"), "{page}");
    let m: Value =
        crate::helpers::get_json(off.target().url("/.well-known/oauth-authorization-server")).await;
    assert!(m.get("client_id_metadata_document_supported").is_none());
}

/// The status `/authorize` answers for a document client asking to return to `redirect`
/// (303 to the login page when the request is accepted, 400 when refused).
async fn authorize_status(p: &TestProxy, id: &str, redirect: &str) -> StatusCode {
    let t = p.target();
    let c = OAuthClient {
        redirect_uri: redirect.to_string(),
        ..document_client(id)
    };
    client()
        .get(c.auth_url(&t, &[]))
        .send()
        .await
        .unwrap()
        .status()
}

/// A document host that never answers, or sends its body a byte at a time, costs one
/// bounded wait (5 s) and a refusal that says so; the proxy serves others meanwhile.
#[tokio::test]
async fn slow_document_hosts_are_given_up_on() {
    let docs = DocServer::start().await;
    let p = docs.proxy(true).await;
    let (hang_id, trickle_id) = (docs.id("/hang.json"), docs.id("/trickle.json"));
    let started = std::time::Instant::now();
    let (hang, trickle, meanwhile) =
        tokio::join!(refused(&p, &hang_id), refused(&p, &trickle_id), async {
            // While both fetches wait, the proxy answers.
            let m =
                crate::helpers::get_json(p.target().url("/.well-known/oauth-authorization-server"))
                    .await;
            (m["issuer"].is_string(), started.elapsed())
        });
    for page in [hang, trickle] {
        assert!(page.contains("did not answer in time"), "{page}");
    }
    let (answered, after) = meanwhile;
    assert!(answered);
    assert!(after < std::time::Duration::from_secs(4), "{after:?}");
    // The bound: the 5 s fetch limit, with room for a loaded machine.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A document that changes is believed as it is now once its cache lifetime (bounded by
/// `max-age`) has passed: redirect URIs it drops are refused, one that names another
/// client or disappears stops the client, and nothing older than the lifetime is used.
#[tokio::test]
async fn a_changed_document_is_used_as_it_is_now() {
    let docs = DocServer::start().await;
    let clock = mcp_auth_proxy::clock::Clock::manual(1_900_000_000);
    let p = docs.proxy_on(&clock).await;
    let id = docs.id("/changing.json");
    let moved = "http://127.0.0.1/moved-callback";
    assert_eq!(
        authorize_status(&p, &id, crate::flow::REDIRECT).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        authorize_status(&p, &id, moved).await,
        StatusCode::BAD_REQUEST
    );

    // The document now lists only another redirect URI: within max-age the cached copy
    // stands; after it, only the new one.
    let mut now = docs.changing.lock().unwrap().clone();
    now["redirect_uris"] = json!([moved]);
    *docs.changing.lock().unwrap() = now.clone();
    assert_eq!(
        authorize_status(&p, &id, crate::flow::REDIRECT).await,
        StatusCode::SEE_OTHER
    );
    clock.advance(61);
    assert_eq!(
        authorize_status(&p, &id, crate::flow::REDIRECT).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        authorize_status(&p, &id, moved).await,
        StatusCode::SEE_OTHER
    );

    // It now claims to be another client: refused.
    now["client_id"] = json!(docs.id("/client.json"));
    *docs.changing.lock().unwrap() = now;
    clock.advance(61);
    let page = refused_for(&p, &id, moved).await;
    assert!(page.contains("client_id is not its own URL"), "{page}");

    // Gone: refused, with the cause.
    *docs.changing.lock().unwrap() = Value::Null;
    clock.advance(61);
    let page = refused_for(&p, &id, moved).await;
    assert!(page.contains("404"), "{page}");
}

/// The error page `/authorize` shows for a document client returning to `redirect`.
async fn refused_for(p: &TestProxy, id: &str, redirect: &str) -> String {
    let t = p.target();
    let c = OAuthClient {
        redirect_uri: redirect.to_string(),
        ..document_client(id)
    };
    let resp = client().get(c.auth_url(&t, &[])).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{id}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn anonymous_authorize_requests_cannot_make_the_proxy_flood_a_host() {
    let docs = DocServer::start().await;
    let p = docs.proxy_with(true, &["--rate-limit", "0"]).await;
    let t = p.target();
    // Every request names another document (the failure cache does not help): the fetches
    // stop at the per-host limit, and the rest are refused without a connection.
    let mut refused_for_load = 0;
    for i in 0..40 {
        let id = docs.id(&format!("/client.json?v={i}"));
        let resp = client()
            .get(document_client(&id).auth_url(&t, &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        if resp.text().await.unwrap().contains("too many documents") {
            refused_for_load += 1;
        }
    }
    let limit = mcp_auth_proxy::oauth::cimd::PER_HOST_PER_MINUTE;
    assert_eq!(docs.fetches.load(Ordering::SeqCst), limit);
    assert_eq!(refused_for_load, 40 - limit);
}
