//! Finding where a chunked message body ends (RFC 9112 §7.1) while its bytes pass through
//! unchanged: the fast lane relays an upstream's chunked answer as it is and only needs to
//! know when it is complete.

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size is not hexadecimal or too large")]
    Size,
    #[error("a chunk is not followed by CRLF")]
    Delimiter,
    #[error("a chunk or trailer line is too long")]
    LineTooLong,
}

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk size (`digits` so far) and, after `;`, extensions.
    Size {
        size: u64,
        digits: u8,
        in_ext: bool,
        line: usize,
    },
    /// Expecting the LF of the size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// After a chunk's data: CR then LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one (`line` bytes of this one).
    Trailer {
        line: usize,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Tracks one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self {
            state: State::Size {
                size: 0,
                digits: 0,
                in_ext: false,
                line: 0,
            },
        }
    }

    /// Whether the whole body, trailers included, has been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `buf`, returning how many of its bytes belong to this body (all of them unless
    /// the body ends inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data { left } => {
                    // Skip as much data as this buffer holds at once.
                    let take = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::Size {
                    size,
                    digits,
                    in_ext,
                    line,
                } => {
                    if line >= MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    match b {
                        b'\r' if digits > 0 => State::SizeLf { size },
                        b'\n' if digits > 0 => Self::after_size(size),
                        _ if in_ext => State::Size {
                            size,
                            digits,
                            in_ext,
                            line: line + 1,
                        },
                        b';' | b' ' | b'\t' if digits > 0 => State::Size {
                            size,
                            digits,
                            in_ext: true,
                            line: line + 1,
                        },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(ChunkError::Size)?;
                            if digits >= 16 {
                                return Err(ChunkError::Size);
                            }
                            State::Size {
                                size: size * 16 + u64::from(d),
                                digits: digits + 1,
                                in_ext,
                                line: line + 1,
                            }
                        }
                    }
                }
                State::SizeLf { size } => match b {
                    b'\n' => Self::after_size(size),
                    _ => return Err(ChunkError::Size),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    b'\n' => Self::new().state,
                    _ => return Err(ChunkError::Delimiter),
                },
                State::DataLf => match b {
                    b'\n' => Self::new().state,
                    _ => return Err(ChunkError::Delimiter),
                },
                State::Trailer { line } => match b {
                    b'\r' => State::TrailerLf { empty: line == 0 },
                    b'\n' if line == 0 => State::Done,
                    b'\n' => State::Trailer { line: 0 },
                    _ if line >= MAX_LINE => return Err(ChunkError::LineTooLong),
                    _ => State::Trailer { line: line + 1 },
                },
                State::TrailerLf { empty } => match b {
                    b'\n' if empty => State::Done,
                    b'\n' => State::Trailer { line: 0 },
                    _ => return Err(ChunkError::Delimiter),
                },
            };
            i += 1;
        }
        Ok(i)
    }

    fn after_size(size: u64) -> State {
        if size == 0 {
            State::Trailer { line: 0 }
        } else {
            State::Data { left: size }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(chunks: &[Vec<u8>], ext: bool, trailers: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
            if ext {
                out.extend_from_slice(b";name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(t.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn finds_the_end_and_leaves_what_follows() {
        let mut body = encode(&[b"hello".to_vec(), b"\r\n0\r\n\r\n".to_vec()], false, &[]);
        let end = body.len();
        body.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut c = Chunked::new();
        assert_eq!(c.feed(&body), Ok(end));
        assert!(c.done());
        assert_eq!(c.feed(b"more"), Ok(0));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(Chunked::new().feed(b"zz\r\n"), Err(ChunkError::Size));
        assert_eq!(Chunked::new().feed(b"\r\n"), Err(ChunkError::Size));
        assert_eq!(
            Chunked::new().feed(b"11111111111111111\r\n"),
            Err(ChunkError::Size)
        );
        assert_eq!(Chunked::new().feed(b"2\r\nabX"), Err(ChunkError::Delimiter));
        let long = vec![b'a'; MAX_LINE + 10];
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"0\r\n"), Ok(3));
        assert_eq!(c.feed(&long), Err(ChunkError::LineTooLong));
    }

    proptest! {
        #[test]
        fn any_split_finds_the_same_end(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            ext in any::<bool>(),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let trailers: &[&str] = if trailer { &["x-checksum: 1", "x-b: 2"] } else { &[] };
            let body = encode(&chunks, ext, trailers);
            let mut wire = body.clone();
            wire.extend_from_slice(b"NEXT");
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len())).collect();
            points.push(wire.len());
            points.sort_unstable();
            let mut c = Chunked::new();
            let (mut at, mut used) = (0, 0);
            for p in points {
                if p < at { continue; }
                used += c.feed(&wire[at..p]).unwrap();
                at = p;
            }
            prop_assert!(c.done());
            prop_assert_eq!(used, body.len());
        }
    }
}
