//! The membership registry: one actor that owns the backend set and publishes what
//! request handlers read.
//!
//! Sources ([`Source`]) tell it what exists: a stream of [`Batch`]es of changes, as
//! tower's `Discover` is a stream of inserts and removals. The registry applies each
//! batch, lets the policy place newcomers and forget leavers, and publishes one
//! snapshot. It never waits on anything but its sources: every slow thing (starting,
//! draining, stopping, probing) happens in the sources' own tasks.
//!
//! Today's sources: [`managed`], the replicas a provisioner runs (and, over the
//! `static` provisioner, fixed backends), with `/add`, `/rm` and self-healing.
//! Backends that register themselves or come from etcd are further sources.

pub mod managed;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{BoxStream, SelectAll, StreamExt};

use crate::backend::{Backend, ServerId};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::snapshot::{ReplicaState, ReplicaStatus, SharedSnapshot, Snapshot};

/// A backend as its source describes it.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: ServerId,
    pub hostname: String,
    pub state: ReplicaState,
    /// `host:port`, when running.
    pub address: Option<String>,
    /// The provisioner's handle (pid, container id), when running.
    pub handle: Option<String>,
    /// How many times it was replaced after dying.
    pub restarts: u32,
    /// Its live figures, present while it may take traffic.
    pub backend: Option<Arc<Backend>>,
    /// Whether an operator lets new requests reach it.
    pub enabled: bool,
}

/// One change to the backend set.
#[derive(Debug, Clone)]
pub enum Change {
    /// A member joined, or its state, address or figures changed.
    Upsert(Member),
    /// A member left for good.
    Remove(ServerId),
}

/// Changes a source applies together, published as one snapshot; `then` runs once
/// it is published (an `/add`'s answer, which must show the new replicas).
pub struct Batch {
    pub changes: Vec<Change>,
    pub then: Option<Box<dyn FnOnce() + Send>>,
}

/// Where backends come from: a stream of batches of changes, for as long as the
/// source runs.
pub trait Source: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// Its changes. The registry stops when every source's stream has ended.
    fn changes(self: Box<Self>) -> BoxStream<'static, Batch>;
}

/// The actor. Create with [`Registry::new`], then [`Registry::run`] it.
pub struct Registry {
    policy: Box<dyn Policy>,
    members: BTreeMap<ServerId, Member>,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// A registry that publishes into `snapshot`, choosing by `policy`.
    pub fn new(policy: Box<dyn Policy>, snapshot: SharedSnapshot, metrics: Arc<Metrics>) -> Self {
        Registry {
            policy,
            members: BTreeMap::new(),
            snapshot,
            metrics,
        }
    }

    /// An empty snapshot to start a [`SharedSnapshot`] with.
    pub fn empty_snapshot(policy: &dyn Policy) -> Snapshot {
        Snapshot {
            picker: policy.picker(Vec::new()),
            replicas: Vec::new(),
        }
    }

    /// Applies the sources' changes until all of them have ended.
    pub async fn run(mut self, sources: Vec<Box<dyn Source>>) {
        let mut changes: SelectAll<BoxStream<'static, Batch>> = SelectAll::new();
        for source in sources {
            log::debug!("registry: source {}", source.name());
            changes.push(source.changes());
        }
        while let Some(batch) = changes.next().await {
            self.apply(batch.changes);
            self.publish();
            if let Some(then) = batch.then {
                then();
            }
        }
    }

    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Upsert(member) => {
                    let id = member.id;
                    if !self.members.contains_key(&id) {
                        // Sources hand out ids within the policy's capacity, once each.
                        if let Err(e) = self.policy.join(id) {
                            log::error!("{} cannot be placed: {e}", member.hostname);
                            continue;
                        }
                    }
                    self.members.insert(id, member);
                }
                Change::Remove(id) => {
                    if self.members.remove(&id).is_some() {
                        self.policy.leave(id);
                    }
                }
            }
        }
    }

    fn publish(&self) {
        let routable = self
            .members
            .values()
            .filter(|m| m.state == ReplicaState::Healthy && m.enabled)
            .filter_map(|m| m.backend.clone())
            .collect();
        let replicas = self
            .members
            .values()
            .map(|m| ReplicaStatus {
                hostname: m.hostname.clone(),
                id: m.id,
                state: match m.state {
                    ReplicaState::Healthy if !m.enabled => ReplicaState::Disabled,
                    state => state,
                },
                address: m.address.clone(),
                restarts: m.restarts,
                handle: m.handle.clone(),
            })
            .collect();
        self.metrics.ring_changes.inc();
        self.snapshot.store(Arc::new(Snapshot {
            picker: self.policy.picker(routable),
            replicas,
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use arc_swap::ArcSwap;

    use super::*;
    use crate::policy::hash::HashPolicy;
    use crate::ring::{Geometry, Ring};

    /// A source that says a fixed list of batches, then ends.
    struct Fixed(Vec<Batch>);

    impl Source for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn changes(self: Box<Self>) -> BoxStream<'static, Batch> {
            futures_util::stream::iter(self.0).boxed()
        }
    }

    fn member(id: ServerId, state: ReplicaState, metrics: &Metrics) -> Member {
        let hostname = format!("S{id}");
        let backend = (state == ReplicaState::Healthy).then(|| {
            Arc::new(Backend::new(
                id,
                hostname.clone(),
                format!("h:{id}"),
                metrics.replica(&hostname),
            ))
        });
        Member {
            id,
            hostname,
            state,
            address: Some(format!("h:{id}")),
            handle: Some(format!("p{id}")),
            restarts: 0,
            backend,
            enabled: true,
        }
    }

    fn batch(changes: Vec<Change>) -> Batch {
        Batch {
            changes,
            then: None,
        }
    }

    fn registry() -> (Registry, SharedSnapshot) {
        let ring = Ring::new(
            Geometry::DEFAULT,
            crate::scheme::by_name("quadratic").unwrap(),
        );
        let policy = Box::new(HashPolicy::new(ring));
        let snapshot = Arc::new(ArcSwap::from_pointee(Registry::empty_snapshot(&*policy)));
        let registry = Registry::new(policy, snapshot.clone(), Arc::new(Metrics::new()));
        (registry, snapshot)
    }

    fn routed(snapshot: &SharedSnapshot) -> Vec<ServerId> {
        let snap = snapshot.load();
        (0..2000u64)
            .filter_map(|key| snap.picker.candidates(key).next().map(|b| b.id))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn every_member_is_shown_and_only_the_healthy_ones_are_routed_to() {
        let m = Metrics::new();
        let (registry, snapshot) = registry();
        let changes = vec![
            Change::Upsert(member(1, ReplicaState::Healthy, &m)),
            Change::Upsert(member(2, ReplicaState::Starting, &m)),
            Change::Upsert(member(3, ReplicaState::Healthy, &m)),
        ];
        registry
            .run(vec![Box::new(Fixed(vec![batch(changes)]))])
            .await;
        assert_eq!(snapshot.load().hostnames(), ["S1", "S2", "S3"]);
        assert_eq!(routed(&snapshot), [1, 3]);
    }

    #[tokio::test]
    async fn a_batch_is_published_before_its_then_runs() {
        let m = Metrics::new();
        let (registry, snapshot) = registry();
        let seen = Arc::new(AtomicBool::new(false));
        let (check, seen_by_then) = (snapshot.clone(), seen.clone());
        let then: Box<dyn FnOnce() + Send> = Box::new(move || {
            seen_by_then.store(check.load().hostnames() == ["S1"], Ordering::SeqCst);
        });
        let batch = Batch {
            changes: vec![Change::Upsert(member(1, ReplicaState::Healthy, &m))],
            then: Some(then),
        };
        registry.run(vec![Box::new(Fixed(vec![batch]))]).await;
        assert!(seen.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_member_that_leaves_is_forgotten_and_the_others_keep_their_keys() {
        let m = Metrics::new();
        let (mut registry, snapshot) = registry();
        let up = |id| Change::Upsert(member(id, ReplicaState::Healthy, &m));
        registry.apply(vec![up(1), up(2), up(3)]);
        registry.publish();
        let owners = |s: &SharedSnapshot| -> Vec<ServerId> {
            let snap = s.load();
            (0..500u64)
                .map(|k| snap.picker.candidates(k).next().unwrap().id)
                .collect()
        };
        let before = owners(&snapshot);
        registry.apply(vec![Change::Remove(2)]);
        registry.publish();
        let after = owners(&snapshot);
        assert_eq!(snapshot.load().hostnames(), ["S1", "S3"]);
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(b, a);
            }
        }
        // Its place is free again: the same id joins where it was.
        registry.apply(vec![up(2)]);
        registry.publish();
        assert_eq!(owners(&snapshot), before);
    }

    #[tokio::test]
    async fn a_disabled_member_is_shown_as_disabled_and_never_routed_to() {
        let m = Metrics::new();
        let (registry, snapshot) = registry();
        let mut off = member(2, ReplicaState::Healthy, &m);
        off.enabled = false;
        let changes = vec![
            Change::Upsert(member(1, ReplicaState::Healthy, &m)),
            Change::Upsert(off),
        ];
        registry
            .run(vec![Box::new(Fixed(vec![batch(changes)]))])
            .await;
        assert_eq!(routed(&snapshot), [1]);
        let snap = snapshot.load();
        assert_eq!(snap.replicas[1].state, ReplicaState::Disabled);
        assert_eq!(snap.hostnames(), ["S1", "S2"]);
    }

    #[tokio::test]
    async fn the_changes_of_several_sources_all_reach_the_set() {
        let m = Metrics::new();
        let (registry, snapshot) = registry();
        let one = Fixed(vec![batch(vec![Change::Upsert(member(
            1,
            ReplicaState::Healthy,
            &m,
        ))])]);
        let two = Fixed(vec![batch(vec![Change::Upsert(member(
            2,
            ReplicaState::Healthy,
            &m,
        ))])]);
        registry.run(vec![Box::new(one), Box::new(two)]).await;
        assert_eq!(routed(&snapshot), [1, 2]);
    }
}
