//! The pages people see, rendered from `templates/` with askama, and the headers every page
//! carries: not framable, not cached, no referrer, a strict CSP.

use askama::Template;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// The stylesheet, compiled in so the binary needs no files beside it.
pub const STYLE_CSS: &str = include_str!("../../static/style.css");

/// The passkey ceremonies' script, compiled in and inlined on the pages with a passkey button
/// ([`allow_passkey_script`] lets it, and only it, run).
pub const PASSKEY_JS: &str = include_str!("../../static/passkeys.js");

/// The CSP of a page that runs [`PASSKEY_JS`]: the script by its hash, fetches to us, and
/// otherwise the same as every page.
static PASSKEY_CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
    use base64::Engine;
    use sha2::Digest;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(PASSKEY_JS));
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{hash}'; connect-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// Lets `resp`, a page that inlines [`PASSKEY_JS`], run it.
pub fn allow_passkey_script(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, PASSKEY_CSP.clone());
    resp
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub site_name: &'a str,
    pub client_name: Option<&'a str>,
    pub error: Option<&'a str>,
    pub csrf: &'a str,
    pub req: Option<&'a str>,
    pub locked: bool,
    /// Whether the password form is shown.
    pub password: bool,
    pub providers: Vec<ProviderButton>,
    /// Whether the "Sign in with a passkey" button is shown.
    pub passkey: bool,
    /// A line of good news ("Passkey added").
    pub notice: Option<&'a str>,
    pub script: &'a str,
}

/// A "Sign in with …" button on the login page.
pub struct ProviderButton {
    pub label: String,
    pub href: String,
}

#[derive(Template)]
#[template(path = "denied.html")]
pub struct DeniedPage<'a> {
    pub site_name: &'a str,
    pub provider: &'a str,
    pub user: &'a str,
    pub csrf: &'a str,
    /// The client's redirect address with `access_denied`, when a client is waiting.
    pub return_url: Option<&'a str>,
    pub client_name: &'a str,
    /// The server of `--config` the account may not use; `None`: the proxy's sign-in.
    pub server: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "consent.html")]
pub struct ConsentPage<'a> {
    pub site_name: &'a str,
    /// The server of `--config` the app asks for.
    pub server: Option<&'a str>,
    pub client_name: &'a str,
    pub client_id: &'a str,
    /// Where the client's metadata document lives, when it has one.
    pub document_host: Option<String>,
    pub redirect_host: &'a str,
    pub user: &'a str,
    pub scopes: Vec<String>,
    pub warnings: Vec<String>,
    pub csrf: &'a str,
    pub req: &'a str,
}

#[derive(Template)]
#[template(path = "signed_in.html")]
pub struct SignedInPage<'a> {
    pub site_name: &'a str,
    pub user: &'a str,
    pub csrf: &'a str,
}

/// One app on the connected-apps page.
pub struct ConnectedApp {
    /// The server of `--config` it may use (empty: the one server).
    pub server: String,
    pub grant_id: String,
    pub client_id: String,
    pub client_name: String,
    pub granted: String,
    pub last_active: String,
    pub redirect_hosts: Vec<String>,
    pub scopes: Vec<String>,
}

#[derive(Template)]
#[template(path = "apps.html")]
pub struct AppsPage<'a> {
    pub site_name: &'a str,
    pub user: &'a str,
    pub apps: Vec<ConnectedApp>,
    pub notice: Option<&'a str>,
    pub csrf: &'a str,
    /// The password account's passkeys, when this person is that account and passkeys are
    /// offered.
    pub passkeys: Option<Vec<PasskeyRow>>,
    /// Where the page goes once a passkey is added.
    pub next: &'a str,
    pub script: &'a str,
}

/// A passkey as the pages list it.
pub struct PasskeyRow {
    /// The credential id, base64url: names it in the removal's address.
    pub id: String,
    pub name: String,
    pub added: String,
    pub last_used: String,
}

#[derive(Template)]
#[template(path = "passkeys.html")]
pub struct PasskeysPage<'a> {
    pub site_name: &'a str,
    pub user: &'a str,
    pub csrf: &'a str,
    /// Where the page goes once the passkey is added.
    pub next: &'a str,
    pub script: &'a str,
}

#[derive(Template)]
#[template(path = "passkey_remove.html")]
pub struct RemovePasskeyPage<'a> {
    pub site_name: &'a str,
    pub user: &'a str,
    pub passkey: &'a PasskeyRow,
    /// That removing it leaves the account without a passkey while one is required.
    pub last_required: bool,
    pub csrf: &'a str,
}

#[derive(Template)]
#[template(path = "apps_revoke.html")]
pub struct RevokeAppPage<'a> {
    pub site_name: &'a str,
    pub user: &'a str,
    pub client_name: &'a str,
    pub grant_id: &'a str,
    pub csrf: &'a str,
}

/// A live session on the operator console.
pub struct SessionRow {
    /// The server of `--config` it is a session of (empty: the one server).
    pub server: String,
    pub id: String,
    pub user: String,
    pub process: String,
    pub age: String,
    pub idle: String,
    pub memory: String,
}

/// A server of `--config` on the operator console.
pub struct ServerRow {
    pub name: String,
    pub url: String,
    /// `stdio` or `http`.
    pub backend: String,
    pub sessions: usize,
    /// Who may use it.
    pub users: String,
}

/// A grant on the operator console.
pub struct GrantRow {
    /// The server of `--config` it is for (empty: the one server).
    pub server: String,
    pub id: String,
    pub user: String,
    pub client: String,
    pub granted: String,
    pub scopes: String,
}

/// A client on the operator console.
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub issued: String,
    pub redirects: String,
}

/// A client address with recent sign-in attempts on the operator console.
pub struct LockoutRow {
    pub address: String,
    pub attempts: usize,
    pub locked_until: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage<'a> {
    pub site_name: &'a str,
    pub user: &'a str,
    pub notice: Option<&'a str>,
    pub csrf: &'a str,
    /// The servers of `--config` (none for the command line's one server).
    pub servers: Vec<ServerRow>,
    pub sessions: Vec<SessionRow>,
    pub grants: Vec<GrantRow>,
    pub clients: Vec<ClientRow>,
    pub lockouts: Vec<LockoutRow>,
    /// The password account's passkeys.
    pub passkeys: Vec<PasskeyRow>,
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage<'a> {
    pub site_name: &'a str,
    pub mcp_url: &'a str,
    /// The servers of `--config`: name and URL (none for the command line's one server).
    pub servers: Vec<(String, String)>,
    /// Who is signed in in this browser, if anyone.
    pub user: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub site_name: &'a str,
    pub title: &'a str,
    pub message: &'a str,
}

/// A time as the pages show it (UTC, as HTTP dates read), or a dash for none.
pub fn when(t: Option<crate::clock::UnixTime>) -> String {
    match t {
        Some(secs) => {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        }
        None => "—".into(),
    }
}

/// How strict the page's CSP is about where forms may lead.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FormTarget {
    /// Forms post to us and we redirect to ourselves.
    SelfOnly,
    /// The consent form's answer redirects to the client (any origin or app scheme), which
    /// `form-action` would block in browsers that apply it to redirects.
    Client,
}

/// An HTML response with the page headers.
pub fn page(status: StatusCode, template: &impl Template, target: FormTarget) -> Response {
    let body = match template.render() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "page template failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
        }
    };
    let mut resp = (status, Html(body)).into_response();
    secure_headers(resp.headers_mut(), target);
    resp
}

/// [`page`], also setting the CSRF cookie when the form on it needed a new one.
pub fn page_with_cookie(
    status: StatusCode,
    template: &impl Template,
    target: FormTarget,
    set_cookie: Option<HeaderValue>,
) -> Response {
    let mut resp = page(status, template, target);
    if let Some(c) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Headers for every page and redirect of the sign-in flow.
pub fn secure_headers(h: &mut HeaderMap, target: FormTarget) {
    let csp = match target {
        FormTarget::SelfOnly => {
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        }
        FormTarget::Client => {
            "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
        }
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: browsers send `Origin: null` on form posts from a
    // no-referrer page, which the Origin check refuses; other sites still learn nothing.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An error page for a person.
pub fn error_page(site_name: &str, status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        &ErrorPage {
            site_name,
            title,
            message,
        },
        FormTarget::SelfOnly,
    )
}

/// `GET /.auth/static/style.css`.
pub async fn stylesheet() -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A 303 to `location` (after a POST, or between steps of the flow).
pub fn see_other(location: &str, target: FormTarget) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(resp.headers_mut(), target);
    resp
}
