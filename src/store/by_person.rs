//! The index by person: a person's grants (their apps page) and browser sessions ("sign out
//! everywhere") found without reading every grant or session in the store.
//!
//! An entry is `subject ++ 0 ++ id → nothing` in [`Table::PersonGrants`] or
//! [`Table::PersonSessions`], written before the record it names, removed after it, and
//! expiring with it. An entry left behind (a process stopped between the two writes) finds
//! nothing and is skipped until it expires. Records stored before the index existed, or by
//! an older proxy on a shared store, are indexed when the proxy starts
//! ([`Repo::index_by_person`]).

use std::collections::HashSet;

use super::{Entry, GrantRecord, Record, Repo, SessionRecord, StoreError, Table};
use crate::clock::UnixTime;

/// One record to find by its person.
pub(super) struct PersonOf<'a> {
    subject: String,
    id: &'a [u8],
    expires_at: UnixTime,
}

fn person_key(subject: &str, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1 + id.len());
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(id);
    k
}

impl Repo {
    async fn index_under_person(&self, table: Table, of: &PersonOf<'_>) -> Result<(), StoreError> {
        self.store
            .put(
                table,
                &person_key(&of.subject, of.id),
                Entry {
                    expires_at: Some(of.expires_at),
                    value: Vec::new(),
                },
            )
            .await
    }

    /// Removes the entry of a record that is gone.
    pub(super) async fn unindex_under_person(
        &self,
        table: Table,
        of: &PersonOf<'_>,
    ) -> Result<(), StoreError> {
        self.store
            .take(table, &person_key(&of.subject, of.id))
            .await?;
        Ok(())
    }

    /// The live records `table` indexes under the person `subject`, with their keys: as many
    /// reads as the person has records, not as many as the store holds.
    async fn of_person<R: Record>(
        &self,
        table: Table,
        subject: &str,
        person: impl Fn(&R) -> String,
    ) -> Result<Vec<(Vec<u8>, R)>, StoreError> {
        let prefix = person_key(subject, b"");
        let mut found = Vec::new();
        for (key, _) in self.store.scan_prefix(table, &prefix).await? {
            let Some(id) = key.get(prefix.len()..) else {
                continue;
            };
            // A subject is any text a provider sends; one that holds the separator could
            // reach another's entries, so the record itself must name this person.
            if let Some(record) = self.get::<R>(id).await?
                && person(&record) == subject
            {
                found.push((id.to_vec(), record));
            }
        }
        Ok(found)
    }

    /// Stores a grant and indexes it under its person.
    pub async fn put_grant(&self, grant: &GrantRecord) -> Result<(), StoreError> {
        self.index_under_person(Table::PersonGrants, &grant_person(grant))
            .await?;
        self.put(grant.grant_id.as_bytes(), grant, Some(grant.expires_at))
            .await
    }

    /// The live grants of the person `subject`.
    pub async fn grants_of(&self, subject: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let grants = self
            .of_person(Table::PersonGrants, subject, |g: &GrantRecord| {
                g.identity.subject()
            })
            .await?;
        Ok(grants.into_iter().map(|(_, grant)| grant).collect())
    }

    /// Stores a browser session under `key` and indexes it under its person.
    pub async fn put_session(&self, key: &[u8], session: &SessionRecord) -> Result<(), StoreError> {
        self.index_under_person(Table::PersonSessions, &session_person(key, session))
            .await?;
        self.put(key, session, Some(session.expires_at)).await
    }

    /// Ends the browser session stored under `key`, and removes its index entry.
    pub async fn remove_session(&self, key: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        let session = self.remove::<SessionRecord>(key).await?;
        if let Some(session) = &session {
            self.unindex_under_person(Table::PersonSessions, &session_person(key, session))
                .await?;
        }
        Ok(session)
    }

    /// The live browser sessions of the person `subject`, with the keys they are stored
    /// under.
    pub async fn sessions_of(
        &self,
        subject: &str,
    ) -> Result<Vec<(Vec<u8>, SessionRecord)>, StoreError> {
        self.of_person(Table::PersonSessions, subject, |s: &SessionRecord| {
            s.identity.subject()
        })
        .await
    }

    /// Indexes what has no entry yet: of `grants` (the store's, read at startup), and of the
    /// store's browser sessions. Returns how many entries it wrote.
    pub async fn index_by_person(&self, grants: &[GrantRecord]) -> Result<usize, StoreError> {
        let grants: Vec<_> = grants.iter().map(grant_person).collect();
        let sessions = self.scan::<SessionRecord>(b"").await?;
        let sessions: Vec<_> = sessions
            .iter()
            .map(|(key, session)| session_person(key, session))
            .collect();
        Ok(self.index_missing(Table::PersonGrants, &grants).await?
            + self.index_missing(Table::PersonSessions, &sessions).await?)
    }

    /// Indexes, in `table`, those of `records` that have no entry there. Returns how many.
    async fn index_missing(
        &self,
        table: Table,
        records: &[PersonOf<'_>],
    ) -> Result<usize, StoreError> {
        let indexed: HashSet<Vec<u8>> = self
            .store
            .scan_prefix(table, b"")
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        let mut added = 0;
        for of in records {
            if !indexed.contains(&person_key(&of.subject, of.id)) {
                self.index_under_person(table, of).await?;
                added += 1;
            }
        }
        Ok(added)
    }
}

/// What the index by person holds for `grant`.
pub(super) fn grant_person(grant: &GrantRecord) -> PersonOf<'_> {
    PersonOf {
        subject: grant.identity.subject(),
        id: grant.grant_id.as_bytes(),
        expires_at: grant.expires_at,
    }
}

/// What the index by person holds for the session stored under `key`.
fn session_person<'a>(key: &'a [u8], session: &SessionRecord) -> PersonOf<'a> {
    PersonOf {
        subject: session.identity.subject(),
        id: key,
        expires_at: session.expires_at,
    }
}
