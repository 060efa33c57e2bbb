//! Random add/remove/lookup sequences on a ring of each scheme, against a model of
//! its membership. After every step: capacity and slot counts hold; on lookups every
//! routable server is a candidate exactly once, `owner` is the first candidate, and
//! ring schemes agree with a clockwise walk; removing a server and adding it straight
//! back restores the slots exactly (while nothing else was removed since its add).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use load_balancer::backend::ServerId;
use load_balancer::ring::{Geometry, Ring, RingError};
use load_balancer::scheme::bounded::{self, Bound};
use load_balancer::scheme::{by_name, SelectorKind, NAMES};

#[derive(Debug, Arbitrary)]
enum Step {
    Add(u16),
    Remove(u16),
    /// Remove then re-add at once.
    Bounce(u16),
    /// A lookup of `key` with the servers whose bit (by position) is set in `down` left out.
    Lookup {
        key: u64,
        down: u64,
    },
    /// A lookup by position, any value.
    FromSlot {
        slot: usize,
        down: u64,
    },
    /// Bounded loads over a few consecutive keys.
    Bounded {
        start: u64,
        factor: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    scheme: u8,
    /// Small geometries fill up and collide; 0 picks the default 512 / 9.
    slots: u16,
    virtual_nodes: u8,
    steps: Vec<Step>,
}

/// Ids: mostly small, sometimes the largest there are (past the walk's bitset), or 0.
fn id(raw: u16) -> ServerId {
    if raw >= 0xff00 {
        u32::MAX - u32::from(!raw)
    } else {
        u32::from(raw % 80)
    }
}

struct Model {
    /// Member id -> removals of other servers counted when it was added.
    members: BTreeMap<ServerId, u64>,
    removals: u64,
}

fn check_ring(ring: &Ring, model: &Model, g: Geometry) {
    assert_eq!(ring.len(), model.members.len());
    assert!(ring.len() <= g.capacity());
    let mut count: BTreeMap<ServerId, usize> = BTreeMap::new();
    for id in ring.slots().iter().flatten() {
        *count.entry(*id).or_default() += 1;
    }
    assert_eq!(count.len(), model.members.len(), "owners vs members");
    for (id, n) in &count {
        assert!(model.members.contains_key(id), "stranger {id} on the ring");
        assert_eq!(*n, g.virtual_nodes, "server {id} holds {n} slots");
    }
}

fn routable_set(model: &Model, down: u64) -> Vec<ServerId> {
    model
        .members
        .keys()
        .enumerate()
        .filter(|(i, _)| down & (1u64 << (i % 64)) == 0)
        .map(|(_, id)| *id)
        .collect()
}

fn check_lookup(ring: &Ring, routable: &[ServerId], key: Option<u64>, slot: usize) {
    let table = ring.table(|id| routable.binary_search(&id).is_ok());
    assert_eq!(table.servers(), routable.len());
    assert_eq!(table.is_empty(), routable.is_empty());
    let lists = |got: Vec<ServerId>| {
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, routable, "candidates {got:?}");
    };
    if let Some(key) = key {
        let all: Vec<_> = table.candidates(key).collect();
        lists(all.clone());
        assert_eq!(
            table.owner(key),
            all.first().copied(),
            "owner vs candidates"
        );
        if ring.scheme().selector() == SelectorKind::Ring {
            let m = ring.geometry().slots;
            let start = table.slot_of(key);
            assert!(start < m);
            let walked = (0..m).find_map(|o| {
                ring.slots()[(start + o) % m].filter(|id| routable.binary_search(id).is_ok())
            });
            assert_eq!(table.owner(key), walked, "owner vs clockwise walk");
        }
    }
    lists(table.candidates_from_slot(slot).collect());
}

fn run(input: Input) {
    let name = NAMES[usize::from(input.scheme) % NAMES.len()];
    let g = if input.slots == 0 {
        Geometry::DEFAULT
    } else {
        let slots = usize::from(input.slots % 1024) + 1;
        Geometry {
            slots,
            virtual_nodes: (usize::from(input.virtual_nodes) % slots.min(16)) + 1,
        }
    };
    let mut ring = Ring::new(g, by_name(name).expect("a known scheme"));
    let mut model = Model {
        members: BTreeMap::new(),
        removals: 0,
    };
    // Maglev builds a 65,537-entry table per lookup: bound the work per input.
    let mut lookups = 0;
    let max_lookups = if name == "maglev" { 8 } else { 64 };
    for step in input.steps.into_iter().take(256) {
        match step {
            Step::Add(raw) => {
                let id = id(raw);
                let expected = if id == 0 {
                    Err(RingError::ZeroId)
                } else if model.members.contains_key(&id) {
                    Err(RingError::AlreadyPresent(id))
                } else if model.members.len() >= g.capacity() {
                    Err(RingError::Full {
                        cap: g.capacity(),
                        slots: g.slots,
                        per_server: g.virtual_nodes,
                    })
                } else {
                    Ok(())
                };
                assert_eq!(ring.add(id), expected, "add {id}");
                if expected.is_ok() {
                    model.members.insert(id, model.removals);
                }
            }
            Step::Remove(raw) => {
                let id = id(raw);
                let was = model.members.remove(&id).is_some();
                assert_eq!(ring.remove(id), was, "remove {id}");
                assert!(!ring.contains(id));
                if was {
                    model.removals += 1;
                }
            }
            Step::Bounce(raw) => {
                let id = id(raw);
                let Some(added_at) = model.members.get(&id).copied() else {
                    continue;
                };
                let before = ring.slots().to_vec();
                assert!(ring.remove(id));
                assert_eq!(ring.add(id), Ok(()));
                if added_at == model.removals {
                    assert_eq!(ring.slots(), &before[..], "re-adding {id} moved slots");
                } else if ring.slots() != &before[..] {
                    // It moved, which frees slots others may have probed past.
                    model.removals += 1;
                }
                model.members.insert(id, model.removals);
            }
            Step::Lookup { key, down } => {
                lookups += 1;
                if lookups <= max_lookups {
                    let routable = routable_set(&model, down);
                    check_lookup(&ring, &routable, Some(key), key as usize);
                }
            }
            Step::FromSlot { slot, down } => {
                lookups += 1;
                if lookups <= max_lookups {
                    let routable = routable_set(&model, down);
                    check_lookup(&ring, &routable, None, slot);
                }
            }
            Step::Bounded { start, factor } => {
                lookups += 1;
                if lookups > max_lookups {
                    continue;
                }
                let bound = Bound::new(1.0 + f64::from(factor) / 64.0).expect("c >= 1");
                let table = ring.table(|_| true);
                let keys: Vec<u64> = (0..64).map(|i| start.wrapping_add(i * 7919)).collect();
                let owners = bounded::assign(&table, bound, keys.iter().copied());
                if table.is_empty() {
                    assert!(owners.is_empty());
                    continue;
                }
                assert_eq!(owners.len(), keys.len());
                let cap = bound.cap(keys.len() - 1, table.servers());
                for id in model.members.keys() {
                    let load = owners.iter().filter(|o| *o == id).count();
                    assert!(load <= cap, "server {id} has {load} > cap {cap}");
                }
            }
        }
        check_ring(&ring, &model, g);
    }
}

fuzz_target!(|input: Input| run(input));
