//! Strict parsing of OAuth parameters (RFC 6749 §3.1, §3.2): a parameter given twice is an
//! error, a parameter without a value counts as absent, and every request is bounded in the
//! number and size of its parameters (what is kept of it, a pending authorization request
//! with its `state`, must not let a stranger fill the store).

use std::collections::HashMap;

/// Most parameters in one request (an authorization request has about ten).
pub const MAX_PARAMS: usize = 32;

/// Longest value of one parameter, in bytes after decoding. Generous for `state`,
/// `redirect_uri`, a metadata-document `client_id` and a client assertion.
pub const MAX_VALUE: usize = 2048;

/// Why a request's parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("the parameter {0} is repeated")]
    Repeated(String),
    #[error("the parameter {0} is longer than {MAX_VALUE} bytes")]
    TooLong(String),
    #[error("more than {MAX_PARAMS} parameters")]
    TooMany,
}

/// The parameters of one request.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` data (a body or a query string).
    pub fn parse(data: &[u8]) -> Result<Self, ParamError> {
        // Every name given, valued or empty: a repeat is refused whichever copy is empty.
        let mut named: HashMap<String, Option<String>> = HashMap::new();
        for (count, (k, v)) in url::form_urlencoded::parse(data).enumerate() {
            if count >= MAX_PARAMS {
                return Err(ParamError::TooMany);
            }
            if k.len() > MAX_VALUE || v.len() > MAX_VALUE {
                return Err(ParamError::TooLong(k.chars().take(40).collect()));
            }
            let value = (!v.is_empty()).then(|| v.into_owned());
            if named.insert(k.to_string(), value).is_some() {
                return Err(ParamError::Repeated(k.into_owned()));
            }
        }
        let valued = named.into_iter().filter_map(|(k, v)| Some((k, v?)));
        Ok(Self(valued.collect()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repeated_and_empty() {
        let p = Params::parse(b"a=1&b=&c=%20x").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some(" x"));
        let repeated = ParamError::Repeated("a".into());
        assert_eq!(Params::parse(b"a=1&a=2").unwrap_err(), repeated);
        assert_eq!(Params::parse(b"a=1&a=").unwrap_err(), repeated);
        assert_eq!(
            Params::parse(b"a=&a=1").unwrap_err(),
            repeated,
            "empty first"
        );
        assert_eq!(Params::parse(b"a&a").unwrap_err(), repeated, "both empty");
        assert!(
            Params::parse(b"code=x&code=x").is_err(),
            "even the same value twice"
        );
    }

    #[test]
    fn bounded_in_count_and_size() {
        let long = format!("state={}", "s".repeat(MAX_VALUE + 1));
        assert_eq!(
            Params::parse(long.as_bytes()).unwrap_err(),
            ParamError::TooLong("state".into())
        );
        assert!(Params::parse(format!("state={}", "s".repeat(MAX_VALUE)).as_bytes()).is_ok());
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            Params::parse(many.join("&").as_bytes()).unwrap_err(),
            ParamError::TooMany
        );
    }

    proptest! {
        #[test]
        fn any_repeat_is_refused(name in "[a-z_]{1,12}", v1 in "[a-zA-Z0-9]{1,8}", v2 in "[a-zA-Z0-9]{0,8}", other in "[A-Z]{1,5}=[a-z]{0,5}") {
            let body = format!("{name}={v1}&{other}&{name}={v2}");
            prop_assert_eq!(Params::parse(body.as_bytes()).unwrap_err(), ParamError::Repeated(name));
        }

        #[test]
        fn distinct_names_round_trip(pairs in proptest::collection::btree_map("[a-z]{1,6}", "[ -~]{1,10}", 0..6)) {
            let body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.iter()).finish();
            let p = Params::parse(body.as_bytes()).unwrap();
            for (k, v) in &pairs {
                prop_assert_eq!(p.get(k), Some(v.as_str()));
            }
        }
    }
}
