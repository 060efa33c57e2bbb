//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018):
//! a server may take a new request only while its load stays within
//! `ceil(c × (total + 1) / n)`; otherwise the request goes on to the scheme's next
//! candidate. No server then carries more than about `c` times the average, whatever
//! the hash does, and keys still move only as far as the bound forces them.
//!
//! At request time the load is each backend's live in-flight count
//! (`policy::hash::HashPicker::candidates`); in simulation it is the count of keys
//! assigned so far ([`assign`]).

use std::collections::HashMap;

use crate::backend::ServerId;
use crate::ring::Table;

/// The balance factor `c`, at least 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    factor: f64,
}

impl Bound {
    /// A bound of `factor` times the average; `None` unless `factor` is finite and
    /// at least 1, below which the caps could not hold every request.
    pub fn new(factor: f64) -> Option<Bound> {
        (factor.is_finite() && factor >= 1.0).then_some(Bound { factor })
    }

    /// The factor `c`.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The most load a server may reach when `total` requests are placed on
    /// `servers` servers and one more arrives: `ceil(c × (total + 1) / servers)`.
    /// Since `c >= 1` the caps add up to at least `total + 1`, so someone admits it.
    pub fn cap(&self, total: usize, servers: usize) -> usize {
        if servers == 0 {
            return 0;
        }
        (self.factor * (total + 1) as f64 / servers as f64).ceil() as usize
    }
}

/// Places `keys` one after the other, each on its first candidate in `table` whose
/// assigned count is under the cap: the simulation of bounded loads. Returns the
/// owner of each key, in order.
pub fn assign(table: &Table, bound: Bound, keys: impl IntoIterator<Item = u64>) -> Vec<ServerId> {
    let servers = table.servers();
    // By id in a map, not a vector indexed by id: ids may be as large as `u32::MAX`.
    let mut load: HashMap<ServerId, usize> = HashMap::new();
    let mut owners = Vec::new();
    // `total`: keys placed so far.
    for (total, key) in keys.into_iter().enumerate() {
        let cap = bound.cap(total, servers);
        let count =
            |id: ServerId, load: &HashMap<ServerId, usize>| load.get(&id).copied().unwrap_or(0);
        let Some(owner) = table
            .candidates(key)
            .find(|id| count(*id, &load) < cap)
            .or_else(|| table.owner(key))
        else {
            break;
        };
        *load.entry(owner).or_default() += 1;
        owners.push(owner);
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Geometry, Ring};
    use crate::scheme::by_name;
    use proptest::prelude::*;

    #[test]
    fn factors_below_one_are_refused() {
        assert!(Bound::new(0.9).is_none());
        assert!(Bound::new(f64::NAN).is_none());
        assert_eq!(Bound::new(1.25).map(|b| b.factor()), Some(1.25));
    }

    #[test]
    fn the_cap_is_c_times_the_average_after_this_request_rounded_up() {
        let b = Bound::new(1.25).unwrap();
        assert_eq!(b.cap(0, 3), 1); // 1.25 × 1 / 3 = 0.42 -> 1
        assert_eq!(b.cap(11, 3), 5); // 1.25 × 12 / 3 = 5
        assert_eq!(b.cap(12, 3), 6); // 1.25 × 13 / 3 = 5.42 -> 6
    }

    #[test]
    fn a_server_with_the_largest_id_costs_no_more_memory_than_server_one() {
        // Seen in `make fuzz` (ring_ops): loads were a vector indexed by id, so a run
        // with id 65,280,000 took 528 MB, and id 4,294,967,295 would need 32 GiB.
        let mut ring = Ring::new(Geometry::DEFAULT, by_name("mixed").unwrap());
        ring.add(1).unwrap();
        ring.add(u32::MAX).unwrap();
        let owners = assign(&ring.table(|_| true), Bound::new(1.0).unwrap(), 0..100);
        assert_eq!(owners.len(), 100);
        assert_eq!(owners.iter().filter(|o| **o == u32::MAX).count(), 50);
    }

    fn table(scheme: &str, n: u32) -> Table {
        let mut ring = Ring::new(Geometry::DEFAULT, by_name(scheme).unwrap());
        for id in 1..=n {
            ring.add(id).unwrap();
        }
        ring.table(|_| true)
    }

    proptest! {
        #[test]
        fn no_server_ends_above_the_cap_even_on_the_skewed_quadratic_ring(
            n in 1u32..10,
            seed in any::<u64>(),
        ) {
            let b = Bound::new(1.25).unwrap();
            let keys: Vec<u64> = (0..2000).map(|i| seed.wrapping_add(i * 7919)).collect();
            let owners = assign(&table("quadratic", n), b, keys);
            for id in 1..=n {
                let got = owners.iter().filter(|o| **o == id).count();
                prop_assert!(got <= b.cap(owners.len() - 1, n as usize), "server {} has {}", id, got);
            }
        }

        #[test]
        fn the_same_keys_in_the_same_order_land_the_same_way(n in 1u32..8, seed in any::<u64>()) {
            let b = Bound::new(1.1).unwrap();
            let keys: Vec<u64> = (0..500).map(|i| seed ^ i).collect();
            let t = table("mixed", n);
            prop_assert_eq!(assign(&t, b, keys.clone()), assign(&t, b, keys));
        }
    }
}
