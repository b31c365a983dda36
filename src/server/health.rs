//! `/healthz` (the process answers) and `/readyz` (it can do its job: the store reads, the
//! MCP server is reachable or its child can start, the certificate is there when TLS is on).
//! Both are unauthenticated, answer whatever `Host` a probe sends, and are logged at debug.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;

pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

/// How long a readiness probe waits for the upstream's TCP connect.
pub const UPSTREAM_PROBE: Duration = Duration::from_secs(2);

/// Whether the certificate is in place (always, without ACME).
#[derive(Clone, Debug)]
pub struct CertReady(pub Arc<AtomicBool>);

impl CertReady {
    pub fn ready() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
    pub fn pending() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The two probe routes, for the main router and the plain listener of an https proxy.
pub fn routes<S: Clone + Send + Sync + 'static>(state: AppState) -> axum::Router<S> {
    axum::Router::new()
        .route(HEALTHZ, axum::routing::get(healthz))
        .route(READYZ, axum::routing::get(readyz))
        .with_state(state)
}

pub fn is_probe(path: &str) -> bool {
    path == HEALTHZ || path == READYZ
}

/// `GET /healthz`.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 when every check passes, 503 naming the ones that failed.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    // Each check: "ok", or why not, as a person would read it.
    let mut check = |name: &str, why_not: Option<String>| {
        ready &= why_not.is_none();
        checks.insert(
            name.to_string(),
            Value::from(why_not.unwrap_or_else(|| "ok".into())),
        );
    };
    check(
        "store",
        app.repo()
            .probe()
            .await
            .err()
            .map(|e| format!("the store cannot be read: {e}")),
    );
    for (name, backend) in app.backends() {
        let label = match name {
            Some(name) => format!("backend:{name}"),
            None => "backend".to_string(),
        };
        check(&label, backend.not_ready(UPSTREAM_PROBE).await);
    }
    if let Some(cert) = &app.cert {
        check(
            "certificate",
            (!cert.is_ready()).then(|| "no certificate yet (ACME order in progress)".into()),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if ready { "ready" } else { "not ready" }, "checks": checks });
    (status, Json(body)).into_response()
}
