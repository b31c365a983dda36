//! The token endpoint (OAuth 2.1 §3.2, §4.1.3, §4.3).
//!
//! - `authorization_code`: single use; bound to client, redirect URI, resource and PKCE
//!   verifier; a replayed code revokes everything issued from it.
//! - `refresh_token`: rotated on every use. The previous refresh token keeps returning the
//!   same new pair until that pair's refresh token is used or `--refresh-grace` passes (so
//!   two tabs refreshing at once both succeed); any later use revokes the whole family. Each
//!   refresh re-checks the user against today's configuration.
//! - DPoP (RFC 9449): a token request with a valid proof gets tokens bound to the proof's
//!   key (`token_type: DPoP`), and the grant stays bound to it: its refreshes need a proof
//!   made with the same key. A code asked for with `dpop_jkt` is redeemed only with that key.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::clients::ClientRequest;
use super::{AuthServer, Served};
use super::{pkce, resource};
use crate::dpop;
use crate::error::{OAuthError, OAuthErrorCode};
use crate::gate::MCP_SCOPE;
use crate::media_type::content_type_is;
use crate::store::{
    ClientRecord, CodeRecord, GrantRecord, Rotation, RotationAnswer, TokenHash, TokenKind,
    TokenRecord,
};
use crate::tokens;
use crate::web::form::Params;

/// RFC 6749 §5.1 success response.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    /// None for `client_credentials` (RFC 6749 §4.4.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

fn invalid_grant(why: &str) -> OAuthError {
    OAuthError::bad_request(OAuthErrorCode::InvalidGrant, why)
}

fn invalid_request(why: &str) -> OAuthError {
    OAuthError::bad_request(OAuthErrorCode::InvalidRequest, why)
}

/// Parses a form body strictly (RFC 6749 §3.2: form-encoded, no repeated parameters).
pub fn form_body(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
    let is_form = content_type_is(headers, "application/x-www-form-urlencoded");
    if !is_form {
        return Err(invalid_request(
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    Params::parse(body).map_err(|e| invalid_request(&e.to_string()))
}

fn token_json(resp: &TokenResponse) -> Response {
    let mut r = Json(resp).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn invalid_proof(why: impl std::fmt::Display) -> OAuthError {
    OAuthError::bad_request(OAuthErrorCode::InvalidDpopProof, why.to_string())
}

/// The token request's DPoP proof, checked and its `jti` taken; `None` without one.
async fn dpop_proof(
    app: &AuthServer,
    served: &Served,
    headers: &HeaderMap,
) -> Result<Option<dpop::Proof>, dpop::Refusal> {
    let Some(proof) = dpop::proof_header(headers).map_err(dpop::Refusal::Proof)? else {
        return Ok(None);
    };
    let expected = dpop::Expected {
        method: "POST",
        url: &served.endpoint("/token"),
        access_token: None,
        key: None,
        now: app.repo.clock().now(),
    };
    let nonces = app.site.dpop_nonces;
    dpop::verify(&app.repo, proof, &expected, nonces)
        .await
        .map(Some)
}

/// `POST /token`.
pub async fn token(
    State(app): State<AuthServer>,
    State(served): State<Served>,
    headers: HeaderMap,
    ClientRequest { client, params }: ClientRequest,
) -> Result<Response, OAuthError> {
    if !served.serves() {
        return Err(OAuthError::bad_request(
            OAuthErrorCode::InvalidTarget,
            "this address serves several MCP servers: use the token endpoint of the one you want",
        ));
    }
    if let Some(r) = params.get("resource")
        && !resource::matches(&served.server.resource, r)
    {
        return Err(OAuthError::bad_request(
            OAuthErrorCode::InvalidTarget,
            "this issuer only issues tokens for its MCP server's endpoint",
        ));
    }
    let proof = match dpop_proof(&app, &served, &headers).await {
        Ok(proof) => proof,
        Err(dpop::Refusal::Proof(why)) => return Err(invalid_proof(why)),
        Err(dpop::Refusal::Store(e)) => return Err(e.into()),
        // RFC 9449 §8: 400 `use_dpop_nonce` with the nonce to use.
        Err(dpop::Refusal::UseNonce(nonce)) => {
            let why = dpop::ProofError::UseNonce;
            let code = OAuthErrorCode::UseDpopNonce;
            let mut resp = OAuthError::bad_request(code, why.to_string()).into_response();
            if let Some(v) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                resp.headers_mut().insert("dpop-nonce", v);
            }
            return Ok(resp);
        }
    };
    if app.site.require_dpop && proof.is_none() {
        return Err(invalid_proof(
            "this server issues only DPoP-bound tokens: send a DPoP proof",
        ));
    }
    let jkt = proof.map(|p| p.jkt);
    let jkt = jkt.as_deref();
    let (resp, event) = match params.get("grant_type") {
        Some("authorization_code") => (
            code_grant(&app, &served, &client, &params, jkt).await?,
            "issued",
        ),
        Some("refresh_token") => (
            refresh_grant(&app, &served, &client, &params, jkt).await?,
            "refreshed",
        ),
        Some("client_credentials") => (
            client_credentials(&app, &served, &client, jkt).await?,
            "issued",
        ),
        Some(_) => {
            return Err(OAuthError::bad_request(
                OAuthErrorCode::UnsupportedGrantType,
                "supported grant types: authorization_code, refresh_token, client_credentials",
            ));
        }
        None => return Err(invalid_request("grant_type is required")),
    };
    app.repo.flush().await?;
    app.metrics.token(event);
    Ok(token_json(&resp))
}

/// The client credentials grant: a confidential client declared in the clients file for it
/// gets an access token (no refresh token) for its own service identity `client:<id>`.
async fn client_credentials(
    app: &AuthServer,
    served: &Served,
    client: &ClientRecord,
    jkt: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let allowed = crate::oauth::static_clients::is_static(client)
        && client.secret_hash.is_some()
        && client.grant_types.iter().any(|g| g == "client_credentials");
    if !allowed {
        return Err(OAuthError::bad_request(
            OAuthErrorCode::UnauthorizedClient,
            "this client may not use client_credentials",
        ));
    }
    let now = app.repo.clock().now();
    let access_ttl = app.authn.cfg.access_token_ttl.as_secs();
    let identity = crate::store::Identity {
        provider: crate::login::CLIENT_PROVIDER.into(),
        user_id: client.client_id.clone(),
        email: None,
        name: client.client_name.clone(),
        groups: Vec::new(),
        claims: serde_json::json!({ "client_id": client.client_id }),
    };
    let grant = GrantRecord {
        grant_id: tokens::generate_id(),
        client_id: client.client_id.clone(),
        identity,
        scopes: vec![crate::gate::MCP_SCOPE.to_string()],
        resource: served.server.resource.clone(),
        created_at: now,
        expires_at: now + access_ttl,
        jkt: jkt.map(str::to_string),
    };
    app.repo.put_grant(&grant).await?;
    let access = tokens::generate(tokens::ACCESS_PREFIX);
    let record = TokenRecord {
        kind: TokenKind::Access,
        grant_id: grant.grant_id.clone(),
        client_id: grant.client_id.clone(),
        subject: grant.identity.subject(),
        scopes: grant.scopes.clone(),
        resource: grant.resource.clone(),
        issued_at: now,
        expires_at: grant.expires_at,
        rotation: None,
        identity: Some(grant.identity.clone()),
        jkt: grant.jkt.clone(),
    };
    app.repo.put_token(&TokenHash::of(&access), &record).await?;
    tracing::info!(client_id = %client.client_id, "issued a client_credentials token");
    Ok(TokenResponse {
        access_token: access,
        token_type: dpop::token_type(jkt.is_some()).into(),
        expires_in: access_ttl,
        refresh_token: None,
        scope: grant.scopes.join(" "),
    })
}

/// Revokes a grant and drops its tokens from the gate's cache.
pub async fn revoke_family(app: &AuthServer, grant_id: &str) -> Result<(), OAuthError> {
    let hashes = app.repo.revoke_grant(grant_id).await?;
    app.tokens.evict(&hashes);
    app.tokens.evict_grant(grant_id);
    app.repo.flush().await?;
    Ok(())
}

async fn code_grant(
    app: &AuthServer,
    served: &Served,
    client: &ClientRecord,
    params: &Params,
    jkt: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let code = params
        .get("code")
        .ok_or_else(|| invalid_request("code is required"))?;
    let hash = TokenHash::of(code);
    let Some(found) = app.repo.get_versioned::<CodeRecord>(&hash.0).await? else {
        return Err(invalid_grant("the code is invalid or expired"));
    };
    let rec = found.record;
    if let Some(grant) = &rec.redeemed_grant {
        tracing::warn!(client_id = %rec.client_id, "an authorization code was replayed: revoking its tokens");
        revoke_family(app, grant).await?;
        return Err(invalid_grant("the code was already used"));
    }
    let now = app.repo.clock().now();
    if rec.expires_at <= now {
        return Err(invalid_grant("the code expired"));
    }
    if rec.client_id != client.client_id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if served.for_another_server(&rec.resource) {
        return Err(invalid_grant(
            "the code was issued for another MCP server: redeem it at that server's token endpoint",
        ));
    }
    match params.get("redirect_uri") {
        Some(r) if r != rec.redirect_uri => {
            return Err(invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        None if rec.redirect_uri_given => {
            return Err(invalid_grant(
                "redirect_uri is required (it was sent to /authorize)",
            ));
        }
        _ => {}
    }
    // PKCE, both ways: a challenge needs its verifier, and a verifier needs a challenge.
    match (params.get("code_verifier"), rec.code_challenge.is_empty()) {
        (Some(v), false) if pkce::verify(v, &rec.code_challenge) => {}
        (Some(_), false) => {
            return Err(invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        (None, false) => return Err(invalid_grant("code_verifier is required")),
        (_, true) => {
            return Err(invalid_grant(
                "the authorization request had no PKCE challenge",
            ));
        }
    }

    if let Some(bound) = &rec.dpop_jkt
        && jkt != Some(bound.as_str())
    {
        return Err(invalid_proof(
            "the authorization request named dpop_jkt: a DPoP proof made with that key is required",
        ));
    }

    // Single use. The grant and its tokens are stored first and handed out only once the
    // code is marked redeemed with them: a replay that sees the mark finds everything it must
    // revoke already there (marking first left a moment in which a replay revoked nothing
    // and the tokens were stored after it). If another request marked the code first, this
    // one is the replay: its own tokens and the winner's are revoked.
    let grant_id = tokens::generate_id();
    let mut redeemed = rec.clone();
    redeemed.redeemed_grant = Some(grant_id.clone());
    let grant = GrantRecord {
        grant_id,
        client_id: client.client_id.clone(),
        identity: rec.identity,
        scopes: rec.scopes,
        resource: rec.resource,
        created_at: now,
        expires_at: now + app.authn.cfg.refresh_token_ttl.as_secs(),
        jkt: jkt.map(str::to_string),
    };
    app.repo.put_grant(&grant).await?;
    let (resp, _) = mint_pair(app, &grant, &grant.scopes).await?;
    if !app
        .repo
        .replace(&hash.0, &found.entry, &redeemed, found.entry.expires_at)
        .await?
    {
        revoke_family(app, &grant.grant_id).await?;
        let winner = app.repo.get::<CodeRecord>(&hash.0).await?;
        if let Some(other) = winner.and_then(|c| c.redeemed_grant) {
            tracing::warn!(client_id = %client.client_id, "an authorization code was redeemed twice at once: revoking both");
            revoke_family(app, &other).await?;
        }
        return Err(invalid_grant("the code was already used"));
    }
    tracing::info!(client_id = %client.client_id, subject = %grant.identity.subject(), "issued tokens for a code");
    Ok(resp)
}

/// Mints and stores an access and a refresh token for `grant`.
async fn mint_pair(
    app: &AuthServer,
    grant: &GrantRecord,
    scopes: &[String],
) -> Result<(TokenResponse, TokenHash), OAuthError> {
    let now = app.repo.clock().now();
    let access = tokens::generate(tokens::ACCESS_PREFIX);
    let refresh = tokens::generate(tokens::REFRESH_PREFIX);
    let access_ttl = app.authn.cfg.access_token_ttl.as_secs();
    let base = TokenRecord {
        kind: TokenKind::Access,
        grant_id: grant.grant_id.clone(),
        client_id: grant.client_id.clone(),
        subject: grant.identity.subject(),
        scopes: scopes.to_vec(),
        resource: grant.resource.clone(),
        issued_at: now,
        expires_at: (now + access_ttl).min(grant.expires_at.max(now + 1)),
        rotation: None,
        identity: Some(grant.identity.clone()),
        jkt: grant.jkt.clone(),
    };
    let refresh_rec = TokenRecord {
        kind: TokenKind::Refresh,
        expires_at: grant.expires_at,
        identity: None,
        ..base.clone()
    };
    let refresh_hash = TokenHash::of(&refresh);
    app.repo.put_token(&TokenHash::of(&access), &base).await?;
    app.repo.put_token(&refresh_hash, &refresh_rec).await?;
    Ok((
        TokenResponse {
            expires_in: base.expires_at.saturating_sub(now),
            access_token: access,
            token_type: dpop::token_type(grant.jkt.is_some()).into(),
            refresh_token: Some(refresh),
            scope: scopes.join(" "),
        },
        refresh_hash,
    ))
}

async fn refresh_grant(
    app: &AuthServer,
    served: &Served,
    client: &ClientRecord,
    params: &Params,
    jkt: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let presented = params
        .get("refresh_token")
        .ok_or_else(|| invalid_request("refresh_token is required"))?;
    let hash = TokenHash::of(presented);
    // Two attempts: a lost compare-and-swap means a concurrent refresh rotated this token
    // first, and the second pass answers from that rotation.
    for _ in 0..2 {
        let Some(found) = app.repo.get_versioned::<TokenRecord>(&hash.0).await? else {
            return Err(invalid_grant(
                "the refresh token is invalid, expired or revoked",
            ));
        };
        let rec = found.record;
        if rec.kind != TokenKind::Refresh {
            return Err(invalid_grant(
                "the refresh token is invalid, expired or revoked",
            ));
        }
        if rec.client_id != client.client_id {
            return Err(invalid_grant(
                "the refresh token was issued to another client",
            ));
        }
        // A bound refresh token is refreshed only with a proof made with its key (RFC 9449
        // §5); an unbound grant stays a grant of bearer tokens.
        if let Some(bound) = &rec.jkt
            && jkt != Some(bound.as_str())
        {
            return Err(invalid_proof(
                "this refresh token is bound to a DPoP key: send a proof made with it",
            ));
        }
        let now = app.repo.clock().now();
        let Some(grant) = app.repo.get::<GrantRecord>(rec.grant_id.as_bytes()).await? else {
            return Err(invalid_grant(
                "the refresh token is invalid, expired or revoked",
            ));
        };
        if served.for_another_server(&grant.resource) {
            return Err(invalid_grant(
                "the refresh token is for another MCP server: refresh it at that server's token endpoint",
            ));
        }
        if !app.authn.still_allowed(&grant.identity)
            || !app.site.admits(&grant.resource, &grant.identity)
        {
            tracing::info!(subject = %grant.identity.subject(), "refresh refused: the user is no longer allowed");
            revoke_family(app, &grant.grant_id).await?;
            return Err(invalid_grant("the user is no longer allowed to sign in"));
        }
        use crate::login::membership::{Membership, recheck};
        match recheck(app, &grant.identity).await {
            Membership::NotAsked | Membership::Current => {}
            Membership::Ended => {
                tracing::info!(subject = %grant.identity.subject(), "refresh refused: the membership that admitted the user ended");
                revoke_family(app, &grant.grant_id).await?;
                return Err(invalid_grant(
                    "the user is no longer a member of what admitted them",
                ));
            }
            Membership::Unknown(why) => {
                // Fail closed, but keep the grant: the provider may answer next time.
                tracing::warn!(subject = %grant.identity.subject(), why, "refresh refused: the membership could not be re-checked");
                return Err(invalid_grant(
                    "the user's membership could not be checked; sign in again",
                ));
            }
        }
        let scopes = match params.get("scope") {
            None => grant.scopes.clone(),
            Some(s) => {
                let mut asked: Vec<String> = s
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(extra) = asked.iter().find(|s| !grant.scopes.contains(s)) {
                    return Err(OAuthError::bad_request(
                        OAuthErrorCode::InvalidScope,
                        format!("the scope {extra} was not granted"),
                    ));
                }
                if !asked.iter().any(|s| s == MCP_SCOPE) {
                    asked.insert(0, MCP_SCOPE.to_string());
                }
                asked
            }
        };
        // A policy scope the policy in force no longer lets this user hold is not carried
        // into the new tokens (the grant keeps it, should the policy name them again).
        let scopes = super::scopes_for(app, &grant.resource, &grant.identity, &scopes);

        let grace = app.authn.cfg.refresh_grace.as_secs();
        if let Some(rotation) = &rec.rotation {
            let successor_used = app
                .repo
                .get::<TokenRecord>(&rotation.successor_hash)
                .await?
                .is_none_or(|s| s.rotation.is_some());
            let answer = if successor_used || now > rotation.at + grace {
                None
            } else {
                rotation_answer(app, rotation).await?
            };
            let Some(sealed) = answer else {
                tracing::warn!(client_id = %client.client_id, "a rotated refresh token was reused: revoking the family");
                revoke_family(app, &rec.grant_id).await?;
                return Err(invalid_grant("the refresh token was already used"));
            };
            let opened: Zeroizing<Vec<u8>> = app.repo.keys().sealer.open(&hash.0, &sealed)?;
            let resp: TokenResponse =
                serde_json::from_slice(&opened).map_err(|_| OAuthError::server_error())?;
            return Ok(resp);
        }

        let (resp, successor_hash) = mint_pair(app, &grant, &scopes).await?;
        let json =
            Zeroizing::new(serde_json::to_vec(&resp).map_err(|_| OAuthError::server_error())?);
        // The answer first: whoever reads the token as rotated finds it. It is read while
        // `now <= at + grace` (above) and reads as absent from its expiry on: one second more.
        let answer_until = now + grace + 1;
        let answer = RotationAnswer {
            sealed_response: app.repo.keys().sealer.seal(&hash.0, &json)?,
        };
        app.repo
            .put(&successor_hash.0, &answer, Some(answer_until))
            .await?;
        // Older proxies sharing the store look for the answer inside the rotated token
        // (store::upgrade); while this process works for them, it is there too, until a
        // sweep takes it out after the grace period.
        let inline = app
            .repo
            .inline_answer(
                &hash.0,
                &successor_hash.0,
                answer_until,
                answer.sealed_response,
            )
            .await?;
        let rotated = TokenRecord {
            rotation: Some(Rotation {
                at: now,
                successor_hash: successor_hash.0,
                sealed_response: inline,
            }),
            // A token of an older release carried the identity; the grant has it.
            identity: None,
            ..rec.clone()
        };
        if app
            .repo
            .replace(&hash.0, &found.entry, &rotated, found.entry.expires_at)
            .await?
        {
            return Ok(resp);
        }
        // Lost the race: drop what this attempt minted and answer from the winner's rotation.
        app.repo.remove::<RotationAnswer>(&successor_hash.0).await?;
        app.repo.remove::<TokenRecord>(&successor_hash.0).await?;
        app.repo
            .remove::<TokenRecord>(&TokenHash::of(&resp.access_token).0)
            .await?;
    }
    Err(invalid_grant(
        "the refresh token is being used concurrently; try again",
    ))
}

/// The sealed answer of `rotation` while its grace period lasts: in the rotated token's own
/// record when an older release wrote it there, else kept apart under the successor's hash.
async fn rotation_answer(
    app: &AuthServer,
    rotation: &Rotation,
) -> Result<Option<Vec<u8>>, OAuthError> {
    if !rotation.sealed_response.is_empty() {
        return Ok(Some(rotation.sealed_response.clone()));
    }
    Ok(app
        .repo
        .get::<RotationAnswer>(&rotation.successor_hash)
        .await?
        .map(|a| a.sealed_response))
}
