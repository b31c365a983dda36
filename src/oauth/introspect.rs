//! Token introspection (RFC 7662) at `/introspect`, also answered at `/.idp/introspect` where
//! sigbit/mcp-auth-proxy served it, so resource servers set up for it keep working.
//!
//! Only confidential clients declared in `--clients-file` may ask (a resource server is
//! one such client): anyone else gets 401, so a token found lying around cannot be checked
//! for liveness by a stranger. A token is `active` exactly when the MCP endpoint would accept
//! it ([`crate::gate::check_token`]: one rule for both).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AuthServer;
use super::clients::{ClientRequest, SECRET_BASIC, invalid_client};
use super::static_clients::is_static;
use crate::error::{OAuthError, OAuthErrorCode};
use crate::gate::{self, GateError};

/// Where sigbit/mcp-auth-proxy answered introspection.
pub const SIGBIT_PATH: &str = "/.idp/introspect";

/// `POST /introspect`.
pub async fn introspect(
    State(app): State<AuthServer>,
    ClientRequest { client, params }: ClientRequest,
) -> Result<Response, OAuthError> {
    if !is_static(&client) || client.secret_hash.is_none() {
        return Err(invalid_client(
            client.token_endpoint_auth_method == SECRET_BASIC,
            "token introspection is open only to confidential clients declared in --clients-file",
        ));
    }
    let token = params.get("token").ok_or_else(|| {
        OAuthError::bad_request(OAuthErrorCode::InvalidRequest, "token is required")
    })?;
    let answer = match gate::check_token(&app.repo, &app.tokens, &app.site, token).await {
        Ok(caller) => {
            let record = caller.record();
            let identity = record.identity.as_ref();
            let mut answer = json!({
                "active": true,
                "scope": record.scopes.join(" "),
                "client_id": record.client_id,
                "username": identity.and_then(|i| i.email.clone().or_else(|| i.name.clone())),
                "token_type": crate::dpop::token_type(record.jkt.is_some()),
                "exp": record.expires_at,
                "iat": record.issued_at,
                "sub": record.subject,
                "aud": record.resource,
                "iss": app.site.issuer_of(&record.resource),
            });
            // RFC 9449 §6.2: the key a DPoP-bound token is bound to.
            if let Some(jkt) = &record.jkt {
                answer["cnf"] = json!({ "jkt": jkt });
            }
            answer
        }
        Err(GateError::Unavailable) => {
            return Err(OAuthError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                OAuthErrorCode::TemporarilyUnavailable,
                "temporarily unavailable",
            ));
        }
        // RFC 7662 §2.2: whatever is not active (unknown, expired, revoked, a refresh token,
        // another resource's) is only `active: false`, with nothing about why.
        Err(_) => json!({ "active": false }),
    };
    tracing::info!(client_id = %client.client_id, active = answer["active"] == true, "token introspected");
    let mut resp = Json(answer).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
