//! Balancing policies: how a request's replica is chosen.
//!
//! A [`Policy`] lives in the registry, which owns the backend set: it hears every
//! member join and leave (a hash policy keeps its ring that way), and after each
//! change it builds a [`Picker`] over the replicas that may take traffic, which goes
//! into the published snapshot. The data plane asks the picker for one request's
//! candidates, best first, so failover just takes the next (as pingora's selection
//! iterators do); it computes a request's hash key only when the picker needs one.
//!
//! Two families: [`hash`] (key-affine: the ring and its schemes, with bounded loads
//! and slow start) and [`load`] (load-aware: each rule in [`rules`] is a small
//! function over the backends' live figures, as tower's `p2c` is over `Load`).

pub mod hash;
pub mod load;
pub mod rules;
pub mod settings;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Backend, Resources, ServerId};
use crate::ring::{Geometry, Ring, RingError};
use crate::scheme;
use crate::scheme::bounded::Bound;

/// How replicas are chosen, kept up to date with the replica set.
pub trait Policy: Send + Sync + Debug {
    /// Its name, as `--policy` and `/policy` give it.
    fn name(&self) -> &'static str;

    /// The most replicas it can place (a ring's capacity).
    fn capacity(&self) -> usize;

    /// A replica joins the set, routable or not yet. A hash policy places it now, so
    /// a replica that is down keeps its place and its replacement lands there.
    fn join(&mut self, id: ServerId) -> Result<(), RingError>;

    /// A replica joins on the ring slots another balancer gave it (a cluster's
    /// leader); policies without a ring just [`Policy::join`].
    fn join_at(&mut self, id: ServerId, _slots: &[usize]) -> Result<(), RingError> {
        self.join(id)
    }

    /// A replica leaves the set for good.
    fn leave(&mut self, id: ServerId);

    /// The picker over `routable`, the replicas that may take traffic now, in id
    /// order.
    fn picker(&self, routable: Vec<Arc<Backend>>) -> Picker;
}

/// What a picker knows of one request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Its hash key (read by hash policies only).
    pub key: u64,
    /// Random bits drawn for it (read by load-aware policies only).
    pub draw: u64,
    /// When it arrived: the estimates and slow start are read at this instant.
    pub now: Instant,
    /// What it says it needs (`X-Demand`; read by `resource-fit` only).
    pub demand: Option<&'a Resources>,
}

/// One published choice structure: immutable, read by every request of a snapshot.
/// An enum rather than a trait object so that a request's candidates are a
/// concrete iterator with no allocation, whichever policy is in force.
#[derive(Debug, Clone)]
pub enum Picker {
    /// A hash policy's table.
    Hash(hash::HashPicker),
    /// A load-aware policy's rule over the routable backends.
    Load(load::LoadPicker),
}

/// Either of two iterators, so both pickers' candidates are one concrete type.
enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Either::Left(a) => a.next(),
            Either::Right(b) => b.next(),
        }
    }
}

impl Picker {
    /// Whether candidates depend on the request's key.
    pub fn needs_key(&self) -> bool {
        matches!(self, Picker::Hash(_))
    }

    /// Whether candidates depend on the request's `X-Demand`.
    pub fn needs_demand(&self) -> bool {
        matches!(self, Picker::Load(p) if p.rule() == load::Rule::ResourceFit)
    }

    /// The replicas to try for this request, best first. Each routable, enabled
    /// replica comes once; a disabled one never; an ejected or unavailable one only
    /// after every selectable one.
    pub fn candidates<'a>(&'a self, ask: &Ask<'_>) -> impl Iterator<Item = &'a Arc<Backend>> + 'a {
        match self {
            Picker::Hash(p) => Either::Left(p.candidates(ask.key, ask.now)),
            Picker::Load(p) => Either::Right(p.candidates(ask)),
        }
    }

    /// The routable backend with this id.
    pub fn backend(&self, id: ServerId) -> Option<&Arc<Backend>> {
        match self {
            Picker::Hash(p) => p.backend(id),
            Picker::Load(p) => p.backend(id),
        }
    }

    /// Every routable backend, in id order.
    pub fn backends(&self) -> Box<dyn Iterator<Item = &Arc<Backend>> + '_> {
        match self {
            Picker::Hash(p) => Box::new(p.backends()),
            Picker::Load(p) => Box::new(p.backends().iter()),
        }
    }

    /// Whether no replica may take traffic.
    pub fn is_empty(&self) -> bool {
        match self {
            Picker::Hash(p) => p.is_empty(),
            Picker::Load(p) => p.backends().is_empty(),
        }
    }
}

/// The key-affine policies: the hash schemes.
pub const HASH_POLICIES: &[&str] = scheme::NAMES;

/// Every policy name, hash schemes first, in the order `/policy` lists them.
pub fn names() -> impl Iterator<Item = &'static str> {
    HASH_POLICIES
        .iter()
        .copied()
        .chain(load::Rule::ALL.iter().map(|r| r.name()))
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy '{0}': choose one of {names}", names = names().collect::<Vec<_>>().join(", "))]
pub struct UnknownPolicy(pub String);

/// What a policy is built from besides its name.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// The ring's size.
    pub geometry: Geometry,
    /// Bounded loads for hash policies.
    pub balance_factor: Option<f64>,
    /// How long a newly healthy replica's share ramps up.
    pub slow_start: Option<Duration>,
}

/// The policy called `name`.
pub fn build(name: &str, tuning: Tuning) -> Result<Box<dyn Policy>, UnknownPolicy> {
    if let Some(scheme) = scheme::by_name(name) {
        let bound = tuning.balance_factor.and_then(Bound::new);
        let ring = Ring::new(tuning.geometry, scheme).with_bound(bound);
        return Ok(Box::new(hash::HashPolicy::new(ring, tuning.slow_start)));
    }
    let rule = load::Rule::by_name(name).ok_or_else(|| UnknownPolicy(name.into()))?;
    Ok(Box::new(load::LoadPolicy::new(
        rule,
        tuning.geometry.capacity(),
        tuning.slow_start,
    )))
}

/// Whether a warming backend may be a first choice for this request: always once
/// warm; before that, for a share of requests equal to its warmth. The draw mixes in
/// the backend's id so that two warming backends are not skipped together, and for
/// a hash policy it is the key, so a key moves to a new replica once and stays.
pub fn warm_enough(b: &Backend, draw: u64, now: Instant, slow_start: Option<Duration>) -> bool {
    if slow_start.is_none() {
        return true;
    }
    let warmth = b.warmth(now, slow_start);
    if warmth >= 1.0 {
        return true;
    }
    let mixed = (draw ^ u64::from(b.id)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 11) as f64 / (1u64 << 53) as f64) < warmth
}

#[cfg(test)]
pub(crate) mod testing {
    //! Backends for the policies' unit tests.

    use std::sync::Arc;

    use crate::backend::{Backend, ServerId};
    use crate::metrics::Metrics;

    /// Routable backends with these ids, named `S<id>`, healthy from now.
    pub fn backends(ids: &[ServerId]) -> Vec<Arc<Backend>> {
        ids.iter().map(|id| Arc::new(backend(*id))).collect()
    }

    /// A backend with this id, named `S<id>`, healthy from now.
    pub fn backend(id: ServerId) -> Backend {
        let name = format!("S{id}");
        Backend::new(
            id,
            name.clone(),
            name.clone(),
            Metrics::new().replica(&name),
        )
    }

    /// A backend that has been healthy for long: warm under any slow start.
    pub fn old_backend(id: ServerId) -> Arc<Backend> {
        let mut b = backend(id);
        b.healthy_since -= std::time::Duration::from_secs(200);
        Arc::new(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_builds_its_policy_and_an_unknown_one_is_refused() {
        let tuning = Tuning {
            geometry: Geometry::DEFAULT,
            balance_factor: None,
            slow_start: None,
        };
        let all: Vec<_> = names().collect();
        assert_eq!(all.len(), 15);
        for name in &all {
            assert_eq!(build(name, tuning).unwrap().name(), *name);
        }
        let err = build("fastest", tuning).unwrap_err();
        assert!(err.to_string().contains("p2c-ewma"), "{err}");
    }

    #[test]
    fn a_warming_backend_takes_a_share_that_grows_with_its_warmth() {
        let b = &testing::backends(&[1])[0];
        let d = Some(Duration::from_secs(100));
        let share = |secs| {
            let now = b.healthy_since + Duration::from_secs(secs);
            (0..10_000u64)
                .filter(|k| warm_enough(b, k.wrapping_mul(0x2545_F491_4F6C_DD1D), now, d))
                .count() as f64
                / 10_000.0
        };
        assert!(share(0) < 0.01);
        assert!((share(25) - 0.25).abs() < 0.03, "{}", share(25));
        assert!((share(75) - 0.75).abs() < 0.03, "{}", share(75));
        assert_eq!(share(100), 1.0);
    }
}
