//! The `docker` runtime: each replica is a container of the server image, created,
//! watched and removed through the engine's API.
//!
//! Ownership is carried by labels, not by memory: every container this runtime
//! creates has `lb.managed-by=<instance>`, so a restarted balancer can find (and
//! adopt) what an earlier one left running, and a container without the label is
//! never stopped or removed, whatever its name.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, EndpointSettings,
    HostConfig, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures_util::future::join_all;

pub(super) mod engine;
pub(super) mod events;

use engine::{ensure_network, message, status, Reach};
use events::{unix_now, watch_events};

use super::{EventSender, ProvisionError, Provisioner, ReplicaSpec, Running};
use crate::config::DockerAddressing;

/// The label naming the balancer instance that owns a container.
pub const LABEL_MANAGED_BY: &str = "lb.managed-by";
/// The label holding a replica's ring id, so an adopted replica keeps its slots.
pub const LABEL_SERVER_ID: &str = "lb.server-id";
/// The label holding a replica's hostname, which the container name may prefix.
pub const LABEL_HOSTNAME: &str = "lb.hostname";
/// The instance whose container names carry no prefix.
pub const DEFAULT_INSTANCE: &str = "load_balancer";
/// The port the server listens on inside its container.
const SERVER_PORT: u16 = 5000;

/// The port a replica serves look-aside gRPC (`BackendService`) on, in its container.
const GRPC_PORT: u16 = 50051;
/// The unprivileged user replicas run as (`nobody`): the server needs no rights.
const REPLICA_USER: &str = "65534:65534";
/// How long `shutdown --cleanup-on-exit` lets replicas finish in-flight requests.
const CLEANUP_GRACE: Duration = Duration::from_secs(5);

/// What the `docker` runtime (and the `swarm` runtime, which shares it) needs from
/// the configuration.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The server image, e.g. `lb-server:latest`.
    pub image: String,
    /// The network replicas join; created when missing (a bridge for `docker`, an
    /// attachable overlay for `swarm`).
    pub network: String,
    /// The value of the `lb.managed-by` label.
    pub instance: String,
    /// How replicas are reached.
    pub addressing: DockerAddressing,
    /// Whether `shutdown` removes every container of the instance.
    pub cleanup_on_exit: bool,
    /// Resource limits of each replica container.
    pub limits: ReplicaLimits,
}

/// What one replica container may use, so a runaway replica cannot hurt the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLimits {
    pub memory_bytes: i64,
    /// CPU time in cores (0.5 = half a core).
    pub cpus: f64,
    pub pids: i64,
}

/// Runs replicas as containers on a local (or `DOCKER_HOST`) engine.
pub struct DockerProvisioner {
    docker: Docker,
    settings: DockerSettings,
    reach: Reach,
    watcher: tokio::task::JoinHandle<()>,
}

impl DockerProvisioner {
    /// Connects to the engine, creates the network if missing, and starts reporting
    /// deaths of the instance's containers on `events`.
    pub async fn connect(
        settings: DockerSettings,
        events: EventSender,
    ) -> Result<Self, ProvisionError> {
        if !valid_name(&settings.instance) {
            return Err(ProvisionError::Other(format!(
                "--instance '{}' must match [a-zA-Z0-9][a-zA-Z0-9_.-]*: it prefixes container names",
                settings.instance
            )));
        }
        let docker = engine::connect().await?;
        ensure_network(&docker, &settings.network).await?;
        let names = format!("the container names on {}", settings.network);
        let reach = engine::reach(&docker, settings.addressing, &settings.network, &names).await;
        log::info!(
            "docker runtime: engine API {}, network {}, instance {}, replicas reached {}",
            docker.client_version(),
            settings.network,
            settings.instance,
            match reach {
                Reach::Published => "on published loopback ports",
                Reach::Network => "by container name over the network",
            }
        );
        // Replay from a little before now: deaths between this point and the moment
        // the subscription is live are not lost.
        let since = unix_now() - 1;
        let watcher = tokio::spawn(watch_events(
            docker.clone(),
            settings.instance.clone(),
            events,
            since,
        ));
        Ok(DockerProvisioner {
            docker,
            settings,
            reach,
            watcher,
        })
    }

    fn container_name(&self, hostname: &str) -> String {
        container_name(&self.settings.instance, hostname)
    }

    fn owned(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| *v == self.settings.instance)
    }

    fn instance_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_MANAGED_BY}={}", self.settings.instance)],
        )])
    }

    /// Where the balancer reaches a started container, or `None` when it cannot
    /// (e.g. a container started in network mode, adopted by a balancer on the host).
    fn address_of(&self, c: &ContainerInspectResponse) -> Option<String> {
        self.port_of(c, SERVER_PORT)
    }

    /// Where the replica's container `port` is reached from the balancer.
    fn port_of(&self, c: &ContainerInspectResponse, port: u16) -> Option<String> {
        match self.reach {
            Reach::Network => {
                let name = c.name.as_deref()?.trim_start_matches('/');
                let on_network = c
                    .network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .is_some_and(|n| n.contains_key(&self.settings.network));
                on_network.then(|| format!("{name}:{port}"))
            }
            Reach::Published => {
                let bindings = c
                    .network_settings
                    .as_ref()?
                    .ports
                    .as_ref()?
                    .get(&format!("{port}/tcp"))?
                    .as_ref()?;
                bindings
                    .iter()
                    .filter_map(|b| b.host_port.as_deref())
                    .find(|p| !p.is_empty())
                    .map(|port| format!("127.0.0.1:{port}"))
            }
        }
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a container of ours by id or name, killing it first if it runs.
    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            // 409: a removal is already in progress, which is what we want.
            Err(e) if !matches!(status(&e), Some(404 | 409)) => Err(e),
            _ => Ok(()),
        }
    }

    fn create_body(&self, spec: &ReplicaSpec) -> ContainerCreateBody {
        let labels = HashMap::from([
            (LABEL_MANAGED_BY.to_string(), self.settings.instance.clone()),
            (LABEL_SERVER_ID.to_string(), spec.id.to_string()),
            (LABEL_HOSTNAME.to_string(), spec.hostname.clone()),
        ]);
        let port = format!("{SERVER_PORT}/tcp");
        let grpc_port = format!("{GRPC_PORT}/tcp");
        let port_bindings = (self.reach == Reach::Published).then(|| {
            // No host port: the engine picks a free one, so replicas never race for it.
            let any = || {
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }])
            };
            HashMap::from([(port.clone(), any()), (grpc_port.clone(), any())])
        });
        ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            env: Some(vec![
                format!("SERVER_ID={}", spec.hostname),
                format!("LISTEN=0.0.0.0:{SERVER_PORT}"),
                format!("GRPC_LISTEN=0.0.0.0:{GRPC_PORT}"),
            ]),
            labels: Some(labels),
            exposed_ports: Some(vec![port, grpc_port]),
            user: Some(REPLICA_USER.into()),
            host_config: Some(HostConfig {
                memory: Some(self.settings.limits.memory_bytes),
                nano_cpus: Some((self.settings.limits.cpus * 1e9) as i64),
                pids_limit: Some(self.settings.limits.pids),
                privileged: Some(false),
                // The server writes nothing and needs no capability: take all away.
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                // The managed source replaces dead replicas itself; an engine restart
                // would fight it and reuse a container id it already gave up on.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                network_mode: Some(self.settings.network.clone()),
                port_bindings,
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.settings.network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..Default::default()
        }
    }

    /// Creates the container; a leftover of ours with the same name is replaced, a
    /// stranger's is refused.
    async fn create(&self, spec: &ReplicaSpec, name: &str) -> Result<String, String> {
        let opts = || CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let first = self
            .docker
            .create_container(Some(opts()), self.create_body(spec))
            .await;
        let err = match first {
            Ok(r) => return Ok(r.id),
            Err(e) => e,
        };
        match status(&err) {
            Some(404) => {
                return Err(format!(
                    "image {} not found ({}): run `make images` first",
                    self.settings.image,
                    message(&err)
                ))
            }
            Some(409) => {}
            _ => return Err(message(&err)),
        }
        let existing = self.inspect(name).await.map_err(|e| message(&e))?;
        if let Some(c) = &existing {
            if !self.owned(c.config.as_ref().and_then(|c| c.labels.as_ref())) {
                return Err(format!(
                    "a container named {name} already exists and is not managed by this balancer \
                     (no label {LABEL_MANAGED_BY}={}); remove or rename it",
                    self.settings.instance
                ));
            }
            log::warn!("removing a leftover container {name} before starting it again");
            self.remove(name).await.map_err(|e| message(&e))?;
        }
        self.docker
            .create_container(Some(opts()), self.create_body(spec))
            .await
            .map(|r| r.id)
            .map_err(|e| message(&e))
    }
}

impl Drop for DockerProvisioner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[async_trait]
impl Provisioner for DockerProvisioner {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn discover(&self) -> Result<Vec<Running>, ProvisionError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.instance_filter()),
            ..Default::default()
        };
        let listed = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| ProvisionError::Other(format!("listing containers: {e}")))?;
        let mut found = Vec::new();
        for summary in listed {
            let Some(id) = summary.id.clone() else {
                continue;
            };
            let labels = summary.labels.clone().unwrap_or_default();
            let hostname = labels.get(LABEL_HOSTNAME).cloned();
            let server_id = labels.get(LABEL_SERVER_ID).and_then(|v| v.parse().ok());
            let running = summary.state == Some(ContainerSummaryStateEnum::RUNNING);
            let inspected = if running {
                self.inspect(&id).await.ok().flatten()
            } else {
                None
            };
            let address = inspected.as_ref().and_then(|c| self.address_of(c));
            // A container from before replicas served gRPC has no such port.
            let grpc_address = inspected.as_ref().and_then(|c| self.port_of(c, GRPC_PORT));
            match (hostname, server_id, address) {
                (Some(hostname), Some(server_id), Some(address)) => found.push(Running {
                    hostname,
                    id: server_id,
                    address,
                    grpc_address,
                    handle: id,
                }),
                _ => {
                    let name = summary.names.as_ref().and_then(|n| n.first());
                    log::info!(
                        "removing {} container {} ({id}): it cannot be adopted",
                        if running { "unreachable" } else { "dead" },
                        name.map_or("?", |n| n.trim_start_matches('/'))
                    );
                    if let Err(e) = self.remove(&id).await {
                        log::warn!("removing {id}: {e}");
                    }
                }
            }
        }
        Ok(found)
    }

    async fn start(&self, spec: &ReplicaSpec) -> Result<Running, ProvisionError> {
        let fail = |reason: String| ProvisionError::Start {
            hostname: spec.hostname.clone(),
            reason,
        };
        let name = self.container_name(&spec.hostname);
        let id = self.create(spec, &name).await.map_err(fail)?;
        // From here on the container exists: any failure removes it again, so a
        // failed start leaves nothing behind.
        let started = async {
            self.docker
                .start_container(&id, None)
                .await
                .map_err(|e| message(&e))?;
            let c = self
                .inspect(&id)
                .await
                .map_err(|e| message(&e))?
                .ok_or("vanished right after it started")?;
            if !c.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
                return Err("exited right after it started".to_string());
            }
            let address = self
                .address_of(&c)
                .ok_or_else(|| "the engine did not report its address".to_string())?;
            Ok((address, self.port_of(&c, GRPC_PORT)))
        }
        .await;
        match started {
            Ok((address, grpc_address)) => {
                log::debug!("started {name} ({id}) at {address}");
                Ok(Running {
                    hostname: spec.hostname.clone(),
                    id: spec.id,
                    address,
                    grpc_address,
                    handle: id,
                })
            }
            Err(reason) => {
                let _ = self.remove(&id).await;
                Err(fail(reason))
            }
        }
    }

    async fn stop(&self, replica: &Running, grace: Duration) -> Result<(), ProvisionError> {
        let other = |e: DockerError| {
            ProvisionError::Other(format!("stopping {}: {}", replica.hostname, message(&e)))
        };
        let Some(c) = self.inspect(&replica.handle).await.map_err(other)? else {
            return Ok(());
        };
        if !self.owned(c.config.as_ref().and_then(|c| c.labels.as_ref())) {
            return Err(ProvisionError::Other(format!(
                "refusing to stop container {}: it lacks {LABEL_MANAGED_BY}={}",
                replica.handle, self.settings.instance
            )));
        }
        if !grace.is_zero() {
            let opts = StopContainerOptions {
                // Round up: a grace below a second must not become an instant kill.
                t: Some(grace.as_secs_f64().ceil().min(i32::MAX as f64) as i32),
                ..Default::default()
            };
            match self
                .docker
                .stop_container(&replica.handle, Some(opts))
                .await
            {
                // 304: already stopped; 404: already gone.
                Err(e) if !matches!(status(&e), Some(304 | 404)) => {
                    log::warn!("stopping {}: {}", replica.hostname, message(&e));
                }
                _ => {}
            }
        }
        self.remove(&replica.handle).await.map_err(other)
    }

    async fn shutdown(&self, replicas: &[Running]) {
        self.watcher.abort();
        if !self.settings.cleanup_on_exit {
            log::info!(
                "leaving {} replica containers running; a restarted balancer adopts them",
                replicas.len()
            );
            return;
        }
        // Everything with the label, not just `replicas`: one still being created
        // when the signal came must not be left behind.
        let opts = ListContainersOptions {
            all: true,
            filters: Some(self.instance_filter()),
            ..Default::default()
        };
        let listed = match self.docker.list_containers(Some(opts)).await {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot list containers to clean up: {e}");
                return;
            }
        };
        let stops = listed
            .iter()
            .filter_map(|c| c.id.as_deref())
            .map(|id| async move {
                let opts = StopContainerOptions {
                    t: Some(CLEANUP_GRACE.as_secs() as i32),
                    ..Default::default()
                };
                let _ = self.docker.stop_container(id, Some(opts)).await;
                if let Err(e) = self.remove(id).await {
                    log::warn!("removing {id}: {e}");
                }
            });
        join_all(stops).await;
        log::info!("removed {} replica containers", listed.len());
    }
}

/// A replica's container name: its hostname, prefixed with the instance unless the
/// instance is the default one, so two instances can share an engine.
pub fn container_name(instance: &str, hostname: &str) -> String {
    if instance == DEFAULT_INSTANCE {
        hostname.to_string()
    } else {
        format!("{instance}-{hostname}")
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_instance_has_unprefixed_names() {
        assert_eq!(container_name(DEFAULT_INSTANCE, "Server1"), "Server1");
        assert_eq!(container_name("blue", "Server1"), "blue-Server1");
    }

    #[test]
    fn instance_names_must_be_usable_in_container_names() {
        assert!(valid_name("e2e-boot-123"));
        assert!(valid_name("load_balancer"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
    }
}
