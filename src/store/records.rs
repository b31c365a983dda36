//! The typed records kept in the store.
//!
//! Each record type names its table and schema version. Records are stored as
//! `{"v": <version>, "d": <record>}`; a reader meeting a version it does not know skips the
//! record (logged) instead of misreading it. When a record's shape changes, bump `VERSION` and
//! teach [`Record::upgrade`] to read the older form.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Table;
use crate::clock::UnixTime;

/// A record type stored in one table under one schema version.
pub trait Record: Serialize + DeserializeOwned + Send + Sync {
    const TABLE: Table;
    const VERSION: u32;

    /// Reads a record written under an older `version`. The default knows none.
    fn upgrade(_version: u32, _data: serde_json::Value) -> Option<Self> {
        None
    }
}

/// Who signed in: the provider's view of the user, as stored with a grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `password`, `google`, `github` or `oidc`.
    pub provider: String,
    /// The provider's user id (user name, email, login, or the configured claim).
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Everything else the provider said about the user (for header mapping and policies).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub claims: serde_json::Value,
}

impl Identity {
    /// The subject: unique across providers, and for the life of the account. A GitHub
    /// login can be renamed and then taken by someone else, so GitHub users are keyed on
    /// their numeric id (`github:#<id>`); `user_id` stays the login, which the allow-list
    /// matches and the upstream is told.
    pub fn subject(&self) -> String {
        match self.claims.get("id").and_then(serde_json::Value::as_u64) {
            Some(id) if self.provider == "github" => format!("github:#{id}"),
            _ => format!("{}:{}", self.provider, self.user_id),
        }
    }
}

/// A registered OAuth client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    #[serde(default)]
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    /// `none`, `client_secret_post` or `client_secret_basic`.
    pub token_endpoint_auth_method: String,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    /// SHA-256 of the client secret, for confidential clients.
    #[serde(default)]
    pub secret_hash: Option<[u8; 32]>,
    /// 0 = the secret does not expire.
    #[serde(default)]
    pub client_secret_expires_at: UnixTime,
    /// SHA-256 of the registration access token (RFC 7592 management).
    #[serde(default)]
    pub registration_token_hash: Option<[u8; 32]>,
    pub issued_at: UnixTime,
    /// Set once a code has been issued to the client; unused registrations expire sooner.
    #[serde(default)]
    pub used: bool,
    /// Other registered metadata, echoed back (client_uri, logo_uri, application_type…).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Record for ClientRecord {
    const TABLE: Table = Table::Clients;
    const VERSION: u32 = 1;
}

/// An authorization code, stored under its hash until redeemed; afterwards a tombstone that
/// remembers the grant it produced, so a replay can revoke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the authorization request carried `redirect_uri` (the token request must then
    /// repeat it exactly).
    #[serde(default)]
    pub redirect_uri_given: bool,
    /// PKCE S256 challenge (base64url of SHA-256 of the verifier).
    pub code_challenge: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub identity: Identity,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
    /// Set when the code was redeemed: the grant it created.
    #[serde(default)]
    pub redeemed_grant: Option<String>,
    /// `dpop_jkt` of the authorization request: the key the token request's DPoP proof must
    /// be made with (RFC 9449 §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

impl Record for CodeRecord {
    const TABLE: Table = Table::Codes;
    const VERSION: u32 = 1;
}

/// One user's authorization of one client: the family every token of it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub grant_id: String,
    pub client_id: String,
    pub identity: Identity,
    pub scopes: Vec<String>,
    pub resource: String,
    pub created_at: UnixTime,
    /// Refresh tokens of this grant stop working here (absolute lifetime).
    pub expires_at: UnixTime,
    /// The DPoP key (its RFC 7638 thumbprint) every token of the grant is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

impl Record for GrantRecord {
    const TABLE: Table = Table::Grants;
    const VERSION: u32 = 1;
}

/// Access or refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Refresh,
}

/// A refresh token's use: when, and the refresh token it was rotated into.
///
/// A rotated token is kept as long as its grant, so that its reuse (a stolen token) is caught
/// and ends the family (OAuth 2.1 §4.3.1). What it answered is needed only for the grace
/// period (a second tab retrying the same refresh gets the same pair): it is kept apart, as
/// a [`RotationAnswer`] that expires with the grace period, instead of in this record for
/// weeks: a rotated token took 1 444 bytes with it and takes 435 without (BENCHMARKS.md,
/// "Refreshes in the embedded store").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    pub at: UnixTime,
    /// Hash of the successor refresh token; once that is used, this token is dead. The
    /// [`RotationAnswer`] is stored under it.
    pub successor_hash: [u8; 32],
    /// The token response, sealed with the store key, in records written before answers were
    /// kept apart. Empty in new ones, but still written: a process of an older release
    /// sharing the store (a rolling upgrade) can then read the record and catch the token's
    /// reuse, where a missing field would make the record unreadable to it. In a proxy's first
    /// hour on a shared store it also holds the answer, for those processes, until the grace
    /// period ends (`store::upgrade`).
    #[serde(default)]
    pub sealed_response: Vec<u8>,
}

/// What a rotated refresh token answers again within the grace period: the token response
/// of its rotation, sealed with the store key for the rotated token's hash. Stored under the
/// hash of the refresh token in that response (a rotation's own key: two refreshes racing on
/// one token never write the same answer record), until the grace period ends: it holds
/// the family's live tokens, which the store otherwise keeps only as hashes.
#[serde_with::serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationAnswer {
    /// As base64 text: a third more than its bytes, where JSON's array of numbers takes
    /// three and a half times them (915 bytes a record against 362, read back from a store).
    #[serde_as(as = "serde_with::base64::Base64")]
    pub sealed_response: Vec<u8>,
}

impl Record for RotationAnswer {
    const TABLE: Table = Table::RotationAnswers;
    const VERSION: u32 = 1;
}

/// A rotated token written with its answer inline for older proxies (`upgrade.rs`), and
/// from when a sweep takes it out. Stored under the rotated token's hash ++ the successor's
/// hash before the token is written, so that any newer proxy's sweep takes it out, also
/// after the process that wrote it stopped, and only while the answer inside is that
/// rotation's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InlineAnswerDue {
    pub due: UnixTime,
}

impl Record for InlineAnswerDue {
    const TABLE: Table = Table::InlineAnswers;
    const VERSION: u32 = 1;
}

/// An access or refresh token, stored under its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub kind: TokenKind,
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub resource: String,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// Who signed in, on access tokens (kept with the token so the proxied path needs no
    /// second lookup). Refresh tokens go without: a refresh reads the grant, which has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The DPoP key (RFC 7638 thumbprint) the token is bound to: it is accepted only with a
    /// proof made with that key (RFC 9449).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
}

impl Record for TokenRecord {
    const TABLE: Table = Table::Tokens;
    const VERSION: u32 = 1;
}

/// A remembered consent of a user for a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub subject: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub granted_at: UnixTime,
    /// The server of `--config` it approved (its resource); absent for the command line's
    /// one server. An approval for one server is no approval for another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl Record for ConsentRecord {
    const TABLE: Table = Table::Consents;
    const VERSION: u32 = 1;
}

/// A signed-in browser, stored under the hash of its session cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub identity: Identity,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
}

impl Record for SessionRecord {
    const TABLE: Table = Table::Sessions;
    const VERSION: u32 = 1;
}

/// An upstream MCP session id and the user it was issued to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpSessionRecord {
    pub subject: String,
    pub created_at: UnixTime,
}

impl Record for McpSessionRecord {
    const TABLE: Table = Table::McpSessions;
    const VERSION: u32 = 1;
}

/// A validated authorization request waiting for the person to sign in and consent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthRequestRecord {
    pub client_id: String,
    /// The redirect URI to answer on (the one presented, or the single registered one).
    pub redirect_uri: String,
    /// Whether `redirect_uri` was presented (then the token request must repeat it).
    pub redirect_uri_given: bool,
    #[serde(default)]
    pub state: Option<String>,
    pub code_challenge: String,
    pub scopes: Vec<String>,
    pub resource: String,
    /// `prompt=consent` asks for the consent page even when consent is remembered.
    #[serde(default)]
    pub force_consent: bool,
    /// `prompt=login`: a sign-in older than this may not answer the request; cleared by the
    /// sign-in made for it.
    #[serde(default)]
    pub fresh_sign_in_since: Option<UnixTime>,
    pub created_at: UnixTime,
    /// The client's name when the request was made, for the sign-in page ("continue to …");
    /// requests stored before it was kept show the client id.
    #[serde(default)]
    pub client_name: Option<String>,
    /// `dpop_jkt`: the DPoP key the code may be redeemed with (RFC 9449 §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
}

impl AuthRequestRecord {
    /// What the sign-in pages call the client.
    pub fn client_label(&self) -> &str {
        self.client_name.as_deref().unwrap_or(&self.client_id)
    }
}

impl AuthRequestRecord {
    /// Whether `session` may answer this request (`prompt=login` wants a new sign-in).
    pub fn accepts(&self, session: &SessionRecord) -> bool {
        self.fresh_sign_in_since
            .is_none_or(|since| session.created_at > since)
    }
}

impl Record for AuthRequestRecord {
    const TABLE: Table = Table::Requests;
    const VERSION: u32 = 1;
}

/// A sign-in at an upstream provider that has not come back yet. Keyed by the hash of its
/// `state`, which the browser also holds in a cookie; the PKCE verifier and the nonce are
/// derived from the state with our HMAC key, so nothing secret is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignInRecord {
    pub provider: String,
    /// The pending authorization request to continue, if any.
    #[serde(default)]
    pub req: Option<String>,
    pub expires_at: UnixTime,
}

impl Record for SignInRecord {
    const TABLE: Table = Table::SignIns;
    const VERSION: u32 = 1;
}

/// A passkey of a password account. Kept with the password epoch it was added under: a
/// changed password ends the passkeys added with the old one, as it ends its grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasskeyRecord {
    /// The password account (`--password-user`).
    pub user: String,
    /// The person's name for it ("Laptop").
    pub name: String,
    pub epoch: String,
    pub created_at: UnixTime,
    #[serde(default)]
    pub last_used: Option<UnixTime>,
    pub credential: webauthn_rs::prelude::Passkey,
}

impl Record for PasskeyRecord {
    const TABLE: Table = Table::Passkeys;
    const VERSION: u32 = 1;
}

/// A passkey ceremony between its two requests (the options sent to the browser, the
/// browser's answer). The state holds the challenge, so it is kept here, never in the
/// browser; it is taken (read and removed) by the answer, so each challenge is answered once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PasskeyCeremonyRecord {
    /// Adding a passkey to `user`'s account, for the browser session `session` (hash).
    Registration {
        user: String,
        session: [u8; 32],
        name: String,
        state: webauthn_rs::prelude::PasskeyRegistration,
    },
    /// Signing in, to continue the pending authorization request `req` when there is one.
    SignIn {
        req: Option<String>,
        state: webauthn_rs::prelude::PasskeyAuthentication,
    },
}

impl Record for PasskeyCeremonyRecord {
    const TABLE: Table = Table::PasskeyCeremonies;
    const VERSION: u32 = 1;
}

/// A client's recent password attempts and its lock, on a shared store (see
/// `login::password::Lockout`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockoutRecord {
    /// When the attempts in the window were made, oldest first.
    pub times: std::collections::VecDeque<UnixTime>,
    pub locked_until: UnixTime,
}

impl Record for LockoutRecord {
    const TABLE: Table = Table::Lockouts;
    const VERSION: u32 = 1;
}

/// The answer to an ACME challenge of an order in progress, for whichever process the CA's
/// validation reaches: keyed `http-01/<token>` or `tls-alpn-01/<name>`. Not sealed: the CA
/// fetches it from anyone who asks, by design (RFC 8555 section 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeAnswerRecord {
    /// The key authorization (RFC 8555 section 8.1).
    pub key_authorization: String,
}

impl Record for AcmeAnswerRecord {
    const TABLE: Table = Table::Acme;
    const VERSION: u32 = 1;
}

/// After a failed certificate order: when any process may order again, so that replicas
/// taking turns do not each try at once (the CA limits failed validations per hour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmePauseRecord {
    /// Failed orders in a row.
    pub failures: u32,
    pub retry_at: UnixTime,
}

impl Record for AcmePauseRecord {
    const TABLE: Table = Table::Acme;
    const VERSION: u32 = 1;
}

/// A DPoP proof's first use (see `crate::dpop`): its `jti` is taken once within the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpopProofRecord {
    /// The proof's `iat`.
    pub seen_at: UnixTime,
}

impl Record for DpopProofRecord {
    const TABLE: Table = Table::DpopProofs;
    const VERSION: u32 = 1;
}

/// A sealed secret (key material, provider tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub sealed: Vec<u8>,
}

impl Record for SecretRecord {
    const TABLE: Table = Table::Secrets;
    const VERSION: u32 = 1;
}

/// The SHA-256 of a token, code or cookie: the only form in which they are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a presented secret.
    pub fn of(secret: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(secret.as_bytes()).into())
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A short prefix is enough to correlate log lines and reveals nothing usable.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_answer_is_stored_as_base64_text() {
        let answer = RotationAnswer {
            sealed_response: vec![0, 255, 1],
        };
        let text = serde_json::to_string(&answer).unwrap_or_default();
        assert_eq!(text, r#"{"sealed_response":"AP8B"}"#);
        let back: Result<RotationAnswer, _> = serde_json::from_str(&text);
        assert_eq!(back.ok(), Some(answer));
    }

    /// A release before answers were kept apart requires `sealed_response` in a rotation;
    /// written empty, a rotated token stays readable to it on a shared store.
    #[test]
    fn a_rotation_still_names_its_answer_field_for_an_older_release() {
        let rotation = Rotation {
            at: 1,
            successor_hash: [0; 32],
            sealed_response: Vec::new(),
        };
        let text = serde_json::to_string(&rotation).unwrap_or_default();
        assert!(text.ends_with(r#","sealed_response":[]}"#), "{text}");
    }
}
