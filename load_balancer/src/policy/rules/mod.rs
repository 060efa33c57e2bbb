//! The load-aware rules, each a small pure function: given the routable backends,
//! a test a first choice must pass, and the request's random bits or turn, which
//! backend goes first. None waits or allocates; each reads the backends' atomics.

pub mod least;
pub mod p2c;
pub mod pick_first;
pub mod random;
pub mod resource_fit;
pub mod round_robin;

use std::sync::Arc;

use crate::backend::Backend;

/// The indices of the backends that pass `ok`, in order.
fn passing<'a>(
    backends: &'a [Arc<Backend>],
    ok: &'a dyn Fn(&Backend) -> bool,
) -> impl Iterator<Item = usize> + Clone + 'a {
    backends
        .iter()
        .enumerate()
        .filter(move |(_, b)| ok(b))
        .map(|(i, _)| i)
}

/// The `nth` backend that passes `ok`.
fn nth_passing(
    backends: &[Arc<Backend>],
    ok: &dyn Fn(&Backend) -> bool,
    nth: usize,
) -> Option<usize> {
    passing(backends, ok).nth(nth)
}
