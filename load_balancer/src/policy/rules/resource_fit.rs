//! `resource-fit`: dominant-resource matching. A request says what it needs
//! (`X-Demand: cpu=2,storage=1`); each replica declares what it has
//! (`X-Capacity` on its heartbeat). A request's dominant share on a replica is the
//! largest fraction of any one resource it would take there (Ghodsi et al.'s
//! dominant resource fairness); the replica where that share, times its requests
//! in flight + 1, is lowest goes first, among those the demand fits (every share
//! at most 1), else among all.
//!
//! A replica that declares nothing counts as one unit of every resource; a request
//! that demands nothing goes to the replica with the fewest requests in flight.

use std::sync::Arc;

use super::least;
use crate::backend::{Backend, Resources};

/// The largest fraction of any one of its capacities that `demand` takes.
pub fn dominant_share(demand: &Resources, capacity: &Resources) -> f64 {
    demand
        .iter()
        .map(|(name, amount)| amount / capacity.get(name).unwrap_or(1.0))
        .fold(0.0, f64::max)
}

/// The passing backend that fits `demand` best, relative to its load.
pub fn choose(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
    demand: Option<&Resources>,
) -> Option<usize> {
    let Some(demand) = demand.filter(|d| !d.is_empty()) else {
        return least::choose(backends, ok, draw, Backend::load);
    };
    let share = |b: &Backend| dominant_share(demand, &b.capacity());
    let cost = |b: &Backend| share(b) * (b.load() + 1) as f64;
    let fits = |b: &Backend| ok(b) && share(b) <= 1.0;
    least::choose(backends, &fits, draw, cost).or_else(|| least::choose(backends, ok, draw, cost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::backends;

    fn res(s: &str) -> Resources {
        s.parse().unwrap()
    }

    fn declared(caps: &[&str]) -> Vec<Arc<Backend>> {
        let ids: Vec<u32> = (1..=caps.len() as u32).collect();
        let set = backends(&ids);
        for (b, c) in set.iter().zip(caps) {
            b.declare(1, res(c));
        }
        set
    }

    #[test]
    fn a_cpu_heavy_demand_goes_to_the_cpu_rich_replica_and_storage_to_storage() {
        let set = declared(&["cpu=8,storage=1", "cpu=1,storage=8"]);
        let pick = |d: &str| choose(&set, &|_| true, 0, Some(&res(d))).map(|i| set[i].id);
        assert_eq!(pick("cpu=4,storage=0.5"), Some(1));
        assert_eq!(pick("cpu=0.5,storage=4"), Some(2));
    }

    #[test]
    fn a_replica_the_demand_does_not_fit_goes_first_only_if_none_fits() {
        let set = declared(&["cpu=1", "cpu=4"]);
        let _busy: Vec<_> = (0..10).map(|_| set[1].track()).collect();
        // Replica 2 is busy, but a demand of 2 cpus does not fit replica 1.
        let pick = |d: &str| choose(&set, &|_| true, 0, Some(&res(d))).map(|i| set[i].id);
        assert_eq!(pick("cpu=2"), Some(2));
        assert_eq!(
            pick("cpu=9"),
            Some(1),
            "neither fits: the least loaded share"
        );
    }

    #[test]
    fn load_spreads_in_proportion_to_capacity() {
        let set = declared(&["cpu=4", "cpu=1"]);
        let demand = res("cpu=1");
        let mut held = Vec::new();
        for _ in 0..10 {
            let i = choose(&set, &|_| true, 0, Some(&demand)).unwrap();
            held.push(set[i].track());
        }
        assert_eq!((set[0].load(), set[1].load()), (8, 2));
    }

    #[test]
    fn no_demand_means_fewest_in_flight() {
        let set = declared(&["cpu=8", "cpu=1"]);
        let _busy = set[0].track();
        assert_eq!(choose(&set, &|_| true, 0, None), Some(1));
    }
}
