//! Reading a JSON text that arrived as bytes (a request body, a line from a child, an
//! answer).
//!
//! Read as bytes, serde_json checks each string it reads, and each raw value it borrows, as
//! UTF-8 on its own: on a stateless call through the stdio bridge that was some 2 400
//! instructions of `from_utf8` on short pieces of the same lines (`bench/instructions.sh`,
//! BENCHMARKS.md). Here a text is checked once, whole, and read as a `str`. A text that is
//! not UTF-8 is read as bytes, as serde_json always read it: a string it only skips may hold
//! anything, so such a text was readable, and it must not be refused because of where it
//! is read.

use serde::Deserialize;
use serde::de::DeserializeSeed;

/// `text` read as a `T` that may borrow from it; `None` when it is not one.
pub fn read<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Option<T> {
    read_seed(text, std::marker::PhantomData)
}

/// `text` read by `seed` (a reader that carries state of its own), which must take all of
/// it but whitespace; `None` when it does not.
pub fn read_seed<'a, S: DeserializeSeed<'a>>(text: &'a [u8], seed: S) -> Option<S::Value> {
    match std::str::from_utf8(text) {
        Ok(text) => whole(serde_json::Deserializer::from_str(text), seed),
        Err(_) => whole(serde_json::Deserializer::from_slice(text), seed),
    }
}

/// What `seed` reads from `de`, when nothing but whitespace follows it.
fn whole<'a, R: serde_json::de::Read<'a>, S: DeserializeSeed<'a>>(
    mut de: serde_json::Deserializer<R>,
    seed: S,
) -> Option<S::Value> {
    let value = seed.deserialize(&mut de).ok()?;
    de.end().ok().map(|()| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text that is not UTF-8 reads as it did: a string serde_json only skips may hold
    /// anything, one it reads may not.
    #[test]
    fn a_text_that_is_not_utf8_reads_as_it_did() {
        assert_eq!(read::<Vec<u8>>(b"[1,2]"), Some(vec![1, 2]));
        assert_eq!(read::<Vec<u8>>(b"[1,2] x"), None);
        assert_eq!(read::<Vec<u8>>(b" [1,2]\n"), Some(vec![1, 2]));
        let skipped = b"{\"a\":1,\"b\":\"\xff\"}";
        #[derive(Deserialize, Debug, PartialEq)]
        struct A {
            a: u8,
        }
        assert_eq!(read::<A>(skipped), Some(A { a: 1 }));
        assert_eq!(read::<String>(b"\"\xff\""), None);
        assert_eq!(read::<&str>(br#""borrowed""#), Some("borrowed"));
    }
}
