//! Ring-only simulations: the pure routing code of the balancer, no network. Fixed
//! seeds (or every 6-digit id) make them repeat exactly; the report labels them so.

use load_balancer::backend::ServerId;
use load_balancer::ring::{Geometry, Ring, Table};
use load_balancer::scheme::{bounded, by_name};
use rand::{Rng, SeedableRng};

use crate::results::{SimBalance, SimMovement};

/// A scheme as the analysis runs it: a `--hash` name and maybe a balance factor.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hash: &'static str,
    pub balance_factor: Option<f64>,
}

impl Config {
    /// The label used in results and charts.
    pub fn label(&self) -> String {
        match self.balance_factor {
            Some(_) => format!("{}+bounded", self.hash),
            None => self.hash.to_string(),
        }
    }
}

/// The configurations the analysis compares, the design's first.
pub fn configs() -> Vec<Config> {
    let plain = |hash| Config {
        hash,
        balance_factor: None,
    };
    let bounded = |hash| Config {
        hash,
        balance_factor: Some(1.25),
    };
    vec![
        plain("quadratic"),
        plain("mixed"),
        plain("maglev"),
        plain("rendezvous"),
        bounded("quadratic"),
        bounded("mixed"),
    ]
}

/// The table over replicas `ids`, as the balancer would build it.
pub fn table(hash: &str, ids: impl IntoIterator<Item = ServerId>) -> Table {
    let mut ring = Ring::new(Geometry::DEFAULT, by_name(hash).expect("known scheme"));
    for id in ids {
        ring.add(id).expect("fits");
    }
    ring.table(|_| true)
}

/// The owner of each key: the first candidate, or with bounded loads the first
/// under the cap counting keys assigned so far in this order.
pub fn owners(c: &Config, t: &Table, keys: &[u64]) -> Vec<ServerId> {
    match c.balance_factor.and_then(bounded::Bound::new) {
        Some(b) => bounded::assign(t, b, keys.iter().copied()),
        None => keys
            .iter()
            .map(|k| t.owner(*k).expect("non-empty"))
            .collect(),
    }
}

/// Max/mean at `n` replicas for `requests` random 6-digit ids, median over `seeds`.
pub fn balance(c: &Config, n: usize, requests: usize, seeds: u64) -> SimBalance {
    let t = table(c.hash, 1..=n as ServerId);
    let mut ratios: Vec<f64> = (1..=seeds)
        .map(|seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let keys: Vec<u64> = (0..requests)
                .map(|_| rng.gen_range(100_000..1_000_000))
                .collect();
            let mut count = vec![0usize; n + 1];
            for o in owners(c, &t, &keys) {
                count[o as usize] += 1;
            }
            *count.iter().max().expect("n >= 1") as f64 * n as f64 / requests as f64
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    SimBalance {
        scheme: c.label(),
        n,
        seeds: seeds as usize,
        median_max_over_mean: ratios[ratios.len() / 2],
    }
}

/// Key movement around `n` replicas over every 6-digit id.
pub fn movement(c: &Config, n: usize) -> SimMovement {
    let keys: Vec<u64> = (100_000..1_000_000).collect();
    let fraction = |a: &[ServerId], b: &[ServerId]| {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / keys.len() as f64
    };
    let small = owners(c, &table(c.hash, 1..=n as ServerId), &keys);
    let big = owners(c, &table(c.hash, 1..=n as ServerId + 1), &keys);
    let without_first = owners(c, &table(c.hash, 2..=n as ServerId + 1), &keys);
    SimMovement {
        scheme: c.label(),
        n,
        added: fraction(&small, &big),
        removed: fraction(&big, &without_first),
        ideal: 1.0 / (n as f64 + 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_exactly_the_new_replicas_keys() {
        let m = movement(&configs()[3], 3);
        assert!((m.added - m.ideal).abs() < 0.01, "{m:?}");
    }

    #[test]
    fn the_quadratic_ring_is_skewed_and_a_bound_of_one_and_a_quarter_holds() {
        let c = configs();
        assert!(balance(&c[0], 3, 10_000, 3).median_max_over_mean > 1.5);
        // The cap rounds up: ceil(1.25 × 10,000 / 3) = 4,167 is 1.2501 × the mean.
        assert!(balance(&c[4], 3, 10_000, 3).median_max_over_mean <= 1.2501 + 1e-9);
    }
}
