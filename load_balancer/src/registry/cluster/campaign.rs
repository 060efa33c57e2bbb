//! The election: every balancer of a cluster campaigns under one etcd name with a
//! lease of its own; the oldest candidate leads. The leader runs the managed source
//! (it alone starts, respawns and removes replicas) and writes its view; when its
//! lease goes (the process died, or etcd lost it), the next candidate is elected,
//! starts a managed source of its own, which adopts what runs, and carries on.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::entries::Leader;
use super::writer;
use super::Role;
use crate::provisioner::ProvisionerEvent;
use crate::registry::etcd::entries::backoff;
use crate::registry::etcd::{bounded, connect, stopped, SessionError};
use crate::registry::managed::ManagedHandle;
use crate::registry::{ChannelSource, Source};
use crate::ring::Geometry;
use crate::snapshot::SharedSnapshot;

/// Starts a managed source, given where its death reports and missed heartbeats
/// come from: called each time this balancer is elected.
pub type StartManaged = Box<
    dyn Fn(
            mpsc::UnboundedReceiver<ProvisionerEvent>,
            mpsc::UnboundedReceiver<String>,
        ) -> (ManagedHandle, ChannelSource, JoinHandle<()>)
        + Send
        + Sync,
>;

/// What a campaign needs.
pub struct Campaign {
    pub endpoints: Vec<String>,
    /// The election's name.
    pub election: String,
    /// Where the managed replicas are written.
    pub prefix: String,
    /// This balancer, as the election shows it.
    pub me: Leader,
    /// The lease's TTL: how long a dead leader leads on.
    pub ttl_s: i64,
    pub start: StartManaged,
    pub role: watch::Sender<Role>,
    pub snapshot: SharedSnapshot,
    /// The ring's shape, for placing new replicas.
    pub geometry: Geometry,
}

/// The managed source of this balancer's reign.
struct Reign {
    handle: ManagedHandle,
    task: JoinHandle<()>,
    writer: JoinHandle<()>,
    events: mpsc::UnboundedSender<ProvisionerEvent>,
    unhealthy: mpsc::UnboundedSender<String>,
}

impl Campaign {
    /// Campaigns, leads or follows until `stop` turns true. `events` and
    /// `unhealthy` (the provisioner's death reports and the heartbeat loop's) go to
    /// the managed source while this balancer leads, nowhere otherwise.
    pub async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<ProvisionerEvent>,
        mut unhealthy: mpsc::UnboundedReceiver<String>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failures = 0;
        loop {
            match self.session(&mut events, &mut unhealthy, &mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    if failures == 0 {
                        log::warn!(
                            "cluster: etcd at {:?}: {e}; campaigning again",
                            self.endpoints
                        );
                    }
                    failures += 1;
                }
            }
            self.role.send_replace(Role::Candidate);
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// One lease's life: campaign, then lead or follow until the lease or the
    /// connection is lost (`Err`) or the balancer stops (`Ok`).
    async fn session(
        &self,
        events: &mut mpsc::UnboundedReceiver<ProvisionerEvent>,
        unhealthy: &mut mpsc::UnboundedReceiver<String>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let mut client = connect(&self.endpoints).await?;
        let lease = bounded("granting a lease", client.lease_grant(self.ttl_s, None))
            .await?
            .id();
        let (mut keeper, mut answers) =
            bounded("keeping the lease alive", client.lease_keep_alive(lease)).await?;
        let value = serde_json::to_string(&self.me).expect("a leader serializes");
        let mut elect = client.election_client();
        let campaign = elect.campaign(self.election.as_str(), value, lease);
        tokio::pin!(campaign);
        let mut keep = tokio::time::interval(Duration::from_secs(self.ttl_s as u64) / 3);
        keep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keep.tick().await;
        self.follow(&client).await;
        let mut reign: Option<Reign> = None;
        let mut campaigning = true;
        let outcome = loop {
            tokio::select! {
                _ = stopped(stop) => break Ok(()),
                won = &mut campaign, if campaigning => {
                    campaigning = false;
                    if let Err(e) = won {
                        break Err(e.into());
                    }
                    log::info!("cluster: {} leads", self.me.id);
                    reign = Some(self.begin(&client));
                }
                _ = keep.tick() => {
                    let alive = async {
                        bounded("keeping the lease alive", keeper.keep_alive()).await?;
                        match bounded("keeping the lease alive", answers.message()).await? {
                            Some(a) if a.ttl() > 0 => Ok(()),
                            _ => Err(SessionError::LeaseLost),
                        }
                    };
                    if let Err(e) = alive.await {
                        break Err(e);
                    }
                    if reign.is_none() {
                        self.follow(&client).await;
                    }
                }
                Some(event) = events.recv() => {
                    if let Some(r) = &reign {
                        let _ = r.events.send(event);
                    }
                }
                Some(handle) = unhealthy.recv() => {
                    if let Some(r) = &reign {
                        let _ = r.unhealthy.send(handle);
                    }
                }
            }
        };
        if let Some(reign) = reign {
            self.end(reign).await;
        }
        if outcome.is_ok() {
            // Out of the election at once, so the next leader need not wait for the
            // lease to expire.
            let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
        outcome
    }

    /// Learns who leads, so that admin calls can be sent on to it. No leader yet
    /// (etcd says so with an error) leaves this balancer a candidate.
    async fn follow(&self, client: &Client) {
        let mut election = client.election_client();
        let asked = bounded("asking who leads", election.leader(self.election.as_str())).await;
        let leader = asked.ok().and_then(|a| {
            a.kv()
                .and_then(|kv| serde_json::from_slice::<Leader>(kv.value()).ok())
        });
        let now = match leader.filter(|l| l.id != self.me.id) {
            Some(l) => Role::Follower(l),
            None => Role::Candidate,
        };
        self.role.send_if_modified(|role| {
            let changed = match (&*role, &now) {
                (Role::Follower(a), Role::Follower(b)) => a != b,
                (Role::Candidate, Role::Candidate) => false,
                _ => true,
            };
            if changed {
                if let Role::Follower(l) = &now {
                    log::info!("cluster: {} leads; following", l.id);
                }
                *role = now.clone();
            }
            changed
        });
    }

    /// This balancer was elected: its managed source starts (adopting what runs),
    /// and its batches go to etcd.
    fn begin(&self, client: &Client) -> Reign {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (unhealthy, unhealthy_rx) = mpsc::unbounded_channel();
        let (handle, source, task) = (self.start)(events_rx, unhealthy_rx);
        let batches = Box::new(source).changes();
        let writer = tokio::spawn(writer::write(
            client.clone(),
            self.prefix.clone(),
            batches,
            self.snapshot.clone(),
            self.geometry,
        ));
        self.role.send_replace(Role::Leader {
            id: self.me.id.clone(),
            managed: handle.clone(),
        });
        Reign {
            handle,
            task,
            writer,
            events,
            unhealthy,
        }
    }

    /// This balancer no longer leads: its managed source stops (the provisioner
    /// decides whether the replicas do: containers outlive it, processes not).
    async fn end(&self, reign: Reign) {
        log::info!("cluster: {} no longer leads", self.me.id);
        self.role.send_replace(Role::Candidate);
        reign.handle.shutdown().await;
        let _ = reign.task.await;
        // Its last batches, if etcd takes them soon.
        let mut writer = reign.writer;
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }
}
