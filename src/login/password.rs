//! Password sign-in: bcrypt verification off the async threads, and the per-IP lockout of
//! docs/design.md "People's side" (10 failures within 5 minutes lock the IP for 2 minutes, all configurable).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::clock::UnixTime;
use crate::config::{AuthConfig, BCRYPT_MAX_BYTES, PasswordTooLong, check_password_length};
use crate::store::{LockoutRecord, Repo, StoreError};

/// Cost of the in-memory hash of `--password`. It never leaves the process, so the cost only
/// has to make the comparison slow for a caller, not resist offline cracking.
const IN_MEMORY_COST: u32 = 10;

/// Whether a password is too easy to guess for a login page on the Internet: shorter than
/// 12 characters or one of the passwords every guesser tries first. (A warning at startup,
/// not a refusal: a loopback-only personal proxy may not care.)
pub fn weak(password: &str) -> bool {
    const COMMON: [&str; 12] = [
        "changeme",
        "password",
        "admin",
        "secret",
        "123456",
        "12345678",
        "qwerty",
        "letmein",
        "welcome",
        "passw0rd",
        "password123",
        "changemeplease",
    ];
    password.chars().count() < 12 || COMMON.contains(&password.to_ascii_lowercase().as_str())
}

/// The accepted passwords, as bcrypt hashes.
pub struct PasswordVerifier {
    hashes: Vec<Zeroizing<String>>,
    /// bcrypt runs at most one per core at a time: a burst of sign-ins queues here instead
    /// of filling the blocking pool (and every core) with hashing.
    hashing: tokio::sync::Semaphore,
    user: String,
    epoch: String,
}

/// The password could not be prepared at startup.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password could not be hashed: {0}")]
    Hash(#[from] bcrypt::BcryptError),
    #[error("the password could not be hashed: the hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the password fingerprint key is unusable: {0}")]
    Key(#[from] hmac::digest::InvalidLength),
    /// `hash-password` was given nothing.
    #[error("the password is empty")]
    Empty,
    #[error(transparent)]
    TooLong(#[from] PasswordTooLong),
}

impl PasswordVerifier {
    /// Hashes `--password` (if given) and collects `--password-hash` values. `epoch_key` keys
    /// the fingerprint that tells whether the configured passwords changed since a grant.
    pub async fn new(cfg: &AuthConfig, epoch_key: &[u8]) -> Result<Option<Self>, PasswordError> {
        if !cfg.has_password() {
            return Ok(None);
        }
        let mut hashes: Vec<Zeroizing<String>> = cfg
            .password_hashes
            .iter()
            .map(|h| Zeroizing::new(h.expose().to_string()))
            .collect();
        let mut fingerprint_inputs: Vec<Zeroizing<String>> = cfg
            .password_hashes
            .iter()
            .map(|h| Zeroizing::new(format!("hash:{}", h.expose())))
            .collect();
        if let Some(p) = &cfg.password {
            let plain = Zeroizing::new(p.expose().to_string());
            fingerprint_inputs.push(Zeroizing::new(format!("plain:{}", plain.as_str())));
            let hash =
                tokio::task::spawn_blocking(move || bcrypt::hash(plain.as_bytes(), IN_MEMORY_COST))
                    .await??;
            hashes.push(Zeroizing::new(hash));
        }
        fingerprint_inputs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(epoch_key)?;
        mac.update(cfg.password_user.as_bytes());
        for i in &fingerprint_inputs {
            mac.update(b"\0");
            mac.update(i.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let epoch = hex::encode(&digest[..16]);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Some(Self {
            hashing: tokio::sync::Semaphore::new(cores),
            hashes,
            user: cfg.password_user.clone(),
            epoch,
        }))
    }

    /// The user name password sign-ins get.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A fingerprint of the configured passwords: grants made under another one are dead.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Checks `candidate` against every accepted hash (all of them, so the time taken does
    /// not say which matched), on a blocking thread.
    pub async fn verify(&self, candidate: Zeroizing<String>) -> bool {
        if candidate.len() > BCRYPT_MAX_BYTES {
            // Every hash here is bcrypt ($2*$): it would compare only a prefix.
            return false;
        }
        let Ok(_turn) = self.hashing.acquire().await else {
            return false;
        };
        let hashes = self.hashes.clone();
        tokio::task::spawn_blocking(move || {
            hashes
                .iter()
                .map(|h| bcrypt::verify(candidate.as_bytes(), h).unwrap_or(false))
                .fold(false, |acc, ok| acc | ok)
        })
        .await
        .unwrap_or(false)
    }
}

/// What a password attempt may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Checked.
    Allowed,
    /// Checked, and the last one allowed: a failure locks the client this many seconds.
    LastAllowed(u64),
    /// Not checked: the client is locked for this many more seconds.
    Locked(u64),
}

/// Failed sign-ins per client IP (IPv6 by its /64, as the rate limits key them). One rule
/// ([`Lockout::count`]); its state lives in memory for one process, or in the store when
/// several processes share it, so that an attacker cannot multiply the attempts by the
/// number of replicas.
pub struct Lockout {
    local: Mutex<HashMap<IpAddr, LockoutRecord>>,
    /// The shared store, when there is one.
    shared: Option<Repo>,
    max_failures: usize,
    window: u64,
    lockout: u64,
}

/// How many IPs are tracked in memory at most before old entries are dropped.
const MAX_TRACKED: usize = 100_000;

/// Compare-and-swap rounds before a shared attempt counts as contended (and is refused).
const SHARED_TRIES: usize = 16;

impl Lockout {
    pub fn new(cfg: &AuthConfig, repo: &Repo) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            shared: repo.is_shared().then(|| repo.clone()),
            max_failures: cfg.login_max_failures as usize,
            window: cfg.login_failure_window.as_secs().max(1),
            lockout: cfg.login_lockout.as_secs().max(1),
        }
    }

    /// The rule: counts an attempt at `now` into the client's state, in one step with the
    /// lock check.
    fn count(&self, f: &mut LockoutRecord, now: UnixTime) -> Attempt {
        if f.locked_until > now {
            return Attempt::Locked(f.locked_until - now);
        }
        while f.times.front().is_some_and(|t| t + self.window <= now) {
            f.times.pop_front();
        }
        f.times.push_back(now);
        if f.times.len() >= self.max_failures {
            f.times.clear();
            f.locked_until = now + self.lockout;
            return Attempt::LastAllowed(self.lockout);
        }
        Attempt::Allowed
    }

    /// Whether a client's state still matters at `now`: locked, or with attempts in the
    /// window.
    fn live(&self, f: &LockoutRecord, now: UnixTime) -> bool {
        f.locked_until > now || f.times.back().is_some_and(|t| t + self.window > now)
    }

    /// Counts an attempt of `ip` before its password is checked, in one step with the lock
    /// check: parallel attempts (on any replica) cannot all pass the check before any failure
    /// counts, so at most `--login-max-failures` guesses are verified per window.
    pub async fn attempt(&self, ip: IpAddr, now: UnixTime) -> Result<Attempt, StoreError> {
        let key = crate::client_addr::client_key(ip);
        let Some(repo) = &self.shared else {
            let Ok(mut map) = self.local.lock() else {
                return Ok(Attempt::Locked(self.lockout));
            };
            if map.len() >= MAX_TRACKED {
                map.retain(|_, f| self.live(f, now));
            }
            return Ok(self.count(map.entry(key).or_default(), now));
        };
        let id = key.to_string();
        for _ in 0..SHARED_TRIES {
            let current = repo.get_versioned::<LockoutRecord>(id.as_bytes()).await?;
            let mut f = current
                .as_ref()
                .map(|v| v.record.clone())
                .unwrap_or_default();
            let verdict = self.count(&mut f, now);
            if let Attempt::Locked(_) = verdict {
                return Ok(verdict);
            }
            let last = f.times.back().map_or(0, |t| t + self.window);
            let keep = Some(f.locked_until.max(last).max(now + 1));
            let written = match &current {
                Some(v) => repo.replace(id.as_bytes(), &v.entry, &f, keep).await?,
                None => repo.create(id.as_bytes(), &f, keep).await?,
            };
            if written {
                return Ok(verdict);
            }
        }
        // Contended this much, it is a burst of guesses: not checked.
        Ok(Attempt::Locked(1))
    }

    /// The clients with attempts in the window or a lock, for the operator console: address
    /// (IPv6 by its /64), attempts counted, locked until (0: not locked). Most recent first,
    /// at most `limit`.
    pub async fn recent(
        &self,
        now: UnixTime,
        limit: usize,
    ) -> Result<Vec<(IpAddr, usize, UnixTime)>, StoreError> {
        let mut out: Vec<(IpAddr, usize, UnixTime)> = match &self.shared {
            None => match self.local.lock() {
                Ok(map) => map
                    .iter()
                    .filter(|(_, f)| self.live(f, now))
                    .map(|(ip, f)| (*ip, f.times.len(), f.locked_until))
                    .collect(),
                Err(_) => Vec::new(),
            },
            Some(repo) => repo
                .scan::<LockoutRecord>(b"")
                .await?
                .into_iter()
                .filter(|(_, f)| self.live(f, now))
                .filter_map(|(k, f)| {
                    let ip = std::str::from_utf8(&k).ok()?.parse().ok()?;
                    Some((ip, f.times.len(), f.locked_until))
                })
                .collect(),
        };
        out.sort_by_key(|(_, n, until)| std::cmp::Reverse((*until, *n)));
        out.truncate(limit);
        Ok(out)
    }

    /// Forgets the attempts (and a lock this sign-in's own attempt set) of a client that
    /// signed in.
    pub async fn succeed(&self, ip: IpAddr) {
        let key = crate::client_addr::client_key(ip);
        match &self.shared {
            Some(repo) => {
                if let Err(e) = repo
                    .remove::<LockoutRecord>(key.to_string().as_bytes())
                    .await
                {
                    tracing::warn!(error = %e, "a signed-in client's attempts could not be forgotten");
                }
            }
            None => {
                if let Ok(mut map) = self.local.lock() {
                    map.remove(&key);
                }
            }
        }
    }
}

/// What a locked-out client is told, for `secs` more seconds.
pub fn locked_message(secs: u64) -> String {
    let minutes = secs.div_ceil(60);
    format!(
        "Too many failed attempts from your network. Try again in {minutes} minute{}.",
        if minutes == 1 { "" } else { "s" }
    )
}

/// Cost of hashes printed by `mcp-auth-proxy hash-password`: they are stored in
/// configuration, so they get bcrypt's standard cost.
pub const STORED_COST: u32 = bcrypt::DEFAULT_COST;

/// The `hash-password` subcommand's work: the bcrypt hash of a password given as one line
/// (its line ending removed, nothing else).
pub fn hash_for_config(line: &str) -> Result<String, PasswordError> {
    let password = line.strip_suffix('\n').unwrap_or(line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    check_password_length(password)?;
    Ok(bcrypt::hash(password, STORED_COST)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(args: &[&str]) -> AuthConfig {
        let mut argv = vec!["x", "--password", "pw"];
        argv.extend_from_slice(args);
        crate::config::Config::from_cli(crate::cli::Cli::try_parse_from(argv).unwrap())
            .unwrap()
            .auth
    }

    /// The embedded store: the lockout counts in memory.
    fn repo() -> (Repo, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sled::SledStore::open(dir.path()).unwrap();
        let keys = crate::store::Keys::ephemeral();
        let repo = Repo::new(
            std::sync::Arc::new(store),
            keys,
            crate::clock::Clock::system(),
        );
        (repo, dir)
    }

    #[tokio::test]
    async fn locks_after_max_attempts_within_the_window() {
        let l = Lockout::new(
            &cfg(&[
                "--login-max-failures",
                "3",
                "--login-failure-window",
                "60s",
                "--login-lockout",
                "120s",
            ]),
            &repo().0,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let at = |ip: IpAddr, now| {
            let l = &l;
            async move { l.attempt(ip, now).await.unwrap() }
        };
        assert_eq!(at(ip, 1000).await, Attempt::Allowed);
        assert_eq!(
            at(ip, 1070).await,
            Attempt::Allowed,
            "the first one left the window"
        );
        assert_eq!(at(ip, 1080).await, Attempt::Allowed);
        assert_eq!(
            at(ip, 1090).await,
            Attempt::LastAllowed(120),
            "the last one allowed"
        );
        assert_eq!(at(ip, 1100).await, Attempt::Locked(110));
        assert_eq!(
            at("192.0.2.2".parse().unwrap(), 1100).await,
            Attempt::Allowed,
            "other IPs unaffected"
        );
        assert!(
            !matches!(at(ip, 1210).await, Attempt::Locked(_)),
            "unlocked after the lockout"
        );
        l.succeed(ip).await;
        assert_eq!(at(ip, 1301).await, Attempt::Allowed);
    }

    #[test]
    fn weak_passwords_are_told_apart() {
        assert!(weak("changeme"));
        assert!(weak("ChangeMePlease"));
        assert!(weak("short-pw"));
        assert!(!weak("correct horse battery staple"));
    }

    #[tokio::test]
    async fn an_ipv6_64_is_one_client_and_a_burst_gets_max_attempts() {
        let l = Lockout::new(&cfg(&["--login-max-failures", "3"]), &repo().0);
        let mut verified = 0;
        for i in 0..100 {
            let ip: IpAddr = format!("2001:db8:7:7::{i:x}").parse().unwrap();
            if !matches!(l.attempt(ip, 1000).await.unwrap(), Attempt::Locked(_)) {
                verified += 1;
            }
        }
        assert_eq!(
            verified, 3,
            "a fresh address in the same /64 is the same client"
        );
    }

    #[tokio::test]
    async fn verifies_plain_and_hashed_passwords_and_fingerprints_them() {
        let hash = bcrypt::hash("other", 4).unwrap();
        let c = cfg(&["--password-hash", &hash]);
        let v = PasswordVerifier::new(&c, b"k").await.unwrap().unwrap();
        assert!(v.verify(Zeroizing::new("pw".into())).await);
        assert!(v.verify(Zeroizing::new("other".into())).await);
        assert!(!v.verify(Zeroizing::new("nope".into())).await);
        // A 72-byte password is checked whole; a longer candidate never matches, even when
        // its first 72 bytes are the password (bcrypt would compare only those).
        let long = "p".repeat(BCRYPT_MAX_BYTES);
        let c = cfg(&["--password-hash", &bcrypt::hash(&long, 4).unwrap()]);
        let v = PasswordVerifier::new(&c, b"k").await.unwrap().unwrap();
        assert!(v.verify(Zeroizing::new(long.clone())).await);
        assert!(!v.verify(Zeroizing::new(format!("{long}WRONG"))).await);
        assert!(hash_for_config(&format!("{long}x")).is_err());
        let again = PasswordVerifier::new(&c, b"k").await.unwrap().unwrap();
        assert_eq!(v.epoch(), again.epoch(), "stable across restarts");
        let changed = PasswordVerifier::new(&cfg(&[]), b"k")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(v.epoch(), changed.epoch());
    }
}
