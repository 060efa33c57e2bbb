//! The shape of `analysis/results.json`: everything the report and charts are drawn from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::loadgen::{self, Latency, Second};
use crate::lookaside;

/// Everything one `make analysis` measured and computed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    /// One entry per real run (A-1 and A-2, for each scheme; A-4 compares them).
    pub experiments: Vec<Run>,
    /// A-3: endpoints, kills and the timeline.
    pub a3: Option<Recovery>,
    /// Ring-only computations, no deployment involved.
    pub simulation: Simulation,
    /// A-5: the policies under stress (absent from results written before it).
    #[serde(default)]
    pub a5: Option<Stress>,
    /// A-6: look-aside against the proxy (absent from results written before it,
    /// and then left out again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a6: Option<LookAside>,
}

/// How and where the numbers were taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub runtime: String,
    pub requests: u64,
    pub concurrency: usize,
    pub cores: usize,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// Wall time of the whole run (deployments, load, simulations, charts).
    pub wall_s: f64,
}

/// One load run against one real deployment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    /// `A-1` or `A-2`.
    pub name: String,
    /// `--hash`, with `+bounded` when `--balance-factor` was on.
    pub scheme: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_factor: Option<f64>,
    pub n: usize,
    pub requests: u64,
    /// 2xx answers per replica (`X-Served-By`).
    pub counts: BTreeMap<String, u64>,
    pub errors: u64,
    pub throughput: f64,
    pub latency_ms: Latency,
}

impl Run {
    /// The mean per replica over `n` replicas (a replica that served nothing counts).
    pub fn mean(&self) -> f64 {
        self.counts.values().sum::<u64>() as f64 / self.n.max(1) as f64
    }

    /// The busiest replica's load over the mean.
    pub fn max_over_mean(&self) -> f64 {
        let max = self.counts.values().copied().max().unwrap_or(0) as f64;
        max / self.mean().max(1e-9)
    }

    /// The least busy replica's load (0 when one served nothing).
    pub fn min(&self) -> u64 {
        if self.counts.len() < self.n {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }

    /// Population standard deviation of the per-replica loads.
    pub fn std_dev(&self) -> f64 {
        let mean = self.mean();
        let mut sq: f64 = self
            .counts
            .values()
            .map(|c| (*c as f64 - mean).powi(2))
            .sum();
        sq += (self.n.saturating_sub(self.counts.len())) as f64 * mean * mean;
        (sq / self.n.max(1) as f64).sqrt()
    }
}

/// A-3: the failure-recovery run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recovery {
    pub scheme: String,
    pub n: usize,
    pub concurrency: usize,
    pub endpoints: Vec<EndpointCheck>,
    pub kills: Vec<Kill>,
    /// Per second: successes and failures (from the load generator).
    pub timeline: Vec<Second>,
    /// Per second: the fewest healthy replicas `/status` showed in that second.
    pub replicas: Vec<usize>,
    pub requests: u64,
    pub errors: u64,
    pub statuses: BTreeMap<String, u64>,
}

/// One endpoint call and its answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointCheck {
    pub method: String,
    pub path: String,
    pub body: String,
    pub expected: u16,
    pub status: u16,
}

/// One replica killed during load, and when a replacement was healthy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Kill {
    pub hostname: String,
    /// Seconds from the start of the load.
    pub at_s: f64,
    /// Seconds from the kill until `/status` showed it healthy with a new handle.
    pub to_healthy_s: Option<f64>,
}

/// Ring-only computations (fixed seeds, or every 6-digit id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Simulation {
    pub balance: Vec<SimBalance>,
    pub movement: Vec<SimMovement>,
}

/// Max/mean of 10,000 random 6-digit ids, median over seeds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimBalance {
    pub scheme: String,
    pub n: usize,
    pub seeds: usize,
    pub median_max_over_mean: f64,
}

/// The fraction of all 900,000 6-digit ids whose replica changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimMovement {
    pub scheme: String,
    /// Replicas before the change (added: N -> N+1; removed: N+1 -> N).
    pub n: usize,
    /// Adding replica N+1 to replicas 1..N.
    pub added: f64,
    /// Removing replica 1 from replicas 1..N+1.
    pub removed: f64,
    /// `1 / (N + 1)`: the share the new (or removed) replica should own.
    pub ideal: f64,
}

/// A-5: the load-aware policies and the design's hash on one deployment, switched
/// with `PUT /policy`: (a) one replica slow, (b) one replica failing a share of its
/// requests, (c) a CPU-heavy workload with no fault.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stress {
    pub runtime: String,
    pub replicas: usize,
    pub cores: usize,
    /// Seconds since the Unix epoch when A-5 started.
    pub started_unix: u64,
    /// Wall time of A-5 alone, deployment included.
    pub wall_s: f64,
    /// The replica given the fault in (a) and (b).
    pub faulty: String,
    /// (a)'s fault: added to each of its answers.
    pub delay_ms: u64,
    /// (b)'s fault: the share of its answers that are `500`.
    pub fail_percent: u64,
    /// Counted requests of each (a) and (b) run, and how many in flight.
    pub requests: u64,
    pub concurrency: usize,
    /// Requests sent before each run with its policy and fault, not counted, so the
    /// policy's estimates settle first.
    pub warmup: u64,
    /// (c): counted requests, in flight, warm-up.
    pub compute_requests: u64,
    pub compute_concurrency: usize,
    pub compute_warmup: u64,
    /// (c) requests `/compute?n=N`, N drawn uniformly from `lo..=hi`.
    pub compute_n: (u64, u64),
    /// Whether `/metrics` had `lb_hedges_total`: without it hedges are not counted.
    pub hedge_counters: bool,
    /// (a): one replica slow.
    pub slow: Vec<PolicyRun>,
    /// (b): one replica failing.
    pub failing: Vec<PolicyRun>,
    /// (c): compute.
    pub compute: Vec<PolicyRun>,
}

/// One policy's counted run in A-5.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyRun {
    /// `--policy`.
    pub policy: String,
    /// `PUT /policy`'s `hedge` when hedging was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<String>,
    /// `PUT /policy`'s `hedge_budget` when hedging was on, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge_budget: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub throughput: f64,
    pub latency_ms: Latency,
    /// 2xx answers per replica (`X-Served-By`).
    pub counts: BTreeMap<String, u64>,
    /// Non-2xx answers per replica (`"?"`: the balancer's own).
    pub failed_by: BTreeMap<String, u64>,
    /// Hedges sent during the run (`None`: `/metrics` has no hedge counters).
    pub hedges: Option<u64>,
    /// Hedges whose answer won.
    pub hedge_wins: Option<u64>,
}

impl PolicyRun {
    /// The policy, with its hedge when on: the label of tables and charts.
    pub fn label(&self) -> String {
        match &self.hedge {
            Some(h) => match self.hedge_budget {
                Some(b) => format!("{} + hedge {h} ({b} %)", self.policy),
                None => format!("{} + hedge {h}", self.policy),
            },
            None => self.policy.clone(),
        }
    }

    /// The share of all answers `replica` gave, failures included, in percent.
    pub fn share(&self, replica: &str) -> f64 {
        let of = |m: &BTreeMap<String, u64>| m.get(replica).copied().unwrap_or(0);
        percent(of(&self.counts) + of(&self.failed_by), self.requests)
    }

    /// The busiest replica's share of all answers, in percent.
    pub fn busiest_share(&self) -> f64 {
        let names = self.counts.keys().chain(self.failed_by.keys());
        names.map(|r| self.share(r)).fold(0.0, f64::max)
    }

    /// Errors in percent of requests.
    pub fn error_percent(&self) -> f64 {
        percent(self.errors, self.requests)
    }

    /// Hedges sent in percent of requests, when counted.
    pub fn hedge_percent(&self) -> Option<f64> {
        self.hedges.map(|h| percent(h, self.requests))
    }
}

/// A-6, the seeds' look-aside experiment at this machine's scale: backends that
/// register themselves over gRPC and turn work away past `max_concurrent`; clients
/// that ask `GetBestServer` and call `Compute` themselves, per strategy; and the same
/// workload through the HTTP proxy with the balancer's policy set to that strategy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LookAside {
    pub runtime: String,
    pub cores: usize,
    /// Seconds since the Unix epoch when A-6 started.
    pub started_unix: u64,
    /// Wall time of A-6 alone, deployment included.
    pub wall_s: f64,
    /// The machine's 1-minute load average when A-6 started (`/proc/loadavg`): work
    /// other than A-6's that shared the cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<f64>,
    /// `server` processes, each `--register-with` the balancer.
    pub backends: usize,
    /// Each backend's `--max-concurrent`.
    pub max_concurrent: u64,
    /// Each backend's `--report-interval`, in milliseconds.
    pub report_interval_ms: u64,
    /// Look-aside client loops, and HTTP requests in flight.
    pub clients: usize,
    /// Length of each run, in seconds.
    pub duration_s: f64,
    /// fib(N), N drawn uniformly from `lo..=hi` per request.
    pub task: (u64, u64),
    /// One run per strategy, each through both paths.
    pub strategies: Vec<StrategyRuns>,
    /// One client loop calling only `GetBestServer`.
    pub get_best: GetBestRate,
}

/// One strategy through both paths.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StrategyRuns {
    /// The strategy, snake_case (`round_robin`).
    pub strategy: String,
    /// The balancer's policy of that name (`round-robin`), set with `PUT /policy`
    /// for the proxy run.
    pub policy: String,
    /// `GetBestServer` then `Compute`, per client loop.
    pub look_aside: lookaside::Report,
    /// `GET /compute?n=N` through the balancer's HTTP data plane.
    pub proxy: loadgen::Report,
}

impl StrategyRuns {
    /// Both paths, look-aside first, seen alike.
    pub fn sides(&self) -> [Side<'_>; 2] {
        let (a, p) = (&self.look_aside, &self.proxy);
        [
            Side {
                path: "look-aside",
                requests: a.requests,
                ok: a.ok,
                errors: a.errors,
                elapsed_s: a.elapsed_s,
                latency_ms: &a.latency_ms,
                ok_latency_ms: Some(&a.ok_latency_ms),
                get_best_ms: Some(&a.get_best_ms),
                errors_by: a.error_codes.clone(),
                counts: &a.counts,
            },
            Side {
                path: "proxy",
                requests: p.requests,
                ok: p.ok,
                errors: p.errors,
                elapsed_s: p.elapsed_s,
                latency_ms: &p.latency_ms,
                ok_latency_ms: p.ok_latency_ms.as_ref(),
                get_best_ms: None,
                errors_by: p
                    .statuses
                    .iter()
                    .filter(|(s, _)| !s.starts_with('2'))
                    .map(|(s, n)| (s.clone(), *n))
                    .collect(),
                counts: &p.counts,
            },
        ]
    }
}

/// One path of an A-6 run, whichever it was.
#[derive(Debug, Clone)]
pub struct Side<'a> {
    /// `look-aside` or `proxy`.
    pub path: &'static str,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    /// Of every request.
    pub latency_ms: &'a Latency,
    /// Of the successful ones.
    pub ok_latency_ms: Option<&'a Latency>,
    /// Of `GetBestServer` alone (look-aside).
    pub get_best_ms: Option<&'a Latency>,
    /// Failures by gRPC call and code (look-aside) or by status (proxy).
    pub errors_by: BTreeMap<String, u64>,
    /// Successful requests per backend.
    pub counts: &'a BTreeMap<String, u64>,
}

impl Side<'_> {
    /// Successful requests per second.
    pub fn goodput(&self) -> f64 {
        self.ok as f64 / self.elapsed_s.max(1e-9)
    }

    /// Failed requests in percent of all.
    pub fn error_percent(&self) -> f64 {
        percent(self.errors, self.requests)
    }

    /// The backend that served the most, and its share of the successful requests
    /// in percent.
    pub fn busiest(&self) -> Option<(&str, f64)> {
        self.counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(name, n)| (name.as_str(), percent(*n, self.ok)))
    }
}

/// `GetBestServer` alone, from one client loop: the balancer's answer rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetBestRate {
    pub strategy: String,
    pub report: lookaside::Report,
    /// CPU seconds the balancer process spent during the run (`/proc`), when read.
    pub balancer_cpu_s: Option<f64>,
    /// CPU seconds the client (the `analysis` process) spent during the run.
    pub client_cpu_s: Option<f64>,
}

impl GetBestRate {
    /// Calls answered per second of the balancer's CPU time: what one core fully
    /// given to the balancer would answer at this cost per call.
    pub fn per_cpu_second(&self) -> Option<f64> {
        self.balancer_cpu_s
            .filter(|c| *c > 0.0)
            .map(|c| self.report.ok as f64 / c)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    part as f64 / whole.max(1) as f64 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_without_a5_read_and_write_back_unchanged() {
        // As written before A-5 and p99.9 existed, floats printed to the last digit.
        let old = r#"{
  "meta": {
    "runtime": "docker",
    "requests": 10000,
    "concurrency": 50,
    "cores": 2,
    "started_unix": 1795459521,
    "wall_s": 102.358941702
  },
  "experiments": [
    {
      "name": "A-1",
      "scheme": "quadratic",
      "n": 3,
      "requests": 10000,
      "counts": {
        "Server1": 10000
      },
      "errors": 0,
      "throughput": 9541.824461129781,
      "latency_ms": {
        "p50": 4.467,
        "p90": 8.33,
        "p99": 21.544,
        "max": 62.27,
        "mean": 5.219786699999999
      }
    }
  ],
  "a3": null,
  "simulation": {
    "balance": [],
    "movement": []
  }
}"#;
        let res: Results = serde_json::from_str(old).unwrap();
        assert!(res.a5.is_none());
        let back = serde_json::to_string_pretty(&res).unwrap();
        assert_eq!(back, old.replace("\n}", ",\n  \"a5\": null\n}"));
    }

    #[test]
    fn a6_round_trips_and_results_without_it_are_written_without_it() {
        let mut res = Results::default();
        let without = serde_json::to_string(&res).unwrap();
        assert!(!without.contains("a6"), "{without}");
        let mut runs = StrategyRuns {
            strategy: "round_robin".into(),
            policy: "round-robin".into(),
            ..StrategyRuns::default()
        };
        runs.look_aside.error_codes = [("Compute RESOURCE_EXHAUSTED".into(), 3)].into();
        runs.proxy.ok_latency_ms = Some(Latency {
            p99: 12.5,
            ..Latency::default()
        });
        res.a6 = Some(LookAside {
            backends: 8,
            strategies: vec![runs],
            get_best: GetBestRate {
                balancer_cpu_s: Some(0.5),
                ..GetBestRate::default()
            },
            ..LookAside::default()
        });
        let text = serde_json::to_string_pretty(&res).unwrap();
        let back: Results = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
    }

    #[test]
    fn both_paths_of_a_strategy_read_alike_with_non_2xx_answers_as_failures() {
        let mut r = StrategyRuns::default();
        r.look_aside.requests = 10;
        r.look_aside.ok = 8;
        r.look_aside.errors = 2;
        r.look_aside.elapsed_s = 2.0;
        r.look_aside.counts = [("b1".into(), 6), ("b2".into(), 2)].into();
        r.look_aside.error_codes = [("Compute RESOURCE_EXHAUSTED".into(), 2)].into();
        r.proxy.requests = 20;
        r.proxy.ok = 15;
        r.proxy.errors = 5;
        r.proxy.elapsed_s = 5.0;
        r.proxy.statuses = [("200".into(), 15), ("503".into(), 4), ("error".into(), 1)].into();
        let [a, p] = r.sides();
        assert_eq!(
            (a.path, a.goodput(), a.error_percent()),
            ("look-aside", 4.0, 20.0)
        );
        assert_eq!(a.busiest(), Some(("b1", 75.0)));
        assert_eq!(p.errors_by, [("503".into(), 4), ("error".into(), 1)].into());
        assert_eq!(
            (p.goodput(), p.error_percent(), p.busiest()),
            (3.0, 25.0, None)
        );
        assert!(a.get_best_ms.is_some() && p.get_best_ms.is_none());
    }

    #[test]
    fn a_policy_run_shares_count_failures_and_label_its_hedge() {
        let r = PolicyRun {
            policy: "round-robin".into(),
            hedge: Some("p95".into()),
            requests: 100,
            errors: 4,
            counts: [("Server1".into(), 76), ("Server3".into(), 16)].into(),
            failed_by: [("Server3".into(), 4)].into(),
            hedges: Some(5),
            ..PolicyRun::default()
        };
        assert_eq!(r.label(), "round-robin + hedge p95");
        assert_eq!(r.share("Server3"), 20.0);
        assert_eq!(r.busiest_share(), 76.0);
        assert_eq!((r.error_percent(), r.hedge_percent()), (4.0, Some(5.0)));
    }
}
