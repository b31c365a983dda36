//! Dynamic client registration (RFC 7591) and its read/delete management (RFC 7592).
//!
//! Public clients by default (`token_endpoint_auth_method` absent → `none`: VS Code omits
//! it); confidential clients get a secret stored as a hash. Redirect URIs follow
//! [`super::redirect_uri`]; one bad URI refuses the whole registration, naming it. Claude
//! registers a client on every connection, so registrations never used expire after
//! `--client-ttl`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::AuthServer;
use super::clients::{NONE, SECRET_BASIC, SECRET_POST};
use super::redirect_uri::check_registrable;
use crate::error::{OAuthError, OAuthErrorCode, body_error};
use crate::gate::bearer_token;
use crate::media_type::content_type_is;
use crate::store::{ClientRecord, TokenHash};
use crate::tokens;
use axum::extract::rejection::BytesRejection;

/// Largest registration document accepted.
pub const MAX_REGISTRATION_BYTES: usize = 64 * 1024;

/// Metadata fields kept and echoed besides the ones with meaning here.
const ECHOED: [&str; 10] = [
    "client_uri",
    "logo_uri",
    "tos_uri",
    "policy_uri",
    "contacts",
    "software_id",
    "software_version",
    "application_type",
    "scope",
    "jwks_uri",
];

/// Most items in one metadata array (`redirect_uris`, `contacts`, `grant_types`, …).
pub const MAX_ITEMS: usize = 10;

/// Longest metadata string (a URI, a contact, a version): what `/authorize` accepts as a
/// parameter, so every registered redirect URI can be named there.
pub const MAX_FIELD: usize = crate::web::form::MAX_VALUE;

fn meta_err(msg: impl Into<String>) -> OAuthError {
    OAuthError::bad_request(OAuthErrorCode::InvalidClientMetadata, msg)
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Option<Vec<String>>, OAuthError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() > MAX_ITEMS => Err(meta_err(format!(
            "{field} may list at most {MAX_ITEMS} values"
        ))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .filter(|s| s.len() <= MAX_FIELD)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        meta_err(format!(
                            "{field} must be an array of strings of at most {MAX_FIELD} bytes"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(meta_err(format!("{field} must be an array of strings"))),
    }
}

/// An echoed field as kept: `contacts` a bounded list of strings, every other one a bounded
/// string (RFC 7591 §2 defines them so); anything else refuses the registration.
fn echoed(field: &str, v: &Value) -> Result<Value, OAuthError> {
    if field == "contacts" {
        return Ok(json!(string_list(Some(v), field)?.unwrap_or_default()));
    }
    match v {
        Value::String(s) if s.len() <= MAX_FIELD => Ok(v.clone()),
        _ => Err(meta_err(format!(
            "{field} must be a string of at most {MAX_FIELD} bytes"
        ))),
    }
}

/// Validates a registration request into a client record (without id or secret yet).
pub fn validate(
    doc: &Map<String, Value>,
    private_schemes: &[String],
) -> Result<ClientRecord, OAuthError> {
    let redirect_uris = string_list(doc.get("redirect_uris"), "redirect_uris")?.unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(OAuthError::bad_request(
            OAuthErrorCode::InvalidRedirectUri,
            "redirect_uris is required for the authorization_code grant",
        ));
    }
    for uri in &redirect_uris {
        check_registrable(uri, private_schemes).map_err(|why| {
            OAuthError::bad_request(OAuthErrorCode::InvalidRedirectUri, why.to_string())
        })?;
    }

    let method = match doc.get("token_endpoint_auth_method") {
        None | Some(Value::Null) => NONE.to_string(),
        Some(Value::String(m)) if [NONE, SECRET_POST, SECRET_BASIC].contains(&m.as_str()) => {
            m.clone()
        }
        Some(other) => {
            return Err(meta_err(format!(
                "token_endpoint_auth_method {other} is not supported; use none, client_secret_post or client_secret_basic"
            )));
        }
    };

    let grant_types = string_list(doc.get("grant_types"), "grant_types")?
        .unwrap_or_else(|| vec!["authorization_code".into()]);
    if let Some(g) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(meta_err(format!("grant type {g:?} is not supported")));
    }
    if !grant_types.iter().any(|g| g == "authorization_code") {
        return Err(meta_err("grant_types must include authorization_code"));
    }
    let response_types = string_list(doc.get("response_types"), "response_types")?
        .unwrap_or_else(|| vec!["code".into()]);
    if response_types.iter().any(|r| r != "code") {
        return Err(meta_err("response_types must be [\"code\"]"));
    }

    let client_name = match doc.get("client_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => {
            let n = n.trim();
            if n.chars().count() > 200 || n.chars().any(char::is_control) {
                return Err(meta_err(
                    "client_name must be at most 200 printable characters",
                ));
            }
            (!n.is_empty()).then(|| n.to_string())
        }
        Some(_) => return Err(meta_err("client_name must be a string")),
    };
    if let Some(t) = doc.get("application_type")
        && !matches!(t.as_str(), Some("web" | "native"))
    {
        return Err(meta_err("application_type must be web or native"));
    }

    let extra = ECHOED
        .iter()
        .filter_map(|k| doc.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
        .map(|(k, v)| Ok((k.to_string(), echoed(k, v)?)))
        .collect::<Result<_, OAuthError>>()?;
    Ok(ClientRecord {
        client_id: String::new(),
        client_name,
        redirect_uris,
        token_endpoint_auth_method: method,
        // Refresh tokens are issued to every client (docs/design.md, "Tokens"), so every client may use them.
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        response_types: vec!["code".into()],
        secret_hash: None,
        client_secret_expires_at: 0,
        registration_token_hash: None,
        issued_at: 0,
        used: false,
        extra,
    })
}

/// The client's registration as RFC 7591 §3.2.1 shows it (without secrets).
fn client_information(app: &AuthServer, c: &ClientRecord) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("client_id".into(), json!(c.client_id));
    out.insert("client_id_issued_at".into(), json!(c.issued_at));
    if let Some(n) = &c.client_name {
        out.insert("client_name".into(), json!(n));
    }
    out.insert("redirect_uris".into(), json!(c.redirect_uris));
    out.insert("grant_types".into(), json!(c.grant_types));
    out.insert("response_types".into(), json!(c.response_types));
    out.insert(
        "token_endpoint_auth_method".into(),
        json!(c.token_endpoint_auth_method),
    );
    if c.secret_hash.is_some() {
        out.insert(
            "client_secret_expires_at".into(),
            json!(c.client_secret_expires_at),
        );
    }
    out.insert(
        "registration_client_uri".into(),
        json!(app.site.home.join(&format!("/register/{}", c.client_id))),
    );
    for (k, v) in &c.extra {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `POST /register`.
pub async fn register(
    State(app): State<AuthServer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    let body = body.map_err(body_error)?;
    let is_json = content_type_is(&headers, "application/json");
    if !is_json {
        return Err(meta_err("send the registration as application/json"));
    }
    // Read once, and with any name given twice found: of two equal names serde_json keeps
    // the last, other readers the first. Refused, so what is registered is what the client
    // meant, whichever reader it knows.
    let Some(crate::json_names::Read {
        value: Value::Object(doc),
        names_twice,
    }) = crate::json_names::read(&body)
    else {
        return Err(meta_err("the registration is not a JSON object"));
    };
    if names_twice {
        return Err(meta_err("the registration names a member twice"));
    }
    let mut client = validate(&doc, &app.authn.cfg.redirect_schemes)?;

    let now = app.repo.clock().now();
    client.client_id = tokens::generate_id();
    client.issued_at = now;
    let secret = (client.token_endpoint_auth_method != NONE).then(|| tokens::generate("mcpcs_"));
    client.secret_hash = secret.as_deref().map(|s| TokenHash::of(s).0);
    let registration_token = tokens::generate("mcprat_");
    client.registration_token_hash = Some(TokenHash::of(&registration_token).0);

    let expires = now + app.authn.cfg.client_ttl.as_secs();
    app.repo
        .put(client.client_id.as_bytes(), &client, Some(expires))
        .await?;
    app.repo.flush().await?;
    tracing::info!(client_id = %client.client_id, client_name = client.client_name.as_deref().unwrap_or_default(), "registered a client");

    let mut out = client_information(&app, &client);
    out.insert(
        "registration_access_token".into(),
        json!(registration_token),
    );
    if let Some(s) = secret {
        out.insert("client_secret".into(), json!(s));
    }
    Ok(no_store(
        (StatusCode::CREATED, Json(Value::Object(out))).into_response(),
    ))
}

/// The client a registration access token manages (RFC 7592 §2).
async fn managed_client(
    app: &AuthServer,
    headers: &HeaderMap,
    client_id: &str,
) -> Result<ClientRecord, OAuthError> {
    let unauthorized = || {
        let mut e = OAuthError::new(
            StatusCode::UNAUTHORIZED,
            OAuthErrorCode::InvalidToken,
            "invalid registration access token",
        );
        e.challenge = Some("Bearer error=\"invalid_token\"".into());
        e
    };
    let token = bearer_token(headers, None).map_err(|_| unauthorized())?;
    let client = app
        .repo
        .get::<ClientRecord>(client_id.as_bytes())
        .await?
        .ok_or_else(unauthorized)?;
    let given = TokenHash::of(token);
    match client.registration_token_hash {
        Some(h) if bool::from(h.ct_eq(&given.0)) => Ok(client),
        _ => Err(unauthorized()),
    }
}

/// `GET /register/{client_id}`.
pub async fn read(
    State(app): State<AuthServer>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let client = managed_client(&app, &headers, &client_id).await?;
    Ok(no_store(
        Json(Value::Object(client_information(&app, &client))).into_response(),
    ))
}

/// `DELETE /register/{client_id}`: the client and its registration are gone.
pub async fn delete(
    State(app): State<AuthServer>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let client = managed_client(&app, &headers, &client_id).await?;
    app.repo
        .remove::<ClientRecord>(client.client_id.as_bytes())
        .await?;
    app.repo.flush().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults_and_refusals() {
        let schemes = vec!["cursor".to_string()];
        let c = validate(
            &doc(json!({"redirect_uris": ["http://127.0.0.1:33418/"]})),
            &schemes,
        )
        .unwrap();
        assert_eq!(c.token_endpoint_auth_method, "none");
        assert!(validate(&doc(json!({})), &schemes).is_err());
        assert!(validate(&doc(json!({"redirect_uris": "https://a/cb"})), &schemes).is_err());
        let cursor = json!({"redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback", "http://localhost:1/cb", "https://a.example/cb"]});
        assert!(validate(&doc(cursor), &schemes).is_ok());
        let one_bad = json!({"redirect_uris": ["https://a.example/cb", "javascript:alert(1)"]});
        let e = validate(&doc(one_bad), &schemes).unwrap_err();
        assert_eq!(e.code, OAuthErrorCode::InvalidRedirectUri);
        assert!(e.description.contains("javascript"));
        let e = validate(&doc(json!({"redirect_uris": ["https://a/cb"], "token_endpoint_auth_method": "private_key_jwt"})), &schemes).unwrap_err();
        assert_eq!(e.code, OAuthErrorCode::InvalidClientMetadata);
        assert!(validate(&doc(json!({"redirect_uris": ["https://a/cb"], "grant_types": ["client_credentials"]})), &schemes).is_err());
        assert!(
            validate(
                &doc(json!({"redirect_uris": ["https://a/cb"], "response_types": ["token"]})),
                &schemes
            )
            .is_err()
        );
    }
}
