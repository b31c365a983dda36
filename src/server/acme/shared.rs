//! Several processes on one database: one certificate for all of them.
//!
//! Every replica serves the certificate stored in the database and looks at it again when it
//! is due for renewal (a third of its lifetime before expiry) and every [`LOOK_AGAIN`]. When it
//! is missing or due, a replica waits for the database's certificate lock ([`lock_name`]): one
//! orders at a time, the others queue behind it and, when their turn comes, find the new
//! certificate stored and order nothing. The order itself uses rustls-acme's ACME protocol
//! module; its answers go to the store ([`super::answers`]) because the CA's validation may
//! reach any replica. A failed order leaves a pause in the store, doubling with each failure,
//! that every replica honours, so N replicas do not make N failed attempts in a row.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls_acme::acme::{
    Account, AcmeError, AuthStatus, Challenge as Offered, ChallengeType, Directory, Identifier,
    OrderStatus,
};
use rustls_acme::{AccountCache, CertCache};

use super::answers::{Answers, Challenge};
use super::{Progress, StoreCache};
use crate::clock::UnixTime;
use crate::config::AcmeOptions;
use crate::server::tls::Swappable;
use crate::store::{AcmePauseRecord, StoreError};

/// How often a replica looks at the stored certificate between renewals, so that one another
/// replica replaced early is served everywhere within this.
const LOOK_AGAIN: Duration = Duration::from_secs(600);

/// After a failure that is not the CA's (the store was away): the next look.
const AFTER_STORE_FAILURE: Duration = Duration::from_secs(30);

/// The pause after the first failed order, doubled with each further one up to [`MAX_PAUSE`].
const FIRST_PAUSE_SECS: u64 = 10;
const MAX_PAUSE_SECS: u64 = 3600;

/// How often the state of an authorization or order is asked for before giving up, the
/// waits between doubling from one second (1 + 2 + … + 32 s).
const POLLS: u32 = 6;

/// The name of the database lock one replica orders under.
pub fn lock_name(host: &str) -> String {
    format!("mcp-auth-proxy certificate {}", host.to_ascii_lowercase())
}

/// Why an order (or a look at the stored certificate) failed.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Acme(#[from] AcmeError),
    #[error("the certificate request could not be made: {0}")]
    Request(#[from] rcgen::Error),
    #[error("the CA's {what} ended as {state}")]
    Refused { what: &'static str, state: String },
    #[error("the CA's {what} was still not done after {POLLS} looks")]
    TooSlow { what: &'static str },
    #[error("the CA offered no {0} challenge")]
    NoChallenge(&'static str),
    #[error("the issued certificate cannot be used: {0}")]
    Unusable(#[from] CertificateError),
}

/// A stored certificate that cannot be served.
#[derive(Debug, thiserror::Error)]
enum CertificateError {
    #[error("{0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("no certificate in it")]
    Empty,
    #[error("its key: {0}")]
    Key(#[from] rustls::Error),
    #[error("its validity cannot be read")]
    Validity,
}

/// The stored certificate, ready to serve.
struct Stored {
    pair: CertifiedKey,
    not_before: i64,
    not_after: i64,
}

impl Stored {
    /// The key (PKCS#8) then the chain, as rustls-acme's cache entry holds them.
    fn parse(pem: &[u8]) -> Result<Self, CertificateError> {
        let key = PrivateKeyDer::from_pem_slice(pem)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>()?;
        let leaf = chain.first().ok_or(CertificateError::Empty)?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|_| CertificateError::Validity)?;
        let validity = parsed.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(key)?;
        Ok(Self {
            pair: CertifiedKey::new(chain, signing),
            not_before,
            not_after,
        })
    }

    /// When to renew: a third of the lifetime before expiry (Let's Encrypt's advice).
    fn renew_at(&self) -> i64 {
        self.not_after - (self.not_after - self.not_before) / 3
    }
}

pub(super) struct Shared {
    /// The certificate's first name (logs, the lock).
    host: String,
    /// All of its names.
    names: Vec<String>,
    directory: String,
    contact: Vec<String>,
    http01: bool,
    client: Arc<rustls::ClientConfig>,
    cache: StoreCache,
    answers: Arc<Answers>,
    served: Arc<Swappable>,
}

impl Shared {
    pub(super) fn new(
        opts: &AcmeOptions,
        client: Arc<rustls::ClientConfig>,
        cache: StoreCache,
        answers: Arc<Answers>,
    ) -> Self {
        Self {
            host: opts.host.clone(),
            names: opts.names(),
            directory: opts.directory_url.clone(),
            contact: opts.contact.iter().map(|c| format!("mailto:{c}")).collect(),
            http01: opts.http01,
            client,
            cache,
            answers,
            served: Arc::new(Swappable::default()),
        }
    }

    pub(super) fn resolver(&self) -> Arc<Swappable> {
        self.served.clone()
    }

    pub(super) async fn run(
        self,
        progress: Progress,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        tracing::info!(host = %self.host, "certificate: shared by the replicas on this database; looking for the stored one");
        loop {
            let next = tokio::select! {
                next = self.step(&progress) => next,
                _ = stop.changed() => return,
            };
            let wait = next.unwrap_or_else(|e| {
                progress.count("error");
                tracing::warn!(host = %self.host, error = %e, "certificate: cannot look at the stored one; trying again shortly");
                AFTER_STORE_FAILURE
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn now(&self) -> UnixTime {
        self.cache.0.clock().now()
    }

    /// Serves the stored certificate; orders one under the lock when it is missing or due.
    /// Returns how long to wait before the next look.
    async fn step(&self, progress: &Progress) -> Result<Duration, OrderError> {
        if let Some(wait) = self.serve_stored(progress).await? {
            return Ok(wait);
        }
        tracing::info!(host = %self.host, "certificate: missing or due; waiting for the database's certificate lock (one replica orders at a time)");
        let _lock = self.cache.0.exclusive(&lock_name(&self.host)).await?;
        // Whoever held the lock before may have just stored a new one.
        if let Some(wait) = self.serve_stored(progress).await? {
            return Ok(wait);
        }
        let pause_key = format!("pause/{}", self.host);
        let failures = match self
            .cache
            .0
            .get::<AcmePauseRecord>(pause_key.as_bytes())
            .await?
        {
            Some(p) if p.retry_at > self.now() => {
                let wait = p.retry_at - self.now();
                tracing::info!(host = %self.host, retry_in_secs = wait, "certificate: an order failed recently; waiting before the next");
                return Ok(Duration::from_secs(wait));
            }
            Some(p) => p.failures,
            None => 0,
        };
        tracing::info!(host = %self.host, "certificate: ordering (this replica holds the lock)");
        match self.order().await {
            Ok(pem) => {
                let stored = Stored::parse(&pem)?;
                self.cache
                    .store_cert(&self.names, &self.directory, &pem)
                    .await?;
                self.cache
                    .0
                    .remove::<AcmePauseRecord>(pause_key.as_bytes())
                    .await?;
                progress.count("issued");
                progress.count("stored");
                let expires = crate::server::tls::pem_not_after(&pem).unwrap_or_default();
                self.served.swap(stored.pair);
                progress.ready.set();
                tracing::info!(host = %self.host, expires, "certificate: ready (newly issued, stored for every replica)");
                Ok(Duration::ZERO)
            }
            Err(e) => {
                let failures = failures.saturating_add(1);
                let pause = FIRST_PAUSE_SECS
                    .saturating_mul(1u64 << (failures - 1).min(20))
                    .min(MAX_PAUSE_SECS);
                let retry_at = self.now() + pause;
                let record = AcmePauseRecord { failures, retry_at };
                // Kept a day past the pause, so the count survives a quick retry.
                self.cache
                    .0
                    .put(pause_key.as_bytes(), &record, Some(retry_at + 86_400))
                    .await?;
                progress.count("error");
                tracing::warn!(host = %self.host, error = %e, retry_in_secs = pause, "certificate: the order failed; every replica waits before the next");
                Ok(Duration::from_secs(pause))
            }
        }
    }

    /// Serves the stored certificate if there is a usable one. `None` when there is none or
    /// it is due for renewal; otherwise how long until it is (at most [`LOOK_AGAIN`]).
    async fn serve_stored(&self, progress: &Progress) -> Result<Option<Duration>, OrderError> {
        let Some(pem) = self.cache.load_cert(&self.names, &self.directory).await? else {
            return Ok(None);
        };
        let stored = match Stored::parse(&pem) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "certificate: the stored one cannot be used; ordering another");
                return Ok(None);
            }
        };
        let renew_at = stored.renew_at();
        if self.served.current_leaf().as_ref() != stored.pair.cert.first() {
            let expires = crate::server::tls::pem_not_after(&pem).unwrap_or_default();
            self.served.swap(stored.pair);
            progress.ready.set();
            progress.count("cached");
            tracing::info!(host = %self.host, expires, "certificate: the stored one in use");
        }
        let left = u64::try_from(renew_at)
            .unwrap_or(0)
            .saturating_sub(self.now());
        Ok((left > 0).then(|| Duration::from_secs(left).min(LOOK_AGAIN)))
    }

    /// The account key in the store, made and stored on first use.
    async fn account_key(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(key) = self
            .cache
            .load_account(&self.contact, &self.directory)
            .await?
        {
            return Ok(key);
        }
        let key = Account::generate_key_pair();
        self.cache
            .store_account(&self.contact, &self.directory, &key)
            .await?;
        Ok(key)
    }

    /// One order, from the new order to the downloaded chain (RFC 8555 section 7.4). Returns
    /// the certificate's key and chain as one PEM text.
    async fn order(&self) -> Result<Vec<u8>, OrderError> {
        let client = &self.client;
        let directory = Directory::discover(client, &self.directory).await?;
        let key = self.account_key().await?;
        let account = Account::create_with_keypair(client, directory, &self.contact, &key).await?;
        let mut params = rcgen::CertificateParams::new(self.names.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = params.serialize_request(&cert_key)?;

        let (url, mut order) = account.new_order(client, self.names.clone()).await?;
        let mut looks = 0;
        loop {
            order = match order.status {
                OrderStatus::Pending => {
                    for authorization in &order.authorizations {
                        self.authorize(&account, authorization).await?;
                    }
                    account.order(client, &url).await?
                }
                OrderStatus::Ready => account.finalize(client, &order.finalize, csr.der()).await?,
                OrderStatus::Processing => {
                    if looks == POLLS {
                        return Err(OrderError::TooSlow { what: "order" });
                    }
                    tokio::time::sleep(Duration::from_secs(1 << looks)).await;
                    looks += 1;
                    account.order(client, &url).await?
                }
                OrderStatus::Valid { certificate } => {
                    let chain = account.certificate(client, certificate).await?;
                    return Ok(format!("{}\n{chain}", cert_key.serialize_pem()).into_bytes());
                }
                OrderStatus::Invalid => {
                    return Err(OrderError::Refused {
                        what: "order",
                        state: format!("invalid: {:?}", order.error),
                    });
                }
            };
        }
    }

    /// Answers one authorization's challenge through the store and waits for the CA's verdict.
    async fn authorize(&self, account: &Account, url: &str) -> Result<(), OrderError> {
        let client = &self.client;
        let auth = account.auth(client, url).await?;
        match auth.status {
            AuthStatus::Valid => return Ok(()),
            AuthStatus::Pending => {}
            other => {
                return Err(OrderError::Refused {
                    what: "authorization",
                    state: format!("{other:?}"),
                });
            }
        }
        let Identifier::Dns(name) = &auth.identifier;
        let (challenge, offered_url, key_authorization) = if self.http01 {
            let (offered, key_authorization) = account.http_01(&auth.challenges)?;
            let token = offered.token.as_str();
            (Challenge::Http01 { token }, &offered.url, key_authorization)
        } else {
            let offered = auth
                .challenges
                .iter()
                .find(|c| c.typ == ChallengeType::TlsAlpn01)
                .ok_or(OrderError::NoChallenge("tls-alpn-01"))?;
            let key_authorization = key_authorization(account, &offered.token)?;
            (
                Challenge::TlsAlpn01 { name },
                &offered.url,
                key_authorization,
            )
        };
        // Published (and on disk) before the CA is told to look, so any replica can answer.
        self.answers.publish(&challenge, key_authorization).await?;
        let verdict = self.await_verdict(account, url, offered_url).await;
        if let Err(e) = self.answers.withdraw(&challenge).await {
            tracing::debug!(error = %e, "a challenge answer stays until it expires");
        }
        verdict
    }

    async fn await_verdict(
        &self,
        account: &Account,
        url: &str,
        offered_url: &str,
    ) -> Result<(), OrderError> {
        let client = &self.client;
        account.challenge(client, offered_url).await?;
        for look in 0..POLLS {
            tokio::time::sleep(Duration::from_secs(1 << look)).await;
            match account.auth(client, url).await?.status {
                AuthStatus::Valid => return Ok(()),
                AuthStatus::Pending => continue,
                other => {
                    return Err(OrderError::Refused {
                        what: "authorization",
                        state: format!("{other:?}"),
                    });
                }
            }
        }
        Err(OrderError::TooSlow {
            what: "authorization",
        })
    }
}

/// The key authorization of `token` (RFC 8555 section 8.1: the token and the account key's
/// thumbprint, the same for every challenge type). rustls-acme computes it publicly only for
/// HTTP-01, so the TLS-ALPN-01 token is handed to that computation.
fn key_authorization(account: &Account, token: &str) -> Result<String, AcmeError> {
    let as_http01 = [Offered {
        typ: ChallengeType::Http01,
        url: String::new(),
        token: token.to_string(),
        error: None,
    }];
    Ok(account.http_01(&as_http01)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate valid for the 90 days of January to March 2026, as stored.
    fn pem_of_90_days() -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        let cert = params.self_signed(&key).unwrap();
        format!("{}\n{}", key.serialize_pem(), cert.pem()).into_bytes()
    }

    #[test]
    fn a_stored_certificate_is_renewed_a_third_before_expiry() {
        let stored = Stored::parse(&pem_of_90_days()).unwrap();
        let lifetime = stored.not_after - stored.not_before;
        assert_eq!(lifetime, 90 * 86_400);
        assert_eq!(stored.renew_at(), stored.not_before + 60 * 86_400);
    }

    #[test]
    fn a_stored_entry_without_a_certificate_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        assert!(matches!(
            Stored::parse(key.serialize_pem().as_bytes()),
            Err(CertificateError::Empty)
        ));
        assert!(Stored::parse(b"not pem").is_err());
    }
}
