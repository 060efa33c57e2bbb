//! What a replica's service looks like: its name, its labels and its spec. Pure, so
//! the rules are tested without an engine.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecPrivileges, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};

use crate::provisioner::docker::{
    container_name, ReplicaLimits, LABEL_HOSTNAME, LABEL_MANAGED_BY, LABEL_SERVER_ID,
};
use crate::provisioner::ReplicaSpec;

/// The port the server listens on inside its task's container.
pub(super) const SERVER_PORT: u16 = 5000;
/// The port a replica serves look-aside gRPC on, inside its container.
pub(super) const GRPC_PORT: u16 = 50051;
/// The unprivileged user replicas run as (`nobody`), as in the docker runtime.
const REPLICA_USER: &str = "65534:65534";
/// Between a task's death and Swarm starting its replacement. Swarm's own default is
/// 5 s, which would be most of a respawn; a little pause still keeps a replica that
/// crashes at once from spinning the engine.
const RESTART_DELAY: Duration = Duration::from_millis(100);
/// How long a task has after SIGTERM when its service is deleted: the `/rm` grace.
/// The engine applies it, not `stop()`'s caller, since deleting a service takes none.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);
/// Swarm's limit on a service name (a DNS label).
const MAX_SERVICE_NAME: usize = 63;

/// The service name of replica `hostname`: its container name in the docker runtime
/// (the hostname, prefixed with `<instance>-` unless the instance is the default).
pub fn service_name(instance: &str, hostname: &str) -> String {
    container_name(instance, hostname)
}

/// Why Swarm would refuse `name` as a service name, if it would. Swarm wants a DNS
/// label (`[a-zA-Z0-9]`, then groups of `-`/`_` each followed by an alphanumeric, at
/// most 63 characters), stricter than container names: no `.`, no trailing `-`.
pub fn service_name_error(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    let ok = bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || matches!(b, b'-' | b'_'));
    if !ok {
        Some(format!(
            "'{name}' cannot name a Swarm service: use letters, digits, '-' and '_', \
             starting and ending with a letter or digit"
        ))
    } else if name.len() > MAX_SERVICE_NAME {
        Some(format!(
            "'{name}' cannot name a Swarm service: longer than {MAX_SERVICE_NAME} characters"
        ))
    } else {
        None
    }
}

/// The labels of a replica's service and of its task's container (the latter so
/// that `docker ps` and container events show whose it is).
pub fn labels(instance: &str, spec: &ReplicaSpec) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_MANAGED_BY.to_string(), instance.to_string()),
        (LABEL_SERVER_ID.to_string(), spec.id.to_string()),
        (LABEL_HOSTNAME.to_string(), spec.hostname.clone()),
    ])
}

/// Everything a replica's service is made of.
#[derive(Debug, Clone)]
pub struct ServicePlan<'a> {
    pub instance: &'a str,
    /// The image as tasks must name it (see `engine::image_reference`).
    pub image: &'a str,
    pub network: &'a str,
    pub limits: ReplicaLimits,
    /// Publish the ports on the node the task runs on, for a balancer outside the
    /// overlay network.
    pub publish: bool,
}

impl ServicePlan<'_> {
    /// The spec of replica `spec`'s service: one task of the server image, restarted
    /// by Swarm whatever ends it, reached by DNS round robin (no VIP: the kernels this
    /// runs on have no IPVS), its ports published in `host` mode when asked.
    pub fn service(&self, spec: &ReplicaSpec) -> ServiceSpec {
        let labels = labels(self.instance, spec);
        let ports = self
            .publish
            .then(|| vec![host_port(SERVER_PORT), host_port(GRPC_PORT)]);
        ServiceSpec {
            name: Some(service_name(self.instance, &spec.hostname)),
            labels: Some(labels.clone()),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            task_template: Some(TaskSpec {
                container_spec: Some(self.container(spec, labels)),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some((self.limits.cpus * 1e9) as i64),
                        memory_bytes: Some(self.limits.memory_bytes),
                        pids: Some(self.limits.pids),
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(nanos(RESTART_DELAY)),
                    // 0: no limit. The balancer keeps the replica out of the ring
                    // while it has no running task.
                    max_attempts: Some(0),
                    window: None,
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.network.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports,
            }),
            ..Default::default()
        }
    }

    /// The task's container: the docker runtime's environment and hardening.
    fn container(
        &self,
        spec: &ReplicaSpec,
        labels: HashMap<String, String>,
    ) -> TaskSpecContainerSpec {
        TaskSpecContainerSpec {
            image: Some(self.image.to_string()),
            labels: Some(labels),
            env: Some(vec![
                format!("SERVER_ID={}", spec.hostname),
                format!("LISTEN=0.0.0.0:{SERVER_PORT}"),
                format!("GRPC_LISTEN=0.0.0.0:{GRPC_PORT}"),
            ]),
            user: Some(REPLICA_USER.into()),
            read_only: Some(true),
            capability_drop: Some(vec!["ALL".into()]),
            // Engines before API 1.46 ignore it; the user and the dropped
            // capabilities already leave nothing to escalate to.
            privileges: Some(TaskSpecContainerSpecPrivileges {
                no_new_privileges: Some(true),
                ..Default::default()
            }),
            stop_grace_period: Some(nanos(STOP_GRACE)),
            ..Default::default()
        }
    }
}

/// `target` published in `host` mode on a port the engine picks (none given), so
/// replicas on one node never race for a port; the task's status says which.
fn host_port(target: u16) -> EndpointPortConfig {
    EndpointPortConfig {
        protocol: Some(EndpointPortConfigProtocolEnum::TCP),
        target_port: Some(i64::from(target)),
        published_port: None,
        publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
        ..Default::default()
    }
}

/// A duration as the engine's API counts it.
fn nanos(d: Duration) -> i64 {
    d.as_nanos().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provisioner::docker::DEFAULT_INSTANCE;

    fn plan(publish: bool) -> ServicePlan<'static> {
        ServicePlan {
            instance: "blue",
            image: "sha256:abc",
            network: "lbnet-swarm",
            limits: ReplicaLimits {
                memory_bytes: 64 << 20,
                cpus: 0.5,
                pids: 64,
            },
            publish,
        }
    }

    fn replica() -> ReplicaSpec {
        ReplicaSpec {
            hostname: "Server2".into(),
            id: 2,
        }
    }

    #[test]
    fn services_are_named_as_the_docker_runtime_names_containers() {
        assert_eq!(service_name(DEFAULT_INSTANCE, "Server1"), "Server1");
        assert_eq!(service_name("blue", "Server1"), "blue-Server1");
    }

    #[test]
    fn names_swarm_would_refuse_are_caught_first() {
        for ok in ["Server1", "e2e-swarm-12-S4", "a_b", "a--b", "x"] {
            assert_eq!(service_name_error(ok), None, "{ok}");
        }
        for bad in ["", "web.1", "-a", "a-", "a_", "a b", "é"] {
            assert!(service_name_error(bad).is_some(), "{bad:?}");
        }
        assert!(service_name_error(&"a".repeat(63)).is_none());
        assert!(service_name_error(&"a".repeat(64)).is_some());
    }

    #[test]
    fn the_service_and_its_container_carry_the_three_labels() {
        let s = plan(true).service(&replica());
        let expected = HashMap::from([
            ("lb.managed-by".to_string(), "blue".to_string()),
            ("lb.server-id".to_string(), "2".to_string()),
            ("lb.hostname".to_string(), "Server2".to_string()),
        ]);
        assert_eq!(s.name.as_deref(), Some("blue-Server2"));
        assert_eq!(s.labels.as_ref(), Some(&expected));
        let task = s.task_template.unwrap();
        assert_eq!(task.container_spec.unwrap().labels, Some(expected));
    }

    #[test]
    fn one_task_restarted_on_any_exit_with_the_limits_on_the_network() {
        let s = plan(true).service(&replica());
        let replicas = s.mode.and_then(|m| m.replicated).and_then(|r| r.replicas);
        assert_eq!(replicas, Some(1));
        let task = s.task_template.unwrap();
        let restart = task.restart_policy.unwrap();
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ANY)
        );
        assert!(
            restart.delay.unwrap() < 1_000_000_000,
            "well under Swarm's 5 s"
        );
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        assert_eq!(limits.pids, Some(64));
        let nets = task.networks.unwrap();
        assert_eq!(nets[0].target.as_deref(), Some("lbnet-swarm"));
        let c = task.container_spec.unwrap();
        assert_eq!(c.image.as_deref(), Some("sha256:abc"));
        assert!(c.env.unwrap().contains(&"SERVER_ID=Server2".to_string()));
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.user.as_deref(), Some(REPLICA_USER));
    }

    #[test]
    fn dns_round_robin_always_host_published_ports_only_when_asked() {
        let published = plan(true).service(&replica()).endpoint_spec.unwrap();
        assert_eq!(published.mode, Some(EndpointSpecModeEnum::DNSRR));
        let ports = published.ports.unwrap();
        assert_eq!(
            ports.iter().map(|p| p.target_port).collect::<Vec<_>>(),
            [Some(5000), Some(50051)]
        );
        assert!(ports.iter().all(|p| p.publish_mode
            == Some(EndpointPortConfigPublishModeEnum::HOST)
            && p.published_port.is_none()));
        let internal = plan(false).service(&replica()).endpoint_spec.unwrap();
        assert_eq!(internal.mode, Some(EndpointSpecModeEnum::DNSRR));
        assert_eq!(internal.ports, None);
    }
}
