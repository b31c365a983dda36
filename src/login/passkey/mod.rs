//! Passkeys (WebAuthn, through `webauthn-rs`) for the password account: after a password
//! sign-in a person adds passkeys, then signs in with one alone. With `--require-passkey` the
//! password only enrols: it signs in by itself to add the account's first passkey and to do
//! nothing else, and once a passkey exists it no longer signs in at all (docs/passkeys.md has
//! the operator's recovery path).
//!
//! Passkeys belong to the password account (`--password-user`), never to a provider's user:
//! a provider's allow-list and membership are judged at each sign-in there, which a passkey
//! would skip. They are kept in the store with the password epoch they were added under, so
//! a changed password ends them as it ends the grants made with the old one. Each ceremony
//! (options, then the browser's answer) keeps its challenge in the store between its two
//! requests, so any replica can finish it and each challenge is answered once.

pub mod ceremony;
pub mod manage;

use std::time::Duration;

use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{Url, Uuid, Webauthn, WebauthnBuilder};

use super::SignIn;
use crate::config::PublicOrigin;
use crate::store::{Identity, PasskeyRecord, Repo, SessionRecord, StoreError};

/// The passkey management page (enrolment, list, removal).
pub const PASSKEYS_PATH: &str = "/.auth/passkeys";

/// Passkeys one account may hold: enough for every device a person owns, few enough that the
/// sign-in options (which list them all) stay small.
pub const MAX_PER_ACCOUNT: usize = 16;

/// How long a person has to answer the authenticator's prompt.
const PROMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a ceremony's challenge is kept: the prompt's time and a margin for the network.
pub const CEREMONY_TTL: u64 = 180;

/// The longest name a passkey may be given, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// The identity claim that says how a password-account session signed in.
const SIGNED_IN_WITH: &str = "signed_in_with";

/// Ceremonies one client (IPv4 address or IPv6 /64) may have waiting for their answer.
pub const CEREMONIES_PER_CLIENT: usize = 20;

/// Ceremonies of all clients together waiting for their answer: a stranger's flood of sign-in
/// options keeps at most this many challenges in the store (each under 2 KiB).
pub const CEREMONIES_TOTAL: usize = 2000;

/// WebAuthn as this deployment speaks it: its relying party is the external host.
pub struct Passkeys {
    webauthn: Webauthn,
    /// `--require-passkey`.
    pub required: bool,
    /// The ceremonies waiting for their answer, per client and in all.
    pub ceremonies: crate::budget::Budget<std::net::IpAddr>,
}

/// Why passkeys cannot be offered on this deployment.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error(
        "--require-passkey needs passkeys, which browsers offer only on https or http://localhost and only for a host name (not an IP address); {0} is neither"
    )]
    Unavailable(String),
    #[error("--require-passkey needs password sign-in (--password or --password-hash)")]
    NoPassword,
    #[error("WebAuthn could not be set up for {origin}: {error}")]
    Setup { origin: String, error: String },
}

impl Passkeys {
    /// Passkeys for `origin`, when browsers will use them there (a secure context whose host
    /// is a name: WebAuthn refuses IP addresses as relying-party ids). `None` otherwise, which
    /// `--require-passkey` turns into an error.
    pub fn new(
        origin: &PublicOrigin,
        has_password: bool,
        required: bool,
    ) -> Result<Option<Self>, PasskeyError> {
        if !has_password {
            return if required {
                Err(PasskeyError::NoPassword)
            } else {
                Ok(None)
            };
        }
        let host = origin.host();
        let secure = origin.is_https() || host == "localhost" || host.ends_with(".localhost");
        let is_name = host.parse::<std::net::IpAddr>().is_err() && !host.is_empty();
        if !(secure && is_name) {
            if required {
                return Err(PasskeyError::Unavailable(origin.as_str().to_string()));
            }
            tracing::info!(
                origin = origin.as_str(),
                "passkeys are not offered: browsers allow them only on https or http://localhost, for a host name"
            );
            return Ok(None);
        }
        let setup = |error: webauthn_rs::prelude::WebauthnError| PasskeyError::Setup {
            origin: origin.as_str().to_string(),
            error: error.to_string(),
        };
        let url = Url::parse(origin.as_str()).map_err(|e| PasskeyError::Setup {
            origin: origin.as_str().to_string(),
            error: e.to_string(),
        })?;
        let webauthn = WebauthnBuilder::new(&host, &url)
            .map_err(setup)?
            .rp_name(&host)
            .timeout(PROMPT_TIMEOUT)
            .build()
            .map_err(setup)?;
        Ok(Some(Self {
            webauthn,
            required,
            ceremonies: crate::budget::Budget::new(
                CEREMONY_TTL,
                CEREMONIES_PER_CLIENT,
                CEREMONIES_TOTAL,
            ),
        }))
    }

    pub fn webauthn(&self) -> &Webauthn {
        &self.webauthn
    }
}

/// The WebAuthn user handle of an account: stable, so an authenticator replaces the account's
/// old passkey instead of keeping two, and free of the account's name.
pub fn user_handle(user: &str) -> Uuid {
    let digest = Sha256::digest(format!("mcp-auth-proxy passkey user\0{user}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// Where an account's passkey is stored: the user, a 0, the credential id.
pub fn record_key(user: &str, credential_id: &[u8]) -> Vec<u8> {
    let mut key = account_prefix(user);
    key.extend_from_slice(credential_id);
    key
}

fn account_prefix(user: &str) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.push(0);
    key
}

/// The live passkeys of `user` added under the password epoch `epoch` (keys and records),
/// oldest first.
pub async fn of_account(
    repo: &Repo,
    user: &str,
    epoch: &str,
) -> Result<Vec<(Vec<u8>, PasskeyRecord)>, StoreError> {
    let mut found: Vec<(Vec<u8>, PasskeyRecord)> = repo
        .scan::<PasskeyRecord>(&account_prefix(user))
        .await?
        .into_iter()
        .filter(|(_, p)| p.user == user && p.epoch == epoch)
        .collect();
    found.sort_by_key(|(_, p)| p.created_at);
    Ok(found)
}

/// The password account's live passkeys, or none when there is no password account.
pub async fn of_password_account(
    app: &SignIn,
) -> Result<Vec<(Vec<u8>, PasskeyRecord)>, StoreError> {
    match &app.authn.password {
        Some(p) => of_account(&app.repo, p.user(), p.epoch()).await,
        None => Ok(Vec::new()),
    }
}

/// The password account's live passkey whose credential id is `credential_id` (its key and
/// record), when it is on the account under today's password.
pub async fn on_account(
    app: &SignIn,
    credential_id: &[u8],
) -> Result<Option<(Vec<u8>, PasskeyRecord)>, StoreError> {
    let Some(password) = &app.authn.password else {
        return Ok(None);
    };
    let key = record_key(password.user(), credential_id);
    Ok(app
        .repo
        .get::<PasskeyRecord>(&key)
        .await?
        .filter(|p| p.epoch == password.epoch())
        .map(|p| (key, p)))
}

/// Marks a password-account identity as signed in with a passkey.
pub fn mark_signed_in_with_passkey(identity: &mut Identity) {
    if let Some(claims) = identity.claims.as_object_mut() {
        claims.insert(SIGNED_IN_WITH.into(), "passkey".into());
    }
}

/// Whether a password-account identity was signed in with a passkey (not the password alone).
pub fn signed_in_with_passkey(identity: &Identity) -> bool {
    identity.claims.get(SIGNED_IN_WITH).and_then(|v| v.as_str()) == Some("passkey")
}

/// What a browser session may do with the password account's passkeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Signed in as the account (as today's configuration admits): add, list, remove.
    Full,
    /// Signed in with the password alone where a passkey is required and the account has
    /// none yet: may add one, and nothing else.
    EnrolOnly,
}

/// The standing of `session`, or `None` when it may not touch passkeys (another provider's
/// user, a password since changed, or a password session once a required passkey exists).
pub async fn standing(
    app: &SignIn,
    session: &SessionRecord,
) -> Result<Option<Standing>, StoreError> {
    let (Some(passkeys), Some(_)) = (&app.authn.passkeys, &app.authn.password) else {
        return Ok(None);
    };
    if !app.authn.password_current(&session.identity) {
        return Ok(None);
    }
    if app.authn.still_allowed(&session.identity) {
        return Ok(Some(Standing::Full));
    }
    let none_yet = of_password_account(app).await?.is_empty();
    Ok((passkeys.required && none_yet).then_some(Standing::EnrolOnly))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(origin: &str, required: bool) -> Result<bool, String> {
        let origin = PublicOrigin::parse(origin).map_err(|e| e.to_string())?;
        Passkeys::new(&origin, true, required)
            .map(|p| p.is_some())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn passkeys_are_offered_where_browsers_allow_them() {
        for (origin, offered_there) in [
            ("https://mcp.example.com", true),
            ("https://mcp.example.com:8443", true),
            ("http://localhost:8080", true),
            ("http://mcp.localhost:8080", true),
            ("http://127.0.0.1:8080", false),
            ("https://127.0.0.1", false),
            ("https://[::1]:8443", false),
            ("http://mcp.example.com", false),
        ] {
            assert_eq!(offered(origin, false), Ok(offered_there), "{origin}");
            let required = offered(origin, true);
            if offered_there {
                assert_eq!(required, Ok(true), "{origin}");
            } else {
                assert!(
                    required
                        .as_ref()
                        .is_err_and(|e| e.contains(origin.trim_end_matches('/'))),
                    "{origin}: {required:?}"
                );
            }
        }
        let origin = PublicOrigin::parse("https://mcp.example.com").unwrap();
        assert!(matches!(
            Passkeys::new(&origin, false, true),
            Err(PasskeyError::NoPassword)
        ));
        assert!(matches!(Passkeys::new(&origin, false, false), Ok(None)));
    }

    #[test]
    fn an_account_has_one_user_handle_that_does_not_name_it() {
        assert_eq!(user_handle("admin"), user_handle("admin"));
        assert_ne!(user_handle("admin"), user_handle("admin2"));
        assert!(!user_handle("admin").to_string().contains("admin"));
    }

    #[test]
    fn how_a_password_account_signed_in_is_kept_in_its_identity() {
        let mut identity = Identity {
            provider: "password".into(),
            user_id: "admin".into(),
            email: None,
            name: None,
            groups: Vec::new(),
            claims: serde_json::json!({ "pwd_epoch": "e" }),
        };
        assert!(!signed_in_with_passkey(&identity));
        mark_signed_in_with_passkey(&mut identity);
        assert!(signed_in_with_passkey(&identity));
        assert_eq!(identity.claims["pwd_epoch"], "e", "the epoch is kept");
    }
}
