//! Who runs the replicas: a child process, a Docker container, or nobody (fixed backends).
//!
//! The managed source sees only [`Provisioner`]: start a replica, stop it, list what already
//! runs, and hear about deaths on the channel given at construction. Everything else
//! (health, the ring, respawning) is the same whichever one is in use; `--runtime`
//! picks it.

pub mod docker;
pub mod process;
pub mod static_set;
pub mod swarm;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::backend::ServerId;

/// What the managed source asks a provisioner to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    pub hostname: String,
    pub id: ServerId,
}

/// A replica the runtime runs (or, for `static`, knows of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub hostname: String,
    pub id: ServerId,
    /// Where the balancer sends its requests: `host:port`.
    pub address: String,
    /// Where it serves look-aside gRPC (`BackendService`), if it does.
    pub grpc_address: Option<String>,
    /// The runtime's own handle: a pid, a container id, a backend address.
    /// Death events name it, so an event about an earlier incarnation is ignored.
    pub handle: String,
}

/// Something the runtime noticed without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionerEvent {
    /// The replica's process or container is gone.
    Died { handle: String, reason: String },
}

/// The sending half runtimes report events on.
pub type EventSender = mpsc::UnboundedSender<ProvisionerEvent>;

/// Why a runtime could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// This runtime cannot start replicas at all (`static`).
    #[error("the {0} runtime cannot start replicas")]
    Unsupported(&'static str),
    /// Starting failed; the message says why.
    #[error("could not start {hostname}: {reason}")]
    Start { hostname: String, reason: String },
    /// Stopping or listing failed.
    #[error("{0}")]
    Other(String),
}

/// Starts, stops and lists replicas.
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// The name used on the command line and in `/status`.
    fn name(&self) -> &'static str;

    /// Whether `start` can create replicas (false for fixed backends).
    fn can_start(&self) -> bool {
        true
    }

    /// Replicas that already run and belong to this balancer, to adopt at boot
    /// rather than start again. Dead leftovers are cleaned up here.
    async fn discover(&self) -> Result<Vec<Running>, ProvisionError>;

    /// Starts a replica and returns once it is launched (not necessarily serving).
    async fn start(&self, spec: &ReplicaSpec) -> Result<Running, ProvisionError>;

    /// Stops a replica and releases what it held, giving it `grace` to finish what it
    /// is doing before it is killed. Stopping one already gone is fine.
    async fn stop(&self, replica: &Running, grace: Duration) -> Result<(), ProvisionError>;

    /// Called once when the balancer shuts down, with the replicas still running.
    /// Runtimes whose replicas cannot outlive the balancer stop them here.
    async fn shutdown(&self, _replicas: &[Running]) {}
}
