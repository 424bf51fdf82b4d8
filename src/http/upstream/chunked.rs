//! The chunked transfer coding (RFC 9112 §7.1), read incrementally: framing is parsed
//! here, chunk data is only counted, so a relay can pass data on (spliced, when there is a
//! lot) and write canonical framing of its own to the other side: chunk extensions,
//! trailers and odd spellings never reach it, and a body cut short is never taken for a
//! complete one.

/// Longest chunk-size line (size, extensions) and trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 8192;

/// Where a chunked body is.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    /// Bytes of the current framing line (size line or trailer line) seen so far.
    line: usize,
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line; `size` so far, and whether an extension began.
    #[default]
    Size,
    SizeDigits {
        size: u64,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    TrailerStart,
    TrailerLine,
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// What the next bytes of the body are.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// `consumed` framing bytes were read; a chunk of `size` bytes begins (0: the last).
    ChunkStart { consumed: usize, size: u64 },
    /// The first `len` bytes are chunk data, to pass on as they are.
    Data { len: usize },
    /// `consumed` framing bytes were read and nothing else happened (more is needed, or
    /// a chunk's data ended).
    Framing { consumed: usize },
    /// `consumed` bytes ended the body.
    Done { consumed: usize },
}

/// Why a chunked body is malformed: the connection cannot be trusted any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes still owed in the current chunk (0 between chunks).
    pub fn data_left(&self) -> u64 {
        match self.state {
            State::Data(left) => left,
            _ => 0,
        }
    }

    /// `n` bytes of the current chunk's data went past without [`Chunked::step`]
    /// (spliced); `n` is at most [`Chunked::data_left`].
    pub fn passed(&mut self, n: u64) {
        if let State::Data(left) = self.state {
            self.state = match left.saturating_sub(n) {
                0 => State::DataCr,
                rest => State::Data(rest),
            };
        }
    }

    /// Reads as far as `input` allows and says what it was. Call again with the bytes
    /// after what the step consumed (`Data { len }` consumes `len`).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, Malformed> {
        if let State::Data(left) = self.state {
            let len = (left.min(input.len() as u64)) as usize;
            self.state = match left - len as u64 {
                0 => State::DataCr,
                rest => State::Data(rest),
            };
            return Ok(Step::Data { len });
        }
        let mut consumed = 0;
        for &b in input {
            consumed += 1;
            if let Some(step) = self.framing_byte(b, consumed)? {
                return Ok(step);
            }
        }
        Ok(Step::Framing { consumed })
    }

    /// Takes one framing byte; a step when it completes something.
    fn framing_byte(&mut self, b: u8, consumed: usize) -> Result<Option<Step>, Malformed> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(Malformed("a chunk-size or trailer line too long"));
        }
        self.state = match (self.state, b) {
            (State::Size, _) => match hex(b) {
                Some(d) => State::SizeDigits {
                    size: u64::from(d),
                    ext: false,
                },
                None => return Err(Malformed("a chunk size that is not hexadecimal")),
            },
            (State::SizeDigits { size, ext: false }, _) if hex(b).is_some() => {
                let digit = u64::from(hex(b).unwrap_or(0));
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(Malformed("a chunk size over 2^64"))?;
                State::SizeDigits { size, ext: false }
            }
            // Extensions (and the whitespace before them) are read past and dropped.
            (State::SizeDigits { size, .. }, b';' | b' ' | b'\t') => {
                State::SizeDigits { size, ext: true }
            }
            (State::SizeDigits { size, ext: true }, b) if b != b'\r' && b != b'\n' => {
                if b < 0x20 && b != b'\t' {
                    return Err(Malformed("a control byte in a chunk extension"));
                }
                State::SizeDigits { size, ext: true }
            }
            (State::SizeDigits { size, .. }, b'\r') => State::SizeLf { size },
            (State::SizeLf { size }, b'\n') => {
                self.line = 0;
                self.state = match size {
                    0 => State::TrailerStart,
                    size => State::Data(size),
                };
                return Ok(Some(Step::ChunkStart { consumed, size }));
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.line = 0;
                self.state = State::Size;
                return Ok(Some(Step::Framing { consumed }));
            }
            (State::TrailerStart, b'\r') => State::TrailerLf { empty: true },
            (State::TrailerLine, b'\r') => State::TrailerLf { empty: false },
            (State::TrailerStart | State::TrailerLine, b) if b >= 0x20 || b == b'\t' => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(Malformed("trailers too large"));
                }
                State::TrailerLine
            }
            (State::TrailerLf { empty: true }, b'\n') => {
                self.state = State::Done;
                return Ok(Some(Step::Done { consumed }));
            }
            (State::TrailerLf { empty: false }, b'\n') => {
                self.line = 0;
                State::TrailerStart
            }
            (State::Done, _) => return Err(Malformed("bytes after the end of a chunked body")),
            // Bare LF, CR without LF, data not followed by CRLF, control bytes.
            _ => return Err(Malformed("chunked framing that is not CRLF-delimited")),
        };
        Ok(None)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The canonical chunk-size line for a chunk of `size` bytes.
pub fn size_line(size: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{size:x}\r\n");
}

/// What ends a chunk's data, and what ends the body (the last chunk, no trailers).
pub const DATA_END: &[u8] = b"\r\n";
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a whole body, returning the data and the canonical re-encoding.
    fn decode(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>, usize), Malformed> {
        let (mut chunked, mut data, mut canonical, mut at) =
            (Chunked::default(), Vec::new(), Vec::new(), 0);
        while !chunked.is_done() {
            if at == body.len() {
                return Err(Malformed("cut short"));
            }
            match chunked.step(&body[at..])? {
                Step::ChunkStart { consumed, size } => {
                    at += consumed;
                    if size == 0 {
                        canonical.extend_from_slice(LAST_CHUNK);
                    } else {
                        size_line(size, &mut canonical);
                    }
                }
                Step::Data { len } => {
                    data.extend_from_slice(&body[at..at + len]);
                    canonical.extend_from_slice(&body[at..at + len]);
                    if chunked.data_left() == 0 {
                        canonical.extend_from_slice(DATA_END);
                    }
                    at += len;
                }
                Step::Framing { consumed } | Step::Done { consumed } => at += consumed,
            }
        }
        Ok((data, canonical, at))
    }

    #[test]
    fn decodes_and_re_encodes_canonically() {
        let body = b"5;name=\"x\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (data, canonical, end) = decode(body).unwrap();
        assert_eq!(data, b"hello0123456789");
        assert_eq!(canonical, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(&body[end..], b"NEXT", "nothing after the body is taken");
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let body = b"3\r\nabc\r\n0\r\n\r\n";
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        for &b in body {
            match chunked.step(&[b]).unwrap() {
                Step::Data { len } => data.extend_from_slice(&[b][..len]),
                Step::Done { .. } => break,
                _ => {}
            }
        }
        assert!(chunked.is_done());
        assert_eq!(data, b"abc");
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"ffffffffffffffffff\r\n",
            b"5;\x01\r\n",
            b"-5\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("5;{}\r\n", "a".repeat(MAX_LINE));
        assert!(decode(long.as_bytes()).is_err());
    }
}
