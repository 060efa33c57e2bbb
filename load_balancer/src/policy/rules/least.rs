//! `least-connections`, `least-load` and `response-time`: the replica with the
//! lowest figure, each a different figure (requests in flight through this
//! balancer; the load the replica reports, plus what was sent to it since; its
//! peak-EWMA response time).
//!
//! A full scan, not a sample: the promise is that least-connections never
//! picks a replica with more in flight than another. Ties are broken by where the
//! scan starts, drawn per request, so equal replicas share traffic instead of the
//! first one taking it all.

use std::sync::Arc;

use crate::backend::Backend;

/// The passing backend with the lowest `figure`; among equals, the first after a
/// position drawn from `draw`.
pub fn choose<K: PartialOrd>(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
    figure: impl Fn(&Backend) -> K,
) -> Option<usize> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    let start = (draw % n as u64) as usize;
    let mut best: Option<(usize, K)> = None;
    for step in 0..n {
        let i = (start + step) % n;
        let b = &backends[i];
        if !ok(b) {
            continue;
        }
        let k = figure(b);
        if best.as_ref().is_none_or(|(_, low)| k < *low) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::policy::testing::backends;

    proptest! {
        #[test]
        fn least_connections_never_picks_one_with_more_in_flight_than_another(
            loads in proptest::collection::vec(0usize..6, 1..8),
            draw in any::<u64>(),
        ) {
            let ids: Vec<u32> = (1..=loads.len() as u32).collect();
            let set = backends(&ids);
            let _held: Vec<_> = set
                .iter()
                .zip(&loads)
                .flat_map(|(b, n)| (0..*n).map(move |_| b.track()))
                .collect();
            let i = choose(&set, &|_| true, draw, |b| b.load()).unwrap();
            prop_assert_eq!(loads[i], *loads.iter().min().unwrap());
        }
    }

    #[test]
    fn equal_replicas_share_the_first_place() {
        let set = backends(&[1, 2, 3]);
        let mut seen = [false; 3];
        for draw in 0..3 {
            seen[choose(&set, &|_| true, draw, |b| b.load()).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn least_load_follows_what_replicas_report_and_response_time_their_latency() {
        let set = backends(&[1, 2, 3]);
        set[0].report(9, true);
        set[1].report(2, true);
        set[2].report(5, true);
        let by_report = |b: &Backend| (b.estimated_load(), b.load());
        assert_eq!(choose(&set, &|_| true, 7, by_report), Some(1));
        // What was sent since the reports counts: 4 more to replica 2 makes it 6.
        let _sent: Vec<_> = (0..4).map(|_| set[1].track()).collect();
        assert_eq!(choose(&set, &|_| true, 7, by_report), Some(2));
        let now = set[0].healthy_since + Duration::from_secs(1);
        let ms = Duration::from_millis(1);
        for (b, t) in set.iter().zip([30, 50, 10]) {
            b.observe_response(200, t * ms, now);
        }
        assert_eq!(choose(&set, &|_| true, 7, |b| b.latency(now)), Some(2));
        assert_eq!(choose(&set, &|b| b.id != 3, 7, |b| b.latency(now)), Some(0));
    }
}
