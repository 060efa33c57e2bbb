//! The `server` binary on its own: compute, delays, injected faults, and the load,
//! weight and capacities its heartbeat reports, which the balancer's policies and fault
//! drills rely on.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{bin, poll, Service};
use serde_json::json;

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
        json!({"delay_ms": 0, "fail_percent": 0, "weight": 1, "capacity": ""})
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

#[test]
fn the_heartbeat_declares_the_weight_and_capacities_given_at_startup() {
    let plain = server(&[]);
    let h = plain.get("/heartbeat");
    assert_eq!(h.header("x-weight"), Some("1"));
    assert_eq!(h.header("x-capacity"), None);
    let flagged = server(&["--weight", "5", "--capacity", "storage=2.0,cpu=4"]);
    let h = flagged.get("/heartbeat");
    assert_eq!(h.header("x-weight"), Some("5"));
    assert_eq!(h.header("x-capacity"), Some("cpu=4,storage=2"));
    let from_env = Service::start(
        bin("server"),
        &["--listen", "127.0.0.1:0"],
        &[("WEIGHT", "100"), ("CAPACITY", "gpu=0.5")],
    );
    let h = from_env.get("/heartbeat");
    assert_eq!(h.header("x-weight"), Some("100"));
    assert_eq!(h.header("x-capacity"), Some("gpu=0.5"));
}

#[test]
fn a_bad_weight_or_capacity_is_refused_at_startup() {
    for (flag, bad, says) in [
        ("--weight", "0", "from 1 to 100"),
        ("--weight", "101", "from 1 to 100"),
        ("--capacity", "cpu=0", "above 0"),
        ("--capacity", "cpu=4,cpu=2", "twice"),
        ("--capacity", "CPU=4", "resource name"),
        ("--capacity", "cpu", "name=number"),
    ] {
        let out = Command::new(bin("server"))
            .args(["--listen", "127.0.0.1:0", flag, bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {bad}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(says), "{stderr}");
    }
}

#[test]
fn control_changes_the_weight_and_capacities_the_heartbeat_declares() {
    let s = server(&["--weight", "3", "--capacity", "cpu=2"]);
    assert_eq!(
        s.get("/control").json()["message"],
        json!({"delay_ms": 0, "fail_percent": 0, "weight": 3, "capacity": "cpu=2"})
    );
    let r = s.send(
        "POST",
        "/control",
        Some(r#"{"weight": 40, "capacity": "storage=8,cpu=0.5"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let shown =
        json!({"delay_ms": 0, "fail_percent": 0, "weight": 40, "capacity": "cpu=0.5,storage=8"});
    assert_eq!(r.json()["message"], shown);
    assert_eq!(s.get("/control").json()["message"], shown);
    let h = s.get("/heartbeat");
    assert_eq!(h.header("x-weight"), Some("40"));
    assert_eq!(h.header("x-capacity"), Some("cpu=0.5,storage=8"));
    // One field alone changes only itself; an empty capacity declares none.
    s.send("POST", "/control", Some(r#"{"weight": 7}"#));
    assert_eq!(
        s.get("/heartbeat").header("x-capacity"),
        Some("cpu=0.5,storage=8")
    );
    let r = s.send("POST", "/control", Some(r#"{"capacity": ""}"#));
    assert_eq!(r.json()["message"]["weight"], 7);
    assert_eq!(r.json()["message"]["capacity"], "");
    let h = s.get("/heartbeat");
    assert_eq!(h.header("x-weight"), Some("7"));
    assert_eq!(h.header("x-capacity"), None);
}

#[test]
fn a_bad_control_body_is_refused_and_changes_nothing() {
    let s = server(&["--weight", "3", "--capacity", "cpu=2"]);
    let before = s.get("/control").json()["message"].clone();
    for bad in [
        r#"{"weight": 0}"#,
        r#"{"weight": 101}"#,
        r#"{"weight": 1.5}"#,
        r#"{"capacity": "cpu=-1"}"#,
        r#"{"capacity": "cpu=4,cpu=4"}"#,
        r#"{"capacity": "cpu=4,"}"#,
        r#"{"capacity": 4}"#,
        r#"{"delay_ms": 100, "weight": 50, "capacity": "Cpu=1"}"#,
        r#"{"delay_ms": 100, "capacity": "mem=1", "weight": 0}"#,
        r#"{"weight": 50, "capacity": "mem=1", "fail_percent": 101}"#,
        r#"{"weight": 50, "cpu": 4}"#,
    ] {
        let r = s.send("POST", "/control", Some(bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["status"], "failure", "{bad}");
        assert!(r.json()["message"].is_string(), "{bad}");
    }
    assert_eq!(s.get("/control").json()["message"], before);
    let h = s.get("/heartbeat");
    assert_eq!(h.header("x-weight"), Some("3"));
    assert_eq!(h.header("x-capacity"), Some("cpu=2"));
}
