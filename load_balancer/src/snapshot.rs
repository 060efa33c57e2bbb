//! What request handlers read: an immutable picture of the replicas and the routing
//! picker, published by the registry and swapped atomically.
//!
//! A request loads one snapshot and uses it to the end, so a concurrent `/add` or a
//! respawn never shows it a half-changed ring, and no lock sits on the request path.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

pub use crate::backend::{Backend, ServerId};
use crate::policy::settings::Settings;
use crate::policy::Picker;
use crate::registry::claims::Owner;

/// A replica's lifecycle state, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Launched (or being launched), not yet answering `/heartbeat`.
    Starting,
    /// In the ring and taking traffic.
    Healthy,
    /// Dead or unresponsive; a replacement is scheduled.
    Down,
    /// Running and answering, but an operator keeps new requests away from it.
    Disabled,
}

/// One replica in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    pub hostname: String,
    pub id: ServerId,
    pub state: ReplicaState,
    /// `host:port` it serves HTTP on, when running.
    pub address: Option<String>,
    /// `host:port` it serves look-aside gRPC on, if it does.
    pub grpc_address: Option<String>,
    /// How many times it was replaced after dying.
    pub restarts: u32,
    /// The runtime's handle (pid, container id), when running.
    pub handle: Option<String>,
    /// Which source it comes from: `managed` (run by the balancer), `registered`,
    /// `discovered` (etcd).
    pub source: Owner,
}

/// Everything the handlers read, published whole.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The policy's choice structure over the routable replicas that serve HTTP.
    pub picker: Picker,
    /// Every policy's picker over the routable replicas that serve gRPC, by name,
    /// for look-aside clients (the one in force shares its state with `picker`).
    pub lookaside: Arc<Vec<(&'static str, Picker)>>,
    /// Every replica of every source, sorted by id.
    pub replicas: Vec<ReplicaStatus>,
    /// The routing settings the picker was built for, and the hash key and hedging
    /// that go with it.
    pub settings: Arc<Settings>,
    /// The live figures of every replica that has them (routable or disabled), in
    /// id order: what `/status` and `/metrics` show.
    pub figures: Vec<Arc<Backend>>,
}

impl Snapshot {
    /// The live figures of the replica with this id, routable or disabled.
    pub fn figures_of(&self, id: ServerId) -> Option<&Arc<Backend>> {
        self.figures.iter().find(|b| b.id == id)
    }

    /// The managed replicas' hostnames, as `/rep` lists them.
    pub fn hostnames(&self) -> Vec<String> {
        self.managed().map(|r| r.hostname.clone()).collect()
    }

    /// The replicas the balancer runs (not those that registered or were found).
    pub fn managed(&self) -> impl Iterator<Item = &ReplicaStatus> {
        self.replicas.iter().filter(|r| r.source == Owner::Managed)
    }

    /// The look-aside picker of the policy called `name`.
    pub fn lookaside(&self, name: &str) -> Option<&Picker> {
        self.lookaside
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
    }
}

/// The shared, atomically swapped current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
