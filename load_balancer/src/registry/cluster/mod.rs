//! Several balancers, one view (`--cluster etcd`).
//!
//! The managed replica set lives in etcd under `/lb/<instance>/cluster/replicas/`.
//! Every balancer reads it through its [`mirror`] (its registry's source of managed
//! replicas, in place of a managed source of its own), so they all route over the
//! same replicas with the same ids. One of them, elected ([`campaign`]), runs the
//! managed source: it alone starts, respawns and removes replicas, and its batches
//! are written to etcd ([`writer`]) rather than to its own registry. `/add`, `/rm`
//! and replica controls sent to another balancer are sent on to the leader
//! ([`ManagedAccess`]), so they are applied once.

pub mod campaign;
pub mod entries;
pub mod mirror;
pub mod writer;

use tokio::sync::watch;

use crate::error::ApiError;
use crate::registry::managed::ManagedHandle;
use entries::Leader;

/// This balancer's part in the cluster.
#[derive(Clone)]
pub enum Role {
    /// Campaigning, and no leader known yet.
    Candidate,
    /// Another balancer leads.
    Follower(Leader),
    /// This one leads: its id and its managed source.
    Leader { id: String, managed: ManagedHandle },
}

/// Where `/add`, `/rm` and replica controls are carried out.
#[derive(Clone)]
pub enum ManagedAccess {
    /// By this balancer's own managed source (no cluster).
    Local(ManagedHandle),
    /// By whichever balancer of the cluster leads.
    Cluster(watch::Receiver<Role>),
}

/// Who carries out an admin call now.
pub enum Target {
    Here(ManagedHandle),
    /// The leader, at this admin address.
    Leader(String),
}

impl ManagedAccess {
    /// What `/status` says of the cluster: `null` alone, else this balancer's role
    /// and who leads.
    pub fn describe(&self) -> serde_json::Value {
        let ManagedAccess::Cluster(role) = self else {
            return serde_json::Value::Null;
        };
        let (role, leader) = match &*role.borrow() {
            Role::Leader { id, .. } => ("leader", Some(id.clone())),
            Role::Follower(l) => ("follower", Some(l.id.clone())),
            Role::Candidate => ("candidate", None),
        };
        serde_json::json!({ "role": role, "leader": leader })
    }

    /// Who carries out an admin call now.
    pub fn target(&self) -> Result<Target, ApiError> {
        match self {
            ManagedAccess::Local(h) => Ok(Target::Here(h.clone())),
            ManagedAccess::Cluster(role) => match &*role.borrow() {
                Role::Leader { managed, .. } => Ok(Target::Here(managed.clone())),
                Role::Follower(l) => Ok(Target::Leader(l.admin.clone())),
                Role::Candidate => Err(ApiError::Unavailable(
                    "No balancer of the cluster leads yet: retry in a few seconds".into(),
                )),
            },
        }
    }
}

/// What a balancer brings to the election.
pub struct Candidacy {
    /// Who it is and where its admin calls are served.
    pub me: Leader,
    /// Its lease's TTL.
    pub ttl: std::time::Duration,
    /// Starts a managed source each time it is elected.
    pub start: campaign::StartManaged,
    pub snapshot: crate::snapshot::SharedSnapshot,
    /// The ring's shape, for placing new replicas while it leads.
    pub geometry: crate::ring::Geometry,
}

/// A cluster member's tasks, started in two steps: the mirror before the registry
/// runs (it is the registry's source of managed replicas), the campaign once the
/// balancer listens (its address goes into the election).
pub struct Membership {
    endpoints: Vec<String>,
    instance: String,
    role: Option<watch::Sender<Role>>,
    stop: watch::Sender<bool>,
    mirror: tokio::task::JoinHandle<()>,
    campaign: Option<tokio::task::JoinHandle<()>>,
}

impl Membership {
    /// Starts reading the shared view of `instance`; returns the membership, the
    /// registry's source of managed replicas, and where admin calls go.
    pub fn join(
        endpoints: Vec<String>,
        instance: String,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> (Self, crate::registry::ChannelSource, ManagedAccess) {
        let (changes, source) = crate::registry::ChannelSource::new("cluster");
        let (stop, stopped) = watch::channel(false);
        let mirror = mirror::Mirror::new(
            endpoints.clone(),
            entries::replicas_prefix(&instance),
            metrics,
            changes,
        );
        let mirror = tokio::spawn(mirror.run(stopped));
        let (role, roles) = watch::channel(Role::Candidate);
        let membership = Membership {
            endpoints,
            instance,
            role: Some(role),
            stop,
            mirror,
            campaign: None,
        };
        (membership, source, ManagedAccess::Cluster(roles))
    }

    /// Starts campaigning; `events` and `unhealthy` go to the managed source while
    /// this balancer leads.
    pub fn campaign(
        &mut self,
        candidacy: Candidacy,
        events: tokio::sync::mpsc::UnboundedReceiver<crate::provisioner::ProvisionerEvent>,
        unhealthy: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let Some(role) = self.role.take() else { return };
        let campaign = campaign::Campaign {
            endpoints: self.endpoints.clone(),
            election: entries::election_name(&self.instance),
            prefix: entries::replicas_prefix(&self.instance),
            me: candidacy.me,
            ttl_s: candidacy.ttl.as_secs().max(1) as i64,
            start: candidacy.start,
            role,
            snapshot: candidacy.snapshot,
            geometry: candidacy.geometry,
        };
        let stopped = self.stop.subscribe();
        self.campaign = Some(tokio::spawn(campaign.run(events, unhealthy, stopped)));
    }

    /// Leaves: stops leading (the managed source stops; containers stay), steps
    /// out of the election at once, and stops reading.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        if let Some(campaign) = self.campaign {
            let _ = campaign.await;
        }
        let _ = self.mirror.await;
    }
}
