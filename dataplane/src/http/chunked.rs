//! The chunked transfer coding (RFC 9112, 7.1), decoded incrementally: each input byte is looked at
//! once however the body is cut into reads, so a body that trickles in costs time linear in its
//! size. Every count that comes off the wire is checked: a chunk size past what fits, past the
//! body limit, or a size line, extension or trailer section past its bound is an error, never an
//! overflow.

use super::HttpError;

/// A chunk-size line (size and extensions) longer than this is refused: extensions carry nothing
/// edgeplane acts on, and an endless one would otherwise be read forever.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Trailer fields read after the last chunk, at most.
pub const MAX_TRAILER_BYTES: usize = 8192;
/// Hex digits of a chunk size: 16 fill a u64, and any body limit is far below that.
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the chunk size's hex digits.
    Size,
    /// Whitespace after the size: a `;` extension or CR must follow.
    SizeSpace,
    /// Inside `;name=value` extensions, until CR.
    Extension,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    Data {
        remaining: u64,
    },
    /// The CRLF that ends a chunk's data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    /// CR of the final empty line seen; LF ends the body.
    FinalLf,
    Done,
}

/// An in-progress chunked body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
    line: usize,
    /// The trailer section as sent (bounded by MAX_TRAILER_BYTES), for `take_trailers`.
    trailer: Vec<u8>,
    body: usize,
    max_body: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies past `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailer: Vec::new(),
            body: 0,
            max_body,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The trailer fields of a finished body (names lower-cased), taken once. Lines the
    /// decoder let through that are not fields are an error.
    pub fn take_trailers(&mut self) -> Result<Vec<(String, Vec<u8>)>, HttpError> {
        let mut section = std::mem::take(&mut self.trailer);
        if section.is_empty() {
            return Ok(Vec::new());
        }
        section.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(&section, &mut fields) {
            Ok(httparse::Status::Complete((_, fields))) => Ok(fields
                .iter()
                .map(|f| (f.name.to_ascii_lowercase(), f.value.to_vec()))
                .collect()),
            Err(httparse::Error::TooManyHeaders) => Err(HttpError::HeadersTooLarge),
            _ => Err(HttpError::BadRequest("invalid trailer section")),
        }
    }

    /// Decodes what it can of `input`, appending chunk data to `body`; returns how many bytes of
    /// `input` it took. When the body ends, it stops right after it (`is_done`), so the bytes that
    /// follow (a pipelined request) stay in `input`.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            if let State::Data { remaining } = self.state {
                let available = input.len() - pos;
                let take = usize::try_from(remaining).map_or(available, |r| r.min(available));
                body.extend_from_slice(&input[pos..pos + take]);
                pos += take;
                // take <= remaining, so this cannot wrap.
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                continue;
            }
            self.step(input[pos])?;
            pos += 1;
        }
        Ok(pos)
    }

    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        const BAD_SIZE: HttpError = HttpError::BadRequest("invalid chunk size line");
        const BAD_END: HttpError = HttpError::BadRequest("chunk data not followed by CRLF");
        const BAD_TRAILER: HttpError = HttpError::BadRequest("invalid trailer section");
        match self.state {
            State::Size | State::SizeSpace | State::Extension => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(HttpError::BadRequest("chunk size line too long"));
                }
                let hex = (b as char).to_digit(16);
                match (self.state, hex, b) {
                    (State::Size, Some(d), _) => {
                        self.digits += 1;
                        if self.digits > MAX_SIZE_DIGITS {
                            return Err(HttpError::BodyTooLarge);
                        }
                        // At most 16 digits: the shift never loses bits.
                        self.size = (self.size << 4) | u64::from(d);
                    }
                    (_, _, b'\r') if self.digits > 0 => self.state = State::SizeLf,
                    (State::Size | State::SizeSpace, _, b' ' | b'\t') if self.digits > 0 => {
                        self.state = State::SizeSpace
                    }
                    (_, _, b';') if self.digits > 0 => self.state = State::Extension,
                    (State::Extension, _, b) if is_field_byte(b) => {}
                    _ => return Err(BAD_SIZE),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(BAD_SIZE);
                }
                let room = self.max_body.saturating_sub(self.body);
                if self.size > room as u64 {
                    return Err(HttpError::BodyTooLarge);
                }
                // size <= room <= max_body: fits in usize and cannot overflow the sum.
                self.body += self.size as usize;
                self.state = if self.size == 0 {
                    State::TrailerStart
                } else {
                    State::Data {
                        remaining: self.size,
                    }
                };
                (self.size, self.digits, self.line) = (0, 0, 0);
            }
            State::Data { .. } => unreachable!("feed copies data in bulk"),
            State::DataCr if b == b'\r' => self.state = State::DataLf,
            State::DataLf if b == b'\n' => self.state = State::Size,
            State::DataCr | State::DataLf => return Err(BAD_END),
            State::TrailerStart | State::TrailerLine => {
                if self.trailer.len() >= MAX_TRAILER_BYTES {
                    return Err(HttpError::HeadersTooLarge);
                }
                // The section's field lines are kept; the CR of the final empty line is not.
                if !(self.state == State::TrailerStart && b == b'\r') {
                    self.trailer.push(b);
                }
                self.state = match (self.state, b) {
                    (State::TrailerStart, b'\r') => State::FinalLf,
                    (State::TrailerLine, b'\r') => State::TrailerLf,
                    // A line may not start with whitespace (obsolete line folding).
                    (State::TrailerStart, b' ' | b'\t') => return Err(BAD_TRAILER),
                    (_, b) if is_field_byte(b) => State::TrailerLine,
                    _ => return Err(BAD_TRAILER),
                };
            }
            State::TrailerLf if b == b'\n' => {
                self.trailer.push(b);
                self.state = State::TrailerStart;
            }
            State::FinalLf if b == b'\n' => self.state = State::Done,
            State::TrailerLf | State::FinalLf => return Err(BAD_TRAILER),
            State::Done => {}
        }
        Ok(())
    }
}

/// Bytes allowed inside a field line or an extension: visible ASCII, space, tab and obs-text;
/// never CR, LF or another control byte.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Decodes a whole chunked body from the start of `buf`: the body and the bytes it took, or
/// `None` while incomplete (for callers that hold the whole message, such as a response parser).
pub fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut decoder = ChunkedDecoder::new(max_body);
    let mut body = Vec::new();
    let used = decoder.feed(buf, &mut body)?;
    Ok(decoder.is_done().then_some((body, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5;ext=1\r\nhello\r\n6 ; a=\"b c\"\r\n world\r\n0\r\nx-trailer: y\r\n\r\nNEXT";

    #[test]
    fn decodes_with_extensions_and_trailers_and_stops_at_the_end() {
        let (body, used) = decode_chunked(BODY, 1 << 20).unwrap().unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&BODY[used..], b"NEXT");
        let mut decoder = ChunkedDecoder::new(1 << 20);
        decoder.feed(BODY, &mut Vec::new()).unwrap();
        assert_eq!(
            decoder.take_trailers().unwrap(),
            [("x-trailer".to_owned(), b"y".to_vec())]
        );
        assert_eq!(decoder.take_trailers().unwrap(), []);
    }

    #[test]
    fn any_cut_into_reads_gives_the_same_body() {
        let end = BODY.len() - 4;
        for cut in 0..=end {
            let mut decoder = ChunkedDecoder::new(1 << 20);
            let mut body = Vec::new();
            let first = decoder.feed(&BODY[..cut], &mut body).unwrap();
            assert_eq!(first, cut, "everything before the end is taken");
            assert!(!decoder.is_done() || cut == end);
            let second = decoder.feed(&BODY[cut..], &mut body).unwrap();
            assert!(decoder.is_done());
            assert_eq!((body.as_slice(), cut + second), (&b"hello world"[..], end));
        }
        // One byte at a time.
        let mut decoder = ChunkedDecoder::new(1 << 20);
        let mut body = Vec::new();
        for b in &BODY[..end] {
            assert_eq!(decoder.feed(std::slice::from_ref(b), &mut body).unwrap(), 1);
        }
        assert!(decoder.is_done());
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn sizes_that_overflow_or_pass_the_limit_are_refused() {
        for size in [
            "ffffffffffffffff",
            "fffffffffffffff0",
            "10000000000000000",
            "8000000000000000",
        ] {
            let input = format!("{size}\r\nabc");
            assert_eq!(
                decode_chunked(input.as_bytes(), 1 << 20),
                Err(HttpError::BodyTooLarge),
                "{size}"
            );
        }
        // Two chunks whose sum passes the limit, each under it.
        assert_eq!(
            decode_chunked(b"6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n", 10),
            Err(HttpError::BodyTooLarge)
        );
        assert!(
            decode_chunked(b"5\r\nabcde\r\n5\r\nabcde\r\n0\r\n\r\n", 10)
                .unwrap()
                .is_some()
        );
        // Leading zeros count as digits: a size line of 17 of them is refused.
        assert_eq!(
            decode_chunked(b"00000000000000005\r\n", 10),
            Err(HttpError::BodyTooLarge)
        );
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"5 5\r\nhello\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5;a\x00b\r\n",
            b"0\r\n bad-fold: x\r\n\r\n",
            b"0\r\nx: y\ny\r\n\r\n",
            b"0\r\n\rX",
        ] {
            assert!(
                matches!(decode_chunked(bad, 1 << 20), Err(HttpError::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_extensions_and_trailers_are_bounded() {
        let mut ext = b"5;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        assert!(matches!(
            decode_chunked(&ext, 1 << 20),
            Err(HttpError::BadRequest(_))
        ));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILER_BYTES / 10 + 1) {
            trailers.extend_from_slice(b"x-a: 1234\r\n");
        }
        assert_eq!(
            decode_chunked(&trailers, 1 << 20),
            Err(HttpError::HeadersTooLarge)
        );
    }
}
