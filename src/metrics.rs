//! Prometheus metrics, served on `--metrics-listen` (off by default) at `/metrics`.
//!
//! One registry per proxy (no process-wide state). Metric handles are cheap clones sharing
//! their value, so subsystems (the stdio children, ACME) get the ones they move.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// What was asked for ([`route_label`]), never the raw path.
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

/// The `route` label of a request path: one of a fixed few, so counting needs no allocation
/// and a client cannot grow the label set.
pub fn route_label(path: &str, mcp_path: &str) -> &'static str {
    match path {
        p if p == mcp_path => "mcp",
        "/authorize" => "authorize",
        "/token" => "token",
        "/register" => "register",
        "/revoke" => "revoke",
        "/healthz" | "/readyz" => "probe",
        "/.auth/login" | "/.auth/logout" => "login",
        "/.auth/consent" => "consent",
        "/sse" | "/messages" => "legacy_sse",
        p if p.starts_with("/register/") => "register",
        p if p.starts_with("/.well-known/") => "metadata",
        p if p.starts_with("/.auth/") => "sign_in",
        _ => "proxy",
    }
}

/// The `method` label: the standard methods, else `other`.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::HEAD => "HEAD",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignInLabels {
    pub provider: String,
    /// `success`, `failure` (wrong password), `locked_out`, `denied` (not on the allow-list
    /// or no verified email), `cancelled` (at the provider), `error`.
    pub outcome: String,
}

/// A request to one of the servers of `--config`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Its name: one of the configured few, so the label set stays bounded.
    pub server: String,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `http` or `stdio`.
    pub backend: &'static str,
}

/// The stdio children's metrics, shared with the crash tracker that sees them start and end.
#[derive(Clone, Debug, Default)]
pub struct ChildMetrics {
    pub started: Counter,
    /// Exits nobody asked for (the server crashed or quit).
    pub crashed: Counter,
    pub live: Gauge,
}

/// Counts `event` in a family labelled by event.
pub fn count(family: &Family<EventLabels, Counter>, event: &str) {
    family
        .get_or_create(&EventLabels {
            event: event.to_string(),
        })
        .inc();
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// The requests to the servers of `--config` (also counted in `requests`).
    pub server_requests: Family<ServerLabels, Counter>,
    pub upstream_seconds: Family<BackendLabels, Histogram>,
    /// `issued`, `refreshed`, `revoked`.
    pub tokens: Family<EventLabels, Counter>,
    pub sign_ins: Family<SignInLabels, Counter>,
    /// `ordered`, `issued`, `cached`, `error`.
    pub acme: Family<EventLabels, Counter>,
    /// Certificate files changed on disk: `reloaded`, or `refused` (the current one kept).
    pub certificate_files: Family<EventLabels, Counter>,
    /// `registered`, `rate_limited`.
    pub clients: Family<EventLabels, Counter>,
    pub sessions: Gauge,
    pub children: ChildMetrics,
    /// Requests the HTTP/1 fast lane served (also counted in `requests`).
    pub fast_lane: Counter,
    /// Connections handed to the worker thread that runs the stdio process their first
    /// request is for.
    pub connections_placed: Counter,
    /// Policy decisions on calls and reads: `allow`, `deny`, `step_up`.
    pub policy: Family<EventLabels, Counter>,
    /// Audit records: `written`, `dropped` (the queue was full), `failed` (the file could not
    /// be written), `refused` (a call refused because the log could not take its record).
    pub audit: Family<EventLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::for_replica(None)
    }

    /// The metrics of one process; with `replica`, every series carries `replica="<id>"`, so
    /// several processes behind one name can be told apart (and summed).
    pub fn for_replica(replica: Option<&str>) -> Self {
        let mut registry = match replica {
            Some(id) => Registry::with_prefix_and_labels(
                "mcp_auth_proxy",
                [(
                    std::borrow::Cow::Borrowed("replica"),
                    std::borrow::Cow::Owned(id.to_string()),
                )]
                .into_iter(),
            ),
            None => Registry::with_prefix("mcp_auth_proxy"),
        };
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let server_requests = Family::<ServerLabels, Counter>::default();
        registry.register(
            "server_requests",
            "HTTP requests to each server of --config, by route and status",
            server_requests.clone(),
        );
        let upstream_seconds = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to about 33 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 17))
        });
        registry.register(
            "upstream_response_seconds",
            "Time until the MCP server's answer began (headers, or the first byte of a stream)",
            upstream_seconds.clone(),
        );
        let tokens = Family::<EventLabels, Counter>::default();
        registry.register(
            "tokens",
            "Access tokens issued and refreshed, and tokens revoked",
            tokens.clone(),
        );
        let sign_ins = Family::<SignInLabels, Counter>::default();
        registry.register(
            "sign_ins",
            "Sign-in attempts by provider and outcome",
            sign_ins.clone(),
        );
        let acme = Family::<EventLabels, Counter>::default();
        registry.register("acme_events", "ACME certificate events", acme.clone());
        let certificate_files = Family::<EventLabels, Counter>::default();
        registry.register(
            "certificate_file_reloads",
            "Certificate files changed on disk: reloaded, or refused and the current one kept",
            certificate_files.clone(),
        );
        let clients = Family::<EventLabels, Counter>::default();
        registry.register(
            "clients",
            "Client registrations and rate-limited requests",
            clients.clone(),
        );
        let sessions = Gauge::default();
        registry.register("mcp_sessions", "Live MCP sessions", sessions.clone());
        let children = ChildMetrics::default();
        registry.register(
            "stdio_children_started",
            "stdio MCP server processes started",
            children.started.clone(),
        );
        registry.register(
            "stdio_children_crashed",
            "stdio MCP server processes that exited without being asked to",
            children.crashed.clone(),
        );
        registry.register(
            "stdio_children",
            "Live stdio MCP server processes",
            children.live.clone(),
        );
        let fast_lane = Counter::default();
        registry.register(
            "fast_lane_requests",
            "MCP requests served by the HTTP/1 fast lane (also counted in http_requests)",
            fast_lane.clone(),
        );
        let connections_placed = Counter::default();
        registry.register(
            "connections_placed",
            "Connections handed to the worker thread that runs the stdio process their first request is for (its session, or its user's 2026-07-28 child)",
            connections_placed.clone(),
        );
        let policy = Family::<EventLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy decisions on tool calls, prompt gets and resource reads",
            policy.clone(),
        );
        let audit = Family::<EventLabels, Counter>::default();
        registry.register(
            "audit_records",
            "Audit log records written, dropped, failed, and calls refused for want of one",
            audit.clone(),
        );
        Self {
            fast_lane,
            connections_placed,
            policy,
            audit,
            registry,
            requests,
            server_requests,
            upstream_seconds,
            tokens,
            sign_ins,
            acme,
            certificate_files,
            clients,
            sessions,
            children,
        }
    }

    /// Counts a token event.
    pub fn token(&self, event: &str) {
        count(&self.tokens, event);
    }

    /// Counts a sign-in attempt.
    pub fn sign_in(&self, provider: &str, outcome: &str) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                provider: provider.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a client event.
    pub fn client(&self, event: &str) {
        count(&self.clients, event);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Milliseconds since `started`, to the hundredth: what a log line needs, not 0.0496739999…
pub fn elapsed_ms(started: std::time::Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_moved() {
        let m = Metrics::new();
        let labelled = Metrics::for_replica(Some("r1"));
        labelled.sign_in("password", "success");
        assert!(
            labelled.render().contains(r#"replica="r1""#),
            "{}",
            labelled.render()
        );
        m.token("issued");
        m.sign_in("password", "failure");
        m.requests
            .get_or_create(&RequestLabels {
                route: route_label("/token", "/mcp"),
                method: method_label(&http::Method::POST),
                status: 200,
            })
            .inc();
        assert_eq!(route_label("/mcp", "/mcp"), "mcp");
        assert_eq!(route_label("/anything/else", "/mcp"), "proxy");
        assert_eq!(
            route_label("/.well-known/oauth-protected-resource/mcp", "/mcp"),
            "metadata"
        );
        let text = m.render();
        assert!(
            text.contains(r#"mcp_auth_proxy_tokens_total{event="issued"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mcp_auth_proxy_sign_ins_total{provider="password",outcome="failure"} 1"#
            )
        );
        assert!(text.contains(
            r#"mcp_auth_proxy_http_requests_total{route="token",method="POST",status="200"} 1"#
        ));
        assert!(text.contains("# EOF"));
    }
}
