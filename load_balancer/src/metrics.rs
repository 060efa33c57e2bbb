//! Prometheus metrics: what `/metrics` exposes.
//!
//! Counters touched per request are resolved once per backend (see
//! [`ReplicaCounters`]), so the request path does atomic adds and no label lookups.
//! Gauges that can be derived from a snapshot are computed when scraped instead.

use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::snapshot::{ReplicaState, Snapshot};

/// Every metric of the balancer, in its own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    replica_duration: HistogramVec,
    /// Time from receiving a request to having the replica's response headers.
    pub latency: Histogram,
    /// Requests sent again to the next candidate after a replica failed.
    pub retries: IntCounter,
    /// Replicas taken out of routing by passive health.
    pub ejections: IntCounter,
    /// Replicas replaced after dying.
    pub respawns: IntCounter,
    /// Times a new routing table was published.
    pub ring_changes: IntCounter,
    /// Requests also sent to a second replica (hedged).
    pub hedges: IntCounter,
    /// Hedged requests the second replica answered first.
    pub hedge_wins: IntCounter,
    /// Hedges not sent because the budget was spent.
    pub hedges_refused: IntCounter,
    in_flight: IntGauge,
    replicas: IntGaugeVec,
    /// Per replica, read from its live figures when scraped.
    replica_in_flight: IntGaugeVec,
    replica_latency: GaugeVec,
    replica_error_rate: GaugeVec,
    replica_score: GaugeVec,
    replica_reported_load: IntGaugeVec,
    replica_enabled: IntGaugeVec,
    replica_weight: IntGaugeVec,
    /// 1 for the policy in force.
    policy: IntGaugeVec,
}

/// The status classes requests are counted by; `error` is a transport failure.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The upper bounds of the balancer-wide response-time buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The upper bounds of the per-replica response-time buckets, in seconds: finer
/// than the balancer-wide ones at the low end, where a replica's p50 usually is.
pub const REPLICA_BUCKETS: [f64; 15] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// One replica's request counters, resolved once when it joins routing.
#[derive(Debug, Clone)]
pub struct ReplicaCounters {
    classes: [IntCounter; 6],
    duration: Histogram,
}

/// What one replica's counters say at one moment: its responses by status class
/// (the last one transport failures) and its response-time buckets, cumulative.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountersReading {
    pub classes: [u64; 6],
    /// Responses at or under each bound of [`REPLICA_BUCKETS`], then all of them.
    pub buckets: Vec<u64>,
}

impl ReplicaCounters {
    /// Counts a response's time to its head.
    pub fn observe(&self, took: std::time::Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Reads every counter (not on the request path: it allocates).
    pub fn read(&self) -> CountersReading {
        let classes = self.classes.each_ref().map(IntCounter::get);
        let mut buckets = Vec::with_capacity(REPLICA_BUCKETS.len() + 1);
        if let Some(h) = self
            .duration
            .collect()
            .first()
            .and_then(|f| f.get_metric().first())
        {
            let h = h.get_histogram();
            buckets.extend(h.get_bucket().iter().map(|b| b.cumulative_count()));
            buckets.push(h.get_sample_count());
        }
        CountersReading { classes, buckets }
    }

    /// Counts a response with this status code.
    pub fn response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[class].inc();
    }

    /// Counts a request that got no response.
    pub fn error(&self) {
        self.classes[5].inc();
    }
}

/// A histogram's cumulative bucket counts, then its count of everything.
fn buckets(h: &Histogram) -> Vec<u64> {
    let mut out = Vec::new();
    if let Some(m) = h.collect().first().and_then(|f| f.get_metric().first()) {
        let h = m.get_histogram();
        out.extend(h.get_bucket().iter().map(|b| b.cumulative_count()));
        out.push(h.get_sample_count());
    }
    out
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Self {
        let r = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "lb_requests_total",
                "Forwarded requests by replica and status class",
            ),
            &["replica", "class"],
        )
        .expect("valid");
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "lb_request_duration_seconds",
                "Time to the replica's response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid");
        let per_replica = |name: &str, help: &str| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), &["replica"]).expect("valid"),
            )
        };
        let per_replica_f = |name: &str, help: &str| {
            register(
                &r,
                GaugeVec::new(Opts::new(name, help), &["replica"]).expect("valid"),
            )
        };
        let replica_duration = HistogramVec::new(
            HistogramOpts::new(
                "lb_replica_request_duration_seconds",
                "Time to the replica's response headers, by replica",
            )
            .buckets(REPLICA_BUCKETS.to_vec()),
            &["replica"],
        )
        .expect("valid");
        Metrics {
            replica_duration: register(&r, replica_duration),
            replica_in_flight: per_replica(
                "lb_replica_in_flight",
                "Requests being forwarded to the replica",
            ),
            replica_latency: per_replica_f(
                "lb_replica_latency_seconds",
                "The replica's peak-EWMA response time",
            ),
            replica_error_rate: per_replica_f(
                "lb_replica_error_rate",
                "The replica's recent share of failed requests",
            ),
            replica_score: per_replica_f("lb_replica_score", "The replica's health score, 0..1"),
            replica_reported_load: per_replica(
                "lb_replica_reported_load",
                "The load the replica reports on its heartbeat",
            ),
            replica_enabled: per_replica(
                "lb_replica_enabled",
                "1 unless an operator disabled the replica",
            ),
            replica_weight: per_replica("lb_replica_weight", "The weight the replica declares"),
            policy: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("lb_policy", "1 for the policy in force"),
                    &["policy"],
                )
                .expect("valid"),
            ),
            requests: register(&r, requests),
            latency: register(&r, latency),
            retries: register(
                &r,
                counter("lb_retries_total", "Requests moved to the next candidate"),
            ),
            ejections: register(
                &r,
                counter("lb_ejections_total", "Replicas ejected by passive health"),
            ),
            respawns: register(
                &r,
                counter("lb_respawns_total", "Replicas replaced after dying"),
            ),
            ring_changes: register(
                &r,
                counter("lb_ring_changes_total", "Routing tables published"),
            ),
            hedges: register(
                &r,
                counter("lb_hedges_total", "Requests also sent to a second replica"),
            ),
            hedge_wins: register(
                &r,
                counter(
                    "lb_hedge_wins_total",
                    "Hedged requests the second replica answered first",
                ),
            ),
            hedges_refused: register(
                &r,
                counter(
                    "lb_hedges_refused_total",
                    "Hedges not sent because the budget was spent",
                ),
            ),
            in_flight: register(
                &r,
                IntGauge::new("lb_in_flight_requests", "Requests being forwarded").expect("valid"),
            ),
            replicas: register(
                &r,
                IntGaugeVec::new(Opts::new("lb_replicas", "Replicas by state"), &["state"])
                    .expect("valid"),
            ),
            registry: r,
        }
    }

    /// The request counters of one replica.
    pub fn replica(&self, hostname: &str) -> ReplicaCounters {
        ReplicaCounters {
            classes: CLASSES.map(|c| self.requests.with_label_values(&[hostname, c])),
            duration: self.replica_duration.with_label_values(&[hostname]),
        }
    }

    /// Every replica's responses together, by class, since the balancer started
    /// (replicas gone included), and the balancer-wide response-time buckets (of
    /// [`LATENCY_BUCKETS`]).
    pub fn totals(&self) -> CountersReading {
        let mut classes = [0u64; 6];
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let class = m.get_label().iter().find(|l| l.name() == "class");
                let i = class.and_then(|l| CLASSES.iter().position(|c| *c == l.value()));
                if let Some(i) = i {
                    classes[i] += m.get_counter().get_value() as u64;
                }
            }
        }
        CountersReading {
            classes,
            buckets: buckets(&self.latency),
        }
    }

    /// The text exposition, with the gauges read from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let in_flight: usize = snap.picker.backends().map(|b| b.load()).sum();
        self.in_flight.set(in_flight as i64);
        for (state, name) in [
            (ReplicaState::Starting, "starting"),
            (ReplicaState::Healthy, "healthy"),
            (ReplicaState::Down, "down"),
            (ReplicaState::Disabled, "disabled"),
        ] {
            let n = snap.replicas.iter().filter(|r| r.state == state).count();
            self.replicas.with_label_values(&[name]).set(n as i64);
        }
        self.render_replicas(snap);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Metrics {
    /// The per-replica gauges and the policy, rebuilt from `snap` so that replicas
    /// gone since the last scrape leave no series behind.
    fn render_replicas(&self, snap: &Snapshot) {
        let now = Instant::now();
        let ints = [
            &self.replica_in_flight,
            &self.replica_reported_load,
            &self.replica_enabled,
            &self.replica_weight,
            &self.policy,
        ];
        ints.iter().for_each(|g| g.reset());
        let floats = [
            &self.replica_latency,
            &self.replica_error_rate,
            &self.replica_score,
        ];
        floats.iter().for_each(|g| g.reset());
        for b in &snap.figures {
            let l = [b.hostname.as_str()];
            self.replica_in_flight
                .with_label_values(&l)
                .set(b.load() as i64);
            self.replica_reported_load
                .with_label_values(&l)
                .set(i64::from(b.reported_load()));
            self.replica_enabled
                .with_label_values(&l)
                .set(i64::from(b.enabled()));
            self.replica_weight
                .with_label_values(&l)
                .set(i64::from(b.weight()));
            self.replica_latency
                .with_label_values(&l)
                .set(b.latency(now).as_secs_f64());
            self.replica_error_rate
                .with_label_values(&l)
                .set(b.error_rate(now));
            self.replica_score.with_label_values(&l).set(b.score(now));
        }
        self.policy
            .with_label_values(&[snap.settings.policy])
            .set(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_replica_and_class() {
        let m = Metrics::new();
        let c = m.replica("Server1");
        c.response(200);
        c.response(204);
        c.response(503);
        c.error();
        let (_, snapshot, _) = crate::registry::Registry::new(
            crate::policy::settings::Settings::default(),
            crate::ring::Geometry::DEFAULT,
            std::sync::Arc::new(Metrics::new()),
        )
        .unwrap();
        let text = m.render(&snapshot.load());
        assert!(
            text.contains(r#"lb_requests_total{class="2xx",replica="Server1"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"lb_requests_total{class="5xx",replica="Server1"} 1"#));
        assert!(text.contains(r#"lb_requests_total{class="error",replica="Server1"} 1"#));
        assert!(text.contains("lb_in_flight_requests 0"));
        assert!(text.contains(r#"lb_replicas{state="healthy"} 0"#));
        assert!(
            text.contains(r#"lb_policy{policy="quadratic"} 1"#),
            "{text}"
        );
    }
}
