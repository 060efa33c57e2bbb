//! The data plane's HTTP/1 code on arbitrary bytes, read as a request head, a
//! response head and a chunked body in turn. Input: one byte of flags, one byte that
//! picks a split point, then the message.
//!
//! Checked: nothing panics; a head that parses whole also parses as "need more" when
//! cut short (the forwarder reads in pieces); a rewritten head is itself a valid head
//! with the same framing, and carries no hop-by-hop header but our own
//! `connection: close`; the framing agrees with RFC 9112's rules written out
//! independently here; a chunked body fed whole, split in two or one byte at a time
//! ends at the same place.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use load_balancer::dataplane::http1::{
    self, parse_request, rewrite_request, rewrite_response, Chunked, Framing, HeadError, Peer,
    MAX_HEAD, MAX_HEADERS,
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

/// RFC 9112, 6.3, for a request, written independently of `http1`: `None` where the
/// message must be refused.
fn reference_request_framing(headers: &[httparse::Header<'_>], http10: bool) -> Option<Framing> {
    let te: Vec<&[u8]> = named(headers, "transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .collect();
    let has_te = named(headers, "transfer-encoding").next().is_some();
    let mut length: Option<u64> = None;
    for v in named(headers, "content-length") {
        let v = v.trim_ascii();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(v).ok()?.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    if has_te {
        let chunked_last = te
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        if !chunked_last || length.is_some() || http10 {
            return None;
        }
        return Some(Framing::Chunked);
    }
    Some(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
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

fn check_request(data: &[u8], split: usize, flags: u8) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let req = match parse_request(data, &mut headers) {
        Ok(Some(req)) => req,
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD);
            return;
        }
        Err(_) => return,
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
    let mut out = Vec::new();
    let result = rewrite_request(&req, &Peer::new(peer), &key, &mut out);
    let reference = reference_request_framing(req.headers, req.minor == 0);
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            assert!(
                reference.is_none(),
                "refused ({e}) though RFC 9112 frames it as {reference:?}"
            );
            return;
        }
    };
    assert_eq!(
        Some(info.framing),
        reference,
        "framing differs from RFC 9112's"
    );
    assert_eq!(info.head_len, req.head_len);
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
    assert_eq!(named(up.headers, "x-forwarded-for").count(), 1);
    assert_eq!(named(up.headers, "x-forwarded-proto").count(), 1);
    assert!(named(up.headers, "x-forwarded-host").count() <= 1);
}

fn check_response(data: &[u8], split: usize, flags: u8) {
    let is_head = flags & 1 != 0;
    let client_closes = flags & 2 != 0;
    let served_by = (flags & 4 != 0).then_some("Server7");
    let mut out = Vec::new();
    let info = match rewrite_response(data, is_head, served_by, client_closes, &mut out) {
        Ok(Some(info)) => info,
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD);
            return;
        }
        Err(_) => return,
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
    let closes = !switching && (client_closes || info.framing == Framing::UntilClose);
    no_hop_by_hop(down.headers, closes, switching);
    assert_eq!(
        named(down.headers, "connection").count(),
        usize::from(closes || switching)
    );
    if switching {
        assert!(!info.reusable, "a switched connection was kept for reuse");
    }
    let mut up_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut up = httparse::Response::new(&mut up_headers);
    up.parse(data).expect("parsed once already");
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
}

/// RFC 9112, 6.3, for a response; `None` where the balancer must refuse it (a coding
/// other than chunked, which it does not pass on, or a bad length).
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
        let last = named(headers, "transfer-encoding")
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
            .last()?;
        return last
            .eq_ignore_ascii_case(b"chunked")
            .then_some(Framing::Chunked);
    }
    match reference_request_framing(headers, false)? {
        Framing::Empty if named(headers, "content-length").next().is_none() => {
            Some(Framing::UntilClose)
        }
        framing => Some(framing),
    }
}

fn feed_all(parts: &[&[u8]]) -> Result<(usize, bool), HeadError> {
    let mut c = Chunked::default();
    let mut n = 0;
    for part in parts {
        let took = c.feed(part)?;
        assert!(took <= part.len());
        assert!(took == part.len() || c.done(), "stopped early but not done");
        n += took;
        if c.done() {
            break;
        }
    }
    Ok((n, c.done()))
}

fn check_chunked(data: &[u8], split: usize) {
    let whole = feed_all(&[data]);
    let cut = split % (data.len() + 1);
    let (a, b) = data.split_at(cut);
    assert_eq!(feed_all(&[a, b]), whole, "split at {cut}");
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(feed_all(&bytes), whole, "byte at a time");
}

fuzz_target!(|input: &[u8]| {
    let [flags, split, data @ ..] = input else {
        return;
    };
    // Scale the split byte over the message.
    let split = usize::from(*split) * data.len().max(1) / 255 + usize::from(*split);
    check_request(data, split, *flags);
    check_response(data, split, *flags);
    check_chunked(data, split);
});
