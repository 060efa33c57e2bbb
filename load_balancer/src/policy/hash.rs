//! Key-affine policies: the ring with its hash schemes (quadratic, mixed, Maglev,
//! rendezvous), with bounded loads when `--balance-factor` is set and slow start
//! when `--slow-start` is.
//!
//! The policy owns the [`Ring`]: replicas are placed when they join and keep their
//! slots while down, so a respawned replica lands where it was. Each picker is an
//! immutable [`Table`] over the routable replicas, answering a key's first
//! candidate in O(1) and the next distinct ones for failover.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{warm_enough, Picker, Policy};
use crate::backend::{Backend, ServerId};
use crate::ring::{Ring, RingError, Table};

/// A hash policy over one ring.
#[derive(Debug)]
pub struct HashPolicy {
    ring: Ring,
    slow_start: Option<Duration>,
}

impl HashPolicy {
    /// The policy of `ring`'s scheme (and bound), ramping newcomers up over
    /// `slow_start`.
    pub fn new(ring: Ring, slow_start: Option<Duration>) -> Self {
        HashPolicy { ring, slow_start }
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

    fn join_at(&mut self, id: ServerId, slots: &[usize]) -> Result<(), RingError> {
        self.ring.place(id, slots)
    }

    fn leave(&mut self, id: ServerId) {
        self.ring.remove(id);
    }

    fn picker(&self, routable: Vec<Arc<Backend>>) -> Picker {
        let backends = by_id(routable);
        let table = self
            .ring
            .table(|id| backends.get(id as usize).is_some_and(Option::is_some));
        Picker::Hash(HashPicker {
            table,
            backends,
            slow_start: self.slow_start,
        })
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
    slow_start: Option<Duration>,
}

impl HashPicker {
    /// The routing table over the routable replicas.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The routable backend with this id.
    pub fn backend(&self, id: ServerId) -> Option<&Arc<Backend>> {
        self.backends.get(id as usize).and_then(Option::as_ref)
    }

    /// Every routable backend, in id order.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter().flatten()
    }

    /// Whether no replica may take traffic.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The backends to try for `key`, in ring order with three tiers: those that
    /// can be a first choice, are within the bound of bounded loads and warm enough
    /// for this key; those over the bound or still warming; then ejected or
    /// unavailable ones (trying one beats refusing when all are). A disabled backend
    /// is never tried. With bounded loads and slow start off, every selectable
    /// backend is in the first tier.
    pub fn candidates(&self, key: u64, now: Instant) -> impl Iterator<Item = &Arc<Backend>> + '_ {
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
        let slow_start = self.slow_start;
        let within = move |b: &&Arc<Backend>| {
            b.selectable()
                && cap.is_none_or(|c| b.in_flight.load(Ordering::Relaxed) < c)
                && warm_enough(b, key, now, slow_start)
        };
        let over = move |b: &&Arc<Backend>| b.selectable() && !within(b);
        let live = all.clone().filter(within);
        live.chain(all.clone().filter(over))
            .chain(all.filter(|b| !b.selectable()))
    }

    /// Requests in flight over every routable backend: the `total` of bounded loads.
    fn in_flight(&self) -> usize {
        self.backends.iter().flatten().map(|b| b.load()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::EJECT_AFTER_FAILURES;
    use crate::policy::testing::{backends, old_backend};
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
        let mut p = HashPolicy::new(ring, None);
        for id in ids {
            p.join(*id).unwrap();
        }
        p
    }

    fn order(picker: &Picker, key: u64) -> Vec<ServerId> {
        let ask = crate::policy::Ask {
            key,
            draw: 0,
            now: Instant::now(),
            demand: None,
        };
        picker.candidates(&ask).map(|b| b.id).collect()
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

    #[test]
    fn with_slow_start_a_new_replica_gets_a_growing_share_of_its_own_keys() {
        let ring = Ring::new(
            Geometry::DEFAULT,
            crate::scheme::by_name("quadratic").unwrap(),
        );
        let mut p = HashPolicy::new(ring, Some(Duration::from_secs(100)));
        for id in [1, 2, 3] {
            p.join(id).unwrap();
        }
        let new = backends(&[3]).remove(0);
        let born = new.healthy_since;
        let set = vec![old_backend(1), old_backend(2), new];
        let picker = p.picker(set);
        let Picker::Hash(h) = &picker else {
            unreachable!()
        };
        let share_of_3 = |secs: u64| {
            let now = born + Duration::from_secs(secs);
            let owned: Vec<u64> = (0..20_000u64)
                .filter(|k| h.table.owner(*k) == Some(3))
                .collect();
            let kept = owned
                .iter()
                .filter(|k| h.candidates(**k, now).next().unwrap().id == 3)
                .count();
            kept as f64 / owned.len() as f64
        };
        assert!(share_of_3(1) < 0.05);
        assert!((share_of_3(50) - 0.5).abs() < 0.05, "{}", share_of_3(50));
        assert_eq!(share_of_3(100), 1.0);
        // A key that has moved to it stays there as it warms further.
        let now = |s| born + Duration::from_secs(s);
        for key in (0..20_000u64).filter(|k| h.table.owner(*k) == Some(3)) {
            if h.candidates(key, now(30)).next().unwrap().id == 3 {
                assert_eq!(h.candidates(key, now(60)).next().unwrap().id, 3);
            }
        }
    }
}
