//! OpenID Connect: the discovery document (tried again while the provider starts), the
//! provider's keys, ID token validation, the identity from its claims and the allow-lists.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use url::Url;

use super::{
    AnswerError, FetchError, IdTokenError, ProviderError, SignInError, get_document, get_json,
    is_true, string_at,
};
use crate::config::{AttributeRule, OidcConfig, normalize_user};
use crate::store::Identity;

/// How long and how often the OIDC discovery document is tried at startup.
pub(super) const DISCOVERY_ATTEMPTS: u32 = 6;

pub(super) struct Oidc {
    pub(super) cfg: OidcConfig,
    pub(super) issuer: String,
    /// The provider names itself in every authorization response (`iss`, RFC 9207).
    pub(super) iss_in_responses: bool,
    pub(super) userinfo: Option<Url>,
    pub(super) jwks_uri: Url,
    /// The provider's keys.
    pub(super) jwks: tokio::sync::RwLock<JwkSet>,
}

#[derive(Deserialize)]
pub(super) struct Discovery {
    pub(super) issuer: String,
    pub(super) authorization_endpoint: String,
    pub(super) token_endpoint: String,
    #[serde(default)]
    pub(super) userinfo_endpoint: Option<String>,
    pub(super) jwks_uri: String,
    #[serde(default)]
    pub(super) token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub(super) authorization_response_iss_parameter_supported: bool,
}

pub(super) async fn discover(
    http: &reqwest::Client,
    url: &Url,
) -> Result<Discovery, ProviderError> {
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match get_document(http, url, "a discovery document").await {
            Ok(d) => return Ok(d),
            Err(e) if attempt < DISCOVERY_ATTEMPTS => {
                tracing::warn!(attempt, url = %url, error = %e, "the OIDC discovery document could not be fetched");
            }
            Err(last) => {
                return Err(ProviderError::Discovery {
                    url: url.clone(),
                    attempts: DISCOVERY_ATTEMPTS,
                    last: Box::new(last),
                });
            }
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    }
}

impl Oidc {
    pub(super) async fn refresh_keys(&self, http: &reqwest::Client) -> Result<(), FetchError> {
        let set: JwkSet = get_document(http, &self.jwks_uri, "a JWK set").await?;
        *self.jwks.write().await = set;
        Ok(())
    }

    /// The key for `kid` (or the only key), refetching the set once if it is not known:
    /// providers rotate keys. (ID tokens arrive only in the provider's own answer to our
    /// token request, so nobody else can make us refetch.)
    pub(super) async fn key(
        &self,
        http: &reqwest::Client,
        kid: Option<&str>,
    ) -> Result<jsonwebtoken::jwk::Jwk, SignInError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some(k) = find(&*self.jwks.read().await) {
            return Ok(k);
        }
        self.refresh_keys(http).await.map_err(IdTokenError::Keys)?;
        Ok(find(&*self.jwks.read().await).ok_or(IdTokenError::UnknownKey)?)
    }

    /// Validates an ID token: signature (asymmetric algorithms only), `iss`, `aud`, `exp`,
    /// `nonce`. Returns its claims.
    pub(super) async fn validate(
        &self,
        http: &reqwest::Client,
        token: &str,
        nonce: &str,
    ) -> Result<Value, SignInError> {
        let header = jsonwebtoken::decode_header(token).map_err(IdTokenError::Jwt)?;
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        if !allowed.contains(&header.alg) {
            return Err(IdTokenError::Algorithm(header.alg).into());
        }
        let jwk = self.key(http, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(IdTokenError::Jwt)?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 60;
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(IdTokenError::Jwt)?;
        let claims = data.claims;
        if !authorized_party_ok(&claims, &self.cfg.client_id) {
            return Err(IdTokenError::OtherClient.into());
        }
        let got = claims
            .get("nonce")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bool::from(got.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(IdTokenError::Nonce.into());
        }
        Ok(claims)
    }
}

/// OpenID Connect Core §2 and §3.1.3.7: when the ID token has several audiences, or names
/// an authorized party, that party (`azp`) must be us; a token whose `aud` lists us beside
/// the client it was really issued to is that client's, not ours.
pub(super) fn authorized_party_ok(claims: &Value, client_id: &str) -> bool {
    let several = claims
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(azp) => azp.as_str() == Some(client_id),
        None => !several,
    }
}

pub(super) async fn oidc_identity(
    http: &reqwest::Client,
    oidc: &Oidc,
    id_token: &str,
    nonce: &str,
    access: &str,
) -> Result<Identity, SignInError> {
    let mut claims = oidc.validate(http, id_token, nonce).await?;
    if let Some(userinfo) = &oidc.userinfo {
        let (info, _) = get_json(http, userinfo.as_str(), access).await?;
        if info.get("sub") != claims.get("sub") {
            return Err(AnswerError::OtherSubject.into());
        }
        // Userinfo wins over the ID token.
        if let (Some(c), Value::Object(i)) = (claims.as_object_mut(), info) {
            c.extend(i);
        }
    }
    identity_of_claims(claims, &oidc.cfg.user_id_field)
}

/// Who the OIDC claims name. An email counts only when the provider says it is verified
/// (`email_verified` true; absent is not verified, OpenID Connect Core §5.1): otherwise it
/// is removed from the claims, so it is neither the user id, nor matched by an allow-list
/// or attribute rule, nor sent upstream.
pub(super) fn identity_of_claims(
    mut claims: Value,
    user_id_field: &str,
) -> Result<Identity, SignInError> {
    if !is_true(claims.get("email_verified"))
        && let Some(c) = claims.as_object_mut()
    {
        c.remove("email");
    }
    if user_id_field == "/email" && claims.get("email").is_none() {
        return Err(SignInError::Unverified);
    }
    let user_id = match claims.pointer(user_id_field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(AnswerError::NoUserId(user_id_field.to_string()).into());
        }
    };
    let groups = match claims.get("groups") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity {
        provider: "oidc".into(),
        user_id,
        email: string_at(&claims, "/email").and_then(normalize_user),
        name: string_at(&claims, "/name").map(str::to_string),
        groups,
        claims,
    })
}

/// Whether the claim at `rule.pointer` is (or, for an array, contains) a value that
/// `matches`.
pub(super) fn attribute_matches(
    claims: &Value,
    rule: &AttributeRule,
    matches: impl Fn(&str) -> bool,
) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match claims.pointer(&rule.pointer) {
        Some(Value::Array(items)) => items.iter().filter_map(text).any(|v| matches(&v)),
        Some(v) => text(v).is_some_and(|v| matches(&v)),
        None => false,
    }
}

pub(super) fn oidc_allows(o: &OidcConfig, identity: &Identity) -> bool {
    if o.allow_all {
        return true;
    }
    let user = normalize_user(&identity.user_id);
    if let Some(user) = &user {
        if o.allowed_users.contains(user) {
            return true;
        }
        if o.allowed_globs
            .iter()
            .any(|g| wildmatch::WildMatch::new(g).matches(user))
        {
            return true;
        }
    }
    o.attributes
        .iter()
        .any(|r| attribute_matches(&identity.claims, r, |v| v == r.value))
        || o.attribute_globs.iter().any(|r| {
            let pattern = wildmatch::WildMatch::new(&r.value);
            attribute_matches(&identity.claims, r, |v| pattern.matches(v))
        })
}
