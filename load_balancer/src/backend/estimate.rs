//! Lock-free estimates that forget: a peak-EWMA of response times and a moving rate
//! of failures, written by every worker on the request path and read by policies.
//!
//! Both decay towards zero as time passes without samples, as tower's `PeakEwma`
//! does when it is read: a replica that was slow and then got no traffic looks
//! better and better until it is tried again, so it can win its traffic back.
//! Workers race on the two words; the last write wins, which an estimate can afford
//! better than a lock on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An `f64` estimate and when it was last written, in nanoseconds on some clock
/// whose origin the owner chooses.
#[derive(Debug, Default)]
pub struct Estimate {
    value: AtomicU64,
    at: AtomicU64,
}

/// The factor by which `decay` shrinks what is `elapsed_ns` old.
fn decay(elapsed_ns: u64, decay: Duration) -> f64 {
    (-(elapsed_ns as f64) / decay.as_nanos() as f64).exp()
}

impl Estimate {
    fn stored(&self) -> (f64, u64) {
        (
            f64::from_bits(self.value.load(Ordering::Relaxed)),
            self.at.load(Ordering::Relaxed),
        )
    }

    fn store(&self, value: f64, now: u64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
        self.at.store(now, Ordering::Relaxed);
    }

    /// The estimate at `now`: its last value shrunk by the time since.
    pub fn read(&self, now: u64, tau: Duration) -> f64 {
        let (value, at) = self.stored();
        if value == 0.0 {
            return 0.0;
        }
        value * decay(now.saturating_sub(at), tau)
    }

    /// Peak-EWMA: a sample above the estimate is taken at once (a replica that slows
    /// down is noticed on its first slow answer); one below pulls it down by how
    /// much time has passed, not by how many samples came.
    pub fn peak(&self, now: u64, sample: f64, tau: Duration) {
        let (old, at) = self.stored();
        let new = if sample > old {
            sample
        } else {
            let d = decay(now.saturating_sub(at), tau);
            old * d + sample * (1.0 - d)
        };
        self.store(new, now);
    }

    /// A moving rate of a yes/no event (a failure): each sample moves the decayed
    /// estimate `weight` of the way to 0 or 1. The common case, no event and nothing
    /// remembered, writes nothing, so healthy traffic keeps the cache line shared.
    pub fn rate(&self, now: u64, happened: bool, weight: f64, tau: Duration) {
        let current = self.read(now, tau);
        if !happened && current == 0.0 {
            return;
        }
        let target = if happened { 1.0 } else { 0.0 };
        let new = current + weight * (target - current);
        // Below this it is noise; zero restores the write-free common case.
        let new = if new < 1e-3 { 0.0 } else { new };
        self.store(new, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    #[test]
    fn a_slower_sample_is_taken_at_once() {
        let e = Estimate::default();
        e.peak(S, 10.0, TAU);
        e.peak(S, 200.0, TAU);
        assert_eq!(e.read(S, TAU), 200.0);
    }

    #[test]
    fn a_faster_sample_moves_it_only_as_time_passes() {
        let e = Estimate::default();
        e.peak(S, 200.0, TAU);
        e.peak(S + MS, 1.0, TAU);
        assert!(e.read(S + MS, TAU) > 190.0);
    }

    #[test]
    fn with_no_samples_the_estimate_fades_towards_zero() {
        let e = Estimate::default();
        e.peak(S, 100.0, TAU);
        let later = e.read(S + 3 * 10 * S, TAU);
        assert!(later < 5.0 && later > 4.0, "{later}");
    }

    #[test]
    fn a_failure_rate_settles_near_the_share_of_failures() {
        let e = Estimate::default();
        // One failure in five, a millisecond apart: time barely decays it.
        for i in 0..2000u64 {
            e.rate(S + i * MS, i % 5 == 0, 0.05, TAU);
        }
        let r = e.read(S + 2000 * MS, TAU);
        assert!((0.12..0.3).contains(&r), "{r}");
    }

    #[test]
    fn successes_and_time_bring_a_failure_rate_back_to_zero() {
        let e = Estimate::default();
        e.rate(S, true, 0.5, TAU);
        assert_eq!(e.read(S, TAU), 0.5);
        assert!(e.read(S + 60 * S, TAU) < 0.01);
        for i in 0..200u64 {
            e.rate(S + i * MS, false, 0.05, TAU);
        }
        assert_eq!(e.read(S + 200 * MS, TAU), 0.0);
    }
}
