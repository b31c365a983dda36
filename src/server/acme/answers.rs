//! Challenge answers kept in the shared store, so that the CA's validation can reach any
//! replica, not only the one that placed the order (a load balancer or DNS picks the one).
//!
//! The ordering replica publishes the key authorization (RFC 8555 section 8.1) before it asks
//! the CA to validate, and withdraws it afterwards. Every replica answers from the store:
//! - HTTP-01 (RFC 8555 section 8.3): `GET /.well-known/acme-challenge/{token}` on the plain
//!   listener returns the key authorization;
//! - TLS-ALPN-01 (RFC 8737): a handshake offering only `acme-tls/1` for our name gets a
//!   self-signed certificate carrying the key authorization's SHA-256, made for that handshake.
//!
//! Only our own name and well-formed tokens are looked up, so a stranger's probes cost no
//! store read.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::store::{AcmeAnswerRecord, Repo, StoreError};

/// The HTTP-01 route on the plain listener.
pub const HTTP01_PATH: &str = "/.well-known/acme-challenge/{token}";

/// How long a published answer may be read: an order that takes longer has failed.
const ANSWER_TTL_SECS: u64 = 3600;

/// The longest token looked up. RFC 8555 asks for at least 128 bits of entropy in base64url;
/// Let's Encrypt's are 43 characters.
const MAX_TOKEN_LEN: usize = 128;

/// The challenge an answer is for.
pub(super) enum Challenge<'a> {
    Http01 { token: &'a str },
    TlsAlpn01 { name: &'a str },
}

impl Challenge<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Challenge::Http01 { .. } => "http-01",
            Challenge::TlsAlpn01 { .. } => "tls-alpn-01",
        }
    }

    fn key(&self) -> Vec<u8> {
        match self {
            Challenge::Http01 { token } => format!("http-01/{token}").into_bytes(),
            Challenge::TlsAlpn01 { name } => {
                format!("tls-alpn-01/{}", name.to_ascii_lowercase()).into_bytes()
            }
        }
    }
}

/// The answers of this database's orders, for the certificate's names.
pub struct Answers {
    repo: Repo,
    names: Vec<String>,
}

impl Answers {
    pub fn new(repo: Repo, names: &[String]) -> Self {
        Self {
            repo,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Makes `key_authorization` the answer to `challenge` for every replica.
    pub(super) async fn publish(
        &self,
        challenge: &Challenge<'_>,
        key_authorization: String,
    ) -> Result<(), StoreError> {
        let expires = self.repo.clock().now() + ANSWER_TTL_SECS;
        self.repo
            .put(
                &challenge.key(),
                &AcmeAnswerRecord { key_authorization },
                Some(expires),
            )
            .await?;
        self.repo.flush().await
    }

    pub(super) async fn withdraw(&self, challenge: &Challenge<'_>) -> Result<(), StoreError> {
        self.repo
            .remove::<AcmeAnswerRecord>(&challenge.key())
            .await
            .map(drop)
    }

    /// The published answer, if any; a store failure is logged and answers nothing (the CA
    /// then fails the validation and the order is retried).
    async fn lookup(&self, challenge: &Challenge<'_>) -> Option<String> {
        match self.repo.get::<AcmeAnswerRecord>(&challenge.key()).await {
            Ok(found) => found.map(|a| a.key_authorization),
            Err(e) => {
                tracing::warn!(error = %e, "an ACME validation arrived but the store cannot be read");
                None
            }
        }
    }

    /// The plain listener's HTTP-01 route.
    pub fn http01_route(self: Arc<Self>) -> Router {
        Router::new()
            .route(HTTP01_PATH, axum::routing::get(http01))
            .with_state(self)
    }

    /// The server configuration for a TLS-ALPN-01 validation of `server_name`, when an
    /// answer for it is published.
    pub async fn tls_alpn01_config(
        &self,
        server_name: Option<&str>,
    ) -> Option<Arc<rustls::ServerConfig>> {
        let name = server_name.filter(|n| self.names.iter().any(|h| n.eq_ignore_ascii_case(h)))?;
        let challenge = Challenge::TlsAlpn01 { name };
        let key_authorization = self.lookup(&challenge).await?;
        match validation_config(name, &key_authorization) {
            Ok(config) => {
                answered(&challenge);
                Some(Arc::new(config))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not make the TLS-ALPN-01 certificate");
                None
            }
        }
    }
}

fn answered(challenge: &Challenge<'_>) {
    tracing::info!(
        challenge = challenge.kind(),
        "certificate: answered the CA's validation"
    );
}

/// `GET /.well-known/acme-challenge/{token}`.
async fn http01(State(answers): State<Arc<Answers>>, Path(token): Path<String>) -> Response {
    let well_formed = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return StatusCode::NOT_FOUND.into_response();
    }
    let challenge = Challenge::Http01 { token: &token };
    match answers.lookup(&challenge).await {
        Some(answer) => {
            answered(&challenge);
            ([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Why the validation certificate could not be made.
#[derive(Debug, thiserror::Error)]
enum ValidationCertError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate of [`validation_config`] and its key.
fn validation_cert(
    name: &str,
    key_authorization: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

/// RFC 8737 section 3: a self-signed certificate for `name` whose critical acmeIdentifier
/// extension holds the SHA-256 of the key authorization, offered with ALPN `acme-tls/1` only.
fn validation_config(
    name: &str,
    key_authorization: &str,
) -> Result<rustls::ServerConfig, ValidationCertError> {
    let (cert, key) = validation_cert(name, key_authorization)?;
    // Through a resolver, not `with_single_cert`: that one checks the certificate as a peer
    // would, and refuses the critical acmeIdentifier extension it does not know.
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)?;
    let pair = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing));
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(pair)));
    config.alpn_protocols = vec![rustls_acme::acme::ACME_TLS_ALPN_NAME.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validation_certificate_carries_the_digest_of_the_key_authorization() {
        let (der, _) = validation_cert("a.example", "tok.thumb").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        // id-pe-acmeIdentifier, critical, an OCTET STRING (0x04, 32 bytes) of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        let mut expected = vec![0x04, 32];
        expected.extend_from_slice(&Sha256::digest(b"tok.thumb"));
        assert_eq!(ext.value, expected.as_slice());
        let config = validation_config("a.example", "tok.thumb").unwrap();
        assert_eq!(config.alpn_protocols, vec![b"acme-tls/1".to_vec()]);
    }

    #[test]
    fn answers_are_keyed_by_challenge_type() {
        assert_eq!(Challenge::Http01 { token: "abc" }.key(), b"http-01/abc");
        assert_eq!(
            Challenge::TlsAlpn01 { name: "A.Example" }.key(),
            b"tls-alpn-01/a.example"
        );
    }
}
