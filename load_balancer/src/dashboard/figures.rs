//! The dashboard's figures over time: a reading of the counters once a second,
//! turned into rates, success rates and windowed percentiles. Pure: readings go in,
//! numbers come out.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::metrics::{CountersReading, LATENCY_BUCKETS, REPLICA_BUCKETS};

/// How many one-second samples are kept: five minutes.
pub const HISTORY: usize = 300;

/// How many seconds percentiles and success rates are taken over.
pub const WINDOW: usize = 10;

/// Every counter the dashboard follows, read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Unix time, in milliseconds.
    pub at_ms: u64,
    /// The balancer's totals ([`crate::metrics::Metrics::totals`]).
    pub totals: CountersReading,
    /// Each replica that has live figures, by hostname.
    pub replicas: BTreeMap<String, CountersReading>,
}

/// One second of traffic: what the rate chart draws.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Increases by one per sample; the event stream's id.
    pub seq: u64,
    pub t_ms: u64,
    /// Responses per second, by replica.
    pub rps: BTreeMap<String, f64>,
    /// Failures (5xx and no answer) per second, all replicas together.
    pub errors: f64,
}

/// The figures of one replica, or of the whole balancer, at the newest reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Responses per second over the last second.
    pub rps: f64,
    /// Response-time percentiles over the last [`WINDOW`] seconds, in ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The share of the last [`WINDOW`] seconds' requests that did not fail.
    pub success_rate: Option<f64>,
    /// Since the balancer started.
    pub requests: u64,
    /// Failures (5xx and no answer) since the balancer started.
    pub errors: u64,
}

/// The last readings and samples.
#[derive(Debug, Default)]
pub struct History {
    /// The newest [`WINDOW`] + 1 readings, oldest first.
    readings: VecDeque<Reading>,
    /// The newest [`HISTORY`] samples, oldest first.
    samples: VecDeque<Sample>,
    seq: u64,
}

impl History {
    /// Adds a reading; from the second one on, each makes a sample.
    pub fn push(&mut self, reading: Reading) {
        if let Some(prev) = self.readings.back() {
            let dt = reading.at_ms.saturating_sub(prev.at_ms).max(1) as f64 / 1000.0;
            let rps = reading
                .replicas
                .iter()
                .map(|(name, now)| {
                    let before = prev.replicas.get(name);
                    let done = requests(now) - before.map_or(requests(now), requests);
                    (name.clone(), done as f64 / dt)
                })
                .collect();
            let failed = errors(&reading.totals).saturating_sub(errors(&prev.totals));
            self.seq += 1;
            self.samples.push_back(Sample {
                seq: self.seq,
                t_ms: reading.at_ms,
                rps,
                errors: failed as f64 / dt,
            });
            if self.samples.len() > HISTORY {
                self.samples.pop_front();
            }
        }
        self.readings.push_back(reading);
        if self.readings.len() > WINDOW + 1 {
            self.readings.pop_front();
        }
    }

    /// The newest sample's number (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The samples newer than `seq`, oldest first.
    pub fn samples_after(&self, seq: u64) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.seq > seq)
    }

    /// One replica's figures, if it was in the newest reading.
    pub fn replica(&self, hostname: &str) -> Option<Window> {
        let newest = self.readings.back()?.replicas.get(hostname)?;
        let oldest = self
            .readings
            .iter()
            .find_map(|r| r.replicas.get(hostname))
            .unwrap_or(newest);
        let rps = self.latest().and_then(|s| s.rps.get(hostname)).copied();
        Some(window(newest, oldest, rps.unwrap_or(0.0), &REPLICA_BUCKETS))
    }

    /// The whole balancer's figures.
    pub fn totals(&self) -> Window {
        let empty = CountersReading::default();
        let newest = self.readings.back().map_or(&empty, |r| &r.totals);
        let oldest = self.readings.front().map_or(&empty, |r| &r.totals);
        let rps = self.latest().map_or(0.0, |s| s.rps.values().sum());
        window(newest, oldest, rps, &LATENCY_BUCKETS)
    }
}

fn requests(r: &CountersReading) -> u64 {
    r.classes.iter().sum()
}

fn errors(r: &CountersReading) -> u64 {
    r.classes[4] + r.classes[5]
}

fn window(newest: &CountersReading, oldest: &CountersReading, rps: f64, bounds: &[f64]) -> Window {
    let asked = requests(newest).saturating_sub(requests(oldest));
    let failed = errors(newest).saturating_sub(errors(oldest));
    let buckets: Vec<u64> = newest
        .buckets
        .iter()
        .zip(oldest.buckets.iter().chain(std::iter::repeat(&0)))
        .map(|(n, o)| n.saturating_sub(*o))
        .collect();
    let ms = |q| quantile(bounds, &buckets, q).map(|s| s * 1000.0);
    Window {
        rps,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        success_rate: (asked > 0).then(|| 1.0 - failed as f64 / asked as f64),
        requests: requests(newest),
        errors: errors(newest),
    }
}

/// The `q`-quantile, in seconds, of a histogram given as cumulative counts at each
/// of `bounds` and then the total, interpolating linearly inside the bucket it falls
/// in (as Prometheus's `histogram_quantile` does). Past the last bound, the last
/// bound. `None` with no observations.
pub fn quantile(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let i = cumulative.iter().position(|c| *c as f64 >= rank)?;
    let Some(upper) = bounds.get(i) else {
        return bounds.last().copied();
    };
    let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
    let below = if i == 0 { 0 } else { cumulative[i - 1] };
    let inside = cumulative[i] - below;
    if inside == 0 {
        return Some(*upper);
    }
    Some(lower + (upper - lower) * (rank - below as f64) / inside as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(ok: u64, failed: u64, buckets: Vec<u64>) -> CountersReading {
        CountersReading {
            classes: [0, ok, 0, 0, failed, 0],
            buckets,
        }
    }

    fn reading(at_s: u64, replicas: &[(&str, u64, u64)]) -> Reading {
        let per: BTreeMap<_, _> = replicas
            .iter()
            .map(|(n, ok, failed)| (n.to_string(), counters(*ok, *failed, Vec::new())))
            .collect();
        let ok = replicas.iter().map(|r| r.1).sum();
        let failed = replicas.iter().map(|r| r.2).sum();
        Reading {
            at_ms: at_s * 1000,
            totals: counters(ok, failed, Vec::new()),
            replicas: per,
        }
    }

    #[test]
    fn a_sample_is_each_replicas_responses_in_the_last_second() {
        let mut h = History::default();
        h.push(reading(0, &[("S1", 10, 0), ("S2", 0, 0)]));
        assert!(h.latest().is_none(), "one reading makes no rate");
        h.push(reading(2, &[("S1", 30, 2), ("S2", 8, 0)]));
        let s = h.latest().unwrap();
        assert_eq!(s.seq, 1);
        assert_eq!(s.rps["S1"], 11.0, "22 responses in 2 s");
        assert_eq!(s.rps["S2"], 4.0);
        assert_eq!(s.errors, 1.0);
    }

    #[test]
    fn a_replica_that_appears_starts_at_no_rate_rather_than_its_whole_count() {
        let mut h = History::default();
        h.push(reading(0, &[("S1", 10, 0)]));
        h.push(reading(1, &[("S1", 12, 0), ("S2", 500, 0)]));
        assert_eq!(h.latest().unwrap().rps["S2"], 0.0);
    }

    #[test]
    fn only_five_minutes_of_samples_are_kept_and_a_client_resumes_after_its_last() {
        let mut h = History::default();
        for t in 0..=400 {
            h.push(reading(t, &[("S1", t, 0)]));
        }
        assert_eq!(h.seq(), 400);
        assert_eq!(h.samples_after(0).count(), HISTORY);
        let resumed: Vec<u64> = h.samples_after(397).map(|s| s.seq).collect();
        assert_eq!(resumed, [398, 399, 400]);
    }

    #[test]
    fn success_rate_counts_the_window_only_and_totals_count_everything() {
        let mut h = History::default();
        h.push(reading(0, &[("S1", 100, 100)]));
        for t in 1..=WINDOW as u64 + 5 {
            h.push(reading(t, &[("S1", 100 + 10 * t, 100 + t)]));
        }
        let w = h.replica("S1").unwrap();
        // Over the last 10 s: 100 successes and 10 failures.
        assert!((w.success_rate.unwrap() - 100.0 / 110.0).abs() < 1e-9);
        assert_eq!((w.requests, w.errors), (100 + 150 + 100 + 15, 115));
        assert_eq!(h.totals().rps, 11.0);
        assert!(h.replica("S9").is_none());
    }

    #[test]
    fn a_quantile_interpolates_inside_its_bucket() {
        let bounds = [0.001, 0.002, 0.005];
        // 10 under 1 ms, 10 more under 2 ms, none under 5 ms, 1 beyond.
        let cumulative = [10, 20, 20, 21];
        let p25 = quantile(&bounds, &cumulative, 0.25).unwrap();
        assert!((p25 - 0.000525).abs() < 1e-12, "{p25}");
        let p75 = quantile(&bounds, &cumulative, 0.75).unwrap();
        assert!((p75 - 0.001575).abs() < 1e-12, "{p75}");
        assert_eq!(quantile(&bounds, &cumulative, 1.0), Some(0.005));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        assert_eq!(quantile(&bounds, &[], 0.5), None);
    }

    #[test]
    fn percentiles_come_from_the_windows_buckets_not_all_time() {
        let mut h = History::default();
        let slow = |n| CountersReading {
            classes: [0, n, 0, 0, 0, 0],
            buckets: vec![0; REPLICA_BUCKETS.len()]
                .into_iter()
                .chain([n])
                .collect(),
        };
        let fast = |n: u64, slow_ones: u64| {
            let mut b = vec![n - slow_ones; REPLICA_BUCKETS.len()];
            b.push(n);
            CountersReading {
                classes: [0, n, 0, 0, 0, 0],
                buckets: b,
            }
        };
        let at = |t: u64, c: CountersReading| Reading {
            at_ms: t * 1000,
            totals: CountersReading::default(),
            replicas: [("S1".to_string(), c)].into(),
        };
        h.push(at(0, slow(1000)));
        for t in 1..=WINDOW as u64 {
            h.push(at(t, fast(1000 + 100 * t, 1000)));
        }
        // All 1000 slow ones are older than the window: p99 is in the first bucket.
        let p99 = h.replica("S1").unwrap().p99_ms.unwrap();
        assert!(p99 <= REPLICA_BUCKETS[0] * 1000.0, "{p99}");
    }
}
