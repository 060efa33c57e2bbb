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
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
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
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
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
