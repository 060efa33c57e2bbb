//! A differential request-smuggling test: real, independent HTTP/1.1 servers behind
//! the balancer (uvicorn with h11, gunicorn, aiohttp, Node and our own `server`), and
//! the attack payloads of `e2e::smuggling` sent through it. For every payload, each
//! backend must see exactly the request boundaries the balancer saw, or the balancer
//! must have refused the payload.
//!
//! The oracle needs no model of HTTP. Every backend speaks one echo protocol
//! (`tests/backends/echo.py` describes it) and numbers the `/echo` requests it
//! completes: 1, 2, 3, …. After each payload a canary request follows on a new
//! connection, which the balancer (one worker, a last-in-first-out pool) sends over
//! the upstream connection the payload used. A backend that saw a request the
//! balancer did not shows either as a gap in the numbers (it completed a request no
//! client was answered for) or as a canary answered with another request's echo (a
//! request left waiting on the connection swallowed it).
//!
//! `SMUGGLING_BALANCER_BIN` points the test at another build of the balancer, and
//! `DIFFTEST_PYTHON` at another interpreter with `tests/backends/requirements.txt`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::smuggling::{self, Payload};
use e2e::{bin, wait_healthy, Service};
use serde_json::Value;

/// How long a payload's answers may take: past the balancer's 2 s response timeout,
/// so that a backend waiting for bytes the balancer considers sent shows as its 504.
const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a canary's (or a victim's) answer may take.
const CANARY_TIMEOUT: Duration = Duration::from_secs(3);
/// The canary's body: longer than the smuggled requests' 120 bytes, so one of them
/// left waiting swallows the canary whole and answers in its place.
const CANARY_BODY: u64 = 256;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("DIFFTEST_PYTHON") {
        return python.into();
    }
    let python = workspace().join("target/difftest-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/difftest-env.sh` (make test does) to install the \
         Python backends, or set DIFFTEST_PYTHON to an interpreter that has \
         tests/backends/requirements.txt",
        python.display()
    );
    python
}

fn node() -> PathBuf {
    let found = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`node` is missing: install Node.js (scripts/setup.sh installs Debian's nodejs)"
    );
    PathBuf::from("node")
}

/// The servers put behind the balancer, each with its own HTTP/1.1 parser.
#[derive(Debug, Clone, Copy)]
enum Backend {
    UvicornH11,
    Gunicorn,
    Aiohttp,
    Node,
    Server,
}

const BACKENDS: [Backend; 5] = [
    Backend::UvicornH11,
    Backend::Gunicorn,
    Backend::Aiohttp,
    Backend::Node,
    Backend::Server,
];

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::UvicornH11 => "uvicorn-h11",
            Backend::Gunicorn => "gunicorn",
            Backend::Aiohttp => "aiohttp",
            Backend::Node => "node",
            Backend::Server => "server",
        }
    }

    fn start(self) -> Service {
        let script = |file: &str| {
            let path = workspace().join("tests/backends").join(file);
            path.to_str().expect("a UTF-8 path").to_string()
        };
        let echo_py =
            |server: &str| Service::start(python(), &[&script("echo.py"), "--server", server], &[]);
        match self {
            Backend::UvicornH11 => echo_py("uvicorn"),
            Backend::Gunicorn => echo_py("gunicorn"),
            Backend::Aiohttp => echo_py("aiohttp"),
            Backend::Node => Service::start(node(), &[&script("echo.js")], &[]),
            // Its log would hold a line for each malformed request of the corpus.
            Backend::Server => Service::start(
                bin("server"),
                &["--listen", "127.0.0.1:0"],
                &[("SERVER_ID", "echo"), ("RUST_LOG", "off")],
            ),
        }
    }
}

fn address(s: &Service) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// The balancer in front of `backend` alone, once it finds it healthy: one worker, so
/// that one pool holds every upstream connection.
fn balancer(backend: &Service) -> Service {
    let bin = std::env::var_os("SMUGGLING_BALANCER_BIN")
        .map_or_else(|| bin("load_balancer"), PathBuf::from);
    let backend = format!("echo={}", address(backend));
    let lb = Service::start(
        bin,
        &[
            "--runtime",
            "static",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--heartbeat-interval",
            "200ms",
            "--response-timeout",
            "2s",
            "--backend",
            &backend,
        ],
        &[("RUST_LOG", "error")],
    );
    wait_healthy(&lb, 1, Duration::from_secs(20));
    lb
}

/// Writes `bytes` on a new connection, closes its writing side, and reads until the
/// balancer closes it; `true` beside what was read when `timeout` passed first.
fn exchange(lb: &str, bytes: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(lb).expect("the balancer accepts connections");
    s.set_write_timeout(Some(timeout)).expect("a write timeout");
    // A refused payload may be closed on before all of it is written: what came back
    // still counts.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, true);
        }
        s.set_read_timeout(Some(left)).expect("a read timeout");
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, true)
            }
            // Closing on unread bytes resets the connection; the answer came before.
            Err(_) => return (got, false),
        }
    }
}

/// One HTTP response as the client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The final responses in what a client read (interim 1xx ones left out), and the
/// bytes after the last whole one.
fn split(mut bytes: &[u8]) -> (Vec<Response>, &[u8]) {
    let mut responses = Vec::new();
    while let Some((response, used)) = parse_response(bytes) {
        bytes = &bytes[used..];
        match response.status {
            // What follows a switch is another protocol's.
            101 => {
                responses.push(response);
                return (responses, &[]);
            }
            100..=199 => {}
            _ => responses.push(response),
        }
    }
    (responses, bytes)
}

fn parse_response(bytes: &[u8]) -> Option<(Response, usize)> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.")?
        .get(2..5)?
        .parse()
        .ok()?;
    let headers = lines
        .map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &bytes[end + 4..];
    let used = if matches!(status, 100..=199 | 204 | 304) {
        0
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (body, used) = dechunk(rest)?;
        response.body = body;
        used
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().ok()?;
        response.body = rest.get(..length)?.to_vec();
        length
    } else {
        response.body = rest.to_vec();
        rest.len()
    };
    Some((response, end + 4 + used))
}

fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&bytes[at..], b"\r\n")?;
        let line = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            loop {
                let line_end = at + find(&bytes[at..], b"\r\n")?;
                let blank = line_end == at;
                at = line_end + 2;
                if blank {
                    return Some((body, at));
                }
            }
        }
        body.extend_from_slice(bytes.get(at..at + size)?);
        at += size;
        if bytes.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

/// A backend's echo of a request it completed.
#[derive(Debug, Clone)]
struct Echo {
    seq: u64,
    method: String,
    target: String,
    body_len: u64,
    body: String,
}

impl Echo {
    fn of(json: &Value) -> Option<Echo> {
        Some(Echo {
            seq: json["seq"].as_u64()?,
            method: json["method"].as_str()?.to_string(),
            target: json["target"].as_str()?.to_string(),
            body_len: json["body_len"].as_u64()?,
            body: json["body"].as_str()?.to_string(),
        })
    }
}

/// What one response says about the request it answers.
#[derive(Debug)]
enum Answer {
    /// The backend completed an `/echo` request.
    Echo(Echo),
    /// The balancer refused a request and forwarded none of it.
    Refused(u16, String),
    /// The backend's own error status (a 404 the balancer words as its own included).
    BackendError(u16),
    /// Anything else, such as the balancer's 504 for a backend that waited for more of
    /// a request the balancer had sent whole.
    Unexpected(u16, String),
}

impl Answer {
    fn of(r: &Response) -> Answer {
        let served = r.header("x-served-by").is_some();
        let json: Option<Value> = serde_json::from_slice(&r.body).ok();
        if let Some(echo) = json.as_ref().and_then(Echo::of).filter(|_| served) {
            return Answer::Echo(echo);
        }
        if served && r.status >= 400 {
            return Answer::BackendError(r.status);
        }
        let ours = json
            .as_ref()
            .filter(|j| j["status"] == "failure")
            .and_then(|j| j["message"].as_str());
        match ours {
            Some(m) if m.contains("endpoint does not exist") => Answer::BackendError(404),
            Some(m) if matches!(r.status, 400 | 413 | 431 | 501) => {
                Answer::Refused(r.status, m.to_string())
            }
            Some(m) => Answer::Unexpected(r.status, m.to_string()),
            None => Answer::Unexpected(r.status, snippet(&r.body)),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Echo(e) => write!(
                f,
                "echo #{} {} {} ({} B body {:?})",
                e.seq,
                e.method,
                e.target,
                e.body_len,
                e.body.chars().take(60).collect::<String>()
            ),
            Answer::Refused(status, m) => write!(f, "refused {status} {m:?}"),
            Answer::BackendError(status) => write!(f, "backend {status}"),
            Answer::Unexpected(status, m) => write!(f, "{status} {m:?}"),
        }
    }
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

/// Whether bytes after the last whole answer begin one: an answer the balancer was
/// relaying when the backend broke off (as a server that closes on a request body it
/// did not read resets the connection, losing what it had still to send).
fn cut_off(rest: &[u8]) -> bool {
    rest.starts_with(b"HTTP/1.")
}

/// What a client read, in words: its answers, unparsed bytes, a timeout.
fn describe(answers: &[Answer], rest: &[u8], timed_out: bool) -> String {
    let mut parts: Vec<String> = answers.iter().map(Answer::to_string).collect();
    if cut_off(rest) {
        parts.push(format!("an answer cut off after {} bytes", rest.len()));
    } else if !rest.is_empty() {
        parts.push(format!("{} unparsed bytes {:?}", rest.len(), snippet(rest)));
    }
    if timed_out {
        parts.push("no close in time".into());
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// Sends `bytes` and reads what came back as answers, described.
fn answers(lb: &str, bytes: &[u8], timeout: Duration) -> (Vec<Answer>, String, bool) {
    let (read, timed_out) = exchange(lb, bytes, timeout);
    let (responses, rest) = split(&read);
    let answers: Vec<Answer> = responses.iter().map(Answer::of).collect();
    let described = describe(&answers, rest, timed_out);
    let clean = (rest.is_empty() || cut_off(rest)) && !timed_out;
    (answers, described, clean)
}

/// Payloads a backend answers in a way no balancer can help, with why: their verdicts
/// are printed, and not counted as failures.
const KNOWN_QUIRKS: &[(&str, &str, &str)] = &[(
    "server",
    "upgrade/websocket-without-key",
    "actix takes the bytes after a request that asks to upgrade for its body, switched \
     or not, so the echo never completes: the balancer answers 504 and drops the \
     connection",
)];

fn known_quirk(backend: Backend, payload: &str) -> Option<&'static str> {
    KNOWN_QUIRKS
        .iter()
        .find(|(b, p, _)| *b == backend.name() && *p == payload)
        .map(|(_, _, why)| *why)
}

/// What became of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The balancer refused it and forwarded nothing.
    Refused,
    /// The backend answered this many of its requests.
    Forwarded(usize),
    /// The connection closed without an answer.
    Unanswered,
}

struct Verdict {
    outcome: Outcome,
    /// Why the backend's view differed from the balancer's.
    failure: Option<String>,
    client: String,
    canary: String,
}

/// A backend behind its own balancer, and the last number its echoes reached.
struct Rig {
    // The balancer goes first, so the backend is not closed under it.
    _lb: Service,
    _backend: Service,
    address: String,
    seq: u64,
    canaries: usize,
    /// No canary gets through any more: every later payload would fail for it.
    lost: bool,
}

impl Rig {
    fn start(backend: Backend) -> Rig {
        let server = backend.start();
        let lb = balancer(&server);
        let mut rig = Rig {
            address: address(&lb),
            _lb: lb,
            _backend: server,
            seq: 0,
            canaries: 0,
            lost: false,
        };
        if let Err(got) = rig.resync() {
            panic!(
                "{}: a plain request did not come back: {got}",
                backend.name()
            );
        }
        rig
    }

    /// A canary on a new connection: its echo when the answer is its own, and what
    /// came back in words.
    fn canary(&mut self) -> (Option<Echo>, String) {
        let mut before = String::new();
        loop {
            self.canaries += 1;
            let target = format!("/echo/canary-{}", self.canaries);
            let request = format!(
                "POST {target} HTTP/1.1\r\nHost: canary\r\nContent-Length: {CANARY_BODY}\r\n\
                 Connection: close\r\n\r\n{}",
                "c".repeat(CANARY_BODY as usize)
            );
            let (answers, described, _) =
                answers(&self.address, request.as_bytes(), CANARY_TIMEOUT);
            match answers.as_slice() {
                [Answer::Echo(e)] if e.target == target && e.body_len == CANARY_BODY => {
                    return (Some(e.clone()), format!("{before}{described}"));
                }
                // The balancer's 502: the backend closed the pooled connection just
                // as the canary took it (actix does after some error answers and
                // after a request that asked to upgrade, without saying so), and a
                // POST is not resent. The connection was dead, not poisoned; the next
                // canary's number still shows whether a request went missing.
                [Answer::Unexpected(502, _)] if before.is_empty() => {
                    before = format!("{described}, then ");
                }
                _ => return (None, format!("{before}{described}")),
            }
        }
    }

    /// Sends canaries until one is answered as its own (a request left waiting takes
    /// one with it), and numbers on from there.
    fn resync(&mut self) -> Result<(), String> {
        let mut got = String::new();
        for _ in 0..5 {
            match self.canary() {
                (Some(echo), _) => {
                    self.seq = echo.seq;
                    return Ok(());
                }
                (None, said) => got = said,
            }
        }
        Err(got)
    }

    fn check(&mut self, payload: &Payload) -> Verdict {
        let (answers, client, clean) = answers(&self.address, &payload.bytes, PAYLOAD_TIMEOUT);
        let (canary, canary_said) = self.canary();
        let mut problems = Vec::new();
        if !clean {
            problems.push("the client's connection did not end in answers".to_string());
        }
        let mut next = self.seq + 1;
        for answer in &answers {
            match answer {
                Answer::Echo(e) => {
                    if e.seq != next {
                        problems.push(format!("echo #{} came where #{next} was due", e.seq));
                    }
                    next = e.seq + 1;
                }
                Answer::Unexpected(504, _) => problems.push(
                    "the balancer's 504: the backend was still waiting for more of a request \
                     the balancer had sent whole"
                        .into(),
                ),
                Answer::Unexpected(status, _) => {
                    problems.push(format!("a {status} is neither a refusal nor the backend's"))
                }
                Answer::Refused(..) | Answer::BackendError(_) => {}
            }
        }
        match canary {
            Some(e) => {
                if e.seq != next {
                    problems.push(format!(
                        "the canary was echo #{} where #{next} was due",
                        e.seq
                    ));
                }
                self.seq = e.seq;
            }
            None => {
                problems.push("the canary was not answered with its own echo".into());
                if let Err(still) = self.resync() {
                    problems.push(format!("nor were 5 more canaries (the last got {still})"));
                    self.lost = true;
                }
            }
        }
        let forwarded = answers
            .iter()
            .filter(|a| matches!(a, Answer::Echo(_) | Answer::BackendError(_)))
            .count();
        let outcome = if forwarded > 0 {
            Outcome::Forwarded(forwarded)
        } else if answers.iter().any(|a| matches!(a, Answer::Refused(..))) {
            Outcome::Refused
        } else {
            Outcome::Unanswered
        };
        Verdict {
            outcome,
            failure: (!problems.is_empty()).then(|| problems.join("; ")),
            client,
            canary: canary_said,
        }
    }
}

/// One backend's verdicts over the corpus.
struct Report {
    backend: Backend,
    verdicts: Vec<(String, Verdict)>,
}

impl Report {
    fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.verdicts.iter().filter(|(_, v)| f(v)).count()
    }

    /// The failures no known quirk explains: payload name and verdict.
    fn failures(&self) -> impl Iterator<Item = (&str, &Verdict)> {
        self.verdicts
            .iter()
            .filter(|(name, v)| v.failure.is_some() && known_quirk(self.backend, name).is_none())
            .map(|(name, v)| (name.as_str(), v))
    }
}

fn differential(backend: Backend, corpus: &[Payload]) -> Report {
    let mut rig = Rig::start(backend);
    let mut verdicts = Vec::with_capacity(corpus.len());
    for payload in corpus {
        verdicts.push((payload.name.clone(), rig.check(payload)));
        if rig.lost {
            drop(rig);
            rig = Rig::start(backend);
        }
    }
    drop(rig);
    Report { backend, verdicts }
}

fn summary(corpus: &[Payload], reports: &[Report], took: Duration) -> String {
    let mut categories: BTreeMap<&str, usize> = BTreeMap::new();
    for p in corpus {
        *categories.entry(p.category()).or_default() += 1;
    }
    let categories: Vec<String> = categories.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let row = |cells: [&dyn fmt::Display; 7]| {
        let [backend, rest @ ..] = cells;
        let rest: Vec<String> = rest.iter().map(|c| format!("{c:>10}")).collect();
        format!("{backend:<12}{}\n", rest.join(" "))
    };
    let mut out = format!(
        "corpus: {} payloads ({})\n",
        corpus.len(),
        categories.join(", ")
    );
    out += &row([
        &"backend",
        &"payloads",
        &"refused",
        &"forwarded",
        &"unanswered",
        &"failures",
        &"known",
    ]);
    for r in reports {
        let failures = r.failures().count();
        out += &row([
            &r.backend.name(),
            &r.verdicts.len(),
            &r.count(|v| v.outcome == Outcome::Refused),
            &r.count(|v| matches!(v.outcome, Outcome::Forwarded(_))),
            &r.count(|v| v.outcome == Outcome::Unanswered),
            &failures,
            &(r.count(|v| v.failure.is_some()) - failures),
        ]);
    }
    out += &format!("in {:.1} s\n", took.as_secs_f64());
    out
}

/// Every verdict, one line each, for reading after a run.
fn write_details(reports: &[Report]) -> PathBuf {
    let path = workspace().join("target/smuggling-report.txt");
    let mut out = String::new();
    for r in reports {
        for (name, v) in &r.verdicts {
            let outcome = match v.outcome {
                Outcome::Refused => "refused".to_string(),
                Outcome::Forwarded(n) => format!("forwarded {n}"),
                Outcome::Unanswered => "unanswered".to_string(),
            };
            out += &format!(
                "{}\t{name}\t{outcome}\t{}\tclient: {}\tcanary: {}\n",
                r.backend.name(),
                match (&v.failure, known_quirk(r.backend, name)) {
                    (None, _) => "ok".to_string(),
                    (Some(f), None) => format!("FAIL: {f}"),
                    (Some(f), Some(why)) => format!("known quirk ({why}): {f}"),
                },
                v.client,
                v.canary,
            );
        }
    }
    let _ = std::fs::write(&path, out);
    path
}

#[test]
fn every_backend_sees_the_request_boundaries_the_balancer_saw() {
    let corpus = smuggling::corpus();
    let started = Instant::now();
    // Each backend has its own balancer; one client each, so they run side by side.
    let reports: Vec<Report> = std::thread::scope(|s| {
        let corpus = &corpus;
        let runs: Vec<_> = BACKENDS
            .iter()
            .map(|&backend| s.spawn(move || differential(backend, corpus)))
            .collect();
        runs.into_iter()
            .map(|run| run.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    println!("{}", summary(&corpus, &reports, started.elapsed()));
    println!("every verdict: {}", write_details(&reports).display());
    let failures: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.failures().map(|(name, v)| {
                format!(
                    "{} {name}: {}\n    client got: {}\n    canary got: {}",
                    r.backend.name(),
                    v.failure.as_deref().unwrap_or_default(),
                    v.client,
                    v.canary
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} payloads reached a backend with other request boundaries than the \
         balancer's:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A victim's request on its own connection must come back as its own echo.
fn the_victim_gets_its_own_echo(lb: &str) {
    let victim = b"GET /echo/victim HTTP/1.1\r\nHost: a\r\nCookie: session=secret\r\n\r\n";
    let (answers, described, _) = answers(lb, victim, CANARY_TIMEOUT);
    assert!(
        matches!(answers.first(), Some(Answer::Echo(e)) if e.target == "/echo/victim"),
        "the victim got: {described}"
    );
}

#[test]
fn the_trailer_exploit_cannot_smuggle_a_request_onto_the_next_users_connection() {
    let backend = Backend::UvicornH11.start();
    let lb = balancer(&backend);
    let to = address(&lb);
    exchange(&to, smuggling::LAST_CHUNK_BARE_LF_EXPLOIT, PAYLOAD_TIMEOUT);
    the_victim_gets_its_own_echo(&to);
}

#[test]
fn a_trailer_ending_in_a_bare_lf_cannot_swallow_the_next_request() {
    let backend = Backend::Server.start();
    let lb = balancer(&backend);
    let to = address(&lb);
    // The same bytes to `GET /home`, which the replica answers without reading the
    // body: its answer comes back while actix is still reading trailers, and the
    // connection goes back to the pool. (`/echo` reads the whole body first, so there
    // the bytes end in a 504 and a dropped connection: the differential test above
    // catches that form.)
    let exploit = smuggling::BARE_LF_TRAILER_EXPLOIT
        .strip_prefix(b"POST /echo")
        .expect("the exploit starts with its request line");
    exchange(&to, &[&b"GET /home"[..], exploit].concat(), PAYLOAD_TIMEOUT);
    the_victim_gets_its_own_echo(&to);
}
