//! Member names that appear twice in one JSON object. RFC 8259 §4 says names "SHOULD be
//! unique" and leaves open which of two a reader takes: serde_json, `JSON.parse` and Python
//! take the last, other readers the first. Wherever the proxy decides on what a message
//! says and a server behind it acts on the same message, such a text is refused rather
//! than read one way here and another way there.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

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

/// A JSON text as [`read`] read it.
pub struct Read {
    /// The value, as serde_json reads it (of two equal names, the last).
    pub value: Value,
    /// Whether any object in it, at any depth, names a member twice (names compared as
    /// decoded: `"a"` and `"\u0061"` are the same).
    pub names_twice: bool,
}

/// `text` read into a [`Value`] and checked for repeated names in the same pass; `None` for
/// a text that serde_json does not read as JSON.
pub fn read(text: &[u8]) -> Option<Read> {
    let mut names_twice = false;
    let value = crate::json_text::read_seed(text, Build(&mut names_twice))?;
    Some(Read { value, names_twice })
}

/// One value of [`read`]; sets its flag when the value, or one inside it, is an object that
/// names a member twice.
struct Build<'f>(&'f mut bool);

impl<'de> DeserializeSeed<'de> for Build<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let twice = self.0;
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value_seed(Build(&mut *twice))?;
            if members.insert(name, value).is_some() {
                *twice = true;
            }
        }
        Ok(Value::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let twice = self.0;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Build(&mut *twice))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.to_string()))
    }

    fn visit_string<E>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_a_member_twice(text: &[u8]) -> bool {
        read(text).is_some_and(|r| r.names_twice)
    }

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
        // The value is serde_json's own reading, the last of two names included.
        for text in [
            r#"{"a":[1,-2,3.5,1e3,"x\u00e9",true,null,{}],"b":{"c":"d"}}"#,
            r#"{"a":1,"\u0061":2,"n":{"m":[{"k":1,"k":"two"}]}}"#,
            "18446744073709551615",
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(read(text.as_bytes()).unwrap().value, expected, "{text}");
        }
        assert!(read(br#""\ud800""#).is_none());
        let many: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        assert!(!repeated(many.iter().map(String::as_str)));
        assert!(repeated(many.iter().map(String::as_str).chain(["k7"])));
    }
}
