//! DPoP proofs (RFC 9449; MCP SEP-1932): a client proves, on every token request and every
//! request to the resource, that it holds the private key its tokens are bound to, so that a
//! token that leaks is worthless without the key.
//!
//! A proof is a JWT signed with that key, which it carries in its header. [`check`] reads one
//! as RFC 9449 §4.3 says (one proof, `typ`, an asymmetric `alg` we verify, a public key, the
//! signature, `htm`, `htu`, a recent `iat`, and `ath` when a token comes with it); its `jti`
//! is then accepted once by [`accept_once`], through the store, so that a proof replayed at
//! another replica on the same database is refused too.

use axum::http::HeaderMap;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::UnixTime;
use crate::single_header;
use crate::store::{DpopProofRecord, Repo, SecretBox, StoreError};

/// The signing algorithms of the proofs we verify (all asymmetric: RFC 9449 §11.6), as the
/// metadata's `dpop_signing_alg_values_supported` names them.
pub const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// [`ALGORITHMS`] by their JWA names (RFC 7518), as metadata names them.
pub fn algorithm_names() -> Vec<String> {
    ALGORITHMS
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok()?.as_str().map(str::to_string))
        .collect()
}

/// The longest proof read (a proof with a 4096-bit RSA key is about 1.5 KB).
pub const MAX_PROOF: usize = 8 * 1024;

/// How old a proof may be, and how far ahead of our clock its `iat` may lie (RFC 9449 §11.1:
/// a short window; clocks of clients drift).
pub const MAX_AGE: UnixTime = 60;
pub const MAX_AHEAD: UnixTime = 5;

/// The longest `jti` taken (RFC 9449 §4.2 asks for 96 bits of randomness: a few dozen
/// characters).
const MAX_JTI: usize = 256;

/// Why a proof is refused: the `error_description` of `invalid_dpop_proof`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("a DPoP-bound token needs a DPoP proof")]
    Missing,
    #[error(
        "the front proxy did not say which request the DPoP proof is for (X-Forwarded-Method, X-Forwarded-Uri)"
    )]
    NoTarget,
    #[error("more than one DPoP header")]
    Repeated,
    #[error("the DPoP proof is longer than {MAX_PROOF} bytes")]
    TooLong,
    #[error("the DPoP proof is not a JWT of type dpop+jwt")]
    NotAProof,
    #[error("the DPoP proof's algorithm is not one this server verifies")]
    Algorithm,
    #[error("the DPoP proof must carry one public key (jwk), and no private key")]
    Key,
    #[error("the DPoP proof's signature does not verify with its key")]
    Signature,
    #[error("the DPoP proof lacks a claim it must carry, or carries one of the wrong type")]
    Claims,
    #[error("the DPoP proof is for another HTTP method")]
    Method,
    #[error("the DPoP proof is for another URL")]
    Url,
    #[error("the DPoP proof is too old, or from the future")]
    Time,
    #[error("the DPoP proof's ath is not the hash of the access token sent with it")]
    TokenHash,
    #[error("the DPoP proof was already used")]
    Replayed,
    #[error("the DPoP proof's key is not the one the token is bound to")]
    WrongKey,
    /// `use_dpop_nonce` (RFC 9449 §8, §9): a proof needs a fresh nonce of ours.
    #[error("the DPoP proof must carry a fresh nonce from this server (DPoP-Nonce)")]
    UseNonce,
}

impl ProofError {
    /// The OAuth error code (RFC 9449 §5, §7.1).
    pub fn code(&self) -> &'static str {
        match self {
            ProofError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// How long a nonce this server issued is accepted (`--dpop-nonces`).
pub const NONCE_TTL: UnixTime = 300;

/// What the store's key seals a nonce's time under.
const NONCE_AAD: &[u8] = b"mcp-auth-proxy dpop-nonce";

/// A fresh server nonce (RFC 9449 §8): the time, sealed with the store's key, so that every
/// process that shares the key can check it and nobody else can make one.
fn issue_nonce(key: &SecretBox, now: UnixTime) -> Option<String> {
    let sealed = key.seal(NONCE_AAD, &now.to_be_bytes()).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

/// Whether `nonce` is one of ours, issued at most [`NONCE_TTL`] ago.
fn nonce_is_fresh(key: &SecretBox, nonce: &str, now: UnixTime) -> bool {
    let Ok(sealed) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
        return false;
    };
    let Ok(opened) = key.open(NONCE_AAD, &sealed) else {
        return false;
    };
    let Ok(time) = <[u8; 8]>::try_from(opened.as_slice()) else {
        return false;
    };
    let issued = UnixTime::from_be_bytes(time);
    issued <= now.saturating_add(MAX_AHEAD) && now.saturating_sub(issued) <= NONCE_TTL
}

/// With `--dpop-nonces`: `proof` carries a fresh nonce of ours, or the fresh one to send.
fn require_nonce(key: &SecretBox, proof: &Proof, now: UnixTime) -> Result<(), Option<String>> {
    match &proof.nonce {
        Some(n) if nonce_is_fresh(key, n, now) => Ok(()),
        _ => Err(issue_nonce(key, now)),
    }
}

/// What a verified proof says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The key's JWK SHA-256 thumbprint (RFC 7638), base64url: what tokens are bound to.
    pub jkt: String,
    pub jti: String,
    pub iat: UnixTime,
    /// The server nonce it carries (RFC 9449 §8).
    pub nonce: Option<String>,
}

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The URL the client used, as the public origin names it (query and fragment are ignored).
    pub url: &'a str,
    /// The access token sent with the proof, whose hash the proof must carry (`ath`).
    pub access_token: Option<&'a str>,
    /// The key (thumbprint) that token is bound to, which must have made the proof.
    pub key: Option<&'a str>,
    pub now: UnixTime,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: UnixTime,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// The one `DPoP` header's value; `None` without one. Two are refused: which one a reader
/// takes is not ours to guess.
pub fn proof_header(headers: &HeaderMap) -> Result<Option<&str>, ProofError> {
    let Some(first) = single_header::value(headers, "dpop").map_err(|_| ProofError::Repeated)?
    else {
        return Ok(None);
    };
    if first.len() > MAX_PROOF {
        return Err(ProofError::TooLong);
    }
    first.to_str().map(Some).map_err(|_| ProofError::NotAProof)
}

/// Checks a proof against the request it came with (everything but the `jti`'s first use:
/// [`accept_once`]).
pub fn check(proof: &str, expected: &Expected<'_>) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF {
        return Err(ProofError::TooLong);
    }
    let header = jsonwebtoken::decode_header(proof).map_err(|_| ProofError::NotAProof)?;
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(ProofError::NotAProof);
    }
    if !ALGORITHMS.contains(&header.alg) {
        return Err(ProofError::Algorithm);
    }
    let jwk = header.jwk.as_ref().ok_or(ProofError::Key)?;
    if carries_private_key(proof)
        || !matches!(
            jwk.algorithm,
            AlgorithmParameters::EllipticCurve(_) | AlgorithmParameters::RSA(_)
        )
    {
        return Err(ProofError::Key);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| ProofError::Key)?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(proof, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => ProofError::Signature,
            jsonwebtoken::errors::ErrorKind::Json(_) => ProofError::Claims,
            _ => ProofError::NotAProof,
        })?
        .claims;
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI {
        return Err(ProofError::Claims);
    }
    if claims.htm != expected.method {
        return Err(ProofError::Method);
    }
    if !same_target(&claims.htu, expected.url) {
        return Err(ProofError::Url);
    }
    let fresh = claims.iat <= expected.now.saturating_add(MAX_AHEAD)
        && claims.iat.saturating_add(MAX_AGE) >= expected.now;
    if !fresh {
        return Err(ProofError::Time);
    }
    if let Some(token) = expected.access_token {
        let wanted = token_hash(token);
        let sent = claims.ath.as_deref().unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(wanted.as_bytes())) {
            return Err(ProofError::TokenHash);
        }
    }
    let jkt = thumbprint(jwk)?;
    if expected.key.is_some_and(|bound| bound != jkt) {
        return Err(ProofError::WrongKey);
    }
    Ok(Proof {
        jkt,
        jti: claims.jti,
        iat: claims.iat,
        nonce: claims.nonce,
    })
}

/// The whole check of one proof, as every endpoint makes it: [`check`], then (with
/// `--dpop-nonces`) a fresh nonce of ours, then the `jti`'s first use on every process that
/// shares the store.
pub async fn verify(
    repo: &Repo,
    proof: &str,
    expected: &Expected<'_>,
    nonces: bool,
) -> Result<Proof, Refusal> {
    let proof = check(proof, expected).map_err(Refusal::Proof)?;
    if nonces {
        require_nonce(&repo.keys().sealer, &proof, expected.now).map_err(Refusal::UseNonce)?;
    }
    accept_once(repo, &proof).await?;
    Ok(proof)
}

/// Accepts `proof`'s `jti` for its key once within the proofs' window, on every process that
/// shares the store.
async fn accept_once(repo: &Repo, proof: &Proof) -> Result<(), Refusal> {
    let mut h = Sha256::new();
    h.update(proof.jkt.as_bytes());
    h.update([0]);
    h.update(proof.jti.as_bytes());
    let key = h.finalize();
    // Kept until no proof of that time can pass the window any more.
    let until = proof.iat.saturating_add(MAX_AGE + MAX_AHEAD + 1);
    let first = repo
        .create(&key, &DpopProofRecord { seen_at: proof.iat }, Some(until))
        .await
        .map_err(Refusal::Store)?;
    if first {
        Ok(())
    } else {
        Err(Refusal::Proof(ProofError::Replayed))
    }
}

/// Why a proof was not taken.
#[derive(Debug)]
pub enum Refusal {
    Proof(ProofError),
    /// `--dpop-nonces` and no fresh nonce of ours: the one to retry with.
    UseNonce(Option<String>),
    /// The store failed: fail closed.
    Store(StoreError),
}

/// `DPoP` for a token bound to a key, `Bearer` otherwise (the `token_type` of RFC 9449 §5
/// and of introspection).
pub fn token_type(bound: bool) -> &'static str {
    if bound { "DPoP" } else { "Bearer" }
}

/// `ath`: the base64url SHA-256 of an access token (RFC 9449 §4.2).
pub fn token_hash(token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The key's RFC 7638 thumbprint.
fn thumbprint(jwk: &Jwk) -> Result<String, ProofError> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError::Key)
}

/// Whether the proof's header key has private members (RFC 9449 §4.3: it must not).
fn carries_private_key(proof: &str) -> bool {
    let header = proof.split('.').next().unwrap_or_default();
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return true;
    };
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return true;
    };
    let jwk = header.get("jwk");
    ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|private| jwk.and_then(|k| k.get(private)).is_some())
}

/// Whether `htu` names `url`, compared as RFC 9449 §4.3 says: without query and fragment,
/// after the syntax- and scheme-based normalisation of RFC 3986 §6.2.2-6.2.3 (case of scheme
/// and host, default port, dot segments, an empty path being `/`).
pub fn same_target(htu: &str, url: &str) -> bool {
    let (Ok(a), Ok(b)) = (url::Url::parse(htu), url::Url::parse(url)) else {
        return false;
    };
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path() == b.path()
        && a.username().is_empty()
        && a.password().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    const URL: &str = "https://mcp.example.com/mcp";
    const NOW: UnixTime = 1_800_000_000;

    /// A client's P-256 key: what signs, and the public JWK a proof carries.
    struct Key {
        signing: EncodingKey,
        jwk: Value,
    }

    fn key() -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Key {
            signing: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    /// A proof whose header is exactly `{"typ", "alg": "ES256", "jwk"}` as given, signed by `key`.
    fn proof_with(key: &Key, jwk: &Value, typ: &str, claims: &Value) -> String {
        let header = json!({"typ": typ, "alg": "ES256", "jwk": jwk});
        let message = format!("{}.{}", b64(&header.to_string()), b64(&claims.to_string()));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key.signing, Algorithm::ES256).unwrap();
        format!("{message}.{signature}")
    }

    fn claims(htm: &str, htu: &str, iat: UnixTime, ath: Option<&str>) -> Value {
        let mut c = json!({"jti": format!("jti-{iat}-{htm}"), "htm": htm, "htu": htu, "iat": iat});
        if let Some(ath) = ath {
            c["ath"] = json!(ath);
        }
        c
    }

    fn expected(token: Option<&'static str>) -> Expected<'static> {
        Expected {
            method: "POST",
            url: URL,
            access_token: token,
            key: None,
            now: NOW,
        }
    }

    #[test]
    fn a_proof_for_this_request_passes_and_names_its_key() {
        let k = key();
        let p = proof_with(&k, &k.jwk, "dpop+jwt", &claims("POST", URL, NOW, None));
        let proof = check(&p, &expected(None)).unwrap();
        let jwk: Jwk = serde_json::from_value(k.jwk.clone()).unwrap();
        assert_eq!(proof.jkt, jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        assert_eq!(proof.iat, NOW);
        // The URL is compared normalised, without query or fragment.
        let p = proof_with(
            &k,
            &k.jwk,
            "dpop+jwt",
            &claims("POST", "HTTPS://MCP.example.com:443/mcp?x=1#f", NOW, None),
        );
        assert!(check(&p, &expected(None)).is_ok());
        // With a token: its hash.
        let ath = token_hash("the-token");
        let p = proof_with(
            &k,
            &k.jwk,
            "dpop+jwt",
            &claims("POST", URL, NOW, Some(&ath)),
        );
        assert!(check(&p, &expected(Some("the-token"))).is_ok());
    }

    #[test]
    fn a_proof_for_anything_else_is_refused_with_the_reason() {
        let k = key();
        let refused = |c: Value| {
            check(
                &proof_with(&k, &k.jwk, "dpop+jwt", &c),
                &expected(Some("t")),
            )
            .unwrap_err()
        };
        let ath = token_hash("t");
        assert_eq!(
            refused(claims("GET", URL, NOW, Some(&ath))),
            ProofError::Method
        );
        assert_eq!(
            refused(claims(
                "POST",
                "https://mcp.example.com/other",
                NOW,
                Some(&ath)
            )),
            ProofError::Url
        );
        assert_eq!(
            refused(claims(
                "POST",
                "https://evil.example.com/mcp",
                NOW,
                Some(&ath)
            )),
            ProofError::Url
        );
        assert_eq!(
            refused(claims("POST", URL, NOW - MAX_AGE - 1, Some(&ath))),
            ProofError::Time
        );
        assert_eq!(
            refused(claims("POST", URL, NOW + MAX_AHEAD + 1, Some(&ath))),
            ProofError::Time
        );
        assert_eq!(
            refused(claims("POST", URL, NOW, None)),
            ProofError::TokenHash
        );
        assert_eq!(
            refused(claims("POST", URL, NOW, Some(&token_hash("other")))),
            ProofError::TokenHash
        );
        assert_eq!(
            refused(json!({"htm": "POST", "htu": URL, "iat": NOW, "ath": ath})),
            ProofError::Claims
        );
        assert_eq!(
            refused(json!({"jti": "x", "htm": "POST", "htu": URL, "iat": "now", "ath": ath})),
            ProofError::Claims
        );
    }

    #[test]
    fn the_key_must_be_public_and_the_one_that_signed() {
        let (k, other) = (key(), key());
        let c = claims("POST", URL, NOW, None);
        // Signed by another key than the one it carries.
        assert_eq!(
            check(&proof_with(&other, &k.jwk, "dpop+jwt", &c), &expected(None)),
            Err(ProofError::Signature)
        );
        // A private member in the key.
        let mut private = k.jwk.clone();
        private["d"] = json!("AAAA");
        assert_eq!(
            check(&proof_with(&k, &private, "dpop+jwt", &c), &expected(None)),
            Err(ProofError::Key)
        );
        // Another type of JWT.
        assert_eq!(
            check(&proof_with(&k, &k.jwk, "JWT", &c), &expected(None)),
            Err(ProofError::NotAProof)
        );
        // A symmetric algorithm, whatever it carries.
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(serde_json::from_value(k.jwk.clone()).unwrap());
        let hs = jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(b"shared")).unwrap();
        assert_eq!(check(&hs, &expected(None)), Err(ProofError::Algorithm));
        // No key at all.
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        let keyless = jsonwebtoken::encode(&header, &c, &k.signing).unwrap();
        assert_eq!(check(&keyless, &expected(None)), Err(ProofError::Key));
    }

    #[test]
    fn one_header_is_read_and_a_long_one_is_not() {
        let mut h = HeaderMap::new();
        assert_eq!(proof_header(&h), Ok(None));
        h.append("dpop", "a.b.c".parse().unwrap());
        assert_eq!(proof_header(&h), Ok(Some("a.b.c")));
        h.append("dpop", "d.e.f".parse().unwrap());
        assert_eq!(proof_header(&h), Err(ProofError::Repeated));
        let mut h = HeaderMap::new();
        h.append("dpop", "a".repeat(MAX_PROOF + 1).parse().unwrap());
        assert_eq!(proof_header(&h), Err(ProofError::TooLong));
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn anything_that_is_not_a_proof_is_refused_never_a_panic(text in ".{0,300}") {
            prop_assert!(check(&text, &expected(None)).is_err());
        }

        #[test]
        fn malformed_headers_and_claims_are_refused(
            header in prop_oneof![
                Just(json!({"typ": "dpop+jwt", "alg": "ES256"})),
                Just(json!({"typ": "dpop+jwt", "alg": "none", "jwk": {"kty": "EC"}})),
                Just(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": "AAAA"}})),
                Just(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": "a string"})),
                Just(json!({"typ": 7, "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}})),
                Just(json!(["not", "an", "object"])),
            ],
            claims in prop_oneof![
                Just(json!({"jti": "x", "htm": "POST", "htu": URL, "iat": NOW})),
                Just(json!({"jti": 1, "htm": [], "htu": {}, "iat": -1})),
                Just(json!(null)),
            ],
            signature in "[A-Za-z0-9_-]{0,90}",
        ) {
            let text = format!("{}.{}.{signature}", b64(&header.to_string()), b64(&claims.to_string()));
            prop_assert!(check(&text, &expected(None)).is_err());
        }

        #[test]
        fn huge_proofs_are_refused_before_they_are_read(n in MAX_PROOF + 1..MAX_PROOF * 4) {
            let text = format!("{}.{}.sig", b64(&"x".repeat(n)), b64("{}"));
            prop_assert_eq!(check(&text, &expected(None)), Err(ProofError::TooLong));
        }
    }

    #[test]
    fn a_nonce_is_ours_for_five_minutes() {
        let key = crate::store::Keys::ephemeral().sealer;
        let nonce = issue_nonce(&key, NOW).unwrap();
        assert!(nonce_is_fresh(&key, &nonce, NOW));
        assert!(nonce_is_fresh(&key, &nonce, NOW + NONCE_TTL));
        assert!(!nonce_is_fresh(&key, &nonce, NOW + NONCE_TTL + 1));
        assert!(!nonce_is_fresh(&key, &nonce, NOW - MAX_AHEAD - 1));
        let other = crate::store::Keys::ephemeral().sealer;
        assert!(!nonce_is_fresh(&other, &nonce, NOW), "another store's key");
        assert!(!nonce_is_fresh(&key, "made-up", NOW));
    }

    #[tokio::test]
    async fn a_proof_is_accepted_once_per_key() {
        use crate::clock::Clock;
        use crate::store::Keys;
        use crate::store::sled::SledStore;
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(
            std::sync::Arc::new(SledStore::open(dir.path()).unwrap()),
            Keys::ephemeral(),
            Clock::manual(NOW),
        );
        let proof = Proof {
            jkt: "key-a".into(),
            jti: "j1".into(),
            iat: NOW,
            nonce: None,
        };
        assert!(accept_once(&repo, &proof).await.is_ok());
        assert!(matches!(
            accept_once(&repo, &proof).await,
            Err(Refusal::Proof(ProofError::Replayed))
        ));
        // The same jti from another key is another proof.
        let other = Proof {
            jkt: "key-b".into(),
            ..proof
        };
        assert!(accept_once(&repo, &other).await.is_ok());
    }
}
