//! The data plane's HTTP/1 code on arbitrary bytes, read as a request head, a
//! response head and a chunked body in turn. Input: one byte of flags, one byte that
//! picks a split point, then the message. Flags: bit 0 a HEAD request, bit 1 the
//! client closes, bit 2 `X-Served-By`, bit 3 an IPv6 peer, the high nibble picks the
//! hash key (modulo 5); a high nibble of 15 also stretches every `~` of the message
//! into 1024 of them for the chunked checks alone, so that the 4 KiB size-line and
//! 16 KiB trailer limits come within reach of a 4 KiB input.
//!
//! Checked: nothing panics; a head that parses whole also parses as "need more" when
//! cut short (the forwarder reads in pieces); a rewritten head is itself a valid head
//! with the same framing, and carries no hop-by-hop header but our own `connection`;
//! framing, `Host` and upgrade decisions agree with RFC 9112's rules (as the balancer
//! chose to apply them) written out independently here.
//!
//! Chunked bodies (the message itself, and the body after a head framed chunked) are
//! checked against parsers that are not `Chunked`: a reference decoder here that cuts
//! the whole buffer into CRLF lines and matches each against RFC 9112, 7.1's grammar
//! (same verdict, same end, same data, same output so far), and httparse, which must
//! read every size line `Chunked` took with the same size and must decode what
//! `Chunked` wrote to the same data. What `Chunked` writes decodes to itself (a fixed
//! point), and it decodes the same fed whole, in two pieces or a byte at a time.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use load_balancer::dataplane::chunked::{self, Chunked};
use load_balancer::dataplane::http1::{
    self, parse_request, rewrite_request, rewrite_response, Framing, HeadError, Peer, MAX_HEAD,
    MAX_HEADERS,
};
use load_balancer::hashkey::HashKey;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

fn named<'a, 'b>(
    headers: &'a [httparse::Header<'b>],
    name: &'a str,
) -> impl Iterator<Item = &'b [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// OWS around a field value or list element: spaces and tabs (RFC 9110, 5.6.3).
fn ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The non-empty elements of every `name` line, as one comma-separated list.
fn list<'a, 'b>(
    headers: &'a [httparse::Header<'b>],
    name: &'a str,
) -> impl Iterator<Item = &'b [u8]> + 'a {
    named(headers, name)
        .flat_map(|v| v.split(|b| *b == b','))
        .map(ows)
        .filter(|t| !t.is_empty())
}

/// Why the reference refuses a request: which of `HeadError`'s kinds fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Malformed(&'static str),
    Unsupported(&'static str),
}

/// `Content-Length` (RFC 9112, 6.2: digits only): `Err` for a bad value, or for a
/// second line (any second line on a request; one that differs on a response).
fn reference_content_length(
    headers: &[httparse::Header<'_>],
    equal_repeats_ok: bool,
) -> Result<Option<u64>, &'static str> {
    let mut length: Option<u64> = None;
    for v in named(headers, "content-length") {
        let v = ows(v);
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err("content-length not digits");
        }
        // Digits only, so u64 parsing fails only on overflow.
        let n: u64 = std::str::from_utf8(v)
            .unwrap()
            .parse()
            .map_err(|_| "content-length overflows")?;
        match length {
            Some(l) if l != n => return Err("two different content-lengths"),
            Some(_) if !equal_repeats_ok => return Err("two content-length lines"),
            _ => length = Some(n),
        }
    }
    Ok(length)
}

/// A byte `Host` may carry: uri-host [ ":" port ] is made of unreserved,
/// pct-encoded and sub-delims characters, ":" and the brackets of an IP literal.
fn host_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~' | b'%'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b':' | b'[' | b']')
}

/// RFC 9110, 7.2: empty, or uri-host [ ":" port ], uri-host an IP literal in
/// brackets (hex digits, ":" and "." here) or a reg-name / IPv4 address.
fn reference_host(h: &[u8]) -> bool {
    if h.is_empty() {
        return true;
    }
    let (name, port) = if h[0] == b'[' {
        let Some(close) = h.iter().position(|b| *b == b']') else {
            return false;
        };
        let inner = &h[1..close];
        let ok = !inner.is_empty()
            && inner
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' | b':' | b'.'));
        (ok, &h[close + 1..])
    } else {
        let colon = h.iter().position(|b| *b == b':').unwrap_or(h.len());
        let name = &h[..colon];
        let ok = !name.is_empty()
            && name
                .iter()
                .all(|b| host_byte(*b) && !matches!(b, b':' | b'[' | b']'));
        (ok, &h[colon..])
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(|b| b.is_ascii_digit()),
        Some(_) => false,
    };
    name && port_ok
}

/// RFC 9112, 3.2: origin-form, `*` for OPTIONS, or absolute-form (http or https)
/// whose authority equals Host; CONNECT (authority-form) is not served.
fn reference_target(method: &str, target: &str, host: Option<&[u8]>) -> Option<Why> {
    if method == "CONNECT" {
        return Some(Why::Unsupported("connect"));
    }
    if target.starts_with('/') || (method == "OPTIONS" && target == "*") {
        return None;
    }
    let lower = target.to_ascii_lowercase();
    let after = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    let Some(after) = after else {
        return Some(Why::Malformed("request target form"));
    };
    let authority: String = after
        .chars()
        .take_while(|c| !matches!(c, '/' | '?' | '#'))
        .collect();
    let agrees = host.is_some_and(|h| h.to_ascii_lowercase() == authority.as_bytes());
    (!agrees).then_some(Why::Malformed("target and host disagree"))
}

/// The balancer's request rules, written independently of `http1`: RFC 9112, 6.3
/// framing, made strict where two parsers could disagree (one `Transfer-Encoding`
/// line saying exactly `chunked`, one `Content-Length` line, not both, no chunked
/// HTTP/1.0), and 3.2's `Host` (exactly one on HTTP/1.1, at most one on 1.0, made of
/// uri-host characters). `Err` lists every reason to refuse.
fn reference_request(
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    http10: bool,
) -> Result<Framing, Vec<Why>> {
    let mut why = Vec::new();
    let te: Vec<&[u8]> = named(headers, "transfer-encoding").collect();
    let chunked = match te[..] {
        [] => false,
        [v] if ows(v).eq_ignore_ascii_case(b"chunked") => true,
        [_] => {
            why.push(Why::Unsupported("a coding other than chunked"));
            false
        }
        _ => {
            why.push(Why::Malformed("two transfer-encoding lines"));
            false
        }
    };
    let length = reference_content_length(headers, false).unwrap_or_else(|e| {
        why.push(Why::Malformed(e));
        None
    });
    if !te.is_empty() && named(headers, "content-length").next().is_some() {
        why.push(Why::Malformed("transfer-encoding and content-length"));
    }
    if http10 && !te.is_empty() {
        why.push(Why::Malformed("transfer-encoding on HTTP/1.0"));
    }
    let hosts: Vec<&[u8]> = named(headers, "host").collect();
    match hosts[..] {
        [] if !http10 => why.push(Why::Malformed("no host")),
        [] => {}
        [h] if !reference_host(h) => why.push(Why::Malformed("bad host")),
        [_] => {}
        _ => why.push(Why::Malformed("two hosts")),
    }
    if let Some(w) = reference_target(method, target, hosts.first().copied()) {
        why.push(w);
    }
    if !why.is_empty() {
        return Err(why);
    }
    Ok(match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, None | Some(0)) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    })
}

/// Whether the request switches protocols: a bodiless, kept-alive HTTP/1.1 request
/// with `Connection: upgrade` and an `Upgrade` that asks for nothing like h2/h2c.
fn reference_upgrade(headers: &[httparse::Header<'_>], http10: bool, framing: Framing) -> bool {
    let connection: Vec<&[u8]> = list(headers, "connection").collect();
    let lists = |t: &[u8]| connection.iter().any(|c| c.eq_ignore_ascii_case(t));
    let http2 = list(headers, "upgrade").any(|t| {
        t.get(..2)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"h2"))
    });
    !http10
        && framing == Framing::Empty
        && !lists(b"close")
        && lists(b"upgrade")
        && named(headers, "upgrade").next().is_some()
        && !http2
}

/// Asserts that a head we wrote carries no hop-by-hop header, except `connection:
/// close` where `close_allowed`, and `upgrade` with `connection: upgrade` where
/// `upgrade_allowed` (a protocol switch asked for or granted).
fn no_hop_by_hop(headers: &[httparse::Header<'_>], close_allowed: bool, upgrade_allowed: bool) {
    for h in headers {
        let connection = h.name.eq_ignore_ascii_case("connection");
        if close_allowed && connection && h.value.eq_ignore_ascii_case(b"close") {
            continue;
        }
        if upgrade_allowed
            && (h.name.eq_ignore_ascii_case("upgrade")
                || connection && h.value.eq_ignore_ascii_case(b"upgrade"))
        {
            continue;
        }
        assert!(
            !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)),
            "hop-by-hop header {:?} forwarded",
            h.name
        );
    }
}

/// Checks a request head; the framing when it was accepted, with the head's length.
fn check_request(data: &[u8], split: usize, flags: u8) -> Option<(Framing, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let req = match parse_request(data, &mut headers) {
        Ok(Some(req)) => req,
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD);
            return None;
        }
        Err(_) => return None,
    };
    assert!(req.head_len <= data.len());
    // The same head arriving in pieces: every strict prefix asks for more.
    let cut = split % req.head_len;
    let mut more = [httparse::EMPTY_HEADER; MAX_HEADERS];
    assert!(
        matches!(parse_request(&data[..cut], &mut more), Ok(None)),
        "a prefix of {cut} bytes of a valid head is not 'need more'"
    );
    let peer: IpAddr = if flags & 8 == 0 {
        "10.0.0.9".parse().unwrap()
    } else {
        "2001:db8::1".parse().unwrap()
    };
    let key = match (flags >> 4) % 5 {
        0 => HashKey::Query("id".into()),
        1 => HashKey::Header("x-user".into()),
        2 => HashKey::Cookie("sid".into()),
        3 => HashKey::Path,
        _ => HashKey::ClientIp,
    };
    let http10 = req.minor == 0;
    let mut out = Vec::new();
    let result = rewrite_request(&req, &Peer::new(peer), Some(&key), &mut out);
    let reference = reference_request(req.method, req.target, req.headers, http10);
    let info = match (result, reference) {
        (Ok(info), Ok(framing)) => {
            assert_eq!(info.framing, framing, "framing differs from the reference's");
            info
        }
        (Err(e), Err(why)) => {
            // The kind of refusal (400 or 501) must be one the reference sees.
            let fits = why.iter().any(|w| {
                matches!(
                    (&e, w),
                    (HeadError::Malformed(_), Why::Malformed(_))
                        | (HeadError::Unsupported(_), Why::Unsupported(_))
                )
            });
            assert!(fits, "refused as {e:?}, but the reference's reasons are {why:?}");
            return None;
        }
        (Err(e), Ok(framing)) => {
            panic!("refused ({e:?}) though the reference frames it as {framing:?}")
        }
        (Ok(info), Err(why)) => {
            panic!("accepted as {info:?} though the reference refuses it: {why:?}")
        }
    };
    assert_eq!(info.head_len, req.head_len);
    assert_eq!(info.http10, http10);
    assert_eq!(info.is_head, req.method == "HEAD");
    let closes = list(req.headers, "connection").any(|t| t.eq_ignore_ascii_case(b"close"));
    assert_eq!(info.keep_alive, !http10 && !closes);
    assert_eq!(
        info.upgrade,
        reference_upgrade(req.headers, http10, info.framing),
        "upgrade decision differs from the reference's"
    );
    if info.retryable {
        assert_eq!(info.framing, Framing::Empty);
    }
    // What goes upstream is a whole head, framed the same way.
    let mut up_headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 3];
    let mut up = httparse::Request::new(&mut up_headers);
    match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(up.method, Some(req.method));
    assert_eq!(up.path, Some(req.target));
    assert_eq!(up.version, Some(if info.http10 { 0 } else { 1 }));
    no_hop_by_hop(up.headers, false, info.upgrade);
    if info.upgrade {
        // Only a bodiless HTTP/1.1 request can become a tunnel, and it says so upstream.
        assert_eq!(info.framing, Framing::Empty);
        assert!(!info.http10);
        assert!(named(up.headers, "upgrade").count() >= 1);
        assert_eq!(named(up.headers, "connection").count(), 1);
    }
    // The replica must accept what we accepted, and read it the same way: by the
    // reference and by our own reading of it.
    assert_eq!(
        reference_request(req.method, req.target, up.headers, info.http10),
        Ok(info.framing),
        "the replica would refuse or frame differently\n{}",
        String::from_utf8_lossy(&out)
    );
    let up_req = http1::Request {
        method: up.method.unwrap(),
        target: up.path.unwrap(),
        minor: up.version.unwrap(),
        headers: up.headers,
        head_len: out.len(),
    };
    assert_eq!(
        http1::request_framing(&up_req),
        Ok(info.framing),
        "upstream would frame the body differently\n{}",
        String::from_utf8_lossy(&out)
    );
    // The one Host passes unchanged, and X-Forwarded-Host repeats it.
    let host: Vec<&[u8]> = named(req.headers, "host").collect();
    assert_eq!(named(up.headers, "host").collect::<Vec<_>>(), host);
    assert_eq!(named(up.headers, "x-forwarded-host").collect::<Vec<_>>(), host);
    assert_eq!(named(up.headers, "x-forwarded-for").count(), 1);
    assert_eq!(named(up.headers, "x-forwarded-proto").count(), 1);
    Some((info.framing, info.head_len))
}

/// Checks a response head; the framing when it was accepted, with the head's length.
fn check_response(data: &[u8], split: usize, flags: u8) -> Option<(Framing, usize)> {
    let is_head = flags & 1 != 0;
    let client_closes = flags & 2 != 0;
    let served_by = (flags & 4 != 0).then_some("Server7");
    let mut out = Vec::new();
    let result = rewrite_response(data, is_head, served_by, client_closes, &mut out);
    let mut up_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut up = httparse::Response::new(&mut up_headers);
    let parsed = up.parse(data);
    let info = match result {
        Ok(Some(info)) => info,
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD);
            return None;
        }
        Err(e) => {
            // A head httparse reads whole is refused only for its framing: a bad
            // length, or a final coding other than chunked, which the balancer
            // refuses even where the status says there is no body.
            if let (Ok(httparse::Status::Complete(_)), Some(status)) = (parsed, up.code) {
                let te_not_chunked = named(up.headers, "transfer-encoding").next().is_some()
                    && !list(up.headers, "transfer-encoding")
                        .last()
                        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                assert!(
                    te_not_chunked
                        || reference_response_framing(up.headers, status, is_head).is_none(),
                    "refused ({e:?}) though the reference frames it"
                );
            }
            return None;
        }
    };
    assert!(info.head_len <= data.len());
    let cut = split % info.head_len;
    let mut scratch = Vec::new();
    assert!(
        matches!(
            rewrite_response(
                &data[..cut],
                is_head,
                served_by,
                client_closes,
                &mut scratch
            ),
            Ok(None)
        ),
        "a prefix of {cut} bytes of a valid head is not 'need more'"
    );
    // The client gets a whole head, framed the same way.
    let mut down_headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
    let mut down = httparse::Response::new(&mut down_headers);
    match down.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len()),
        other => panic!(
            "rewritten head does not parse: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
    assert_eq!(down.code, Some(info.status));
    assert_eq!(down.version, Some(1));
    let switching = info.status == 101;
    let closes = !switching
        && info.status >= 200
        && (client_closes || info.framing == Framing::UntilClose);
    no_hop_by_hop(down.headers, closes, switching);
    assert_eq!(
        named(down.headers, "connection").count(),
        usize::from(closes || switching)
    );
    if switching {
        assert!(!info.reusable, "a switched connection was kept for reuse");
    }
    assert!(matches!(parsed, Ok(httparse::Status::Complete(_))));
    assert_eq!(
        reference_response_framing(up.headers, info.status, is_head),
        Some(info.framing),
        "framing differs from RFC 9112's"
    );
    if info.framing == Framing::Chunked {
        // "An intermediary that chooses to forward the message MUST first remove the
        // received Content-Length field" (RFC 9112, 6.3).
        assert_eq!(named(down.headers, "content-length").count(), 0);
    }
    assert_eq!(
        reference_response_framing(down.headers, info.status, is_head),
        Some(info.framing),
        "the client would frame the body differently\n{}",
        String::from_utf8_lossy(&out)
    );
    Some((info.framing, info.head_len))
}

/// RFC 9112, 6.3, for a response; `None` where the balancer must refuse it (a coding
/// other than chunked last, which it does not pass on, or a bad length). Looser than
/// for requests: every `Transfer-Encoding` line counts as one list, and a replica may
/// repeat an equal `Content-Length`.
fn reference_response_framing(
    headers: &[httparse::Header<'_>],
    status: u16,
    is_head: bool,
) -> Option<Framing> {
    if is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Framing::Empty);
    }
    if named(headers, "transfer-encoding").next().is_some() {
        // Transfer-Encoding overrides Content-Length (6.3, item 3).
        let last = list(headers, "transfer-encoding").last()?;
        return last
            .eq_ignore_ascii_case(b"chunked")
            .then_some(Framing::Chunked);
    }
    Some(match reference_content_length(headers, true).ok()? {
        None => Framing::UntilClose,
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

// ---------------------------------------------------------------------------------
// Chunked bodies.

/// RFC 9112, 7.1's limits as the balancer sets them: a size line of at most 4096
/// bytes with its CRLF, a trailer section of at most 16 KiB with its final CRLF.
const REF_MAX_LINE: usize = 4096;
const REF_MAX_TRAILERS: usize = 16 * 1024;

/// One chunk as far as the buffer holds it.
#[derive(Debug)]
struct RefChunk<'a> {
    size: u64,
    /// Its data, cut short where the buffer ends inside it.
    data: &'a [u8],
    /// Whether the CRLF after its data has been read.
    closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The body ends after this many bytes.
    Whole(usize),
    /// No body, whatever follows.
    Refused(&'static str),
    /// A body so far.
    NeedMore,
}

#[derive(Debug)]
struct RefBody<'a> {
    verdict: Verdict,
    /// Every chunk with data whose size line was read.
    chunks: Vec<RefChunk<'a>>,
    /// Where each size line accepted starts and how long it is with its CRLF.
    size_lines: Vec<(usize, usize, u64)>,
}

impl RefBody<'_> {
    /// The canonical encoding of what has been read: what a decoder that writes as
    /// it goes has written by now.
    fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.chunks {
            out.extend_from_slice(format!("{:x}\r\n", c.size).as_bytes());
            out.extend_from_slice(c.data);
            if c.closed {
                out.extend_from_slice(b"\r\n");
            }
        }
        if matches!(self.verdict, Verdict::Whole(_)) {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        out
    }

    fn data(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.data).copied().collect()
    }
}

/// The next line of `buf` from `at`: its text and where the following one starts.
/// Lines are cut at CRLF; a line is judged once its end arrives, and one still
/// open is refused only once it is already longer than `limit` allows.
enum Line<'a> {
    Whole(&'a [u8], usize),
    Open,
    Bad(&'static str),
}

fn line_at(buf: &[u8], at: usize, limit: usize) -> Line<'_> {
    let rest = &buf[at..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(n) => {
            let text = &rest[..n];
            if text.contains(&b'\n') {
                Line::Bad("bare LF")
            } else if n + 2 > limit {
                Line::Bad("line too long")
            } else if text.contains(&b'\r') {
                Line::Bad("bare CR")
            } else {
                Line::Whole(text, at + n + 2)
            }
        }
        None if rest.contains(&b'\n') => Line::Bad("bare LF"),
        None if rest.len() > limit => Line::Bad("line too long"),
        None => Line::Open,
    }
}

fn tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}

fn token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| tchar(*b))
}

/// VCHAR, obs-text, SP and HTAB: field-value bytes, and quoted-pair's second byte.
fn field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)
}

/// `quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE`, the whole of `s`.
fn quoted_string(s: &[u8]) -> bool {
    let [b'"', inner @ .., b'"'] = s else {
        return false;
    };
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e) if field_byte(e) => {}
                _ => return false, // a lone backslash would escape the closing quote
            },
            b'"' => return false,
            b => {
                if !field_byte(b) {
                    return false;
                }
            }
        }
    }
    true
}

fn trim_bws_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

fn trim_bws_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`,
/// read by cutting at each `;` outside a quoted-string: before the first, only
/// BWS; then each piece is one extension, with BWS around it, except after the
/// last (BWS only ever precedes a `;` or surrounds a `=`).
fn chunk_ext(s: &[u8]) -> bool {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == b';' {
            pieces.push(&s[start..i]);
            start = i + 1;
        }
    }
    pieces.push(&s[start..]);
    let (first, exts) = pieces.split_first().unwrap();
    if !trim_bws_start(first).is_empty() || exts.is_empty() && !first.is_empty() {
        return false;
    }
    exts.iter().enumerate().all(|(n, piece)| {
        let mut piece = trim_bws_start(piece);
        if n + 1 < exts.len() {
            piece = trim_bws_end(piece);
        }
        match piece.iter().position(|b| *b == b'=') {
            None => token(piece),
            Some(eq) => {
                let value = trim_bws_start(&piece[eq + 1..]);
                token(trim_bws_end(&piece[..eq])) && (token(value) || quoted_string(value))
            }
        }
    })
}

/// `chunk-size [ chunk-ext ]`, with chunk-size 1 to 16 hex digits.
fn size_line(text: &[u8]) -> Option<u64> {
    let digits = text.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if !(1..=16).contains(&digits) || !chunk_ext(&text[digits..]) {
        return None;
    }
    Some(text[..digits].iter().fold(0u64, |n, d| {
        n << 4 | u64::from(match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        })
    }))
}

/// `field-name ":" OWS field-value OWS`, no obs-fold.
fn field_line(text: &[u8]) -> bool {
    match text.iter().position(|b| *b == b':') {
        Some(colon) => token(&text[..colon]) && text[colon + 1..].iter().all(|b| field_byte(*b)),
        None => false,
    }
}

/// RFC 9112, 7.1 over the whole of `buf`, which should start with a chunked body.
fn reference_chunked(buf: &[u8]) -> RefBody<'_> {
    let mut body = RefBody {
        verdict: Verdict::NeedMore,
        chunks: Vec::new(),
        size_lines: Vec::new(),
    };
    let mut at = 0;
    // chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF, until last-chunk.
    loop {
        let (text, next) = match line_at(buf, at, REF_MAX_LINE) {
            Line::Whole(text, next) => (text, next),
            Line::Open => return body,
            Line::Bad(why) => {
                body.verdict = Verdict::Refused(why);
                return body;
            }
        };
        let Some(size) = size_line(text) else {
            body.verdict = Verdict::Refused("bad size line");
            return body;
        };
        body.size_lines.push((at, next - at, size));
        at = next;
        if size == 0 {
            break;
        }
        let left = buf.len() - at;
        let data_end = if (left as u64) < size {
            buf.len()
        } else {
            at + size as usize
        };
        body.chunks.push(RefChunk {
            size,
            data: &buf[at..data_end],
            closed: false,
        });
        at = data_end;
        match &buf[at..] {
            [b'\r', b'\n', ..] => {
                body.chunks.last_mut().unwrap().closed = true;
                at += 2;
            }
            [] | [b'\r'] => return body,
            _ => {
                body.verdict = Verdict::Refused("data not followed by CRLF");
                return body;
            }
        }
    }
    // trailer-section CRLF
    let mut trailers = 0;
    loop {
        let (text, next) = match line_at(buf, at, REF_MAX_TRAILERS - trailers) {
            Line::Whole(text, next) => (text, next),
            Line::Open => return body,
            Line::Bad(why) => {
                body.verdict = Verdict::Refused(why);
                return body;
            }
        };
        trailers += next - at;
        at = next;
        if text.is_empty() {
            body.verdict = Verdict::Whole(at);
            return body;
        }
        if !field_line(text) {
            body.verdict = Verdict::Refused("bad trailer line");
            return body;
        }
    }
}

/// A canonical body read by httparse's chunk-size parser alone: the data and the
/// length, or `None` if it is not one.
fn httparse_decode(enc: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let (n, size) = match httparse::parse_chunk_size(&enc[at..]) {
            Ok(httparse::Status::Complete(read)) => read,
            _ => return None,
        };
        at += n;
        if size == 0 {
            return enc[at..].starts_with(b"\r\n").then_some((data, at + 2));
        }
        let end = at.checked_add(usize::try_from(size).ok()?)?;
        data.extend_from_slice(enc.get(at..end)?);
        if enc.get(end..end + 2) != Some(b"\r\n") {
            return None;
        }
        at = end + 2;
    }
}

/// What one `Chunked` makes of `parts` fed in turn: the result, whether it ended,
/// and what it wrote.
type Fed = (Result<usize, HeadError>, bool, Vec<u8>);

fn feed_all(parts: &[&[u8]]) -> Fed {
    let mut c = Chunked::default();
    let mut out = Vec::new();
    let mut n = 0;
    for part in parts {
        let took = match c.feed(part, &mut out) {
            Ok(took) => took,
            Err(e) => return (Err(e), c.done(), out),
        };
        assert!(took <= part.len());
        assert!(took == part.len() || c.done(), "stopped early but not done");
        n += took;
        if c.done() {
            break;
        }
    }
    (Ok(n), c.done(), out)
}

fn check_chunked(data: &[u8], split: usize) {
    // Fed whole, in two pieces, a byte at a time: one result.
    let whole = feed_all(&[data]);
    let cut = split % (data.len() + 1);
    let (a, b) = data.split_at(cut);
    assert_eq!(feed_all(&[a, b]), whole, "split at {cut}");
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(feed_all(&bytes), whole, "byte at a time");
    let (result, done, out) = whole;

    // The reference decoder agrees on verdict, end and what was written.
    let reference = reference_chunked(data);
    match (reference.verdict, &result) {
        (Verdict::Whole(end), Ok(n)) => {
            assert!(done, "the reference ends the body at {end}, Chunked reads on");
            assert_eq!(*n, end, "the body ends elsewhere");
        }
        (Verdict::NeedMore, Ok(n)) => {
            assert!(!done, "Chunked ended at {n} a body the reference reads on");
            assert_eq!(*n, data.len());
        }
        (Verdict::Refused(_), Err(_)) => {}
        (verdict, result) => {
            panic!("the reference says {verdict:?}, Chunked {result:?} (done: {done})")
        }
    }
    if result.is_ok() {
        assert_eq!(
            out,
            reference.encoded(),
            "Chunked wrote something else than the reference decodes"
        );
    }

    // httparse reads every size line Chunked took (the reference's, now that
    // they agree), with the same size and to the same end.
    for &(start, len, size) in &reference.size_lines {
        assert_eq!(
            httparse::parse_chunk_size(&data[start..]),
            Ok(httparse::Status::Complete((len, size))),
            "httparse reads the size line at {start} otherwise"
        );
    }

    if done {
        // What we wrote is canonical: it decodes to itself, and httparse reads it
        // to the same data.
        assert_eq!(
            feed_all(&[&out]),
            (Ok(out.len()), true, out.clone()),
            "the re-encoded body is not a fixed point"
        );
        assert_eq!(
            httparse_decode(&out),
            Some((reference.data(), out.len())),
            "httparse decodes the re-encoded body otherwise"
        );
        let again = reference_chunked(&out);
        assert_eq!(again.verdict, Verdict::Whole(out.len()));
        assert_eq!(again.data(), reference.data());
    }
}

/// Each `~` made 1024 of them, up to a total of 24 KiB.
fn stretch(data: &[u8]) -> Vec<u8> {
    const MAX: usize = 24 * 1024;
    let mut out = Vec::with_capacity(MAX);
    for &b in data {
        let n = if b == b'~' && out.len() < MAX { 1024 } else { 1 };
        out.resize(out.len() + n, b);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let [flags, split, data @ ..] = input else {
        return;
    };
    assert_eq!(
        (chunked::MAX_CHUNK_LINE, chunked::MAX_TRAILERS),
        (REF_MAX_LINE, REF_MAX_TRAILERS),
        "the limits the reference holds Chunked to moved"
    );
    // Scale the split byte over the message.
    let split = usize::from(*split) * data.len().max(1) / 255 + usize::from(*split);
    if let Some((Framing::Chunked, head_len)) = check_request(data, split, *flags) {
        check_chunked(&data[head_len..], split);
    }
    if let Some((Framing::Chunked, head_len)) = check_response(data, split, *flags) {
        check_chunked(&data[head_len..], split);
    }
    if *flags >> 4 == 15 {
        check_chunked(&stretch(data), split);
    } else {
        check_chunked(data, split);
    }
});
