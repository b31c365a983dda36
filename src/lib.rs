//! mcp-auth-proxy: OAuth 2.1 in front of any MCP server.
//!
//! A request's path through the crate: [`server::guard`] (Host, Origin) → [`gate`] (bearer
//! token) → [`backend`] (the MCP server). The authorization server that issues the tokens
//! lives in [`oauth`]; state lives in [`store`]. [`run`] wires them together.

pub mod assertion;
pub mod backend;
pub mod banner;
pub mod budget;
pub mod cli;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod error;
pub mod gate;
pub mod login;
pub mod media_type;
pub mod metrics;
pub mod migrate;
pub mod oauth;
pub mod request_body;
pub mod request_head;
pub mod server;
pub mod store;
pub mod tokens;
pub mod web;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::backend::http::HttpBackend;
use crate::backend::stdio::bridge::StdioBackend;
use crate::backend::stdio::child::{ChildSpec, environment};
use crate::clock::Clock;
use crate::config::{Backend, Config, ListenAddr};
use crate::gate::TokenCache;
use crate::server::{App, AppState};
use crate::store::sled::SledStore;
use crate::store::{Keys, Repo};

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
    Migrate(#[from] migrate::MigrateError),
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
    acceptor: tokio_rustls::TlsAcceptor,
    /// Certificate files to watch.
    files: Option<(
        Arc<server::tls::Swappable>,
        std::path::PathBuf,
        std::path::PathBuf,
    )>,
    /// The ACME client to run.
    acme: Option<server::acme::Acme>,
}

/// Loads the certificate files and builds the acceptor.
fn tls_setup(
    tls: &config::TlsConfig,
    repo: &Repo,
    metrics: &metrics::Metrics,
) -> Result<TlsSetup, RunError> {
    match &tls.source {
        config::TlsSource::Files { cert, key } => {
            let pair = server::tls::load_pair(cert, key)?;
            let swappable = server::tls::Swappable::new(pair);
            let cfg = server::tls::server_config(swappable.clone(), &[]);
            Ok(TlsSetup {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
                files: Some((swappable, cert.clone(), key.clone())),
                acme: None,
            })
        }
        config::TlsSource::Acme(opts) => {
            let mut acme = server::acme::Acme::new(opts, repo.clone())?;
            acme.events = Some(metrics.acme.clone());
            let extra: &[&[u8]] = if opts.http01 {
                &[]
            } else {
                &[server::workers::ACME_TLS_ALPN]
            };
            let cfg = server::tls::server_config(acme.resolver.clone(), extra);
            Ok(TlsSetup {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
                files: None,
                acme: Some(acme),
            })
        }
    }
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

/// The store in `data_path`, sealed with ENCRYPTION_KEY (or the key generated there).
fn open_repo(
    data_path: &std::path::Path,
    secrets: &EnvSecrets,
    clock: Clock,
) -> Result<Repo, RunError> {
    let store = SledStore::open(data_path)?;
    let keys = Keys::load(
        data_path,
        secrets.encryption_key.as_ref().map(|s| s.expose()),
        secrets.auth_hmac_secret.as_ref().map(|s| s.expose()),
    )?;
    Ok(Repo::new(Arc::new(store), keys, clock))
}

/// `mcp-auth-proxy migrate`: brings what can be reused into the store of `--data-path`.
pub async fn migrate(
    cli: cli::MigrateCli,
    secrets: EnvSecrets,
) -> Result<migrate::Report, RunError> {
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
    let source: migrate::Source = cli.from.parse()?;
    let repo = open_repo(&cli.data_path, &secrets, Clock::system())?;
    match &source {
        migrate::Source::Sigbit(dir) => {
            let plan = migrate::sigbit::Plan {
                from: dir,
                acme_directory: &cli.tls_directory_url,
                host: host.as_deref(),
            };
            Ok(migrate::sigbit::migrate(&plan, &repo).await?)
        }
    }
}

/// Opens the store, loads keys, binds the listener and builds the state; logs the banner.
pub async fn prepare(
    config: Config,
    secrets: EnvSecrets,
    clock: Clock,
) -> Result<Prepared, RunError> {
    let repo = open_repo(&config.data_path, &secrets, clock)?;
    let metrics = Arc::new(metrics::Metrics::new());
    // The clients file is read before anything listens: a mistake in it stops the start.
    let static_clients = match &config.clients_file {
        Some(path) => {
            oauth::static_clients::load(path, &config.auth.redirect_schemes, repo.clock().now())?
        }
        None => Vec::new(),
    };
    // A bad JWT_PRIVATE_KEY is said before anything listens, used or not.
    let given_signing_key = match &secrets.jwt_private_key {
        Some(pem) => Some(assertion::parse_private_key(
            pem.expose(),
            repo.clock().now(),
        )?),
        None => None,
    };
    if given_signing_key.is_some() && !config.upstream.forward_authorization {
        tracing::warn!(
            "JWT_PRIVATE_KEY is set but unused: it signs the identity assertion sent upstream, which --proxy-forward-authorization turns on (our access tokens are opaque, not JWTs)"
        );
    }

    let listener = bind(&config.listen).await?;
    let local_addr = listener.local_addr().map_err(RunError::Serve)?;
    let (tls_listener, tls_local_addr, tls) = match &config.tls {
        Some(t) => {
            let setup = tls_setup(t, &repo, &metrics)?;
            let l = bind(&t.listen).await?;
            let addr = l.local_addr().map_err(RunError::Serve)?;
            (Some(l), Some(addr), Some(setup))
        }
        None => (None, None, None),
    };
    let site = config.site(tls_local_addr.unwrap_or(local_addr).port())?;
    let http_backend = match &config.backend {
        Backend::Http(url) => Some(Arc::new(HttpBackend::new(
            url.clone(),
            config.upstream.clone(),
            &site,
            config.workers,
        )?)),
        _ => None,
    };

    tracing::info!("listening on http://{local_addr}");
    if let Some(a) = tls_local_addr {
        tracing::info!("listening on https://{a}");
        if let Some(config::TlsConfig {
            source: config::TlsSource::Files { cert, .. },
            ..
        }) = &config.tls
        {
            let expires = tls
                .as_ref()
                .and_then(|t| t.files.as_ref())
                .and_then(|(c, _, _)| c.current_leaf())
                .and_then(|leaf| server::tls::not_after(&leaf))
                .unwrap_or_default();
            tracing::info!(cert = %cert.display(), expires, "certificate: from files (reloaded when they change); http redirects to https");
        }
    }
    if matches!(config.backend, Backend::None) {
        tracing::info!(
            "no MCP server behind this proxy: give one last on the command line (an http(s) URL, or a stdio command after --) for clients to connect to {}",
            site.resource
        );
    } else {
        tracing::info!(url = %site.resource, "MCP clients connect to {}", site.resource);
    }
    let stdio_backend = match &config.backend {
        Backend::Stdio { program, args } => {
            use backend::stdio::placement;
            let run_as = config.stdio.run_as.as_ref();
            if let Some(user) = run_as {
                // Closed to the children's user whatever mode it was created with.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&config.data_path, std::fs::Permissions::from_mode(0o700))
                    .map_err(RunError::StdioDir)?;
                tracing::info!(user = %user.name, uid = user.uid, "stdio servers run as another user; the data directory is closed to them");
            }
            let mut extra_env = Vec::new();
            if let Some(user) = run_as {
                extra_env.push(("HOME".to_string(), user.home.display().to_string()));
                extra_env.push(("USER".to_string(), user.name.clone()));
                extra_env.push(("LOGNAME".to_string(), user.name.clone()));
            }
            extra_env.extend(config.stdio.env.iter().cloned());
            let spec = match &config.stdio.cwd {
                Some(cwd) => ChildSpec {
                    program: program.clone(),
                    args: args.clone(),
                    cwd: Some(cwd.clone()),
                    ..ChildSpec::default()
                },
                None => {
                    let here = std::env::current_dir().map_err(RunError::StdioDir)?;
                    let dir = placement::default_dir(&config.data_path, run_as)
                        .map_err(RunError::StdioDir)?;
                    tracing::info!(dir = %dir.display(), "stdio servers start in a directory of their own (--stdio-cwd to choose another)");
                    ChildSpec {
                        program: placement::anchored_program(program, &here),
                        args: placement::anchored_args(args, &here),
                        cwd: Some(dir),
                        ..ChildSpec::default()
                    }
                }
            };
            let spec = ChildSpec {
                run_as: run_as.map(|u| (u.uid, u.gid)),
                extra_env,
                clean_env: config.stdio.clean_env,
                pass_env: config.stdio.pass_env.clone(),
                ..spec
            };
            let (_, withheld) = environment(&spec, std::env::vars());
            let mode = if config.stdio.shared {
                "one child shared by all sessions"
            } else {
                "one child per session"
            };
            tracing::info!(command = %program, max_sessions = config.stdio.max_sessions.total, "bridging a stdio MCP server ({mode})");
            if !withheld.is_empty() {
                tracing::info!(withheld = %withheld.join(","), "the stdio server does not see these variables of the proxy");
            }
            Some(StdioBackend::new(
                spec,
                config.stdio.max_sessions,
                config.stdio.idle_timeout,
                config.stdio.warm_spare,
                config.stdio.shared,
                backend::identity::IdentityEnv {
                    vars: config.stdio.identity_env.clone(),
                    qualified_user: config.upstream.identity.qualified_user,
                },
                metrics.children.clone(),
            ))
        }
        _ => None,
    };
    // The same checks as /readyz, once at startup: a dead backend is said now, not found
    // out after someone signed in.
    let backend = http_backend
        .map(backend::Backend::Http)
        .or(stdio_backend.map(|s| backend::Backend::Stdio(Box::new(s))));
    let backend_state = match &backend {
        None => banner::BackendState::None,
        Some(b) => match b.not_ready(server::health::UPSTREAM_PROBE).await {
            None => banner::BackendState::Ready,
            Some(why) => {
                match b {
                    backend::Backend::Http(h) => {
                        tracing::warn!(backend = %h.base(), why, "the HTTP MCP server does not answer yet; requests get 502 until it does")
                    }
                    backend::Backend::Stdio(_) => {
                        tracing::warn!(why, "the stdio MCP server cannot be started as configured")
                    }
                }
                banner::BackendState::NotReady(why)
            }
        },
    };
    match backend.as_ref().and_then(backend::Backend::http) {
        Some(b) => tracing::info!(backend = %b.base(), "proxying to an HTTP MCP server"),
        None if matches!(config.backend, Backend::Stdio { .. }) => {}
        None => tracing::info!(
            forward_auth = config.forward_auth_path.as_deref().unwrap_or("off"),
            "no backend configured: forward-auth only (sign-in, the authorization server and the forward-auth endpoint)"
        ),
    }
    if !site.origin.is_https() && !site.origin.is_loopback() {
        tracing::warn!(
            "the external URL {} is plain http on a non-loopback host: tokens and cookies travel unencrypted",
            site.origin.as_str()
        );
    }

    for note in &config.notes {
        tracing::warn!("{note}");
    }
    if migrate::sigbit::looks_like_sigbit(&config.data_path)
        && !migrate::sigbit::migrated(&repo).await?
    {
        tracing::warn!(
            data = %config.data_path.display(),
            "this data directory holds sigbit/mcp-auth-proxy's files, which are not read as they are: stop the proxy and run `mcp-auth-proxy migrate --from sigbit:{0} --data-path {0}` to keep its certificate (no new ACME order) and signing key",
            config.data_path.display()
        );
    }
    let authn = login::start::authn(&config.auth, &site, &repo).await?;
    let (mut client_credentials, mut introspection) = (false, false);
    if let Some(path) = &config.clients_file {
        let clients = &static_clients;
        oauth::static_clients::sync(&repo, clients).await?;
        client_credentials = clients
            .iter()
            .any(|c| c.grant_types.iter().any(|g| g == "client_credentials"));
        introspection = clients.iter().any(|c| c.secret_hash.is_some());
        tracing::info!(clients = clients.len(), file = %path.display(), "clients declared in the clients file");
    }
    let assertion = if config.upstream.forward_authorization {
        let signer = assertion::Signer::load(
            repo.clone(),
            site.origin.as_str().to_string(),
            given_signing_key,
            config.upstream.jwt_key_rotation,
        )
        .await?;
        tracing::info!(jwks = %site.origin.join(assertion::JWKS_PATH), "the upstream receives a signed identity assertion as Authorization");
        Some(signer)
    } else {
        None
    };

    let cert = tls.as_ref().map(|t| match &t.acme {
        Some(acme) => acme.ready.clone(),
        None => server::health::CertReady::ready(),
    });
    let documents = match &config.auth.cimd {
        Some(opts) => Some(
            oauth::cimd::Documents::new(
                opts,
                config.auth.redirect_schemes.clone(),
                repo.clock().clone(),
            )
            .map_err(RunError::Documents)?,
        ),
        None => None,
    };
    let tokens = Arc::new(TokenCache::new(TOKEN_CACHE_CAPACITY));
    // Each shared part moves into the narrow state of the lowest layer that needs it; the
    // application's state reads it from there.
    let signin = login::SignIn::new(login::SignInParts {
        site,
        repo,
        authn,
        metrics,
    });
    let oauth = oauth::AuthServer::new(oauth::AuthServerParts {
        signin: signin.clone(),
        tokens,
        documents,
        pending: Default::default(),
        client_credentials,
        introspection,
        assertion: assertion.is_some(),
    });
    let state = AppState::new(App {
        signin,
        oauth,
        backend,
        upstream: config.upstream.clone(),
        forward_auth_path: config.forward_auth_path.clone(),
        assertion,
        cert,
        rate_limiter: (config.limits.rate_limit > 0)
            .then(|| server::ratelimit::RateLimiter::new(config.limits.rate_limit)),
        max_body: config.limits.max_body,
        body_read_timeout: config.limits.body_read_timeout,
    });
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let metrics_local_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(a) = metrics_local_addr {
        tracing::info!("metrics on http://{a}/metrics");
    }
    let banner = banner::Banner {
        version: env!("CARGO_PKG_VERSION"),
        mcp_url: state.site().resource.clone(),
        login_url: state.site().origin.join(web::flow::LOGIN_PATH),
        backend: match &config.backend {
            Backend::Http(url) => backend::http::redact(url),
            Backend::Stdio { program, args } => format!("stdio: {program} {}", args.join(" "))
                .trim()
                .to_string(),
            Backend::None => String::new(),
        },
        backend_state,
        sign_in: state
            .signin
            .authn
            .methods()
            .iter()
            .map(|m| m.to_string())
            .collect(),
        certificate: certificate_state(&config, state.repo()).await,
        listening: std::iter::once(format!("http://{local_addr}"))
            .chain(tls_local_addr.map(|a| format!("https://{a}")))
            .collect(),
    };
    Ok(Prepared {
        banner,
        shutdown_grace: config.shutdown_grace,
        workers: config.workers,
        fast_lane: config.fast_lane,
        limits: config.limits.clone(),
        metrics_listener,
        metrics_local_addr,
        tls_listener,
        tls_local_addr,
        tls,
        listener,
        local_addr,
        state,
    })
}

/// The banner's HTTPS line: who serves the certificate and in what state it is.
async fn certificate_state(config: &Config, repo: &Repo) -> String {
    use rustls_acme::CertCache;
    let Some(tls) = &config.tls else {
        return "off here (plain HTTP: terminate TLS in front of the proxy, or give an https --external-url)".into();
    };
    match &tls.source {
        config::TlsSource::Files { cert, .. } => {
            format!("from {} (reloaded when it changes)", cert.display())
        }
        config::TlsSource::Acme(acme) => {
            let cached = server::acme::StoreCache(repo.clone())
                .load_cert(std::slice::from_ref(&acme.host), &acme.directory_url)
                .await
                .ok()
                .flatten()
                .and_then(|pem| server::tls::pem_not_after(&pem));
            match cached {
                Some(until) => format!(
                    "ACME certificate for {}, cached, valid until {until}",
                    acme.host
                ),
                None => format!(
                    "ACME certificate for {}: being ordered now (see the log)",
                    acme.host
                ),
            }
        }
    }
}

/// Serves until `shutdown` resolves, then stops background tasks and flushes the store.
pub async fn serve(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Prepared {
        listener,
        state,
        shutdown_grace,
        workers,
        fast_lane,
        tls_listener,
        tls,
        limits,
        metrics_listener,
        ..
    } = prepared;
    let (header_read_timeout, max_connections) =
        (limits.header_read_timeout, limits.max_connections);
    let repo = state.repo().clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweep_loop(state.clone(), stop_rx.clone()));
    let reaper = state
        .backend
        .as_ref()
        .is_some_and(|b| b.stdio().is_some())
        .then(|| tokio::spawn(reap_loop(state.clone(), stop_rx)));

    let metrics_task = metrics_listener.map(|l| {
        let app = server::metrics_router(state.clone());
        let mut stop = stop_tx.subscribe();
        tokio::spawn(async move {
            let served = axum::serve(
                l,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the metrics listener failed");
            }
        })
    });
    let state_for_shutdown = state.clone();
    let files = tls
        .as_ref()
        .and_then(|t| t.files.clone())
        .map(|(cert, c, k)| {
            tokio::spawn(server::tls::watch_files(
                cert,
                c,
                k,
                state.metrics().certificate_files.clone(),
                stop_tx.subscribe(),
            ))
        });
    let origin = state.site().origin.clone();
    let hsts = tls.is_some().then_some(server::tls::HSTS);
    let lane = state
        .backend
        .as_ref()
        .and_then(backend::Backend::http)
        .cloned()
        .filter(|_| fast_lane)
        .and_then(|backend| {
            let shared = backend::http::lane::Shared {
                site: state.site().clone(),
                repo: state.repo().clone(),
                tokens: state.oauth.tokens.clone(),
                metrics: state.signin.metrics.clone(),
                max_body: state.max_body,
                body_read_timeout: state.body_read_timeout,
            };
            let signs = state.assertion.is_some();
            backend::http::lane::Lane::new(backend, shared, signs, hsts, workers)
        })
        .map(Arc::new);
    let mut acme_task = None;
    let apps = match tls {
        Some(mut t) => {
            let http01 = t.acme.as_mut().and_then(|a| a.http01.take()).map(|svc| {
                axum::Router::new().route_service("/.well-known/acme-challenge/{token}", svc)
            });
            if let Some(acme) = t.acme.take() {
                acme_task = Some(tokio::spawn(acme.run(stop_tx.subscribe())));
            }
            let plain_routes = http01
                .unwrap_or_default()
                .merge(server::health::routes(state.clone()));
            server::workers::Apps {
                main: server::tls::with_hsts(server::router(state)),
                plain: Some(server::tls::redirect_router(origin, Some(plain_routes))),
                tls: Some(t.acceptor),
                lane,
                header_read_timeout,
            }
        }
        None => server::workers::Apps {
            main: server::router(state),
            plain: None,
            tls: None,
            lane,
            header_read_timeout,
        },
    };
    let mut workers = server::workers::Workers::start(workers, apps).map_err(RunError::Serve)?;
    // Accept until the shutdown signal, then let requests finish; an open SSE stream never
    // finishes by itself, so after `--shutdown-grace` the remaining connections are dropped
    // and the process still exits cleanly.
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        // At --max-connections, accepting waits (new clients queue in the kernel's backlog).
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept_either(&listener, tls_listener.as_ref()) => match accepted {
                Ok((stream, peer, from)) => match stream.into_std() {
                    Ok(stream) => workers.dispatch(stream, peer, from, slot),
                    Err(e) => tracing::debug!(error = %e, "could not hand over a connection"),
                },
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drop(tls_listener);
    workers.stop();
    if tokio::time::timeout(shutdown_grace, workers.drained())
        .await
        .is_err()
    {
        tracing::info!(
            grace_secs = shutdown_grace.as_secs(),
            "connections still open after the grace period: closing them"
        );
    }
    if let Some(stdio) = state_for_shutdown
        .backend
        .as_ref()
        .and_then(backend::Backend::stdio)
    {
        stdio.shutdown().await;
    }
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    if let Some(f) = files {
        let _ = f.await;
    }
    if let Some(a) = acme_task {
        let _ = a.await;
    }
    if let Some(m) = metrics_task {
        let _ = m.await;
    }
    if let Some(r) = reaper {
        let _ = r.await;
    }
    if let Err(e) = repo.flush().await {
        tracing::error!(error = %e, "final store flush failed");
    }
    workers.finish().await;
    Ok(())
}

/// The next connection on the plain listener or the TLS one.
async fn accept_either(
    plain: &TcpListener,
    tls: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr, server::workers::Listener)> {
    use server::workers::Listener;
    let secure = async {
        match tls {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = plain.accept() => r.map(|(s, a)| (s, a, Listener::Plain)),
        r = secure => r.map(|(s, a)| (s, a, Listener::Tls)),
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

/// Ends idle stdio sessions until told to stop.
async fn reap_loop(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(stdio) = state.backend.as_ref().and_then(backend::Backend::stdio) else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(stdio.reap_interval()) => {}
            _ = stop.changed() => return,
        }
        stdio.reap_idle();
    }
}

/// Deletes expired records every [`SWEEP_INTERVAL`] until told to stop.
async fn sweep_loop(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let repo = state.repo().clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Some(l) = &state.rate_limiter {
            l.prune();
        }
        match repo.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired records"),
            Err(e) => tracing::warn!(error = %e, "store sweep failed"),
        }
    }
}
