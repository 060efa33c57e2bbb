//! Hash schemes: how a request id picks its replicas.
//!
//! Two families. Ring schemes ([`Quadratic`], [`Mixed`]) only say where virtual nodes
//! and request ids land on the `M`-slot ring; the ring does the rest. Table schemes
//! ([`Maglev`], [`Rendezvous`]) are not slots on a ring: they say so through
//! [`HashScheme::selector`], and [`crate::ring::Ring::table`] builds their own lookup
//! structure instead. Either way the hash policy only ever sees a `Ring`.
//! [`bounded`] caps any scheme's per-replica load (Mirrokni et al.).

use std::sync::Arc;

pub mod bounded;
pub mod maglev;
pub mod mixed;
pub mod quadratic;
pub mod rendezvous;

pub use maglev::Maglev;
pub use mixed::Mixed;
pub use quadratic::Quadratic;
pub use rendezvous::Rendezvous;

/// Which lookup structure a scheme needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorKind {
    /// The first occupied slot clockwise of the request's slot.
    Ring,
    /// Maglev's permutation-filled lookup table.
    Maglev,
    /// Highest random weight over the routable servers.
    Rendezvous,
}

/// Places virtual nodes and request ids on a ring of `m` slots.
///
/// Implementations must be pure and deterministic: the same arguments always give
/// the same slot, on every machine and every run, or keys would lose their affinity.
/// Table schemes still place virtual nodes, so that the ring's membership and capacity
/// rules hold for every scheme alike; their lookups just ignore the slots.
pub trait HashScheme: Send + Sync + std::fmt::Debug {
    /// The name used on the command line (`--hash`) and in `/status`.
    fn name(&self) -> &'static str;
    /// The slot of virtual node `j` of server `server_id`, in `0..m`.
    fn virtual_node_slot(&self, server_id: u32, j: u32, m: usize) -> usize;
    /// The slot of request id `request_id`, in `0..m`.
    fn request_slot(&self, request_id: u64, m: usize) -> usize;
    /// `Some(p)` when `request_slot(r, m)` depends on `r mod p` only. A table then
    /// precomputes the owner of each residue, so a lookup is a mask and two loads
    /// instead of a call through the trait object.
    fn request_period(&self, _m: usize) -> Option<usize> {
        None
    }
    /// The lookup structure the ring builds for this scheme.
    fn selector(&self) -> SelectorKind {
        SelectorKind::Ring
    }
}

/// The names of every scheme [`by_name`] knows, for help texts and errors.
pub const NAMES: &[&str] = &["quadratic", "mixed", "maglev", "rendezvous"];

/// Looks a scheme up by its `--hash` name.
pub fn by_name(name: &str) -> Option<Arc<dyn HashScheme>> {
    match name {
        "quadratic" => Some(Arc::new(Quadratic)),
        "mixed" => Some(Arc::new(Mixed)),
        "maglev" => Some(Arc::new(Maglev)),
        "rendezvous" => Some(Arc::new(Rendezvous)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves_to_its_scheme() {
        for name in NAMES {
            assert_eq!(by_name(name).map(|s| s.name()), Some(*name));
        }
        assert!(by_name("md5").is_none());
    }

    #[test]
    fn only_maglev_and_rendezvous_need_their_own_table() {
        let kinds: Vec<_> = NAMES
            .iter()
            .map(|n| by_name(n).unwrap().selector())
            .collect();
        assert_eq!(
            kinds,
            [
                SelectorKind::Ring,
                SelectorKind::Ring,
                SelectorKind::Maglev,
                SelectorKind::Rendezvous
            ]
        );
    }
}
