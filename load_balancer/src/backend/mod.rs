//! One backend as every layer sees it: who it is, where it listens, and the live
//! figures the data plane writes and balancing policies read. Load belongs to the
//! endpoint (as in tower's `load`); a policy is a small function over these figures.

pub mod estimate;
pub mod resources;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::metrics::ReplicaCounters;
use estimate::Estimate;
pub use resources::Resources;

/// A replica's numeric id (`i >= 1`), which places it on the ring.
pub type ServerId = u32;

/// Consecutive forwarding failures after which a backend is skipped until its next
/// successful heartbeat (passive health).
pub const EJECT_AFTER_FAILURES: u32 = 3;

/// How fast the estimates forget: after this long a past sample weighs 1/e
/// (Finagle's and tower's peak-EWMA default is 10 s).
pub const DECAY: Duration = Duration::from_secs(10);

/// How far one request moves the failure rates.
const RATE_WEIGHT: f64 = 0.05;

/// The response time a failure counts as, at least: an error that comes back fast
/// must not make its replica look fast (Linkerd and Finagle do the same).
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The latency at which the health score's speed term is one half.
const SCORE_LATENCY: Duration = Duration::from_millis(100);

/// The weight of a replica that declares none.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The largest weight a replica may declare.
pub const MAX_WEIGHT: u32 = 100;

/// A replica that may take traffic, shared by every snapshot of its incarnation so
/// that its figures survive republishing. Every field the request path writes is
/// written without a lock or an allocation.
#[derive(Debug)]
pub struct Backend {
    pub id: ServerId,
    pub hostname: String,
    /// `host:port` the data plane connects to (for a backend that serves gRPC
    /// only, its gRPC address, shown but never connected to over HTTP).
    pub address: String,
    /// `host:port` it serves look-aside gRPC on, if it does: what `GetBestServer`
    /// answers with.
    pub grpc_address: Option<String>,
    /// Requests being forwarded to it right now; `/rm` waits for this to reach 0.
    pub in_flight: AtomicUsize,
    /// Forwarding failures in a row; reset by a success or a heartbeat.
    pub failures: AtomicU32,
    /// Its request counters in `/metrics`.
    pub counters: ReplicaCounters,
    /// When this incarnation first answered its heartbeat: slow start counts from
    /// here, and the estimates' clocks start here.
    pub healthy_since: Instant,
    /// Peak-EWMA response time, in nanoseconds.
    latency: Estimate,
    /// The recent share of failed requests (errors, `5xx`, timeouts).
    errors: Estimate,
    /// The recent share of requests that timed out.
    timeouts: Estimate,
    /// The load the replica reports (its requests in flight, say).
    reported_load: AtomicU32,
    /// Our requests in flight to it when it reported, so that what we sent since can
    /// be added to its report.
    in_flight_at_report: AtomicUsize,
    /// Whether the replica says it can take more work.
    available: AtomicBool,
    /// Cleared by an operator to keep new requests away while it keeps running.
    enabled: AtomicBool,
    /// The weight it declares (`X-Weight`), 1..=100.
    weight: AtomicU32,
    /// The capacities it declares (`X-Capacity`); read by `resource-fit` only.
    capacity: ArcSwap<Resources>,
}

impl Backend {
    /// A backend with no traffic yet, healthy from now.
    pub fn new(id: ServerId, hostname: String, address: String, counters: ReplicaCounters) -> Self {
        Backend {
            id,
            hostname,
            address,
            grpc_address: None,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            counters,
            healthy_since: Instant::now(),
            latency: Estimate::default(),
            errors: Estimate::default(),
            timeouts: Estimate::default(),
            reported_load: AtomicU32::new(0),
            in_flight_at_report: AtomicUsize::new(0),
            available: AtomicBool::new(true),
            enabled: AtomicBool::new(true),
            weight: AtomicU32::new(DEFAULT_WEIGHT),
            capacity: ArcSwap::from_pointee(Resources::default()),
        }
    }

    /// The same backend, serving look-aside gRPC at `address` too.
    pub fn serving_grpc(mut self, address: Option<String>) -> Self {
        self.grpc_address = address;
        self
    }

    /// Forgets earlier failures after a success (a load first: the common case
    /// writes nothing, so the cache line stays shared between workers).
    pub fn clear_failures(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a forwarding failure; true when this one ejects the backend.
    pub fn record_failure(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1 == EJECT_AFTER_FAILURES
    }

    /// Whether passive health has taken it out of routing.
    pub fn ejected(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= EJECT_AFTER_FAILURES
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Requests in flight now.
    pub fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// `now` on the estimates' clock.
    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.healthy_since).as_nanos() as u64
    }

    /// Folds in a response that came back with `status` after `took`. A `5xx` is a
    /// failure: it counts in the failure rate, and as at least [`FAILURE_PENALTY`]
    /// in the latency estimate.
    pub fn observe_response(&self, status: u16, took: Duration, now: Instant) {
        let failed = status >= 500;
        let t = self.nanos(now);
        let took = if failed {
            took.max(FAILURE_PENALTY)
        } else {
            took
        };
        self.latency.peak(t, took.as_nanos() as f64, DECAY);
        self.errors.rate(t, failed, RATE_WEIGHT, DECAY);
        self.timeouts.rate(t, false, RATE_WEIGHT, DECAY);
    }

    /// Folds in a request that got no response: the replica could not be reached,
    /// broke the exchange, or (`timed_out`) did not answer in time.
    pub fn observe_failure(&self, took: Duration, timed_out: bool, now: Instant) {
        let t = self.nanos(now);
        self.latency
            .peak(t, took.max(FAILURE_PENALTY).as_nanos() as f64, DECAY);
        self.errors.rate(t, true, RATE_WEIGHT, DECAY);
        self.timeouts.rate(t, timed_out, RATE_WEIGHT, DECAY);
    }

    /// The peak-EWMA response time at `now`; zero before the first response.
    pub fn latency(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.latency.read(self.nanos(now), DECAY) as u64)
    }

    /// The recent share of failed requests, 0..=1.
    pub fn error_rate(&self, now: Instant) -> f64 {
        self.errors.read(self.nanos(now), DECAY)
    }

    /// The recent share of timed-out requests, 0..=1.
    pub fn timeout_rate(&self, now: Instant) -> f64 {
        self.timeouts.read(self.nanos(now), DECAY)
    }

    /// Its health score, 0..=1: the share of recent requests that succeeded, times
    /// the share that did not time out (counted twice, as a timeout costs its
    /// client the most), times a speed term that is 1 for an instant answer and ½
    /// at 100 ms.
    pub fn score(&self, now: Instant) -> f64 {
        let speed = SCORE_LATENCY.as_secs_f64()
            / (SCORE_LATENCY.as_secs_f64() + self.latency(now).as_secs_f64());
        (1.0 - self.error_rate(now)) * (1.0 - self.timeout_rate(now)) * speed
    }

    /// How far through slow start it is at `now`: 0 when it just became healthy, 1
    /// once `slow_start` has passed (or with no slow start).
    pub fn warmth(&self, now: Instant, slow_start: Option<Duration>) -> f64 {
        match slow_start {
            Some(d) if !d.is_zero() => {
                let age = now.saturating_duration_since(self.healthy_since);
                (age.as_secs_f64() / d.as_secs_f64()).min(1.0)
            }
            _ => 1.0,
        }
    }

    /// Records what the replica reports of itself.
    pub fn report(&self, load: u32, available: bool) {
        self.in_flight_at_report
            .store(self.load(), Ordering::Relaxed);
        self.reported_load.store(load, Ordering::Relaxed);
        self.available.store(available, Ordering::Relaxed);
    }

    /// Its load now, as best known: what it last reported, plus the requests we
    /// sent it since, minus those of ours that finished since. A report is up to a
    /// heartbeat old; without this, every request until the next one would go to
    /// the replica that last reported the least.
    pub fn estimated_load(&self) -> u64 {
        let since = self.load() as i64 - self.in_flight_at_report.load(Ordering::Relaxed) as i64;
        (i64::from(self.reported_load()) + since).max(0) as u64
    }

    /// The load the replica last reported.
    pub fn reported_load(&self) -> u32 {
        self.reported_load.load(Ordering::Relaxed)
    }

    /// Whether the replica last said it can take more work.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Records the weight and capacities the replica declares; true when either
    /// changed. The weight is clamped to 1..=100.
    pub fn declare(&self, weight: u32, capacity: Resources) -> bool {
        let weight = weight.clamp(1, MAX_WEIGHT);
        let old = self.weight.swap(weight, Ordering::Relaxed);
        let changed = **self.capacity.load() != capacity;
        if changed {
            self.capacity.store(Arc::new(capacity));
        }
        changed || old != weight
    }

    /// The weight it declares.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The capacities it declares.
    pub fn capacity(&self) -> Arc<Resources> {
        self.capacity.load_full()
    }

    /// Lets new requests reach it, or keeps them away.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Whether an operator lets new requests reach it.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether it should be a first choice: enabled, available, not ejected.
    pub fn selectable(&self) -> bool {
        self.enabled() && self.available() && !self.ejected()
    }
}

/// Decrements a backend's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Backend);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        let metrics = crate::metrics::Metrics::new();
        Backend::new(1, "a".into(), "a:1".into(), metrics.replica("a"))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_fast_error_counts_as_slow_and_as_a_failure() {
        let b = backend();
        let now = b.healthy_since + Duration::from_secs(1);
        b.observe_response(200, 2 * MS, now);
        assert_eq!(b.latency(now), 2 * MS);
        assert_eq!(b.error_rate(now), 0.0);
        b.observe_response(500, MS, now);
        assert_eq!(b.latency(now), FAILURE_PENALTY);
        assert!(b.error_rate(now) > 0.0);
        b.observe_failure(MS, true, now);
        assert!(b.timeout_rate(now) > 0.0);
    }

    #[test]
    fn the_score_falls_with_failures_and_latency() {
        let b = backend();
        let now = b.healthy_since + Duration::from_secs(1);
        assert_eq!(b.score(now), 1.0);
        b.observe_response(200, 100 * MS, now);
        assert!((b.score(now) - 0.5).abs() < 1e-9);
        let healthy = backend();
        let failing = backend();
        for i in 0..100u32 {
            let at = now + i * MS;
            healthy.observe_response(200, MS, at);
            failing.observe_response(if i % 5 == 0 { 500 } else { 200 }, MS, at);
        }
        let end = now + 100 * MS;
        assert!(failing.score(end) < healthy.score(end) * 0.5);
    }

    #[test]
    fn warmth_ramps_over_the_slow_start() {
        let b = backend();
        let d = Some(Duration::from_secs(10));
        assert_eq!(b.warmth(b.healthy_since, d), 0.0);
        let half = b.warmth(b.healthy_since + Duration::from_secs(5), d);
        assert!((half - 0.5).abs() < 1e-9);
        assert_eq!(b.warmth(b.healthy_since + Duration::from_secs(60), d), 1.0);
        assert_eq!(b.warmth(b.healthy_since, None), 1.0);
    }

    #[test]
    fn the_estimated_load_adds_what_was_sent_since_the_report() {
        let b = backend();
        let before = b.track();
        b.report(5, true);
        assert_eq!(b.estimated_load(), 5);
        let sent: Vec<_> = (0..3).map(|_| b.track()).collect();
        assert_eq!(b.estimated_load(), 8);
        drop(sent);
        drop(before);
        assert_eq!(b.estimated_load(), 4);
        b.report(0, true);
        assert_eq!(b.estimated_load(), 0);
    }

    #[test]
    fn declarations_are_clamped_and_report_whether_they_changed() {
        let b = backend();
        assert_eq!(b.weight(), DEFAULT_WEIGHT);
        let cpu: Resources = "cpu=4".parse().unwrap();
        assert!(b.declare(500, cpu.clone()));
        assert_eq!(b.weight(), MAX_WEIGHT);
        assert!(!b.declare(100, cpu.clone()));
        assert_eq!(b.capacity().get("cpu"), Some(4.0));
        assert!(b.declare(100, Resources::default()));
    }

    #[test]
    fn a_disabled_unavailable_or_ejected_backend_is_not_selectable() {
        let b = backend();
        assert!(b.selectable());
        b.set_enabled(false);
        assert!(!b.selectable());
        b.set_enabled(true);
        b.report(7, false);
        assert!(!b.selectable());
        assert_eq!(b.reported_load(), 7);
        b.report(0, true);
        for _ in 0..EJECT_AFTER_FAILURES {
            b.record_failure();
        }
        assert!(!b.selectable());
        b.clear_failures();
        assert!(b.selectable());
    }

    #[test]
    fn in_flight_counts_last_as_long_as_their_guards() {
        let b = backend();
        let one = b.track();
        let two = b.track();
        assert_eq!(b.load(), 2);
        drop(one);
        drop(two);
        assert_eq!(b.load(), 0);
    }
}
