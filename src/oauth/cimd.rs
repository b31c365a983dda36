//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, MCP
//! 2025-11-25): a `client_id` that is an https URL with a path names a JSON document, fetched
//! from there, that describes the client. Claude and VS Code use them instead of registering.
//!
//! Fetching a URL a stranger chose is a server-side request forgery risk, so the fetch is
//! fenced: https only; the host's addresses resolved first and every non-public one (private,
//! loopback, link-local, CGNAT, documentation, multicast, mapped or embedded forms of those)
//! dropped, and the connection made only to what is left; no redirects; 8 KiB at most; 5 s.
//! `--cimd-allow-hosts` names hosts exempt from the address rule (tests, private
//! deployments); `--cimd-ca-file` adds a private CA.
//!
//! A document is cached in memory as its `Cache-Control` says, within [`MIN_TTL`] and
//! [`MAX_TTL`] ([`DEFAULT_TTL`] without one); a failure is remembered for [`FAILURE_TTL`] so
//! the authorization endpoint cannot be used to hammer a host. At most [`CAPACITY`] entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use url::{Host, Url};

use super::clients::NONE;
use crate::clock::{Clock, UnixTime};
use crate::config::CimdOptions;
use crate::error::OAuthError;
use crate::store::ClientRecord;

/// Largest document read.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024;
/// Bounds on how long a fetched document is used.
pub const MIN_TTL: u64 = 60;
pub const MAX_TTL: u64 = 24 * 3600;
/// Without caching headers.
pub const DEFAULT_TTL: u64 = 600;
/// How long a failed fetch is remembered.
pub const FAILURE_TTL: u64 = 30;
/// Documents and failures kept at once.
pub const CAPACITY: usize = 1024;
/// Fetches under way at once. A stranger chooses the URL with an anonymous `GET
/// /authorize`, and varying its path or query defeats the cache: without these bounds the
/// proxy would send whatever flood it is sent.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// Fetches per document host per minute.
pub const PER_HOST_PER_MINUTE: usize = 20;
/// Fetches per minute in all.
pub const TOTAL_PER_MINUTE: usize = 120;

/// Why a document cannot be used; shown to the person signing in and to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the client metadata document {url} cannot be used: {why}")]
pub struct DocumentError {
    pub url: String,
    pub why: Refusal,
}

/// What is wrong with a document, or with fetching it. Never why a fetch failed: the cause
/// would tell a stranger whether an internal name exists or which addresses it has (the
/// cause goes to the log).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("too many documents were fetched lately; try again in a minute")]
    TooOften,
    #[error("too many documents are being fetched; try again in a moment")]
    TooMany,
    #[error("{0}")]
    NotUrl(#[from] url::ParseError),
    #[error("{0} is not a public address")]
    NotPublic(IpAddr),
    #[error("it did not answer in time")]
    Timeout,
    #[error("it could not be reached")]
    Unreachable,
    #[error("the fetch failed")]
    Failed,
    #[error("it answered {0}; redirects are not followed")]
    Redirected(reqwest::StatusCode),
    #[error("it answered {0}")]
    Status(reqwest::StatusCode),
    #[error("it is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("it is not a JSON object: {0}")]
    NotJson(Arc<serde_json::Error>),
    #[error("an object in it names a member twice")]
    NamesTwice,
    #[error("its client_id is not its own URL")]
    NotItsOwnId,
    #[error("it has no client_name")]
    NoName,
    #[error("a metadata document cannot carry a client secret")]
    Secret,
    #[error("token_endpoint_auth_method {0} is not supported here (only none)")]
    AuthMethod(String),
    /// What registration would refuse in the same metadata.
    #[error("{}", .0.description)]
    Metadata(Arc<OAuthError>),
}

/// Whether `client_id` names a metadata document: an https URL with a path, in canonical
/// form (so the document's own `client_id` can be compared as a string), without
/// credentials, fragment or dot segments.
pub fn is_document_id(client_id: &str) -> bool {
    let Ok(url) = Url::parse(client_id) else {
        return false;
    };
    url.scheme() == "https"
        && url.as_str() == client_id
        && url.host().is_some()
        && url.path() != "/"
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
}

/// The host a document id points at, for the consent page.
pub fn document_host(client_id: &str) -> Option<String> {
    if !is_document_id(client_id) {
        return None;
    }
    let url = Url::parse(client_id).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// Whether an address is on the public Internet (the SSRF rule).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 (64:ff9b::/96 and the local-use /48): the IPv4 address it reaches.
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address it tunnels to.
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0; 6] // IPv4-compatible (deprecated) and other ::/96 forms
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // Teredo, benchmarking, ORCHID and other IETF
        || (s[0] == 0x0100 && s[1..4] == [0; 3])) // discard-only
}

/// The resolver of the fetching client: only public addresses, except for allowed hosts.
struct PublicOnly {
    allowed: Arc<[String]>,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let exempt = self.allowed.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| exempt || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Clone)]
struct Cached {
    entry: Result<ClientRecord, DocumentError>,
    until: UnixTime,
}

/// Fetches, checks and caches client metadata documents.
pub struct Documents {
    http: reqwest::Client,
    allowed: Arc<[String]>,
    private_schemes: Vec<String>,
    clock: Clock,
    /// Bounded by [`CAPACITY`]; quick_cache evicts what is used least (an entry past its
    /// `until` is never served, and goes as space is needed).
    cache: quick_cache::sync::Cache<String, Cached>,
    fetching: tokio::sync::Semaphore,
    /// Fetches started in the last minute, per host and in all.
    recent: crate::budget::Budget<String>,
}

impl Documents {
    pub fn new(
        opts: &CimdOptions,
        private_schemes: Vec<String>,
        clock: Clock,
    ) -> Result<Self, reqwest::Error> {
        let allowed: Arc<[String]> = opts.allow_hosts.clone().into();
        let mut http = reqwest::Client::builder();
        if let Some(pem) = &opts.ca_pem {
            http = http.tls_certs_merge(reqwest::Certificate::from_pem_bundle(pem)?);
        }
        let http = http
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PublicOnly {
                allowed: allowed.clone(),
            }))
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .user_agent(concat!("mcp-auth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            allowed,
            private_schemes,
            clock,
            cache: quick_cache::sync::Cache::new(CAPACITY),
            fetching: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
            recent: crate::budget::Budget::new(60, PER_HOST_PER_MINUTE, TOTAL_PER_MINUTE),
        })
    }

    /// The client the document at `url` describes (from the cache while it is fresh).
    pub async fn client(&self, url: &str) -> Result<ClientRecord, DocumentError> {
        let now = self.clock.now();
        if let Some(c) = self.cache.get(url).filter(|c| c.until > now) {
            return c.entry;
        }
        // Refused for load, not for what the document is: not remembered as its failure.
        let busy = |why: Refusal| DocumentError {
            url: url.to_string(),
            why,
        };
        let host = Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        if self.recent.admit(&host, now).is_err() {
            tracing::warn!(host, "client metadata documents fetched too often; refused");
            return Err(busy(Refusal::TooOften));
        }
        let Ok(_turn) = self.fetching.try_acquire() else {
            tracing::warn!("too many client metadata documents being fetched at once; refused");
            return Err(busy(Refusal::TooMany));
        };
        let (entry, ttl) = match self.fetch(url).await {
            Ok((client, ttl)) => (Ok(client), ttl),
            Err(why) => {
                let e = DocumentError {
                    url: url.to_string(),
                    why,
                };
                tracing::info!(error = %e, "client metadata document refused");
                (Err(e), FAILURE_TTL)
            }
        };
        self.cache.insert(
            url.to_string(),
            Cached {
                entry: entry.clone(),
                until: now + ttl,
            },
        );
        entry
    }

    async fn fetch(&self, id: &str) -> Result<(ClientRecord, u64), Refusal> {
        let url = Url::parse(id)?;
        // An address literal is never resolved, so the resolver's rule is applied here.
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if let Some(ip) = literal
            && !is_public(ip)
            && !self.allowed.contains(&host)
        {
            return Err(Refusal::NotPublic(ip));
        }
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fetch_error(&e))?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(Refusal::Redirected(status));
        }
        if status != reqwest::StatusCode::OK {
            return Err(Refusal::Status(status));
        }
        let ttl = ttl(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_error(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(Refusal::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        // Read once, and with any name given twice found: of two equal names serde_json keeps
        // the last, other readers the first, so the document would say one thing here and
        // another to its author's tools.
        let doc = match crate::json_names::read(&body) {
            Some(crate::json_names::Read {
                value: Value::Object(doc),
                names_twice: false,
            }) => doc,
            Some(crate::json_names::Read {
                value: Value::Object(_),
                names_twice: true,
            }) => return Err(Refusal::NamesTwice),
            _ => return Err(not_json(&body)),
        };
        let client = self.check(id, &doc)?;
        Ok((client, ttl))
    }

    /// The document's rules on top of registration's.
    fn check(&self, id: &str, doc: &Map<String, Value>) -> Result<ClientRecord, Refusal> {
        if doc.get("client_id").and_then(Value::as_str) != Some(id) {
            return Err(Refusal::NotItsOwnId);
        }
        if doc
            .get("client_name")
            .and_then(Value::as_str)
            .is_none_or(|n| n.trim().is_empty())
        {
            return Err(Refusal::NoName);
        }
        if doc.contains_key("client_secret") || doc.contains_key("client_secret_expires_at") {
            return Err(Refusal::Secret);
        }
        match doc
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
        {
            None | Some(NONE) => {}
            Some(other) => {
                return Err(Refusal::AuthMethod(other.to_string()));
            }
        }
        let mut client = super::register::validate(doc, &self.private_schemes)
            .map_err(|e| Refusal::Metadata(Arc::new(e)))?;
        client.client_id = id.to_string();
        client.issued_at = self.clock.now();
        Ok(client)
    }
}

/// Why a document is not a JSON object, in serde_json's words (read again on this path only).
fn not_json(body: &[u8]) -> Refusal {
    let why = match serde_json::from_slice::<Map<String, Value>>(body) {
        Err(e) => e,
        Ok(_) => serde::de::Error::custom("not a JSON object"),
    };
    Refusal::NotJson(Arc::new(why))
}

/// A fetch failure as the person and the client see it (see [`Refusal`]); the cause goes
/// to the log.
fn fetch_error(e: &reqwest::Error) -> Refusal {
    let what = if e.is_timeout() {
        Refusal::Timeout
    } else if e.is_connect() {
        Refusal::Unreachable
    } else {
        Refusal::Failed
    };
    if let Some(cause) = std::error::Error::source(e) {
        tracing::info!(cause = %crate::error::chain(cause), "{what}");
    }
    what
}

/// How long a document may be used, from its `Cache-Control`.
fn ttl(headers: &reqwest::header::HeaderMap) -> u64 {
    let Some(cc) = headers
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return DEFAULT_TTL;
    };
    let mut max_age = None;
    for d in cc.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return MIN_TTL;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    max_age.map_or(DEFAULT_TTL, |s| s.clamp(MIN_TTL, MAX_TTL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_are_bounded_per_host_and_in_all_per_minute() {
        let r = crate::budget::Budget::new(60, PER_HOST_PER_MINUTE, TOTAL_PER_MINUTE);
        let host = "a.example".to_string();
        for _ in 0..PER_HOST_PER_MINUTE {
            assert!(r.admit(&host, 1000).is_ok());
        }
        assert!(r.admit(&host, 1030).is_err(), "that host is at its limit");
        assert!(r.admit(&host, 1060).is_ok(), "a minute later it may again");
        let mut admitted = PER_HOST_PER_MINUTE + 1;
        for i in 0.. {
            if r.admit(&format!("h{i}.example"), 1060).is_err() {
                break;
            }
            admitted += 1;
        }
        assert_eq!(admitted, TOTAL_PER_MINUTE + PER_HOST_PER_MINUTE);
    }

    #[test]
    fn document_ids() {
        for ok in [
            "https://claude.ai/oauth/mcp-oauth-client-metadata",
            "https://vscode.dev/oauth/client-metadata.json",
            "https://localhost:8443/client.json",
        ] {
            assert!(is_document_id(ok), "{ok}");
        }
        for bad in [
            "http://claude.ai/oauth/x",
            "https://claude.ai",
            "https://claude.ai/",
            "https://claude.ai/a/../b",
            "https://claude.ai:443/x",
            "https://Claude.ai/x",
            "https://u:p@claude.ai/x",
            "https://claude.ai/x#f",
            "a1b2c3",
            "urn:x:y",
        ] {
            assert!(!is_document_id(bad), "{bad}");
        }
        assert_eq!(
            document_host("https://claude.ai/oauth/x").as_deref(),
            Some("claude.ai")
        );
        assert_eq!(
            document_host("https://localhost:8443/c").as_deref(),
            Some("localhost:8443")
        );
        assert_eq!(document_host("abc"), None);
    }

    #[test]
    fn only_public_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "100::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public(ip), "{private}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "160.79.104.10",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public(ip), "{public}");
        }
    }

    #[test]
    fn cache_lifetimes_are_bounded() {
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::CACHE_CONTROL, v.parse().unwrap());
            ttl(&m)
        };
        assert_eq!(ttl(&reqwest::header::HeaderMap::new()), DEFAULT_TTL);
        assert_eq!(h("public, max-age=3600"), 3600);
        assert_eq!(h("max-age=5"), MIN_TTL);
        assert_eq!(h("max-age=99999999"), MAX_TTL);
        assert_eq!(h("no-store"), MIN_TTL);
        assert_eq!(h("private"), DEFAULT_TTL);
    }

    fn documents() -> Documents {
        Documents::new(
            &CimdOptions::default(),
            vec!["cursor".into()],
            Clock::system(),
        )
        .unwrap()
    }

    #[test]
    fn a_document_must_describe_itself() {
        let id = "https://app.example/client.json";
        let doc = |v: Value| v.as_object().unwrap().clone();
        let d = documents();
        let good = d
            .check(
                id,
                &doc(serde_json::json!({
                    "client_id": id, "client_name": "App",
                    "redirect_uris": ["http://127.0.0.1/cb", "https://app.example/cb"],
                })),
            )
            .unwrap();
        assert_eq!(good.client_id, id);
        assert_eq!(good.token_endpoint_auth_method, NONE);
        for (bad, why) in [
            (
                serde_json::json!({"client_id": "https://other.example/c", "client_name": "A", "redirect_uris": ["https://a.example/cb"]}),
                "client_id",
            ),
            (
                serde_json::json!({"client_id": id, "redirect_uris": ["https://a.example/cb"]}),
                "client_name",
            ),
            (
                serde_json::json!({"client_id": id, "client_name": "A"}),
                "redirect_uris",
            ),
            (
                serde_json::json!({"client_id": id, "client_name": "A", "redirect_uris": ["javascript:alert(1)"]}),
                "never allowed",
            ),
            (
                serde_json::json!({"client_id": id, "client_name": "A", "redirect_uris": ["https://a.example/cb"], "client_secret": "s"}),
                "secret",
            ),
            (
                serde_json::json!({"client_id": id, "client_name": "A", "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
                "only none",
            ),
        ] {
            let e = d.check(id, &doc(bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should mention {why}");
        }
    }

    #[tokio::test]
    async fn loopback_and_private_targets_are_refused_before_any_connection() {
        let d = documents();
        for url in [
            "https://127.0.0.1:9/c.json",
            "https://[::1]:9/c.json",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost:9/c.json",
        ] {
            let e = d.client(url).await.unwrap_err();
            // A literal address is named in the URL; a name's addresses are not told.
            let expected = if url.contains("localhost") {
                "it could not be reached"
            } else {
                "is not a public address"
            };
            assert!(e.why.to_string().ends_with(expected), "{url}: {e}");
        }
    }
}
