//! The real runs: each scheme on a deployment of its own, driven by the load
//! generator (A-1, A-2, and so A-4), and the failure-recovery run (A-3).

use std::time::{Duration, Instant};

use crate::deploy::{Deployment, Spec};
use crate::loadgen::{self, KeyMode, Options};
use crate::results::{EndpointCheck, Kill, Recovery, Run};
use crate::sim::Config;

/// Load settings shared by every run.
#[derive(Debug, Clone)]
pub struct Load {
    pub requests: u64,
    pub concurrency: usize,
}

fn options(
    url: &str,
    requests: Option<u64>,
    duration: Option<Duration>,
    concurrency: usize,
) -> Options {
    Options {
        url: url.to_string(),
        path: "/home".into(),
        n_range: None,
        requests,
        duration,
        concurrency,
        // The balancer's own `--hash-key random` draws the ids, as in the design.
        key: KeyMode::None,
        seed: 1,
        timeout: Duration::from_secs(10),
        progress: true,
    }
}

/// A-1 at N = 3, then A-2 at N = 2..=6, on one deployment grown with `/add` (ids and
/// names are the smallest free ones, so each N is the ring a fresh boot would build).
pub fn sweep(
    rt: &tokio::runtime::Runtime,
    base: &Spec,
    config: &Config,
    load: &Load,
) -> Result<Vec<Run>, String> {
    let spec = Spec {
        scheme: config.hash.to_string(),
        balance_factor: config.balance_factor,
        replicas: 2,
        tag: format!("{}-{}", base.tag, config.label().replace('+', "-")),
        ..base.clone()
    };
    let dep = Deployment::start(&spec)?;
    let mut runs = Vec::new();
    for n in 2..=6usize {
        if n > 2 {
            let body = format!(r#"{{"n": 1, "hostnames": ["Server{n}"]}}"#);
            let (status, reply) = dep.call("POST", "/add", Some(&body))?;
            if status != 200 {
                return Err(format!("/add answered {status}: {reply}"));
            }
            dep.wait_healthy(n, Duration::from_secs(60))?;
        }
        let names: &[&str] = if n == 3 { &["A-1", "A-2"] } else { &["A-2"] };
        for name in names {
            eprintln!("  {name} {} N={n}", config.label());
            let opts = options(&dep.url, Some(load.requests), None, load.concurrency);
            let r = rt.block_on(loadgen::run(&opts))?;
            runs.push(Run {
                name: name.to_string(),
                scheme: config.label(),
                balance_factor: config.balance_factor,
                n,
                requests: r.requests,
                counts: r.counts,
                errors: r.errors,
                throughput: r.throughput,
                latency_ms: r.latency_ms,
            });
        }
    }
    Ok(runs)
}

/// The calls of A-3's endpoint check: (method, path, body, expected status).
const ENDPOINTS: &[(&str, &str, &str, u16)] = &[
    ("GET", "/rep", "", 200),
    ("GET", "/status", "", 200),
    ("GET", "/home", "", 200),
    ("GET", "/heartbeat", "", 200),
    ("GET", "/nope", "", 400),
    ("POST", "/add", r#"{"n": 1, "hostnames": ["S4"]}"#, 200),
    (
        "POST",
        "/add",
        r#"{"n": 1, "hostnames": ["S5", "S6"]}"#,
        400,
    ),
    ("POST", "/add", r#"{"n": 1, "hostnames": ["S4"]}"#, 409),
    ("DELETE", "/rm", r#"{"n": 1, "hostnames": ["S4"]}"#, 200),
    (
        "DELETE",
        "/rm",
        r#"{"n": 1, "hostnames": ["S5", "S6"]}"#,
        400,
    ),
    ("DELETE", "/rm", r#"{"n": 1, "hostnames": ["nobody"]}"#, 400),
    ("GET", "/rep", "", 200),
];

/// A-3: every endpoint once, then steady load for `seconds` while replicas are killed
/// at the given offsets; per-second outcomes and time from each kill to a healthy
/// replacement.
pub fn recovery(
    rt: &tokio::runtime::Runtime,
    base: &Spec,
    concurrency: usize,
    seconds: u64,
    kills: &[(f64, &str)],
) -> Result<Recovery, String> {
    let spec = Spec {
        replicas: 3,
        tag: format!("{}-a3", base.tag),
        ..base.clone()
    };
    let dep = Deployment::start(&spec)?;
    let mut endpoints = Vec::new();
    for (method, path, body, expected) in ENDPOINTS {
        let (status, _) = dep.call(method, path, (!body.is_empty()).then_some(*body))?;
        endpoints.push(EndpointCheck {
            method: method.to_string(),
            path: path.to_string(),
            body: body.to_string(),
            expected: *expected,
            status,
        });
    }
    dep.wait_healthy(3, Duration::from_secs(60))?;
    eprintln!("  A-3: {seconds} s of load, kills at {kills:?}");

    let opts = options(
        &dep.url,
        None,
        Some(Duration::from_secs(seconds)),
        concurrency,
    );
    let load = rt.spawn(async move { loadgen::run(&opts).await });
    let start = Instant::now();
    let mut replicas: Vec<usize> = Vec::new();
    let mut results = Vec::new();
    let mut pending: Vec<(String, String, Instant, f64)> = Vec::new();
    let mut next_kill = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        let now = start.elapsed().as_secs_f64();
        if next_kill < kills.len() && now >= kills[next_kill].0 {
            let host = kills[next_kill].1;
            let old = dep.kill_replica(host)?;
            pending.push((host.to_string(), old, Instant::now(), now));
            next_kill += 1;
        }
        if let Ok(list) = dep.replicas() {
            let healthy = list.iter().filter(|r| r.1 == "healthy").count();
            let s = now as usize;
            if replicas.len() <= s {
                replicas.resize(s + 1, healthy);
            }
            replicas[s] = replicas[s].min(healthy);
            pending.retain(|(host, old, killed, at)| {
                let back = list
                    .iter()
                    .any(|r| &r.0 == host && r.1 == "healthy" && &r.2 != old);
                if back {
                    results.push(Kill {
                        hostname: host.clone(),
                        at_s: *at,
                        to_healthy_s: Some(killed.elapsed().as_secs_f64()),
                    });
                }
                !back
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    for (host, _, _, at) in pending {
        results.push(Kill {
            hostname: host,
            at_s: at,
            to_healthy_s: None,
        });
    }
    let report = rt.block_on(load).map_err(|e| format!("load task: {e}"))??;
    Ok(Recovery {
        scheme: spec.scheme.clone(),
        n: 3,
        concurrency,
        endpoints,
        kills: results,
        timeline: report.timeline,
        replicas,
        requests: report.requests,
        errors: report.errors,
        statuses: report.statuses,
    })
}
