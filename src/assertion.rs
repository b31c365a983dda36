//! The signed identity assertion (`--proxy-forward-authorization`): instead of the client's
//! token, the upstream receives `Authorization: Bearer <JWT>`, a short-lived ES256 JWT signed
//! by us: `iss` our issuer, `aud` the upstream's origin, `sub`, `email`, `name`, `groups`,
//! `exp` five minutes on. Our public keys are published at [`JWKS_PATH`].
//!
//! The signing key is generated and kept in the store (sealed with the store's key), or given
//! by `JWT_PRIVATE_KEY` (PKCS#8 PEM, P-256). A generated key is replaced after
//! `--jwt-key-rotation`; the old one stays published until every assertion it signed has
//! expired.

use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::store::{Identity, Repo, StoreError};

/// Where our JWKS is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// How long an assertion is valid.
pub const ASSERTION_TTL: u64 = 300;

/// Store name of the sealed key set.
const KEYS_SECRET: &str = "assertion_keys";

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("JWT_PRIVATE_KEY: {0}")]
    BadKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    /// PKCS#8 DER, base64url.
    pkcs8: String,
    created_at: u64,
    /// When it stopped signing.
    #[serde(default)]
    retired_at: Option<u64>,
}

struct Key {
    stored: StoredKey,
    encoding: EncodingKey,
    jwk: Value,
}

fn key_from(stored: StoredKey) -> Result<Key, AssertionError> {
    let der = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(&stored.pkcs8)
            .map_err(|e| AssertionError::BadKey(e.to_string()))?,
    );
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        .map_err(|e| AssertionError::BadKey(format!("not a P-256 PKCS#8 key: {e}")))?;
    let point = pair.public_key().as_ref();
    let (x, y) = match (point.get(1..33), point.get(33..65)) {
        (Some(x), Some(y)) => (x, y),
        _ => return Err(AssertionError::BadKey("unexpected public key".into())),
    };
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": stored.kid,
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    });
    Ok(Key {
        encoding: EncodingKey::from_ec_der(&der),
        jwk,
        stored,
    })
}

fn generate(now: u64) -> Result<StoredKey, AssertionError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| AssertionError::Sign(e.to_string()))?;
    Ok(StoredKey {
        kid: crate::tokens::generate_id(),
        pkcs8: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
        created_at: now,
        retired_at: None,
    })
}

/// Signs assertions and publishes the keys that verify them.
pub struct Signer {
    repo: Repo,
    issuer: String,
    rotation: Duration,
    /// `JWT_PRIVATE_KEY`: one key, never rotated here.
    fixed: bool,
    /// Newest last.
    keys: RwLock<Vec<Key>>,
}

impl Signer {
    /// Loads the key from `JWT_PRIVATE_KEY`, or the stored ones (generating the first).
    pub async fn load(
        repo: Repo,
        issuer: String,
        env_key: Option<&str>,
        rotation: Duration,
    ) -> Result<Self, AssertionError> {
        let now = repo.clock().now();
        let (keys, fixed) = match env_key {
            Some(pem) => {
                use rustls::pki_types::PrivatePkcs8KeyDer;
                use rustls::pki_types::pem::PemObject;
                let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                    AssertionError::BadKey(format!(
                        "expected a PKCS#8 PEM (BEGIN PRIVATE KEY): {e}"
                    ))
                })?;
                let bytes = der.secret_pkcs8_der();
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
                let stored = StoredKey {
                    kid: URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]),
                    pkcs8: URL_SAFE_NO_PAD.encode(bytes),
                    created_at: now,
                    retired_at: None,
                };
                (vec![key_from(stored)?], true)
            }
            None => {
                let stored: Vec<StoredKey> = match repo.get_secret(KEYS_SECRET).await? {
                    Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
                    None => Vec::new(),
                };
                let mut keys = stored
                    .into_iter()
                    .map(key_from)
                    .collect::<Result<Vec<_>, _>>()?;
                if keys.is_empty() {
                    keys.push(key_from(generate(now)?)?);
                    save(&repo, &keys).await?;
                }
                (keys, false)
            }
        };
        Ok(Self {
            repo,
            issuer,
            rotation,
            fixed,
            keys: RwLock::new(keys),
        })
    }

    /// Replaces the signing key when it is older than the rotation period, and forgets
    /// retired keys whose assertions have all expired.
    async fn rotate_if_due(&self) -> Result<(), AssertionError> {
        if self.fixed {
            return Ok(());
        }
        let now = self.repo.clock().now();
        let due = self
            .keys
            .read()
            .ok()
            .and_then(|k| {
                k.last()
                    .map(|k| now >= k.stored.created_at + self.rotation.as_secs())
            })
            .unwrap_or(false);
        if !due {
            return Ok(());
        }
        let fresh = key_from(generate(now)?)?;
        let snapshot = {
            let Ok(mut keys) = self.keys.write() else {
                return Ok(());
            };
            // Another request may have rotated meanwhile.
            if keys
                .last()
                .is_some_and(|k| now < k.stored.created_at + self.rotation.as_secs())
            {
                return Ok(());
            }
            for k in keys.iter_mut() {
                k.stored.retired_at.get_or_insert(now);
            }
            keys.retain(|k| {
                k.stored
                    .retired_at
                    .is_none_or(|r| now < r + ASSERTION_TTL + 60)
            });
            keys.push(fresh);
            keys.iter().map(|k| k.stored.clone()).collect::<Vec<_>>()
        };
        tracing::info!(
            "assertion signing key rotated; the previous key stays published until its assertions expire"
        );
        save_stored(&self.repo, &snapshot).await
    }

    /// A signed assertion about `identity` for `audience`.
    pub async fn sign(
        &self,
        identity: &Identity,
        audience: &str,
    ) -> Result<String, AssertionError> {
        self.rotate_if_due().await?;
        let now = self.repo.clock().now();
        let claims = json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": identity.subject(),
            "email": identity.email,
            "name": identity.name,
            "groups": identity.groups,
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_TTL,
            "jti": crate::tokens::generate_id(),
        });
        let keys = self
            .keys
            .read()
            .map_err(|_| AssertionError::Sign("key lock poisoned".into()))?;
        let key = keys
            .last()
            .ok_or_else(|| AssertionError::Sign("no signing key".into()))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.stored.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| AssertionError::Sign(e.to_string()))
    }

    /// The JWKS: every key whose assertions may still be valid.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .read()
            .map(|k| k.iter().map(|k| k.jwk.clone()).collect())
            .unwrap_or_default();
        json!({ "keys": keys })
    }
}

async fn save(repo: &Repo, keys: &[Key]) -> Result<(), AssertionError> {
    let stored: Vec<StoredKey> = keys.iter().map(|k| k.stored.clone()).collect();
    save_stored(repo, &stored).await
}

async fn save_stored(repo: &Repo, stored: &[StoredKey]) -> Result<(), AssertionError> {
    let json = Zeroizing::new(
        serde_json::to_vec(stored).map_err(|e| AssertionError::Sign(e.to_string()))?,
    );
    repo.put_secret(KEYS_SECRET, &json).await?;
    repo.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::Keys;
    use crate::store::sled::SledStore;

    fn repo(dir: &std::path::Path) -> Repo {
        let store = SledStore::open(dir).unwrap();
        Repo::new(
            std::sync::Arc::new(store),
            Keys::ephemeral(),
            Clock::manual(1_700_000_000),
        )
    }

    #[tokio::test]
    async fn a_given_key_signs_and_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let signer = Signer::load(
            repo(dir.path()),
            "https://mcp.example.com".into(),
            Some(&pem),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let jwks = signer.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        let id = Identity {
            provider: "password".into(),
            user_id: "admin".into(),
            email: None,
            name: Some("admin".into()),
            groups: vec![],
            claims: Value::Null,
        };
        let jwt = signer.sign(&id, "http://up.example").await.unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.kid.as_deref(), jwks["keys"][0]["kid"].as_str());
        let other = tempfile::tempdir().unwrap();
        let bad = Signer::load(
            repo(other.path()),
            "https://mcp.example.com".into(),
            Some("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
            Duration::from_secs(3600),
        )
        .await;
        assert!(matches!(bad, Err(AssertionError::BadKey(_))));
    }
}
