//! Strict parsing of OAuth parameters (RFC 6749 §3.1, §3.2): a parameter given twice is an
//! error, a parameter without a value counts as absent.

use std::collections::HashMap;

/// The parameters of one request.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` data (a body or a query string). Errs with
    /// the name of a repeated parameter.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(data) {
            if v.is_empty() {
                if map.contains_key(k.as_ref()) {
                    return Err(k.into_owned());
                }
                continue;
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(k.into_owned());
            }
        }
        Ok(Self(map))
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
        assert_eq!(Params::parse(b"a=1&a=2").unwrap_err(), "a");
        assert_eq!(Params::parse(b"a=1&a=").unwrap_err(), "a");
        assert!(
            Params::parse(b"code=x&code=x").is_err(),
            "even the same value twice"
        );
    }

    proptest! {
        #[test]
        fn any_repeat_is_refused(name in "[a-z_]{1,12}", v1 in "[a-zA-Z0-9]{1,8}", v2 in "[a-zA-Z0-9]{0,8}", other in "[A-Z]{1,5}=[a-z]{0,5}") {
            let body = format!("{name}={v1}&{other}&{name}={v2}");
            prop_assert_eq!(Params::parse(body.as_bytes()).unwrap_err(), name);
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
