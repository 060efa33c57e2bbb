//! The managed source: replicas a provisioner runs, kept alive. Serves `/add` and
//! `/rm`, replaces dead replicas, and tells the registry every change.
//!
//! One task owns the replicas' lifecycle and handles one message at a time, so each
//! admin request is applied whole or not at all, without a lock. It never waits:
//! slow work (launching replicas for `/add` or a replacement, waiting for them to
//! answer, draining and stopping for `/rm`, backoff sleeps) runs in spawned tasks that
//! report back by message. Admin requests still take turns (one in flight, the rest
//! queued), but a death is handled the moment it is heard of, whatever `/add` is doing.
//!
//! Over the `static` provisioner, which cannot start anything, the same logic balances
//! fixed backends: "relaunching" one is waiting for it to answer again.

mod launch;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};

pub use launch::{backoff, LaunchError};

use super::claims::{Claims, Owner};
use super::{Batch, Change, ChannelSource, Member as RegistryMember};
use crate::admin::{self, Member, ScaleRequest};
use crate::backend::ServerId;
use crate::error::ApiError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::provisioner::{Provisioner, ProvisionerEvent, ReplicaSpec, Running};
use crate::snapshot::{Backend, ReplicaState};

/// A replica that stayed healthy this long has its crash streak forgiven.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Managed settings.
#[derive(Debug, Clone)]
pub struct ManagedConfig {
    /// Replicas to have at boot.
    pub replicas: usize,
    /// The most replicas ever held (never above what the policy can place).
    pub capacity: usize,
    /// How long a new replica may take to answer `/heartbeat`.
    pub start_timeout: Duration,
    /// How long `/rm` lets in-flight requests finish before stopping a replica.
    pub drain_timeout: Duration,
}

enum Command {
    Add(ScaleRequest, oneshot::Sender<Result<(), ApiError>>),
    Remove(ScaleRequest, oneshot::Sender<Result<(), ApiError>>),
    /// Lets new requests reach a replica, or keeps them away.
    Enable(String, bool, oneshot::Sender<Result<(), ApiError>>),
    Shutdown(oneshot::Sender<()>),
}

type Reply = oneshot::Sender<Result<(), ApiError>>;

/// Reports from the managed source's own spawned tasks.
enum Note {
    Launched {
        id: ServerId,
        incarnation: u64,
        result: Result<Running, LaunchError>,
    },
    Respawn {
        id: ServerId,
        incarnation: u64,
    },
    /// An `/add`'s replicas all answered (`Ok`), or one could not start and the others
    /// were stopped again (`Err`).
    Added {
        plan: Vec<Member>,
        result: Result<Vec<Running>, LaunchError>,
        reply: Reply,
    },
    /// An `/rm`'s replicas are drained and stopped.
    Removed {
        reply: Reply,
    },
}

/// How the admin API talks to the managed source.
#[derive(Clone)]
pub struct ManagedHandle {
    commands: mpsc::Sender<Command>,
}

impl ManagedHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let gone = || ApiError::Unavailable("The balancer is shutting down".into());
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Adds replicas; see [`admin::plan_add`].
    pub async fn add(&self, req: ScaleRequest) -> Result<(), ApiError> {
        self.ask(|tx| Command::Add(req, tx)).await?
    }

    /// Removes replicas; see [`admin::plan_remove`].
    pub async fn remove(&self, req: ScaleRequest) -> Result<(), ApiError> {
        self.ask(|tx| Command::Remove(req, tx)).await?
    }

    /// Keeps new requests away from replica `hostname` (`false`) or lets them reach it
    /// again; answered once the registry has published it.
    pub async fn enable(&self, hostname: String, enabled: bool) -> Result<(), ApiError> {
        self.ask(|tx| Command::Enable(hostname, enabled, tx))
            .await?
    }

    /// Stops the managed source; the provisioner decides what happens to the replicas.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

struct Replica {
    hostname: String,
    id: ServerId,
    state: ReplicaState,
    running: Option<Running>,
    /// A dead incarnation still to be cleaned up before the next one starts
    /// (a container keeps its name until removed).
    stale: Option<Running>,
    backend: Option<Arc<Backend>>,
    restarts: u32,
    streak: u32,
    healthy_since: Option<Instant>,
    incarnation: u64,
    /// Cleared by `/replicas/<name>/disable`; kept across respawns.
    enabled: bool,
}

impl Replica {
    fn new(hostname: String, id: ServerId) -> Self {
        Replica {
            hostname,
            id,
            state: ReplicaState::Starting,
            running: None,
            stale: None,
            backend: None,
            restarts: 0,
            streak: 0,
            healthy_since: None,
            incarnation: 0,
            enabled: true,
        }
    }

    fn become_healthy(&mut self, running: Running, metrics: &Metrics) {
        let backend = Backend::new(
            self.id,
            self.hostname.clone(),
            running.address.clone(),
            metrics.replica(&self.hostname),
        )
        .serving_grpc(running.grpc_address.clone());
        // A replacement stays as disabled as the replica it replaces.
        backend.set_enabled(self.enabled);
        self.backend = Some(Arc::new(backend));
        self.running = Some(running);
        self.state = ReplicaState::Healthy;
        self.healthy_since = Some(Instant::now());
    }

    fn spec(&self) -> ReplicaSpec {
        ReplicaSpec {
            hostname: self.hostname.clone(),
            id: self.id,
        }
    }
}

/// The task that owns the managed replicas. Create with [`Managed::new`], then
/// [`Managed::spawn`] it and give its [`ManagedSource`] to the registry.
pub struct Managed {
    provisioner: Arc<dyn Provisioner>,
    health: Arc<dyn Health>,
    config: ManagedConfig,
    /// Names and ids shared with the other sources.
    claims: Claims,
    replicas: BTreeMap<ServerId, Replica>,
    /// Where the registry hears of every change.
    changes: mpsc::UnboundedSender<Batch>,
    /// The registry's end of `changes`, until spawned.
    source: Option<ChannelSource>,
    /// Replicas gone since the last report.
    removed: Vec<ServerId>,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<Note>,
    notes_rx: Option<mpsc::UnboundedReceiver<Note>>,
    /// An `/add` or `/rm` is being carried out by its task.
    busy: bool,
    /// Admin requests waiting for their turn.
    queued: VecDeque<Command>,
}

impl Managed {
    /// Replicas run by `provisioner`, at most `config.capacity` of them (which the
    /// caller bounds by what the policy can place).
    pub fn new(
        provisioner: Arc<dyn Provisioner>,
        health: Arc<dyn Health>,
        config: ManagedConfig,
        claims: Claims,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (changes, source) = ChannelSource::new("managed");
        Managed {
            provisioner,
            health,
            config,
            claims,
            replicas: BTreeMap::new(),
            changes,
            source: Some(source),
            removed: Vec::new(),
            metrics,
            notes,
            notes_rx: Some(notes_rx),
            busy: false,
            queued: VecDeque::new(),
        }
    }

    /// Runs it until shutdown. `events` carries the provisioner's death reports,
    /// `unhealthy` the handles the heartbeat loop gave up on. Returns the handle the
    /// admin API asks through, the source the registry listens to, and the task.
    pub fn spawn(
        mut self,
        events: mpsc::UnboundedReceiver<ProvisionerEvent>,
        unhealthy: mpsc::UnboundedReceiver<String>,
    ) -> (ManagedHandle, ChannelSource, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let notes = self.notes_rx.take().expect("spawned once");
        let source = self.source.take().expect("spawned once");
        let task = tokio::spawn(async move { self.run(rx, events, unhealthy, notes).await });
        (ManagedHandle { commands: tx }, source, task)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::UnboundedReceiver<ProvisionerEvent>,
        mut unhealthy: mpsc::UnboundedReceiver<String>,
        mut notes: mpsc::UnboundedReceiver<Note>,
    ) {
        self.boot().await;
        let mut open = true;
        loop {
            tokio::select! {
                cmd = commands.recv(), if open => match cmd {
                    // Instant, and touching no replica an /add or /rm is working on.
                    Some(Command::Enable(hostname, enabled, reply)) => {
                        self.enable(&hostname, enabled, reply);
                    }
                    Some(cmd) => self.queued.push_back(cmd),
                    None => {
                        // Every handle is gone: nobody can ask anything again.
                        open = false;
                        self.queued.push_back(Command::Shutdown(oneshot::channel().0));
                    }
                },
                Some(ProvisionerEvent::Died { handle, reason }) = events.recv() => {
                    self.on_died(&handle, &reason);
                }
                Some(handle) = unhealthy.recv() => {
                    self.on_died(&handle, "missed heartbeats");
                }
                Some(note) = notes.recv() => self.on_note(note),
            }
            // The next admin request starts once the one before it has reported back.
            while !self.busy {
                match self.queued.pop_front() {
                    Some(Command::Add(req, reply)) => self.begin_add(req, reply),
                    Some(Command::Remove(req, reply)) => self.begin_remove(req, reply),
                    Some(Command::Enable(hostname, enabled, reply)) => {
                        self.enable(&hostname, enabled, reply);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => break,
                }
            }
        }
    }

    /// Adopts what the provisioner already runs, then starts the rest of the replicas.
    async fn boot(&mut self) {
        let found = self.provisioner.discover().await.unwrap_or_else(|e| {
            log::error!("could not list existing replicas: {e}");
            Vec::new()
        });
        for running in found {
            // Ids are handed out smallest-first, so a live one is never above the
            // ring's capacity; a larger label was not written by us, and tables are
            // indexed by id.
            let clash = running.id as usize > self.config.capacity
                || !self
                    .claims
                    .claim_as(Owner::Managed, &running.hostname, running.id);
            if clash {
                log::warn!("not adopting duplicate {}", running.hostname);
                let _ = self.provisioner.stop(&running, Duration::ZERO).await;
                continue;
            }
            log::info!("adopting {} ({})", running.hostname, running.handle);
            let id = running.id;
            let mut replica = Replica::new(running.hostname.clone(), id);
            replica.running = Some(running);
            self.replicas.insert(id, replica);
            self.launch(id);
        }
        let missing = self.config.replicas.saturating_sub(self.replicas.len());
        if missing > 0 && self.provisioner.can_start() {
            let req = ScaleRequest {
                n: missing,
                hostnames: Vec::new(),
            };
            match self.plan_add(&req) {
                Ok(plan) => {
                    for m in plan {
                        self.replicas.insert(m.id, Replica::new(m.hostname, m.id));
                        self.launch(m.id);
                    }
                }
                Err(e) => log::error!("cannot start {missing} replicas: {e}"),
            }
        }
        self.publish();
    }

    /// Plans an `/add` within `--max-replicas` and claims its names and ids among
    /// every source's.
    fn plan_add(&self, req: &ScaleRequest) -> Result<Vec<Member>, ApiError> {
        admin::plan_add(&self.members(), req, self.config.capacity)?;
        self.claims.plan_add(Owner::Managed, req)
    }

    fn members(&self) -> Vec<Member> {
        self.replicas
            .values()
            .map(|r| Member {
                hostname: r.hostname.clone(),
                id: r.id,
            })
            .collect()
    }

    /// Starts (or, for an adopted one, just waits for) replica `id` in a background
    /// task that reports [`Note::Launched`].
    fn launch(&mut self, id: ServerId) {
        let Some(r) = self.replicas.get_mut(&id) else {
            return;
        };
        r.incarnation += 1;
        r.state = ReplicaState::Starting;
        let (incarnation, spec) = (r.incarnation, r.spec());
        let (adopted, stale) = (r.running.take(), r.stale.take());
        let provisioner = self.provisioner.clone();
        let health = self.health.clone();
        let timeout = self.config.start_timeout;
        let notes = self.notes.clone();
        tokio::spawn(async move {
            let result = match adopted {
                Some(running) => {
                    launch::wait_ready(&*provisioner, &*health, running, timeout).await
                }
                None => launch::launch(&*provisioner, &*health, &spec, stale, timeout).await,
            };
            let _ = notes.send(Note::Launched {
                id,
                incarnation,
                result,
            });
        });
    }

    fn on_note(&mut self, note: Note) {
        match note {
            Note::Launched {
                id,
                incarnation,
                result,
            } => {
                let current = self
                    .replicas
                    .get_mut(&id)
                    .filter(|r| r.incarnation == incarnation && r.state == ReplicaState::Starting);
                match (current, result) {
                    (Some(r), Ok(running)) => {
                        log::info!("{} is healthy at {}", r.hostname, running.address);
                        r.become_healthy(running, &self.metrics);
                        self.publish();
                    }
                    (Some(r), Err(e)) => {
                        log::warn!("{} did not start: {e}", r.hostname);
                        r.state = ReplicaState::Down;
                        self.schedule_respawn(id);
                        self.publish();
                    }
                    (None, Ok(orphan)) => {
                        // Removed while it was starting: it belongs to nobody now.
                        let provisioner = self.provisioner.clone();
                        tokio::spawn(async move {
                            let _ = provisioner.stop(&orphan, Duration::ZERO).await;
                        });
                    }
                    (None, Err(_)) => {}
                }
            }
            Note::Respawn { id, incarnation } => {
                let due = self
                    .replicas
                    .get(&id)
                    .is_some_and(|r| r.incarnation == incarnation && r.state == ReplicaState::Down);
                if due {
                    self.launch(id);
                    self.publish();
                }
            }
            Note::Added {
                plan,
                result,
                reply,
            } => {
                self.busy = false;
                match self.finish_add(plan, result) {
                    // Answered once the registry has published the new replicas, so
                    // the answer's `/rep` body shows them.
                    Ok(()) => self.report(Some(Box::new(move || {
                        let _ = reply.send(Ok(()));
                    }))),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Note::Removed { reply } => {
                self.busy = false;
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// A replica's process or container died, or it stopped answering heartbeats:
    /// take it out of routing and schedule its replacement.
    fn on_died(&mut self, handle: &str, reason: &str) {
        let Some(r) = self.replicas.values_mut().find(|r| {
            r.state == ReplicaState::Healthy
                && r.running.as_ref().is_some_and(|run| run.handle == handle)
        }) else {
            return;
        };
        log::warn!("{} died ({reason}); replacing it", r.hostname);
        if r.healthy_since.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
            r.streak = 0;
        }
        r.state = ReplicaState::Down;
        r.stale = r.running.take();
        r.backend = None;
        r.healthy_since = None;
        r.restarts += 1;
        self.metrics.respawns.inc();
        let id = r.id;
        self.schedule_respawn(id);
        self.publish();
    }

    fn schedule_respawn(&mut self, id: ServerId) {
        let Some(r) = self.replicas.get_mut(&id) else {
            return;
        };
        let delay = backoff(r.streak);
        r.streak = r.streak.saturating_add(1);
        let (notes, incarnation) = (self.notes.clone(), r.incarnation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = notes.send(Note::Respawn { id, incarnation });
        });
    }

    /// Plans an `/add` and launches its replicas in a task of their own; the answer
    /// goes out when it reports back ([`Managed::finish_add`]).
    fn begin_add(&mut self, req: ScaleRequest, reply: Reply) {
        if !self.provisioner.can_start() {
            let why = format!(
                "The {} runtime cannot start replicas",
                self.provisioner.name()
            );
            let _ = reply.send(Err(ApiError::bad(why)));
            return;
        }
        // Admin requests take turns, so no other one can claim these names and ids
        // before this one is done; deaths and respawns never make new ones.
        let plan = match self.plan_add(&req) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.busy = true;
        let (provisioner, health) = (self.provisioner.clone(), self.health.clone());
        let (timeout, notes) = (self.config.start_timeout, self.notes.clone());
        tokio::spawn(async move {
            let (provisioner, health) = (&*provisioner, &*health);
            let launches = plan.iter().map(|m| async move {
                let spec = ReplicaSpec {
                    hostname: m.hostname.clone(),
                    id: m.id,
                };
                launch::launch(provisioner, health, &spec, None, timeout).await
            });
            let results = join_all(launches).await;
            // All or nothing: one that failed takes the others down with it.
            let result = match results.iter().find_map(|r| r.as_ref().err()).cloned() {
                Some(err) => {
                    let started = results.iter().filter_map(|r| r.as_ref().ok());
                    join_all(started.map(|r| provisioner.stop(r, Duration::ZERO))).await;
                    Err(err)
                }
                None => Ok(results.into_iter().filter_map(Result::ok).collect()),
            };
            let _ = notes.send(Note::Added {
                plan,
                result,
                reply,
            });
        });
    }

    /// Puts an `/add`'s replicas in the ring once all of them answered.
    fn finish_add(
        &mut self,
        plan: Vec<Member>,
        result: Result<Vec<Running>, LaunchError>,
    ) -> Result<(), ApiError> {
        let running = result.map_err(|err| {
            for m in &plan {
                self.claims.release(m.id);
            }
            ApiError::StartFailed(format!(
                "Could not start the new replicas, none were added: {err}"
            ))
        })?;
        for (m, running) in plan.into_iter().zip(running) {
            let mut replica = Replica::new(m.hostname, m.id);
            replica.incarnation = 1;
            replica.become_healthy(running, &self.metrics);
            self.replicas.insert(m.id, replica);
        }
        Ok(())
    }

    /// Takes an `/rm`'s replicas out of routing at once, then drains and stops them in
    /// a task of their own; the answer goes out when it reports back.
    fn begin_remove(&mut self, req: ScaleRequest, reply: Reply) {
        let plan = match admin::plan_remove(&self.members(), &req) {
            Ok(plan) => plan,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let mut leaving = Vec::new();
        for m in &plan {
            self.removed.push(m.id);
            // Nothing routes to it from here on: its name and id are free again.
            self.claims.release(m.id);
            if let Some(r) = self.replicas.remove(&m.id) {
                leaving.push(r);
            }
        }
        // Out of routing first, so no new request reaches them; then drain.
        self.publish();
        self.busy = true;
        let deadline = Instant::now() + self.config.drain_timeout;
        let (provisioner, notes) = (self.provisioner.clone(), self.notes.clone());
        tokio::spawn(async move {
            for backend in leaving.iter().filter_map(|r| r.backend.as_ref()) {
                while backend.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let stops = leaving
                .iter()
                .flat_map(|r| r.running.iter().chain(r.stale.iter()))
                .map(|run| provisioner.stop(run, Duration::from_secs(5)));
            for result in join_all(stops).await {
                if let Err(e) = result {
                    log::warn!("stopping a removed replica: {e}");
                }
            }
            let _ = notes.send(Note::Removed { reply });
        });
    }

    async fn shutdown(&mut self) {
        let running: Vec<Running> = self
            .replicas
            .values()
            .flat_map(|r| r.running.iter().chain(r.stale.iter()).cloned())
            .collect();
        self.provisioner.shutdown(&running).await;
    }

    fn enable(&mut self, hostname: &str, enabled: bool, reply: Reply) {
        let Some(r) = self.replicas.values_mut().find(|r| r.hostname == hostname) else {
            let _ = reply.send(Err(ApiError::UnknownReplica(hostname.to_string())));
            return;
        };
        r.enabled = enabled;
        if let Some(b) = &r.backend {
            b.set_enabled(enabled);
        }
        self.report(Some(Box::new(move || {
            let _ = reply.send(Ok(()));
        })));
    }

    /// Tells the registry the state of every replica, and which left.
    fn publish(&mut self) {
        self.report(None);
    }

    /// [`Managed::publish`], running `then` once the registry has published it.
    fn report(&mut self, then: Option<Box<dyn FnOnce() + Send>>) {
        let gone = self.removed.drain(..).map(Change::Remove);
        let members = self.replicas.values().map(|r| {
            Change::Upsert(RegistryMember {
                id: r.id,
                hostname: r.hostname.clone(),
                state: r.state,
                address: r.running.as_ref().map(|x| x.address.clone()),
                handle: r.running.as_ref().map(|x| x.handle.clone()),
                restarts: r.restarts,
                backend: r.backend.clone(),
                enabled: r.enabled,
                owner: Owner::Managed,
                grpc_address: r.running.as_ref().and_then(|x| x.grpc_address.clone()),
            })
        });
        let changes = gone.chain(members).collect();
        let _ = self.changes.send(Batch { changes, then });
    }
}
