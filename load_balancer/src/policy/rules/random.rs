//! `random`: a uniformly random replica.

use std::sync::Arc;

use super::{nth_passing, passing};
use crate::backend::Backend;

/// A backend that passes `ok`, chosen by `draw`.
pub fn choose(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    draw: u64,
) -> Option<usize> {
    let n = passing(backends, ok).count();
    if n == 0 {
        return None;
    }
    nth_passing(backends, ok, (draw % n as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::backends;

    #[test]
    fn every_passing_backend_is_drawn_about_equally_and_no_other() {
        let set = backends(&[1, 2, 3, 4]);
        let mut counts = [0usize; 4];
        for d in 0..40_000u64 {
            let draw = d.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
            counts[choose(&set, &|b| b.id != 2, draw).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        for c in [counts[0], counts[2], counts[3]] {
            assert!((12_500..14_200).contains(&c), "{counts:?}");
        }
    }
}
