//! The immutable routing table: who serves a request id, and who after them.
//!
//! One type for every scheme, built by [`crate::ring::Ring::table`]. Inside it is one
//! of three selectors, chosen by the scheme and dispatched statically with a `match`:
//! the ring's clockwise walk, Maglev's lookup table, or rendezvous weights. The first
//! candidate costs O(1) (ring, Maglev) or O(N) (rendezvous), and nothing is allocated
//! per request.

use std::sync::Arc;

use crate::backend::ServerId;
use crate::scheme::bounded::Bound;
use crate::scheme::maglev;
use crate::scheme::rendezvous::Heaviest;
use crate::scheme::HashScheme;

/// An immutable routing table over the servers that may take traffic.
#[derive(Debug, Clone)]
pub struct Table {
    scheme: Arc<dyn HashScheme>,
    /// The ring's `M`, which request ids are hashed into.
    slots: usize,
    bound: Option<Bound>,
    selector: Selector,
}

#[derive(Debug, Clone)]
enum Selector {
    Ring {
        /// The occupied slots, in increasing order.
        positions: Vec<usize>,
        /// Slot -> index in `entries` of the first occupied slot at or after it.
        first: Vec<u32>,
        /// The owners of the occupied slots, in slot order.
        entries: Vec<ServerId>,
        servers: usize,
        /// For a scheme with a power-of-two request period P: `r mod P` -> index in
        /// `entries` of the first candidate, so a lookup needs no hashing at all.
        by_residue: Option<Vec<u32>>,
    },
    Maglev {
        /// Maglev's lookup table, of prime size.
        entries: Vec<ServerId>,
        servers: usize,
    },
    Rendezvous {
        /// The routable servers, sorted.
        servers: Vec<ServerId>,
    },
}

impl Table {
    /// A ring table from the occupied slots `(slot, owner)` in increasing slot order.
    pub(crate) fn ring(
        scheme: Arc<dyn HashScheme>,
        slots: usize,
        occupied: impl IntoIterator<Item = (usize, ServerId)>,
    ) -> Table {
        let (positions, entries): (Vec<usize>, Vec<ServerId>) = occupied.into_iter().unzip();
        let mut first = vec![0u32; slots];
        if !positions.is_empty() {
            // Walk the slots backwards so each slot learns the first occupied entry at
            // or after it; slots past the last entry wrap to entry 0.
            let mut idx = positions.len();
            for slot in (0..slots).rev() {
                if idx > 0 && positions[idx - 1] >= slot {
                    idx -= 1;
                }
                first[slot] = if idx == positions.len() {
                    0
                } else {
                    idx as u32
                };
            }
        }
        let servers = distinct(&entries).len();
        let by_residue = scheme
            .request_period(slots)
            .filter(|p| p.is_power_of_two() && *p <= MAX_RESIDUES)
            .map(|p| {
                (0..p as u64)
                    .map(|r| first[scheme.request_slot(r, slots)])
                    .collect()
            });
        Table {
            scheme,
            slots,
            bound: None,
            selector: Selector::Ring {
                positions,
                first,
                entries,
                servers,
                by_residue,
            },
        }
    }

    /// A Maglev table over `servers`.
    pub(crate) fn maglev(scheme: Arc<dyn HashScheme>, slots: usize, servers: &[ServerId]) -> Table {
        let servers = distinct(servers);
        Table {
            scheme,
            slots,
            bound: None,
            selector: Selector::Maglev {
                entries: maglev::populate(&servers, maglev::TABLE_SIZE),
                servers: servers.len(),
            },
        }
    }

    /// A rendezvous table over `servers`.
    pub(crate) fn rendezvous(
        scheme: Arc<dyn HashScheme>,
        slots: usize,
        servers: &[ServerId],
    ) -> Table {
        Table {
            scheme,
            slots,
            bound: None,
            selector: Selector::Rendezvous {
                servers: distinct(servers),
            },
        }
    }

    /// The same table with bounded loads on (`Some`) or off.
    pub fn with_bound(mut self, bound: Option<Bound>) -> Table {
        self.bound = bound;
        self
    }

    /// The load bound the request path applies, if any.
    pub fn bound(&self) -> Option<Bound> {
        self.bound
    }

    /// The scheme that built it.
    pub fn scheme(&self) -> &Arc<dyn HashScheme> {
        &self.scheme
    }

    /// How many slots the ring has (its `M`).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Where a request id lands: its ring slot, or its entry in Maglev's table.
    /// Rendezvous has no position.
    pub fn position_of(&self, request_id: u64) -> Option<usize> {
        match &self.selector {
            Selector::Ring { .. } => Some(self.slot_of(request_id)),
            Selector::Maglev { entries, .. } => Some(maglev_entry(request_id, entries.len())),
            Selector::Rendezvous { .. } => None,
        }
    }

    /// The table's structure, for showing it (the dashboard draws it).
    pub fn layout(&self) -> Layout<'_> {
        match &self.selector {
            Selector::Ring {
                positions, entries, ..
            } => Layout::Ring { positions, entries },
            Selector::Maglev { entries, .. } => Layout::Maglev { entries },
            Selector::Rendezvous { servers } => Layout::Rendezvous { servers },
        }
    }

    /// How many distinct servers can take traffic.
    pub fn servers(&self) -> usize {
        match &self.selector {
            Selector::Ring { servers, .. } | Selector::Maglev { servers, .. } => *servers,
            Selector::Rendezvous { servers } => servers.len(),
        }
    }

    /// Whether no server can take traffic.
    pub fn is_empty(&self) -> bool {
        self.servers() == 0
    }

    /// The ring slot a request id hashes to.
    pub fn slot_of(&self, request_id: u64) -> usize {
        self.scheme.request_slot(request_id, self.slots)
    }

    /// The servers for `request_id`, best first, each once: on the ring the owner of
    /// the first occupied slot at or after its hash, then each next distinct owner
    /// clockwise; with Maglev the owner of its entry, then the next distinct owners
    /// in the table; with rendezvous, by decreasing weight.
    #[inline]
    pub fn candidates(&self, request_id: u64) -> Candidates<'_> {
        match &self.selector {
            Selector::Ring {
                first,
                entries,
                servers,
                by_residue,
                ..
            } => Candidates::walk(
                entries,
                self.ring_start(first, by_residue.as_deref(), request_id),
                *servers,
            ),
            Selector::Maglev { entries, servers } => {
                Candidates::walk(entries, self.position_of(request_id).unwrap_or(0), *servers)
            }
            Selector::Rendezvous { servers } => {
                Candidates(Inner::Heaviest(Heaviest::new(servers, request_id)))
            }
        }
    }

    /// The first candidate alone: on the ring two loads, no iterator.
    #[inline]
    pub fn owner(&self, request_id: u64) -> Option<ServerId> {
        match &self.selector {
            Selector::Ring {
                first,
                entries,
                by_residue,
                ..
            } => entries
                .get(self.ring_start(first, by_residue.as_deref(), request_id))
                .copied(),
            _ => self.candidates(request_id).next(),
        }
    }

    /// The index in a ring's `entries` of the first candidate for `request_id`: by
    /// residue when the scheme allows it, else by hashing to a slot.
    #[inline]
    fn ring_start(&self, first: &[u32], by_residue: Option<&[u32]>, request_id: u64) -> usize {
        match by_residue {
            Some(starts) => {
                let mask = starts.len() as u64 - 1;
                starts[(request_id & mask) as usize] as usize
            }
            None => first[self.slot_of(request_id)] as usize,
        }
    }

    /// Candidates from a position rather than a request id: a ring slot, a Maglev
    /// entry, or (rendezvous) a value used as the request id.
    pub fn candidates_from_slot(&self, slot: usize) -> Candidates<'_> {
        match &self.selector {
            Selector::Ring {
                first,
                entries,
                servers,
                ..
            } => {
                let start = if entries.is_empty() {
                    0
                } else if slot < self.slots {
                    first[slot] as usize
                } else {
                    first[slot % self.slots] as usize
                };
                Candidates::walk(entries, start, *servers)
            }
            Selector::Maglev { entries, servers } => {
                Candidates::walk(entries, slot % entries.len().max(1), *servers)
            }
            Selector::Rendezvous { servers } => {
                Candidates(Inner::Heaviest(Heaviest::new(servers, slot as u64)))
            }
        }
    }
}

/// What a table is made of, by selector.
#[derive(Debug, Clone, Copy)]
pub enum Layout<'a> {
    /// The occupied slots (`positions`, increasing) and their owners (`entries`).
    Ring {
        positions: &'a [usize],
        entries: &'a [ServerId],
    },
    /// Maglev's lookup table: the owner of each entry.
    Maglev { entries: &'a [ServerId] },
    /// The routable servers, sorted.
    Rendezvous { servers: &'a [ServerId] },
}

/// The entry of a Maglev table of `len` entries that `request_id` looks up.
#[inline]
fn maglev_entry(request_id: u64, len: usize) -> usize {
    (crate::scheme::mixed::request_hash(request_id) % len.max(1) as u64) as usize
}

/// The largest request period a ring table precomputes (a `u32` per residue).
const MAX_RESIDUES: usize = 1 << 16;

/// The distinct values of `ids`, sorted.
fn distinct(ids: &[ServerId]) -> Vec<ServerId> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Distinct servers for one request, best first; see [`Table::candidates`].
#[derive(Debug, Clone)]
pub struct Candidates<'a>(Inner<'a>);

#[derive(Debug, Clone)]
enum Inner<'a> {
    Walk(Walk<'a>),
    Heaviest(Heaviest<'a>),
}

impl<'a> Candidates<'a> {
    fn walk(entries: &'a [ServerId], start: usize, servers: usize) -> Self {
        Candidates(Inner::Walk(Walk {
            entries,
            start,
            walked: 0,
            left: servers,
            seen: [0; SEEN_WORDS],
        }))
    }
}

impl Iterator for Candidates<'_> {
    type Item = ServerId;

    fn next(&mut self) -> Option<ServerId> {
        match &mut self.0 {
            Inner::Walk(w) => w.next(),
            Inner::Heaviest(h) => h.next(),
        }
    }
}

/// Distinct owners of `entries` from `start` on, wrapping around.
#[derive(Debug, Clone)]
struct Walk<'a> {
    entries: &'a [ServerId],
    start: usize,
    walked: usize,
    /// Servers not yet yielded: at 0 the walk stops instead of scanning the rest of a
    /// 65,537-entry Maglev table for servers that cannot be there.
    left: usize,
    /// Ids already yielded, as bits, for ids below `64 * SEEN_WORDS`; larger ids
    /// (only with a custom, very large ring) fall back to rescanning the walk.
    seen: [u64; SEEN_WORDS],
}

/// Enough bits for every id the default ring holds (56) and then some.
const SEEN_WORDS: usize = 4;

impl Walk<'_> {
    fn at(&self, offset: usize) -> ServerId {
        // offset < len, so one subtraction wraps where a division would.
        let i = self.start + offset;
        let len = self.entries.len();
        self.entries[if i >= len { i - len } else { i }]
    }

    /// Marks `id` as yielded; returns whether it was already.
    fn seen_before(&mut self, id: ServerId) -> bool {
        let (word, bit) = (id as usize / 64, id % 64);
        match self.seen.get_mut(word) {
            Some(w) => {
                let before = *w & (1 << bit) != 0;
                *w |= 1 << bit;
                before
            }
            None => (0..self.walked).any(|o| self.at(o) == id),
        }
    }

    fn next(&mut self) -> Option<ServerId> {
        // The first candidate costs one index, later ones a bit test each: nothing
        // is allocated per request, and walking all candidates is linear.
        while self.left > 0 && self.walked < self.entries.len() {
            let id = self.at(self.walked);
            let seen = self.seen_before(id);
            self.walked += 1;
            if !seen {
                self.left -= 1;
                return Some(id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Geometry, Ring};
    use crate::scheme::{by_name, NAMES};
    use proptest::prelude::*;

    fn table(scheme: &str, ids: &[ServerId], routable: impl Fn(ServerId) -> bool) -> Table {
        let mut ring = Ring::new(Geometry::DEFAULT, by_name(scheme).unwrap());
        for id in ids {
            ring.add(*id).unwrap();
        }
        ring.table(routable)
    }

    fn owners(t: &Table, keys: std::ops::Range<u64>) -> Vec<Option<ServerId>> {
        keys.map(|k| t.owner(k)).collect()
    }

    #[test]
    fn an_empty_table_has_no_candidates_in_any_scheme() {
        for name in NAMES {
            let t = table(name, &[], |_| true);
            assert!(t.is_empty(), "{name}");
            assert_eq!(t.candidates(7).count(), 0, "{name}");
        }
    }

    #[test]
    fn maglev_and_rendezvous_spread_keys_within_a_few_percent_at_three_servers() {
        for name in ["maglev", "rendezvous"] {
            let t = table(name, &[1, 2, 3], |_| true);
            let mut count = [0usize; 4];
            for k in 100_000..130_000 {
                count[t.owner(k).unwrap() as usize] += 1;
            }
            let max = *count[1..].iter().max().unwrap() as f64;
            assert!(max / 10_000.0 < 1.05, "{name}: {count:?}");
        }
    }

    proptest! {
        // Each case builds 65,537-entry Maglev tables: fewer cases keep `make test` quick.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_scheme_is_deterministic(
            ids in proptest::collection::btree_set(1u32..56, 1..20),
            scheme in proptest::sample::select(NAMES),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let (a, b) = (table(scheme, &ids, |_| true), table(scheme, &ids, |_| true));
            prop_assert_eq!(owners(&a, 0..300), owners(&b, 0..300));
        }

        #[test]
        fn every_scheme_lists_each_routable_server_once(
            ids in proptest::collection::btree_set(1u32..56, 1..30),
            scheme in proptest::sample::select(NAMES),
            key in any::<u64>(),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let down = ids[0];
            let t = table(scheme, &ids, |id| id != down);
            let mut got: Vec<_> = t.candidates(key).collect();
            got.sort_unstable();
            prop_assert_eq!(&got[..], &ids[1..]);
        }

        #[test]
        fn a_precomputed_residue_lookup_agrees_with_hashing_the_request(
            ids in proptest::collection::btree_set(1u32..56, 1..20),
            key in any::<u64>(),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let t = table("quadratic", &ids, |id| id % 3 != 0);
            let by_lookup: Vec<_> = t.candidates(key).collect();
            let by_hash: Vec<_> = t.candidates_from_slot(t.slot_of(key)).collect();
            prop_assert_eq!(t.owner(key), by_hash.first().copied());
            prop_assert_eq!(by_lookup, by_hash);
        }

        #[test]
        fn a_down_server_hands_its_keys_to_its_next_candidate(
            ids in proptest::collection::btree_set(1u32..56, 2..20),
            // Not Maglev: its rebuilt table need not match its failover order.
            scheme in proptest::sample::select(&["quadratic", "mixed", "rendezvous"][..]),
            key in any::<u64>(),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let all: Vec<_> = table(scheme, &ids, |_| true).candidates(key).collect();
            let first = table(scheme, &ids, |id| id != all[0]).owner(key);
            prop_assert_eq!(first, Some(all[1]));
        }

        #[test]
        fn adding_a_server_moves_keys_mostly_to_it_in_every_scheme(
            ids in proptest::collection::btree_set(1u32..40, 1..12),
            extra in 40u32..56,
            scheme in proptest::sample::select(NAMES),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let mut more = ids.clone();
            more.push(extra);
            let (before, after) = (table(scheme, &ids, |_| true), table(scheme, &more, |_| true));
            let keys = 0..4000u64;
            let moved_elsewhere = keys
                .filter(|k| {
                    let (b, a) = (before.owner(*k), after.owner(*k));
                    b != a && a != Some(extra)
                })
                .count();
            // Ring and rendezvous: none. Maglev: a small disruption, per the paper.
            let allowed = if scheme == "maglev" { 4000 / 50 } else { 0 };
            prop_assert!(moved_elsewhere <= allowed, "{} keys moved between old servers", moved_elsewhere);
        }
    }
}
