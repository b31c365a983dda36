//! Token revocation (RFC 7009). An access token dies alone; a refresh token takes its whole
//! family (the grant and every token of it). The gate's cache forgets them at once.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AuthServer;
use super::clients::ClientRequest;
use super::token::revoke_family;
use crate::error::{OAuthError, OAuthErrorCode};
use crate::store::{TokenHash, TokenKind, TokenRecord};

/// `POST /revoke`.
pub async fn revoke(
    State(app): State<AuthServer>,
    ClientRequest { client, params }: ClientRequest,
) -> Result<Response, OAuthError> {
    let token = params.get("token").ok_or_else(|| {
        OAuthError::bad_request(OAuthErrorCode::InvalidRequest, "token is required")
    })?;
    let hash = TokenHash::of(token);
    // RFC 7009 §2.2: an unknown or already invalid token is answered like a revoked one.
    if let Some(rec) = app.repo.get::<TokenRecord>(&hash.0).await? {
        if rec.client_id != client.client_id {
            return Err(OAuthError::bad_request(
                OAuthErrorCode::InvalidRequest,
                "the token was not issued to this client",
            ));
        }
        match rec.kind {
            TokenKind::Access => {
                app.repo.revoke_token(&hash).await?;
                app.tokens.evict(&[hash]);
                app.repo.flush().await?;
            }
            TokenKind::Refresh => revoke_family(&app, &rec.grant_id).await?,
        }
        app.metrics.token("revoked");
        tracing::info!(client_id = %client.client_id, kind = ?rec.kind, "revoked a token");
    }
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
