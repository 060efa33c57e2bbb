//! `/replicas/<name>/disable`, `/enable` and `/control` through the real balancer
//! over real replica processes.

use std::time::{Duration, Instant};

use e2e::{process_balancer, rep_names, replicas, Service};
use serde_json::Value;

fn state_of(lb: &Service, name: &str) -> Value {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == name)
        .map(|r| r["state"].clone())
        .expect("listed")
}

/// Who served each of `n` requests with random keys.
fn served_by(lb: &Service, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = lb.get("/home");
            assert_eq!(r.status, 200, "{}", r.body);
            r.header("x-served-by").unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_disabled_replica_keeps_running_and_listed_but_gets_no_new_requests() {
    let lb = process_balancer(&[]);
    let r = lb.send("POST", "/replicas/Server1/disable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["state"], "disabled");
    assert_eq!(state_of(&lb, "Server1"), "disabled");
    assert_eq!(rep_names(&lb), ["Server1", "Server2", "Server3"]);
    // Server1 owns most of the quadratic ring's request slots with three replicas.
    let who = served_by(&lb, 60);
    assert!(!who.iter().any(|w| w == "Server1"), "{who:?}");
    let r = lb.send("POST", "/replicas/Server1/enable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(state_of(&lb, "Server1"), "healthy");
    assert!(served_by(&lb, 60).iter().any(|w| w == "Server1"));
}

#[test]
fn an_unknown_replica_is_a_404_with_the_specified_message() {
    let lb = process_balancer(&["--replicas", "1"]);
    for (method, path) in [
        ("POST", "/replicas/Nope/disable"),
        ("POST", "/replicas/Nope/enable"),
        ("GET", "/replicas/Nope/control"),
    ] {
        let r = lb.send(method, path, None);
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert_eq!(
            r.json(),
            serde_json::json!({"message": "<Error> Unknown replica 'Nope'", "status": "failure"})
        );
    }
}

#[test]
fn control_is_relayed_to_the_named_replica() {
    let lb = process_balancer(&[]);
    let r = lb.send(
        "POST",
        "/replicas/Server2/control",
        Some(r#"{"delay_ms": 400}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["delay_ms"], 400);
    assert_eq!(
        lb.get("/replicas/Server2/control").json()["message"]["delay_ms"],
        400
    );
    assert_eq!(
        lb.get("/replicas/Server1/control").json()["message"]["delay_ms"],
        0
    );
    // The replica's own refusal comes back as it gave it.
    let bad = lb.send(
        "POST",
        "/replicas/Server2/control",
        Some(r#"{"fail_percent": 200}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    // Requests Server2 serves now take the delay; the others do not.
    let mut slow = None;
    for _ in 0..200 {
        let started = Instant::now();
        let r = lb.get("/home");
        if r.header("x-served-by") == Some("Server2") {
            slow = Some(started.elapsed());
            break;
        }
    }
    assert!(slow.expect("Server2 served one") >= Duration::from_millis(400));
    let r = lb.get("/replicas/Server2/control?set_delay_ms=0");
    assert_eq!(r.json()["message"]["delay_ms"], 0);
}
