//! The HTTP surface: shared state, the router, and the pre-auth guards.
//!
//! [`router`] builds the whole application from an [`AppState`]; binding and serving live in
//! [`crate::run`], so tests drive the same router in-process.

pub mod acme;
pub mod affinity;
pub mod cors;
pub mod guard;
pub mod health;
pub mod ratelimit;
pub mod roaming;
pub mod timer_anchor;
pub mod tls;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::backend::http::{ClientInfo, Upstream};
use crate::backend::{Backend, Handoff};
use crate::config::RESOURCE_METADATA_PATH;
use crate::config::Site;
use crate::error::jsonrpc_error;
use crate::gate::{Caller, GateRefusal, Guarded, TokenCache};
use crate::login;
use crate::oauth::consent::{consent_get, consent_post};
use crate::oauth::metadata::{AS_METADATA_PATH, authorization_server, protected_resource};
use crate::oauth::{authorize, introspect, register, revoke, token};
use crate::store::Repo;
use crate::web::flow::{CONSENT_PATH, LOGIN_PATH, LOGOUT_PATH};

/// Largest body accepted by the authorization server's endpoints and forms.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Everything a request handler may need. Each MCP server behind the proxy is served with
/// an `App` of its own: the same shared parts, its own site, backend and relay.
#[derive(Clone)]
pub struct App {
    /// The MCP server this state serves: its resource, issuer and metadata. The main state's
    /// is the command line's one server, or the default server of `--config` (or none).
    pub site: Arc<Site>,
    /// Sign-in's share, handed to its handlers (`FromRef`).
    pub signin: login::SignIn,
    /// The authorization server's share, handed to its handlers (`FromRef`).
    pub oauth: crate::oauth::AuthServer,
    /// The MCP server behind the proxy (none: forward-auth only).
    pub backend: Option<Arc<dyn Backend>>,
    /// The same server when it is an HTTP one: the fast lane serves it directly.
    pub http_backend: Option<Arc<crate::backend::http::HttpBackend>>,
    /// How identity reaches upstreams (headers, mapping), also for forward-auth answers.
    pub upstream: crate::config::UpstreamOptions,
    /// `--forward-auth-path`, when on.
    pub forward_auth_path: Option<String>,
    /// `--proxy-forward-authorization`: signs what the upstream receives.
    pub assertion: Option<Arc<crate::assertion::Signer>>,
    /// Whether the certificate is in place, when TLS is on.
    pub cert: Option<health::CertReady>,
    /// `--rate-limit` (none when 0).
    pub rate_limiter: Option<Arc<ratelimit::RateLimiter>>,
    /// `--max-body`: requests to the MCP endpoint and proxied paths.
    pub max_body: usize,
    /// `--body-read-timeout`: every request's body, on every path.
    pub body_read_timeout: std::time::Duration,
    /// The policy and the audit log between the router and the backend, when configured.
    pub relay: Option<Arc<crate::relay::Relay>>,
    /// The servers of `--config`, each served with its own state (none otherwise).
    pub servers: Vec<AppState>,
}

/// The shared [`App`], as handlers receive it: one pointer to clone per request.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

/// What every part shares is kept once, in the narrow state of the layer lowest down that
/// needs it, and read from there.
impl App {
    pub fn site(&self) -> &Site {
        &self.site
    }
    pub fn repo(&self) -> &Repo {
        &self.signin.repo
    }
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.signin.metrics
    }
    pub fn tokens(&self) -> &TokenCache {
        &self.oauth.tokens
    }
    /// This state and each server's of `--config`.
    pub fn every_server(&self) -> impl Iterator<Item = &App> {
        std::iter::once(self).chain(self.servers.iter().map(|s| &*s.0))
    }
    /// The state of `server` among the servers of `--config`, and its place there.
    fn state_of(&self, server: &crate::config::ServerFace) -> Option<(usize, &App)> {
        self.servers
            .iter()
            .map(|s| &*s.0)
            .enumerate()
            .find(|(_, s)| s.site.server.name == server.name)
    }
    /// Every MCP server behind the proxy, with its name in `--config`.
    pub fn backends(&self) -> impl Iterator<Item = (Option<&str>, &Arc<dyn Backend>)> {
        self.every_server()
            .filter_map(|a| Some((a.site.server.name.as_deref(), a.backend.as_ref()?)))
    }
}

impl Guarded for AppState {
    fn gate(&self) -> crate::gate::GateParts<'_> {
        crate::gate::GateParts {
            site: self.site(),
            repo: self.repo(),
            tokens: self.tokens(),
        }
    }
}

impl axum::extract::FromRef<AppState> for login::SignIn {
    fn from_ref(app: &AppState) -> Self {
        app.signin.clone()
    }
}

impl axum::extract::FromRef<AppState> for crate::oauth::Served {
    fn from_ref(app: &AppState) -> Self {
        crate::oauth::Served(app.site.clone())
    }
}

impl axum::extract::FromRef<AppState> for crate::oauth::AuthServer {
    fn from_ref(app: &AppState) -> Self {
        app.oauth.clone()
    }
}

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The application: our own endpoints, then every other path proxied behind the gate.
pub fn router(state: AppState) -> Router {
    use login::passkey::ceremony;
    let mcp_path = state.site().server.mcp_path.clone();
    let mut guarded = Router::new();
    if let Some(path) = &state.forward_auth_path {
        guarded = guarded.route(path, axum::routing::any(forward_auth));
    }
    if state.assertion.is_some() {
        guarded = guarded.route(crate::assertion::JWKS_PATH, get(jwks));
    }
    let mut guarded = guarded
        .route("/", axum::routing::any(root))
        .route(RESOURCE_METADATA_PATH, get(protected_resource))
        .route(AS_METADATA_PATH, get(authorization_server));
    if state.site().server.name.is_none() {
        // The one server of the command line: its documents at its path too. (A server of
        // `--config` has its own routes, below.)
        guarded = guarded
            .route(
                &format!("{RESOURCE_METADATA_PATH}{mcp_path}"),
                get(protected_resource),
            )
            .route(
                &format!("{AS_METADATA_PATH}{mcp_path}"),
                get(authorization_server),
            );
    }
    let guarded = guarded
        .fallback(proxy)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            state.max_body,
        ));

    let limited = || from_fn_with_state(state.clone(), ratelimit::limit);
    // The OAuth endpoints browsers' MCP clients call by fetch: CORS, rate limits.
    let api = Router::new()
        .route("/token", post(token::token))
        .route("/register", post(register::register))
        .route(
            "/register/{client_id}",
            get(register::read).delete(register::delete),
        )
        .route("/revoke", post(revoke::revoke))
        .route("/introspect", post(introspect::introspect))
        .route(introspect::SIGBIT_PATH, post(introspect::introspect))
        .route_layer(limited());
    // Starting a sign-in (here, each stores a pending request; at a provider, each costs a
    // round trip there): rate-limited too.
    let provider_starts = Router::new()
        .route("/authorize", get(authorize::authorize))
        .route("/.auth/google/login", get(login::upstream::start))
        .route("/.auth/github/login", get(login::upstream::start))
        .route("/.auth/oidc/login", get(login::upstream::start))
        // Each passkey ceremony stores its challenge, and each sign-in answer is a guess.
        .route(
            ceremony::REGISTER_OPTIONS_PATH,
            post(ceremony::register_options),
        )
        .route(ceremony::REGISTER_PATH, post(ceremony::register))
        .route(
            ceremony::SIGN_IN_OPTIONS_PATH,
            post(ceremony::sign_in_options),
        )
        .route(ceremony::SIGN_IN_PATH, post(ceremony::sign_in))
        .route_layer(limited());
    let pages = Router::new()
        // Each password guess is a POST here: rate-limited like the API, on top of the lockout.
        .route(
            LOGIN_PATH,
            get(login::login_get).post(axum::handler::Handler::layer(login::login_post, limited())),
        )
        .route(LOGOUT_PATH, get(login::logout_get).post(login::logout_post))
        .route(CONSENT_PATH, get(consent_get).post(consent_post))
        .route(
            crate::web::flow::APPS_PATH,
            get(crate::oauth::apps::apps_get),
        )
        .route(
            crate::oauth::apps::REVOKE_PATH,
            get(crate::oauth::apps::revoke_get).post(crate::oauth::apps::revoke_post),
        )
        .route(
            crate::oauth::apps::SIGN_OUT_EVERYWHERE_PATH,
            post(crate::oauth::apps::sign_out_everywhere),
        )
        .route(
            login::passkey::PASSKEYS_PATH,
            get(login::passkey::manage::passkeys_get),
        )
        .route(
            login::passkey::manage::REMOVE_PATH,
            get(login::passkey::manage::remove_get).post(login::passkey::manage::remove_post),
        )
        .route(
            crate::oauth::console::ADMIN_PATH,
            get(crate::oauth::console::admin_get).post(crate::oauth::console::admin_post),
        )
        .route(
            "/.auth/static/style.css",
            get(crate::web::pages::stylesheet),
        )
        .route("/.auth/google/callback", get(login::upstream::callback))
        .route("/.auth/github/callback", get(login::upstream::callback))
        .route("/.auth/oidc/callback", get(login::upstream::callback))
        .route("/.auth/{*rest}", axum::routing::any(login::not_found));
    let authorization_server = Router::new()
        .merge(api)
        .merge(provider_starts)
        .merge(pages)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES));

    let mut main = Router::new()
        .merge(authorization_server)
        .merge(guarded)
        .merge(health::routes(state.clone()));
    // By the server's place in `state.servers`: the routes of its own host, if it has one.
    let mut hosted = Vec::new();
    for server in &state.servers {
        // Every server's issuer lives on the main host, where people sign in.
        main = main.merge(issuer_routes(server.clone(), limited()));
        if server.site().server.host.is_some() {
            hosted.push(Some(hosted_routes(server.clone(), &state)));
        } else {
            main = main.merge(resource_routes(server.clone()));
            hosted.push(None);
        }
    }
    let main = main.with_state(state.clone());
    if hosted.iter().all(Option::is_none) {
        // No server has a host of its own: one router, without a dispatch in front of it.
        return main.layer(from_fn_with_state(state, front));
    }
    // A request for a server routed by host name goes to that host's routes; `front` found
    // which (the Host rule lives there) and said so in `HostedAt`.
    let dispatch = tower::service_fn(move |req: Request| {
        let routes = match req.extensions().get::<HostedAt>() {
            Some(HostedAt(i)) => hosted
                .get(*i)
                .and_then(Option::as_ref)
                .unwrap_or(&main)
                .clone(),
            None => main.clone(),
        };
        tower::ServiceExt::oneshot(routes, req)
    });
    Router::new()
        .fallback_service(dispatch)
        .layer(from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// Which server routed by host name (by its place in [`App::servers`]) a request is for.
#[derive(Clone, Copy)]
struct HostedAt(usize);

/// A server's MCP endpoint and its protected-resource metadata, with its own state.
fn resource_routes(server: AppState) -> Router<AppState> {
    let site = server.site().clone();
    Router::new()
        .route(&site.server.mcp_path, axum::routing::any(proxy))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            server.max_body,
        ))
        .route(
            &format!("{RESOURCE_METADATA_PATH}{}", site.server.mcp_path),
            get(protected_resource),
        )
        .with_state(server)
}

/// The routes of a server's own host: its resource (`/mcp` and its metadata, also at the
/// root well-known path), the probes, and a redirect to the main host for sign-in and the
/// authorization server; anything else is not served there.
fn hosted_routes(server: AppState, main: &AppState) -> Router {
    let origin = main.site().home.clone();
    let to_main = move |req: Request| {
        std::future::ready(tls::same_path_at(
            &origin,
            &req,
            StatusCode::TEMPORARY_REDIRECT,
        ))
    };
    let not_here = || async {
        jsonrpc_error(
            StatusCode::NOT_FOUND,
            "this host serves one MCP server, at /mcp",
        )
    };
    let people = Router::new()
        .route("/", axum::routing::any(to_main.clone()))
        .route("/authorize", axum::routing::any(to_main.clone()))
        .route("/.auth/{*rest}", axum::routing::any(to_main));
    let mut own =
        resource_routes(server.clone()).route(RESOURCE_METADATA_PATH, get(protected_resource));
    if let Some(path) = &main.forward_auth_path {
        // A front proxy that forwards this host (`X-Forwarded-Host`) asks here.
        own = own.route(path, axum::routing::any(forward_auth));
    }
    let own = own.with_state(server);
    people
        .merge(own)
        .merge(health::routes(main.clone()).with_state(main.clone()))
        .fallback(not_here)
}

/// A server's issuer, on the main host: its metadata and its authorization and token
/// endpoints (`/<name>/authorize`, `/<name>/token`). Sign-in, consent, registration and
/// revocation are the main site's, shared by every server.
fn issuer_routes<L>(server: AppState, limited: L) -> Router<AppState>
where
    L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service:
        tower::Service<Request, Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as tower::Service<Request>>::Future: Send + 'static,
{
    let name = server.site().server.name.clone().unwrap_or_default();
    Router::new()
        .route(&format!("/{name}/authorize"), get(authorize::authorize))
        .route(&format!("/{name}/token"), post(token::token))
        .route_layer(limited)
        .route(
            &format!("{AS_METADATA_PATH}/{name}"),
            get(authorization_server),
        )
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(server)
}

/// The one middleware around everything: the pre-auth guards ([`guard::refusal`]), CORS
/// ([`cors`]), then the request counted by route and status and logged in one line (method,
/// route, path without its query, status, time, client) — never a query string, header or
/// body, so no token, code, cookie or password. Probes are logged at debug.
async fn front(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = crate::metrics::method_label(req.method());
    // A server of `--config` is asked on its own host, or at `/<name>/…`: its routes are
    // labelled as the one server's are, and its name is logged.
    let hosted = hosted_server(&app, peer.ip(), &req);
    let (server, route) = match (hosted, app.site().server_at(req.uri().path())) {
        (Some((_, s)), _) => (
            s.name.as_deref(),
            crate::metrics::route_label(req.uri().path(), "/mcp"),
        ),
        (None, Some((s, local))) => (
            s.name.as_deref(),
            crate::metrics::route_label(local, "/mcp"),
        ),
        (None, None) => (
            None,
            crate::metrics::route_label(req.uri().path(), &app.site().server.mcp_path),
        ),
    };
    let mut req = req;
    if let Some((at, _)) = hosted {
        req.extensions_mut().insert(at);
    }
    let server = server.unwrap_or_default().to_string();
    let logged = tracing::enabled!(tracing::Level::INFO) && route != "probe";
    let path = logged.then(|| req.uri().path().to_string());
    let client = logged.then(|| {
        crate::client_addr::client_ip(&app.site().trusted_proxies, peer.ip(), req.headers())
    });
    let req = req.map(|body| crate::request_body::with_deadline(body, app.body_read_timeout));
    let resp = if let Some(refused) = guard::refusal(app.site(), peer.ip(), &req) {
        refused
    } else if !cors::eligible(req.uri().path()) || route == "authorize" {
        next.run(req).await
    } else if let Some(answer) = cors::preflight(app.site(), req.method(), req.headers()) {
        answer
    } else {
        let origin = cors::granted(app.site(), req.headers());
        let mut resp = next.run(req).await;
        cors::decorate(&mut resp, origin);
        resp
    };
    let status = resp.status().as_u16();
    app.metrics()
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    if !server.is_empty() {
        app.metrics()
            .server_requests
            .get_or_create(&crate::metrics::ServerLabels {
                server: server.clone(),
                route,
                status,
            })
            .inc();
    }
    let ms = crate::metrics::elapsed_ms(started);
    match (path, client) {
        (Some(path), Some(client)) => crate::client_addr::with_text(client, |client| {
            if server.is_empty() {
                tracing::info!(method, route, path, status, ms, client, "request");
            } else {
                tracing::info!(method, route, server, path, status, ms, client, "request");
            }
        }),
        _ => tracing::debug!(method, route, status, ms, "request"),
    }
    resp
}

/// The server routed by the host the request names, if any: its place in [`App::servers`],
/// and the server.
fn hosted_server<'a>(
    app: &'a App,
    peer: std::net::IpAddr,
    req: &Request,
) -> Option<(HostedAt, &'a crate::config::ServerFace)> {
    if app.servers.is_empty() {
        return None;
    }
    let trusted = crate::client_addr::is_trusted(&app.site().trusted_proxies, peer);
    let authority = crate::request_head::requested_authority(req.headers(), req.uri(), trusted)?;
    let face = app.site().hosted_at(&authority)?;
    let (at, _) = app.state_of(face)?;
    Some((HostedAt(at), face))
}

/// `GET /.well-known/jwks.json`: the keys of our identity assertions.
async fn jwks(State(app): State<AppState>) -> Response {
    let body = app
        .assertion
        .as_ref()
        .map(|s| s.jwks())
        .unwrap_or_else(|| serde_json::json!({ "keys": [] }));
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=60"),
    );
    resp
}

/// The forward-auth endpoint: `200` with the identity headers for a valid access token, the
/// gate's `401` (with the MCP `WWW-Authenticate` challenge) or `403` otherwise. The front
/// proxy passes the original request's `Authorization`; `X-Forwarded-Host` is believed only
/// from `--trusted-proxies` (by the Host guard), `X-Forwarded-Uri` is only logged. The
/// request's own query is the front proxy's configuration, not the client's: not looked at.
/// A DPoP proof is checked against the request the front proxy names in
/// `X-Forwarded-Method` and `X-Forwarded-Uri`, believed only from `--trusted-proxies` (one
/// of each); without them a DPoP-bound token is refused.
async fn forward_auth(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Response, GateRefusal> {
    let trusted = crate::client_addr::is_trusted(&app.site().trusted_proxies, peer.ip());
    let one = |name: &str| crate::single_header::text(&headers, name);
    let (method, uri) = (one("x-forwarded-method"), one("x-forwarded-uri"));
    let target = match (trusted, method, uri) {
        (true, Some(method), Some(uri)) => Some(crate::gate::Target {
            method,
            path: uri.split(['?', '#']).next().unwrap_or_default(),
        }),
        _ => None,
    };
    // With `--config`, the server the front proxy names (by the path, or by the host it
    // forwards) decides whose tokens pass; believed, like the rest, only from a trusted proxy.
    let server = target
        .and_then(|t| named_server(&app, t.path, one("x-forwarded-host")))
        .unwrap_or(&app);
    let gate = crate::gate::GateParts {
        site: server.site(),
        repo: app.repo(),
        tokens: app.tokens(),
    };
    let caller = crate::gate::authenticate(gate, &headers, None, target).await?;
    if trusted {
        tracing::debug!(uri = uri.unwrap_or_default(), "forward-auth: allowed");
    }
    let mut resp = StatusCode::OK.into_response();
    if let Some(id) = caller.identity() {
        crate::backend::identity::insert(&server.upstream, resp.headers_mut(), id);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// The state of the server of `--config` at `path` on the main host, or routed by `host`.
fn named_server<'a>(app: &'a App, path: &str, host: Option<&str>) -> Option<&'a App> {
    let face = match host.and_then(|h| app.site().hosted_at(h)) {
        Some(hosted) => hosted,
        None => app.site().server_at(path)?.0,
    };
    app.state_of(face).map(|(_, state)| state)
}

/// `/`: a page for a person whose browser opened the address (a navigation asking for HTML,
/// with no credentials); for everything else, the same as any proxied path (MCP clients get
/// their JSON 401, an upstream that serves `/` still does).
async fn root(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Result<Caller, GateRefusal>,
    req: Request,
) -> Response {
    let h = req.headers();
    let wants_page = req.method() == Method::GET
        && !h.contains_key(header::AUTHORIZATION)
        && h.get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    if wants_page {
        return login::home(&app.signin, h).await;
    }
    proxy(State(app), ConnectInfo(peer), caller, req).await
}

/// Every path that is not ours: authenticate, then hand to the backend.
async fn proxy(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Result<Caller, GateRefusal>,
    req: Request,
) -> Response {
    let started = std::time::Instant::now();
    let Some(backend) = &app.backend else {
        if !app.servers.is_empty() {
            // `--config`: only the servers' own paths are proxied.
            let paths: Vec<&str> = app
                .servers
                .iter()
                .map(|s| s.site.server.mcp_path.as_str())
                .collect();
            let why = format!(
                "no MCP server at this path; this proxy serves {}",
                paths.join(", ")
            );
            return jsonrpc_error(StatusCode::NOT_FOUND, &why);
        }
        if let Err(refused) = caller {
            return refused.into_response();
        }
        return jsonrpc_error(
            StatusCode::NOT_FOUND,
            "no MCP server is configured behind this proxy",
        );
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let client = ClientInfo {
        peer: peer.ip(),
        peer_trusted: crate::client_addr::is_trusted(&app.site().trusted_proxies, peer.ip()),
    };
    let provider_token = match caller.identity() {
        Some(id) if app.upstream.pass_access_token && backend.sends_provider_token() => {
            crate::login::provider_tokens::current(&app.signin, id).await
        }
        _ => None,
    };
    let handoff = Handoff {
        caller: &caller,
        site: app.site(),
        repo: app.repo(),
        client,
        upstream: Upstream {
            assertion: app.assertion.as_deref(),
            provider_token,
        },
    };
    let resp = match &app.relay {
        Some(relay) => {
            let (site, repo) = (app.site(), app.repo());
            relay
                .serve(&caller, site, repo, req, |req| backend.serve(handoff, req))
                .await
        }
        None => backend.serve(handoff, req).await,
    };
    timed(&app, backend.kind(), started, resp)
}

/// The `--metrics-listen` application: `/metrics` and the probes.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .merge(health::routes(state.clone()))
        .with_state(state)
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    let live: usize = app.backends().map(|(_, b)| b.live_sessions()).sum();
    if app.backends().next().is_some() {
        app.metrics().sessions.set(live as i64);
    }
    let mut resp = app.metrics().render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

/// Records how long the MCP server took to start answering.
fn timed(
    app: &App,
    backend: &'static str,
    started: std::time::Instant,
    resp: Response,
) -> Response {
    app.metrics()
        .upstream_seconds
        .get_or_create(&crate::metrics::BackendLabels { backend })
        .observe(started.elapsed().as_secs_f64());
    resp
}
