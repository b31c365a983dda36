//! PKCE (RFC 7636) with S256 only, as OAuth 2.1 and the MCP authorization spec require.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The only method accepted.
pub const S256: &str = "S256";

/// An S256 challenge is base64url (no padding) of a SHA-256: exactly 43 characters.
pub fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters.
pub fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// BASE64URL(SHA256(verifier)).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` answers `challenge`, compared in constant time.
pub fn verify(verifier: &str, challenge: &str) -> bool {
    valid_verifier(verifier) && bool::from(s256(verifier).as_bytes().ct_eq(challenge.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc7636_appendix_b() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(s256(v), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(verify(v, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
    }

    #[test]
    fn plain_is_not_s256() {
        let v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(
            !verify(v, v),
            "a plain challenge (verifier == challenge) never verifies"
        );
    }

    proptest! {
        #[test]
        fn only_the_right_verifier_verifies(v in "[A-Za-z0-9._~-]{43,128}", w in "[A-Za-z0-9._~-]{43,128}") {
            let c = s256(&v);
            prop_assert!(valid_challenge(&c));
            prop_assert!(verify(&v, &c));
            prop_assert_eq!(verify(&w, &c), v == w);
        }

        #[test]
        fn verifiers_of_wrong_length_or_alphabet_fail(v in "[A-Za-z0-9]{0,42}|[A-Za-z0-9]{129,140}|[A-Za-z0-9 +/=]{43,60}") {
            let c = s256(&v);
            prop_assert_eq!(verify(&v, &c), valid_verifier(&v));
            prop_assert!(!valid_verifier(&v) || v.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
}
