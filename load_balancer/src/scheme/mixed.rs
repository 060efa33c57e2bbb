//! A well-mixed 64-bit hash on the same ring: the quadratic scheme's geometry with
//! hashes whose every input bit affects every output bit.

use super::HashScheme;

/// SplitMix64's finalizer: a bijection on `u64` with full avalanche. Chosen because it
/// is tiny, has no dependency, and is fixed forever (a keyed or per-process hash would
/// move every key at each restart).
pub const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Distinct constants keep server hashes and request hashes independent even when a
/// server id equals a request id.
const SERVER_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const REQUEST_SEED: u64 = 0xd1b5_4a32_d192_ed03;

/// The hash of virtual node `j` of server `id`, shared by the table schemes.
pub fn server_hash(id: u32, j: u32) -> u64 {
    mix64(((u64::from(id) << 32) | u64::from(j)) ^ SERVER_SEED)
}

/// The hash of a request id, shared by the table schemes.
pub fn request_hash(request_id: u64) -> u64 {
    mix64(request_id ^ REQUEST_SEED)
}

/// `M` slots and `K` virtual nodes as in the design, placed by [`mix64`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Mixed;

impl HashScheme for Mixed {
    fn name(&self) -> &'static str {
        "mixed"
    }

    fn virtual_node_slot(&self, server_id: u32, j: u32, m: usize) -> usize {
        (server_hash(server_id, j) % m as u64) as usize
    }

    fn request_slot(&self, request_id: u64, m: usize) -> usize {
        (request_hash(request_id) % m as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_mix_is_pinned_so_keys_keep_their_replica_across_releases() {
        // SplitMix64's published first output for seed 0 is mix64(0x9e3779b97f4a7c15).
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            Mixed.request_slot(123_456, 512),
            Mixed.request_slot(123_456, 512)
        );
    }

    #[test]
    fn consecutive_request_ids_spread_over_the_whole_ring() {
        let mut hit = [false; 512];
        for r in 100_000..110_000u64 {
            hit[Mixed.request_slot(r, 512)] = true;
        }
        assert!(hit.iter().all(|h| *h), "some slot never hit");
    }

    proptest! {
        #[test]
        fn slots_are_always_in_range(id in any::<u32>(), j in any::<u32>(), r in any::<u64>(), m in 1usize..100_000) {
            prop_assert!(Mixed.virtual_node_slot(id, j, m) < m);
            prop_assert!(Mixed.request_slot(r, m) < m);
        }
    }
}
