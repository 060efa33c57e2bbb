//! The `server` binary on its own: compute, delays, injected faults and the load its
//! heartbeat reports, which the balancer's policies and fault drills rely on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{bin, poll, Service};

fn server(extra: &[&str]) -> Service {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Service::start(bin("server"), &args, &[("SERVER_ID", "solo")])
}

#[test]
fn compute_gives_fibonacci_by_the_naive_recursion_and_refuses_a_bad_n() {
    let s = server(&[]);
    for (n, fib) in [(0, "0"), (1, "1"), (10, "55"), (30, "832040")] {
        let r = s.get(&format!("/compute?n={n}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["message"]["n"], n);
        assert_eq!(r.json()["message"]["result"], fib);
        assert_eq!(r.json()["status"], "successful");
    }
    for bad in ["/compute?n=41", "/compute?n=x", "/compute?n=-1", "/compute"] {
        let r = s.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["status"], "failure");
    }
}

#[test]
fn a_delay_in_the_query_holds_the_answer_that_long() {
    let s = server(&[]);
    let started = Instant::now();
    assert_eq!(s.get("/home?delay_ms=300").status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.get("/home?delay_ms=60001").status, 400);
    assert_eq!(s.get("/home?delay_ms=soon").status, 400);
}

#[test]
fn injected_faults_apply_to_every_request_but_heartbeat_and_control() {
    let s = server(&[]);
    let r = s.send("POST", "/control", Some(r#"{"fail_percent": 100}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["fail_percent"], 100);
    let failed = s.get("/home");
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["status"], "failure");
    assert_eq!(s.get("/heartbeat").status, 200);
    assert_eq!(s.get("/control").json()["message"]["fail_percent"], 100);
    // A bad body changes nothing.
    for bad in [
        r#"{"fail_percent": 101}"#,
        r#"{"delay_ms": -1}"#,
        r#"{"other": 1}"#,
        "nope",
    ] {
        assert_eq!(s.send("POST", "/control", Some(bad)).status, 400, "{bad}");
    }
    assert_eq!(s.get("/control").json()["message"]["fail_percent"], 100);
    s.send(
        "POST",
        "/control",
        Some(r#"{"fail_percent": 0, "delay_ms": 250}"#),
    );
    let started = Instant::now();
    assert_eq!(s.get("/home").status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The short form, and the heartbeat is never delayed.
    let r = s.get("/control?set_delay_ms=0");
    assert_eq!(
        r.json()["message"],
        serde_json::json!({"delay_ms": 0, "fail_percent": 0})
    );
    s.get("/control?set_delay_ms=5000");
    let started = Instant::now();
    assert_eq!(s.get("/heartbeat").status, 200);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn past_max_concurrent_it_answers_503_and_its_heartbeat_says_unavailable() {
    let s = Arc::new(server(&["--max-concurrent", "1", "--workers", "2"]));
    let idle = s.get("/heartbeat");
    assert_eq!(idle.header("x-load"), Some("0"));
    assert_eq!(idle.header("x-available"), Some("true"));
    let busy = s.clone();
    let slow = std::thread::spawn(move || busy.get("/home?delay_ms=1500").status);
    poll("the slow request in flight", Duration::from_secs(5), || {
        let h = s.get("/heartbeat");
        (h.header("x-load") == Some("1") && h.header("x-available") == Some("false")).then_some(())
    });
    let refused = s.get("/home");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["status"], "failure");
    assert_eq!(slow.join().unwrap(), 200);
    let after = s.get("/heartbeat");
    assert_eq!(after.header("x-load"), Some("0"));
    assert_eq!(after.header("x-available"), Some("true"));
}
