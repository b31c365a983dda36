//! The signed identity assertion (`--proxy-forward-authorization`): instead of the client's
//! token, the upstream receives `Authorization: Bearer <JWT>`, a short-lived ES256 JWT signed
//! by us: `iss` our issuer, `aud` the upstream's origin, `sub`, `email`, `name`, `groups`,
//! `exp` five minutes on. Our public keys are published at [`JWKS_PATH`].
//!
//! The signing key is generated and kept in the store (sealed with the store's key), or given
//! by `JWT_PRIVATE_KEY`: a PKCS#8 PEM holding a P-256 key (ES256) or an RSA key of 2048 bits
//! or more (RS256, the key sigbit/mcp-auth-proxy generates, so a switch keeps it). A stored
//! key is replaced after `--jwt-key-rotation`; the old one stays published until every
//! assertion it signed has expired. `migrate --from sigbit:<dir>` stores sigbit's key as the
//! current one, under the key id sigbit published.

use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
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
    #[error("a signing key could not be generated")]
    Generate(aws_lc_rs::error::Unspecified),
    #[error("the signing keys' lock was poisoned by a panic")]
    Poisoned,
    #[error("there is no signing key")]
    NoKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("the signing keys could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The JWS algorithm a key signs with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyAlg {
    /// ECDSA P-256: the keys we generate.
    #[default]
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256: keys brought from sigbit/mcp-auth-proxy.
    RS256,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct StoredKey {
    kid: String,
    /// PKCS#8 DER, base64url.
    pkcs8: String,
    created_at: u64,
    /// When it stopped signing.
    #[serde(default)]
    retired_at: Option<u64>,
    /// Keys stored before RSA was accepted have none: ES256.
    #[serde(default)]
    alg: KeyAlg,
}

impl StoredKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Whether an assertion it signed may still be valid at `now` (a minute's grace for
    /// clocks): it signs now, or it retired less than an assertion's lifetime ago.
    fn may_verify(&self, now: u64) -> bool {
        self.retired_at.is_none_or(|r| now < r + ASSERTION_TTL + 60)
    }

    pub fn alg(&self) -> KeyAlg {
        self.alg
    }
}

struct Key {
    stored: StoredKey,
    encoding: EncodingKey,
    jwk: Value,
}

/// A PEM private key as a signing key: PKCS#8 (`BEGIN PRIVATE KEY`) holding a P-256 or an RSA
/// key. An RSA key's id is sigbit's (the first 8 bytes of the SHA-256 of its public key
/// info, in hex), so a verifier that remembers it keeps working; a P-256 key's is derived
/// from the key alike.
pub fn parse_private_key(pem: &str, now: u64) -> Result<StoredKey, AssertionError> {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        AssertionError::BadKey(format!(
            "expected a PKCS#8 PEM (BEGIN PRIVATE KEY) holding a P-256 or RSA key: {e}"
        ))
    })?;
    let bytes = der.secret_pkcs8_der();
    let (alg, kid) = if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes).is_ok() {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        (
            KeyAlg::ES256,
            URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]),
        )
    } else {
        let pair = RsaKeyPair::from_pkcs8(bytes).map_err(|e| {
            AssertionError::BadKey(format!(
                "neither a P-256 key nor an RSA key of 2048 to 8192 bits: {e}"
            ))
        })?;
        (KeyAlg::RS256, rsa_key_id(&pair)?)
    };
    let stored = StoredKey {
        kid,
        pkcs8: URL_SAFE_NO_PAD.encode(bytes),
        created_at: now,
        retired_at: None,
        alg,
    };
    // Whatever passes here also loads.
    key_from(stored.clone())?;
    Ok(stored)
}

/// sigbit's key id: hex of the first 8 bytes of SHA-256 over the DER public key info.
fn rsa_key_id(pair: &RsaKeyPair) -> Result<String, AssertionError> {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let spki: PublicKeyX509Der = pair
        .public_key()
        .as_der()
        .map_err(|_| AssertionError::BadKey("the RSA public key cannot be encoded".into()))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
    Ok(hex::encode(&digest.as_ref()[..8]))
}

fn key_from(stored: StoredKey) -> Result<Key, AssertionError> {
    let der = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(&stored.pkcs8)
            .map_err(|e| AssertionError::BadKey(e.to_string()))?,
    );
    let (encoding, jwk) = match stored.alg {
        KeyAlg::ES256 => {
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
            (EncodingKey::from_ec_der(&der), jwk)
        }
        KeyAlg::RS256 => {
            let pair = RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| AssertionError::BadKey(format!("not an RSA PKCS#8 key: {e}")))?;
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": stored.kid,
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            });
            // jsonwebtoken takes RSA keys as PKCS#1; from a PEM it finds that inside PKCS#8.
            let pem = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec())));
            let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| AssertionError::BadKey(format!("the RSA key: {e}")))?;
            (encoding, jwk)
        }
    };
    Ok(Key {
        encoding,
        jwk,
        stored,
    })
}

fn generate(now: u64) -> Result<StoredKey, AssertionError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(AssertionError::Generate)?;
    Ok(StoredKey {
        kid: crate::tokens::generate_id(),
        pkcs8: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
        created_at: now,
        retired_at: None,
        alg: KeyAlg::ES256,
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
    /// Signs with `given` (`JWT_PRIVATE_KEY`, parsed by [`parse_private_key`]), or the stored
    /// keys (generating the first).
    pub async fn load(
        repo: Repo,
        issuer: String,
        given: Option<StoredKey>,
        rotation: Duration,
    ) -> Result<Self, AssertionError> {
        let now = repo.clock().now();
        let (keys, fixed) = match given {
            Some(key) => (vec![key_from(key)?], true),
            None => {
                let mut keys = load_stored(&repo)
                    .await?
                    .into_iter()
                    .map(key_from)
                    .collect::<Result<Vec<_>, _>>()?;
                if keys.is_empty() {
                    // Generated once: when several processes start at once on a shared
                    // store, the first write wins and every process signs with it.
                    let first = Zeroizing::new(serde_json::to_vec(&[generate(now)?])?);
                    let stored = repo.secret_once(KEYS_SECRET, || first).await?;
                    keys = decode_stored(&stored)?
                        .into_iter()
                        .map(key_from)
                        .collect::<Result<Vec<_>, _>>()?;
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
            keys.retain(|k| k.stored.may_verify(now));
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
        let keys = self.keys.read().map_err(|_| AssertionError::Poisoned)?;
        let key = keys.last().ok_or(AssertionError::NoKey)?;
        let mut header = Header::new(match key.stored.alg {
            KeyAlg::ES256 => Algorithm::ES256,
            KeyAlg::RS256 => Algorithm::RS256,
        });
        header.kid = Some(key.stored.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
    }

    /// The JWKS: every key whose assertions may still be valid. A retired key leaves it as
    /// soon as its last assertion has expired, not at the next rotation (which may be weeks
    /// away); the store forgets it then.
    pub fn jwks(&self) -> Value {
        let now = self.repo.clock().now();
        let keys: Vec<Value> = self
            .keys
            .read()
            .map(|k| {
                k.iter()
                    .filter(|k| k.stored.may_verify(now))
                    .map(|k| k.jwk.clone())
                    .collect()
            })
            .unwrap_or_default();
        json!({ "keys": keys })
    }
}

/// Makes `key` the stored signing key, from now until it is due for rotation; the keys before
/// it retire and stay published until their assertions have expired.
pub async fn adopt(repo: &Repo, key: StoredKey) -> Result<(), AssertionError> {
    let now = repo.clock().now();
    let mut stored = load_stored(repo).await?;
    stored.retain(|k| k.kid != key.kid);
    for k in &mut stored {
        k.retired_at.get_or_insert(now);
    }
    stored.push(StoredKey {
        created_at: now,
        retired_at: None,
        ..key
    });
    save_stored(repo, &stored).await
}

async fn load_stored(repo: &Repo) -> Result<Vec<StoredKey>, AssertionError> {
    match repo.get_secret(KEYS_SECRET).await? {
        Some(b) => decode_stored(&b),
        None => Ok(Vec::new()),
    }
}

fn decode_stored(bytes: &[u8]) -> Result<Vec<StoredKey>, AssertionError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AssertionError::BadKey(format!("the stored signing keys: {e}")))
}

async fn save_stored(repo: &Repo, stored: &[StoredKey]) -> Result<(), AssertionError> {
    let json = Zeroizing::new(serde_json::to_vec(stored)?);
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
        let pem = pem_of(pkcs8.as_ref());
        let signer = Signer::load(
            repo(dir.path()),
            "https://mcp.example.com".into(),
            Some(parse_private_key(&pem, 0).unwrap()),
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
        let bad = parse_private_key(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            0,
        );
        assert!(matches!(bad, Err(AssertionError::BadKey(_))));
    }

    fn pem_of(pkcs8: &[u8]) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8))
    }

    fn alice() -> Identity {
        Identity {
            provider: "password".into(),
            user_id: "alice".into(),
            email: None,
            name: None,
            groups: vec![],
            claims: Value::Null,
        }
    }

    #[tokio::test]
    async fn an_rsa_key_in_sigbits_format_signs_rs256_under_sigbits_key_id() {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der = pair.as_der().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load(
            repo(dir.path()),
            "https://mcp.example.com".into(),
            Some(parse_private_key(&pem_of(pkcs8.as_ref()), 0).unwrap()),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        let jwk = signer.jwks()["keys"][0].clone();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["alg"].as_str()),
            (Some("RSA"), Some("RS256"))
        );
        // sigbit's kid, computed here from the public key info the way its Go code does.
        let spki = rcgen::KeyPair::try_from(pkcs8.as_ref())
            .unwrap()
            .public_key_der();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
        let kid: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(jwk["kid"], kid);

        let jwt = signer.sign(&alice(), "http://up.example").await.unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        let key = jsonwebtoken::DecodingKey::from_rsa_components(
            jwk["n"].as_str().unwrap(),
            jwk["e"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&["http://up.example"]);
        // The test clock is in 2023.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(&jwt, &key, &validation).unwrap();
        assert_eq!(claims.claims["sub"], "password:alice");
    }

    #[tokio::test]
    async fn an_adopted_key_signs_and_the_one_before_stays_published() {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let issuer = "https://mcp.example.com".to_string();
        let hour = Duration::from_secs(3600);
        let first = Signer::load(repo.clone(), issuer.clone(), None, hour)
            .await
            .unwrap();
        let generated = first.jwks()["keys"][0]["kid"].clone();
        let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der = pair.as_der().unwrap();
        let brought = parse_private_key(&pem_of(pkcs8.as_ref()), 0).unwrap();
        let kid = brought.kid().to_string();
        adopt(&repo, brought).await.unwrap();

        let signer = Signer::load(repo, issuer, None, hour).await.unwrap();
        let kids: Vec<Value> = signer.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].clone())
            .collect();
        assert_eq!(kids, vec![generated, Value::from(kid.clone())]);
        let jwt = signer.sign(&alice(), "http://up.example").await.unwrap();
        assert_eq!(jsonwebtoken::decode_header(&jwt).unwrap().kid, Some(kid));
    }

    #[test]
    fn keys_that_are_not_p256_or_rsa_are_refused_with_what_is_accepted() {
        let p384 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let Err(AssertionError::BadKey(why)) = parse_private_key(&pem_of(p384.as_ref()), 0) else {
            panic!("a P-384 key was accepted");
        };
        assert!(why.contains("neither a P-256 key nor an RSA key"), "{why}");
    }
}
