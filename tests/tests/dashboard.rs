//! The live dashboard (`GET /dashboard`) in a real headless Chromium, against the real
//! balancer with real replica processes: what a user sees and what their clicks do,
//! checked against the API. Element ids and attributes are the page's contract with
//! these tests.
//!
//! `DASHBOARD_SCREENSHOTS=<dir>` makes the load-test test save `dashboard-loadtest.png`
//! (during the test) and `dashboard.png` (after it) in that directory.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::browser::Browser;
use e2e::{poll, process_balancer, rep_names, replaced, replicas, Service};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const NAMES: [&str; 3] = ["Server1", "Server2", "Server3"];

/// Time for the page to show something the balancer already knows.
const SHOWN: Duration = Duration::from_secs(5);

/// The selector of a replica's row in the replicas table.
fn row(name: &str) -> String {
    format!("#replicas tbody tr[data-replica=\"{name}\"]")
}

/// A browser on the balancer's dashboard, once the event stream is open and the page
/// lists the replicas the balancer has.
fn open_dashboard(lb: &Service) -> Browser {
    let browser = Browser::start();
    browser.goto(&format!("{}/dashboard", lb.base));
    browser.wait("#conn to say live", SHOWN, |b| {
        (b.text("#conn")?.trim() == "live").then_some(())
    });
    let names: BTreeSet<String> = rep_names(lb).into_iter().collect();
    browser.wait("the replicas table to list /rep", SHOWN, |b| {
        let rows: BTreeSet<String> = b
            .attrs("#replicas tbody tr[data-replica]", "data-replica")
            .into_iter()
            .collect();
        (rows == names).then_some(())
    });
    browser
}

/// The `message` of a `GET` on the balancer.
fn message(lb: &Service, path: &str) -> Value {
    let r = lb.get(path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()["message"].clone()
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

#[test]
fn the_page_loads_nothing_from_another_host() {
    let lb = process_balancer(&[]);
    let r = lb.get("/dashboard");
    assert_eq!(r.status, 200, "{}", r.body);
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let csp = r
        .header("content-security-policy")
        .expect("a Content-Security-Policy header");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    // Every source the policy allows is the page's own origin, inline code or data:.
    for directive in csp.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        for source in directive.split_whitespace().skip(1) {
            assert!(
                ["'self'", "'unsafe-inline'", "'none'", "data:"].contains(&source),
                "{source} in {csp}"
            );
        }
    }
    // Nothing in the page itself names another host to load from (CSP aside).
    let html: String = r
        .body
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == '\'' { '"' } else { c })
        .collect();
    for pattern in [
        "src=\"http",
        "src=\"//",
        "url(http",
        "url(\"http",
        "url(//",
        "@import",
    ] {
        assert!(!html.contains(pattern), "the page contains {pattern}");
    }
    assert!(
        r.body.len() < 150 * 1024,
        "the page is {} bytes",
        r.body.len()
    );

    let browser = open_dashboard(&lb);
    let origin = browser.script("return location.origin;", &[]);
    assert_eq!(origin, json!(lb.base));
    // A lookup, so that the page has fetched something (the event stream, never
    // finished, is not listed).
    let before = browser.text("#key-result").unwrap_or_default();
    browser.type_into("#key-input", "123456");
    browser.click("#key-lookup");
    browser.wait("#key-result", SHOWN, |b| {
        (b.text("#key-result")? != before).then_some(())
    });
    let resources = browser.script(
        "return performance.getEntriesByType('resource').map(e => e.name);",
        &[],
    );
    let resources = resources.as_array().expect("a list");
    assert!(!resources.is_empty(), "no resource entries at all");
    for name in resources {
        let name = name.as_str().expect("a URL");
        assert!(
            name.starts_with(&format!("{}/", lb.base)),
            "the page loaded {name}"
        );
    }
    assert_eq!(
        browser.script("return window.__cspViolations;", &[]),
        json!(0),
        "window.__cspViolations"
    );
    println!(
        "dashboard page: {} bytes, {} resources loaded, all from {}",
        r.body.len(),
        resources.len(),
        lb.base
    );
}

#[test]
fn it_lists_the_three_replicas_as_healthy_and_the_stream_as_live() {
    let lb = process_balancer(&[]);
    let browser = open_dashboard(&lb);
    assert_eq!(
        browser.attrs("#replicas tbody tr[data-replica]", "data-replica"),
        NAMES
    );
    for name in NAMES {
        browser.wait(&format!("{name} to be shown healthy"), SHOWN, |b| {
            let state = b.attr(&row(name), "data-state")?;
            let cell = b.text(&format!("{} td.state", row(name)))?;
            (state == "healthy" && cell.contains("healthy")).then_some(())
        });
    }
    assert_eq!(browser.text("#conn").unwrap().trim(), "live");
    // Every replica has arcs on the ring.
    for name in NAMES {
        assert!(
            browser.count(&format!("#ring [data-vnode-of=\"{name}\"]")) > 0,
            "{name} is not on #ring"
        );
    }
}

#[test]
fn a_replica_added_through_the_api_appears_in_the_table_and_on_the_ring_within_2_s() {
    let lb = process_balancer(&[]);
    let browser = open_dashboard(&lb);
    // The page itself notes when both the row and a virtual node of S9 exist, so the
    // figure does not depend on how often the test looks.
    browser.script(
        "const name = arguments[0];
         window.__appeared = null;
         const check = () => {
           if (window.__appeared === null
               && document.querySelector(`#replicas tbody tr[data-replica=\"${name}\"]`)
               && document.querySelector(`#ring [data-vnode-of=\"${name}\"]`)) {
             window.__appeared = Date.now();
           }
         };
         new MutationObserver(check).observe(document.documentElement,
           {subtree: true, childList: true, attributes: true});
         check();",
        &[json!("S9")],
    );
    let sent = Instant::now();
    let r = lb.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["S9"]}"#));
    let answered = epoch_ms();
    assert_eq!(r.status, 200, "{}", r.body);
    let add_took = sent.elapsed();
    let appeared = browser.wait("S9 in the table and on the ring", SHOWN, |b| {
        b.script("return window.__appeared;", &[]).as_f64()
    });
    let latency = appeared - answered;
    if latency >= 0.0 {
        println!(
            "dashboard update latency: {latency:.0} ms (from the /add answer to S9 in the \
             table and on the ring; /add itself took {} ms)",
            add_took.as_millis()
        );
    } else {
        println!(
            "dashboard update latency: 0 ms (S9 was shown {:.0} ms before /add answered, \
             which took {} ms)",
            -latency,
            add_took.as_millis()
        );
    }
    assert!(
        latency <= 2000.0,
        "S9 appeared {latency:.0} ms after /add answered"
    );
    browser.wait("S9 to be shown healthy", SHOWN, |b| {
        (b.attr(&row("S9"), "data-state")? == "healthy").then_some(())
    });
}

#[test]
fn a_killed_replica_turns_down_then_healthy_again() {
    let lb = process_balancer(&[]);
    let browser = open_dashboard(&lb);
    browser.wait("Server2 to be shown healthy", SHOWN, |b| {
        (b.attr(&row("Server2"), "data-state")? == "healthy").then_some(())
    });
    // Every state the row shows, in order, however briefly.
    browser.script(
        "const sel = arguments[0];
         window.__states = [];
         const record = () => {
           const r = document.querySelector(sel);
           const s = r && r.getAttribute('data-state');
           if (s && window.__states[window.__states.length - 1] !== s) window.__states.push(s);
         };
         new MutationObserver(record).observe(document.documentElement,
           {subtree: true, childList: true, attributes: true});
         record();",
        &[json!(row("Server2"))],
    );
    let victim = replicas(&lb)
        .into_iter()
        .find(|r| r["hostname"] == "Server2")
        .expect("Server2 in /status");
    let handle = victim["handle"].as_str().expect("a pid").to_string();
    let pid: i32 = handle.parse().expect("a pid");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9 Server2");

    let states = |b: &Browser| -> Vec<String> {
        serde_json::from_value(b.script("return window.__states;", &[])).unwrap_or_default()
    };
    browser.wait("Server2's row to turn down", Duration::from_secs(10), |b| {
        states(b).iter().any(|s| s == "down").then_some(())
    });
    poll("Server2 to be replaced", Duration::from_secs(30), || {
        replaced(&lb, "Server2", &handle)
    });
    let states = browser.wait("Server2 to be shown healthy again", SHOWN, |b| {
        let states = states(b);
        (states.last()? == "healthy" && states.len() > 1).then_some(states)
    });
    assert!(browser
        .text(&format!("{} td.state", row("Server2")))
        .unwrap_or_default()
        .contains("healthy"));
    println!("Server2's row went through {states:?}");
}

#[test]
fn the_policy_switcher_changes_the_policy() {
    let lb = process_balancer(&[]);
    let browser = open_dashboard(&lb);
    assert_ne!(message(&lb, "/policy")["policy"], "round-robin");
    browser.select("#policy-select", "round-robin");
    browser.click("#policy-apply");
    poll("GET /policy to say round-robin", SHOWN, || {
        (message(&lb, "/policy")["policy"] == "round-robin").then_some(())
    });
    browser.wait("#policy-current to say round-robin", SHOWN, |b| {
        (b.text("#policy-current")?.trim() == "round-robin").then_some(())
    });
}

#[test]
fn the_key_box_names_the_replica_the_balancer_would_pick() {
    let lb = process_balancer(&[]);
    let browser = open_dashboard(&lb);
    for key in ["user-42", "123456"] {
        let expected = message(&lb, &format!("/ring?key={key}"));
        let first = expected["candidates"][0]
            .as_str()
            .expect("a first candidate")
            .to_string();
        let before = browser.text("#key-result").unwrap_or_default();
        browser.type_into("#key-input", key);
        browser.click("#key-lookup");
        let shown = browser.wait(&format!("#key-result for {key}"), SHOWN, |b| {
            let text = b.text("#key-result")?;
            (text != before && NAMES.iter().any(|n| text.contains(n))).then_some(text)
        });
        // The first replica name in the text is the first candidate.
        let named_first = NAMES
            .iter()
            .filter_map(|n| shown.find(n).map(|at| (at, *n)))
            .min()
            .map(|(_, n)| n);
        assert_eq!(
            named_first,
            Some(first.as_str()),
            "#key-result for {key}: {shown:?}; GET /ring?key={key}: {expected}"
        );
    }
}

#[test]
fn the_load_test_runs_from_the_page_and_shows_every_replica() {
    let lb = process_balancer(&[]);
    let browser = open_dashboard(&lb);
    let shots = std::env::var_os("DASHBOARD_SCREENSHOTS").map(std::path::PathBuf::from);
    // For the screenshots the test runs a few seconds, so that there is something to see.
    let (requests, duration) = if shots.is_some() {
        ("1000000", "6")
    } else {
        ("2000", "10")
    };
    browser.type_into("#loadtest-requests", requests);
    browser.type_into("#loadtest-concurrency", "8");
    browser.type_into("#loadtest-duration", duration);
    browser.click("#loadtest-start");
    let started = Instant::now();

    if let Some(dir) = &shots {
        browser.wait(
            "the load test to be half way",
            Duration::from_secs(20),
            |b| {
                let progress = b.script(
                    "const p = document.querySelector('#loadtest-progress'); \
                 return p ? p.value / (p.max || 1) : null;",
                    &[],
                );
                (progress.as_f64()? >= 0.5).then_some(())
            },
        );
        std::fs::create_dir_all(dir).expect("the screenshot directory");
        let path = dir.join("dashboard-loadtest.png");
        std::fs::write(&path, browser.screenshot_full_page()).expect("writing a screenshot");
        println!("wrote {}", path.display());
    }

    browser.wait(
        "#loadtest-state to say done",
        Duration::from_secs(30),
        |b| {
            let state = b.text("#loadtest-state")?;
            assert!(
                !["failed", "stopped"].contains(&state.trim()),
                "the load test ended {state}"
            );
            (state.trim() == "done").then_some(())
        },
    );
    println!("load test from the page: {:?}", started.elapsed());

    let test = message(&lb, "/loadtest");
    assert_eq!(test["state"], "done", "{test}");
    assert_eq!(test["mode"], "load", "{test}");
    assert_eq!(test["requests"], requests.parse::<u64>().unwrap(), "{test}");
    assert_eq!(test["concurrency"], 8, "{test}");
    assert_eq!(test["errors"], 0, "{test}");
    if shots.is_none() {
        assert_eq!(test["completed"], 2000, "{test}");
    }
    let by_replica = test["by_replica"].as_object().expect("by_replica");
    let expected: BTreeSet<String> = by_replica.keys().cloned().collect();
    assert_eq!(
        expected,
        NAMES.iter().map(|n| n.to_string()).collect(),
        "{test}"
    );
    let rows = browser.wait("a result row per replica", SHOWN, |b| {
        let rows: BTreeSet<String> = b
            .attrs("#loadtest-result tr[data-replica]", "data-replica")
            .into_iter()
            .collect();
        (rows == expected).then_some(rows)
    });
    // Each row shows the count GET /loadtest gives.
    for name in &rows {
        let cells = browser.script(
            "return Array.from(document.querySelectorAll(arguments[0]), c => c.innerText);",
            &[json!(format!(
                "#loadtest-result tr[data-replica=\"{name}\"] td"
            ))],
        );
        let count = by_replica[name].as_u64().expect("a count").to_string();
        let shown: Vec<String> = cells
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .map(|c| {
                c.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                    .collect()
            })
            .collect();
        assert!(
            shown.contains(&count),
            "{name}'s row shows {shown:?}, GET /loadtest says {count}"
        );
    }

    if let Some(dir) = &shots {
        let path = dir.join("dashboard.png");
        std::fs::write(&path, browser.screenshot_full_page()).expect("writing a screenshot");
        println!("wrote {}", path.display());
    }
}

#[test]
fn with_an_admin_token_the_page_acts_only_once_given_the_token() {
    let lb = process_balancer(&["--admin-token", "secret"]);
    let browser = open_dashboard(&lb);
    browser.wait("#auth to say view only", SHOWN, |b| {
        (b.text("#auth")?.trim() == "view only").then_some(())
    });
    // What the balancer answers an /add without the token.
    let refused = lb.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["S9"]}"#));
    assert_eq!(refused.status, 401, "{}", refused.body);
    let refusal = refused.json()["message"]
        .as_str()
        .expect("a message")
        .to_string();

    browser.type_into("#add-name", "S9");
    browser.click("#add-button");
    let notice = browser.wait("an error notice", SHOWN, |b| {
        (b.attr("#notice", "data-kind")? == "error").then(|| b.text("#notice"))?
    });
    assert!(
        notice.contains(&refusal),
        "#notice says {notice:?}, the balancer {refusal:?}"
    );
    assert_eq!(rep_names(&lb), NAMES);

    browser.type_into("#token-input", "secret");
    browser.click("#token-save");
    browser.wait("#auth to say admin", SHOWN, |b| {
        (b.text("#auth")?.trim() == "admin").then_some(())
    });
    browser.type_into("#add-name", "S9");
    browser.click("#add-button");
    poll("S9 in /rep", Duration::from_secs(30), || {
        rep_names(&lb).contains(&"S9".to_string()).then_some(())
    });
    browser.wait("an ok notice and S9's row", SHOWN, |b| {
        (b.attr("#notice", "data-kind")? == "ok" && b.count(&row("S9")) == 1).then_some(())
    });
}
