//! Maglev hashing (Eisenbud et al., NSDI 2016): each server walks its own permutation
//! of a prime-sized table, and the servers take turns claiming their next free entry.
//! Every server ends up with `P / N` entries, give or take one, so load is even by
//! construction, and most entries keep their owner when a server joins or leaves.

use super::mixed::{mix64, server_hash, Mixed};
use super::{HashScheme, SelectorKind};
use crate::backend::ServerId;

/// The lookup table's size: a prime well above 100 × the ring's 56-server capacity,
/// as the paper advises, so that per-server shares differ by under 1 %.
pub const TABLE_SIZE: usize = 65_537;

/// Maglev's lookup table. Virtual nodes are still placed (by [`Mixed`]) so that the
/// ring's membership and capacity rules hold, but lookups never read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Maglev;

impl HashScheme for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn virtual_node_slot(&self, server_id: u32, j: u32, m: usize) -> usize {
        Mixed.virtual_node_slot(server_id, j, m)
    }

    fn request_slot(&self, request_id: u64, m: usize) -> usize {
        Mixed.request_slot(request_id, m)
    }

    fn selector(&self) -> SelectorKind {
        SelectorKind::Maglev
    }
}

/// The owner of each of the `size` entries, for the servers `ids` (any order; the
/// result depends only on the set). `size` must be prime so every permutation covers
/// the table. Empty when `ids` is.
pub fn populate(ids: &[ServerId], size: usize) -> Vec<ServerId> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut ids = ids.to_vec();
    // Turn order decides ties, so fix it: the same set must give the same table.
    ids.sort_unstable();
    ids.dedup();
    let size64 = size as u64;
    let perms: Vec<(u64, u64)> = ids
        .iter()
        .map(|&id| {
            let h = server_hash(id, 0);
            let offset = h % size64;
            let skip = mix64(h) % (size64 - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; ids.len()];
    let mut table: Vec<Option<ServerId>> = vec![None; size];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut entry = ((offset + next[i] * skip) % size64) as usize;
            while table[entry].is_some() {
                next[i] += 1;
                entry = ((offset + next[i] * skip) % size64) as usize;
            }
            table[entry] = Some(ids[i]);
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
        .into_iter()
        .map(|e| e.expect("every entry filled"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shares(table: &[ServerId], ids: &[ServerId]) -> Vec<usize> {
        ids.iter()
            .map(|id| table.iter().filter(|e| *e == id).count())
            .collect()
    }

    #[test]
    fn every_server_gets_an_equal_share_give_or_take_one() {
        let ids: Vec<ServerId> = (1..=7).collect();
        let table = populate(&ids, 1009);
        for share in shares(&table, &ids) {
            assert!((144..=145).contains(&share), "share {share}");
        }
    }

    #[test]
    fn no_servers_give_an_empty_table() {
        assert!(populate(&[], 1009).is_empty());
    }

    proptest! {
        #[test]
        fn the_table_depends_only_on_the_set_of_servers(
            ids in proptest::collection::btree_set(1u32..500, 1..20),
        ) {
            let sorted: Vec<_> = ids.into_iter().collect();
            let mut reversed = sorted.clone();
            reversed.reverse();
            prop_assert_eq!(populate(&sorted, 1009), populate(&reversed, 1009));
        }

        #[test]
        fn every_server_owns_entries_and_no_stranger_does(
            ids in proptest::collection::btree_set(1u32..500, 1..56),
        ) {
            let ids: Vec<_> = ids.into_iter().collect();
            let table = populate(&ids, 4099);
            prop_assert_eq!(table.len(), 4099);
            prop_assert!(shares(&table, &ids).iter().all(|s| *s > 0));
            prop_assert!(table.iter().all(|e| ids.contains(e)));
        }
    }

    proptest! {
        // Each case builds two full-size tables.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn adding_a_server_moves_little_more_than_its_fair_share(
            ids in proptest::collection::btree_set(1u32..300, 2..20),
            extra in 300u32..400,
        ) {
            // At the size the balancer uses: with a table only ~200 times the number
            // of servers (4099 for 20), Maglev's extra disruption passed double the
            // ideal for some sets (found: 14 servers, 613 entries moved vs 273).
            let ids: Vec<_> = ids.into_iter().collect();
            let before = populate(&ids, TABLE_SIZE);
            let mut more = ids.clone();
            more.push(extra);
            let after = populate(&more, TABLE_SIZE);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            let ideal = TABLE_SIZE as f64 / more.len() as f64;
            // The paper reports a few percent of extra disruption; allow double.
            prop_assert!((moved as f64) < 2.0 * ideal, "moved {} vs ideal {}", moved, ideal);
        }
    }
}
