//! `round-robin`, `weighted-round-robin` and `failure-weighted-round-robin`: turns
//! taken in order, each replica getting as many turns per cycle as its weight.
//!
//! Interleaved weighted round-robin: a cycle of `W` turns (the sum of the weights)
//! is split into rounds; round `r` serves, in id order, every replica whose weight
//! is above `r`. So weights 3 and 1 give `a b a a`, not `a a a b`: a heavy replica's
//! turns are spread over the cycle instead of coming in a burst. The position in
//! the cycle comes from one shared counter, so no lock and no per-replica state:
//! the schedule is a function of the turn and the weights.

use std::sync::Arc;
use std::time::Instant;

use super::{nth_passing, passing};
use crate::backend::Backend;

/// The weight of a replica at full health under `failure-weighted-round-robin`.
const FULL: f64 = 10.0;

/// The backend whose turn `turn` is, among those that pass `ok`, each weighing
/// `weight` (at least 1).
pub fn weighted(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    turn: usize,
    weight: impl Fn(&Backend) -> u32,
) -> Option<usize> {
    let w = |i: usize| weight(&backends[i]).max(1) as usize;
    let (total, heaviest) = passing(backends, ok).fold((0, 0), |(t, h), i| (t + w(i), h.max(w(i))));
    if total == 0 {
        return None;
    }
    let mut at = turn % total;
    for round in 0..heaviest {
        let in_round = |b: &Backend| ok(b) && weight(b).max(1) as usize > round;
        let served = passing(backends, &in_round).count();
        if at < served {
            return nth_passing(backends, &in_round, at);
        }
        at -= served;
    }
    // Only if weights changed between the two passes: any passing one will do.
    passing(backends, ok).next()
}

/// A replica's weight under `failure-weighted-round-robin`: its declared weight
/// times 10 at full health, falling with the square of its recent failure rate's
/// complement, never below 1 (so a failing replica is still tried now and then,
/// and its recovery is seen).
pub fn failure_weight(b: &Backend, now: Instant) -> u32 {
    let health = 1.0 - b.error_rate(now);
    let w = f64::from(b.weight()) * FULL * health * health;
    (w.round() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::policy::testing::backends;

    fn cycle(set: &[Arc<Backend>], weights: &[u32], turns: usize) -> Vec<usize> {
        let weight = |b: &Backend| weights[b.id as usize - 1];
        (0..turns)
            .map(|t| weighted(set, &|_| true, t, weight).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_take_turns_in_id_order() {
        let set = backends(&[1, 2, 3]);
        assert_eq!(cycle(&set, &[1, 1, 1], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_heavier_replica_gets_its_turns_spread_over_the_cycle() {
        let set = backends(&[1, 2]);
        assert_eq!(cycle(&set, &[3, 1], 4), [0, 1, 0, 0]);
    }

    #[test]
    fn a_backend_that_does_not_pass_gets_no_turn() {
        let set = backends(&[1, 2, 3]);
        let turns: Vec<_> = (0..4)
            .map(|t| weighted(&set, &|b| b.id != 2, t, |_| 1).unwrap())
            .collect();
        assert_eq!(turns, [0, 2, 0, 2]);
        assert_eq!(weighted(&set, &|_| false, 0, |_| 1), None);
    }

    proptest! {
        #[test]
        fn over_one_cycle_each_replica_gets_exactly_its_weight(
            weights in proptest::collection::vec(1u32..=20, 1..8),
            start in 0usize..10_000,
        ) {
            let ids: Vec<u32> = (1..=weights.len() as u32).collect();
            let set = backends(&ids);
            let total: u32 = weights.iter().sum();
            let weight = |b: &Backend| weights[b.id as usize - 1];
            let mut got = vec![0u32; weights.len()];
            for t in start..start + total as usize {
                got[weighted(&set, &|_| true, t, weight).unwrap()] += 1;
            }
            prop_assert_eq!(got, weights);
        }
    }

    #[test]
    fn failures_lower_a_replica_weight_and_time_restores_it() {
        let set = backends(&[1]);
        let b = &set[0];
        let now = b.healthy_since + Duration::from_secs(1);
        assert_eq!(failure_weight(b, now), 10);
        for i in 0..100u32 {
            b.observe_response(if i % 5 == 0 { 500 } else { 200 }, Duration::ZERO, now);
        }
        let hurt = failure_weight(b, now);
        assert!((4..=8).contains(&hurt), "{hurt}");
        for _ in 0..200 {
            b.observe_response(500, Duration::ZERO, now);
        }
        assert_eq!(failure_weight(b, now), 1);
        assert_eq!(failure_weight(b, now + Duration::from_secs(120)), 10);
    }
}
