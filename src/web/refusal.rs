//! The error type of the pages for people: why a page could not go on, answered as a readable
//! page (or, for a person who must sign in first, a redirect to sign-in). Handlers return
//! `Result<Response, PageRefusal>` and refuse with `?`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::flow::sign_in_for;
use super::pages::{FormTarget, error_page, see_other};
use crate::store::StoreError;

/// A page refused, with the site name the error page shows.
#[derive(Debug)]
pub struct PageRefusal {
    site_name: String,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    /// The store failed: 503, fail closed (nothing was granted).
    Unavailable(StoreError),
    /// A form sent from another site (its `Origin` is not ours).
    ForeignOrigin,
    /// Not a form, or not one we can read.
    Unreadable,
    /// The CSRF token does not match the cookie (an old page, or a forgery).
    Expired,
    /// A stated refusal: the status, a title and a sentence for the person.
    Stated {
        status: StatusCode,
        title: &'static str,
        message: String,
    },
    /// The pending authorization request `req` (or a page of the person's own, `None`)
    /// needs a signed-in person first.
    SignInFirst { req: Option<String> },
}

impl PageRefusal {
    pub fn unavailable(site_name: String, e: StoreError) -> Self {
        Self::new(site_name, Problem::Unavailable(e))
    }

    pub fn foreign_origin(site_name: String) -> Self {
        Self::new(site_name, Problem::ForeignOrigin)
    }

    pub fn unreadable(site_name: String) -> Self {
        Self::new(site_name, Problem::Unreadable)
    }

    pub fn expired_form(site_name: String) -> Self {
        Self::new(site_name, Problem::Expired)
    }

    pub fn stated(
        site_name: String,
        status: StatusCode,
        title: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Self::new(
            site_name,
            Problem::Stated {
                status,
                title,
                message,
            },
        )
    }

    pub fn sign_in_first(site_name: String, req: &str) -> Self {
        let req = Some(req.to_string());
        Self::new(site_name, Problem::SignInFirst { req })
    }

    /// A page of the person's own (their connected apps) asked for before signing in: the
    /// sign-in page, which links back once they are in.
    pub fn sign_in_to_see(site_name: String) -> Self {
        Self::new(site_name, Problem::SignInFirst { req: None })
    }

    fn new(site_name: String, problem: Problem) -> Self {
        Self { site_name, problem }
    }

    /// The status the page is answered with.
    fn status(&self) -> StatusCode {
        match &self.problem {
            Problem::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Problem::ForeignOrigin | Problem::Expired => StatusCode::FORBIDDEN,
            Problem::Unreadable => StatusCode::BAD_REQUEST,
            Problem::Stated { status, .. } => *status,
            Problem::SignInFirst { .. } => StatusCode::SEE_OTHER,
        }
    }
}

impl IntoResponse for PageRefusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let (title, message): (&str, &str) = match &self.problem {
            Problem::Unavailable(e) => {
                tracing::error!(error = %e, "store failure on a page for people");
                (
                    "Temporarily unavailable",
                    "Something went wrong on our side. Please try again in a moment.",
                )
            }
            Problem::ForeignOrigin => ("Request refused", "This form was sent from another site."),
            Problem::Unreadable => ("Bad request", "The form could not be read."),
            Problem::Expired => (
                "This form expired",
                "Go back, reload the page and try again.",
            ),
            Problem::Stated { title, message, .. } => (title, message),
            Problem::SignInFirst { req } => {
                let to = req
                    .as_deref()
                    .map_or_else(|| super::flow::LOGIN_PATH.to_string(), sign_in_for);
                return see_other(&to, FormTarget::SelfOnly);
            }
        };
        error_page(&self.site_name, status, title, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status() {
        let site = || "mcp.example.com".to_string();
        let io = StoreError::Sled(sled::Error::Unsupported("disk".into()));
        assert_eq!(
            PageRefusal::unavailable(site(), io)
                .into_response()
                .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            PageRefusal::foreign_origin(site()).into_response().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            PageRefusal::unreadable(site()).into_response().status(),
            StatusCode::BAD_REQUEST
        );
        let stated = PageRefusal::stated(site(), StatusCode::GONE, "Gone", "It went.");
        assert_eq!(stated.into_response().status(), StatusCode::GONE);
        let first = PageRefusal::sign_in_first(site(), "abc").into_response();
        assert_eq!(first.status(), StatusCode::SEE_OTHER);
        let to = first.headers()[axum::http::header::LOCATION]
            .to_str()
            .unwrap();
        assert!(to.contains("abc"), "{to}");
    }
}
