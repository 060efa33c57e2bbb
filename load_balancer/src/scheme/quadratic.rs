//! The design's scheme: `Φ(i, j) = i² + j² + 2j + 25` and `H(r) = r² + 2r + 17`, mod M.

use super::HashScheme;

/// The design's quadratic hashes. Each term is reduced mod M before it is squared, so
/// no input overflows `u64` (M is at most `u32::MAX`, whose square fits).
///
/// Its weakness, which the analysis measures: `H` depends on `r mod M` only and the
/// server slots of small ids crowd the start of the ring, so load is far from even.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quadratic;

impl HashScheme for Quadratic {
    fn name(&self) -> &'static str {
        "quadratic"
    }

    fn virtual_node_slot(&self, server_id: u32, j: u32, m: usize) -> usize {
        let m = m as u64;
        let i = u64::from(server_id) % m;
        let j = u64::from(j) % m;
        ((i * i % m + j * j % m + 2 * j % m + 25 % m) % m) as usize
    }

    fn request_slot(&self, request_id: u64, m: usize) -> usize {
        let m = m as u64;
        // Per request, so cheap first: with M a power of two (512 by default) a mask
        // replaces both divisions, and r < M <= 2^31 keeps r² + 2r + 17 within u64.
        if m.is_power_of_two() && m <= 1 << 31 {
            let r = request_id & (m - 1);
            return ((r * r + 2 * r + 17) & (m - 1)) as usize;
        }
        let r = request_id % m;
        ((r * r % m + 2 * r % m + 17 % m) % m) as usize
    }

    fn request_period(&self, m: usize) -> Option<usize> {
        // H reduces r mod M before anything else: the weakness the analysis measures,
        // and what lets the table answer by lookup.
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_power_of_two_shortcut_agrees_with_the_definition(r in any::<u64>(), bits in 0u32..=31) {
            let m = 1u64 << bits;
            let reference = ((u128::from(r % m).pow(2) + 2 * u128::from(r % m) + 17) % u128::from(m)) as usize;
            prop_assert_eq!(Quadratic.request_slot(r, m as usize), reference);
        }
    }

    proptest! {
        #[test]
        fn the_request_slot_repeats_with_the_declared_period(r in any::<u64>(), m in 1usize..5000) {
            let p = Quadratic.request_period(m).unwrap() as u64;
            prop_assert_eq!(Quadratic.request_slot(r, m), Quadratic.request_slot(r % p, m));
            prop_assert_eq!(Quadratic.request_slot(r, m), Quadratic.request_slot(r % p + p * (r % 7), m));
        }
    }

    #[test]
    fn quadratic_virtual_nodes_match_a_hand_computation() {
        let q = Quadratic;
        // Φ(1, 0) = 1 + 0 + 0 + 25 = 26
        assert_eq!(q.virtual_node_slot(1, 0, 512), 26);
        // Φ(2, 3) = 4 + 9 + 6 + 25 = 44
        assert_eq!(q.virtual_node_slot(2, 3, 512), 44);
        // Φ(3, 8) = 9 + 64 + 16 + 25 = 114
        assert_eq!(q.virtual_node_slot(3, 8, 512), 114);
        // Φ(30, 5) = 900 + 25 + 10 + 25 = 960 = 512 + 448
        assert_eq!(q.virtual_node_slot(30, 5, 512), 448);
    }

    #[test]
    fn quadratic_request_slots_match_a_hand_computation() {
        let q = Quadratic;
        // H(0) = 17
        assert_eq!(q.request_slot(0, 512), 17);
        // H(10) = 100 + 20 + 17 = 137
        assert_eq!(q.request_slot(10, 512), 137);
        // H(100) = 10000 + 200 + 17 = 10217 = 19 * 512 + 489
        assert_eq!(q.request_slot(100, 512), 489);
        // H(123456): 123456 mod 512 = 64; 4096 + 128 + 17 = 4241 = 8 * 512 + 145
        assert_eq!(q.request_slot(123_456, 512), 145);
    }

    #[test]
    fn quadratic_never_overflows_on_extreme_inputs() {
        let q = Quadratic;
        for m in [1, 2, 512, 1 << 20, u32::MAX as usize] {
            assert!(q.request_slot(u64::MAX, m) < m);
            assert!(q.virtual_node_slot(u32::MAX, u32::MAX, m) < m);
        }
    }
}
