//! Google, GitHub and OpenID Connect sign-in: client credentials, allow-lists and attribute
//! rules.

use url::Url;

use super::{ConfigError, Secret, bad, list, url_flag};
use crate::cli::Cli;

/// The sign-in providers besides the password.
#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    pub google: Option<GoogleConfig>,
    pub github: Option<GitHubConfig>,
    pub oidc: Option<OidcConfig>,
    /// With exactly one provider and no password, the login page goes straight to it.
    pub auto_select: bool,
}

impl ProvidersConfig {
    pub fn count(&self) -> usize {
        usize::from(self.google.is_some())
            + usize::from(self.github.is_some())
            + usize::from(self.oidc.is_some())
    }
}

#[derive(Debug, Clone)]
pub struct GoogleConfig {
    pub client_id: String,
    pub client_secret: Secret,
    /// Normalised emails.
    pub allowed_users: Vec<String>,
    /// Lower-case `hd` values.
    pub allowed_workspaces: Vec<String>,
    pub allow_all: bool,
    pub auth_url: Url,
    pub token_url: Url,
    pub userinfo_url: Url,
}

#[derive(Debug, Clone)]
pub struct GitHubConfig {
    pub client_id: String,
    pub client_secret: Secret,
    /// Lower-case logins.
    pub allowed_users: Vec<String>,
    /// Lower-case `org` or `org:team-slug`.
    pub allowed_orgs: Vec<String>,
    pub allow_all: bool,
    pub web_url: Url,
    pub api_url: Url,
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub configuration_url: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    /// JSON Pointer to the user id in the claims.
    pub user_id_field: String,
    pub label: String,
    /// Normalised user ids.
    pub allowed_users: Vec<String>,
    pub allowed_globs: Vec<String>,
    pub attributes: Vec<AttributeRule>,
    pub attribute_globs: Vec<AttributeRule>,
    pub allow_all: bool,
}

/// `/pointer=value`: the claim at the pointer equals the value (or, for an array, one of
/// its elements does).
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeRule {
    pub pointer: String,
    pub value: String,
}

/// A user id or email as allow-lists compare it: trimmed, and lower-case when it is an
/// email. `None` for a value with several `@` (never allowed: mail systems disagree on
/// which one counts).
pub fn normalize_user(s: &str) -> Option<String> {
    let s = s.trim();
    match s.matches('@').count() {
        0 => Some(s.to_string()),
        1 => Some(s.to_ascii_lowercase()),
        _ => None,
    }
}

/// Splits a comma-separated list where `\,` is a literal comma.
pub fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The id and secret of a provider: both or neither.
fn client_pair(
    name: &str,
    id: &Option<String>,
    secret: &Option<String>,
) -> Result<Option<(String, Secret)>, ConfigError> {
    let id = id.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let secret = secret.as_deref().filter(|v| !v.is_empty());
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Ok(Some((id.to_string(), Secret::new(secret)))),
        (Some(_), None) => Err(bad(format!(
            "--{name}-client-id needs --{name}-client-secret"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "--{name}-client-secret needs --{name}-client-id"
        ))),
    }
}

fn attribute_rules(flag: &str, v: Option<&str>) -> Result<Vec<AttributeRule>, ConfigError> {
    split_escaped(v.unwrap_or_default())
        .into_iter()
        .map(|rule| {
            let (pointer, value) = rule
                .split_once('=')
                .ok_or_else(|| bad(format!("{flag}: {rule:?} is not /pointer=value")))?;
            let pointer = pointer.trim();
            jsonptr::Pointer::parse(pointer)
                .map_err(|e| bad(format!("{flag}: {pointer:?} is not a JSON Pointer: {e}")))?;
            Ok(AttributeRule {
                pointer: pointer.to_string(),
                value: value.trim().to_string(),
            })
        })
        .collect()
}

/// An allow-list given for a provider that is not configured would be silently ignored: the
/// operator believes something is restricted or allowed that is not there at all.
pub(super) fn lists_without_provider(cli: &Cli) -> Result<(), ConfigError> {
    let orphans = [
        (
            cli.google_client_id.is_none(),
            "--google-client-id",
            [
                (
                    "--google-allowed-users",
                    !cli.google_allowed_users.is_empty(),
                ),
                (
                    "--google-allowed-workspaces",
                    !cli.google_allowed_workspaces.is_empty(),
                ),
                ("--google-allow-all-users", cli.google_allow_all_users),
            ],
        ),
        (
            cli.github_client_id.is_none(),
            "--github-client-id",
            [
                (
                    "--github-allowed-users",
                    !cli.github_allowed_users.is_empty(),
                ),
                ("--github-allowed-orgs", !cli.github_allowed_orgs.is_empty()),
                ("--github-allow-all-users", cli.github_allow_all_users),
            ],
        ),
        (
            cli.oidc_configuration_url.is_none(),
            "--oidc-configuration-url",
            [
                ("--oidc-allowed-users", !cli.oidc_allowed_users.is_empty()),
                (
                    "--oidc-allowed-users-glob",
                    cli.oidc_allowed_users_glob.is_some(),
                ),
                ("--oidc-allow-all-users", cli.oidc_allow_all_users),
            ],
        ),
    ];
    for (missing, needed, lists) in orphans {
        if let Some((flag, _)) = lists.iter().find(|(_, given)| *given).filter(|_| missing) {
            return Err(bad(format!(
                "{flag} is set but that provider is not: add {needed} (and its other settings), or drop {flag}"
            )));
        }
    }
    Ok(())
}

pub(super) fn providers_config(cli: &Cli) -> Result<ProvidersConfig, ConfigError> {
    lists_without_provider(cli)?;
    let google = match client_pair("google", &cli.google_client_id, &cli.google_client_secret)? {
        None => None,
        Some((client_id, client_secret)) => {
            let allowed_users = list(&cli.google_allowed_users)
                .iter()
                .map(|u| {
                    normalize_user(u)
                        .filter(|u| u.contains('@'))
                        .ok_or_else(|| {
                            bad(format!("--google-allowed-users: {u:?} is not an email"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let allowed_workspaces: Vec<String> = list(&cli.google_allowed_workspaces)
                .iter()
                .map(|w| w.to_ascii_lowercase())
                .collect();
            if allowed_users.is_empty()
                && allowed_workspaces.is_empty()
                && !cli.google_allow_all_users
            {
                return Err(bad(
                    "Google sign-in would let every Google account in: set --google-allowed-users or --google-allowed-workspaces (or --google-allow-all-users if you mean it)",
                ));
            }
            Some(GoogleConfig {
                client_id,
                client_secret,
                allowed_users,
                allowed_workspaces,
                allow_all: cli.google_allow_all_users,
                auth_url: url_flag("--google-auth-url", &cli.google_auth_url)?,
                token_url: url_flag("--google-token-url", &cli.google_token_url)?,
                userinfo_url: url_flag("--google-userinfo-url", &cli.google_userinfo_url)?,
            })
        }
    };
    let github = match client_pair("github", &cli.github_client_id, &cli.github_client_secret)? {
        None => None,
        Some((client_id, client_secret)) => {
            let allowed_users: Vec<String> = list(&cli.github_allowed_users)
                .iter()
                .map(|u| u.to_ascii_lowercase())
                .collect();
            let allowed_orgs: Vec<String> = list(&cli.github_allowed_orgs)
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect();
            if let Some(o) = allowed_orgs
                .iter()
                .find(|o| o.split(':').count() > 2 || o.split(':').any(str::is_empty))
            {
                return Err(bad(format!(
                    "--github-allowed-orgs: {o:?} is not org or org:team-slug"
                )));
            }
            if allowed_users.is_empty() && allowed_orgs.is_empty() && !cli.github_allow_all_users {
                return Err(bad(
                    "GitHub sign-in would let every GitHub account in: set --github-allowed-users or --github-allowed-orgs (or --github-allow-all-users if you mean it)",
                ));
            }
            Some(GitHubConfig {
                client_id,
                client_secret,
                allowed_users,
                allowed_orgs,
                allow_all: cli.github_allow_all_users,
                web_url: url_flag("--github-url", &cli.github_url)?,
                api_url: url_flag("--github-api-url", &cli.github_api_url)?,
            })
        }
    };
    let oidc_url = cli
        .oidc_configuration_url
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let oidc_id = cli
        .oidc_client_id
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let oidc = match (oidc_url, oidc_id) {
        (None, None) => None,
        (None, Some(_)) => return Err(bad("--oidc-client-id needs --oidc-configuration-url")),
        (Some(_), None) => return Err(bad("--oidc-configuration-url needs --oidc-client-id")),
        (Some(url), Some(client_id)) => {
            let user_id_field = cli.oidc_user_id_field.trim().to_string();
            jsonptr::Pointer::parse(&user_id_field).map_err(|e| {
                bad(format!(
                    "--oidc-user-id-field {user_id_field:?} is not a JSON Pointer (like /email): {e}"
                ))
            })?;
            let allowed_users = list(&cli.oidc_allowed_users)
                .iter()
                .map(|u| {
                    normalize_user(u)
                        .ok_or_else(|| bad(format!("--oidc-allowed-users: {u:?} has several @")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let allowed_globs: Vec<String> =
                split_escaped(cli.oidc_allowed_users_glob.as_deref().unwrap_or_default())
                    .iter()
                    .map(|g| {
                        if g.contains('@') {
                            g.to_ascii_lowercase()
                        } else {
                            g.clone()
                        }
                    })
                    .collect();
            let attributes = attribute_rules(
                "--oidc-allowed-attributes",
                cli.oidc_allowed_attributes.as_deref(),
            )?;
            let attribute_globs = attribute_rules(
                "--oidc-allowed-attributes-glob",
                cli.oidc_allowed_attributes_glob.as_deref(),
            )?;
            if allowed_users.is_empty()
                && allowed_globs.is_empty()
                && attributes.is_empty()
                && attribute_globs.is_empty()
                && !cli.oidc_allow_all_users
            {
                return Err(bad(
                    "OIDC sign-in would let every account at the provider in: set --oidc-allowed-users, --oidc-allowed-users-glob or --oidc-allowed-attributes (or --oidc-allow-all-users if you mean it)",
                ));
            }
            let scopes = list(&cli.oidc_scopes);
            if !scopes.iter().any(|s| s == "openid") {
                return Err(bad("--oidc-scopes must include openid"));
            }
            Some(OidcConfig {
                configuration_url: url_flag("--oidc-configuration-url", url)?,
                client_id: client_id.to_string(),
                client_secret: cli
                    .oidc_client_secret
                    .as_deref()
                    .filter(|v| !v.is_empty())
                    .map(Secret::new),
                scopes,
                user_id_field,
                label: cli.oidc_provider_name.trim().to_string(),
                allowed_users,
                allowed_globs,
                attributes,
                attribute_globs,
                allow_all: cli.oidc_allow_all_users,
            })
        }
    };
    Ok(ProvidersConfig {
        google,
        github,
        oidc,
        auto_select: !cli.no_provider_auto_select,
    })
}
