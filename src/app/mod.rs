//! The wiring: what starts the proxy and what runs it. [`prepare`] opens the store, reads
//! keys, binds the listeners and builds the state; [`serve`] runs until shutdown, then stops
//! the background tasks and flushes the store; [`run`] is both. Nothing below names it.

mod prepare;
mod serve;

pub use self::prepare::prepare;
pub use self::serve::serve;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::{Config, ListenAddr};
use crate::server::AppState;
use crate::store::sled::SledStore;
use crate::store::{Keys, Repo};
use crate::{assertion, backend, banner, cli, config, error, login, oauth, server, store};

/// How many access tokens the gate keeps in memory.
const TOKEN_CACHE_CAPACITY: usize = 100_000;

/// How often expired records are swept from the store.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Key(#[from] store::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] backend::http::ClientError),
    #[error(transparent)]
    SignIn(#[from] login::start::StartError),
    #[error(transparent)]
    StaticClients(#[from] oauth::static_clients::StaticClientError),
    #[error("identity assertion: {0}")]
    Assertion(#[from] assertion::AssertionError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] server::tls::TlsError),
    #[error("client metadata documents: the HTTP client could not be set up: {}", error::chain(.0))]
    Documents(reqwest::Error),
    #[error("the stdio servers' directory: {0}")]
    StdioDir(std::io::Error),
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error(transparent)]
    Postgres(#[from] store::postgres::ConnectError),
    #[error("--policy-file: {0}")]
    Policy(String),
    #[error("--audit-log: {0}")]
    Audit(std::io::Error),
}

/// Secrets given through the environment that are not flags of their own.
#[derive(Debug, Default, Clone)]
pub struct EnvSecrets {
    pub encryption_key: Option<config::Secret>,
    pub auth_hmac_secret: Option<config::Secret>,
    /// `JWT_PRIVATE_KEY`: the assertion signing key (PKCS#8 PEM).
    pub jwt_private_key: Option<config::Secret>,
}

impl EnvSecrets {
    /// Reads `ENCRYPTION_KEY` and `AUTH_HMAC_SECRET`.
    pub fn from_env() -> Self {
        let read = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(config::Secret::new)
        };
        Self {
            encryption_key: read("ENCRYPTION_KEY"),
            auth_hmac_secret: read("AUTH_HMAC_SECRET"),
            jwt_private_key: read("JWT_PRIVATE_KEY"),
        }
    }
}

/// Binds the plain listener: `:PORT` tries every interface (IPv6 dual-stack, then IPv4).
pub async fn bind(listen: &ListenAddr) -> Result<TcpListener, RunError> {
    let candidates: Vec<String> = match listen {
        ListenAddr::AllInterfaces(p) => vec![format!("[::]:{p}"), format!("0.0.0.0:{p}")],
        ListenAddr::Host(h, p) if h.contains(':') => vec![format!("[{h}]:{p}")],
        ListenAddr::Host(h, p) => vec![format!("{h}:{p}")],
    };
    let mut last = None;
    for addr in &candidates {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((addr.clone(), e)),
        }
    }
    let (addr, source) =
        last.unwrap_or_else(|| (String::new(), std::io::Error::other("no address")));
    Err(RunError::Bind { addr, source })
}

/// What serves HTTPS.
struct TlsSetup {
    accept: server::tls::TlsAccept,
    /// Certificate files to watch.
    files: Option<(
        Arc<server::tls::Swappable>,
        std::path::PathBuf,
        std::path::PathBuf,
    )>,
    /// The ACME client to run.
    acme: Option<server::acme::Acme>,
}

/// A proxy that is bound and ready to serve: what [`serve`] runs and tests inspect.
pub struct Prepared {
    /// What a person at a terminal is shown once it serves.
    pub banner: banner::Banner,
    pub listener: TcpListener,
    pub local_addr: SocketAddr,
    /// The HTTPS listener, when TLS is on.
    pub tls_listener: Option<TcpListener>,
    pub tls_local_addr: Option<SocketAddr>,
    tls: Option<TlsSetup>,
    pub state: AppState,
    /// How long open connections may run after the shutdown signal.
    pub shutdown_grace: Duration,
    /// How many worker threads serve connections.
    pub workers: usize,
    /// Whether the HTTP/1 fast lane serves the MCP endpoint where it can.
    pub fast_lane: bool,
    pub limits: config::Limits,
    /// `--metrics-listen`, bound.
    pub metrics_listener: Option<TcpListener>,
    pub metrics_local_addr: Option<SocketAddr>,
}

/// The store chosen: sled in `data_path` (keys from the environment or generated there), or
/// PostgreSQL (ENCRYPTION_KEY required; the cookie key from the environment or generated
/// once into the database).
async fn open_repo(
    choice: &config::StoreChoice,
    data_path: &std::path::Path,
    secrets: &EnvSecrets,
    clock: Clock,
) -> Result<Repo, RunError> {
    let encryption_key = secrets.encryption_key.as_ref().map(|s| s.expose());
    let hmac_secret = secrets.auth_hmac_secret.as_ref().map(|s| s.expose());
    match choice {
        config::StoreChoice::Local => {
            let store = SledStore::open(data_path)?;
            let keys = Keys::load(data_path, encryption_key, hmac_secret)?;
            Ok(Repo::new(Arc::new(store), keys, clock))
        }
        config::StoreChoice::Postgres {
            dsn,
            connect_timeout,
        } => {
            // Checked before connecting: a missing key is said at once.
            let (keys, hmac_given) = Keys::given(encryption_key, hmac_secret)?;
            let store =
                store::postgres::PostgresStore::connect(dsn.expose(), *connect_timeout).await?;
            let repo = Repo::new(Arc::new(store), keys.clone(), clock);
            if hmac_given {
                return Ok(repo);
            }
            // Generated once into the database, sealed: every process on it signs cookies
            // with the same key.
            let hmac = repo
                .secret_once(store::COOKIE_KEY_SECRET, || {
                    zeroize::Zeroizing::new(Keys::random_key().to_vec())
                })
                .await?;
            Ok(repo.with_keys(keys.with_hmac(&hmac)?))
        }
    }
}

/// `mcp-auth-proxy migrate`: brings what can be reused into the store of `--data-path`.
pub async fn migrate(
    cli: cli::MigrateCli,
    secrets: EnvSecrets,
) -> Result<crate::migrate::Report, RunError> {
    let host = match &cli.external_url {
        Some(u) => Some(
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .ok_or_else(|| {
                    config::ConfigError(format!(
                        "--external-url {u:?} is not an absolute URL such as https://mcp.example.com"
                    ))
                })?,
        ),
        None => None,
    };
    let source: crate::migrate::Source = cli.from.parse()?;
    let destination = match cli.to.as_deref().map(str::trim) {
        None | Some("") => config::StoreChoice::Local,
        Some(to) => {
            let dsn = match to {
                "postgres" | "postgresql" => ["REPOSITORY_DSN", "DATABASE_DSN"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|d| !d.trim().is_empty()))
                    .ok_or_else(|| {
                        config::ConfigError(
                            "--to postgres: REPOSITORY_DSN (or DATABASE_DSN) is not set".into(),
                        )
                    })?,
                dsn if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") => {
                    dsn.to_string()
                }
                _ => {
                    return Err(config::ConfigError(
                        "--to must be a PostgreSQL connection string (postgres://…) or postgres"
                            .into(),
                    )
                    .into());
                }
            };
            config::StoreChoice::Postgres {
                dsn: config::Secret::new(dsn),
                connect_timeout: Duration::from_secs(60),
            }
        }
    };
    let repo = || open_repo(&destination, &cli.data_path, &secrets, Clock::system());
    match &source {
        crate::migrate::Source::DataDir(dir) => {
            if matches!(destination, config::StoreChoice::Local) {
                let from = dir.display().to_string();
                return Err(crate::migrate::MigrateError::NoDestination(from).into());
            }
            let keys = crate::migrate::data_dir::SourceKeys {
                encryption_key: secrets.encryption_key.as_ref().map(|s| s.expose()),
                hmac_secret: secrets.auth_hmac_secret.as_ref().map(|s| s.expose()),
            };
            let carry_cookie_key = secrets.auth_hmac_secret.is_none();
            let from = crate::migrate::data_dir::open(dir, keys)?;
            let to = repo().await?;
            Ok(crate::migrate::data_dir::copy(&from, &to, carry_cookie_key).await?)
        }
        crate::migrate::Source::Sigbit(dir) => {
            let plan = crate::migrate::sigbit::Plan {
                from: dir,
                acme_directory: &cli.tls_directory_url,
                host: host.as_deref(),
            };
            Ok(crate::migrate::sigbit::migrate(&plan, &repo().await?).await?)
        }
    }
}

/// Runs the proxy until `shutdown` resolves.
pub async fn run(
    config: Config,
    secrets: EnvSecrets,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let prepared = prepare(config, secrets, Clock::system()).await?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("{}", prepared.banner);
    }
    serve(prepared, shutdown).await
}
