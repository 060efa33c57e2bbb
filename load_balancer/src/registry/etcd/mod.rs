//! The etcd source (`--discovery etcd`): backends found under
//! `/lb/<instance>/backends/<name>`, and the balancer's own entry under
//! `/lb/<instance>/balancers/<id>`.
//!
//! One task owns what it found. A session with etcd lists the backends' prefix,
//! makes what it holds match the listing (joins, moves, leaves), then watches from
//! the listing's revision + 1, so no change between the two is missed; it keeps the
//! balancer's entry under a lease of its own at the same time. When etcd fails, the
//! session ends, what was found stays (the backends' leases say whether they are
//! still there once etcd is back), and a new session starts after a backoff, with a
//! fresh listing. The decisions are pure and tested in [`entries`]; this file only
//! carries them out. Names and ids are claimed like every other source's, as
//! [`Owner::Discovered`]; a report (load, availability) is written into the
//! backend's figures without a batch, as the registered source does.

pub(crate) mod entries;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchResponse, WatchStream,
};
use futures_util::stream::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, MissedTickBehavior};

use super::claims::{Claims, Owner};
use super::{Batch, Change, ChannelSource, Member};
use crate::backend::{Backend, ServerId};
use crate::metrics::Metrics;
use crate::snapshot::ReplicaState;
use entries::{
    advertised, backends_prefix, backoff, balancer_value, balancers_prefix, diff, name_of, on_put,
    parse_value, Announced, Step,
};

/// The longest one etcd operation may take, connecting included: longer, and etcd
/// is taken to be down.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the way out waits for the balancer's lease to be revoked: leaving is
/// best effort, and the lease expires anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// The balancer's own lease, kept alive three times per TTL.
const LEASE_TTL_S: i64 = 10;
/// HTTP/2 pings on the connection to etcd, so that a silent etcd is noticed even
/// while nothing changes (etcd refuses pings more often than every 5 s).
pub(crate) const PING: Duration = Duration::from_secs(10);

/// Where etcd is, and which instance's prefix to use.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// `--instance`: the prefix is `/lb/<instance>`.
    pub instance: String,
}

/// How the balancer drives the etcd task: what to advertise, and when to stop.
pub struct EtcdDiscovery {
    me: watch::Sender<Option<String>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl EtcdDiscovery {
    /// Starts the task: it looks for backends at once, and writes the balancer's own
    /// entry once [`announce`](Self::announce)d.
    pub fn spawn(
        settings: EtcdSettings,
        claims: Claims,
        metrics: Arc<Metrics>,
    ) -> (EtcdDiscovery, ChannelSource) {
        let (changes, source) = ChannelSource::new("etcd");
        let (me, me_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = EtcdTask::new(settings, &balancer_id(), claims, metrics, changes);
        log::info!(
            "etcd discovery at {:?}: backends under {}, this balancer as {}",
            task.endpoints,
            task.backends,
            task.me_key
        );
        let task = tokio::spawn(task.run(stop_rx, me_rx));
        (EtcdDiscovery { me, stop, task }, source)
    }

    /// Sets the balancer's own entry: its data-plane address and, if it serves
    /// look-aside gRPC, that address.
    pub fn announce(&self, http: SocketAddr, grpc: Option<SocketAddr>) {
        let host = hostname();
        let http = advertised(http, &host);
        let grpc = grpc.map(|g| advertised(g, &host));
        self.me
            .send_replace(Some(balancer_value(&http, grpc.as_deref())));
    }

    /// Stops watching and revokes the balancer's lease (best effort, within a
    /// second). What was found stays in the registry, so requests being drained
    /// still reach it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// This machine's name, for the balancer's id and for the address it gives out when
/// it listens on every interface.
pub(crate) fn hostname() -> String {
    let name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().replace('/', "-"))
        .unwrap_or_default();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Unique per process: `<hostname>-<pid>`.
pub(crate) fn balancer_id() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

/// A change to one key, as a watch reports it.
#[derive(Debug, Clone, Copy)]
enum Event<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

/// A backend the source holds.
struct Held {
    id: ServerId,
    announced: Announced,
    backend: Arc<Backend>,
}

/// Why a session with etcd ended.
#[derive(Debug)]
pub(crate) enum SessionError {
    Etcd(etcd_client::Error),
    TimedOut(&'static str),
    WatchEnded,
    WatchCanceled(String),
    LeaseLost,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Etcd(e) => e.fmt(f),
            SessionError::TimedOut(what) => write!(f, "{what} took over {OP_TIMEOUT:?}"),
            SessionError::WatchEnded => f.write_str("the watch ended"),
            SessionError::WatchCanceled(why) => write!(f, "the watch was canceled: {why}"),
            SessionError::LeaseLost => f.write_str("the balancer's lease is gone"),
        }
    }
}

impl From<etcd_client::Error> for SessionError {
    fn from(e: etcd_client::Error) -> Self {
        SessionError::Etcd(e)
    }
}

/// `op`, given `OP_TIMEOUT` to finish.
pub(crate) async fn bounded<T>(
    what: &'static str,
    op: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, SessionError> {
    timeout(OP_TIMEOUT, op)
        .await
        .map_err(|_| SessionError::TimedOut(what))?
        .map_err(SessionError::Etcd)
}

/// A client of etcd at `endpoints`, with pings so that a silent etcd is noticed.
pub(crate) async fn connect(endpoints: &[String]) -> Result<Client, SessionError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(OP_TIMEOUT)
        .with_keep_alive(PING, OP_TIMEOUT);
    bounded("connecting", Client::connect(endpoints, Some(options))).await
}

/// The balancer's lease, kept alive over one session's connection.
struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
}

impl Lease {
    /// One more TTL; an answer with a TTL of 0 (or none) means it is gone.
    async fn keep_alive(&mut self) -> Result<(), SessionError> {
        bounded("keeping the lease alive", self.keeper.keep_alive()).await?;
        match bounded("keeping the lease alive", self.answers.message()).await? {
            Some(a) if a.ttl() > 0 => Ok(()),
            _ => Err(SessionError::LeaseLost),
        }
    }
}

/// A session once connected, listed and watching.
struct Opened {
    client: Client,
    events: WatchStream,
    lease: Option<Lease>,
    /// The listing's revision.
    revision: i64,
}

/// Resolves once a stop is asked for, or nobody is left to ask.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The task that owns what was found in etcd.
struct EtcdTask {
    endpoints: Vec<String>,
    /// `/lb/<instance>/backends/`
    backends: String,
    /// `/lb/<instance>/balancers/<id>`
    me_key: String,
    claims: Claims,
    metrics: Arc<Metrics>,
    held: BTreeMap<String, Held>,
    /// Keys skipped, with why: a key is warned about once per reason, not at every
    /// rewrite (replicas rewrite theirs every report interval).
    quiet: BTreeMap<String, String>,
    changes: mpsc::UnboundedSender<Batch>,
    /// Failed sessions in a row.
    failures: u32,
}

impl EtcdTask {
    fn new(
        settings: EtcdSettings,
        id: &str,
        claims: Claims,
        metrics: Arc<Metrics>,
        changes: mpsc::UnboundedSender<Batch>,
    ) -> Self {
        EtcdTask {
            backends: backends_prefix(&settings.instance),
            me_key: format!("{}{id}", balancers_prefix(&settings.instance)),
            endpoints: settings.endpoints,
            claims,
            metrics,
            held: BTreeMap::new(),
            quiet: BTreeMap::new(),
            changes,
            failures: 0,
        }
    }

    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut me: watch::Receiver<Option<String>>,
    ) {
        loop {
            let Err(e) = self.session(&mut stop, &mut me).await else {
                break;
            };
            self.lost(&e);
            tokio::select! {
                _ = tokio::time::sleep(backoff(self.failures)) => {}
                _ = stopped(&mut stop) => break,
            }
        }
    }

    /// One connection's life: `Ok` once stopped, `Err` when etcd failed.
    async fn session(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        me: &mut watch::Receiver<Option<String>>,
    ) -> Result<(), SessionError> {
        let Opened {
            mut client,
            mut events,
            mut lease,
            revision,
        } = tokio::select! {
            opened = self.open(me) => opened?,
            // Stopped while connecting or listing: nothing to revoke yet (a lease
            // being granted just now expires by itself).
            _ = stopped(stop) => return Ok(()),
        };
        self.connected(revision);
        let mut keep = tokio::time::interval(Duration::from_secs(LEASE_TTL_S as u64) / 3);
        keep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is now, and the lease was just granted.
        keep.tick().await;
        loop {
            tokio::select! {
                _ = stopped(stop) => {
                    self.leave(&mut client, lease).await;
                    return Ok(());
                }
                event = events.next() => match event {
                    Some(Ok(response)) => self.on_watch(response)?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(SessionError::WatchEnded),
                },
                _ = keep.tick(), if lease.is_some() => {
                    if let Some(lease) = lease.as_mut() {
                        lease.keep_alive().await?;
                    }
                }
                changed = me.changed() => {
                    if changed.is_err() {
                        // The balancer dropped its handle: it is going.
                        self.leave(&mut client, lease).await;
                        return Ok(());
                    }
                    let mine = me.borrow_and_update().clone();
                    if let Some(value) = mine {
                        match &lease {
                            Some(l) => self.write_me(&mut client, l.id, &value).await?,
                            None => lease = Some(self.enter(&mut client, &value).await?),
                        }
                    }
                }
            }
        }
    }

    /// Connects, lists and resyncs, watches from the listing on, and enters the
    /// balancer's entry if it is known yet.
    async fn open(
        &mut self,
        me: &mut watch::Receiver<Option<String>>,
    ) -> Result<Opened, SessionError> {
        let mut client = connect(&self.endpoints).await?;
        let all = Some(GetOptions::new().with_prefix());
        let list = client.get(self.backends.as_str(), all);
        let listing = bounded("listing the backends", list).await?;
        let revision = listing.header().map_or(0, |h| h.revision());
        self.resync(listing.kvs().iter().map(|kv| (kv.key(), kv.value())));
        let from = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = client.watch(self.backends.as_str(), Some(from));
        let events = bounded("watching", watch).await?;
        let mine = me.borrow_and_update().clone();
        let lease = match mine {
            Some(value) => Some(self.enter(&mut client, &value).await?),
            None => None,
        };
        Ok(Opened {
            client,
            events,
            lease,
            revision,
        })
    }

    /// Grants the balancer's lease and writes its entry under it.
    async fn enter(&self, client: &mut Client, value: &str) -> Result<Lease, SessionError> {
        let grant = client.lease_grant(LEASE_TTL_S, None);
        let id = bounded("granting a lease", grant).await?.id();
        let (keeper, answers) =
            bounded("keeping the lease alive", client.lease_keep_alive(id)).await?;
        self.write_me(client, id, value).await?;
        log::info!("in etcd as {} → {value}", self.me_key);
        Ok(Lease {
            id,
            keeper,
            answers,
        })
    }

    async fn write_me(
        &self,
        client: &mut Client,
        lease: i64,
        value: &str,
    ) -> Result<(), SessionError> {
        let under = Some(PutOptions::new().with_lease(lease));
        let put = client.put(self.me_key.as_str(), value, under);
        bounded("writing the balancer's entry", put).await.map(drop)
    }

    /// Revokes the balancer's lease, so its entry goes at once (best effort).
    async fn leave(&self, client: &mut Client, lease: Option<Lease>) {
        let Some(lease) = lease else { return };
        match timeout(LEAVE_TIMEOUT, client.lease_revoke(lease.id)).await {
            Ok(Ok(_)) => log::info!("removed {} from etcd", self.me_key),
            Ok(Err(e)) => log::warn!("could not revoke the lease of {}: {e}", self.me_key),
            Err(_) => log::warn!("etcd did not revoke the lease of {} in time", self.me_key),
        }
    }

    /// A session ended: said once per outage, not at every retry. What was found
    /// stays.
    fn lost(&mut self, e: &SessionError) {
        if self.failures == 0 && self.held.is_empty() {
            log::warn!("etcd at {:?}: {e}; retrying", self.endpoints);
        } else if self.failures == 0 {
            log::warn!(
                "etcd at {:?}: {e}; still routing to the {} backends found there, retrying",
                self.endpoints,
                self.held.len()
            );
        } else {
            log::debug!("etcd at {:?}: {e}", self.endpoints);
        }
        self.failures = self.failures.saturating_add(1);
    }

    /// A session is listed and watching.
    fn connected(&mut self, revision: i64) {
        let how = if self.failures > 0 { "back" } else { "up" };
        log::info!(
            "etcd at {:?} is {how}: {} backends under {}, watching from revision {}",
            self.endpoints,
            self.held.len(),
            self.backends,
            revision + 1
        );
        self.failures = 0;
    }

    /// Warns that `key` was skipped, unless it was already for the same reason.
    fn skip(&mut self, key: &str, why: String) {
        if self.quiet.get(key) != Some(&why) {
            log::warn!("etcd: skipping {key}: {why}");
            self.quiet.insert(key.to_string(), why);
        }
    }

    /// The name a key gives, and its value if it can be read (skipped with a
    /// warning otherwise); `None` when the key names no backend.
    fn read(&mut self, key: &[u8], value: &[u8]) -> Option<(String, Option<Announced>)> {
        let shown = String::from_utf8_lossy(key);
        let name = match name_of(&self.backends, key) {
            Ok(name) => name,
            Err(why) => {
                self.skip(&shown, why);
                return None;
            }
        };
        match parse_value(value) {
            Ok(announced) => Some((name, Some(announced))),
            Err(why) => {
                self.skip(&shown, format!("its value is malformed ({why})"));
                Some((name, None))
            }
        }
    }

    /// Makes what is held match a fresh listing of keys and values.
    fn resync<'a>(&mut self, kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) {
        let mut listed = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for (key, value) in kvs {
            keys.insert(String::from_utf8_lossy(key).into_owned());
            if let Some((name, announced)) = self.read(key, value) {
                listed.insert(name, announced);
            }
        }
        self.quiet.retain(|key, _| keys.contains(key));
        let steps = diff(self.held.iter().map(|(n, h)| (n, &h.announced)), &listed);
        let mut changes = Vec::new();
        for step in steps {
            self.apply(step, &mut changes);
        }
        self.publish(changes);
    }

    /// Applies one watch response's events as one batch.
    fn on_watch(&mut self, response: WatchResponse) -> Result<(), SessionError> {
        if response.canceled() {
            let why = match response.compact_revision() {
                0 => response.cancel_reason().to_string(),
                r => format!("revision {r} is compacted"),
            };
            return Err(SessionError::WatchCanceled(why));
        }
        let events = response.events().iter().filter_map(|event| {
            let kv = event.kv()?;
            Some(match event.event_type() {
                EventType::Put => Event::Put(kv.key(), kv.value()),
                EventType::Delete => Event::Delete(kv.key()),
            })
        });
        self.on_events(events);
        Ok(())
    }

    /// Applies events as one batch: a put joins, moves or reports; a delete (or
    /// an expiry) leaves.
    fn on_events<'a>(&mut self, events: impl IntoIterator<Item = Event<'a>>) {
        let mut changes = Vec::new();
        for event in events {
            match event {
                Event::Put(key, value) => {
                    let Some((name, Some(now))) = self.read(key, value) else {
                        continue;
                    };
                    let held = self.held.get(&name).map(|h| &h.announced);
                    if let Some(step) = on_put(held, &name, now) {
                        self.apply(step, &mut changes);
                    }
                }
                Event::Delete(key) => {
                    self.quiet.remove(String::from_utf8_lossy(key).as_ref());
                    if let Ok(name) = name_of(&self.backends, key) {
                        self.apply(Step::Leave(name), &mut changes);
                    }
                }
            }
        }
        self.publish(changes);
    }

    /// Carries out one step; what the registry must hear goes into `changes`.
    fn apply(&mut self, step: Step, changes: &mut Vec<Change>) {
        match step {
            Step::Join(name, now) => match self.claims.claim(Owner::Discovered, &name) {
                Ok(id) => {
                    self.quiet.remove(&format!("{}{name}", self.backends));
                    log::info!("{name} found in etcd (id {id}): {}", shown(&now));
                    self.hold(id, name, now, changes);
                }
                Err(e) => {
                    let key = format!("{}{name}", self.backends);
                    self.skip(&key, e.to_string());
                }
            },
            Step::Move(name, now) => {
                let Some(id) = self.held.get(&name).map(|h| h.id) else {
                    return;
                };
                log::info!("{name} moved in etcd: {}", shown(&now));
                self.hold(id, name, now, changes);
            }
            Step::Report(name, now) => {
                if let Some(h) = self.held.get_mut(&name) {
                    h.backend.report(now.load, now.available);
                    h.announced = now;
                }
            }
            Step::Leave(name) => {
                if let Some(h) = self.held.remove(&name) {
                    log::info!("{name} left etcd");
                    self.claims.release(h.id);
                    changes.push(Change::Remove(h.id));
                }
            }
        }
    }

    /// Holds `name` as a new backend with id `id`, and tells the registry.
    fn hold(&mut self, id: ServerId, name: String, now: Announced, changes: &mut Vec<Change>) {
        // `parse_value` made sure of one address at least.
        let shown = now
            .http_address
            .clone()
            .or_else(|| now.grpc_address.clone())
            .unwrap_or_default();
        let backend = Backend::new(id, name.clone(), shown, self.metrics.replica(&name))
            .serving_grpc(now.grpc_address.clone());
        backend.report(now.load, now.available);
        let backend = Arc::new(backend);
        changes.push(Change::Upsert(Member {
            id,
            hostname: name.clone(),
            state: ReplicaState::Healthy,
            address: now.http_address.clone(),
            handle: None,
            restarts: 0,
            backend: Some(backend.clone()),
            enabled: true,
            owner: Owner::Discovered,
            grpc_address: now.grpc_address.clone(),
        }));
        self.held.insert(
            name,
            Held {
                id,
                announced: now,
                backend,
            },
        );
    }

    fn publish(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            let _ = self.changes.send(Batch {
                changes,
                then: None,
            });
        }
    }
}

/// A backend's addresses, for logs.
fn shown(a: &Announced) -> String {
    let or_none = |s: &Option<String>| s.clone().unwrap_or_else(|| "none".into());
    format!(
        "HTTP {}, gRPC {}",
        or_none(&a.http_address),
        or_none(&a.grpc_address)
    )
}

#[cfg(test)]
mod tests;
