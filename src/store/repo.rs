//! The typed façade over a [`Store`]: versioned records, expiry judged by the clock, token
//! families, sealed secrets.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    Entry, Keys, Record, Revocation, SecretRecord, Store, StoreError, Table, TokenHash, TokenRecord,
};
use crate::clock::{Clock, UnixTime};

/// The proxy's handle on its state. Cheap to clone.
#[derive(Clone)]
pub struct Repo {
    pub(super) store: Arc<dyn Store>,
    /// The same records for the sweeps ([`Store::for_background`]).
    background: Arc<dyn Store>,
    keys: Keys,
    clock: Clock,
    /// Its window for older proxies on a shared store (`upgrade`).
    pub(super) window: super::upgrade::Window,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, R> {
    v: u32,
    d: &'a R,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    v: u32,
    d: serde_json::Value,
}

/// A record read together with the raw entry it came from, for compare-and-swap.
pub struct Versioned<R> {
    pub record: R,
    pub entry: Entry,
}

impl Repo {
    pub fn new(store: Arc<dyn Store>, keys: Keys, clock: Clock) -> Self {
        let window = super::upgrade::Window::opened_at(clock.now());
        let background = store.for_background().unwrap_or_else(|| store.clone());
        Self {
            store,
            background,
            keys,
            clock,
            window,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A read that must succeed for the store to be usable (readiness).
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.store
            .get(super::Table::Secrets, b"readiness-probe")
            .await
            .map(|_| ())
    }

    fn encode<R: Record>(record: &R, expires_at: Option<UnixTime>) -> Result<Entry, StoreError> {
        let value = serde_json::to_vec(&EnvelopeOut {
            v: R::VERSION,
            d: record,
        })?;
        Ok(Entry { expires_at, value })
    }

    /// Decodes a live entry; expired entries and unreadable records read as absent.
    fn decode<R: Record>(&self, entry: &Entry) -> Option<R> {
        if entry.expires_at.is_some_and(|exp| exp <= self.clock.now()) {
            return None;
        }
        let env: EnvelopeIn = match serde_json::from_slice(&entry.value) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(table = R::TABLE.name(), error = %e, "skipping a store record that does not parse");
                return None;
            }
        };
        let record = if env.v == R::VERSION {
            serde_json::from_value(env.d).ok()
        } else if env.v < R::VERSION {
            R::upgrade(env.v, env.d)
        } else {
            None
        };
        if record.is_none() {
            tracing::warn!(
                table = R::TABLE.name(),
                version = env.v,
                "skipping a store record of an unreadable schema version"
            );
        }
        record
    }

    /// The live record at `key`.
    pub async fn get<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError> {
        Ok(self.get_versioned(key).await?.map(|v| v.record))
    }

    /// The live record at `key` with its raw entry, for [`Repo::replace`].
    pub async fn get_versioned<R: Record>(
        &self,
        key: &[u8],
    ) -> Result<Option<Versioned<R>>, StoreError> {
        let Some(entry) = self.store.get(R::TABLE, key).await? else {
            return Ok(None);
        };
        Ok(self
            .decode(&entry)
            .map(|record| Versioned { record, entry }))
    }

    /// Writes `record` at `key`; it reads as absent from `expires_at` on.
    pub async fn put<R: Record>(
        &self,
        key: &[u8],
        record: &R,
        expires_at: Option<UnixTime>,
    ) -> Result<(), StoreError> {
        self.store
            .put(R::TABLE, key, Self::encode(record, expires_at)?)
            .await
    }

    /// Writes `record` at `key` only if nothing is there; returns whether it did.
    pub async fn create<R: Record>(
        &self,
        key: &[u8],
        record: &R,
        expires_at: Option<UnixTime>,
    ) -> Result<bool, StoreError> {
        let entry = Self::encode(record, expires_at)?;
        self.store
            .compare_and_swap(R::TABLE, key, None, Some(entry))
            .await
    }

    /// Whether other processes may share the store.
    pub fn is_shared(&self) -> bool {
        self.store.shared()
    }

    /// Waits for the lock `name` among the processes sharing the store ([`Store::exclusive`]).
    pub async fn exclusive(&self, name: &str) -> Result<super::Exclusive, StoreError> {
        self.store.exclusive(name).await
    }

    /// Replaces the entry read by [`Repo::get_versioned`] only if nobody changed it since.
    pub async fn replace<R: Record>(
        &self,
        key: &[u8],
        old: &Entry,
        record: &R,
        expires_at: Option<UnixTime>,
    ) -> Result<bool, StoreError> {
        self.store
            .compare_and_swap(
                R::TABLE,
                key,
                Some(old),
                Some(Self::encode(record, expires_at)?),
            )
            .await
    }

    /// Removes `key`, returning the live record that was there.
    pub async fn remove<R: Record>(&self, key: &[u8]) -> Result<Option<R>, StoreError> {
        Ok(self
            .store
            .take(R::TABLE, key)
            .await?
            .and_then(|e| self.decode(&e)))
    }

    /// Every live record whose key starts with `prefix`.
    pub async fn scan<R: Record>(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, R)>, StoreError> {
        Ok(self
            .store
            .scan_prefix(R::TABLE, prefix)
            .await?
            .into_iter()
            .filter_map(|(k, e)| self.decode(&e).map(|r| (k, r)))
            .collect())
    }

    fn family_key(grant_id: &str, hash: &TokenHash) -> Vec<u8> {
        let mut k = Vec::with_capacity(grant_id.len() + 33);
        k.extend_from_slice(grant_id.as_bytes());
        k.push(0);
        k.extend_from_slice(&hash.0);
        k
    }

    /// Stores a token under its hash and indexes it under its grant.
    pub async fn put_token(&self, hash: &TokenHash, token: &TokenRecord) -> Result<(), StoreError> {
        let exp = Some(token.expires_at);
        self.store
            .put(
                Table::GrantTokens,
                &Self::family_key(&token.grant_id, hash),
                Entry {
                    expires_at: exp,
                    value: Vec::new(),
                },
            )
            .await?;
        self.put(&hash.0, token, exp).await
    }

    /// Deletes a grant and every token issued under it; returns the token hashes deleted so
    /// caches can drop them.
    pub async fn revoke_grant(&self, grant_id: &str) -> Result<Vec<TokenHash>, StoreError> {
        let mut prefix = grant_id.as_bytes().to_vec();
        prefix.push(0);
        let mut hashes = Vec::new();
        for (key, _) in self.store.scan_prefix(Table::GrantTokens, &prefix).await? {
            let Some(hash) = key
                .get(prefix.len()..)
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
            else {
                continue;
            };
            self.store.take(Table::Tokens, &hash).await?;
            self.store.take(Table::GrantTokens, &key).await?;
            hashes.push(TokenHash(hash));
        }
        self.remove_grant(grant_id).await?;
        self.announce(Revocation::Grant(grant_id.to_string())).await;
        Ok(hashes)
    }

    /// When the newest live token of a grant was issued (`None`: it has none left).
    pub async fn grant_last_issued(&self, grant_id: &str) -> Result<Option<UnixTime>, StoreError> {
        let mut prefix = grant_id.as_bytes().to_vec();
        prefix.push(0);
        let mut newest = None;
        for (key, _) in self.store.scan_prefix(Table::GrantTokens, &prefix).await? {
            let Some(hash) = key.get(prefix.len()..) else {
                continue;
            };
            if let Some(token) = self.get::<TokenRecord>(hash).await? {
                newest = newest.max(Some(token.issued_at));
            }
        }
        Ok(newest)
    }

    /// Deletes one token and tells the other processes on the store.
    pub async fn revoke_token(&self, hash: &TokenHash) -> Result<(), StoreError> {
        self.store.take(Table::Tokens, &hash.0).await?;
        self.announce(Revocation::Tokens(vec![*hash])).await;
        Ok(())
    }

    /// Tells the other processes on the store. The revocation itself is done and stays
    /// done: when the telling fails, their caches forget within their TTL.
    async fn announce(&self, revocation: Revocation) {
        if let Err(e) = self.store.announce(&revocation).await {
            tracing::warn!(error = %e, "a revocation could not be announced to the other processes on the store; their cached checks end within their TTL");
        }
    }

    /// Revocations announced by other processes on a shared store.
    pub fn revocations(&self) -> Option<tokio::sync::broadcast::Receiver<Revocation>> {
        self.store.revocations()
    }

    /// Seals `plaintext` with the store key and stores it under `name`.
    pub async fn put_secret(&self, name: &str, plaintext: &[u8]) -> Result<(), StoreError> {
        let sealed = self.keys.sealer.seal(name.as_bytes(), plaintext)?;
        self.put(name.as_bytes(), &SecretRecord { sealed }, None)
            .await
    }

    /// The secret under `name`, made by `make` and stored first if there is none. Safe when
    /// several processes start at once: the first write wins, and every process reads it.
    pub async fn secret_once(
        &self,
        name: &str,
        make: impl FnOnce() -> Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if let Some(s) = self.get_secret(name).await? {
            return Ok(s);
        }
        let sealed = self.keys.sealer.seal(name.as_bytes(), &make())?;
        let entry = Self::encode(&SecretRecord { sealed }, None)?;
        self.store
            .compare_and_swap(Table::Secrets, name.as_bytes(), None, Some(entry))
            .await?;
        self.flush().await?;
        match self.get_secret(name).await? {
            Some(s) => Ok(s),
            // Written, or written by another process, then gone: nothing removes secrets.
            None => Err(StoreError::Key(super::KeyError::Open)),
        }
    }

    /// The same store and clock with other keys.
    pub fn with_keys(&self, keys: Keys) -> Self {
        // Field by field: `..self.clone()` would copy the keys it replaces.
        Self {
            store: self.store.clone(),
            background: self.background.clone(),
            keys,
            clock: self.clock.clone(),
            window: self.window.clone(),
        }
    }

    /// Opens the secret stored under `name`.
    pub async fn get_secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match self.get::<SecretRecord>(name.as_bytes()).await? {
            Some(rec) => Ok(Some(self.keys.sealer.open(name.as_bytes(), &rec.sealed)?)),
            None => Ok(None),
        }
    }

    /// Copies every live record into `to`, table by table; returns how many per table.
    /// Secrets are opened with this store's key and sealed again with `to`'s, so the two may
    /// differ. Idempotent: a second copy writes the same records again.
    pub async fn copy_into(&self, to: &Repo) -> Result<Vec<(Table, usize)>, StoreError> {
        let now = self.clock.now();
        let mut counts = Vec::new();
        for table in Table::ALL {
            let mut n = 0;
            for (key, entry) in self.store.scan_prefix(table, b"").await? {
                if entry.expires_at.is_some_and(|exp| exp <= now) {
                    continue;
                }
                if table == Table::Secrets {
                    // Opened from the entry just read, sealed again under `to`'s key (the
                    // name, the key of the entry, is the associated data on both sides).
                    let Some(rec) = self.decode::<SecretRecord>(&entry) else {
                        continue;
                    };
                    let plain = self.keys.sealer.open(&key, &rec.sealed)?;
                    let sealed = to.keys.sealer.seal(&key, &plain)?;
                    to.put(&key, &SecretRecord { sealed }, None).await?;
                } else {
                    to.store.put(table, &key, entry).await?;
                }
                n += 1;
            }
            counts.push((table, n));
        }
        to.flush().await?;
        Ok(counts)
    }

    /// Deletes expired records; returns how many. Does for older proxies on a shared store
    /// what `upgrade` says: takes out the inline answers whose grace period ended (first:
    /// they hold live tokens, and nothing else removes them), and while the window lasts (then
    /// once an hour) indexes by person what they wrote ([`Repo::index_for_older_proxies`]).
    ///
    /// All of it on the store's background connection, not the requests' pool
    /// ([`Store::for_background`]).
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let background = Self {
            store: self.background.clone(),
            ..self.clone()
        };
        background.take_out_inline_answers().await?;
        let swept = background.store.sweep(self.clock.now()).await?;
        background.index_for_older_proxies().await?;
        Ok(swept)
    }

    /// Waits until every write so far is durable. Call before answering a request whose
    /// write must survive a crash.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }
}
