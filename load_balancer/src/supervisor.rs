//! Keeps the replica set: serves `/add` and `/rm`, replaces dead replicas, and
//! publishes a new [`Snapshot`] after every change.
//!
//! One task owns all replica state and handles one message at a time, so admin
//! requests are serialized and each is applied whole or not at all, without a lock.
//! Slow work that must not hold up the rest (launching a replacement, waiting for it
//! to answer, backoff sleeps) runs in spawned tasks that report back by message.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::admin::{self, Member, ScaleRequest};
use crate::error::ApiError;
use crate::health::Prober;
use crate::metrics::Metrics;
use crate::ring::{Ring, ServerId};
use crate::runtime::{ReplicaSpec, Running, Runtime, RuntimeEvent};
use crate::snapshot::{Backend, ReplicaState, ReplicaStatus, Routing, SharedSnapshot, Snapshot};

/// A replica that stayed healthy this long has its crash streak forgiven.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The longest wait before another respawn attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Replicas to have at boot.
    pub replicas: usize,
    /// The most replicas ever held (never above the ring's capacity).
    pub capacity: usize,
    /// How long a new replica may take to answer `/heartbeat`.
    pub start_timeout: Duration,
    /// How long `/rm` lets in-flight requests finish before stopping a replica.
    pub drain_timeout: Duration,
}

/// The delay before respawn attempt number `streak` (0 = the first, immediate).
pub fn backoff(streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    let ms = 250u64.saturating_mul(1u64 << (streak - 1).min(16));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

enum Command {
    Add(ScaleRequest, oneshot::Sender<Result<(), ApiError>>),
    Remove(ScaleRequest, oneshot::Sender<Result<(), ApiError>>),
    Shutdown(oneshot::Sender<()>),
}

/// Reports from the supervisor's own spawned tasks.
enum Note {
    Launched {
        id: ServerId,
        incarnation: u64,
        result: Result<Running, String>,
    },
    Respawn {
        id: ServerId,
        incarnation: u64,
    },
}

/// How the API talks to the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    commands: mpsc::Sender<Command>,
}

impl SupervisorHandle {
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

    /// Stops the supervisor; the runtime decides what happens to the replicas.
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
        }
    }

    fn become_healthy(&mut self, running: Running, metrics: &Metrics) {
        self.backend = Some(Arc::new(Backend::new(
            self.id,
            self.hostname.clone(),
            running.address.clone(),
            metrics.replica(&self.hostname),
        )));
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

/// The task that owns the replica set. Create with [`Supervisor::new`], then
/// [`Supervisor::spawn`] it.
pub struct Supervisor {
    runtime: Arc<dyn Runtime>,
    prober: Prober,
    config: SupervisorConfig,
    ring: Ring,
    replicas: BTreeMap<ServerId, Replica>,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    notes: mpsc::UnboundedSender<Note>,
    notes_rx: Option<mpsc::UnboundedReceiver<Note>>,
}

impl Supervisor {
    /// A supervisor over `runtime`, publishing into `snapshot`.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        prober: Prober,
        ring: Ring,
        mut config: SupervisorConfig,
        snapshot: SharedSnapshot,
        metrics: Arc<Metrics>,
    ) -> Self {
        config.capacity = config.capacity.min(ring.geometry().capacity());
        let (notes, notes_rx) = mpsc::unbounded_channel();
        Supervisor {
            runtime,
            prober,
            config,
            ring,
            replicas: BTreeMap::new(),
            snapshot,
            metrics,
            notes,
            notes_rx: Some(notes_rx),
        }
    }

    /// An empty snapshot to start a [`SharedSnapshot`] with.
    pub fn empty_snapshot(ring: &Ring) -> Snapshot {
        Snapshot {
            routing: Routing::new(ring.table(|_| false), []),
            replicas: Vec::new(),
        }
    }

    /// Runs the supervisor until shutdown. `events` carries the runtime's death
    /// reports, `unhealthy` the handles the heartbeat loop gave up on.
    pub fn spawn(
        mut self,
        events: mpsc::UnboundedReceiver<RuntimeEvent>,
        unhealthy: mpsc::UnboundedReceiver<String>,
    ) -> (SupervisorHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let notes = self.notes_rx.take().expect("spawned once");
        let task = tokio::spawn(async move { self.run(rx, events, unhealthy, notes).await });
        (SupervisorHandle { commands: tx }, task)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::UnboundedReceiver<RuntimeEvent>,
        mut unhealthy: mpsc::UnboundedReceiver<String>,
        mut notes: mpsc::UnboundedReceiver<Note>,
    ) {
        self.boot().await;
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Add(req, reply)) => {
                        let _ = reply.send(self.add(req).await);
                    }
                    Some(Command::Remove(req, reply)) => {
                        let _ = reply.send(self.remove(req).await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(RuntimeEvent::Died { handle, reason }) = events.recv() => {
                    self.on_died(&handle, &reason);
                }
                Some(handle) = unhealthy.recv() => {
                    self.on_died(&handle, "missed heartbeats");
                }
                Some(note) = notes.recv() => self.on_note(note),
            }
        }
    }

    /// Adopts what the runtime already runs, then starts the rest of the replicas.
    async fn boot(&mut self) {
        let found = self.runtime.discover().await.unwrap_or_else(|e| {
            log::error!("could not list existing replicas: {e}");
            Vec::new()
        });
        for running in found {
            // Ids are handed out smallest-first, so a live one is never above the
            // ring's capacity; a larger label was not written by us, and tables are
            // indexed by id.
            let clash = running.id == 0
                || running.id as usize > self.ring.geometry().capacity()
                || self.replicas.contains_key(&running.id)
                || self
                    .replicas
                    .values()
                    .any(|r| r.hostname == running.hostname)
                || self.ring.add(running.id).is_err();
            if clash {
                log::warn!("not adopting duplicate {}", running.hostname);
                let _ = self.runtime.stop(&running, Duration::ZERO).await;
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
        if missing > 0 && self.runtime.can_start() {
            let req = ScaleRequest {
                n: missing,
                hostnames: Vec::new(),
            };
            match admin::plan_add(&self.members(), &req, self.config.capacity) {
                Ok(plan) => {
                    for m in plan {
                        self.ring.add(m.id).expect("plan_add respects capacity");
                        self.replicas.insert(m.id, Replica::new(m.hostname, m.id));
                        self.launch(m.id);
                    }
                }
                Err(e) => log::error!("cannot start {missing} replicas: {e}"),
            }
        }
        self.publish();
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
        let runtime = self.runtime.clone();
        let prober = self.prober.clone();
        let timeout = self.config.start_timeout;
        let notes = self.notes.clone();
        tokio::spawn(async move {
            let result = match adopted {
                Some(running) => wait_ready(&*runtime, &prober, running, timeout).await,
                None => launch(&*runtime, &prober, &spec, stale, timeout).await,
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
                        let runtime = self.runtime.clone();
                        tokio::spawn(async move {
                            let _ = runtime.stop(&orphan, Duration::ZERO).await;
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

    async fn add(&mut self, req: ScaleRequest) -> Result<(), ApiError> {
        if !self.runtime.can_start() {
            return Err(ApiError::bad(format!(
                "The {} runtime cannot start replicas",
                self.runtime.name()
            )));
        }
        let plan = admin::plan_add(&self.members(), &req, self.config.capacity)?;
        let (runtime, prober, timeout) = (&*self.runtime, &self.prober, self.config.start_timeout);
        let launches = plan.iter().map(|m| {
            let spec = ReplicaSpec {
                hostname: m.hostname.clone(),
                id: m.id,
            };
            async move { launch(runtime, prober, &spec, None, timeout).await }
        });
        let results = join_all(launches).await;
        if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
            let started: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            join_all(started.iter().map(|r| runtime.stop(r, Duration::ZERO))).await;
            return Err(ApiError::StartFailed(format!(
                "Could not start the new replicas, none were added: {err}"
            )));
        }
        for (m, running) in plan.into_iter().zip(results) {
            self.ring.add(m.id).expect("plan_add respects capacity");
            let mut replica = Replica::new(m.hostname, m.id);
            replica.incarnation = 1;
            replica.become_healthy(running.expect("checked above"), &self.metrics);
            self.replicas.insert(m.id, replica);
        }
        self.publish();
        Ok(())
    }

    async fn remove(&mut self, req: ScaleRequest) -> Result<(), ApiError> {
        let plan = admin::plan_remove(&self.members(), &req)?;
        let mut leaving = Vec::new();
        for m in &plan {
            self.ring.remove(m.id);
            if let Some(r) = self.replicas.remove(&m.id) {
                leaving.push(r);
            }
        }
        // Out of routing first, so no new request reaches them; then drain.
        self.publish();
        let deadline = Instant::now() + self.config.drain_timeout;
        for backend in leaving.iter().filter_map(|r| r.backend.as_ref()) {
            while backend.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let runtime = &*self.runtime;
        let stops = leaving
            .iter()
            .flat_map(|r| r.running.iter().chain(r.stale.iter()))
            .map(|run| runtime.stop(run, Duration::from_secs(5)));
        for result in join_all(stops).await {
            if let Err(e) = result {
                log::warn!("stopping a removed replica: {e}");
            }
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        let running: Vec<Running> = self
            .replicas
            .values()
            .flat_map(|r| r.running.iter().chain(r.stale.iter()).cloned())
            .collect();
        self.runtime.shutdown(&running).await;
    }

    fn publish(&self) {
        let routable = |r: &&Replica| r.state == ReplicaState::Healthy && r.backend.is_some();
        let table = self
            .ring
            .table(|id| self.replicas.get(&id).is_some_and(|r| routable(&r)));
        let backends = self
            .replicas
            .values()
            .filter(routable)
            .filter_map(|r| r.backend.clone());
        let replicas = self
            .replicas
            .values()
            .map(|r| ReplicaStatus {
                hostname: r.hostname.clone(),
                id: r.id,
                state: r.state,
                address: r.running.as_ref().map(|x| x.address.clone()),
                restarts: r.restarts,
                handle: r.running.as_ref().map(|x| x.handle.clone()),
            })
            .collect();
        self.metrics.ring_changes.inc();
        self.snapshot.store(Arc::new(Snapshot {
            routing: Routing::new(table, backends),
            replicas,
        }));
    }
}

/// Starts a replica and waits until it answers; a replica that never answers is
/// stopped again, so a failed launch leaves nothing behind.
async fn launch(
    runtime: &dyn Runtime,
    prober: &Prober,
    spec: &ReplicaSpec,
    stale: Option<Running>,
    timeout: Duration,
) -> Result<Running, String> {
    if let Some(old) = stale {
        if let Err(e) = runtime.stop(&old, Duration::ZERO).await {
            log::warn!("cleaning up the old {}: {e}", old.hostname);
        }
    }
    let running = runtime.start(spec).await.map_err(|e| e.to_string())?;
    wait_ready(runtime, prober, running, timeout).await
}

async fn wait_ready(
    runtime: &dyn Runtime,
    prober: &Prober,
    running: Running,
    timeout: Duration,
) -> Result<Running, String> {
    if prober.wait_ready(&running.address, timeout).await {
        return Ok(running);
    }
    let _ = runtime.stop(&running, Duration::ZERO).await;
    Err(format!(
        "{} did not answer /heartbeat within {timeout:?}",
        running.hostname
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_respawn_is_immediate_and_later_ones_back_off_to_a_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
