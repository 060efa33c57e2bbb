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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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

#[cfg(test)]
pub(crate) mod testing {
    //! Snapshots for the unit tests of what reads them.

    use std::sync::Arc;

    use super::{ReplicaState, ReplicaStatus, Snapshot};
    use crate::backend::{Backend, ServerId};
    use crate::metrics::Metrics;
    use crate::policy::settings::{policy_name, Settings};
    use crate::policy::{build, Tuning};
    use crate::registry::claims::Owner;
    use crate::ring::Geometry;

    /// A snapshot under `policy` with healthy managed replicas `Server<id>` for `ids`,
    /// their counters in `metrics`.
    pub fn snapshot_in(policy: &str, ids: &[ServerId], metrics: &Metrics) -> Snapshot {
        let tuning = Tuning {
            geometry: Geometry::DEFAULT,
            balance_factor: None,
            slow_start: None,
        };
        let mut built = build(policy, tuning).expect("a known policy");
        let backends: Vec<Arc<Backend>> = ids
            .iter()
            .map(|id| {
                built.join(*id).expect("room on the ring");
                let name = format!("Server{id}");
                let address = format!("127.0.0.1:{}", 5000 + id);
                Arc::new(Backend::new(
                    *id,
                    name.clone(),
                    address,
                    metrics.replica(&name),
                ))
            })
            .collect();
        let replicas = backends
            .iter()
            .map(|b| ReplicaStatus {
                hostname: b.hostname.clone(),
                id: b.id,
                state: ReplicaState::Healthy,
                address: Some(b.address.clone()),
                grpc_address: None,
                restarts: 0,
                handle: None,
                source: Owner::Managed,
            })
            .collect();
        Snapshot {
            picker: built.picker(backends.clone()),
            lookaside: Arc::new(Vec::new()),
            replicas,
            settings: Arc::new(Settings {
                policy: policy_name(policy).expect("a known policy"),
                ..Settings::default()
            }),
            figures: backends,
        }
    }

    /// [`snapshot_in`] with counters of its own.
    pub fn snapshot_with(policy: &str, ids: &[ServerId]) -> Snapshot {
        snapshot_in(policy, ids, &Metrics::new())
    }
}
