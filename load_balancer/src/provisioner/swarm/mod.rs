//! The `swarm` runtime: each replica is a Docker Swarm service of one task, so the
//! replicas can run on any node of a multi-host engine.
//!
//! The services are named and labelled as the docker runtime names and labels its
//! containers (`lb.managed-by`, `lb.server-id`, `lb.hostname`, on the service and on
//! its task's container), and a service without the instance's label is never
//! touched. A replica's handle is its current task's id.
//!
//! Swarm, not the balancer, restarts a dead task (restart policy `any`). The balancer
//! still hears of the death (container events, the tasks API) and takes the replica
//! out of the ring; the managed source then asks for a replacement, and `start` on a
//! service that exists does not create another: it waits for Swarm's new task and
//! hands that out, so the replica comes back under the same name and id, on the same
//! slots. The one step of the managed source's respawn that does not fit, cleaning up
//! the dead incarnation with `stop(old, 0)` before `start`, keeps the service instead
//! (see [`SwarmProvisioner::stop`]).
//!
//! Reaching replicas: Swarm's virtual IPs and routing mesh need IPVS, which the
//! kernels this runs on lack, so services use DNS round robin (`dnsrr`) on an
//! attachable overlay network. A balancer on the overlay (in a container) reaches a
//! replica by service name; a balancer on a host cannot resolve those names, so each
//! task also publishes its ports in `host` mode on its node, at ports the engine picks.

mod engine;
mod services;
mod spec;
mod tasks;
mod tracker;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::Docker;
use futures_util::future::join_all;

pub use spec::{service_name, service_name_error};

use super::docker::engine::{self as docker_engine, message, Reach};
use super::docker::{DockerSettings, LABEL_MANAGED_BY};
use super::{EventSender, ProvisionError, Provisioner, ReplicaSpec, Running};
use services::SWARM_STOP_DELAY;
use spec::STOP_GRACE;
use tracker::Tracker;

/// The network replicas join when `--network` is left at the docker runtime's
/// default: `lbnet` is that runtime's bridge network, which no service can join.
pub const DEFAULT_NETWORK: &str = "lbnet-swarm";
/// The docker runtime's default network, which this runtime replaces by its own.
const DOCKER_DEFAULT_NETWORK: &str = "lbnet";

/// The network to use for `--network requested`: see [`DEFAULT_NETWORK`].
pub fn network_for(requested: &str) -> String {
    if requested == DOCKER_DEFAULT_NETWORK {
        DEFAULT_NETWORK.to_string()
    } else {
        requested.to_string()
    }
}

/// Runs replicas as one-task services on a swarm, through a manager's API.
pub struct SwarmProvisioner {
    docker: Docker,
    settings: DockerSettings,
    reach: Reach,
    /// This engine's node: ports its tasks publish are reached on loopback.
    node: String,
    /// How long a start waits for a running task.
    start_timeout: Duration,
    tracker: Arc<Mutex<Tracker>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl SwarmProvisioner {
    /// Connects to a swarm manager (the local engine or `DOCKER_HOST`), creates the
    /// overlay network if missing, and starts reporting deaths of the instance's
    /// tasks on `events`. A start waits up to `start_timeout` for a running task.
    pub async fn connect(
        settings: DockerSettings,
        start_timeout: Duration,
        events: EventSender,
    ) -> Result<Self, ProvisionError> {
        if let Some(e) = service_name_error(&service_name(&settings.instance, "Server1")) {
            return Err(ProvisionError::Other(format!(
                "--instance prefixes service names: {e}"
            )));
        }
        let docker = docker_engine::connect().await?;
        let node = engine::manager_node(&docker).await?;
        engine::ensure_overlay(&docker, &settings.network, &settings.instance).await?;
        let reach = docker_engine::reach(
            &docker,
            settings.addressing,
            &settings.network,
            "their service names",
        )
        .await;
        log::info!(
            "swarm runtime: engine API {}, node {node}, overlay network {}, instance {}, \
             replicas reached {}",
            docker.client_version(),
            settings.network,
            settings.instance,
            match reach {
                Reach::Published => "on ports published on their nodes",
                Reach::Network => "by service name over the overlay network",
            }
        );
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let watchers = vec![
            tokio::spawn(watch::watch_events(
                docker.clone(),
                settings.instance.clone(),
                tracker.clone(),
                events.clone(),
            )),
            tokio::spawn(watch::poll_tasks(
                docker.clone(),
                settings.instance.clone(),
                tracker.clone(),
                events,
            )),
        ];
        Ok(SwarmProvisioner {
            docker,
            settings,
            reach,
            node,
            start_timeout,
            tracker,
            watchers,
        })
    }
}

impl Drop for SwarmProvisioner {
    fn drop(&mut self) {
        self.watchers.iter().for_each(|w| w.abort());
    }
}

#[async_trait]
impl Provisioner for SwarmProvisioner {
    fn name(&self) -> &'static str {
        "swarm"
    }

    /// The instance's services with a running task (waiting a little for those
    /// between tasks); those that get none, or name no replica, are deleted.
    async fn discover(&self) -> Result<Vec<Running>, ProvisionError> {
        let services = self
            .own_services()
            .await
            .map_err(|e| ProvisionError::Other(format!("listing services: {}", message(&e))))?;
        let adopted = join_all(services.iter().map(|s| self.adopt(s))).await;
        Ok(adopted.into_iter().flatten().collect())
    }

    /// Creates the replica's service, or takes over the one that exists (after a
    /// death, Swarm is already starting its next task), and returns once a new task
    /// runs. A failed start deletes the service, so it leaves nothing behind.
    async fn start(&self, spec: &ReplicaSpec) -> Result<Running, ProvisionError> {
        let fail = |reason: String| ProvisionError::Start {
            hostname: spec.hostname.clone(),
            reason,
        };
        let name = service_name(&self.settings.instance, &spec.hostname);
        if let Some(e) = service_name_error(&name) {
            return Err(fail(e));
        }
        self.tracker().claim(&name);
        let service_id = self.adopt_or_create(spec, &name).await.map_err(fail)?;
        match self
            .wait_task(&service_id, &name, spec, self.start_timeout)
            .await
        {
            Ok(running) => {
                log::debug!(
                    "{name} runs as task {} at {}",
                    running.handle,
                    running.address
                );
                Ok(running)
            }
            Err(reason) => {
                if let Err(e) = self.delete(&service_id).await {
                    log::warn!(
                        "removing service {name} after a failed start: {}",
                        message(&e)
                    );
                }
                Err(fail(reason))
            }
        }
    }

    /// Deletes the replica's service. Except when the managed source clears away a
    /// dead incarnation before asking for its replacement (`grace` zero, the task
    /// over): Swarm is already starting the next task, so the service stays for the
    /// `start` that follows, and is deleted if none does. The engine gives the task
    /// the service's stop grace period ([`STOP_GRACE`]) whatever `grace` is; a
    /// nonzero `grace` waits until the task's container on this node has stopped.
    async fn stop(&self, replica: &Running, grace: Duration) -> Result<(), ProvisionError> {
        let other = |e: DockerError| {
            ProvisionError::Other(format!("stopping {}: {}", replica.hostname, message(&e)))
        };
        let Some(s) = self.service_of(replica).await.map_err(other)? else {
            return Ok(());
        };
        let (Some(id), Some(name)) = (s.id.clone(), s.spec.as_ref().and_then(|s| s.name.clone()))
        else {
            return Ok(());
        };
        if !self.owned(&s) {
            return Err(ProvisionError::Other(format!(
                "refusing to remove service {name}: it lacks {LABEL_MANAGED_BY}={}",
                self.settings.instance
            )));
        }
        if grace.is_zero() && self.task_ended(&replica.handle).await {
            log::debug!("keeping service {name}: Swarm replaces its dead task");
            self.keep_for_restart(name, id);
            return Ok(());
        }
        self.delete(&id).await.map_err(other)?;
        // With a grace, the caller wants the replica to have finished: wait for its
        // container, which Swarm stops only after a fixed 2 s (it first takes the
        // task out of the network's DNS and lets that spread). Without one, nobody
        // waits for that: a replacement can be created at once.
        if !grace.is_zero() {
            self.wait_gone(&id, SWARM_STOP_DELAY + STOP_GRACE).await;
        }
        Ok(())
    }

    async fn shutdown(&self, replicas: &[Running]) {
        self.watchers.iter().for_each(|w| w.abort());
        if !self.settings.cleanup_on_exit {
            log::info!(
                "leaving {} replica services running; a restarted balancer adopts them",
                replicas.len()
            );
            return;
        }
        // Every service with the label, not just `replicas`: one still being
        // created when the signal came must not be left behind.
        let services = match self.own_services().await {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot list services to clean up: {}", message(&e));
                return;
            }
        };
        let removals = services
            .iter()
            .filter_map(|s| s.id.as_deref())
            .map(|id| async move {
                match self.delete(id).await {
                    Ok(()) => self.wait_gone(id, SWARM_STOP_DELAY + STOP_GRACE).await,
                    Err(e) => log::warn!("removing service {id}: {}", message(&e)),
                }
            });
        join_all(removals).await;
        log::info!("removed {} replica services", services.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docker_runtimes_bridge_network_is_swapped_for_an_overlay() {
        assert_eq!(network_for("lbnet"), DEFAULT_NETWORK);
        assert_eq!(network_for("my-overlay"), "my-overlay");
    }
}
