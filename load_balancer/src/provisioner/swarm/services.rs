//! The swarm runtime's steps against the engine: finding, creating, waiting for,
//! keeping and deleting a replica's service. `mod.rs` strings them into the
//! provisioner's calls.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::models::{Service, Task};
use bollard::query_parameters::{
    InspectServiceOptions, ListContainersOptions, ListServicesOptions, ListTasksOptions,
};

use super::spec::{service_name, ServicePlan, GRPC_PORT, SERVER_PORT};
use super::tracker::Tracker;
use super::{engine, tasks, Reach, SwarmProvisioner};
use crate::provisioner::docker::engine::{message, status};
use crate::provisioner::docker::{LABEL_HOSTNAME, LABEL_MANAGED_BY, LABEL_SERVER_ID};
use crate::provisioner::{ReplicaSpec, Running};

/// How often a start looks at its service's tasks.
const START_POLL: Duration = Duration::from_millis(100);
/// How long a restarted balancer waits for a service of its instance to get a
/// running task before it gives up adopting it (and deletes it).
const ADOPT_WAIT: Duration = Duration::from_secs(10);
/// How long Swarm waits, after a task is to stop, before it signals the container
/// (moby's `defaultGossipConvergeDelay`, fixed at 2 s), and a margin.
pub(super) const SWARM_STOP_DELAY: Duration = Duration::from_millis(2500);
/// The label Swarm puts on a task's container: its service's id.
const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
/// How long a service kept after its task died waits for the `start` that should
/// follow at once; unclaimed, it belongs to no replica and is deleted.
const KEEP_FOR: Duration = Duration::from_secs(30);

impl SwarmProvisioner {
    pub(super) fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().expect("tracker lock")
    }

    pub(super) fn owned(&self, s: &Service) -> bool {
        labels_of(s)
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| *v == self.settings.instance)
    }

    /// The service by id (or name, or id prefix: see [`Self::inspect_named`]),
    /// `None` when there is none.
    pub(super) async fn inspect(&self, service: &str) -> Result<Option<Service>, DockerError> {
        match self
            .docker
            .inspect_service(service, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The service named exactly `name`. The engine also answers a name with a
    /// service whose id merely starts with it (`s4` could be `s4xk…`): never that.
    pub(super) async fn inspect_named(&self, name: &str) -> Result<Option<Service>, DockerError> {
        let found = self.inspect(name).await?;
        Ok(found.filter(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name)))
    }

    /// Every task (running or not) of the services with these ids.
    pub(super) async fn tasks_of(&self, services: Vec<String>) -> Result<Vec<Task>, DockerError> {
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let opts = ListTasksOptions {
            filters: Some(HashMap::from([("service".to_string(), services)])),
        };
        self.docker.list_tasks(Some(opts)).await
    }

    /// Deletes a service by id; one already gone is fine.
    pub(super) async fn delete(&self, service_id: &str) -> Result<(), DockerError> {
        match self.docker.delete_service(service_id).await {
            Err(e) if status(&e) != Some(404) => Err(e),
            _ => Ok(()),
        }
    }

    /// Where the balancer reaches `port` of task `t` of service `name`.
    pub(super) async fn address(&self, t: &Task, name: &str, port: u16) -> Option<String> {
        match self.reach {
            Reach::Network => Some(format!("{name}:{port}")),
            Reach::Published => {
                let published = tasks::published_port(t, port)?;
                let node = t.node_id.as_deref()?;
                let host = engine::node_host(&self.docker, node, &self.node).await?;
                Some(format!("{host}:{published}"))
            }
        }
    }

    /// Replica `spec` as served by running task `t`, if the balancer can reach it.
    pub(super) async fn running(
        &self,
        spec: &ReplicaSpec,
        name: &str,
        t: &Task,
    ) -> Option<Running> {
        Some(Running {
            hostname: spec.hostname.clone(),
            id: spec.id,
            address: self.address(t, name, SERVER_PORT).await?,
            grpc_address: self.address(t, name, GRPC_PORT).await,
            handle: t.id.clone()?,
        })
    }

    /// Waits until service `service_id` has a running task the balancer can reach,
    /// other than the dead ones it handed out before, and hands it out.
    pub(super) async fn wait_task(
        &self,
        service_id: &str,
        name: &str,
        spec: &ReplicaSpec,
        within: Duration,
    ) -> Result<Running, String> {
        let deadline = Instant::now() + within;
        loop {
            let tasks = match self.tasks_of(vec![service_id.to_string()]).await {
                Ok(tasks) => tasks,
                // The tasks API answers 404 for a service that no longer exists.
                Err(e) if status(&e) == Some(404) => {
                    return Err(format!("service {name} was removed while it started"))
                }
                Err(e) => return Err(message(&e)),
            };
            let current = {
                let tracker = self.tracker();
                tasks::current(&tasks, service_id, |t| tracker.is_dead(t)).cloned()
            };
            if let Some(t) = current {
                match self.running(spec, name, &t).await {
                    Some(running) => {
                        self.tracker().hand_out(&running.handle, service_id);
                        return Ok(running);
                    }
                    None if Instant::now() >= deadline => {
                        return Err("its running task has no address reachable from here".into())
                    }
                    None => {}
                }
            } else if let Some(why) = tasks::rejection(&tasks, service_id) {
                return Err(format!("Swarm cannot run its task: {why}"));
            } else if Instant::now() >= deadline {
                let progress = tasks::progress(&tasks, service_id);
                return Err(format!("no running task within {within:?} ({progress})"));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// The id of replica `spec`'s service `name`: the existing one of this instance,
    /// else a new one. A leftover of ours for another replica is replaced; a
    /// stranger's service of that name is refused.
    pub(super) async fn adopt_or_create(
        &self,
        spec: &ReplicaSpec,
        name: &str,
    ) -> Result<String, String> {
        for _ in 0..3 {
            if let Some(s) = self.inspect_named(name).await.map_err(|e| message(&e))? {
                if !self.owned(&s) {
                    return Err(format!(
                        "a service named {name} already exists and is not managed by this \
                         balancer (no label {LABEL_MANAGED_BY}={}); remove or rename it",
                        self.settings.instance
                    ));
                }
                let id = s.id.clone().ok_or("the engine gave no service id")?;
                if replica_of(&s).is_some_and(|(h, i)| h == spec.hostname && i == spec.id) {
                    return Ok(id);
                }
                log::warn!("removing a leftover service {name} of another replica");
                self.delete(&id).await.map_err(|e| message(&e))?;
            }
            let image = engine::image_reference(&self.docker, &self.settings.image).await?;
            let plan = ServicePlan {
                instance: &self.settings.instance,
                image: &image,
                network: &self.settings.network,
                limits: self.settings.limits,
                publish: self.reach == Reach::Published,
            };
            match self.docker.create_service(plan.service(spec), None).await {
                Ok(created) => {
                    log::debug!("created service {name}");
                    return created
                        .id
                        .ok_or_else(|| "the engine gave no service id".into());
                }
                // Created meanwhile (another balancer of the instance): look again.
                Err(e) if status(&e) == Some(409) => continue,
                Err(e) => return Err(message(&e)),
            }
        }
        Err(format!("service {name} keeps appearing and vanishing"))
    }

    /// The service of a handed-out replica: remembered, else found through its task,
    /// else by name if its labels say it is this replica's.
    pub(super) async fn service_of(
        &self,
        replica: &Running,
    ) -> Result<Option<Service>, DockerError> {
        let remembered = self.tracker().release(&replica.handle);
        let by_task = match remembered {
            Some(id) => Some(id),
            None => match self.docker.inspect_task(&replica.handle).await {
                Ok(t) => t.service_id,
                Err(e) if status(&e) == Some(404) => None,
                Err(e) => return Err(e),
            },
        };
        if let Some(id) = by_task {
            return self.inspect(&id).await;
        }
        let name = service_name(&self.settings.instance, &replica.hostname);
        let found = self.inspect_named(&name).await?;
        let same = |s: &Service| replica_of(s) == Some((replica.hostname.clone(), replica.id));
        Ok(found.filter(same))
    }

    /// Whether the task has ended: known dead, or so the tasks API says.
    pub(super) async fn task_ended(&self, task: &str) -> bool {
        if self.tracker().is_dead(task) {
            return true;
        }
        match self.docker.inspect_task(task).await {
            Ok(t) => tasks::ended(&t).is_some(),
            Err(e) => status(&e) == Some(404),
        }
    }

    /// Keeps service `name` (id `service_id`) for the `start` that replaces its dead
    /// task; deletes it if none comes within [`KEEP_FOR`].
    pub(super) fn keep_for_restart(&self, name: String, service_id: String) {
        let generation = self.tracker().keep(&name);
        let (docker, tracker) = (self.docker.clone(), self.tracker.clone());
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_FOR).await;
            if tracker
                .lock()
                .expect("tracker lock")
                .expire(&name, generation)
            {
                log::info!("removing service {name}: no replica claimed it after its task died");
                if let Err(e) = docker.delete_service(&service_id).await {
                    log::warn!("removing service {name}: {}", message(&e));
                }
            }
        });
    }

    /// Waits (at most `within`) until the deleted service's container on this node
    /// has stopped, so that a stopped replica has finished its requests and released
    /// its ports. The tasks API forgets a deleted service's tasks at once, so this
    /// asks for containers; those on other nodes are not waited for.
    pub(super) async fn wait_gone(&self, service_id: &str, within: Duration) {
        let opts = || ListContainersOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{SERVICE_ID_LABEL}={service_id}")],
            )])),
            ..Default::default()
        };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.docker.list_containers(Some(opts())).await {
                Ok(running) if !running.is_empty() => tokio::time::sleep(START_POLL).await,
                _ => return,
            }
        }
    }

    /// Every service with this instance's label.
    pub(super) async fn own_services(&self) -> Result<Vec<Service>, DockerError> {
        let opts = ListServicesOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_MANAGED_BY}={}", self.settings.instance)],
            )])),
            ..Default::default()
        };
        self.docker.list_services(Some(opts)).await
    }

    /// Adopts service `s` once it has a running task (waiting up to [`ADOPT_WAIT`]);
    /// one that cannot be adopted is deleted.
    pub(super) async fn adopt(&self, s: &Service) -> Option<Running> {
        let id = s.id.clone()?;
        let name = s.spec.as_ref()?.name.clone()?;
        let found = match replica_of(s) {
            Some((hostname, server_id)) => {
                let spec = ReplicaSpec {
                    hostname,
                    id: server_id,
                };
                self.wait_task(&id, &name, &spec, ADOPT_WAIT).await
            }
            None => Err("its labels name no replica".into()),
        };
        match found {
            Ok(running) => Some(running),
            Err(why) => {
                log::info!("removing service {name}: it cannot be adopted ({why})");
                if let Err(e) = self.delete(&id).await {
                    log::warn!("removing service {name}: {}", message(&e));
                }
                None
            }
        }
    }
}

/// A service's own labels (not its task container's).
pub(super) fn labels_of(s: &Service) -> Option<&HashMap<String, String>> {
    s.spec.as_ref()?.labels.as_ref()
}

/// The replica (hostname, id) a service's labels name.
pub(super) fn replica_of(s: &Service) -> Option<(String, crate::backend::ServerId)> {
    let labels = labels_of(s)?;
    let hostname = labels.get(LABEL_HOSTNAME)?.clone();
    let id = labels.get(LABEL_SERVER_ID)?.parse().ok()?;
    Some((hostname, id))
}
