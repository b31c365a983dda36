//! The hand-off between the authorization endpoint, sign-in and consent: an authorization
//! request waits in the store under an id (`req`) while the person signs in, then consents.
//! These are the paths and the lifetime all three agree on.

/// The sign-in page (sigbit's path).
pub const LOGIN_PATH: &str = "/.auth/login";

/// Signing out.
pub const LOGOUT_PATH: &str = "/.auth/logout";

/// The consent page.
pub const CONSENT_PATH: &str = "/.auth/consent";

/// A signed-in person's connected apps.
pub const APPS_PATH: &str = "/.auth/apps";

/// How long a person has to sign in and consent.
pub const REQUEST_TTL: u64 = 15 * 60;

/// A value as it goes into a query string.
pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where a signed-in person goes next: the consent for the pending request `req`, or the
/// sign-in page (which says who is signed in) when nothing is pending.
pub fn next_step(req: Option<&str>) -> String {
    match req {
        Some(r) => format!("{CONSENT_PATH}?req={}", urlencode(r)),
        None => LOGIN_PATH.to_string(),
    }
}

/// The sign-in page for the pending request `req`.
pub fn sign_in_for(req: &str) -> String {
    format!("{LOGIN_PATH}?req={}", urlencode(req))
}
