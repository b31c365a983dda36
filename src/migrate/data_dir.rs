//! `migrate --from <our data directory> --to postgres://…`: moves the embedded store of a
//! proxy into PostgreSQL. Clients, codes, grants, tokens, consents, sessions and keys are
//! copied as they are (secrets opened with the directory's key and sealed again with the
//! database's). The directory must not be in use: the store's lock refuses a running proxy.
//! Running it again writes the same records again.

use std::path::Path;

use super::{MigrateError, Report, Unusable};
use crate::clock::Clock;
use crate::store::sled::SledStore;
use crate::store::{COOKIE_KEY_SECRET, Keys, Repo, Table};

/// What the copy reads the directory's keys from when their files are absent (the proxy was
/// started with the variables).
pub struct SourceKeys<'a> {
    pub encryption_key: Option<&'a str>,
    pub hmac_secret: Option<&'a str>,
}

/// Opens the store in `dir` with the keys it was used with (refused while a proxy holds it),
/// before anything is written anywhere.
pub fn open(dir: &Path, keys: SourceKeys<'_>) -> Result<Repo, MigrateError> {
    if !dir.join("store").is_dir() {
        return Err(MigrateError::source(dir)(Unusable::NotOurs));
    }
    let store = SledStore::open(dir)?;
    let keys = Keys::existing(dir, keys.encryption_key, keys.hmac_secret)?;
    Ok(Repo::new(std::sync::Arc::new(store), keys, Clock::system()))
}

/// Copies the store opened by [`open`] into `to`. `carry_cookie_key`: the database keeps no
/// cookie key of its own (`AUTH_HMAC_SECRET` is not given), so the directory's is stored
/// there, and browser sessions and open forms stay valid.
pub async fn copy(from: &Repo, to: &Repo, carry_cookie_key: bool) -> Result<Report, MigrateError> {
    let hmac = from.keys().hmac.to_vec();
    let counts = from.copy_into(to).await?;
    let mut report = Report::default();
    for (table, n) in counts {
        if n > 0 {
            report.brought.push(format!("{n} {}", describe(table)));
        }
    }
    if carry_cookie_key {
        to.put_secret(COOKIE_KEY_SECRET, &hmac).await?;
        to.flush().await?;
        report
            .brought
            .push("the cookie key (browser sessions stay signed in)".into());
    } else {
        report.left.push(
            "the cookie key: AUTH_HMAC_SECRET is given, so browser sessions sign in again".into(),
        );
    }
    Ok(report)
}

fn describe(table: Table) -> &'static str {
    match table {
        Table::Clients => "clients",
        Table::Codes => "authorization codes",
        Table::Grants => "grants",
        Table::Tokens => "tokens",
        Table::GrantTokens => "grant-to-token links",
        Table::Consents => "remembered consents",
        Table::Sessions => "browser sessions",
        Table::McpSessions => "MCP session bindings",
        Table::Secrets => "sealed secrets (signing keys, ACME account and certificate)",
        Table::Requests => "pending authorization requests",
        Table::SignIns => "sign-ins in progress",
        Table::Lockouts => "password attempt counts",
        Table::Acme => "certificate orders in progress",
        Table::DpopProofs => "DPoP proofs seen",
        Table::Passkeys => "passkeys",
        Table::PasskeyCeremonies => "passkey sign-ins in progress",
        Table::PersonGrants => "person-to-grant links",
        Table::PersonSessions => "person-to-session links",
        Table::RotationAnswers => "refresh answers within their grace period",
        Table::InlineAnswers => "refresh answers to take out of rotated tokens",
    }
}
