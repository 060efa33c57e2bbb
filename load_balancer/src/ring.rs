//! The consistent-hash ring: placement of virtual nodes, and the lookup table built from it.
//!
//! Two types with two jobs. [`Ring`] is the mutable placement: which slot each
//! server's virtual nodes hold, changed one server at a time in O(M). [`Table`] is an
//! immutable view of a ring restricted to the servers that may take traffic, built in
//! O(M) and answering "who serves slot s, and who after them" in O(1) per candidate.
//!
//! A server keeps its slots while it is down (the table just leaves it out), so a
//! replica that is respawned with the same id lands exactly where it was.

use std::sync::Arc;

use crate::scheme::bounded::Bound;
use crate::scheme::{HashScheme, SelectorKind};
pub use crate::table::{Candidates, Table};

use crate::backend::ServerId;

/// Why the ring refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Every slot that a server could need is taken.
    #[error("the ring is full: it holds at most {cap} replicas ({slots} slots, {per_server} virtual nodes each)")]
    Full {
        cap: usize,
        slots: usize,
        per_server: usize,
    },
    /// The id is on the ring already.
    #[error("server id {0} is already on the ring")]
    AlreadyPresent(ServerId),
    /// Ids start at 1.
    #[error("server id 0 is not valid: ids start at 1")]
    ZeroId,
    /// Given slots that are not one free slot per virtual node.
    #[error("server id {0} cannot be placed on the slots given: one free slot per virtual node is needed")]
    Misplaced(ServerId),
}

/// Ring geometry: `m` slots, `k` virtual nodes per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub slots: usize,
    pub virtual_nodes: usize,
}

impl Geometry {
    /// The design's ring: 512 slots, 9 virtual nodes.
    pub const DEFAULT: Geometry = Geometry {
        slots: 512,
        virtual_nodes: 9,
    };

    /// How many servers fit: `floor(M / K)`.
    pub fn capacity(&self) -> usize {
        self.slots / self.virtual_nodes
    }
}

/// The placement of every server's virtual nodes on `M` slots.
#[derive(Debug, Clone)]
pub struct Ring {
    geometry: Geometry,
    scheme: Arc<dyn HashScheme>,
    slots: Vec<Option<ServerId>>,
    servers: usize,
    bound: Option<Bound>,
}

impl Ring {
    /// An empty ring.
    ///
    /// # Panics
    /// If the geometry has no slots or no virtual nodes, which no configuration allows.
    pub fn new(geometry: Geometry, scheme: Arc<dyn HashScheme>) -> Self {
        assert!(geometry.slots > 0 && geometry.virtual_nodes > 0);
        assert!(geometry.slots <= u32::MAX as usize);
        Ring {
            geometry,
            scheme,
            slots: vec![None; geometry.slots],
            servers: 0,
            bound: None,
        }
    }

    /// The same ring, whose tables apply bounded loads (`Some`) or not. Kept on the
    /// ring so that the registry, which only calls [`Ring::table`], need not know.
    pub fn with_bound(mut self, bound: Option<Bound>) -> Self {
        self.bound = bound;
        self
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The hash scheme in use.
    pub fn scheme(&self) -> &Arc<dyn HashScheme> {
        &self.scheme
    }

    /// How many servers hold slots.
    pub fn len(&self) -> usize {
        self.servers
    }

    /// Whether no server holds a slot.
    pub fn is_empty(&self) -> bool {
        self.servers == 0
    }

    /// Whether `id` holds slots.
    pub fn contains(&self, id: ServerId) -> bool {
        self.slots.contains(&Some(id))
    }

    /// The owner of each slot, for inspection and tests.
    pub fn slots(&self) -> &[Option<ServerId>] {
        &self.slots
    }

    /// Places the `K` virtual nodes of `id`, each at its scheme slot or, when that is
    /// taken, the next free slot clockwise. Existing placements never move, so only
    /// keys that now belong to `id` change owner.
    pub fn add(&mut self, id: ServerId) -> Result<(), RingError> {
        if id == 0 {
            return Err(RingError::ZeroId);
        }
        if self.contains(id) {
            return Err(RingError::AlreadyPresent(id));
        }
        let g = self.geometry;
        if self.servers >= g.capacity() {
            return Err(RingError::Full {
                cap: g.capacity(),
                slots: g.slots,
                per_server: g.virtual_nodes,
            });
        }
        for j in 0..g.virtual_nodes as u32 {
            let mut slot = self.scheme.virtual_node_slot(id, j, g.slots);
            // Capacity guarantees at least K free slots, so this loop ends.
            while self.slots[slot].is_some() {
                slot = (slot + 1) % g.slots;
            }
            self.slots[slot] = Some(id);
        }
        self.servers += 1;
        Ok(())
    }

    /// Places `id`'s virtual nodes on exactly `slots`, as another ring placed them
    /// (a cluster's leader), so that both rings agree whatever order each heard of
    /// their servers in. Refused, changing nothing, unless there is one slot per
    /// virtual node, each on the ring and free.
    pub fn place(&mut self, id: ServerId, slots: &[usize]) -> Result<(), RingError> {
        if id == 0 {
            return Err(RingError::ZeroId);
        }
        if self.contains(id) {
            return Err(RingError::AlreadyPresent(id));
        }
        let mut distinct = slots.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let fits = distinct.len() == self.geometry.virtual_nodes
            && distinct.len() == slots.len()
            && distinct
                .iter()
                .all(|s| self.slots.get(*s).is_some_and(Option::is_none));
        if !fits || self.servers >= self.geometry.capacity() {
            return Err(RingError::Misplaced(id));
        }
        for s in distinct {
            self.slots[s] = Some(id);
        }
        self.servers += 1;
        Ok(())
    }

    /// The slots of `id`'s virtual nodes, in increasing order.
    pub fn slots_of(&self, id: ServerId) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|s| self.slots[*s] == Some(id))
            .collect()
    }

    /// Frees every slot of `id`. Returns whether it was on the ring.
    pub fn remove(&mut self, id: ServerId) -> bool {
        let mut found = false;
        for slot in self.slots.iter_mut().filter(|s| **s == Some(id)) {
            *slot = None;
            found = true;
        }
        if found {
            self.servers -= 1;
        }
        found
    }

    /// A lookup table over the servers for which `routable` is true, of the kind the
    /// scheme asks for.
    pub fn table(&self, routable: impl Fn(ServerId) -> bool) -> Table {
        let occupied = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, owner)| owner.filter(|id| routable(*id)).map(|id| (slot, id)));
        let (scheme, m) = (self.scheme.clone(), self.geometry.slots);
        let table = match self.scheme.selector() {
            SelectorKind::Ring => Table::ring(scheme, m, occupied),
            SelectorKind::Maglev => {
                Table::maglev(scheme, m, &occupied.map(|(_, id)| id).collect::<Vec<_>>())
            }
            SelectorKind::Rendezvous => {
                Table::rendezvous(scheme, m, &occupied.map(|(_, id)| id).collect::<Vec<_>>())
            }
        };
        table.with_bound(self.bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Quadratic;
    use proptest::prelude::*;

    fn ring() -> Ring {
        Ring::new(Geometry::DEFAULT, Arc::new(Quadratic))
    }

    fn ring_with(ids: &[ServerId]) -> Ring {
        let mut r = ring();
        for id in ids {
            r.add(*id).unwrap();
        }
        r
    }

    /// The owner by the definition: walk clockwise from the hash slot.
    fn owner_by_walking(r: &Ring, request_id: u64) -> Option<ServerId> {
        let m = r.geometry().slots;
        let start = r.scheme().request_slot(request_id, m);
        (0..m).find_map(|o| r.slots()[(start + o) % m])
    }

    #[test]
    fn every_virtual_node_of_every_server_is_placed() {
        let r = ring_with(&[1, 2, 3]);
        for id in 1..=3 {
            assert_eq!(r.slots().iter().filter(|s| **s == Some(id)).count(), 9);
        }
    }

    #[test]
    fn server_one_sits_on_its_hand_computed_slots() {
        // Φ(1, j) = 26 + j² + 2j for j = 0..8: no collisions among themselves.
        let r = ring_with(&[1]);
        let expected = [26, 29, 34, 41, 50, 61, 74, 89, 106];
        for slot in expected {
            assert_eq!(r.slots()[slot], Some(1), "slot {slot}");
        }
    }

    #[test]
    fn a_taken_slot_is_resolved_by_the_next_free_slot_clockwise() {
        // Φ(1, 0) = 26 and Φ(1, 1) = 29; server 511 has Φ(511, 0) = 1 + 25 = 26 too.
        let r = ring_with(&[1, 511]);
        assert_eq!(r.slots()[26], Some(1));
        assert_eq!(r.slots()[27], Some(511));
    }

    #[test]
    fn the_ring_refuses_the_server_that_does_not_fit() {
        let mut r = ring();
        for id in 1..=56 {
            r.add(id).unwrap();
        }
        assert_eq!(
            r.add(57),
            Err(RingError::Full {
                cap: 56,
                slots: 512,
                per_server: 9
            })
        );
        assert_eq!(r.len(), 56);
    }

    #[test]
    fn a_server_cannot_be_added_twice_or_with_id_zero() {
        let mut r = ring_with(&[4]);
        assert_eq!(r.add(4), Err(RingError::AlreadyPresent(4)));
        assert_eq!(r.add(0), Err(RingError::ZeroId));
    }

    #[test]
    fn an_empty_table_has_no_candidates() {
        let t = ring().table(|_| true);
        assert!(t.is_empty());
        assert_eq!(t.candidates(42).count(), 0);
    }

    #[test]
    fn a_request_goes_to_the_first_server_clockwise_of_its_hash() {
        let r = ring_with(&[1]);
        // H(0) = 17; the first slot of server 1 at or after 17 is 26.
        assert_eq!(r.table(|_| true).owner(0), Some(1));
        let r = ring_with(&[1, 2]);
        // Φ(2, 0) = 29 collides with Φ(1, 1) = 29 and probes to 30; H(0) = 17 -> 26 -> 1.
        assert_eq!(r.slots()[30], Some(2));
        assert_eq!(r.table(|_| true).owner(0), Some(1));
        // Only server 2 routable: slot 17 goes to its first slot after, 30.
        assert_eq!(r.table(|id| id == 2).owner(0), Some(2));
    }

    #[test]
    fn a_lookup_past_the_last_slot_wraps_to_the_first() {
        let r = ring_with(&[1]);
        let t = r.table(|_| true);
        assert_eq!(t.candidates_from_slot(107).next(), Some(1));
        assert_eq!(t.candidates_from_slot(511).next(), Some(1));
    }

    proptest! {
        #[test]
        fn the_table_agrees_with_a_clockwise_walk(
            ids in proptest::collection::btree_set(1u32..200, 1..20),
            request in any::<u64>(),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let r = ring_with(&ids);
            prop_assert_eq!(r.table(|_| true).owner(request), owner_by_walking(&r, request));
        }

        #[test]
        fn candidates_are_distinct_and_cover_every_routable_server(
            ids in proptest::collection::btree_set(1u32..500, 1..56),
            slot in 0usize..512,
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let r = ring_with(&ids);
            let got: Vec<_> = r.table(|_| true).candidates_from_slot(slot).collect();
            let mut sorted = got.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), got.len(), "duplicates in {:?}", got);
            prop_assert_eq!(sorted, ids);
        }

        #[test]
        fn removing_a_server_restores_the_ring_exactly(
            ids in proptest::collection::btree_set(1u32..300, 0..40),
            extra in 300u32..400,
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let before = ring_with(&ids);
            let mut after = before.clone();
            after.add(extra).unwrap();
            prop_assert!(after.remove(extra));
            prop_assert_eq!(before.slots(), after.slots());
            prop_assert_eq!(before.len(), after.len());
        }

        #[test]
        fn adding_a_server_only_moves_keys_to_it(
            ids in proptest::collection::btree_set(1u32..300, 1..40),
            extra in 300u32..400,
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let before = ring_with(&ids);
            let mut after = before.clone();
            after.add(extra).unwrap();
            let (tb, ta) = (before.table(|_| true), after.table(|_| true));
            for slot in 0..512 {
                let (b, a) = (tb.candidates_from_slot(slot).next(), ta.candidates_from_slot(slot).next());
                prop_assert!(a == b || a == Some(extra), "slot {} moved from {:?} to {:?}", slot, b, a);
            }
        }

        #[test]
        fn a_down_server_hands_its_keys_to_the_next_candidate(
            ids in proptest::collection::btree_set(1u32..300, 2..30),
            slot in 0usize..512,
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let r = ring_with(&ids);
            let all: Vec<_> = r.table(|_| true).candidates_from_slot(slot).collect();
            let down = all[0];
            let without: Vec<_> = r.table(|id| id != down).candidates_from_slot(slot).collect();
            prop_assert_eq!(&all[1..], &without[..]);
        }
    }

    #[test]
    fn a_server_placed_where_another_ring_put_it_lands_on_exactly_those_slots() {
        let mut leader = ring();
        for id in [1, 2, 3] {
            leader.add(id).unwrap();
        }
        let mut follower = ring();
        // Heard of in another order: placed, not probed, so the rings agree.
        for id in [3, 1, 2] {
            follower.place(id, &leader.slots_of(id)).unwrap();
        }
        assert_eq!(follower.slots(), leader.slots());
        assert_eq!(leader.slots_of(1).len(), 9);
    }

    #[test]
    fn a_placement_that_does_not_fit_is_refused_and_changes_nothing() {
        let mut r = ring();
        r.add(1).unwrap();
        let taken = r.slots_of(1);
        let before = r.slots().to_vec();
        assert_eq!(r.place(2, &taken), Err(RingError::Misplaced(2)));
        assert_eq!(r.place(2, &[1, 2]), Err(RingError::Misplaced(2)), "too few");
        assert_eq!(
            r.place(2, &[600; 9]),
            Err(RingError::Misplaced(2)),
            "off the ring"
        );
        assert_eq!(r.place(1, &[0; 9]), Err(RingError::AlreadyPresent(1)));
        assert_eq!(r.slots(), &before[..]);
    }
}
