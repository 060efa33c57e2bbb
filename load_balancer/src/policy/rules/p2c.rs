//! `p2c-ewma` and `health-score`: the power of two choices. Two distinct replicas
//! are drawn at random and the one with the lower cost goes first, as tower's
//! `balance::p2c` and Envoy's least_request do.
//!
//! Two random choices avoid both herding (every balancer thread rushing to the one
//! replica that looks best, since figures lag) and a full scan, and still never
//! put the worst replica first: the pair is distinct, and it loses to the other.
//! For `p2c-ewma` the cost is tower's `PeakEwma`: the
//! decayed peak-EWMA latency times (requests in flight + 1); for `health-score`
//! it is the health score, higher being better.

use std::sync::Arc;
use std::time::Instant;

use super::{nth_passing, passing};
use crate::backend::Backend;

/// Of two passing backends drawn from `draw`, the one of lower `cost`; on a tie,
/// the one with fewer requests in flight, then the first drawn.
pub fn choose(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
    cost: impl Fn(&Backend) -> f64,
) -> Option<usize> {
    let n = passing(backends, ok).count() as u64;
    match n {
        0 => return None,
        1 => return nth_passing(backends, ok, 0),
        _ => {}
    }
    let a = draw % n;
    let b = (a + 1 + (draw >> 32) % (n - 1)) % n;
    let a = nth_passing(backends, ok, a as usize)?;
    let b = nth_passing(backends, ok, b as usize)?;
    let key = |i: usize| (cost(&backends[i]), backends[i].load());
    Some(if key(b) < key(a) { b } else { a })
}

/// Tower's `PeakEwma` cost: the latency estimate at `now` times (in flight + 1).
/// A replica with no sample yet costs nothing, so it is tried and measured.
pub fn ewma_cost(b: &Backend, now: Instant) -> f64 {
    b.latency(now).as_nanos() as f64 * (b.load() + 1) as f64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::testing::backends;

    const MS: Duration = Duration::from_millis(1);

    fn draws() -> impl Iterator<Item = u64> {
        (0..2000u64).map(|d| d.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn share_of(set: &[Arc<Backend>], id: u32, now: Instant) -> f64 {
        let picks = draws()
            .filter(|d| {
                let i = choose(set, &|_| true, *d, |b| ewma_cost(b, now)).unwrap();
                set[i].id == id
            })
            .count();
        picks as f64 / 2000.0
    }

    #[test]
    fn the_two_choices_are_distinct_so_the_worst_is_never_first() {
        let set = backends(&[1, 2, 3, 4, 5]);
        let now = set[0].healthy_since + Duration::from_secs(1);
        for (b, t) in set.iter().zip([5, 6, 7, 8, 500]) {
            b.observe_response(200, t * MS, now);
        }
        assert_eq!(share_of(&set, 5, now), 0.0);
    }

    #[test]
    fn traffic_moves_off_a_replica_whose_latency_rises_and_back_when_it_recovers() {
        let set = backends(&[1, 2, 3]);
        let t0 = set[0].healthy_since + Duration::from_secs(1);
        for b in &set {
            b.observe_response(200, 5 * MS, t0);
        }
        let even = share_of(&set, 2, t0);
        assert!((0.25..0.42).contains(&even), "{even}");
        // Replica 2 slows down: one slow answer is enough to lose its traffic, even
        // while the others are busier.
        set[1].observe_response(200, 500 * MS, t0);
        assert!(share_of(&set, 2, t0) < 0.01);
        let busy: Vec<_> = [&set[0], &set[2]].iter().map(|b| b.track()).collect();
        assert!(share_of(&set, 2, t0) < 0.01);
        // It recovers: its estimate fades, its answers are fast again, and it takes
        // traffic whenever the others are busier (every pair it is drawn in).
        let later = t0 + Duration::from_secs(60);
        for b in &set {
            b.observe_response(200, 5 * MS, later);
        }
        let back = share_of(&set, 2, later);
        assert!((0.55..0.8).contains(&back), "{back}");
        drop(busy);
    }

    #[test]
    fn a_failing_replica_fast_errors_do_not_attract_traffic() {
        let set = backends(&[1, 2, 3]);
        let now = set[0].healthy_since + Duration::from_secs(1);
        for i in 0..50u32 {
            set[0].observe_response(200, 20 * MS, now + i * MS);
            set[1].observe_response(200, 20 * MS, now + i * MS);
            // Replica 3 answers in no time, but one answer in five is a 500.
            let status = if i % 5 == 0 { 500 } else { 200 };
            set[2].observe_response(status, Duration::ZERO, now + i * MS);
        }
        let end = now + 50 * MS;
        assert!(share_of(&set, 3, end) < 0.01);
        // The health score sees it too.
        let by_score = draws()
            .filter(|d| choose(&set, &|_| true, *d, |b| -b.score(end)) == Some(2))
            .count();
        assert_eq!(by_score, 0);
    }

    #[test]
    fn more_in_flight_makes_a_replica_costlier() {
        let set = backends(&[1, 2]);
        let now = set[0].healthy_since + Duration::from_secs(1);
        for b in &set {
            b.observe_response(200, 10 * MS, now);
        }
        let _held: Vec<_> = (0..3).map(|_| set[0].track()).collect();
        assert_eq!(share_of(&set, 1, now), 0.0);
    }
}
