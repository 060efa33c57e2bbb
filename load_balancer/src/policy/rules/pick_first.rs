//! `pick-first`: the first available replica in `/rep` order, as gRPC's
//! pick_first: everything goes to one replica until it cannot take it.

use std::sync::Arc;

use crate::backend::Backend;

/// The first backend that passes `ok`.
pub fn choose(backends: &[Arc<Backend>], ok: &dyn Fn(&Backend) -> bool) -> Option<usize> {
    backends.iter().position(|b| ok(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::backends;

    #[test]
    fn the_first_passing_backend_is_chosen_every_time() {
        let set = backends(&[1, 2, 3]);
        assert_eq!(choose(&set, &|_| true), Some(0));
        assert_eq!(choose(&set, &|b| b.id != 1), Some(1));
        assert_eq!(choose(&set, &|_| false), None);
    }
}
