//! Starting: the store, keys, listeners, TLS, the backend and the application's state,
//! each checked before anything listens, and the banner a person at a terminal sees.

use std::sync::Arc;

use super::{EnvSecrets, Prepared, RunError, TOKEN_CACHE_CAPACITY, TlsSetup, bind, open_repo};
use crate::backend::http::HttpBackend;
use crate::backend::stdio::bridge::StdioBackend;
use crate::backend::stdio::child::{ChildSpec, environment};
use crate::clock::Clock;
use crate::config::{Backend, Config};
use crate::gate::TokenCache;
use crate::server::{App, AppState};
use crate::store::Repo;
use crate::{assertion, backend, banner, config, login, metrics, migrate, oauth, server, web};

/// Loads the certificate files and builds the acceptor.
fn tls_setup(
    tls: &config::TlsConfig,
    origin: &config::PublicOrigin,
    hosts: &[String],
    repo: &Repo,
    metrics: &metrics::Metrics,
) -> Result<TlsSetup, RunError> {
    match &tls.source {
        config::TlsSource::Files { cert, key } => {
            let pair = server::tls::load_pair(cert, key)?;
            let swappable = server::tls::Swappable::new(pair);
            let cfg = server::tls::server_config(swappable.clone(), origin, hosts, &[]);
            Ok(TlsSetup {
                accept: server::tls::TlsAccept::new(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
                files: Some((swappable, cert.clone(), key.clone())),
                acme: None,
            })
        }
        config::TlsSource::Acme(opts) => {
            let mut acme = server::acme::Acme::new(opts, repo.clone())?;
            acme.events = Some(metrics.acme.clone());
            // rustls-acme answers TLS-ALPN-01 in the handshake; shared answers are read
            // before it (server::tls::TlsAccept), so the main configuration never offers it.
            let extra: &[&[u8]] = if opts.http01 || acme.tls_alpn01.is_some() {
                &[]
            } else {
                &[server::tls::ACME_TLS_ALPN]
            };
            let cfg =
                server::tls::server_config(acme.resolver.clone(), origin, &opts.names(), extra);
            let mut accept =
                server::tls::TlsAccept::new(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)));
            accept.shared_alpn_answers = acme.tls_alpn01.clone();
            Ok(TlsSetup {
                accept,
                files: None,
                acme: Some(acme),
            })
        }
    }
}

/// Opens the store, loads keys, binds the listener and builds the state; logs the banner.
pub async fn prepare(
    config: Config,
    secrets: EnvSecrets,
    clock: Clock,
) -> Result<Prepared, RunError> {
    let repo = open_repo(&config.store, &config.data_path, &secrets, clock).await?;
    let metrics = Arc::new(metrics::Metrics::for_replica(config.replica_id.as_deref()));
    if let Some(id) = &config.replica_id {
        tracing::info!(replica = %id, "replica id (the `replica` label of every metric)");
    }
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
    let (tls_listener, tls_local_addr) = match &config.tls {
        Some(t) => {
            let l = bind(&t.listen).await?;
            let addr = l.local_addr().map_err(RunError::Serve)?;
            (Some(l), Some(addr))
        }
        None => (None, None),
    };
    let site = config.site(tls_local_addr.unwrap_or(local_addr).port())?;
    // The certificate is for the site's host: handshakes naming another are refused.
    let tls = match &config.tls {
        Some(t) => Some(tls_setup(
            t,
            &site.home,
            &site.server_hosts(),
            &repo,
            &metrics,
        )?),
        None => None,
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
    let served = match &config.servers {
        None => {
            if matches!(config.backend, Backend::None) {
                tracing::info!(
                    "no MCP server behind this proxy: give one last on the command line (an http(s) URL, or a stdio command after --) for clients to connect to {}",
                    site.server.resource
                );
            } else {
                tracing::info!(url = %site.server.resource, "MCP clients connect to {}", site.server.resource);
            }
            let one = ServerSpec::of_command_line(&config);
            server_backend(&config, &one, &site, &repo, &metrics)?
        }
        // `--config`: each server is served by its own state (below); the main one proxies
        // nothing.
        Some(_) => ServerBackend::default(),
    };
    let (backend, http_backend) = (served.backend, served.http);
    let backend_state = readiness(None, backend.as_ref(), http_backend.as_deref()).await;
    if http_backend.is_none() && config.servers.is_none() && matches!(config.backend, Backend::None)
    {
        tracing::info!(
            forward_auth = config.forward_auth_path.as_deref().unwrap_or("off"),
            "no backend configured: forward-auth only (sign-in, the authorization server and the forward-auth endpoint)"
        );
    }
    if !site.home.is_https() && !site.home.is_loopback() {
        tracing::warn!(
            "the external URL {} is plain http on a non-loopback host: tokens and cookies travel unencrypted",
            site.home.as_str()
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
            site.home.as_str().to_string(),
            given_signing_key,
            config.upstream.jwt_key_rotation,
        )
        .await?;
        tracing::info!(jwks = %site.home.join(assertion::JWKS_PATH), "the upstream receives a signed identity assertion as Authorization");
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
    let audit = audit_setup(&config.governance, &metrics)?;
    let shared_policy = load_policy(config.governance.policy_file.as_deref())?;
    let clock = repo.clock().clone();
    let relay_of = |policy: Option<Arc<crate::policy::PolicyFile>>| {
        crate::relay::Relay::new(policy, audit.clone(), clock.clone(), metrics.policy.clone())
    };
    let relay = relay_of(shared_policy.clone());
    // Each server of `--config`: its own site, backend, policy and relay.
    let mut named = Vec::new();
    let mut policies = oauth::Policies {
        shared: shared_policy.clone(),
        by_resource: Vec::new(),
    };
    for def in config.servers.iter().flat_map(|d| &d.servers) {
        let face = site.server_named(&def.name).ok_or_else(|| {
            RunError::Config(config::ConfigError(format!(
                "server {} has no site",
                def.name
            )))
        })?;
        let served = site.serving(face);
        let spec = ServerSpec::of_file(&config, def);
        let built = server_backend(&config, &spec, &served, &repo, &metrics)?;
        readiness(
            Some(&def.name),
            built.backend.as_ref(),
            built.http.as_deref(),
        )
        .await;
        let policy = match &def.policy_file {
            Some(path) => {
                let own = load_policy(Some(path))?;
                if let Some(p) = &own {
                    policies
                        .by_resource
                        .push((served.server.resource.clone(), p.clone()));
                }
                own
            }
            None => shared_policy.clone(),
        };
        tracing::info!(server = %def.name, url = %served.server.resource, "MCP clients connect to {}", served.server.resource);
        named.push((served, built, relay_of(policy), spec.upstream));
    }
    let tokens = Arc::new(TokenCache::new(TOKEN_CACHE_CAPACITY));
    let main_site = Arc::new(site.clone());
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
        policies,
        admin_users: config.governance.admin_users.clone(),
        backends: match &backend {
            Some(b) => vec![(None, b.clone())],
            None => named
                .iter()
                .filter_map(|(s, b, _, _)| Some((s.server.name.clone(), b.backend.clone()?)))
                .collect(),
        },
        audit,
    });
    let mut main = App {
        site: main_site,
        signin,
        oauth,
        backend,
        http_backend,
        upstream: config.upstream.clone(),
        forward_auth_path: config.forward_auth_path.clone(),
        assertion: assertion.map(Arc::new),
        cert,
        rate_limiter: (config.limits.rate_limit > 0).then(|| {
            Arc::new(server::ratelimit::RateLimiter::new(
                config.limits.rate_limit,
            ))
        }),
        max_body: config.limits.max_body,
        body_read_timeout: config.limits.body_read_timeout,
        relay,
        servers: Vec::new(),
    };
    main.servers = named
        .into_iter()
        .map(|(site, built, relay, upstream)| {
            AppState::new(App {
                site: Arc::new(site),
                backend: built.backend,
                http_backend: built.http,
                relay,
                upstream,
                ..main.clone()
            })
        })
        .collect();
    let state = AppState::new(main);
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
        mcp_url: state.site().server.resource.clone(),
        login_url: state.site().home.join(web::flow::LOGIN_PATH),
        backend: describe_backend(&config.backend),
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
        servers: config
            .servers
            .iter()
            .flat_map(|d| &d.servers)
            .map(|d| {
                let url = state
                    .site()
                    .server_named(&d.name)
                    .map(|s| s.resource.clone())
                    .unwrap_or_default();
                (d.name.clone(), url, describe_backend(&d.backend))
            })
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
                .load_cert(&acme.names(), &acme.directory_url)
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

/// A policy file, read now: one that does not parse stops the start.
fn load_policy(
    path: Option<&std::path::Path>,
) -> Result<Option<Arc<crate::policy::PolicyFile>>, RunError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let policy = crate::policy::PolicyFile::load(path).map_err(RunError::Policy)?;
    tracing::info!(file = %path.display(), "tool policy in force");
    Ok(Some(policy))
}

/// The audit log, opened now; `None` when it is off.
fn audit_setup(
    g: &config::Governance,
    metrics: &metrics::Metrics,
) -> Result<Option<Arc<crate::audit::AuditLog>>, RunError> {
    let Some(target) = g.audit_log.as_deref() else {
        return Ok(None);
    };
    let sink = match target {
        "-" => crate::audit::Sink::Stdout,
        path => crate::audit::Sink::File {
            path: path.into(),
            max_bytes: g.audit_max_bytes,
            keep: g.audit_keep,
        },
    };
    let log = crate::audit::AuditLog::start(
        sink,
        g.audit_arguments,
        g.audit_fail_closed,
        metrics.audit.clone(),
    )
    .map_err(RunError::Audit)?;
    Ok(Some(log))
}

/// A backend as the banner names it: the URL without credentials, or the command.
fn describe_backend(backend: &Backend) -> String {
    match backend {
        Backend::Http(url) => backend::http::redact(url),
        Backend::Stdio { program, args } => format!("stdio: {program} {}", args.join(" "))
            .trim()
            .to_string(),
        Backend::None => String::new(),
    }
}

/// One MCP server to put behind the proxy: the command line's, or one of `--config`, with
/// the options in force for it.
struct ServerSpec<'a> {
    /// Its name in `--config`; `None` for the command line's.
    name: Option<&'a str>,
    backend: &'a Backend,
    upstream: config::UpstreamOptions,
    stdio: config::StdioOptions,
}

impl<'a> ServerSpec<'a> {
    fn of_command_line(config: &'a Config) -> Self {
        Self {
            name: None,
            backend: &config.backend,
            upstream: config.upstream_of(None),
            stdio: config.stdio_of(None),
        }
    }

    fn of_file(config: &Config, def: &'a config::ServerDef) -> Self {
        Self {
            name: Some(&def.name),
            backend: &def.backend,
            upstream: config.upstream_of(Some(def)),
            stdio: config.stdio_of(Some(def)),
        }
    }
}

/// A server's backend, and the same one as an HTTP backend when it is one (the fast lane
/// serves that directly).
#[derive(Default)]
struct ServerBackend {
    backend: Option<Arc<dyn backend::Backend>>,
    http: Option<Arc<HttpBackend>>,
}

/// Builds the backend of `spec`, served at `site`.
fn server_backend(
    config: &Config,
    spec: &ServerSpec<'_>,
    site: &config::Site,
    repo: &Repo,
    metrics: &metrics::Metrics,
) -> Result<ServerBackend, RunError> {
    match spec.backend {
        Backend::None => Ok(ServerBackend::default()),
        Backend::Http(url) => {
            let upstream = spec.upstream.clone();
            let http = Arc::new(HttpBackend::new(
                url.clone(),
                upstream,
                site,
                config.workers,
            )?);
            tracing::info!(server = spec.name.unwrap_or_default(), backend = %http.base(), "proxying to an HTTP MCP server");
            Ok(ServerBackend {
                backend: Some(http.clone()),
                http: Some(http),
            })
        }
        Backend::Stdio { program, args } => {
            let stdio = stdio_backend(config, spec, program, args, repo, metrics)?;
            Ok(ServerBackend {
                backend: Some(Arc::new(stdio)),
                http: None,
            })
        }
    }
}

/// The stdio bridge for `program args`, with the options in force for `spec`.
fn stdio_backend(
    config: &Config,
    spec: &ServerSpec<'_>,
    program: &str,
    args: &[String],
    repo: &Repo,
    metrics: &metrics::Metrics,
) -> Result<StdioBackend, RunError> {
    use backend::stdio::placement;
    let opts = &spec.stdio;
    let run_as = opts.run_as.as_ref();
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
    extra_env.extend(opts.env.iter().cloned());
    let child = match &opts.cwd {
        Some(cwd) => ChildSpec {
            program: program.to_string(),
            args: args.to_vec(),
            cwd: Some(cwd.clone()),
            ..ChildSpec::default()
        },
        None => {
            let here = std::env::current_dir().map_err(RunError::StdioDir)?;
            // Each server of `--config` gets a directory of its own.
            let data = match spec.name {
                Some(name) => config.data_path.join("servers").join(name),
                None => config.data_path.clone(),
            };
            let dir = placement::default_dir(&data, run_as).map_err(RunError::StdioDir)?;
            tracing::info!(server = spec.name.unwrap_or_default(), dir = %dir.display(), "stdio servers start in a directory of their own (--stdio-cwd to choose another)");
            ChildSpec {
                program: placement::anchored_program(program, &here),
                args: placement::anchored_args(args, &here),
                cwd: Some(dir),
                ..ChildSpec::default()
            }
        }
    };
    let child = ChildSpec {
        run_as: run_as.map(|u| (u.uid, u.gid)),
        extra_env,
        clean_env: opts.clean_env,
        pass_env: opts.pass_env.clone(),
        ..child
    };
    let (_, withheld) = environment(&child, std::env::vars());
    let mode = if opts.shared {
        "one child shared by all sessions"
    } else {
        "one child per session"
    };
    tracing::info!(server = spec.name.unwrap_or_default(), command = %program, max_sessions = opts.max_sessions.total, "bridging a stdio MCP server ({mode})");
    if !withheld.is_empty() {
        tracing::info!(withheld = %withheld.join(","), "the stdio server does not see these variables of the proxy");
    }
    Ok(StdioBackend::new(
        child,
        opts.max_sessions,
        opts.idle_timeout,
        opts.warm_spare,
        opts.shared,
        backend::identity::IdentityEnv {
            vars: opts.identity_env.clone(),
            qualified_user: spec.upstream.identity.qualified_user,
        },
        metrics.children.clone(),
    )
    .naming_replica(config.replica_id.as_deref())
    .holding_calls(repo.keys().sealer.clone())
    .with_cache_ttl(u64::try_from(opts.cache_ttl.as_millis()).unwrap_or(u64::MAX)))
}

/// The same checks as /readyz, once at startup: a dead backend is said now, not found out
/// after someone signed in.
async fn readiness(
    server: Option<&str>,
    backend: Option<&Arc<dyn backend::Backend>>,
    http: Option<&HttpBackend>,
) -> banner::BackendState {
    let Some(b) = backend else {
        return banner::BackendState::None;
    };
    match b.not_ready(server::health::UPSTREAM_PROBE).await {
        None => banner::BackendState::Ready,
        Some(why) => {
            match http {
                Some(h) => {
                    tracing::warn!(server = server.unwrap_or_default(), backend = %h.base(), why, "the HTTP MCP server does not answer yet; requests get 502 until it does")
                }
                None => {
                    tracing::warn!(
                        server = server.unwrap_or_default(),
                        why,
                        "the stdio MCP server cannot be started as configured"
                    )
                }
            }
            banner::BackendState::NotReady(why)
        }
    }
}
