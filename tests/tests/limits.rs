//! Every limit of the data plane, crossed: header size, slow clients, idle clients,
//! the connection cap, the admin body size.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::{bin, poll, wait_healthy, Service};

fn balancer(extra: &[&str]) -> (Service, Service) {
    let backend = Service::start(
        bin("server"),
        &["--listen", "127.0.0.1:0"],
        &[("SERVER_ID", "only")],
    );
    let addr = format!("only={}", backend.base.trim_start_matches("http://"));
    let mut args = vec![
        "--runtime",
        "static",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--backend",
        &addr,
    ];
    args.extend_from_slice(extra);
    let lb = Service::start(bin("load_balancer"), &args, &[("RUST_LOG", "warn")]);
    wait_healthy(&lb, 1, Duration::from_secs(20));
    (lb, backend)
}

fn connect(lb: &Service) -> TcpStream {
    let s = TcpStream::connect(lb.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response with a `content-length` body; `None` on timeout or close.
fn read_response(s: &mut TcpStream) -> Option<String> {
    read_response_skipping(s, false)
}

/// Reads one response, or with `interim` the final one after any `1xx` heads.
fn read_response_skipping(s: &mut TcpStream, interim: bool) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut text = String::from_utf8_lossy(&got).into_owned();
        while interim && text.starts_with("HTTP/1.1 1") {
            let Some((_, rest)) = text.split_once("\r\n\r\n") else {
                break;
            };
            text = rest.to_string();
        }
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the peer closed the connection (read returns 0) within the timeout.
/// Whether the balancer closed the connection (within the read timeout). A close
/// while the client is still sending can arrive as a reset rather than an end of
/// stream: the balancer had unread bytes when it closed. Both are a close.
fn closed(s: &mut TcpStream) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => matches!(e.kind(), ConnectionReset | ConnectionAborted),
        Ok(_) => false,
    }
}

#[test]
fn a_head_over_the_limit_gets_431_and_a_closed_connection() {
    let (lb, _b) = balancer(&["--max-header-bytes", "2048"]);
    let mut s = connect(&lb);
    let big = format!(
        "GET /home HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(4096)
    );
    s.write_all(big.as_bytes()).unwrap();
    let reply = read_response(&mut s).expect("an answer");
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert!(reply.contains(r#""status":"failure""#));
    assert!(closed(&mut s));
    // Just under the limit is fine.
    let mut s = connect(&lb);
    let ok = format!(
        "GET /home HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1500)
    );
    s.write_all(ok.as_bytes()).unwrap();
    assert!(read_response(&mut s)
        .expect("an answer")
        .starts_with("HTTP/1.1 200"));
}

#[test]
fn a_client_that_trickles_its_head_is_cut_off() {
    let (lb, _b) = balancer(&["--header-timeout", "300ms"]);
    let mut s = connect(&lb);
    let started = Instant::now();
    s.write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n").unwrap();
    assert!(closed(&mut s), "the connection stayed open");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
}

#[test]
fn a_client_that_keeps_trickling_bytes_is_cut_off_all_the_same() {
    // The header timeout runs from a head's first byte: a byte now and then must not
    // keep extending it (slowloris).
    let (lb, _b) = balancer(&["--header-timeout", "500ms"]);
    let mut s = connect(&lb);
    let mut writer = s.try_clone().unwrap();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = writer.write_all(b"GET /home HTTP/1.1\r\nX-Slow: ");
        while started.elapsed() < Duration::from_secs(6) {
            if writer.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(closed(&mut s), "the connection stayed open");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
}

#[test]
fn a_busy_connection_outlives_its_idle_timeout_and_closes_once_idle() {
    let (lb, _b) = balancer(&["--idle-timeout", "1500ms"]);
    let mut s = connect(&lb);
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        s.write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let reply = read_response(&mut s).expect("an answer on the same connection");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        served += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(served >= 5, "only {served} requests");
    let idle_since = Instant::now();
    assert!(closed(&mut s), "the idle connection stayed open");
    let took = idle_since.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "closed early, after {took:?}"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (lb, _b) = balancer(&["--idle-timeout", "300ms"]);
    let mut s = connect(&lb);
    s.write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s)
        .expect("an answer")
        .starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed(&mut s), "the idle connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn past_the_connection_cap_a_client_waits_until_another_leaves() {
    let (lb, _b) = balancer(&["--max-connections", "1", "--idle-timeout", "2s"]);
    // The harness's own pooled connection may hold the one slot for a moment.
    let mut first = poll("the only slot", Duration::from_secs(10), || {
        let mut s = connect(&lb);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
        read_response(&mut s).map(|_| s)
    });
    let mut second = connect(&lb);
    second
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    second
        .write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut second).is_none(), "served past the cap");
    first
        .write_all(b"GET /home HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut first).is_some());
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reply = read_response(&mut second).expect("served once the slot freed");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn an_admin_body_over_64_kib_is_refused_with_413() {
    let (lb, _b) = balancer(&[]);
    let body = format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let r = lb.send("POST", "/add", Some(&body));
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["status"], "failure");
}

#[test]
fn with_an_admin_address_add_and_rm_move_there_and_reads_stay_public() {
    let port = e2e::free_port();
    let admin = format!("127.0.0.1:{port}");
    let (lb, _b) = balancer(&["--admin-listen", &admin]);
    let r = lb.send("POST", "/add", Some(r#"{"n": 1}"#));
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.json()["message"],
        "<Error> /add is served on the admin address only"
    );
    assert_eq!(lb.send("DELETE", "/rm", Some(r#"{"n": 1}"#)).status, 403);
    assert_eq!(lb.get("/rep").status, 200);
    assert_eq!(lb.get("/status").status, 200);
    // The admin address serves the reads too, and the mutations (refused here
    // only because the static runtime cannot start replicas).
    let r = e2e::request("GET", &format!("http://{admin}/rep"), &[], None).unwrap();
    assert_eq!(r.status, 200);
    let r = e2e::request(
        "DELETE",
        &format!("http://{admin}/rm"),
        &[],
        Some(br#"{"n": 1}"#),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["N"], 0);
}

#[test]
fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_timeout() {
    // Else a silent connection holds its slot for the idle timeout: 10,100 of them
    // filled the 10,000 slots for a minute.
    let (lb, _b) = balancer(&["--header-timeout", "500ms", "--idle-timeout", "60s"]);
    let mut s = connect(&lb);
    let started = Instant::now();
    assert!(closed(&mut s), "the silent connection stayed open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

/// A connection that got an answer to `GET /home` and is kept open.
fn served(lb: &Service) -> Option<TcpStream> {
    let mut s = connect(lb);
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    read_response(&mut s)
        .filter(|r| r.starts_with("HTTP/1.1 200"))
        .map(|_| s)
}

#[test]
fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let (lb, _b) = balancer(&["--max-connections-per-ip", "2", "--idle-timeout", "3s"]);
    // The harness's own pooled connection may hold a slot until it idles out.
    let (first, _second) = poll("two connections served", Duration::from_secs(15), || {
        Some((served(&lb)?, served(&lb)?))
    });
    let mut third = connect(&lb);
    let _ = third.write_all(b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = read_response(&mut third).unwrap_or_default();
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 503"),
        "{reply}"
    );
    assert!(!reply.contains("Hello from Server"), "{reply}");
    if !reply.is_empty() {
        assert!(
            reply.contains("Too many connections from your address"),
            "{reply}"
        );
    }
    drop(first);
    poll(
        "a slot freed by a closed connection",
        Duration::from_secs(10),
        || served(&lb),
    );
}

/// The loopback TCP ports process `pid` listens on.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: listening), inode
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let port = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            (*state == "0A" && inodes.iter().any(|i| i == inode)).then_some(port)
        })
        .collect()
}

#[test]
fn the_internal_admin_listener_serves_only_the_balancers_own_relay() {
    let grpc = e2e::free_port();
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let (lb, _b) = balancer(&["--grpc-listen", &grpc_listen]);
    let public: u16 = lb.base.rsplit(':').next().unwrap().parse().unwrap();
    let internal: Vec<u16> = listening_ports(lb.pid())
        .into_iter()
        .filter(|p| *p != public && *p != grpc)
        .collect();
    assert_eq!(internal.len(), 1, "{internal:?}");
    let direct = format!("http://127.0.0.1:{}", internal[0]);
    let r = e2e::request("DELETE", &format!("{direct}/rm"), &[], Some(br#"{"n": 1}"#)).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["status"], "failure");
    // A guessed credential does no better.
    let r = e2e::request(
        "GET",
        &format!("{direct}/rep"),
        &[("x-lb-relay", "0")],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    // Nothing changed, and the relay through the public address still works.
    assert_eq!(lb.get("/rep").json()["message"]["N"], 1);
}

#[test]
fn an_early_answer_to_an_expect_100_continue_upload_comes_back_at_once() {
    // The admin API refuses a body over 64 KiB before reading it; the client, which
    // waits for 100 Continue before sending, must get that 413 and not wait.
    let (lb, _b) = balancer(&[]);
    let mut s = connect(&lb);
    s.write_all(
        b"POST /add HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    // actix-web may send 100 Continue before its handler looks at the length.
    let reply = read_response_skipping(&mut s, true).expect("an answer before curl's 1 s fallback");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains(r#""status":"failure""#), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
}

#[test]
fn a_replicas_100_continue_reaches_the_client_before_it_sends_its_body() {
    let (lb, _b) = balancer(&[]);
    let mut s = connect(&lb);
    s.write_all(
        b"POST /echo/upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let interim = read_response(&mut s).expect("100 Continue before curl's 1 s fallback");
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(b"hello").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reply = read_response(&mut s).expect("the final answer");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""body_len":5"#), "{reply}");
}
