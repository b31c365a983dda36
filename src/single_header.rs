//! A header that means one value is read once: present once, or absent. Two copies are
//! refused, never "the first wins": a proxy in front, a load balancer or the MCP server
//! could read the other copy, and the request would mean two things. This is the one rule:
//! [`first_repeated`] for a list of such headers at once (the guard's check of every
//! request, `request_head::malformed_head`, and of every upstream answer), [`value`] where
//! one is read on its own (`Authorization`, `DPoP`, `X-Forwarded-Host`, the modern-era
//! headers, the forward-auth request's). Handlers behind the guard read the headers it has
//! already checked with a plain `get`.

use axum::http::header::AsHeaderName;
use axum::http::{HeaderMap, HeaderValue};

/// A single-valued header that appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// The one value of `name` in `headers`: `None` when absent, [`Repeated`] when given twice
/// or more.
pub fn value<K: AsHeaderName>(
    headers: &HeaderMap,
    name: K,
) -> Result<Option<&HeaderValue>, Repeated> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(one), None) => Ok(Some(one)),
        (Some(_), Some(_)) => Err(Repeated),
    }
}

/// The first of `names` that `headers` give more than once. A map with as many names as
/// values repeats nothing, and then no name is looked up (each lookup parses and hashes the
/// name: 7 000 instructions a request for the guard's ten, bench/instructions.sh).
pub fn first_repeated<'n>(
    headers: &HeaderMap,
    names: impl IntoIterator<Item = &'n str>,
) -> Option<&'n str> {
    if headers.len() == headers.keys_len() {
        return None;
    }
    names
        .into_iter()
        .find(|name| value(headers, *name) == Err(Repeated))
}

/// The one value of `name` as text (visible ASCII, as `HeaderValue::to_str` reads it);
/// `None` when absent, repeated or not text. For readers that treat all three alike.
pub fn text<K: AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    value(headers, name)
        .ok()
        .flatten()
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn one_copy_is_read_and_two_are_refused() {
        let one = headers(&[("dpop", "a"), ("x-other", "b")]);
        assert_eq!(
            value(&one, "dpop"),
            Ok(Some(&HeaderValue::from_static("a")))
        );
        assert_eq!(text(&one, "dpop"), Some("a"));
        assert_eq!(value(&one, "authorization"), Ok(None));
        let two = headers(&[("dpop", "a"), ("dpop", "a")]);
        assert_eq!(value(&two, "dpop"), Err(Repeated), "even two equal copies");
        assert_eq!(text(&two, "dpop"), None);
        let three = headers(&[("dpop", "a"), ("dpop", "b"), ("dpop", "c")]);
        assert_eq!(value(&three, "DPoP"), Err(Repeated), "names in any case");
    }

    #[test]
    fn the_first_repeated_of_a_list_is_named() {
        let map = headers(&[("a", "1"), ("b", "1"), ("b", "2"), ("c", "1"), ("c", "1")]);
        assert_eq!(first_repeated(&map, ["a", "c", "b"]), Some("c"));
        assert_eq!(first_repeated(&map, ["a", "d"]), None);
        let once = headers(&[("a", "1"), ("b", "1")]);
        assert_eq!(first_repeated(&once, ["a", "b"]), None);
    }

    #[test]
    fn text_is_none_for_a_value_that_is_not_text() {
        let mut map = HeaderMap::new();
        map.insert(
            "x-csrf-token",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(text(&map, "x-csrf-token"), None);
        assert!(value(&map, "x-csrf-token").is_ok_and(|v| v.is_some()));
    }
}
