//! A-5, the policies under stress: one deployment of five replicas, every
//! load-aware policy and the design's hash switched in turn with `PUT /policy`, with
//! one replica made slow (a), then failing a share of its requests (b), through the
//! balancer's `/replicas/<name>/control`; then a CPU-heavy workload with no fault (c).
//!
//! One deployment rather than one per policy: a policy switch is what an operator
//! would do, and it keeps A-5's start-up cost to one boot. Each run starts from a
//! fresh faulty replica (see [`renew`]), sets its fault, sends an uncounted warm-up so
//! the policy's estimates (latency, failure rate) learn the fault, then measures, so
//! no run inherits another's view of that replica.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::deploy::{Deployment, Spec};
use crate::loadgen::{self, KeyMode, Options, Report};
use crate::results::{PolicyRun, Stress};

/// Every load-aware policy, then the design's hash for comparison.
pub const POLICIES: [&str; 12] = [
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
    "quadratic",
];

/// The hedges tried on round-robin, each with its budget (the most requests hedged,
/// in percent): after the running p95 and after a fixed delay within the default 5 %
/// budget; then within a budget that covers the slow replica's 20 % share, since a
/// 5 % budget can cover at most a quarter of the requests it slows down.
pub const HEDGES: [(&str, f64); 4] = [("p95", 5.0), ("100ms", 5.0), ("50ms", 25.0), ("p75", 25.0)];

/// The balancer's default budget, sent with unhedged runs.
pub const HEDGE_BUDGET: f64 = 5.0;

const REPLICAS: usize = 5;

/// Every replica, by the names a fresh boot gives them.
const ALL: [&str; REPLICAS] = ["Server1", "Server2", "Server3", "Server4", "Server5"];

/// Not `Server1`: pick-first sends it everything and the quadratic hash gives it
/// most keys, so a fault there would measure those two policies' blind spot for
/// minutes rather than the others' reaction to it.
const FAULTY: &str = "Server3";

const DELAY_MS: u64 = 500;
const FAIL_PERCENT: u64 = 20;
const CONCURRENCY: usize = 50;
const WARMUP: u64 = 500;
const COMPUTE_CONCURRENCY: usize = 16;
const COMPUTE_WARMUP: u64 = 100;
const COMPUTE_N: RangeInclusive<u64> = 20..=32;

/// How much load A-5 sends: the command line can shrink it to check the code path.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Counted requests per run of (a) and (b).
    pub requests: u64,
    /// Counted requests per run of (c).
    pub compute_requests: u64,
}

/// One scenario's load: what every run of it sends.
struct Workload {
    path: &'static str,
    n_range: Option<RangeInclusive<u64>>,
    requests: u64,
    concurrency: usize,
    warmup: u64,
    /// The `/control` body of its fault (`None`: no fault).
    fault: Option<String>,
    /// The replicas replaced by fresh ones before each run (see [`renew`]): the
    /// faulty one when there is a fault; every one when there is none, since one
    /// fresh replica among measured ones would be favoured by the policies that try
    /// the unmeasured first (`response-time` herds onto it).
    renew: &'static [&'static str],
}

/// Runs A-5 on a deployment of its own.
pub fn run(rt: &tokio::runtime::Runtime, base: &Spec, plan: &Plan) -> Result<Stress, String> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let spec = Spec {
        scheme: "quadratic".into(),
        balance_factor: None,
        replicas: REPLICAS,
        tag: format!("{}-a5", base.tag),
        ..base.clone()
    };
    let dep = Deployment::start(&spec)?;
    let hedge_counters = counter(&metrics(&dep)?, "lb_hedges_total").is_some();
    let plain: Vec<(&str, Option<(&str, f64)>)> = POLICIES.iter().map(|p| (*p, None)).collect();
    let hedged: Vec<(&str, Option<(&str, f64)>)> = plain
        .iter()
        .copied()
        .chain(HEDGES.iter().map(|h| ("round-robin", Some(*h))))
        .collect();
    let home = |fault: String| Workload {
        path: "/home",
        n_range: None,
        requests: plan.requests,
        concurrency: CONCURRENCY,
        warmup: WARMUP,
        fault: Some(fault),
        renew: &[FAULTY],
    };
    eprintln!(
        "A-5 (a): {FAULTY} {DELAY_MS} ms slow, {} requests per policy",
        plan.requests
    );
    let slow_fault = format!(r#"{{"delay_ms": {DELAY_MS}, "fail_percent": 0}}"#);
    let slow = runs(rt, &dep, &home(slow_fault), &hedged)?;
    eprintln!(
        "A-5 (b): {FAULTY} failing {FAIL_PERCENT} %, {} requests per policy",
        plan.requests
    );
    let fail_fault = format!(r#"{{"delay_ms": 0, "fail_percent": {FAIL_PERCENT}}}"#);
    let failing = runs(rt, &dep, &home(fail_fault), &hedged)?;
    eprintln!(
        "A-5 (c): /compute?n={}..={}, {} requests per policy",
        COMPUTE_N.start(),
        COMPUTE_N.end(),
        plan.compute_requests
    );
    let compute_load = Workload {
        path: "/compute?n={n}",
        n_range: Some(COMPUTE_N),
        requests: plan.compute_requests,
        concurrency: COMPUTE_CONCURRENCY,
        warmup: COMPUTE_WARMUP,
        fault: None,
        renew: &ALL,
    };
    let compute = runs(rt, &dep, &compute_load, &plain)?;
    Ok(Stress {
        runtime: spec.runtime.name().into(),
        replicas: REPLICAS,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        started_unix,
        wall_s: started.elapsed().as_secs_f64(),
        faulty: FAULTY.into(),
        delay_ms: DELAY_MS,
        fail_percent: FAIL_PERCENT,
        requests: plan.requests,
        concurrency: CONCURRENCY,
        warmup: WARMUP,
        compute_requests: plan.compute_requests,
        compute_concurrency: COMPUTE_CONCURRENCY,
        compute_warmup: COMPUTE_WARMUP,
        compute_n: (*COMPUTE_N.start(), *COMPUTE_N.end()),
        hedge_counters,
        slow,
        failing,
        compute,
    })
}

/// One counted run per `(policy, hedge)`, in order.
fn runs(
    rt: &tokio::runtime::Runtime,
    dep: &Deployment,
    load: &Workload,
    which: &[(&str, Option<(&str, f64)>)],
) -> Result<Vec<PolicyRun>, String> {
    which
        .iter()
        .map(|(policy, hedge)| {
            renew(dep, load.renew)?;
            policy_run(rt, dep, load, policy, *hedge)
        })
        .collect()
}

/// Replaces `names` by fresh replicas: `/rm`, then `/add` under the same names, which
/// take the same (smallest free) ids and so the same places on the ring. The
/// balancer keeps its estimates per incarnation, and a latency estimate needs about
/// a minute to forget a fault (it decays with τ = 10 s, whatever the traffic), so
/// resetting the fault alone would hand the next run a replica that still looks
/// slow or failing. A new process also starts with no fault. Not a kill: replicas
/// that die within 10 s of starting are respawned after a growing backoff.
fn renew(dep: &Deployment, names: &[&str]) -> Result<(), String> {
    let body = serde_json::json!({"n": names.len(), "hostnames": names}).to_string();
    expect_ok(dep.call("DELETE", "/rm", Some(&body)), "DELETE /rm")?;
    expect_ok(dep.call("POST", "/add", Some(&body)), "POST /add")?;
    dep.wait_healthy(REPLICAS, Duration::from_secs(60))
}

/// Switches to `policy` (hedging as given), sets the fault, warms up, and measures.
fn policy_run(
    rt: &tokio::runtime::Runtime,
    dep: &Deployment,
    load: &Workload,
    policy: &str,
    hedge: Option<(&str, f64)>,
) -> Result<PolicyRun, String> {
    let body = serde_json::json!({
        "policy": policy,
        "hedge": hedge.map(|h| h.0),
        "hedge_budget": hedge.map_or(HEDGE_BUDGET, |h| h.1),
    });
    expect_ok(
        dep.call("PUT", "/policy", Some(&body.to_string())),
        "PUT /policy",
    )?;
    if let Some(fault) = &load.fault {
        control(dep, fault)?;
    }
    rt.block_on(loadgen::run(&options(dep, load, load.warmup)))?;
    let before = metrics(dep)?;
    let r = rt.block_on(loadgen::run(&options(dep, load, load.requests)))?;
    let after = metrics(dep)?;
    let delta = |name: &str| {
        let was = counter(&before, name).unwrap_or(0);
        counter(&after, name).map(|now| now.saturating_sub(was))
    };
    let run = policy_result(
        policy,
        hedge,
        r,
        delta("lb_hedges_total"),
        delta("lb_hedge_wins_total"),
    );
    eprintln!(
        "  {:<34} p50 {:>7.1}  p99 {:>7.1}  p99.9 {:>7.1} ms  {:>5.0} req/s  {} errors  {FAULTY} {:.1} %",
        run.label(),
        run.latency_ms.p50,
        run.latency_ms.p99,
        run.latency_ms.p999,
        run.throughput,
        run.errors,
        run.share(FAULTY)
    );
    Ok(run)
}

fn policy_result(
    policy: &str,
    hedge: Option<(&str, f64)>,
    r: Report,
    hedges: Option<u64>,
    hedge_wins: Option<u64>,
) -> PolicyRun {
    PolicyRun {
        policy: policy.into(),
        hedge: hedge.map(|h| h.0.to_string()),
        hedge_budget: hedge.map(|h| h.1),
        requests: r.requests,
        errors: r.errors,
        throughput: r.throughput,
        latency_ms: r.latency_ms,
        counts: r.counts,
        failed_by: r.failed_by,
        hedges,
        hedge_wins,
    }
}

fn options(dep: &Deployment, load: &Workload, requests: u64) -> Options {
    Options {
        url: dep.url.clone(),
        path: load.path.into(),
        n_range: load.n_range.clone(),
        requests: Some(requests),
        duration: None,
        concurrency: load.concurrency,
        key: KeyMode::None,
        seed: 1,
        timeout: Duration::from_secs(10),
        progress: true,
    }
}

/// Sets the faulty replica's faults through the balancer.
fn control(dep: &Deployment, body: &str) -> Result<(), String> {
    let path = format!("/replicas/{FAULTY}/control");
    expect_ok(dep.call("POST", &path, Some(body)), &format!("POST {path}"))
}

fn expect_ok(answer: Result<(u16, String), String>, what: &str) -> Result<(), String> {
    match answer? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{what} answered {status}: {body}")),
    }
}

fn metrics(dep: &Deployment) -> Result<String, String> {
    let (status, text) = dep.call("GET", "/metrics", None)?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    Ok(text)
}

/// The sum of a counter's samples in a Prometheus text page, whatever their labels;
/// `None` when the page has none.
pub fn counter(page: &str, name: &str) -> Option<u64> {
    let samples: Vec<f64> = page
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse().ok()
        })
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_labels_and_absent_ones_are_none() {
        let page = "# HELP lb_hedges_total Hedges sent\n\
                    # TYPE lb_hedges_total counter\n\
                    lb_hedges_total 7\n\
                    lb_hedge_wins_total{replica=\"Server1\"} 2\n\
                    lb_hedge_wins_total{replica=\"Server2\"} 3\n\
                    lb_hedges_total_other 100\n";
        assert_eq!(counter(page, "lb_hedges_total"), Some(7));
        assert_eq!(counter(page, "lb_hedge_wins_total"), Some(5));
        assert_eq!(counter(page, "lb_retries_total"), None);
    }
}
