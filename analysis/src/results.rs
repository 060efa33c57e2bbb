//! The shape of `analysis/results.json`: everything the report and charts are drawn from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::loadgen::{Latency, Second};

/// Everything one `make analysis` measured and computed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    /// One entry per real run (A-1 and A-2, for each scheme; A-4 compares them).
    pub experiments: Vec<Run>,
    /// endpoints, kills and the timeline.
    pub a3: Option<Recovery>,
    /// Ring-only computations, no deployment involved.
    pub simulation: Simulation,
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

/// the failure-recovery run.
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
