//! Minting opaque secrets: access and refresh tokens, codes, ids.
//!
//! 256 bits from the OS CSPRNG, base64url without padding, behind a short prefix that names
//! the kind (so secret scanners and people can tell them apart). Only their SHA-256
//! ([`crate::store::TokenHash`]) is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// The scope every access token carries; the proxied resource requires it.
pub const MCP_SCOPE: &str = "mcp";

/// The scope that asks for refresh tokens (issued anyway, see docs/design.md, "Tokens").
pub const OFFLINE_ACCESS: &str = "offline_access";

/// Prefix of access tokens.
pub const ACCESS_PREFIX: &str = "mcpat_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "mcprt_";
/// Prefix of authorization codes.
pub const CODE_PREFIX: &str = "mcpac_";

/// A fresh random secret: `prefix` followed by 43 base64url characters (256 bits).
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(prefix.len() + 43);
    s.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut s);
    s
}

/// A random identifier (128 bits, base64url): client ids, grant ids.
pub fn generate_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_uniqueness() {
        let a = generate(ACCESS_PREFIX);
        assert!(a.starts_with(ACCESS_PREFIX));
        assert_eq!(a.len(), ACCESS_PREFIX.len() + 43);
        assert_ne!(a, generate(ACCESS_PREFIX));
        assert_eq!(generate_id().len(), 22);
    }
}
