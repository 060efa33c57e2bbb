//! One backend as every layer sees it: who it is, where it listens, and the live
//! figures the data plane writes and balancing policies read. Load belongs to the
//! endpoint (as in tower's `load`); a policy is a small function over these figures.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::ReplicaCounters;

/// A replica's numeric id (`i >= 1`), which places it on the ring.
pub type ServerId = u32;

/// Consecutive forwarding failures after which a backend is skipped until its next
/// successful heartbeat (passive health).
pub const EJECT_AFTER_FAILURES: u32 = 3;

/// How fast the latency estimate forgets: after this long a past sample weighs 1/e
/// (Finagle's and tower's peak-EWMA default is 10 s).
const LATENCY_DECAY: Duration = Duration::from_secs(10);

/// A replica that may take traffic, shared by every snapshot of its incarnation so
/// that its figures survive republishing. Every field is written without a lock or
/// an allocation, so the request path can afford them.
#[derive(Debug)]
pub struct Backend {
    pub id: ServerId,
    pub hostname: String,
    /// `host:port` to connect to.
    pub address: String,
    /// Requests being forwarded to it right now; `/rm` waits for this to reach 0.
    pub in_flight: AtomicUsize,
    /// Forwarding failures in a row; reset by a success or a heartbeat.
    pub failures: AtomicU32,
    /// Its request counters in `/metrics`.
    pub counters: ReplicaCounters,
    /// When this incarnation first answered its heartbeat (for slow start).
    pub healthy_since: Instant,
    /// Peak-EWMA response time in nanoseconds, as `f64` bits; 0 before any sample.
    latency: AtomicU64,
    /// When `latency` was last updated, in nanoseconds after `healthy_since`.
    latency_at: AtomicU64,
    /// The load the replica reports (its requests in flight, say).
    reported_load: AtomicU32,
    /// Whether the replica says it can take more work.
    available: AtomicBool,
    /// Cleared by an operator to keep new requests away while it keeps running.
    enabled: AtomicBool,
}

impl Backend {
    /// A backend with no traffic yet, healthy from now.
    pub fn new(id: ServerId, hostname: String, address: String, counters: ReplicaCounters) -> Self {
        Backend {
            id,
            hostname,
            address,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            counters,
            healthy_since: Instant::now(),
            latency: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            reported_load: AtomicU32::new(0),
            available: AtomicBool::new(true),
            enabled: AtomicBool::new(true),
        }
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

    /// Folds one response time into the peak-EWMA estimate: a slower sample is taken
    /// at once (a replica that slows down is noticed on its first slow answer), a
    /// faster one only gradually. Workers race on it; the last write wins, which an
    /// estimate can afford better than a lock on the request path.
    pub fn observe_latency(&self, rtt: Duration) {
        self.observe_latency_at(rtt, self.healthy_since.elapsed());
    }

    /// [`Backend::observe_latency`] at time `at` after `healthy_since`.
    fn observe_latency_at(&self, rtt: Duration, at: Duration) {
        let now = at.as_nanos() as u64;
        let then = self.latency_at.swap(now, Ordering::Relaxed);
        let old = f64::from_bits(self.latency.load(Ordering::Relaxed));
        let sample = rtt.as_nanos() as f64;
        let new = if sample > old {
            sample
        } else {
            let elapsed = now.saturating_sub(then) as f64;
            let decay = (-elapsed / LATENCY_DECAY.as_nanos() as f64).exp();
            old * decay + sample * (1.0 - decay)
        };
        self.latency.store(new.to_bits(), Ordering::Relaxed);
    }

    /// The peak-EWMA response time; zero before the first response.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.latency.load(Ordering::Relaxed)) as u64)
    }

    /// Records what the replica reports of itself.
    pub fn report(&self, load: u32, available: bool) {
        self.reported_load.store(load, Ordering::Relaxed);
        self.available.store(available, Ordering::Relaxed);
    }

    /// The load the replica last reported.
    pub fn reported_load(&self) -> u32 {
        self.reported_load.load(Ordering::Relaxed)
    }

    /// Whether the replica last said it can take more work.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
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
    fn a_slower_answer_raises_the_latency_estimate_at_once() {
        let b = backend();
        b.observe_latency(10 * MS);
        assert_eq!(b.latency(), 10 * MS);
        b.observe_latency(200 * MS);
        assert_eq!(b.latency(), 200 * MS);
    }

    #[test]
    fn faster_answers_bring_the_estimate_down_only_as_time_passes() {
        let b = backend();
        let s = Duration::from_secs(1);
        b.observe_latency_at(200 * MS, s);
        // A moment later a fast answer barely moves it: one sample is not a trend.
        b.observe_latency_at(MS, s + MS);
        assert!(b.latency() > 190 * MS, "{:?}", b.latency());
        // Three decay periods later, most of the peak is forgotten (e^-3 of it).
        b.observe_latency_at(MS, s + 3 * LATENCY_DECAY);
        assert!(b.latency() < 12 * MS, "{:?}", b.latency());
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
