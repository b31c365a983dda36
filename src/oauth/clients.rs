//! Client authentication at the token and revocation endpoints (RFC 6749 §2.3, §3.2.1):
//! `none` (public clients name themselves), `client_secret_post`, `client_secret_basic`,
//! each only for clients registered with it.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

use super::cimd::{DocumentError, Documents, is_document_id};
use crate::error::{OAuthError, OAuthErrorCode};
use crate::store::{ClientRecord, Repo, StoreError, TokenHash};
use crate::web::form::Params;

/// Token endpoint authentication methods.
pub const NONE: &str = "none";
pub const SECRET_POST: &str = "client_secret_post";
pub const SECRET_BASIC: &str = "client_secret_basic";

/// A 401 `invalid_client` (RFC 6749 §5.2), with a Basic challenge when Basic was tried.
pub fn invalid_client(basic: bool, why: &str) -> OAuthError {
    let mut e = OAuthError::new(StatusCode::UNAUTHORIZED, OAuthErrorCode::InvalidClient, why);
    if basic {
        e.challenge = Some("Basic realm=\"mcp-auth-proxy\", charset=\"UTF-8\"".into());
    }
    e
}

fn percent_decode(s: &str) -> Option<String> {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
    let wrapped = format!("v={}", s.replace('+', "%2B"));
    url::form_urlencoded::parse(wrapped.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// `(client_id, client_secret)` from an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || invalid_client(true, "malformed Basic credentials");
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, b64)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::bad_request(
            OAuthErrorCode::InvalidRequest,
            "only Basic client authentication is accepted in the Authorization header",
        ));
    }
    let decoded = STANDARD.decode(b64.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((
        percent_decode(id).ok_or_else(bad)?,
        percent_decode(secret).ok_or_else(bad)?,
    )))
}

/// Why a client could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

impl From<LookupError> for OAuthError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::Store(e) => e.into(),
            LookupError::Document(e) => invalid_client(false, &e.to_string()),
        }
    }
}

/// The client called `client_id`: registered or declared (in the store), or described by
/// its metadata document when the id is one and documents are on.
pub async fn find(
    repo: &Repo,
    documents: Option<&Documents>,
    client_id: &str,
) -> Result<Option<ClientRecord>, LookupError> {
    if let Some(c) = repo.get::<ClientRecord>(client_id.as_bytes()).await? {
        return Ok(Some(c));
    }
    match documents {
        Some(d) if is_document_id(client_id) => Ok(Some(d.client(client_id).await?)),
        _ => Ok(None),
    }
}

/// Authenticates the client of a token or revocation request.
pub async fn authenticate(
    repo: &Repo,
    documents: Option<&Documents>,
    headers: &HeaderMap,
    params: &Params,
) -> Result<ClientRecord, OAuthError> {
    let basic = basic_credentials(headers)?;
    let (client_id, secret, method) = match basic {
        Some((id, secret)) => {
            if params.get("client_secret").is_some() {
                return Err(OAuthError::bad_request(
                    OAuthErrorCode::InvalidRequest,
                    "use one client authentication method, not two",
                ));
            }
            if params.get("client_id").is_some_and(|c| c != id) {
                return Err(OAuthError::bad_request(
                    OAuthErrorCode::InvalidRequest,
                    "client_id does not match the Basic credentials",
                ));
            }
            (id, Some(secret), SECRET_BASIC)
        }
        None => {
            let Some(id) = params.get("client_id") else {
                return Err(invalid_client(
                    false,
                    "client authentication is required (client_id)",
                ));
            };
            match params.get("client_secret") {
                Some(s) => (id.to_string(), Some(s.to_string()), SECRET_POST),
                None => (id.to_string(), None, NONE),
            }
        }
    };
    let is_basic = method == SECRET_BASIC;
    let Some(client) = find(repo, documents, &client_id).await? else {
        return Err(invalid_client(is_basic, "unknown client"));
    };
    if client.token_endpoint_auth_method != method {
        return Err(invalid_client(
            is_basic,
            &format!(
                "this client is registered for {}",
                client.token_endpoint_auth_method
            ),
        ));
    }
    if let Some(secret) = secret {
        let Some(stored) = client.secret_hash else {
            return Err(invalid_client(is_basic, "this client has no secret"));
        };
        let given = TokenHash::of(&secret);
        if !bool::from(given.0.ct_eq(&stored)) {
            return Err(invalid_client(is_basic, "client authentication failed"));
        }
        let now = repo.clock().now();
        if client.client_secret_expires_at != 0 && client.client_secret_expires_at <= now {
            return Err(invalid_client(
                is_basic,
                "the client secret expired; register again",
            ));
        }
    }
    Ok(client)
}

/// A request to the token, revocation or introspection endpoint: its form parameters and the
/// client they authenticate (RFC 6749 section 2.3). Extracting it answers every malformed or
/// unauthenticated request with the OAuth error, so handlers start from a known client.
pub struct ClientRequest {
    pub client: ClientRecord,
    pub params: Params,
}

impl<S> axum::extract::FromRequest<S> for ClientRequest
where
    super::AuthServer: axum::extract::FromRef<S>,
    S: Send + Sync,
{
    type Rejection = OAuthError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, OAuthError> {
        let app = <super::AuthServer as axum::extract::FromRef<S>>::from_ref(state);
        let headers = req.headers().clone();
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(crate::error::body_error)?;
        let params = super::token::form_body(&headers, &body)?;
        let client = authenticate(&app.repo, app.documents.as_ref(), &headers, &params).await?;
        Ok(Self { client, params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn basic_parsing() {
        let mut h = HeaderMap::new();
        assert!(basic_credentials(&h).unwrap().is_none());
        let enc = STANDARD.encode("my%20id:s%3Acret+x");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {enc}")).unwrap(),
        );
        assert_eq!(
            basic_credentials(&h).unwrap(),
            Some(("my id".into(), "s:cret+x".into()))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert!(basic_credentials(&h).is_err());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_credentials(&h).is_err());
    }
}
