//! Hedged requests through the real balancer over real replica processes, one of
//! them made slow with `/control`.

use std::time::Duration;

use e2e::{poll, process_balancer, replicas, Service};

/// A counter of `/metrics`.
fn counter(lb: &Service, name: &str) -> f64 {
    let text = lb.get("/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn slow_down(lb: &Service, name: &str, delay_ms: u64) {
    let body = format!(r#"{{"delay_ms": {delay_ms}}}"#);
    let r = lb.send("POST", &format!("/replicas/{name}/control"), Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
}

fn in_flight(lb: &Service, name: &str) -> u64 {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == name)
        .and_then(|r| r["in_flight"].as_u64())
        .expect("figures for a healthy replica")
}

#[test]
fn a_slow_replicas_requests_are_hedged_and_answered_by_the_next_one() {
    let lb = process_balancer(&[
        "--replicas",
        "2",
        "--policy",
        "round-robin",
        "--hedge",
        "50ms",
        "--hedge-budget",
        "100",
    ]);
    slow_down(&lb, "Server2", 5000);
    for i in 0..20 {
        let r = lb.get("/home");
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        // Without hedging every other request would wait 5 s on Server2.
        assert_eq!(r.header("x-served-by"), Some("Server1"), "request {i}");
    }
    assert!(counter(&lb, "lb_hedges_total") >= 10.0);
    assert!(counter(&lb, "lb_hedge_wins_total") >= 10.0);
    // The losing exchanges were dropped, not left to finish: long before Server2's
    // 5 s are up, nothing is in flight to it any more.
    poll(
        "Server2's hedged-away requests to be cancelled",
        Duration::from_secs(2),
        || (in_flight(&lb, "Server2") == 0).then_some(()),
    );
}

#[test]
fn a_request_with_a_body_is_never_hedged() {
    let lb = process_balancer(&["--replicas", "2", "--policy", "round-robin"]);
    let r = lb.send(
        "PUT",
        "/policy",
        Some(r#"{"hedge": "20ms", "hedge_budget": 100}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["hedge"], "20ms");
    slow_down(&lb, "Server2", 300);
    let mut by = Vec::new();
    for _ in 0..4 {
        let r = lb.send("POST", "/echo", Some("{\"a\": 1}"));
        assert_eq!(r.status, 200, "{}", r.body);
        by.push(r.header("x-served-by").unwrap().to_string());
    }
    assert_eq!(by.iter().filter(|s| *s == "Server2").count(), 2, "{by:?}");
    assert_eq!(counter(&lb, "lb_hedges_total"), 0.0);
}

#[test]
fn hedges_stay_within_their_budget() {
    let lb = process_balancer(&[
        "--replicas",
        "2",
        "--policy",
        "round-robin",
        "--hedge",
        "20ms",
        "--hedge-budget",
        "10",
    ]);
    slow_down(&lb, "Server2", 200);
    for _ in 0..60 {
        assert_eq!(lb.get("/home").status, 200);
    }
    let hedges = counter(&lb, "lb_hedges_total");
    // 60 eligible requests earn 6 hedges; the balancer's other requests (none
    // here) would earn more.
    assert!((1.0..=6.0).contains(&hedges), "{hedges} hedges");
    assert!(counter(&lb, "lb_hedges_refused_total") >= 20.0);
}
