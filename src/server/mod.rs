//! The HTTP surface: shared state, the router, and the pre-auth guards.
//!
//! [`router`] builds the whole application from an [`AppState`]; binding and serving live in
//! [`crate::run`], so tests drive the same router in-process.

pub mod guard;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::backend::http::{ClientInfo, HttpBackend};
use crate::config::Site;
use crate::error::jsonrpc_error;
use crate::gate::{TokenCache, bearer_token, check_token};
use crate::oauth::metadata::{RESOURCE_METADATA_PATH, protected_resource};
use crate::store::Repo;

/// Everything a request handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub site: Arc<Site>,
    pub repo: Repo,
    pub tokens: Arc<TokenCache>,
    pub http_backend: Option<Arc<HttpBackend>>,
}

/// The application: our own endpoints, then every other path proxied behind the gate.
pub fn router(state: AppState) -> Router {
    let metadata = Router::new()
        .route(RESOURCE_METADATA_PATH, get(protected_resource))
        .route(
            &format!("{RESOURCE_METADATA_PATH}{}", state.site.mcp_path),
            get(protected_resource),
        );

    let proxied = Router::new().fallback(proxy);

    Router::new()
        .merge(metadata)
        .merge(proxied)
        .layer(from_fn_with_state(state.clone(), guard::require_origin))
        .layer(from_fn_with_state(state.clone(), guard::require_host))
        .with_state(state)
}

/// Every path that is not ours: authenticate, then hand to the backend.
async fn proxy(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let token = match bearer_token(req.headers(), req.uri().query()) {
        Ok(t) => t,
        Err(e) => return e.into_response(&app.site),
    };
    let caller = match check_token(&app.repo, &app.tokens, &app.site, token).await {
        Ok(c) => c,
        Err(e) => return e.into_response(&app.site),
    };
    let Some(backend) = &app.http_backend else {
        return jsonrpc_error(
            StatusCode::NOT_FOUND,
            "no MCP server is configured behind this proxy",
        );
    };
    if backend.streaming_only()
        && req.method() == Method::GET
        && req.uri().path() == app.site.mcp_path
    {
        let mut resp = jsonrpc_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "this server offers no GET stream",
        );
        resp.headers_mut().insert(
            header::ALLOW,
            header::HeaderValue::from_static("POST, DELETE"),
        );
        return resp.into_response();
    }
    let client = ClientInfo {
        peer: peer.ip(),
        peer_trusted: guard::is_trusted(&app.site, peer.ip()),
    };
    backend
        .forward(&app.repo, &app.site, &caller, client, req)
        .await
}
