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
    repo: &Repo,
    metrics: &metrics::Metrics,
) -> Result<TlsSetup, RunError> {
    match &tls.source {
        config::TlsSource::Files { cert, key } => {
            let pair = server::tls::load_pair(cert, key)?;
            let swappable = server::tls::Swappable::new(pair);
            let cfg = server::tls::server_config(swappable.clone(), origin, None, &[]);
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
                server::tls::server_config(acme.resolver.clone(), origin, Some(&opts.host), extra);
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
        Some(t) => Some(tls_setup(t, &site.origin, &repo, &metrics)?),
        None => None,
    };
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
            Some(
                StdioBackend::new(
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
                )
                .naming_replica(config.replica_id.as_deref())
                .holding_calls(repo.keys().sealer.clone())
                .with_cache_ttl(
                    u64::try_from(config.stdio.cache_ttl.as_millis()).unwrap_or(u64::MAX),
                ),
            )
        }
        _ => None,
    };
    // The same checks as /readyz, once at startup: a dead backend is said now, not found
    // out after someone signed in.
    let backend: Option<Arc<dyn backend::Backend>> = match (&http_backend, stdio_backend) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(s)) => Some(Arc::new(s)),
        (None, None) => None,
    };
    let backend_state = match &backend {
        None => banner::BackendState::None,
        Some(b) => match b.not_ready(server::health::UPSTREAM_PROBE).await {
            None => banner::BackendState::Ready,
            Some(why) => {
                match &http_backend {
                    Some(h) => {
                        tracing::warn!(backend = %h.base(), why, "the HTTP MCP server does not answer yet; requests get 502 until it does")
                    }
                    None => {
                        tracing::warn!(why, "the stdio MCP server cannot be started as configured")
                    }
                }
                banner::BackendState::NotReady(why)
            }
        },
    };
    match &http_backend {
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
    let relay = relay_setup(&config.governance, &metrics, repo.clock().clone())?;
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
        policy: relay.as_ref().and_then(|r| r.policy().cloned()),
        admin_users: config.governance.admin_users.clone(),
        backend: backend.clone(),
        audit: relay.as_ref().and_then(|r| r.audit().cloned()),
    });
    let state = AppState::new(App {
        signin,
        oauth,
        backend,
        http_backend,
        upstream: config.upstream.clone(),
        forward_auth_path: config.forward_auth_path.clone(),
        assertion,
        cert,
        rate_limiter: (config.limits.rate_limit > 0)
            .then(|| server::ratelimit::RateLimiter::new(config.limits.rate_limit)),
        max_body: config.limits.max_body,
        body_read_timeout: config.limits.body_read_timeout,
        relay,
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

/// The policy (read now: a file that does not parse stops the start) and the audit log
/// (opened now), behind the relay; `None` when neither is configured.
fn relay_setup(
    g: &config::Governance,
    metrics: &metrics::Metrics,
    clock: crate::clock::Clock,
) -> Result<Option<Arc<crate::relay::Relay>>, RunError> {
    let policy = g
        .policy_file
        .as_deref()
        .map(crate::policy::PolicyFile::load)
        .transpose()
        .map_err(RunError::Policy)?;
    let audit = match g.audit_log.as_deref() {
        None => None,
        Some(target) => {
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
            Some(log)
        }
    };
    if let Some(p) = &g.policy_file {
        tracing::info!(file = %p.display(), "tool policy in force");
    }
    Ok(crate::relay::Relay::new(
        policy,
        audit,
        clock,
        metrics.policy.clone(),
    ))
}
