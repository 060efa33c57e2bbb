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
//!
//! It also owns the routing settings: `PUT /policy` reaches it as a [`Command`],
//! and the new policy is placed over the current members and published before the
//! answer goes out. Requests in flight keep the snapshot they started with.

pub mod claims;
pub mod cluster;
pub mod etcd;
pub mod managed;
pub mod registered;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::stream::{BoxStream, SelectAll, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::backend::{Backend, ServerId};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy::settings::{Settings, SettingsError};
use crate::policy::{self, Policy, UnknownPolicy};
use crate::ring::Geometry;
use crate::snapshot::{ReplicaState, ReplicaStatus, SharedSnapshot, Snapshot};
use claims::Owner;

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
    /// Which source it comes from.
    pub owner: Owner,
    /// Where it serves look-aside gRPC, if it does.
    pub grpc_address: Option<String>,
}

/// One change to the backend set.
#[derive(Debug, Clone)]
pub enum Change {
    /// A member joined, or its state, address or figures changed.
    Upsert(Member),
    /// A member left for good.
    Remove(ServerId),
    /// Where a member's virtual nodes go on the ring of a scheme, when another
    /// balancer decided it; comes before the member's first `Upsert`.
    Place(ServerId, Placement),
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

/// What the registry is asked to do besides applying its sources' changes.
pub enum Command {
    /// `PUT /policy`: apply `body` to the routing settings, or say why not.
    UpdatePolicy {
        body: serde_json::Value,
        reply: oneshot::Sender<Result<Settings, SettingsError>>,
    },
}

/// How the API reaches the registry.
#[derive(Debug, Clone)]
pub struct RegistryHandle(mpsc::UnboundedSender<Command>);

impl RegistryHandle {
    /// Applies a `PUT /policy` body; answers once requests see the new settings.
    pub async fn update_policy(&self, body: serde_json::Value) -> Result<Settings, ApiError> {
        let (reply, answer) = oneshot::channel();
        let stopping = || ApiError::Unavailable("The balancer is shutting down".into());
        self.0
            .send(Command::UpdatePolicy { body, reply })
            .map_err(|_| stopping())?;
        let settings = answer.await.map_err(|_| stopping())?;
        settings.map_err(|e| ApiError::bad(e.to_string()))
    }
}

/// A source whose task sends its batches down a channel: how every source of ours
/// (managed, registered, etcd) talks to the registry.
pub struct ChannelSource {
    name: &'static str,
    changes: mpsc::UnboundedReceiver<Batch>,
}

impl ChannelSource {
    /// A source called `name` (for logs), and the sender its task reports through.
    pub fn new(name: &'static str) -> (mpsc::UnboundedSender<Batch>, Self) {
        let (tx, changes) = mpsc::unbounded_channel();
        (tx, ChannelSource { name, changes })
    }
}

impl Source for ChannelSource {
    fn name(&self) -> &'static str {
        self.name
    }

    fn changes(self: Box<Self>) -> BoxStream<'static, Batch> {
        futures_util::stream::unfold(self.changes, |mut rx| async move {
            rx.recv().await.map(|batch| (batch, rx))
        })
        .boxed()
    }
}

/// The actor. Create with [`Registry::new`], then [`Registry::run`] it.
pub struct Registry {
    /// The policy in force.
    policy: Box<dyn Policy>,
    /// Every other policy, by name, for look-aside clients that ask for one.
    others: Vec<Box<dyn Policy>>,
    settings: Arc<Settings>,
    geometry: Geometry,
    members: BTreeMap<ServerId, Member>,
    snapshot: SharedSnapshot,
    /// Every snapshot as it is published, for readers that must not miss a brief
    /// state (the dashboard); a reader that lags skips ahead, the registry never waits.
    published: broadcast::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Ring slots another balancer gave members (a cluster's leader), by id, with
    /// the scheme they are slots of: such a member is placed there, not probed, so
    /// balancers that heard of members in different orders build the same ring.
    placements: BTreeMap<ServerId, Placement>,
}

/// Where a member's virtual nodes go on the ring of one scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub scheme: String,
    pub slots: Vec<usize>,
}

impl Registry {
    /// A registry routing by `settings` over a ring of `geometry`, with the
    /// snapshot it publishes into (empty until its sources speak) and its handle.
    pub fn new(
        settings: Settings,
        geometry: Geometry,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, SharedSnapshot, RegistryHandle), UnknownPolicy> {
        let policy = policy::build(settings.policy, settings.tuning(geometry))?;
        let others = build_others(&settings, geometry, std::iter::empty(), &BTreeMap::new())
            .map_err(|e| UnknownPolicy(e.to_string()))?;
        let settings = Arc::new(settings);
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
            picker: policy.picker(Vec::new()),
            lookaside: Arc::new(Vec::new()),
            replicas: Vec::new(),
            settings: settings.clone(),
            figures: Vec::new(),
        }));
        let (tx, commands) = mpsc::unbounded_channel();
        let registry = Registry {
            policy,
            others,
            settings,
            geometry,
            members: BTreeMap::new(),
            snapshot: snapshot.clone(),
            published: broadcast::channel(PUBLISHED_BACKLOG).0,
            metrics,
            commands,
            placements: BTreeMap::new(),
        };
        Ok((registry, snapshot, RegistryHandle(tx)))
    }

    /// Every snapshot published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Snapshot>> {
        self.published.subscribe()
    }

    /// The most replicas the policy can place.
    pub fn capacity(&self) -> usize {
        self.policy.capacity()
    }

    /// Applies the sources' changes and the commands until every source has ended.
    pub async fn run(mut self, sources: Vec<Box<dyn Source>>) {
        let mut changes: SelectAll<BoxStream<'static, Batch>> = SelectAll::new();
        for source in sources {
            log::debug!("registry: source {}", source.name());
            changes.push(source.changes());
        }
        loop {
            tokio::select! {
                batch = changes.next() => {
                    let Some(batch) = batch else { break };
                    self.apply(batch.changes);
                    self.publish();
                    if let Some(then) = batch.then {
                        then();
                    }
                }
                Some(command) = self.commands.recv() => self.on_command(command),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::UpdatePolicy { body, reply } => {
                let result = self.update_policy(&body);
                if result.is_ok() {
                    self.publish();
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Builds the policy the new settings name, places every member on it, and only
    /// then swaps it in: a refusal leaves everything as it was.
    fn update_policy(&mut self, body: &serde_json::Value) -> Result<Settings, SettingsError> {
        let new = self.settings.updated(body)?;
        let rebuild = (new.policy, new.balance_factor, new.slow_start)
            != (
                self.settings.policy,
                self.settings.balance_factor,
                self.settings.slow_start,
            );
        if rebuild {
            let (policy, others) = self.placed(&new).map_err(SettingsError::Invalid)?;
            self.policy = policy;
            self.others = others;
        }
        log::info!("routing by {} with {}", self.policy.name(), new.view());
        self.settings = Arc::new(new.clone());
        Ok(new)
    }

    /// The policies `settings` name, with every member placed in id order.
    #[allow(clippy::type_complexity)]
    fn placed(
        &self,
        settings: &Settings,
    ) -> Result<(Box<dyn Policy>, Vec<Box<dyn Policy>>), String> {
        let mut policy = policy::build(settings.policy, settings.tuning(self.geometry))
            .map_err(|e| e.to_string())?;
        for id in self.members.keys() {
            join(&mut *policy, *id, self.placements.get(id)).map_err(|e| e.to_string())?;
        }
        let others = build_others(
            settings,
            self.geometry,
            self.members.keys().copied(),
            &self.placements,
        )
        .map_err(|e| e.to_string())?;
        Ok((policy, others))
    }

    fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Upsert(member) => {
                    let id = member.id;
                    if !self.members.contains_key(&id) {
                        let placement = self.placements.get(&id);
                        // Sources claim ids within the ring's capacity, once each.
                        if let Err(e) = join(&mut *self.policy, id, placement) {
                            log::error!("{} cannot be placed: {e}", member.hostname);
                            continue;
                        }
                        for p in &mut self.others {
                            let _ = join(&mut **p, id, placement);
                        }
                    }
                    self.members.insert(id, member);
                }
                Change::Place(id, placement) => {
                    self.placements.insert(id, placement);
                }
                Change::Remove(id) => {
                    self.placements.remove(&id);
                    if self.members.remove(&id).is_some() {
                        self.policy.leave(id);
                        for p in &mut self.others {
                            p.leave(id);
                        }
                    }
                }
            }
        }
    }

    fn publish(&self) {
        let routable = || {
            self.members
                .values()
                .filter(|m| m.state == ReplicaState::Healthy && m.enabled)
        };
        // The data plane routes to backends that serve HTTP; look-aside clients are
        // answered with those that serve gRPC.
        let http = routable()
            .filter(|m| m.address.is_some())
            .filter_map(|m| m.backend.clone())
            .collect();
        let grpc: Vec<_> = routable()
            .filter(|m| m.grpc_address.is_some())
            .filter_map(|m| m.backend.clone())
            .collect();
        let lookaside = std::iter::once(&self.policy)
            .chain(&self.others)
            .map(|p| (p.name(), p.picker(grpc.clone())))
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
                grpc_address: m.grpc_address.clone(),
                restarts: m.restarts,
                handle: m.handle.clone(),
                source: m.owner,
            })
            .collect();
        self.metrics.ring_changes.inc();
        let snapshot = Arc::new(Snapshot {
            picker: self.policy.picker(http),
            lookaside: Arc::new(lookaside),
            replicas,
            settings: self.settings.clone(),
            figures: self
                .members
                .values()
                .filter_map(|m| m.backend.clone())
                .collect(),
        });
        self.snapshot.store(snapshot.clone());
        // No subscriber is fine.
        let _ = self.published.send(snapshot);
    }
}

/// How many snapshots a subscriber may fall behind before it skips ahead.
const PUBLISHED_BACKLOG: usize = 64;

/// Every policy but the one `settings` names, each with `members` placed.
fn build_others(
    settings: &Settings,
    geometry: Geometry,
    members: impl Iterator<Item = ServerId> + Clone,
    placements: &BTreeMap<ServerId, Placement>,
) -> Result<Vec<Box<dyn Policy>>, crate::ring::RingError> {
    policy::names()
        .filter(|n| *n != settings.policy)
        .map(|name| {
            let mut p = policy::build(name, settings.tuning(geometry)).expect("a listed name");
            for id in members.clone() {
                join(&mut *p, id, placements.get(&id))?;
            }
            Ok(p)
        })
        .collect()
}

/// Places `id` on `policy`: on the slots given for its scheme if there are, else as
/// the policy places newcomers. Given slots that no longer fit (another balancer's
/// view that this one has not caught up with) are a warning, not a refusal.
fn join(
    policy: &mut dyn Policy,
    id: ServerId,
    placement: Option<&Placement>,
) -> Result<(), crate::ring::RingError> {
    match placement.filter(|p| p.scheme == policy.name()) {
        Some(p) => policy.join_at(id, &p.slots).or_else(|e| {
            log::warn!("replica {id}: {e}; placing it on this balancer's own");
            policy.join(id)
        }),
        None => policy.join(id),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

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
            owner: Owner::Managed,
            grpc_address: None,
        }
    }

    fn batch(changes: Vec<Change>) -> Batch {
        Batch {
            changes,
            then: None,
        }
    }

    fn registry() -> (Registry, SharedSnapshot) {
        let (registry, snapshot, _) = Registry::new(
            Settings::default(),
            Geometry::DEFAULT,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        (registry, snapshot)
    }

    fn first(snap: &Snapshot, key: u64) -> Option<ServerId> {
        let ask = crate::policy::Ask {
            key,
            draw: key,
            now: std::time::Instant::now(),
            demand: None,
        };
        snap.picker.candidates(&ask).next().map(|b| b.id)
    }

    fn routed(snapshot: &SharedSnapshot) -> Vec<ServerId> {
        let snap = snapshot.load();
        (0..2000u64)
            .filter_map(|key| first(&snap, key))
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
            (0..500u64).map(|k| first(&snap, k).unwrap()).collect()
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

    #[tokio::test]
    async fn a_new_policy_routes_over_the_same_members_and_keeps_their_places() {
        let m = Metrics::new();
        let (mut registry, snapshot) = registry();
        let up = |id| Change::Upsert(member(id, ReplicaState::Healthy, &m));
        registry.apply(vec![up(1), up(2), up(3)]);
        registry.publish();
        let owners = |s: &SharedSnapshot| -> Vec<Option<ServerId>> {
            let snap = s.load();
            (0..300u64).map(|k| first(&snap, k)).collect()
        };
        let hashed = owners(&snapshot);
        let settings = registry
            .update_policy(&serde_json::json!({"policy": "round-robin"}))
            .unwrap();
        registry.publish();
        assert_eq!(settings.policy, "round-robin");
        assert_eq!(snapshot.load().settings.policy, "round-robin");
        assert!(!snapshot.load().picker.needs_key());
        let turns = owners(&snapshot);
        for id in 1..=3 {
            assert_eq!(turns.iter().filter(|o| **o == Some(id)).count(), 100);
        }
        registry
            .update_policy(&serde_json::json!({"policy": "quadratic"}))
            .unwrap();
        registry.publish();
        assert_eq!(owners(&snapshot), hashed);
    }

    #[tokio::test]
    async fn a_refused_update_changes_nothing() {
        let m = Metrics::new();
        let (mut registry, snapshot) = registry();
        registry.apply(vec![Change::Upsert(member(1, ReplicaState::Healthy, &m))]);
        registry.publish();
        let before = snapshot.load_full();
        let err = registry
            .update_policy(&serde_json::json!({"policy": "random", "hedge": "never"}))
            .unwrap_err();
        assert!(err.to_string().contains("hedge"));
        assert_eq!(registry.settings.policy, "quadratic");
        assert!(Arc::ptr_eq(&before, &snapshot.load_full()));
    }

    /// The owner of every key in `0..10_000` after `batches`.
    fn owners_after(batches: Vec<Vec<Change>>) -> Vec<Option<ServerId>> {
        let (mut registry, snapshot) = registry();
        for changes in batches {
            registry.apply(changes);
        }
        registry.publish();
        let snap = snapshot.load();
        (0..10_000).map(|k| first(&snap, k)).collect()
    }

    #[test]
    fn members_placed_on_given_slots_route_alike_whatever_the_order_heard_in() {
        let m = Metrics::new();
        let up = |id| Change::Upsert(member(id, ReplicaState::Healthy, &m));
        // A leader saw the set grow, shrink and reuse an id; a balancer started
        // later hears of the result at once.
        let lived = vec![
            vec![up(1), up(2), up(3)],
            vec![up(4), up(5), up(6)],
            vec![Change::Remove(2), Change::Remove(5)],
            vec![up(5)],
            vec![up(2)],
        ];
        let mut leader = crate::ring::Ring::new(
            Geometry::DEFAULT,
            crate::scheme::by_name("quadratic").unwrap(),
        );
        for id in [1, 2, 3, 4, 5, 6] {
            leader.add(id).unwrap();
        }
        leader.remove(2);
        leader.remove(5);
        leader.add(5).unwrap();
        leader.add(2).unwrap();
        let at_once = |placed: bool| {
            let mut changes = Vec::new();
            for id in [6, 2, 4, 1, 5, 3] {
                if placed {
                    let slots = leader.slots_of(id);
                    changes.push(Change::Place(
                        id,
                        Placement {
                            scheme: "quadratic".into(),
                            slots,
                        },
                    ));
                }
                changes.push(up(id));
            }
            vec![changes]
        };
        // Heard of in another order, the same set routes differently...
        assert_ne!(owners_after(lived.clone()), owners_after(at_once(false)));
        // ...unless placed where the leader put it.
        assert_eq!(owners_after(lived), owners_after(at_once(true)));
    }
}
