//! What the sign-in pages and the authorization server share, so neither imports the other
//! for it: the pages and their headers, browser sessions and CSRF, strict form parsing, the
//! hand-off between the authorization endpoint, sign-in and consent, and the answer to a
//! client at its redirect URI.

pub mod flow;
pub mod form;
pub mod pages;
pub mod redirect;
pub mod refusal;
pub mod session;
