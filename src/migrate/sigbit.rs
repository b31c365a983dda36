//! From sigbit/mcp-auth-proxy's data directory. It holds:
//!
//! - `private_key.pem`: its RSA signing key (PKCS#8). Brought over as our assertion signing
//!   key, under the key id sigbit published, so a verifier of sigbit's JWKS keeps working.
//! - `certs/`: Go's `autocert.DirCache`. A file named after a domain holds the certificate's
//!   ECDSA key (`EC PRIVATE KEY`, SEC 1) and then its chain. Brought over into our certificate
//!   cache, so the proxy serves it at once and places no ACME order until renewal is due.
//!   `acme_account+key` (the ACME account) and `<domain>+rsa` (an RSA certificate, which our
//!   ACME client does not serve) stay.
//! - `secret` (its cookie key) and `db` (a bbolt file with registered clients and tokens):
//!   not readable as ours. People sign in again; MCP clients register again on their own.

use std::path::Path;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_acme::CertCache;

use super::{MigrateError, Report, Unusable, read_bounded};
use crate::server::acme::StoreCache;
use crate::store::Repo;

/// The marker left in our store once a migration from sigbit ran.
const MIGRATED: &str = "migrated_from_sigbit";

/// The largest key or certificate file read.
const FILE_LIMIT: u64 = 256 * 1024;

/// At most this many files in `certs/` are looked at.
const MAX_CERT_FILES: usize = 1000;

/// Whether `dir` holds sigbit's files.
pub fn looks_like_sigbit(dir: &Path) -> bool {
    dir.join("private_key.pem").is_file() || dir.join("certs").is_dir()
}

/// Whether a migration from sigbit already ran into this store.
pub async fn migrated(repo: &Repo) -> Result<bool, crate::store::StoreError> {
    Ok(repo.get_secret(MIGRATED).await?.is_some())
}

/// What to bring and where.
pub struct Plan<'a> {
    /// sigbit's data directory.
    pub from: &'a Path,
    /// The ACME directory the proxy will use (`--tls-directory-url`): our cache is per
    /// directory.
    pub acme_directory: &'a str,
    /// The external URL's host, when given: the one certificate the proxy will serve.
    pub host: Option<&'a str>,
}

pub async fn migrate(plan: &Plan<'_>, repo: &Repo) -> Result<Report, MigrateError> {
    if !looks_like_sigbit(plan.from) {
        return Err(MigrateError::Source {
            path: plan.from.to_path_buf(),
            why: Unusable::NotSigbit,
        });
    }
    let mut report = Report::default();
    signing_key(plan.from, repo, &mut report).await?;
    certificates(plan, repo, &mut report).await?;
    if plan.from.join("secret").exists() {
        report.left.push(
            "secret (sigbit's cookie key): people signed in in a browser sign in again".into(),
        );
    }
    if plan.from.join("db").exists() {
        report.left.push(
            "db (sigbit's registered clients and tokens): MCP clients register again by themselves at their next request; nothing to do".into(),
        );
    }
    let now = repo.clock().now().to_string();
    repo.put_secret(MIGRATED, now.as_bytes()).await?;
    repo.flush().await?;
    Ok(report)
}

async fn signing_key(dir: &Path, repo: &Repo, report: &mut Report) -> Result<(), MigrateError> {
    let path = dir.join("private_key.pem");
    if !path.is_file() {
        return Ok(());
    }
    let pem = zeroize::Zeroizing::new(read_bounded(&path, FILE_LIMIT)?);
    let text = std::str::from_utf8(&pem).map_err(|_| MigrateError::Source {
        path: path.clone(),
        why: Unusable::NotPem,
    })?;
    let key = crate::assertion::parse_private_key(text, repo.clock().now())?;
    let line = format!(
        "private_key.pem: the signing key ({:?}, key id {}); with --proxy-forward-authorization it signs the identity assertion sent upstream, published at /.well-known/jwks.json",
        key.alg(),
        key.kid()
    );
    crate::assertion::adopt(repo, key).await?;
    report.brought.push(line);
    Ok(())
}

async fn certificates(
    plan: &Plan<'_>,
    repo: &Repo,
    report: &mut Report,
) -> Result<(), MigrateError> {
    let dir = plan.from.join("certs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let cache = StoreCache(repo.clone());
    let mut served = false;
    for entry in entries.take(MAX_CERT_FILES).flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        if name == "acme_account+key" {
            report.left.push(
                "certs/acme_account+key (the ACME account): a new account is made when the certificate is renewed".into(),
            );
            continue;
        }
        if let Some(domain) = name.strip_suffix("+rsa") {
            report.left.push(format!(
                "certs/{name}: an RSA certificate for {domain}; the ECDSA one is served (or ordered)"
            ));
            continue;
        }
        if name.contains('+') {
            // autocert's other entries (challenge tokens) are of no use after the order.
            continue;
        }
        if plan.host.is_some_and(|h| !h.eq_ignore_ascii_case(&name)) {
            report.left.push(format!(
                "certs/{name}: not for the external URL's host, so it would never be served"
            ));
            continue;
        }
        let bytes = read_bounded(&path, FILE_LIMIT)?;
        let (pem, expires) = cache_entry(&bytes).map_err(MigrateError::source(&path))?;
        cache
            .store_cert(std::slice::from_ref(&name), plan.acme_directory, &pem)
            .await?;
        served = true;
        report.brought.push(format!(
            "certs/{name}: the certificate for {name} (valid until {expires}); served at once, renewed from {} when due",
            plan.acme_directory
        ));
    }
    if !served && let Some(host) = plan.host {
        report.left.push(format!(
            "no certificate for {host} was found: one is ordered at the first start"
        ));
    }
    Ok(())
}

/// autocert's file (a SEC 1 or PKCS#8 P-256 key, then the chain) as our cache's entry (the key
/// as PKCS#8, then the chain), with the leaf's expiry. An expired certificate is refused: it
/// would only be ordered again.
fn cache_entry(autocert: &[u8]) -> Result<(Vec<u8>, String), Unusable> {
    let key = PrivateKeyDer::from_pem_slice(autocert).map_err(Unusable::NoKey)?;
    let pair = match &key {
        PrivateKeyDer::Sec1(k) => EcdsaKeyPair::from_private_key_der(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            k.secret_sec1_der(),
        ),
        PrivateKeyDer::Pkcs8(k) => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der())
        }
        _ => return Err(Unusable::KeyKind),
    }
    .map_err(Unusable::KeyRejected)?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|_| Unusable::KeyEncoding)?;
    let chain = CertificateDer::pem_slice_iter(autocert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Unusable::CertificatePem)?;
    let leaf = chain.first().ok_or(Unusable::NoCertificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(Unusable::Certificate)?;
    if !parsed.validity().is_valid() {
        return Err(Unusable::NotValidNow {
            from: parsed.validity().not_before.to_string(),
            until: parsed.validity().not_after.to_string(),
        });
    }
    let expires = parsed.validity().not_after.to_string();
    let mut pem = pem_block("PRIVATE KEY", pkcs8.as_ref());
    for cert in &chain {
        pem.extend_from_slice(&pem_block("CERTIFICATE", cert));
    }
    Ok((pem, expires))
}

/// One PEM block (RFC 7468).
fn pem_block(label: &str, der: &[u8]) -> Vec<u8> {
    pem::encode(&pem::Pem::new(label, der)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str, sec1: bool) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let key_pem = if sec1 {
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
                    .unwrap();
            use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
            let der: EcPrivateKeyRfc5915Der = pair.private_key().as_der().unwrap();
            String::from_utf8(pem_block("EC PRIVATE KEY", der.as_ref())).unwrap()
        } else {
            key.serialize_pem()
        };
        format!("{key_pem}{}", cert.pem()).into_bytes()
    }

    #[test]
    fn an_autocert_file_becomes_a_cache_entry_rustls_acme_reads() {
        for sec1 in [true, false] {
            let (pem, expires) = cache_entry(&self_signed("mcp.example.com", sec1)).unwrap();
            assert!(!expires.is_empty());
            // What rustls-acme does with a cached entry: the first block a PKCS#8 ECDSA key.
            let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
            rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(key)).unwrap();
            assert_eq!(CertificateDer::pem_slice_iter(&pem).count(), 1);
        }
    }

    #[test]
    fn files_that_are_not_a_key_and_a_chain_are_refused_with_the_reason() {
        assert!(
            cache_entry(b"")
                .unwrap_err()
                .to_string()
                .contains("no private key")
        );
        let only_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(
            cache_entry(only_key.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
    }
}
