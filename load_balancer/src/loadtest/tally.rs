//! What a load test counts, and the report it shows. Pure: outcomes go in, a report
//! comes out.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::plan::{Mode, Plan};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response came back: its status and the `X-Served-By` replica, if any.
    Answered {
        status: u16,
        served_by: Option<String>,
        took: Duration,
    },
    /// No response: the connection failed or broke.
    Failed { took: Duration },
}

/// Counts of one worker, one step or a whole test.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Every finished request's time, in microseconds.
    latencies_us: Vec<u32>,
    pub completed: u64,
    /// No response, or a 5xx.
    pub errors: u64,
    by_status: BTreeMap<String, u64>,
    by_replica: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts one request.
    pub fn record(&mut self, outcome: Outcome) {
        let took = match outcome {
            Outcome::Answered {
                status,
                served_by,
                took,
            } => {
                if status >= 500 {
                    self.errors += 1;
                }
                *self.by_status.entry(status.to_string()).or_default() += 1;
                let replica = served_by.unwrap_or_else(|| "(balancer)".into());
                *self.by_replica.entry(replica).or_default() += 1;
                took
            }
            Outcome::Failed { took } => {
                self.errors += 1;
                *self.by_status.entry("no answer".into()).or_default() += 1;
                took
            }
        };
        self.completed += 1;
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }

    /// Adds another tally's counts to this one.
    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.completed += other.completed;
        self.errors += other.errors;
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.by_replica {
            *self.by_replica.entry(k).or_default() += v;
        }
    }

    /// Throughput over `elapsed` and the latency percentiles, in ms. Linear in the
    /// requests counted (no sort), so a running test can be summarized often.
    pub fn summary(&mut self, elapsed: Duration) -> Summary {
        Summary {
            completed: self.completed,
            errors: self.errors,
            throughput: self.completed as f64 / elapsed.as_secs_f64().max(1e-3),
            p50_ms: percentile(&mut self.latencies_us, 0.5),
            p99_ms: percentile(&mut self.latencies_us, 0.99),
            max_ms: percentile(&mut self.latencies_us, 1.0),
        }
    }
}

/// The nearest-rank `q`-quantile of `us` (microseconds), in ms. Reorders `us`.
fn percentile(us: &mut [u32], q: f64) -> Option<f64> {
    let n = us.len();
    if n == 0 {
        return None;
    }
    let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    let (_, nth, _) = us.select_nth_unstable(i);
    Some(f64::from(*nth) / 1000.0)
}

/// A tally's headline figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub completed: u64,
    pub errors: u64,
    /// Requests finished per second.
    pub throughput: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One stress step's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Where a test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Done,
    Stopped,
    Failed,
}

/// A test as `GET /loadtest` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub id: u64,
    pub state: RunState,
    pub mode: Mode,
    pub requests: u64,
    pub concurrency: usize,
    pub duration_s: f64,
    pub path: String,
    pub started_ms: u64,
    pub elapsed_s: f64,
    /// 0..1: of the requests or of the time, whichever is further along.
    pub progress: f64,
    #[serde(flatten)]
    pub summary: Summary,
    pub by_status: BTreeMap<String, u64>,
    pub by_replica: BTreeMap<String, u64>,
    pub steps: Vec<StepReport>,
    pub error: Option<String>,
}

impl Report {
    /// A test under way, with what it counted so far.
    pub fn running(
        id: u64,
        plan: &Plan,
        started_ms: u64,
        elapsed: Duration,
        so_far: &mut Tally,
    ) -> Report {
        let s = so_far.summary(elapsed);
        let by_requests = s.completed as f64 / plan.requests as f64;
        let by_time = elapsed.as_secs_f64() / plan.duration.as_secs_f64();
        Report {
            id,
            state: RunState::Running,
            mode: plan.mode,
            requests: plan.requests,
            concurrency: plan.concurrency,
            duration_s: plan.duration.as_secs_f64(),
            path: plan.path.clone(),
            started_ms,
            elapsed_s: elapsed.as_secs_f64(),
            progress: by_requests.max(by_time).min(1.0),
            summary: s,
            by_status: so_far.by_status.clone(),
            by_replica: so_far.by_replica.clone(),
            steps: Vec::new(),
            error: None,
        }
    }

    /// The same test finished in `state`, from everything it counted.
    pub fn finished(
        self,
        state: RunState,
        mut all: Tally,
        elapsed: Duration,
        steps: Vec<StepReport>,
    ) -> Report {
        let done = Report::running(self.id, &self.plan(), self.started_ms, elapsed, &mut all);
        Report {
            state,
            progress: 1.0,
            steps,
            ..done
        }
    }

    fn plan(&self) -> Plan {
        Plan {
            requests: self.requests,
            concurrency: self.concurrency,
            duration: Duration::from_secs_f64(self.duration_s),
            path: self.path.clone(),
            mode: self.mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, by: &str, ms: u64) -> Outcome {
        Outcome::Answered {
            status,
            served_by: Some(by.into()),
            took: Duration::from_millis(ms),
        }
    }

    #[test]
    fn responses_are_counted_by_status_and_replica_and_failures_are_errors() {
        let mut t = Tally::default();
        t.record(answered(200, "S1", 1));
        t.record(answered(200, "S2", 2));
        t.record(Outcome::Answered {
            status: 503,
            served_by: None,
            took: Duration::from_millis(3),
        });
        t.record(Outcome::Failed {
            took: Duration::from_millis(4),
        });
        assert_eq!((t.completed, t.errors), (4, 2));
        assert_eq!(t.by_status["200"], 2);
        assert_eq!(t.by_status["no answer"], 1);
        assert_eq!(t.by_replica["S2"], 1);
        assert_eq!(t.by_replica["(balancer)"], 1);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_every_request() {
        let mut t = Tally::default();
        for ms in 1..=100 {
            t.record(answered(200, "S1", ms));
        }
        let s = t.summary(Duration::from_secs(2));
        assert_eq!(s.throughput, 50.0);
        assert_eq!(
            (s.p50_ms, s.p99_ms, s.max_ms),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        assert_eq!(
            Tally::default().summary(Duration::from_secs(1)).p50_ms,
            None
        );
    }

    #[test]
    fn merged_tallies_count_as_one() {
        let (mut a, mut b) = (Tally::default(), Tally::default());
        a.record(answered(200, "S1", 1));
        b.record(answered(200, "S1", 5));
        b.record(answered(500, "S3", 5));
        a.merge(b);
        assert_eq!((a.completed, a.errors, a.by_replica["S1"]), (3, 1, 2));
        assert_eq!(a.summary(Duration::from_secs(1)).max_ms, Some(5.0));
    }

    #[test]
    fn progress_is_the_further_of_requests_and_time() {
        let plan = Plan {
            requests: 1000,
            duration: Duration::from_secs(10),
            ..Plan::default()
        };
        let mut so_far = Tally::default();
        for _ in 0..500 {
            so_far.record(answered(200, "S1", 2));
        }
        let r = Report::running(1, &plan, 0, Duration::from_secs(1), &mut so_far);
        assert_eq!(r.progress, 0.5);
        assert_eq!((r.summary.p50_ms, r.by_replica["S1"]), (Some(2.0), 500));
        let r = Report::running(1, &plan, 0, Duration::from_secs(8), &mut so_far);
        assert_eq!(r.progress, 0.8);
        let done = r.finished(
            RunState::Done,
            Tally::default(),
            Duration::from_secs(9),
            Vec::new(),
        );
        assert_eq!((done.state, done.progress), (RunState::Done, 1.0));
    }
}
