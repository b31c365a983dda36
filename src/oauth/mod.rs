//! The OAuth 2.1 side: metadata documents (RFC 8414, RFC 9728).

pub mod metadata;
pub mod tokens;
