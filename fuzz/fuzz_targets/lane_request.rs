//! A request head as the HTTP/1 fast lane reads it (`Lane::parse`), on a lane set up as the
//! proxy sets it up for an HTTP upstream, or for a stdio one (the bridge; the first byte's
//! second bit chooses): never a panic, and a head the lane proxies itself is a POST to the
//! MCP path, or before an HTTP upstream a GET there without a body (the client's SSE
//! stream), complete, naming our host in exactly one `Host`, with exactly one
//! `Authorization`.
#![no_main]

mod common;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use axum::extract::Request;
use axum::response::Response;
use mcp_auth_proxy::backend::http::HttpBackend;
use mcp_auth_proxy::backend::{Backend, Handoff};
use mcp_auth_proxy::backend::lane::{Lane, Shared};
use mcp_auth_proxy::clock::Clock;
use mcp_auth_proxy::gate::TokenCache;
use mcp_auth_proxy::metrics::Metrics;
use mcp_auth_proxy::store::sled::SledStore;
use mcp_auth_proxy::store::{Keys, Repo};

/// A stdio backend's stand-in: parsing never reaches it.
struct Bridge;

#[async_trait::async_trait]
impl Backend for Bridge {
    fn kind(&self) -> &'static str {
        "stdio"
    }

    async fn not_ready(&self, _limit: std::time::Duration) -> Option<String> {
        None
    }

    async fn serve(&self, _handoff: Handoff<'_>, _req: Request) -> Response {
        Response::default()
    }
}

/// The lanes, for an HTTP upstream and for the bridge, and what they share.
fn lanes() -> &'static (Lane, Lane) {
    static LANES: OnceLock<(Lane, Lane)> = OnceLock::new();
    LANES.get_or_init(|| {
        let config = common::config();
        let site = config.site(443).expect("site");
        let dir = std::env::temp_dir().join(format!("lane-fuzz-{}", std::process::id()));
        let store = SledStore::open(&dir).expect("a store");
        let repo = Repo::new(Arc::new(store), Keys::ephemeral(), Clock::system());
        let mcp_auth_proxy::config::Backend::Http(base) = &config.backend else {
            panic!("an HTTP backend");
        };
        let backend =
            HttpBackend::new(base.clone(), config.upstream.clone(), &site, 1).expect("backend");
        let shared = || Shared {
            site: site.clone(),
            repo: repo.clone(),
            tokens: Arc::new(TokenCache::new(16)),
            metrics: Arc::new(Metrics::new()),
            max_body: 1 << 20,
            body_read_timeout: std::time::Duration::from_secs(30),
        };
        let http = Lane::new(Arc::new(backend), shared(), false, None, 1)
            .expect("a lane for a plain HTTP upstream");
        (http, Lane::bridging(Arc::new(Bridge), shared(), None))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&from, head)) = data.split_first() else {
        return;
    };
    // No --trusted-proxies: both addresses are plain clients, X-Forwarded-Host not believed.
    let peer: IpAddr = if from & 1 == 0 {
        [127, 0, 0, 1].into()
    } else {
        [10, 0, 0, 1].into()
    };
    let (http, bridge) = lanes();
    let bridging = from & 2 != 0;
    let lane = if bridging { bridge } else { http };
    if lane.parse_kind(head, peer) != "proxy" {
        return;
    }
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    assert!(
        matches!(req.parse(head), Ok(httparse::Status::Complete(_))),
        "a proxied head is complete"
    );
    assert!(matches!(req.method, Some("POST" | "GET")), "{:?}", req.method);
    assert!(
        !bridging || req.method == Some("POST"),
        "the bridge's GET streams are the router's"
    );
    assert_eq!(req.path, Some("/mcp"));
    let named = |n: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .collect::<Vec<_>>()
    };
    if req.method == Some("GET") {
        assert!(
            named("content-length").is_empty() && named("transfer-encoding").is_empty(),
            "a proxied GET has no body"
        );
    }
    let hosts = named("host");
    assert_eq!(hosts.len(), 1, "one Host");
    let host = std::str::from_utf8(hosts[0].value).expect("a visible Host");
    let authority: http::uri::Authority = host.parse().expect("a Host that parses");
    assert_eq!(
        authority.host().trim_end_matches('.').to_ascii_lowercase(),
        common::HOST,
        "{host}"
    );
    assert!(authority.port_u16().is_none_or(|p| p == 443), "{host}");
    assert_eq!(named("authorization").len(), 1, "one Authorization");
});
