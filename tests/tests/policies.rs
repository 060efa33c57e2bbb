//! Balancing policies through the real balancer over real replica processes:
//! `--policy`, `GET`/`PUT /policy`, how each load-aware policy routes, switching
//! under load, and what `/status` and `/metrics` show of it.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::{bin, poll, process_balancer, replicas, Load, Reply, Service};
use serde_json::{json, Value};

/// Every policy, in the order `/policy` lists them.
const POLICIES: [&str; 15] = [
    "quadratic",
    "mixed",
    "maglev",
    "rendezvous",
    "pick-first",
    "round-robin",
    "weighted-round-robin",
    "random",
    "least-connections",
    "least-load",
    "p2c-ewma",
    "response-time",
    "health-score",
    "failure-weighted-round-robin",
    "resource-fit",
];

/// The key-affine ones, which `/status` also shows as `hash`.
const HASH_POLICIES: [&str; 4] = ["quadratic", "mixed", "maglev", "rendezvous"];

/// How many requests each replica served.
type Counts = BTreeMap<String, usize>;

fn count(counts: &Counts, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

fn put_policy(lb: &Service, body: &str) -> Reply {
    lb.send("PUT", "/policy", Some(body))
}

/// `GET /policy`'s message.
fn policy_view(lb: &Service) -> Value {
    let r = lb.get("/policy");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "successful", "{}", r.body);
    r.json()["message"].clone()
}

/// Switches to `name` by `PUT /policy`, checking the answer names it.
fn switch(lb: &Service, name: &str) {
    let r = put_policy(lb, &json!({ "policy": name }).to_string());
    assert_eq!(r.status, 200, "PUT policy {name}: {}", r.body);
    assert_eq!(r.json()["status"], "successful", "{}", r.body);
    assert_eq!(r.json()["message"]["policy"], name, "{}", r.body);
}

/// Relays a `/control` body to replica `name`.
fn control(lb: &Service, name: &str, body: Value) {
    let r = lb.send(
        "POST",
        &format!("/replicas/{name}/control"),
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 200, "control {name} {body}: {}", r.body);
}

/// Replica `name` in `/status`.
fn status_of(lb: &Service, name: &str) -> Value {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == name)
        .unwrap_or_else(|| panic!("{name} is not in /status"))
}

/// Who served a successful `GET path`.
fn served(lb: &Service, path: &str, headers: &[(&str, &str)]) -> String {
    let r = lb
        .try_send("GET", path, headers, None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.header("x-served-by")
        .unwrap_or_else(|| panic!("GET {path} has no X-Served-By: {r:?}"))
        .to_string()
}

/// Who served each of `n` sequential requests, counted.
fn sequential(lb: &Service, n: usize, headers: &[(&str, &str)]) -> Counts {
    let mut counts = Counts::new();
    for _ in 0..n {
        *counts.entry(served(lb, "/home", headers)).or_default() += 1;
    }
    counts
}

/// Who served each of `n` requests sent by `clients` threads at once, counted.
fn concurrent(lb: &Service, n: usize, clients: usize) -> Counts {
    let next = AtomicUsize::new(0);
    let counts = Mutex::new(Counts::new());
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let who = served(lb, "/home", &[]);
                    *counts.lock().unwrap().entry(who).or_default() += 1;
                }
            });
        }
    });
    counts.into_inner().unwrap()
}

/// Asserts that `counts` has `want` requests for each replica, give or take `slack`.
fn assert_shares(what: &str, counts: &Counts, want: &[(&str, usize)], slack: usize) {
    for (name, n) in want {
        let got = count(counts, name);
        assert!(
            got.abs_diff(*n) <= slack,
            "{what}: {name} served {got}, expected {n} ± {slack}; all: {counts:?}"
        );
    }
}

#[test]
fn round_robin_by_flag_gives_each_replica_a_third_of_sequential_requests() {
    let lb = process_balancer(&["--policy", "round-robin"]);
    assert_eq!(policy_view(&lb)["policy"], "round-robin");
    let counts = sequential(&lb, 300, &[]);
    assert_shares(
        "round-robin by flag",
        &counts,
        &[("Server1", 100), ("Server2", 100), ("Server3", 100)],
        1,
    );
}

#[test]
fn an_unknown_policy_flag_stops_the_balancer_naming_the_choices() {
    let server = bin("server");
    let mut child = Command::new(bin("load_balancer"))
        .args([
            "--runtime",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            "fastest",
        ])
        .arg("--server-bin")
        .arg(server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the balancer starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("its status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the balancer ran with --policy fastest");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("its stderr");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("unknown policy 'fastest'") && stderr.contains("p2c-ewma"),
        "{stderr}"
    );
}

#[test]
fn every_policy_put_by_name_is_shown_by_policy_and_status_and_serves_requests() {
    let lb = process_balancer(&[]);
    let view = policy_view(&lb);
    assert_eq!(view["policy"], "quadratic");
    assert_eq!(view["policies"], json!(POLICIES), "{view}");
    for name in POLICIES {
        switch(&lb, name);
        assert_eq!(policy_view(&lb)["policy"], name);
        let status = lb.get("/status").json()["message"].clone();
        assert_eq!(status["policy"], name, "{status}");
        let hash = if HASH_POLICIES.contains(&name) {
            json!(name)
        } else {
            Value::Null
        };
        assert_eq!(status["hash"], hash, "{name}: {status}");
        let counts = sequential(&lb, 30, &[]);
        assert_eq!(counts.values().sum::<usize>(), 30, "{name}: {counts:?}");
    }
}

#[test]
fn round_robin_put_over_quadratic_takes_turns_in_id_order() {
    let lb = process_balancer(&[]);
    assert_eq!(policy_view(&lb)["policy"], "quadratic");
    switch(&lb, "round-robin");
    // Turns in id order: any three requests in a row go to three replicas.
    let three: Vec<_> = (0..3).map(|_| served(&lb, "/home", &[])).collect();
    let mut sorted = three.clone();
    sorted.sort();
    assert_eq!(sorted, ["Server1", "Server2", "Server3"], "{three:?}");
    let counts = sequential(&lb, 300, &[]);
    assert_shares(
        "round-robin after PUT",
        &counts,
        &[("Server1", 100), ("Server2", 100), ("Server3", 100)],
        1,
    );
}

#[test]
fn pick_first_sends_everything_to_the_first_enabled_replica() {
    let lb = process_balancer(&[]);
    switch(&lb, "pick-first");
    let counts = sequential(&lb, 30, &[]);
    assert_eq!(count(&counts, "Server1"), 30, "{counts:?}");

    let r = lb.send("POST", "/replicas/Server1/disable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status_of(&lb, "Server1")["enabled"], false);
    let counts = sequential(&lb, 30, &[]);
    assert_eq!(
        count(&counts, "Server2"),
        30,
        "Server1 disabled: {counts:?}"
    );
    // A policy put while it is disabled leaves it out too.
    switch(&lb, "round-robin");
    let counts = sequential(&lb, 30, &[]);
    assert_shares(
        "round-robin, Server1 disabled",
        &counts,
        &[("Server1", 0), ("Server2", 15), ("Server3", 15)],
        1,
    );
    switch(&lb, "quadratic");
    let counts = sequential(&lb, 30, &[]);
    assert_eq!(
        count(&counts, "Server1"),
        0,
        "quadratic, Server1 disabled: {counts:?}"
    );
    switch(&lb, "pick-first");
    let counts = sequential(&lb, 30, &[]);
    assert_eq!(
        count(&counts, "Server2"),
        30,
        "pick-first again: {counts:?}"
    );

    let r = lb.send("POST", "/replicas/Server1/enable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status_of(&lb, "Server1")["enabled"], true);
    let counts = sequential(&lb, 30, &[]);
    assert_eq!(count(&counts, "Server1"), 30, "Server1 enabled: {counts:?}");
}

#[test]
fn weighted_round_robin_gives_a_replica_as_many_turns_as_its_declared_weight() {
    let lb = process_balancer(&[]);
    control(&lb, "Server1", json!({"weight": 3}));
    // The weight reaches the balancer with the next heartbeat.
    poll(
        "Server1's weight 3 in /status",
        Duration::from_secs(10),
        || (status_of(&lb, "Server1")["weight"] == 3).then_some(()),
    );
    assert_eq!(status_of(&lb, "Server2")["weight"], 1);
    switch(&lb, "weighted-round-robin");
    let counts = sequential(&lb, 500, &[]);
    assert_shares(
        "weights 3:1:1",
        &counts,
        &[("Server1", 300), ("Server2", 100), ("Server3", 100)],
        3,
    );
}

#[test]
fn random_gives_every_replica_a_share_of_its_requests() {
    let lb = process_balancer(&[]);
    switch(&lb, "random");
    let counts = sequential(&lb, 300, &[]);
    // 100 each on average; 50 is six standard deviations below.
    for name in ["Server1", "Server2", "Server3"] {
        assert!(count(&counts, name) >= 50, "{name}: {counts:?}");
    }
}

#[test]
fn resource_fit_sends_a_cpu_heavy_demand_to_the_cpu_rich_replica() {
    let lb = process_balancer(&[]);
    control(&lb, "Server1", json!({"capacity": "cpu=1"}));
    control(&lb, "Server2", json!({"capacity": "cpu=1"}));
    control(&lb, "Server3", json!({"capacity": "cpu=8"}));
    poll(
        "the declared capacities in /status",
        Duration::from_secs(10),
        || {
            let caps: Vec<_> = replicas(&lb)
                .iter()
                .map(|r| r["capacity"].as_str().unwrap_or_default().to_string())
                .collect();
            (caps == ["cpu=1", "cpu=1", "cpu=8"]).then_some(())
        },
    );
    switch(&lb, "resource-fit");
    let counts = sequential(&lb, 30, &[("X-Demand", "cpu=4")]);
    assert_eq!(count(&counts, "Server3"), 30, "{counts:?}");
    // A demand every replica fits is not kept on one.
    let counts = concurrent(&lb, 60, 6);
    assert!(counts.len() > 1, "no demand: {counts:?}");
}

/// Routes 200 requests from 12 clients at once under `policy` while Server2 takes
/// a second to answer, and returns Server2's share with the counts.
fn slow_replica_share(policy: &str) -> (f64, Counts) {
    let lb = process_balancer(&[]);
    switch(&lb, policy);
    // Some history first, as a running balancer has: every replica answered fast.
    // (Without it, p2c-ewma prices a replica that has not answered yet at 0 however
    // many requests it holds, so a slow one wins every pair it is drawn in until
    // its first answer: one request per client.)
    sequential(&lb, 30, &[]);
    control(&lb, "Server2", json!({"delay_ms": 1000}));
    let counts = concurrent(&lb, 200, 12);
    assert_eq!(counts.values().sum::<usize>(), 200, "{counts:?}");
    (count(&counts, "Server2") as f64 / 200.0, counts)
}

#[test]
fn least_connections_keeps_requests_off_a_replica_that_answers_slowly() {
    let (share, counts) = slow_replica_share("least-connections");
    eprintln!("least-connections: Server2 (1 s delay) served {share:.3}: {counts:?}");
    assert!(
        share < 0.10,
        "least-connections sent {:.1} % of 200 requests to the slow Server2: {counts:?}",
        share * 100.0
    );
}

#[test]
fn p2c_ewma_keeps_requests_off_a_replica_that_answers_slowly() {
    let (share, counts) = slow_replica_share("p2c-ewma");
    eprintln!("p2c-ewma: Server2 (1 s delay) served {share:.3}: {counts:?}");
    assert!(
        share < 0.10,
        "p2c-ewma sent {:.1} % of 200 requests to the slow Server2: {counts:?}",
        share * 100.0
    );
}

#[test]
fn switching_policy_under_steady_load_fails_no_request() {
    let lb = process_balancer(&[]);
    let load = Load::start(&lb.base, 4, Duration::from_secs(90));
    load.wait_for(30, Duration::from_secs(20));
    for body in [
        json!({"policy": "round-robin"}),
        json!({"policy": "p2c-ewma"}),
        json!({"policy": "maglev"}),
        json!({"policy": "least-connections"}),
        json!({"policy": "mixed", "balance_factor": 1.25}),
        json!({"policy": "weighted-round-robin"}),
        json!({"policy": "rendezvous", "balance_factor": null}),
        json!({"policy": "health-score"}),
        json!({"policy": "pick-first"}),
        json!({"policy": "random", "slow_start": "5s"}),
        json!({"policy": "quadratic", "slow_start": null}),
    ] {
        let r = put_policy(&lb, &body.to_string());
        assert_eq!(r.status, 200, "PUT {body}: {}", r.body);
        load.wait_for(30, Duration::from_secs(20));
    }
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(policy_view(&lb)["policy"], "quadratic");
}

#[test]
fn each_bad_policy_body_is_a_400_with_its_reason_and_changes_nothing() {
    let lb = process_balancer(&["--replicas", "1"]);
    switch(&lb, "p2c-ewma");
    let before = policy_view(&lb);
    let other_policies = json!({ "policies": POLICIES[1..] }).to_string();
    for (body, reason) in [
        (r#"{"policy": "fastest"}"#, "unknown policy 'fastest'"),
        (r#"{"polcy": "random"}"#, "Unknown field 'polcy'"),
        (r#"{"policy": 3}"#, "'policy' must be a string"),
        (r#"{"policy": null}"#, "'policy' must be a string"),
        (r#"{"balance_factor": 0.5}"#, ">= 1"),
        (r#"{"balance_factor": "2"}"#, "a number or null"),
        (r#"{"hedge": "soon"}"#, "hedge 'soon'"),
        (r#"{"hedge_budget": 101}"#, "0 to 100"),
        (r#"{"hedge_budget": -1}"#, "0 to 100"),
        (r#"{"slow_start": "forever"}"#, "slow_start"),
        (r#"{"hash_key": "nope"}"#, "hash key"),
        (&other_policies, "cannot be changed"),
        // One bad field refuses the good ones with it.
        (r#"{"policy": "random", "hedge": "soon"}"#, "hedge 'soon'"),
        ("not json", "Invalid JSON body"),
        ("", "Invalid JSON body"),
        (r#"{"policy": "random""#, "Invalid JSON body"),
        (r#"[{"policy": "random"}]"#, "JSON object"),
        (r#""random""#, "JSON object"),
        ("null", "JSON object"),
    ] {
        let r = put_policy(&lb, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let v = r.json();
        assert_eq!(v["status"], "failure", "{body}: {}", r.body);
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(2),
            "{body}: {}",
            r.body
        );
        let message = v["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("<Error> ") && message.contains(reason),
            "{body}: expected '<Error> …{reason}…', got {}",
            r.body
        );
        assert_eq!(policy_view(&lb), before, "after {body}");
    }
    // What GET shows, put back, is accepted and changes nothing.
    let r = put_policy(&lb, &before.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"], before);
    assert_eq!(policy_view(&lb), before);
}

#[test]
fn with_an_admin_token_a_policy_put_without_it_is_a_401_and_changes_nothing() {
    let lb = process_balancer(&[
        "--replicas",
        "1",
        "--admin-token",
        "s3cret",
        "--hash",
        "maglev",
        "--slow-start",
        "30s",
    ]);
    let before = policy_view(&lb);
    assert_eq!(
        (&before["policy"], &before["slow_start"]),
        (&json!("maglev"), &json!("30s")),
        "{before}"
    );
    let body = r#"{"policy": "round-robin"}"#;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "s3cret")],
    ] {
        let r = lb
            .try_send("PUT", "/policy", &headers, Some(body.as_bytes()))
            .expect("an answer");
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(r.json()["status"], "failure", "{}", r.body);
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("<Error> ")),
            "{}",
            r.body
        );
        assert_eq!(policy_view(&lb), before, "after {headers:?}");
    }
    let r = lb
        .try_send(
            "PUT",
            "/policy",
            &[("Authorization", "Bearer s3cret")],
            Some(body.as_bytes()),
        )
        .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(policy_view(&lb)["policy"], "round-robin");
}

/// The value of the `/metrics` series `series` (name and labels), if shown.
fn metric(lb: &Service, series: &str) -> Option<f64> {
    let text = lb.get("/metrics").body;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_and_status_show_the_policy_and_each_replicas_figures() {
    let lb = process_balancer(&[]);
    assert_eq!(metric(&lb, r#"lb_policy{policy="quadratic"}"#), Some(1.0));
    switch(&lb, "round-robin");
    let status = lb.get("/status").json()["message"].clone();
    assert_eq!(
        (&status["policy"], &status["hash"], &status["hash_key"]),
        (&json!("round-robin"), &Value::Null, &json!("random")),
        "{status}"
    );
    let text = lb.get("/metrics").body;
    assert!(
        text.lines()
            .any(|l| l == r#"lb_policy{policy="round-robin"} 1"#),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l == r#"lb_policy{policy="quadratic"} 1"#),
        "{text}"
    );
    for name in ["Server1", "Server2", "Server3"] {
        for series in [
            "lb_replica_in_flight",
            "lb_replica_latency_seconds",
            "lb_replica_score",
            "lb_replica_reported_load",
            "lb_replica_enabled",
            "lb_replica_weight",
            "lb_replica_error_rate",
        ] {
            let series = format!(r#"{series}{{replica="{name}"}}"#);
            assert!(metric(&lb, &series).is_some(), "no {series} in\n{text}");
        }
        let r = status_of(&lb, name);
        for field in [
            "enabled",
            "in_flight",
            "latency_ms",
            "error_rate",
            "score",
            "reported_load",
            "available",
            "weight",
            "capacity",
        ] {
            assert!(r.get(field).is_some(), "{name} has no {field}: {r}");
        }
        assert_eq!(r["enabled"], true, "{r}");
    }

    // A request held by Server1 is in flight there, in both.
    switch(&lb, "pick-first");
    let held = std::thread::spawn({
        let url = format!("{}/home?delay_ms=1500", lb.base);
        move || e2e::request("GET", &url, &[], None)
    });
    poll(
        "Server1 with one request in flight",
        Duration::from_secs(5),
        || {
            (status_of(&lb, "Server1")["in_flight"] == 1
                && metric(&lb, r#"lb_replica_in_flight{replica="Server1"}"#) == Some(1.0))
            .then_some(())
        },
    );
    let r = held.join().unwrap().expect("an answer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status_of(&lb, "Server1")["in_flight"], 0);

    let r = lb.send("POST", "/replicas/Server2/disable", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status_of(&lb, "Server2")["enabled"], false);
    assert_eq!(status_of(&lb, "Server1")["enabled"], true);
    assert_eq!(
        metric(&lb, r#"lb_replica_enabled{replica="Server2"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&lb, r#"lb_replica_enabled{replica="Server3"}"#),
        Some(1.0)
    );
}
