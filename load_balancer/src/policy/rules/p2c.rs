//! `p2c-ewma` and `health-score`: the power of two choices. Two distinct replicas
//! are drawn at random and the one with the lower cost goes first, as tower's
//! `balance::p2c` and Envoy's least_request do.
//!
//! Two random choices avoid both herding (every balancer thread rushing to the one
//! replica that looks best, since figures lag) and a full scan, and still never
//! put the worst replica first: the pair is distinct, and it loses to the other.
//! For `p2c-ewma` the cost is tower's `PeakEwma`: the
//! decayed peak-EWMA latency times (requests in flight + 1), with an unmeasured
//! replica taken to be as fast as its rival (tower's `default_rtt`, made relative);
//! for `health-score` it is the health score, higher being better.

use std::sync::Arc;
use std::time::Instant;

use super::{nth_passing, passing};
use crate::backend::Backend;

/// Two distinct passing backends drawn from `draw`, or the only one.
fn pair(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
) -> Option<(usize, Option<usize>)> {
    let n = passing(backends, ok).count() as u64;
    match n {
        0 => None,
        1 => Some((nth_passing(backends, ok, 0)?, None)),
        _ => {
            let a = draw % n;
            let b = (a + 1 + (draw >> 32) % (n - 1)) % n;
            let a = nth_passing(backends, ok, a as usize)?;
            Some((a, nth_passing(backends, ok, b as usize)))
        }
    }
}

/// `b` if it costs less than `a` (on a tie, has fewer requests in flight), else `a`.
fn cheaper(backends: &[Arc<Backend>], a: usize, b: usize, cost_a: f64, cost_b: f64) -> usize {
    let key = |i: usize, c: f64| (c, backends[i].load());
    if key(b, cost_b) < key(a, cost_a) {
        b
    } else {
        a
    }
}

/// Of two passing backends drawn from `draw`, the one of lower `cost`; on a tie,
/// the one with fewer requests in flight, then the first drawn.
pub fn choose(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
    cost: impl Fn(&Backend) -> f64,
) -> Option<usize> {
    match pair(backends, ok, draw)? {
        (a, None) => Some(a),
        (a, Some(b)) => Some(cheaper(
            backends,
            a,
            b,
            cost(&backends[a]),
            cost(&backends[b]),
        )),
    }
}

/// `p2c-ewma`: of two passing backends, the lower tower `PeakEwma` cost, the
/// latency estimate at `now` times (in flight + 1). A replica not measured yet is
/// taken to be as fast as the other one, so that its requests in flight still count:
/// priced at zero, a new replica that is slow would take every request drawn with
/// it until its first answer came back.
pub fn choose_ewma(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
    now: Instant,
) -> Option<usize> {
    let (a, b) = pair(backends, ok, draw)?;
    let Some(b) = b else { return Some(a) };
    let latency = |i: usize| backends[i].latency(now).as_nanos() as f64;
    let (la, lb) = (latency(a), latency(b));
    let (la, lb) = match (la == 0.0, lb == 0.0) {
        (true, false) => (lb, lb),
        (false, true) => (la, la),
        // Neither measured: fewer in flight wins.
        _ => (la.max(1.0), lb.max(1.0)),
    };
    let cost = |i: usize, l: f64| l * (backends[i].load() + 1) as f64;
    Some(cheaper(backends, a, b, cost(a, la), cost(b, lb)))
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
                let i = choose_ewma(set, &|_| true, *d, now).unwrap();
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
    fn a_replica_not_measured_yet_still_pays_for_its_requests_in_flight() {
        let set = backends(&[1, 2]);
        let now = set[0].healthy_since + Duration::from_secs(1);
        set[0].observe_response(200, 10 * MS, now);
        // Replica 2 has answered nothing yet but holds 3 requests.
        let _held: Vec<_> = (0..3).map(|_| set[1].track()).collect();
        assert_eq!(share_of(&set, 2, now), 0.0);
        // With nothing measured on either side, fewer in flight wins.
        let fresh = backends(&[1, 2]);
        let _one = fresh[0].track();
        assert_eq!(share_of(&fresh, 1, now), 0.0);
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
