//! Key-affine policies: the ring with its hash schemes (quadratic, mixed, Maglev,
//! rendezvous), with bounded loads when `--balance-factor` is set.
//!
//! The policy owns the [`Ring`]: replicas are placed when they join and keep their
//! slots while down, so a respawned replica lands where it was. Each picker is an
//! immutable [`Table`] over the routable replicas, answering a key's first
//! candidate in O(1) and the next distinct ones for failover.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Picker, Policy};
use crate::backend::{Backend, ServerId};
use crate::ring::{Ring, RingError, Table};

/// A hash policy over one ring.
#[derive(Debug)]
pub struct HashPolicy {
    ring: Ring,
}

impl HashPolicy {
    /// The policy of `ring`'s scheme (and bound).
    pub fn new(ring: Ring) -> Self {
        HashPolicy { ring }
    }
}

impl Policy for HashPolicy {
    fn name(&self) -> &'static str {
        self.ring.scheme().name()
    }

    fn capacity(&self) -> usize {
        self.ring.geometry().capacity()
    }

    fn join(&mut self, id: ServerId) -> Result<(), RingError> {
        self.ring.add(id)
    }

    fn leave(&mut self, id: ServerId) {
        self.ring.remove(id);
    }

    fn picker(&self, routable: Vec<Arc<Backend>>) -> Picker {
        let backends = by_id(routable);
        let table = self
            .ring
            .table(|id| backends.get(id as usize).is_some_and(Option::is_some));
        Picker::Hash(HashPicker { table, backends })
    }
}

fn by_id(backends: Vec<Arc<Backend>>) -> Vec<Option<Arc<Backend>>> {
    let mut by_id: Vec<Option<Arc<Backend>>> = Vec::new();
    for b in backends {
        let i = b.id as usize;
        if by_id.len() <= i {
            by_id.resize(i + 1, None);
        }
        by_id[i] = Some(b);
    }
    by_id
}

/// A hash policy's picker: the table and the backends it names.
#[derive(Debug, Clone)]
pub struct HashPicker {
    table: Table,
    /// Indexed by server id; only routable replicas are present.
    backends: Vec<Option<Arc<Backend>>>,
}

impl HashPicker {
    /// The routable backend with this id.
    pub fn backend(&self, id: ServerId) -> Option<&Arc<Backend>> {
        self.backends.get(id as usize).and_then(Option::as_ref)
    }

    /// Whether no replica may take traffic.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The backends to try for `key`, in ring order with three tiers: those that
    /// can be a first choice and are within the bound of bounded loads; those over
    /// the bound; then ejected or unavailable ones (trying one beats refusing when
    /// all are). A disabled backend is never tried. With bounded loads off, every
    /// selectable backend is within.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        let all = self
            .table
            .candidates(key)
            .filter_map(|id| self.backend(id))
            .filter(|b| b.enabled());
        // The sum is O(N) and only paid when bounded loads are on.
        let cap = self
            .table
            .bound()
            .map(|b| b.cap(self.in_flight(), self.table.servers()));
        let within = move |b: &&Arc<Backend>| {
            b.selectable() && cap.is_none_or(|c| b.in_flight.load(Ordering::Relaxed) < c)
        };
        let over = move |b: &&Arc<Backend>| b.selectable() && !within(b);
        let live = all.clone().filter(within);
        live.chain(all.clone().filter(over))
            .chain(all.filter(|b| !b.selectable()))
    }

    /// Requests in flight over every routable backend: the `total` of bounded loads.
    pub fn in_flight(&self) -> usize {
        self.backends.iter().flatten().map(|b| b.load()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::EJECT_AFTER_FAILURES;
    use crate::metrics::Metrics;
    use crate::ring::Geometry;
    use crate::scheme::bounded::Bound;

    fn policy(ids: &[ServerId], bound: Option<f64>) -> HashPolicy {
        let ring = Ring::new(
            Geometry {
                slots: 512,
                virtual_nodes: 9,
            },
            crate::scheme::by_name("quadratic").unwrap(),
        )
        .with_bound(bound.and_then(Bound::new));
        let mut p = HashPolicy::new(ring);
        for id in ids {
            p.join(*id).unwrap();
        }
        p
    }

    fn backends(ids: &[ServerId]) -> Vec<Arc<Backend>> {
        let metrics = Metrics::new();
        ids.iter()
            .map(|id| {
                let name = format!("S{id}");
                Arc::new(Backend::new(
                    *id,
                    name.clone(),
                    name.clone(),
                    metrics.replica(&name),
                ))
            })
            .collect()
    }

    fn order(picker: &Picker, key: u64) -> Vec<ServerId> {
        picker.candidates(key).map(|b| b.id).collect()
    }

    #[test]
    fn candidates_follow_the_ring_and_each_routable_replica_comes_once() {
        let p = policy(&[1, 2, 3], None);
        let picker = p.picker(backends(&[1, 2, 3]));
        for key in 0..1000 {
            let mut ids = order(&picker, key);
            assert_eq!(ids.first().copied(), p.ring.table(|_| true).owner(key));
            ids.sort_unstable();
            assert_eq!(ids, [1, 2, 3]);
        }
    }

    #[test]
    fn a_replica_down_keeps_its_slots_and_only_its_keys_move() {
        let p = policy(&[1, 2, 3], None);
        let all = p.picker(backends(&[1, 2, 3]));
        let without_2 = p.picker(backends(&[1, 3]));
        for key in 0..1000 {
            let before = order(&all, key)[0];
            let after = order(&without_2, key)[0];
            if before != 2 {
                assert_eq!(before, after, "key {key} moved although its owner stayed");
            } else {
                assert_ne!(after, 2);
            }
        }
    }

    #[test]
    fn an_ejected_or_unavailable_replica_comes_last_and_a_disabled_one_never() {
        let p = policy(&[1, 2, 3], None);
        let set = backends(&[1, 2, 3]);
        let picker = p.picker(set.clone());
        let key = (0..1000).find(|k| order(&picker, *k)[0] == 2).unwrap();
        for _ in 0..EJECT_AFTER_FAILURES {
            set[1].record_failure();
        }
        assert_eq!(*order(&picker, key).last().unwrap(), 2);
        set[1].clear_failures();
        set[1].report(0, false);
        assert_eq!(*order(&picker, key).last().unwrap(), 2);
        set[1].report(0, true);
        set[1].set_enabled(false);
        assert!(!order(&picker, key).contains(&2));
        assert_eq!(order(&picker, key).len(), 2);
    }

    #[test]
    fn with_bounded_loads_a_replica_at_its_cap_goes_after_those_below_it() {
        let p = policy(&[1, 2, 3], Some(1.25));
        let set = backends(&[1, 2, 3]);
        let picker = p.picker(set.clone());
        let key = (0..1000).find(|k| order(&picker, *k)[0] == 1).unwrap();
        // 8 in flight on replica 1 alone: the cap is ceil(1.25 * 9 / 3) = 4.
        let _held: Vec<_> = (0..8).map(|_| set[0].track()).collect();
        let ids = order(&picker, key);
        assert_eq!(*ids.last().unwrap(), 1, "{ids:?}");
        assert_eq!(ids.len(), 3);
        drop(_held);
        assert_eq!(order(&picker, key)[0], 1);
    }

    #[test]
    fn a_full_ring_refuses_the_replica_that_does_not_fit() {
        let mut p = policy(&[], None);
        for id in 1..=p.capacity() as ServerId {
            p.join(id).unwrap();
        }
        assert!(matches!(
            p.join(p.capacity() as ServerId + 1),
            Err(RingError::Full { .. })
        ));
    }
}
