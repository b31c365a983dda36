//! Member names that appear twice in one JSON object. RFC 8259 §4 says names "SHOULD be
//! unique" and leaves open which of two a reader takes: serde_json, `JSON.parse` and Python
//! take the last, other readers the first. Wherever the proxy decides on what a message
//! says and a server behind it acts on the same message, such a text is refused rather
//! than read one way here and another way there.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether two of `names` are the same. The handful an object usually has are compared
/// pairwise (a hash set costs more than the rest of reading them); many are sorted.
pub fn repeated<'a>(names: impl IntoIterator<Item = &'a str>) -> bool {
    const PAIRWISE: usize = 16;
    let mut names: Vec<&str> = names.into_iter().collect();
    if names.len() <= PAIRWISE {
        return names
            .iter()
            .enumerate()
            .any(|(i, name)| names[..i].contains(name));
    }
    names.sort_unstable();
    names.windows(2).any(|w| w[0] == w[1])
}

/// Whether any object in the JSON text `text`, at any depth, names a member twice (names
/// compared as decoded: `"a"` and `"\u0061"` are the same). `false` for a text that is not
/// JSON: its readers refuse it anyway.
pub fn names_a_member_twice(text: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(text);
    matches!(Twice.deserialize(&mut de), Ok(true)) && de.end().is_ok()
}

/// One value of [`names_a_member_twice`]: `true` when it, or a value inside it, has an
/// object naming a member twice.
struct Twice;

impl<'de> DeserializeSeed<'de> for Twice {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Twice {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        let mut inside = false;
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            names.push(name);
            inside |= map.next_value_seed(Twice)?;
        }
        Ok(inside || repeated(names.iter().map(Cow::as_ref)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut inside = false;
        while let Some(twice) = seq.next_element_seed(Twice)? {
            inside |= twice;
        }
        Ok(inside)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_given_twice_is_found_at_any_depth_however_it_is_written() {
        for (text, twice) in [
            (r#"{"a":1,"b":2}"#, false),
            (r#"{"a":1,"a":2}"#, true),
            (r#"{"a":1,"\u0061":2}"#, true),
            (r#"{"p":{"name":"x","name":"y"}}"#, true),
            (r#"{"p":[{"k":1},{"k":1,"k":2}]}"#, true),
            (r#"[{"a":1},{"a":1}]"#, false),
            (r#"{"a":{"a":{"a":1}}}"#, false),
            (r#"{"a":1,"a":2"#, false),
            ("not json", false),
        ] {
            assert_eq!(names_a_member_twice(text.as_bytes()), twice, "{text}");
        }
        let many: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        assert!(!repeated(many.iter().map(String::as_str)));
        assert!(repeated(many.iter().map(String::as_str).chain(["k7"])));
    }
}
