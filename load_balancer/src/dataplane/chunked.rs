//! The chunked transfer coding (RFC 9112, 7.1), read strictly and written anew.
//!
//! A proxy that passes chunked bytes through as it found them lets the next hop
//! read them its own way, and any place where two parsers disagree on where a body
//! ends is a request smuggling hole (`0\r\n\n` was one: we read on into "trailers",
//! h11 ended the body there). So the decoder accepts only the RFC's grammar, with
//! CRLF and nothing else ending every line, and the encoder writes what it accepted
//! in the one canonical form: `<hex size>\r\n<data>\r\n` per chunk, extensions and
//! trailers dropped, `0\r\n\r\n` at the end. Whatever the next hop's parser, it
//! sees the boundaries we saw.

use super::http1::HeadError;

/// The longest chunk-size line accepted, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted; they are checked and then dropped.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Decodes one chunked body as bytes arrive and writes it re-encoded.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    /// The start of a size or trailer line cut off by the end of a read.
    line: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

fn bad(why: &'static str) -> HeadError {
    HeadError::Malformed(why)
}

impl Chunked {
    /// Reads from `bytes` and appends the re-encoded body to `out`. Returns how
    /// many bytes belong to the body: fewer than `bytes.len()` only when the body
    /// ended inside them.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<usize, HeadError> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Done => break,
                State::Data(left) => {
                    let take = (bytes.len() - i).min(left.min(usize::MAX as u64) as usize);
                    out.extend_from_slice(&bytes[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                }
                State::DataCr | State::DataLf => {
                    let want = if self.state == State::DataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if bytes[i] != want {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = if want == b'\r' {
                        State::DataLf
                    } else {
                        out.extend_from_slice(b"\r\n");
                        State::Size
                    };
                }
                State::Size | State::Trailers => {
                    let limit = if self.state == State::Size {
                        MAX_CHUNK_LINE
                    } else {
                        MAX_TRAILERS - self.trailer_bytes
                    };
                    let rest = &bytes[i..];
                    let Some(lf) = rest.iter().position(|b| *b == b'\n') else {
                        if self.line.len() + rest.len() > limit {
                            return Err(bad("chunk-size line or trailers too long"));
                        }
                        self.line.extend_from_slice(rest);
                        return Ok(bytes.len());
                    };
                    i += lf + 1;
                    if self.line.len() + lf + 1 > limit {
                        return Err(bad("chunk-size line or trailers too long"));
                    }
                    // The common case, a line whole within one read, is not copied.
                    let line = if self.line.is_empty() {
                        &rest[..=lf]
                    } else {
                        self.line.extend_from_slice(&rest[..=lf]);
                        &self.line[..]
                    };
                    let next = if self.state == State::Size {
                        size_line(line, out)?
                    } else {
                        self.trailer_bytes += line.len();
                        trailer_line(line, out)?
                    };
                    self.line.clear();
                    self.state = next;
                }
            }
        }
        Ok(i)
    }

    /// Whether the last chunk and the trailers have passed.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }
}

/// Strips the CRLF every line must end in; a bare LF, or a CR anywhere else, is
/// refused (RFC 9112, 2.2 lets a recipient be lenient; a proxy must not be).
fn without_crlf(line: &[u8]) -> Result<&[u8], HeadError> {
    let body = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("a chunked line not ended by CRLF"))?;
    if body.contains(&b'\r') {
        return Err(bad("a bare CR in a chunked line"));
    }
    Ok(body)
}

/// A chunk-size line: writes the chunk's canonical size line, returns what follows.
fn size_line(line: &[u8], out: &mut Vec<u8>) -> Result<State, HeadError> {
    let text = without_crlf(line)?;
    // httparse reads the size (hex digits, at most 16); it lets anything through as
    // an extension, so what follows the digits is checked here.
    let size = match httparse::parse_chunk_size(line) {
        Ok(httparse::Status::Complete((_, size))) => size,
        _ => return Err(bad("bad chunk size")),
    };
    let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("bad chunk size"));
    }
    extensions(&text[digits..])?;
    if size == 0 {
        return Ok(State::Trailers);
    }
    push_hex(out, size);
    out.extend_from_slice(b"\r\n");
    Ok(State::Data(size))
}

/// A line of the trailer section: the empty line ends the body, any other must be a
/// well-formed field line, which is then dropped (a proxy may discard trailers,
/// RFC 9110, 6.5.1, and one that forwards none cannot forward a bad one).
fn trailer_line(line: &[u8], out: &mut Vec<u8>) -> Result<State, HeadError> {
    let text = without_crlf(line)?;
    if text.is_empty() {
        out.extend_from_slice(b"0\r\n\r\n");
        return Ok(State::Done);
    }
    let (name, value) = text
        .iter()
        .position(|b| *b == b':')
        .map(|c| (&text[..c], &text[c + 1..]))
        .ok_or(bad("a trailer line without a colon"))?;
    // A leading space or tab is a folded line (obs-fold): refused, as in heads.
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(bad("a bad trailer field name"));
    }
    if !value
        .iter()
        .all(|b| is_field_vchar(*b) || *b == b' ' || *b == b'\t')
    {
        return Err(bad("a bad trailer field value"));
    }
    Ok(State::Trailers)
}

/// `chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, with
/// `ext-val = token / quoted-string` (RFC 9112, 7.1.1).
fn extensions(mut s: &[u8]) -> Result<(), HeadError> {
    let bws = |s: &[u8]| -> usize { s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count() };
    let token = |s: &[u8]| -> usize { s.iter().take_while(|b| is_tchar(**b)).count() };
    let malformed = || bad("a bad chunk extension");
    // Whitespace only ever comes before a `;` or around a `=`: "5 \r\n" is refused.
    while !s.is_empty() {
        s = &s[bws(s)..];
        s = s.strip_prefix(b";").ok_or_else(malformed)?;
        s = &s[bws(s)..];
        let name = token(s);
        if name == 0 {
            return Err(malformed());
        }
        s = &s[name..];
        let before_eq = bws(s);
        if s[before_eq..].first() != Some(&b'=') {
            continue;
        }
        s = &s[before_eq + 1..];
        s = &s[bws(s)..];
        let value = if s.first() == Some(&b'"') {
            quoted_string(s).ok_or_else(malformed)?
        } else {
            token(s)
        };
        if value == 0 {
            return Err(malformed());
        }
        s = &s[value..];
    }
    Ok(())
}

/// The length of the quoted-string `s` starts with, if it is one.
fn quoted_string(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let escaped = *s.get(i + 1)?;
                if !(is_field_vchar(escaped) || escaped == b' ' || escaped == b'\t') {
                    return None;
                }
                i += 2;
            }
            b if is_field_vchar(b) || b == b' ' || b == b'\t' => i += 1,
            _ => return None,
        }
    }
    None
}

/// A token character (RFC 9110, 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A visible character or obs-text, as field values allow.
fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (shift * 4)) as usize & 0xf]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `body` whole; the re-encoded body and how much of the input it took.
    fn decode(body: &[u8]) -> Result<(Vec<u8>, usize), HeadError> {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let took = c.feed(body, &mut out)?;
        assert!(c.done(), "{:?} did not end", String::from_utf8_lossy(body));
        Ok((out, took))
    }

    fn refused(body: &[u8]) -> bool {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        match c.feed(body, &mut out) {
            Err(_) => true,
            Ok(_) => {
                assert!(
                    !c.done(),
                    "{:?} was taken as a whole body",
                    String::from_utf8_lossy(body)
                );
                false
            }
        }
    }

    #[test]
    fn a_body_is_rewritten_without_extensions_or_trailers_and_the_next_request_is_left() {
        let body = b"5;ext=1;q=\"a \\\"b\\\"\"\r\nhello\r\nA\r\n0123456789\r\n000\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (out, took) = decode(body).unwrap();
        assert_eq!(took, body.len() - 4);
        assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
    }

    #[test]
    fn fed_one_byte_at_a_time_a_body_ends_at_the_same_place_with_the_same_output() {
        let body =
            b"5 ; a = b\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nT: v\r\n\r\nGET /";
        let (whole, took) = decode(body).unwrap();
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut n = 0;
        for b in body.iter() {
            n += c.feed(std::slice::from_ref(b), &mut out).unwrap();
            if c.done() {
                break;
            }
        }
        assert_eq!((out, n), (whole, took));
    }

    #[test]
    fn the_last_chunk_followed_by_a_bare_lf_is_refused() {
        // The live exploit: h11 ended the body at `0\r\n\n`; we read on into trailers.
        assert!(refused(
            b"1\r\nZ\r\n0\r\n\nPOST /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
    }

    #[test]
    fn a_trailer_line_ending_in_a_bare_lf_is_refused() {
        // Our own server read on past `X: y\n\r\n` and swallowed the next request.
        assert!(refused(b"0\r\nX: y\n\r\nGET / HTTP/1.1\r\n\r\n"));
    }

    #[test]
    fn every_line_ending_other_than_crlf_is_refused() {
        for body in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\n\r\r\n",
            b"0\r\nA: b\rC: d\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(refused(body), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn chunk_sizes_are_bare_hex_digits_within_64_bits() {
        for body in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(refused(body), "{:?}", String::from_utf8_lossy(body));
        }
        let (out, _) = decode(b"0005\r\nhello\r\n0\r\n\r\n").unwrap();
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        let (out, _) = decode(b"00000000000000A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(out, b"a\r\n0123456789\r\n0\r\n\r\n");
    }

    #[test]
    fn chunk_extensions_follow_the_grammar_or_are_refused() {
        for ext in [
            &b";a"[..],
            b";a=b",
            b" ; a = b ; c",
            b";a=\"quoted; with \\\" and spaces\"",
            b"\t;a",
        ] {
            let body = [&b"3"[..], ext, b"\r\nabc\r\n0\r\n\r\n"].concat();
            assert!(decode(&body).is_ok(), "{:?}", String::from_utf8_lossy(ext));
        }
        for ext in [
            &b";"[..],
            b";a=",
            b";=b",
            b";a=b c",
            b";a\x00",
            b";a=\"unterminated",
            b";a=\"nul\x00\"",
            b"z",
            b";a;;b",
        ] {
            let body = [&b"3"[..], ext, b"\r\nabc\r\n0\r\n\r\n"].concat();
            assert!(refused(&body), "{:?}", String::from_utf8_lossy(ext));
        }
        let long = format!("3;a={}\r\nabc\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert!(refused(long.as_bytes()));
    }

    #[test]
    fn trailers_must_be_field_lines_and_are_bounded() {
        for trailers in [
            &b" folded: x\r\n"[..],
            b"no colon\r\n",
            b": no name\r\n",
            b"bad name: x\r\n",
            b"GET /smuggled HTTP/1.1\r\n",
            b"a: nul\x00\r\n",
        ] {
            let body = [&b"0\r\n"[..], trailers, b"\r\n"].concat();
            assert!(refused(&body), "{:?}", String::from_utf8_lossy(trailers));
        }
        let many = format!("0\r\n{}\r\n", "a: bcdefgh\r\n".repeat(MAX_TRAILERS / 10));
        assert!(refused(many.as_bytes()));
    }

    #[test]
    fn data_must_be_followed_by_crlf() {
        assert!(refused(b"5\r\nhelloXX0\r\n\r\n"));
        assert!(refused(b"5\r\nhello world\r\n0\r\n\r\n"));
    }

    proptest! {
        /// Any body we write decodes to the same chunks, and what we accept
        /// re-encodes to itself: the output is a fixed point.
        #[test]
        fn re_encoding_is_canonical(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6), split in 0usize..300) {
            let mut body = Vec::new();
            let mut data = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:X};x=\"y\"\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
                data.extend_from_slice(c);
            }
            body.extend_from_slice(b"0\r\nT: 1\r\n\r\n");
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let split = split.min(body.len());
            let took = c.feed(&body[..split], &mut out).unwrap()
                + c.feed(&body[split..], &mut out).unwrap();
            prop_assert!(c.done());
            prop_assert_eq!(took, body.len());
            let (again, _) = decode(&out).unwrap();
            prop_assert_eq!(&again, &out);
            let mut expected = Vec::new();
            for c in &chunks {
                expected.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                expected.extend_from_slice(c);
                expected.extend_from_slice(b"\r\n");
            }
            expected.extend_from_slice(b"0\r\n\r\n");
            prop_assert_eq!(out, expected);
        }
    }
}
