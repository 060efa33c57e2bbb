//! The ring as the dashboard draws it, and where one key goes: pure functions of a
//! snapshot, no I/O.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::backend::ServerId;
use crate::error::ApiError;
use crate::hashkey::key_to_id;
use crate::policy::{Ask, Picker};
use crate::snapshot::Snapshot;
use crate::table::{Layout, Table};

/// How many request ids [`RingView::shares`] samples for each replica's key share.
pub const SAMPLED_KEYS: u64 = 20_000;

/// The longest key [`lookup`] accepts.
pub const MAX_KEY_LEN: usize = 256;

/// The routing table of a hash policy, laid out for drawing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingView {
    /// `ring` (quadratic, mixed), `maglev`, `rendezvous`, or `none` when the policy
    /// in force is load-aware and has no table.
    pub kind: &'static str,
    pub policy: &'static str,
    /// The ring's `M`.
    pub slots: usize,
    /// `[slot, id]` of each virtual node of a routable replica, by slot (ring only).
    pub vnodes: Vec<(usize, ServerId)>,
    /// For each slot, the replica that serves requests landing there (ring only).
    pub owners: Vec<Option<ServerId>>,
    /// Each routable replica's part of the table and of the keys.
    pub shares: Vec<Share>,
}

/// One replica's part of a routing table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    pub id: ServerId,
    pub hostname: String,
    /// Slots of its arcs (ring), entries (Maglev), or 0 (rendezvous).
    pub slots: usize,
    pub slot_share: f64,
    /// Its share of [`SAMPLED_KEYS`] 6-digit request ids.
    pub key_share: f64,
}

/// Where one key goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lookup {
    pub key: String,
    /// The key as the balancer hashes it.
    pub request_id: u64,
    pub policy: &'static str,
    /// Its ring slot or Maglev entry.
    pub slot: Option<usize>,
    /// The routable replicas in the order the policy tries them.
    pub candidates: Vec<String>,
}

/// The routing table of `snap`, laid out for drawing.
pub fn ring_view(snap: &Snapshot) -> RingView {
    let policy = snap.settings.policy;
    let Picker::Hash(picker) = &snap.picker else {
        return RingView {
            kind: "none",
            policy,
            slots: 0,
            vnodes: Vec::new(),
            owners: Vec::new(),
            shares: Vec::new(),
        };
    };
    let table = picker.table();
    let (kind, vnodes, owners, table_counts) = match table.layout() {
        Layout::Ring { positions, entries } => {
            let owners: Vec<Option<ServerId>> = (0..table.slots())
                .map(|slot| table.candidates_from_slot(slot).next())
                .collect();
            let counts = count(owners.iter().flatten().copied());
            let vnodes = positions.iter().copied().zip(entries.iter().copied());
            ("ring", vnodes.collect(), owners, counts)
        }
        Layout::Maglev { entries } => (
            "maglev",
            Vec::new(),
            Vec::new(),
            count(entries.iter().copied()),
        ),
        Layout::Rendezvous { .. } => ("rendezvous", Vec::new(), Vec::new(), BTreeMap::new()),
    };
    let table_total: usize = table_counts.values().sum();
    let keys = key_counts(table);
    let shares = picker
        .backends()
        .map(|b| {
            let slots = table_counts.get(&b.id).copied().unwrap_or(0);
            Share {
                id: b.id,
                hostname: b.hostname.clone(),
                slots,
                slot_share: ratio(slots as u64, table_total as u64),
                key_share: ratio(keys.get(&b.id).copied().unwrap_or(0) as u64, SAMPLED_KEYS),
            }
        })
        .collect();
    RingView {
        kind,
        policy,
        slots: table.slots(),
        vnodes,
        owners,
        shares,
    }
}

/// Where `key` goes under `snap`'s policy. Load-aware policies draw at random, so
/// their order is one likely order, not the only one.
pub fn lookup(snap: &Snapshot, key: &str, now: Instant) -> Result<Lookup, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad("Query parameter 'key' is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad(format!(
            "Query parameter 'key' is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    let request_id = key_to_id(key);
    let slot = match &snap.picker {
        Picker::Hash(p) => p.table().position_of(request_id),
        Picker::Load(_) => None,
    };
    let ask = Ask {
        key: request_id,
        draw: rand::random(),
        now,
        demand: None,
    };
    let candidates = snap
        .picker
        .candidates(&ask)
        .map(|b| b.hostname.clone())
        .collect();
    Ok(Lookup {
        key: key.to_string(),
        request_id,
        policy: snap.settings.policy,
        slot,
        candidates,
    })
}

fn count(ids: impl Iterator<Item = ServerId>) -> BTreeMap<ServerId, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// The first candidate of [`SAMPLED_KEYS`] 6-digit ids spread by a fixed
/// pseudo-random sequence, so the figure is the same on every draw of the same table.
fn key_counts(table: &Table) -> BTreeMap<ServerId, usize> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    count((0..SAMPLED_KEYS).filter_map(|_| {
        // xorshift64: cheap, deterministic, and well spread over 100000..=999999.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        table.owner(100_000 + x % 900_000)
    }))
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::testing::snapshot_with;

    #[test]
    fn every_slot_of_the_ring_is_owned_by_the_next_virtual_node_clockwise() {
        let snap = snapshot_with("quadratic", &[1, 2, 3]);
        let view = ring_view(&snap);
        assert_eq!((view.kind, view.slots), ("ring", 512));
        assert_eq!(view.owners.len(), 512);
        assert_eq!(view.vnodes.len(), 27, "9 virtual nodes for each of 3");
        for (slot, owner) in view.owners.iter().enumerate() {
            let next = view
                .vnodes
                .iter()
                .find(|(s, _)| *s >= slot)
                .unwrap_or(&view.vnodes[0]);
            assert_eq!(*owner, Some(next.1), "slot {slot}");
        }
    }

    #[test]
    fn shares_add_up_to_the_whole_table_and_all_the_keys() {
        for policy in ["quadratic", "mixed", "maglev", "rendezvous"] {
            let view = ring_view(&snapshot_with(policy, &[1, 2, 3, 4]));
            assert_eq!(view.shares.len(), 4, "{policy}");
            let keys: f64 = view.shares.iter().map(|s| s.key_share).sum();
            assert!((keys - 1.0).abs() < 1e-9, "{policy}: {keys}");
            if policy != "rendezvous" {
                let slots: f64 = view.shares.iter().map(|s| s.slot_share).sum();
                assert!((slots - 1.0).abs() < 1e-9, "{policy}: {slots}");
            }
            assert!(view.shares.iter().all(|s| s.key_share > 0.0), "{policy}");
        }
    }

    #[test]
    fn a_load_aware_policy_has_no_ring_to_draw() {
        let view = ring_view(&snapshot_with("round-robin", &[1, 2]));
        assert_eq!(view.kind, "none");
        assert!(view.owners.is_empty() && view.shares.is_empty());
    }

    #[test]
    fn a_key_goes_where_the_request_path_sends_it_with_the_others_after() {
        let snap = snapshot_with("quadratic", &[1, 2, 3]);
        let found = lookup(&snap, "123456", Instant::now()).unwrap();
        let Picker::Hash(p) = &snap.picker else {
            unreachable!()
        };
        let owner = p.table().owner(123_456).unwrap();
        assert_eq!(found.request_id, 123_456);
        assert_eq!(found.slot, Some(p.table().slot_of(123_456)));
        assert_eq!(found.candidates.len(), 3);
        assert_eq!(found.candidates[0], format!("Server{owner}"));
        let by_name = lookup(&snap, "alice", Instant::now()).unwrap();
        assert_eq!(by_name.request_id, key_to_id("alice"));
    }

    #[test]
    fn an_empty_or_overlong_key_is_refused() {
        let snap = snapshot_with("quadratic", &[1]);
        assert!(lookup(&snap, "", Instant::now()).is_err());
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(lookup(&snap, &long, Instant::now()).is_err());
    }
}
