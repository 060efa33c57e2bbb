//! Balancing policies: how a request's replica is chosen.
//!
//! A [`Policy`] lives in the registry, which owns the backend set: it hears every
//! member join and leave (a hash policy keeps its ring that way), and after each
//! change it builds a [`Picker`] over the replicas that may take traffic, which goes
//! into the published snapshot. The data plane asks the picker for one request's
//! candidates, best first, so failover just takes the next (as pingora's selection
//! iterators do); it computes a request's hash key only when the picker needs one.

pub mod hash;

use std::fmt::Debug;
use std::sync::Arc;

use crate::backend::{Backend, ServerId};
use crate::ring::RingError;

/// How replicas are chosen, kept up to date with the replica set.
pub trait Policy: Send + Sync + Debug {
    /// Its name, as `--hash` (later `--policy`) and `/status` give it.
    fn name(&self) -> &'static str;

    /// The most replicas it can place (a ring's capacity).
    fn capacity(&self) -> usize;

    /// A replica joins the set, routable or not yet. A hash policy places it now, so
    /// a replica that is down keeps its place and its replacement lands there.
    fn join(&mut self, id: ServerId) -> Result<(), RingError>;

    /// A replica leaves the set for good.
    fn leave(&mut self, id: ServerId);

    /// The picker over `routable`, the replicas that may take traffic now.
    fn picker(&self, routable: Vec<Arc<Backend>>) -> Picker;
}

/// One published choice structure: immutable, read by every request of a snapshot.
/// An enum rather than a trait object so that a request's candidates are a
/// concrete iterator with no allocation, whichever policy is in force.
#[derive(Debug, Clone)]
pub enum Picker {
    /// A hash policy's table.
    Hash(hash::HashPicker),
}

impl Picker {
    /// Whether candidates depend on the request's key.
    pub fn needs_key(&self) -> bool {
        match self {
            Picker::Hash(_) => true,
        }
    }

    /// The replicas to try for a request with this key, best first.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        match self {
            Picker::Hash(p) => p.candidates(key),
        }
    }

    /// The routable backend with this id.
    pub fn backend(&self, id: ServerId) -> Option<&Arc<Backend>> {
        match self {
            Picker::Hash(p) => p.backend(id),
        }
    }

    /// Whether no replica may take traffic.
    pub fn is_empty(&self) -> bool {
        match self {
            Picker::Hash(p) => p.is_empty(),
        }
    }

    /// Requests in flight over every routable backend.
    pub fn in_flight(&self) -> usize {
        match self {
            Picker::Hash(p) => p.in_flight(),
        }
    }
}
