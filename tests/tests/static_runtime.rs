//! The `static` runtime over servers the test runs itself, and forwarding behaviour
//! that needs a backend the test controls (slow answers, echoed requests).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{bin, poll, rep_names, replicas, wait_healthy, Service};

fn server(name: &str) -> Service {
    Service::start(
        bin("server"),
        &["--listen", "127.0.0.1:0"],
        &[("SERVER_ID", name)],
    )
}

fn addr(s: &Service) -> String {
    s.base.trim_start_matches("http://").to_string()
}

fn balancer(backends: &[String], extra: &[&str]) -> Service {
    let mut args: Vec<String> = [
        "--runtime",
        "static",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat-interval",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for b in backends {
        args.push("--backend".into());
        args.push(b.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let lb = Service::start(bin("load_balancer"), &refs, &[("RUST_LOG", "warn")]);
    wait_healthy(&lb, backends.len(), Duration::from_secs(20));
    lb
}

/// A hand-written HTTP/1.1 backend: `/heartbeat` answers at once, `/slow` after
/// `delay`, `/stall` sends a tenth of its body and the rest after `delay`, a request
/// to switch protocols (or to `/rogue-switch`, asked or not) gets `101` and then an
/// echo of every byte, anything else echoes the request head and body back as text.
struct TestBackend {
    addr: String,
    requests: Arc<AtomicUsize>,
}

impl TestBackend {
    fn start(delay: Duration) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counter = counter.clone();
                std::thread::spawn(move || serve(stream, delay, &counter));
            }
        });
        TestBackend { addr, requests }
    }
}

fn serve(stream: TcpStream, delay: Duration, counter: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let length = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            match read_chunked(&mut reader) {
                Some(b) => b,
                None => return,
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        if path != "/heartbeat" {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        let lower = head.to_ascii_lowercase();
        let asked = lower.contains("\r\nconnection: upgrade\r\n")
            && lower.contains("\r\nupgrade: echo\r\n");
        if asked || path == "/rogue-switch" {
            let switch = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello from the tunnel\n";
            if out.write_all(switch.as_bytes()).is_err() {
                return;
            }
            // The reader's buffer first: bytes the client sent right after its head.
            let _ = std::io::copy(&mut reader, &mut out);
            let _ = out.shutdown(std::net::Shutdown::Write);
            return;
        }
        if path == "/stall" {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
            std::thread::sleep(delay);
            let _ = out.write_all(&[b'x'; 90]);
            continue;
        }
        let reply = match path.as_str() {
            "/heartbeat" => String::new(),
            "/slow" => {
                std::thread::sleep(delay);
                "slow done".to_string()
            }
            _ => format!("{head}{}", String::from_utf8_lossy(&body)),
        };
        let res = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: test\r\n\r\n{reply}",
            reply.len()
        );
        if out.write_all(res.as_bytes()).is_err() {
            return;
        }
    }
}

/// Decodes a chunked body (trailers ignored).
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                reader.read_line(&mut trailer).ok()?;
                if trailer == "\r\n" {
                    return Some(body);
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A balancer over `backend` with `--idle-timeout idle`, and a client connection to it.
fn connected_with_idle_timeout(
    backend: TestBackend,
    idle: &str,
) -> (TestBackend, Service, TcpStream) {
    let lb = balancer(
        &[format!("only={}", backend.addr)],
        &["--idle-timeout", idle],
    );
    let s = TcpStream::connect(lb.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (backend, lb, s)
}

/// Asserts that the balancer closes `s` (whose read timeout is longer) no sooner than
/// `at_least` from now, and within 5 s.
fn closes_after_a_while(s: &mut TcpStream, at_least: Duration, what: &str) {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    assert!(matches!(s.read(&mut buf), Ok(0)), "{what} stayed open");
    let took = started.elapsed();
    assert!(
        took >= at_least && took < Duration::from_secs(5),
        "{what} closed after {took:?}"
    );
}

/// Sends raw bytes to the balancer and reads until it closes or `until` is seen.
fn raw_exchange(lb: &Service, request: &[u8], until: Option<&str>) -> String {
    let mut s = TcpStream::connect(lb.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if until.is_some_and(|u| text.matches(u).count() >= 2) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_chunked_body_and_a_pipelined_request_both_arrive_intact() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    let reply = raw_exchange(
        &lb,
        b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n",
        Some("HTTP/1.1 200"),
    );
    let first = reply.find("POST /first").expect("first request relayed");
    let second = reply.find("GET /second").expect("second request relayed");
    assert!(first < second, "{reply}");
    // The first body arrives whole and dechunked by the echo, right before the
    // second response.
    assert!(
        reply[first..second].contains("\r\n\r\nhello worldHTTP/1.1 200 OK"),
        "{reply}"
    );
}

#[test]
fn an_upgrade_becomes_a_tunnel_to_the_replica_both_ways() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    let mut s = TcpStream::connect(lb.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The first tunnelled bytes ride with the handshake, as a hasty client sends them.
    s.write_all(
        b"GET /chat?id=7 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly ",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let wanted = |got: &[u8], text: &str| String::from_utf8_lossy(got).contains(text);
    while !wanted(&got, "early ") {
        let n = s.read(&mut buf).expect("the tunnel answers");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("\r\nupgrade: echo"), "{text}");
    assert!(head.contains("\r\nconnection: upgrade"), "{text}");
    assert!(head.contains("\r\nx-served-by: echo"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nhello from the tunnel\nearly "),
        "{text}"
    );
    // Bytes that are not HTTP go through untouched, in both directions.
    let payload: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let mut writer = s.try_clone().unwrap();
    let sent = payload.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("the echo, then a close");
    sender.join().unwrap();
    assert!(
        back == payload,
        "{} bytes came back of {}",
        back.len(),
        payload.len()
    );
}

#[test]
fn a_tunnel_stays_open_while_bytes_move_and_closes_once_silent() {
    let (_echo, _lb, mut s) =
        connected_with_idle_timeout(TestBackend::start(Duration::ZERO), "800ms");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("hello from the tunnel\n") {
        let n = s.read(&mut buf).expect("the tunnel answers");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // Three times the idle timeout, a message every 250 ms: the tunnel stays open.
    let talking = Instant::now();
    while talking.elapsed() < Duration::from_millis(2400) {
        s.write_all(b"ping\n").unwrap();
        let mut echoed = [0u8; 5];
        s.read_exact(&mut echoed).expect("an echo while talking");
        assert_eq!(&echoed, b"ping\n");
        std::thread::sleep(Duration::from_millis(250));
    }
    closes_after_a_while(&mut s, Duration::from_millis(500), "the silent tunnel");
}

#[test]
fn a_replica_that_stalls_mid_body_is_cut_off_after_the_idle_timeout() {
    let stalling = TestBackend::start(Duration::from_secs(30));
    let lb = balancer(
        &[format!("stall={}", stalling.addr)],
        &["--idle-timeout", "500ms"],
    );
    let started = Instant::now();
    let reply = raw_exchange(&lb, b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n", None);
    let took = started.elapsed();
    // The client has what the replica sent, and a close instead of a 30 s wait.
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n0123456789"), "{reply}");
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() {
    // A 16 MB answer (the echo of a 16 MB upload) to a client that reads none of it:
    // past what the sockets' buffers hold, the balancer's writes stall, and after
    // the idle timeout it closes instead of holding both connections forever.
    let (_echo, _lb, mut s) =
        connected_with_idle_timeout(TestBackend::start(Duration::ZERO), "500ms");
    let body = vec![b'y'; 16 << 20];
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got[..got.len().min(64)]).starts_with("HTTP/1.1 200"),
        "no answer began"
    );
    assert!(
        got.len() < body.len(),
        "all {} bytes were kept for a client that was not reading",
        got.len()
    );
}

#[test]
fn a_client_that_stalls_mid_body_is_cut_off_after_the_idle_timeout() {
    let (_echo, _lb, mut s) =
        connected_with_idle_timeout(TestBackend::start(Duration::ZERO), "500ms");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    closes_after_a_while(&mut s, Duration::from_millis(300), "the stalled upload");
}

#[test]
fn a_replica_cannot_switch_protocols_unasked() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    // Without `Connection: upgrade` the balancer neither asks nor accepts a switch.
    let reply = raw_exchange(
        &lb,
        b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\nConnection: close\r\n\r\n",
        None,
    );
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains("\r\nupgrade:"),
        "{reply}"
    );
    // A replica that switches anyway is a broken replica: 502, not a tunnel.
    let reply = raw_exchange(
        &lb,
        b"GET /rogue-switch HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        None,
    );
    assert!(reply.starts_with("HTTP/1.1 502 "), "{reply}");
}

#[test]
fn an_http10_client_gets_its_answer_and_a_closed_connection() {
    let a = server("alpha");
    let lb = balancer(&[format!("A={}", addr(&a))], &[]);
    let reply = raw_exchange(&lb, b"GET /home HTTP/1.0\r\n\r\n", None);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("x-served-by: a\r\n"),
        "{reply}"
    );
    assert!(
        reply.ends_with(r#"{"message":"Hello from Server: alpha","status":"successful"}"#),
        "{reply}"
    );
}

#[test]
fn a_malformed_or_smuggling_request_is_refused_with_a_json_400() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    for raw in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let reply = raw_exchange(&lb, raw, None);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains(r#""status":"failure""#), "{reply}");
    }
    // A coding other than chunked alone is one we do not implement, as nginx says.
    let reply = raw_exchange(
        &lb,
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        None,
    );
    assert!(reply.starts_with("HTTP/1.1 501"), "{reply}");
    assert!(reply.contains(r#""status":"failure""#), "{reply}");
    assert_eq!(
        echo.requests.load(Ordering::SeqCst),
        0,
        "a refused request reached the backend"
    );
}

#[test]
fn a_malformed_chunked_body_gets_a_400_and_the_replica_never_completes_it() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    // The last chunk followed by a bare LF: the start of the trailer-smuggling exploit.
    let reply = raw_exchange(
        &lb,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nZ\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        None,
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("malformed request body"), "{reply}");
    assert!(!reply.contains("smuggled"), "{reply}");
    assert_eq!(echo.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn an_h2c_upgrade_is_served_as_plain_http11() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    let reply = raw_exchange(
        &lb,
        b"GET /h2 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        Some("HTTP/1.1 200"),
    );
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    // The echoed head is what the replica got: no upgrade, no HTTP/2 settings.
    let lower = reply.to_ascii_lowercase();
    assert!(lower.contains("get /h2 http/1.1\r\n"), "{reply}");
    assert!(
        !lower.contains("upgrade") && !lower.contains("http2-settings"),
        "{reply}"
    );
}

#[test]
fn static_backends_are_balanced_but_never_started() {
    let (a, b) = (server("alpha"), server("beta"));
    let lb = balancer(&[format!("A={}", addr(&a)), format!("B={}", addr(&b))], &[]);
    assert_eq!(rep_names(&lb), ["A", "B"]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let r = lb.get("/home");
        assert_eq!(r.status, 200);
        seen.insert(r.header("x-served-by").unwrap().to_string());
    }
    assert_eq!(seen.len(), 2);
    let r = lb.send("POST", "/add", Some(r#"{"n": 1}"#));
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn a_backend_that_stops_answering_leaves_the_ring_and_rejoins_when_it_answers() {
    let a = server("alpha");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let b_addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let b = Service::start(
        bin("server"),
        &["--listen", &b_addr],
        &[("SERVER_ID", "beta")],
    );
    let lb = balancer(&[format!("A={}", addr(&a)), format!("B={b_addr}")], &[]);
    drop(b);
    poll("B to leave the ring", Duration::from_secs(10), || {
        let r = replicas(&lb);
        (r[1]["state"] != "healthy").then_some(())
    });
    for _ in 0..50 {
        let r = lb.get("/home");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-served-by"), Some("A"));
    }
    let _b = Service::start(
        bin("server"),
        &["--listen", &b_addr],
        &[("SERVER_ID", "beta")],
    );
    wait_healthy(&lb, 2, Duration::from_secs(30));
    poll("B to serve again", Duration::from_secs(10), || {
        (lb.get("/home").header("x-served-by") == Some("B")).then_some(())
    });
}

#[test]
fn rm_lets_in_flight_requests_finish_before_the_replica_goes() {
    let slow = TestBackend::start(Duration::from_millis(1500));
    let lb = Arc::new(balancer(&[format!("slow={}", slow.addr)], &[]));
    let client = {
        let lb = lb.clone();
        std::thread::spawn(move || {
            let r = lb.get("/slow");
            (r, Instant::now())
        })
    };
    poll(
        "the slow request to reach the backend",
        Duration::from_secs(10),
        || (slow.requests.load(Ordering::SeqCst) == 1).then_some(()),
    );
    let r = lb.send("DELETE", "/rm", Some(r#"{"n": 1}"#));
    let rm_done = Instant::now();
    assert_eq!(r.status, 200, "{}", r.body);
    let (slow_reply, slow_done) = client.join().unwrap();
    assert_eq!(slow_reply.status, 200);
    assert_eq!(slow_reply.body, "slow done");
    assert!(
        rm_done >= slow_done,
        "/rm returned before the in-flight request finished"
    );
    assert_eq!(lb.get("/home").status, 503);
}

#[test]
fn forwarded_requests_keep_method_path_query_headers_and_body() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    let body = "x".repeat(200_000);
    let r = lb
        .try_send(
            "POST",
            "/things/7?q=1&id=2",
            &[
                ("x-custom", "kept"),
                ("connection", "keep-alive, x-drop"),
                ("x-drop", "1"),
            ],
            Some(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("echo"));
    assert_eq!(r.header("x-backend"), Some("test"));
    let echoed = r.body.to_ascii_lowercase();
    assert!(
        echoed.starts_with("post /things/7?q=1&id=2 http/1.1"),
        "{:.200}",
        r.body
    );
    assert!(echoed.contains("x-custom: kept"));
    assert!(!echoed.contains("x-drop"));
    assert!(echoed.contains("x-forwarded-for: 127.0.0.1"));
    assert!(echoed.contains("x-forwarded-proto: http"));
    assert!(echoed.contains("x-forwarded-host: 127.0.0.1:"));
    assert!(r.body.ends_with(&body), "the body did not arrive whole");
}

#[test]
fn no_replica_left_gives_503() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("only={}", echo.addr)], &[]);
    lb.send("DELETE", "/rm", Some(r#"{"n": 1}"#));
    let r = lb.get("/home");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "failure");
}

#[test]
fn metrics_count_forwarded_requests_by_replica_and_class() {
    let echo = TestBackend::start(Duration::ZERO);
    let lb = balancer(&[format!("echo={}", echo.addr)], &[]);
    for _ in 0..5 {
        assert_eq!(lb.get("/anything").status, 200);
    }
    let m = lb.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        m.body
            .contains(r#"lb_requests_total{class="2xx",replica="echo"} 5"#),
        "{}",
        m.body
    );
    assert!(m.body.contains("lb_request_duration_seconds_count 5"));
    assert!(m.body.contains(r#"lb_replicas{state="healthy"} 1"#));
    assert!(m.body.contains("lb_in_flight_requests 0"));
    assert!(m.body.contains("lb_ring_changes_total"));
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_cleanly() {
    let slow = TestBackend::start(Duration::from_millis(1500));
    let mut lb = balancer(&[format!("slow={}", slow.addr)], &[]);
    let base = lb.base.clone();
    let client =
        std::thread::spawn(move || e2e::request("GET", &format!("{base}/slow"), &[], None));
    poll(
        "the slow request to reach the backend",
        Duration::from_secs(10),
        || (slow.requests.load(Ordering::SeqCst) == 1).then_some(()),
    );
    let status = lb
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20))
        .expect("the balancer exited");
    assert!(status.success(), "{status:?}");
    let reply = client
        .join()
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow done"));
}

#[test]
fn sigterm_stops_a_balancer_whose_look_aside_port_was_taken_too() {
    // Without `--grpc-listen`, a balancer whose default gRPC port is taken runs
    // without look-aside; it must still stop on SIGTERM. Holding the port here makes
    // sure it is taken (if someone else holds it already, so much the better).
    let _taken = std::net::TcpListener::bind("0.0.0.0:50050");
    let backend = TestBackend::start(Duration::from_millis(10));
    let mut lb = balancer(&[format!("b={}", backend.addr)], &[]);
    let status = lb
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20))
        .expect("the balancer exited");
    assert!(status.success(), "{status:?}");
}
