//! The index by person: a person's grants (their apps page) and browser sessions ("sign out
//! everywhere") found without reading every grant or session in the store.
//!
//! An entry is `subject ++ 0 ++ id → nothing` in [`Table::PersonGrants`] or
//! [`Table::PersonSessions`], written before the record it names, removed after it, and
//! expiring with it. An entry left behind (a process stopped between the two writes) finds
//! nothing and is skipped until it expires. Records stored before the index existed are
//! indexed when the proxy starts ([`Repo::index_by_person`]). On a shared store an older
//! proxy, still running while a rolling upgrade replaces it, writes records without entries:
//! for an hour after a proxy starts, and an hour after its last sweep that found some
//! (`upgrade::UPGRADE_WINDOW`), each of its sweeps indexes them too. Only an older proxy
//! leaves a record without its entry: this one writes the entry first and removes it last.

use std::collections::HashSet;

use super::{Entry, GrantRecord, Record, Repo, SessionRecord, StoreError, Table};
use crate::clock::UnixTime;

/// A record found through the index by person: which index holds it, and under whom.
trait ByPerson: Record {
    const INDEX: Table;
    fn subject(&self) -> String;
    fn expires_at(&self) -> UnixTime;
}

impl ByPerson for GrantRecord {
    const INDEX: Table = Table::PersonGrants;
    fn subject(&self) -> String {
        self.identity.subject()
    }
    fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
}

impl ByPerson for SessionRecord {
    const INDEX: Table = Table::PersonSessions;
    fn subject(&self) -> String {
        self.identity.subject()
    }
    fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
}

fn person_key(subject: &str, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1 + id.len());
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(id);
    k
}

/// The index entry of `record`, stored under `id`.
fn entry_key<R: ByPerson>(id: &[u8], record: &R) -> Vec<u8> {
    person_key(&record.subject(), id)
}

impl Repo {
    /// Writes `record` under `id`, its index entry first.
    async fn put_indexed<R: ByPerson>(&self, id: &[u8], record: &R) -> Result<(), StoreError> {
        self.index(id, record).await?;
        self.put(id, record, Some(record.expires_at())).await
    }

    async fn index<R: ByPerson>(&self, id: &[u8], record: &R) -> Result<(), StoreError> {
        let entry = Entry {
            expires_at: Some(record.expires_at()),
            value: Vec::new(),
        };
        self.store
            .put(R::INDEX, &entry_key(id, record), entry)
            .await
    }

    /// Removes the record under `id`, then its index entry.
    async fn remove_indexed<R: ByPerson>(&self, id: &[u8]) -> Result<Option<R>, StoreError> {
        let record = self.remove::<R>(id).await?;
        if let Some(record) = &record {
            self.store.take(R::INDEX, &entry_key(id, record)).await?;
        }
        Ok(record)
    }

    /// The live records of the person `subject`, with their keys: as many reads as the
    /// person has records, not as many as the store holds.
    async fn of_person<R: ByPerson>(&self, subject: &str) -> Result<Vec<(Vec<u8>, R)>, StoreError> {
        let prefix = person_key(subject, b"");
        let mut found = Vec::new();
        for (key, _) in self.store.scan_prefix(R::INDEX, &prefix).await? {
            let Some(id) = key.get(prefix.len()..) else {
                continue;
            };
            // A subject is any text a provider sends; one that holds the separator could
            // reach another's entries, so the record itself must name this person.
            if let Some(record) = self.get::<R>(id).await?
                && record.subject() == subject
            {
                found.push((id.to_vec(), record));
            }
        }
        Ok(found)
    }

    /// Stores a grant and indexes it under its person.
    pub async fn put_grant(&self, grant: &GrantRecord) -> Result<(), StoreError> {
        self.put_indexed(grant.grant_id.as_bytes(), grant).await
    }

    /// Removes a grant (not its tokens: [`Repo::revoke_grant`]) and its index entry.
    pub(super) async fn remove_grant(
        &self,
        grant_id: &str,
    ) -> Result<Option<GrantRecord>, StoreError> {
        self.remove_indexed(grant_id.as_bytes()).await
    }

    /// The live grants of the person `subject`.
    pub async fn grants_of(&self, subject: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let grants = self.of_person::<GrantRecord>(subject).await?;
        Ok(grants.into_iter().map(|(_, grant)| grant).collect())
    }

    /// Stores a browser session under `key` and indexes it under its person.
    pub async fn put_session(&self, key: &[u8], session: &SessionRecord) -> Result<(), StoreError> {
        self.put_indexed(key, session).await
    }

    /// Ends the browser session stored under `key`, and removes its index entry.
    pub async fn remove_session(&self, key: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        self.remove_indexed(key).await
    }

    /// The live browser sessions of the person `subject`, with the keys they are stored
    /// under.
    pub async fn sessions_of(
        &self,
        subject: &str,
    ) -> Result<Vec<(Vec<u8>, SessionRecord)>, StoreError> {
        self.of_person(subject).await
    }

    /// Indexes what has no entry yet: of `grants` (the store's, read at startup), and of the
    /// store's browser sessions. Returns how many entries it wrote.
    pub async fn index_by_person(&self, grants: &[GrantRecord]) -> Result<usize, StoreError> {
        let grants = grants.iter().map(|g| (g.grant_id.as_bytes(), g));
        let added = self
            .index_missing(&self.entries::<GrantRecord>().await?, grants)
            .await?;
        Ok(added + self.index_unindexed::<SessionRecord>().await?)
    }

    /// Indexes the store's grants and browser sessions that have no entry (those an older
    /// proxy on the same store wrote). Returns how many. The records are read a slice at a
    /// time, by the first byte of their keys: read all at once, a sweep's memory would
    /// follow the store's size (BENCHMARKS.md, the soak on PostgreSQL).
    pub(super) async fn index_what_older_proxies_wrote(&self) -> Result<usize, StoreError> {
        let grants = self.index_unindexed::<GrantRecord>().await?;
        let added = grants + self.index_unindexed::<SessionRecord>().await?;
        if added > 0 {
            tracing::info!(
                indexed = added,
                "grants and browser sessions an older proxy wrote were indexed by person"
            );
        }
        Ok(added)
    }

    /// Indexes the store's records of `R` that have no entry, a slice at a time (by the
    /// first byte of their keys). Returns how many.
    async fn index_unindexed<R: ByPerson>(&self) -> Result<usize, StoreError> {
        let entries = self.entries::<R>().await?;
        let mut added = 0;
        for first in 0..=u8::MAX {
            let records = self.scan::<R>(&[first]).await?;
            let records = records.iter().map(|(key, r)| (key.as_slice(), r));
            added += self.index_missing(&entries, records).await?;
        }
        Ok(added)
    }

    /// The keys of every entry in `R`'s index (keys only: the entries hold no value).
    async fn entries<R: ByPerson>(&self) -> Result<HashSet<Vec<u8>>, StoreError> {
        let entries = self.store.scan_prefix(R::INDEX, b"").await?;
        Ok(entries.into_iter().map(|(key, _)| key).collect())
    }

    /// Indexes those of `records` (each with the key it is stored under) whose entry is not
    /// among `entries`. Returns how many.
    async fn index_missing<'a, R: ByPerson + 'a>(
        &self,
        entries: &HashSet<Vec<u8>>,
        records: impl Iterator<Item = (&'a [u8], &'a R)>,
    ) -> Result<usize, StoreError> {
        let mut added = 0;
        for (id, record) in records {
            if !entries.contains(&entry_key(id, record)) {
                self.index(id, record).await?;
                added += 1;
            }
        }
        Ok(added)
    }
}
