//! Rendezvous (highest random weight) hashing, Thaler and Ravishankar 1998: every
//! server gets a pseudo-random weight per request id, and the heaviest serves it.
//! Removing a server moves only its own keys, adding one takes only keys it now
//! outweighs: movement is minimal by construction. A lookup costs O(N).

use super::mixed::{mix64, request_hash, server_hash, Mixed};
use super::{HashScheme, SelectorKind};
use crate::backend::ServerId;

/// Highest random weight. Virtual nodes are still placed (by [`Mixed`]) so that the
/// ring's membership and capacity rules hold, but lookups never read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendezvous;

impl HashScheme for Rendezvous {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    fn virtual_node_slot(&self, server_id: u32, j: u32, m: usize) -> usize {
        Mixed.virtual_node_slot(server_id, j, m)
    }

    fn request_slot(&self, request_id: u64, m: usize) -> usize {
        Mixed.request_slot(request_id, m)
    }

    fn selector(&self) -> SelectorKind {
        SelectorKind::Rendezvous
    }
}

/// The weight of `server` for a request whose id hashed to `request_hash`. Ties are
/// broken by id in [`Heaviest`], so the order is total.
pub fn weight(request_hash: u64, server: ServerId) -> u64 {
    mix64(request_hash ^ server_hash(server, 0))
}

/// Servers by decreasing weight for one request, found by repeated O(N) scans so that
/// nothing is allocated: the first costs one scan, which is all most requests need.
#[derive(Debug, Clone)]
pub struct Heaviest<'a> {
    servers: &'a [ServerId],
    hash: u64,
    /// The last (weight, id) yielded: the next is the heaviest strictly below it.
    below: Option<(u64, ServerId)>,
}

impl<'a> Heaviest<'a> {
    /// The servers for request id `request_id`, heaviest first.
    pub fn new(servers: &'a [ServerId], request_id: u64) -> Self {
        Heaviest {
            servers,
            hash: request_hash(request_id),
            below: None,
        }
    }
}

impl Iterator for Heaviest<'_> {
    type Item = ServerId;

    fn next(&mut self) -> Option<ServerId> {
        let best = self
            .servers
            .iter()
            .map(|&id| (weight(self.hash, id), id))
            .filter(|key| self.below.is_none_or(|b| *key < b))
            .max()?;
        self.below = Some(best);
        Some(best.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_heaviest_server_comes_first() {
        let servers = [1, 2, 3];
        let first = Heaviest::new(&servers, 42).next().unwrap();
        let h = request_hash(42);
        assert!(servers.iter().all(|&s| weight(h, s) <= weight(h, first)));
    }

    proptest! {
        #[test]
        fn every_server_comes_exactly_once(
            ids in proptest::collection::btree_set(1u32..500, 0..56),
            request in any::<u64>(),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let mut got: Vec<_> = Heaviest::new(&ids, request).collect();
            got.sort_unstable();
            prop_assert_eq!(got, ids);
        }

        #[test]
        fn removing_a_server_keeps_the_order_of_the_others(
            ids in proptest::collection::btree_set(1u32..500, 2..30),
            request in any::<u64>(),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let all: Vec<_> = Heaviest::new(&ids, request).collect();
            let rest: Vec<_> = ids.iter().copied().filter(|id| *id != all[0]).collect();
            let without: Vec<_> = Heaviest::new(&rest, request).collect();
            prop_assert_eq!(&all[1..], &without[..]);
        }
    }
}
