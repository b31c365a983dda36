//! The embedded store's memory over days of sign-ins, on a simulated clock.
//!
//! A ten-minute soak (`bench/soak.sh`) only sees the store fill: every sign-in leaves records
//! that live for up to 37 days under the default lifetimes. This program writes what a
//! sign-in writes into the proxy's own [`SledStore`], with the sizes and lifetimes the proxy
//! gives them (BENCHMARKS.md, "Soak", read them back from a real store), moves a clock
//! instead of waiting, and sweeps expired records as the proxy does (less often: below). It
//! reports this process's RSS, the records held, the store's size on disk and the longest
//! sweep once a simulated day, so the question "does memory stop growing once records
//! expire as fast as they are made" is answered in minutes instead of weeks.
//!
//! Usage: `cargo bench --bench store_memory -- [SIGN_INS_PER_DAY] [DAYS] [LIFETIME_SCALE]
//! [SWEEP_SECONDS] [REFRESHES]` (defaults 1000, 60, 1, 3600 and 1). `REFRESHES` is how
//! often each sign-in's client refreshes over its grant's life: a client in use every day
//! refreshes about once an hour it is used (`--access-token-ttl 1h`), and every refresh
//! leaves its rotated token for the rest of the grant's 30 days. `LIFETIME_SCALE` divides every
//! lifetime, to see a store turn over in fewer simulated days. The proxy sweeps every five
//! minutes; a sweep reads every record, so simulating that for weeks would take hours, and
//! sweeping hourly instead keeps records at most an hour longer than the proxy would.

use std::time::Instant;

use mcp_auth_proxy::store::sled::SledStore;
use mcp_auth_proxy::store::{Entry, Store, StoreError, Table};
use rand::RngCore;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// One record a sign-in leaves: where, its key's and value's sizes, and for how long under
/// the default lifetimes (`--access-token-ttl 1h`, `--refresh-token-ttl 30d`,
/// `--client-ttl 7d`, `--auth-code-ttl 60s`, `--login-session-ttl 12h`).
struct Kept {
    table: Table,
    key: usize,
    bytes: usize,
    lives: u64,
}

/// Key sizes: an id (a client's, a grant's, a request's), a hash (of a token, a code, a
/// session cookie), and the index entries `grant id ++ 0 ++ token hash` and
/// `password:admin ++ 0 ++` a grant id or a session's hash (`src/store/by_person.rs`).
const ID: usize = 22;
const HASH: usize = 32;
const GRANT_TOKEN: usize = ID + 1 + HASH;
const PERSON_GRANT: usize = 14 + 1 + ID;
const PERSON_SESSION: usize = 14 + 1 + HASH;

/// What one sign-in writes besides its tokens, in order. The pending authorization request
/// is written and taken within the sign-in.
const SIGN_IN: &[Kept] = &[
    // Registration, kept for a grant's life past its use so a dead refresh token gets
    // `invalid_grant` (src/oauth/authorize.rs).
    Kept {
        table: Table::Clients,
        key: ID,
        bytes: 480,
        lives: 37 * DAY,
    },
    // Each person's browser sessions and grants are indexed under them, the entry written
    // first.
    Kept {
        table: Table::PersonSessions,
        key: PERSON_SESSION,
        bytes: 0,
        lives: 12 * HOUR,
    },
    Kept {
        table: Table::Sessions,
        key: HASH,
        bytes: 195,
        lives: 12 * HOUR,
    },
    Kept {
        table: Table::Consents,
        key: HASH,
        bytes: 126,
        lives: 30 * DAY,
    },
    // The code stays, spent, for its replay window (src/oauth/authorize.rs).
    Kept {
        table: Table::Codes,
        key: HASH,
        bytes: 464,
        lives: MINUTE + 10 * MINUTE,
    },
    Kept {
        table: Table::PersonGrants,
        key: PERSON_GRANT,
        bytes: 0,
        lives: 30 * DAY,
    },
    Kept {
        table: Table::Grants,
        key: ID,
        bytes: 325,
        lives: 30 * DAY,
    },
];

/// What one token response writes: an access and a refresh token, each indexed under its
/// grant (keys only, expiring with their token). The refresh token comes last: a refresh
/// rewrites it.
const TOKENS: &[Kept] = &[
    Kept {
        table: Table::Tokens,
        key: HASH,
        bytes: 392,
        lives: HOUR,
    },
    Kept {
        table: Table::GrantTokens,
        key: GRANT_TOKEN,
        bytes: 0,
        lives: HOUR,
    },
    Kept {
        table: Table::GrantTokens,
        key: GRANT_TOKEN,
        bytes: 0,
        lives: 30 * DAY,
    },
    Kept {
        table: Table::Tokens,
        key: HASH,
        bytes: 267,
        lives: 30 * DAY,
    },
];

/// A refresh rewrites the refresh token it used as rotated (kept for the grant's life, to
/// catch its reuse: it expires when it would have) ...
const ROTATED_BYTES: usize = 435;

/// ... and keeps what it answered, for a retry within the grace period (`--refresh-grace
/// 30s`), apart from the rotated token (src/store/records.rs, `Rotation`).
const ANSWER: Kept = Kept {
    table: Table::RotationAnswers,
    key: HASH,
    bytes: 362,
    lives: 30,
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn disk_kib(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total / 1024
}

fn random_key(len: usize) -> Vec<u8> {
    let mut k = vec![0; len];
    rand::rng().fill_bytes(&mut k);
    k
}

fn record(bytes: usize, expires_at: u64) -> Entry {
    let mut value = vec![0; bytes];
    rand::rng().fill_bytes(&mut value);
    Entry {
        expires_at: Some(expires_at),
        value,
    }
}

/// Writes `kept` under a new key; returns the key.
async fn put(store: &SledStore, kept: &Kept, now: u64, scale: u64) -> Result<Vec<u8>, StoreError> {
    let key = random_key(kept.key);
    let lives = (kept.lives / scale).max(1);
    store
        .put(kept.table, &key, record(kept.bytes, now + lives))
        .await?;
    Ok(key)
}

/// One sign-in and its `refreshes`, all at `now` (what the store holds depends on the
/// records' lifetimes, not on when within their first day they were written); returns the
/// records it added.
async fn sign_in(
    store: &SledStore,
    now: u64,
    scale: u64,
    refreshes: u64,
) -> Result<u64, StoreError> {
    // The pending authorization request: made at /authorize, taken at consent.
    let pending = random_key(ID);
    store
        .put(Table::Requests, &pending, record(700, now + 10 * MINUTE))
        .await?;
    store.take(Table::Requests, &pending).await?;
    let mut refresh_token = Vec::new();
    for kept in SIGN_IN.iter().chain(TOKENS) {
        refresh_token = put(store, kept, now, scale).await?;
    }
    // The proxy makes a code and its tokens durable before answering, and so each refresh.
    store.flush().await?;
    let refresh_lives = (30 * DAY / scale).max(1);
    for _ in 0..refreshes {
        put(store, &ANSWER, now, scale).await?;
        store
            .put(
                Table::Tokens,
                &refresh_token,
                record(ROTATED_BYTES, now + refresh_lives),
            )
            .await?;
        for kept in TOKENS {
            refresh_token = put(store, kept, now, scale).await?;
        }
        store.flush().await?;
    }
    Ok((SIGN_IN.len() as u64) + (1 + refreshes) * TOKENS.len() as u64 + refreshes)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench` to a harness-less benchmark; `cargo test --all-targets`
    // runs it without, and then a simulated day checks that it still works.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let per_day = args
        .first()
        .copied()
        .unwrap_or(if benchmarking { 1000 } else { 100 })
        .max(1);
    let days = args
        .get(1)
        .copied()
        .unwrap_or(if benchmarking { 60 } else { 1 });
    let scale = args.get(2).copied().unwrap_or(1).max(1);
    let sweep_every = args.get(3).copied().unwrap_or(HOUR).max(1);
    let refreshes = args.get(4).copied().unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let store = SledStore::open(dir.path())?;
    let every = DAY / per_day;
    println!(
        "{per_day} sign-ins a day (one every {every} s) with {refreshes} refreshes each, {days} \
         days, lifetimes divided by {scale}, a sweep every {sweep_every} s"
    );
    println!(
        "day   sign-ins   records held   RSS KiB   store on disk KiB   longest sweep ms   wall s"
    );
    let started = Instant::now();
    let (mut now, mut held, mut signed_in, mut next_sweep) = (0, 0u64, 0u64, sweep_every);
    let mut at_day = Vec::new();
    for day in 1..=days {
        let mut longest_sweep = std::time::Duration::ZERO;
        while now < day * DAY {
            held += sign_in(&store, now, scale, refreshes).await?;
            signed_in += 1;
            now += every;
            while next_sweep <= now {
                let sweep = Instant::now();
                held -= store.sweep(next_sweep).await? as u64;
                longest_sweep = longest_sweep.max(sweep.elapsed());
                next_sweep += sweep_every;
            }
        }
        let rss = rss_kib();
        at_day.push(rss);
        println!(
            "{day:>3} {signed_in:>10} {held:>14} {rss:>9} {:>19} {:>18} {:>8.1}",
            disk_kib(dir.path()),
            longest_sweep.as_millis(),
            started.elapsed().as_secs_f64()
        );
    }
    // The second half's slope: zero when memory has come to rest.
    let half = &at_day[at_day.len() / 2..];
    if half.len() >= 2 {
        let n = half.len() as f64;
        let mean_x = (n - 1.0) / 2.0;
        let mean_y = half.iter().sum::<u64>() as f64 / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, y) in half.iter().enumerate() {
            let dx = i as f64 - mean_x;
            sxy += dx * (*y as f64 - mean_y);
            sxx += dx * dx;
        }
        println!(
            "RSS slope over the last {} days: {:.1} KiB a day",
            half.len(),
            sxy / sxx
        );
    }
    Ok(())
}
