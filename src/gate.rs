//! The gate: every request to a proxied path must carry a valid access token for our
//! resource (RFC 6750 §2.1 header form only; MCP authorization spec, "Access Token Usage").
//!
//! Tokens are opaque; the store keeps only their SHA-256. A bounded in-memory cache in front
//! of the store keeps the hot path off the disk; revocation removes entries from it at once.

use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::clock::UnixTime;
use crate::config::Site;
use crate::dpop;
use crate::error::jsonrpc_error;
use crate::single_header;
use crate::store::{Repo, StoreError, TokenHash, TokenKind, TokenRecord};

/// What the gate reads, lent by the application's state (which sits above and is never
/// named here).
pub struct GateParts<'a> {
    pub site: &'a Site,
    pub repo: &'a Repo,
    pub tokens: &'a TokenCache,
}

/// A state a [`Caller`] can be extracted from.
pub trait Guarded {
    fn gate(&self) -> GateParts<'_>;
}

/// The request credentials came with, as a DPoP proof must name it (RFC 9449 §4.3).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    /// The path the client asked for (on our public origin; the query is not compared).
    pub path: &'a str,
}

/// The caller named by the one access token in `headers`, valid for our resource; else the
/// gate's answer, with the MCP challenge. `query` is the client's own query, where a token is
/// refused (RFC 6750 §2.3); forward-auth passes none, as its query is the front proxy's.
///
/// A bearer token comes as `Authorization: Bearer`. A token bound to a DPoP key comes as
/// `Authorization: DPoP` with a proof for `target` made with that key (RFC 9449 §7); as a
/// bearer token it is refused, and so is an unbound token sent as `DPoP`. Without a
/// `target` (forward-auth that does not say what it checks) a DPoP token is refused.
pub async fn authenticate(
    gate: GateParts<'_>,
    headers: &HeaderMap,
    query: Option<&str>,
    target: Option<Target<'_>>,
) -> Result<Caller, GateRefusal> {
    let refused = |e: GateError| e.at(gate.site);
    let (scheme, token) = credentials(headers, query).map_err(refused)?;
    let caller = check_token(gate.repo, gate.tokens, gate.site, token)
        .await
        .map_err(refused)?;
    match (scheme, caller.record().jkt.as_deref()) {
        (Scheme::Bearer, None) if gate.site.require_dpop => Err(refused(GateError::DpopRequired)),
        (Scheme::Bearer, None) => Ok(caller),
        (Scheme::Bearer, Some(_)) => Err(refused(GateError::DpopBound)),
        (Scheme::Dpop, None) => Err(refused(GateError::InvalidToken)),
        (Scheme::Dpop, Some(jkt)) => {
            let target = target.ok_or(GateError::InvalidProof(dpop::ProofError::NoTarget));
            let proof = dpop::proof_header(headers)
                .and_then(|p| p.ok_or(dpop::ProofError::Missing))
                .map_err(GateError::InvalidProof);
            let (target, proof) = (target.map_err(refused)?, proof.map_err(refused)?);
            let expected = dpop::Expected {
                method: target.method,
                url: &gate.site.server.origin.join(target.path),
                access_token: Some(token),
                key: Some(jkt),
                now: gate.repo.clock().now(),
            };
            dpop::verify(gate.repo, proof, &expected, gate.site.dpop_nonces)
                .await
                .map_err(|r| refused(r.into()))?;
            Ok(caller)
        }
    }
}

impl From<dpop::Refusal> for GateError {
    fn from(refusal: dpop::Refusal) -> Self {
        match refusal {
            dpop::Refusal::Proof(why) => GateError::InvalidProof(why),
            dpop::Refusal::UseNonce(fresh) => GateError::UseNonce(fresh),
            dpop::Refusal::Store(e) => {
                tracing::error!(error = %e, "store failure while checking a DPoP proof");
                GateError::Unavailable
            }
        }
    }
}

/// How an access token is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// RFC 9449 §7.1.
    Dpop,
}

/// The scheme and token of the one `Authorization` header (`Bearer` or `DPoP`), with the
/// rules of [`bearer_token`].
pub fn credentials<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<(Scheme, &'a str), GateError> {
    let value = authorization(headers, query)?;
    if let Some((scheme, token)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("dpop")
    {
        return Ok((Scheme::Dpop, token_of(token)?));
    }
    Ok((Scheme::Bearer, bearer_value(value)?))
}

/// A handler that takes a [`Caller`] runs only for a request that [`authenticate`] admits,
/// the request's query included; any other request gets the gate's answer. Take
/// `Result<Caller, GateRefusal>` to decide yourself.
impl<S: Guarded + Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = GateRefusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, GateRefusal> {
        let target = Target {
            method: parts.method.as_str(),
            path: parts.uri.path(),
        };
        authenticate(
            state.gate(),
            &parts.headers,
            parts.uri.query(),
            Some(target),
        )
        .await
    }
}

pub use crate::tokens::MCP_SCOPE;

/// The authenticated caller of a proxied request: the access token's record, shared with
/// the cache (no copies on the hot path).
#[derive(Debug, Clone)]
pub struct Caller(Arc<TokenRecord>);

impl Caller {
    /// The signed-in user (`provider:user id`).
    pub fn subject(&self) -> &str {
        &self.0.subject
    }
    pub fn client_id(&self) -> &str {
        &self.0.client_id
    }
    pub fn grant_id(&self) -> &str {
        &self.0.grant_id
    }
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }
    /// Who signed in, for tokens issued with it.
    pub fn identity(&self) -> Option<&crate::store::Identity> {
        self.0.identity.as_ref()
    }
    /// The whole token record (what introspection reports).
    pub fn record(&self) -> &TokenRecord {
        &self.0
    }
}

/// Why the gate said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateError {
    /// No credentials at all: 401 without an error code (RFC 6750 §3.1).
    Missing,
    /// Malformed credentials or a token in the query string: 400 `invalid_request`.
    InvalidRequest(&'static str),
    /// Unknown, expired, revoked or foreign token: 401 `invalid_token`.
    InvalidToken,
    /// Valid token lacking the scope: 403 `insufficient_scope`.
    InsufficientScope(Vec<String>),
    /// The store failed: 503, fail closed.
    Unavailable,
    /// A token bound to a DPoP key sent as a bearer token: 401 `invalid_token`.
    DpopBound,
    /// `--require-dpop`: a bearer token: 401 `invalid_token`.
    DpopRequired,
    /// A DPoP proof that is missing or does not hold: 401 `invalid_dpop_proof`.
    InvalidProof(dpop::ProofError),
    /// `--dpop-nonces`: a proof without a fresh nonce of ours: 401 `use_dpop_nonce`, with
    /// the nonce to use.
    UseNonce(Option<String>),
}

/// Builds the `WWW-Authenticate` challenge of RFC 6750 §3 with RFC 9728's
/// `resource_metadata` (MCP clients ignore relative URLs: it is absolute).
fn challenge(resource_metadata_url: &str, error: Option<(&str, &str)>, scope: &str) -> String {
    let mut c = format!("Bearer resource_metadata=\"{resource_metadata_url}\", scope=\"{scope}\"");
    if let Some((code, description)) = error {
        c.push_str(&format!(
            ", error=\"{code}\", error_description=\"{description}\""
        ));
    }
    c
}

impl GateError {
    /// The refusal as answered on `site` (its challenge names the site's resource metadata).
    pub fn at(self, site: &Site) -> GateRefusal {
        GateRefusal {
            error: self,
            resource_metadata_url: site.server.resource_metadata_url.clone(),
        }
    }
}

/// The gate's answer: a JSON-RPC body and the RFC 6750 challenge with RFC 9728's
/// `resource_metadata`.
#[derive(Debug)]
pub struct GateRefusal {
    error: GateError,
    resource_metadata_url: String,
}

impl IntoResponse for GateRefusal {
    fn into_response(self) -> Response {
        let (status, err, message, scope) = match &self.error {
            GateError::Missing => (
                StatusCode::UNAUTHORIZED,
                None,
                "authorization required",
                MCP_SCOPE.to_string(),
            ),
            GateError::InvalidRequest(why) => (
                StatusCode::BAD_REQUEST,
                Some(("invalid_request", *why)),
                *why,
                MCP_SCOPE.to_string(),
            ),
            GateError::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                Some(("invalid_token", "the access token is invalid or expired")),
                "the access token is invalid or expired",
                MCP_SCOPE.to_string(),
            ),
            GateError::InsufficientScope(needed) => (
                StatusCode::FORBIDDEN,
                Some((
                    "insufficient_scope",
                    "the access token lacks a required scope",
                )),
                "the access token lacks a required scope",
                needed.join(" "),
            ),
            GateError::Unavailable => {
                return jsonrpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "authorization temporarily unavailable",
                );
            }
            GateError::DpopBound => {
                let why = "the access token is bound to a DPoP key: send it as DPoP, with a proof";
                return dpop_challenge(StatusCode::UNAUTHORIZED, "invalid_token", why);
            }
            GateError::DpopRequired => {
                let why = "this server accepts only DPoP-bound tokens: sign in again with DPoP";
                return dpop_challenge(StatusCode::UNAUTHORIZED, "invalid_token", why);
            }
            GateError::InvalidProof(why) => {
                let why = why.to_string();
                return dpop_challenge(StatusCode::UNAUTHORIZED, "invalid_dpop_proof", &why);
            }
            GateError::UseNonce(nonce) => {
                let why = dpop::ProofError::UseNonce;
                let mut resp =
                    dpop_challenge(StatusCode::UNAUTHORIZED, why.code(), &why.to_string());
                if let Some(v) = nonce.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
                    resp.headers_mut().insert("dpop-nonce", v);
                }
                return resp;
            }
        };
        let mut resp = jsonrpc_error(status, message);
        if let Ok(v) = HeaderValue::from_str(&challenge(&self.resource_metadata_url, err, &scope)) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// The answer to a DPoP request the gate refuses: RFC 9449 §7.1's challenge, naming the
/// algorithms we verify.
fn dpop_challenge(status: StatusCode, code: &str, why: &str) -> Response {
    let mut resp = jsonrpc_error(status, why);
    let algs = dpop::algorithm_names().join(" ");
    let challenge = format!("DPoP algs=\"{algs}\", error=\"{code}\", error_description=\"{why}\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Extracts the bearer token from the request: exactly one `Authorization: Bearer` header,
/// and no `access_token` in the query (RFC 6750 §2.3 is refused: URLs end up in logs).
pub fn bearer_token<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Result<&'a str, GateError> {
    bearer_value(authorization(headers, query)?)
}

/// The one `Authorization` header's value, when the query carries no token.
fn authorization<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Result<&'a str, GateError> {
    if query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token")
    }) {
        return Err(GateError::InvalidRequest(
            "tokens in the query string are not accepted; use the Authorization header",
        ));
    }
    single_header::value(headers, header::AUTHORIZATION)
        .map_err(|_| GateError::InvalidRequest("more than one Authorization header"))?
        .ok_or(GateError::Missing)?
        .to_str()
        .map_err(|_| GateError::InvalidRequest("malformed Authorization header"))
}

/// The token in one `Authorization` header value (`Bearer <token>`).
pub fn bearer_value(value: &str) -> Result<&str, GateError> {
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(GateError::InvalidRequest("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme is "no bearer credentials" (RFC 6750 §3.1).
        return Err(GateError::Missing);
    }
    token_of(token)
}

/// The token of a credentials string: one word.
fn token_of(token: &str) -> Result<&str, GateError> {
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(GateError::InvalidRequest("malformed Authorization header"));
    }
    Ok(token)
}

/// A bounded cache of access tokens by hash (quick_cache's CLOCK-Pro eviction: what is used
/// often stays; a miss only costs a store read).
///
/// Revocation removes a token from the store, then from here. A request that missed the
/// cache may have read the token from the store just before it was removed: it must not put
/// it back after the eviction. Every eviction moves the revocation epoch on, and a token
/// read from the store is cached only if no eviction happened since the read began: an
/// insert holds the epoch shared, an eviction holds it alone.
///
/// A cached check is believed for at most [`TOKEN_CACHE_TTL`]: that bounds how long tokens
/// keep passing while the store is away (fail closed after), and how long a revocation made
/// by another process on a shared store can go unseen here.
pub struct TokenCache {
    entries: quick_cache::sync::Cache<TokenHash, Cached>,
    /// Evictions so far.
    epoch: RwLock<u64>,
}

/// Seconds a token read from the store is believed from memory.
pub const TOKEN_CACHE_TTL: UnixTime = 30;

#[derive(Clone)]
struct Cached {
    record: Arc<TokenRecord>,
    /// Read again from the store from this time on.
    until: UnixTime,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity),
            epoch: RwLock::new(0),
        }
    }

    /// The cached record, or the epoch to give [`Self::insert`] after reading the store.
    fn get(&self, hash: &TokenHash, now: UnixTime) -> Result<Arc<TokenRecord>, u64> {
        if let Some(c) = self.entries.get(hash).filter(|c| c.until > now) {
            return Ok(c.record);
        }
        Err(self.epoch.read().map(|e| *e).unwrap_or(u64::MAX))
    }

    /// Caches a record read from the store, unless a revocation happened since `epoch`.
    fn insert(&self, hash: TokenHash, record: Arc<TokenRecord>, epoch: u64, now: UnixTime) {
        let Ok(current) = self.epoch.read() else {
            return;
        };
        if *current == epoch {
            let until = now.saturating_add(TOKEN_CACHE_TTL);
            self.entries.insert(hash, Cached { record, until });
        }
    }

    /// Forgets the given tokens (revocation).
    pub fn evict(&self, hashes: &[TokenHash]) {
        if let Ok(mut epoch) = self.epoch.write() {
            *epoch += 1;
            for h in hashes {
                self.entries.remove(h);
            }
        }
    }

    /// Forgets every cached check (revocations elsewhere may have been missed).
    pub fn evict_all(&self) {
        if let Ok(mut epoch) = self.epoch.write() {
            *epoch += 1;
            self.entries.clear();
        }
    }

    /// Applies a revocation another process announced.
    pub fn apply(&self, revocation: &crate::store::Revocation) {
        use crate::store::Revocation;
        match revocation {
            Revocation::Grant(id) => self.evict_grant(id),
            Revocation::Tokens(hashes) => self.evict(hashes),
            Revocation::Missed => self.evict_all(),
        }
    }

    /// Forgets every token of a grant.
    pub fn evict_grant(&self, grant_id: &str) {
        if let Ok(mut epoch) = self.epoch.write() {
            *epoch += 1;
            self.entries.retain(|_, c| c.record.grant_id != grant_id);
        }
    }
}

/// Checks a presented access token: known, of kind access, not expired, for our resource,
/// with the `mcp` scope.
pub async fn check_token(
    repo: &Repo,
    cache: &TokenCache,
    site: &Site,
    token: &str,
) -> Result<Caller, GateError> {
    let hash = TokenHash::of(token);
    let now = repo.clock().now();
    let record = match cache.get(&hash, now) {
        Ok(r) => r,
        Err(epoch) => {
            let loaded = repo
                .get::<TokenRecord>(&hash.0)
                .await
                .map_err(|e: StoreError| {
                    tracing::error!(error = %e, "store failure while checking a token");
                    GateError::Unavailable
                })?;
            let record = Arc::new(loaded.ok_or(GateError::InvalidToken)?);
            if record.kind == TokenKind::Access {
                cache.insert(hash, record.clone(), epoch, now);
            }
            record
        }
    };
    if record.kind != TokenKind::Access
        || record.expires_at <= now
        || record.resource != site.server.resource
    {
        return Err(GateError::InvalidToken);
    }
    if !record.scopes.iter().any(|s| s == MCP_SCOPE) {
        let mut needed = record.scopes.clone();
        needed.push(MCP_SCOPE.to_string());
        return Err(GateError::InsufficientScope(needed));
    }
    Ok(Caller(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(grant: &str) -> Arc<TokenRecord> {
        Arc::new(TokenRecord {
            kind: TokenKind::Access,
            grant_id: grant.into(),
            client_id: "c".into(),
            subject: "password:a".into(),
            scopes: vec![MCP_SCOPE.into()],
            resource: "r".into(),
            issued_at: 0,
            expires_at: 100,
            rotation: None,
            identity: None,
            jkt: None,
        })
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(100);
        for i in 0..10_000u32 {
            let hash = TokenHash::of(&i.to_string());
            let Err(epoch) = cache.get(&hash, 0) else {
                panic!("not cached yet")
            };
            cache.insert(hash, record("g"), epoch, 0);
        }
        let held = cache.entries.len();
        assert!(
            (50..=150).contains(&held),
            "{held} held for a capacity of 100"
        );
    }

    #[test]
    fn a_token_read_before_a_revocation_is_not_cached_after_it() {
        let cache = TokenCache::new(10);
        let hash = TokenHash::of("t");
        // A miss: the reader goes to the store (and finds the token still there)…
        let Err(epoch) = cache.get(&hash, 0) else {
            panic!("not cached yet")
        };
        // …while the token is revoked: removed from the store, evicted here.
        cache.evict(&[hash]);
        cache.insert(hash, record("g"), epoch, 0);
        assert!(cache.get(&hash, 0).is_err(), "the revoked token came back");
        // Without a revocation in between, a read is cached.
        let Err(epoch) = cache.get(&hash, 0) else {
            panic!()
        };
        cache.insert(hash, record("g"), epoch, 0);
        assert!(cache.get(&hash, 0).is_ok());
        cache.evict_grant("g");
        assert!(cache.get(&hash, 0).is_err());
    }

    #[test]
    fn a_cached_check_is_believed_for_its_ttl_only() {
        let cache = TokenCache::new(10);
        let hash = TokenHash::of("t");
        let Err(epoch) = cache.get(&hash, 1_000) else {
            panic!("not cached yet")
        };
        cache.insert(hash, record("g"), epoch, 1_000);
        assert!(cache.get(&hash, 1_000 + TOKEN_CACHE_TTL - 1).is_ok());
        assert!(
            cache.get(&hash, 1_000 + TOKEN_CACHE_TTL).is_err(),
            "read from the store again"
        );
    }

    fn h(auth: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for a in auth {
            m.append(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        m
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer_token(&h(&["Bearer abc"]), None), Ok("abc"));
        assert_eq!(bearer_token(&h(&["bearer abc"]), None), Ok("abc"));
        assert_eq!(bearer_token(&h(&[]), None), Err(GateError::Missing));
        assert_eq!(
            bearer_token(&h(&["Basic eDp5"]), None),
            Err(GateError::Missing)
        );
        assert!(matches!(
            bearer_token(&h(&["Bearer"]), None),
            Err(GateError::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&h(&["Bearer a b"]), None),
            Err(GateError::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&h(&["Bearer a", "Bearer b"]), None),
            Err(GateError::InvalidRequest(_))
        ));
        assert!(matches!(
            bearer_token(&h(&["Bearer abc"]), Some("x=1&access_token=abc")),
            Err(GateError::InvalidRequest(_))
        ));
        assert_eq!(bearer_token(&h(&["Bearer abc"]), Some("x=1")), Ok("abc"));
    }
}
