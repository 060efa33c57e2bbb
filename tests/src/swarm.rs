//! Helpers for the tests of the `swarm` runtime: this machine's engine as a one-node
//! swarm for the length of a test, left exactly as it was found, and the services of
//! one balancer instance. Driven through the `docker` CLI, like [`crate::docker`].

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::{docker, try_docker, SERVER_IMAGE};
use crate::{bin, Service};

/// The network `docker swarm init` creates and `docker swarm leave` leaves behind.
const GWBRIDGE: &str = "docker_gwbridge";
/// Serializes swarm tests across processes: one's `swarm leave` would pull the swarm
/// from under another's services.
const LOCK: &str = "/tmp/lb-e2e-swarm.lock";

/// The engine's swarm state: `inactive`, `active`, `pending`, `error` or `locked`.
pub fn swarm_state() -> String {
    docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .trim()
        .to_string()
}

fn network_names() -> BTreeSet<String> {
    try_docker(&["network", "ls", "--format", "{{.Name}}"])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// This engine as a swarm manager until dropped (or [`Swarm::restore`]d): made one
/// with `docker swarm init --advertise-addr 127.0.0.1` only when it was in no swarm,
/// and then taken out again, `docker_gwbridge` included, so it is left as found.
pub struct Swarm {
    /// The swarm state found before the test.
    pub found: String,
    initialized: bool,
    gwbridge_found: bool,
    _lock: File,
}

impl Swarm {
    /// The swarm, or `None` when `LB_SKIP_DOCKER_TESTS=1` says to skip. Panics when
    /// the engine is unreachable, the image is missing, or the engine is in a swarm
    /// it cannot create services in.
    pub fn join(test: &str) -> Option<Swarm> {
        if std::env::var("LB_SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1") {
            eprintln!("skipped {test}: LB_SKIP_DOCKER_TESTS=1");
            return None;
        }
        if let Err(e) = try_docker(&["version", "--format", "{{.Server.Version}}"]) {
            panic!(
                "the Docker engine is unreachable ({e}); start it, or set LB_SKIP_DOCKER_TESTS=1 to skip these tests"
            );
        }
        if try_docker(&["image", "inspect", SERVER_IMAGE]).is_err() {
            panic!("the image {SERVER_IMAGE} is missing: run `make images` first");
        }
        let lock = File::create(LOCK).unwrap_or_else(|e| panic!("cannot create {LOCK}: {e}"));
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock {LOCK}: {e}"));
        let found = swarm_state();
        let gwbridge_found = network_names().contains(GWBRIDGE);
        let initialized = match found.as_str() {
            "inactive" => {
                docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                true
            }
            "active" => {
                let manager = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
                assert_eq!(
                    manager.trim(),
                    "true",
                    "this engine is a swarm worker: the test needs a manager"
                );
                false
            }
            other => panic!("the engine's swarm is {other}: fix it before running {test}"),
        };
        Some(Swarm {
            found,
            initialized,
            gwbridge_found,
            _lock: lock,
        })
    }

    /// Leaves the swarm if this fixture joined it, and returns the state now.
    pub fn restore(mut self) -> String {
        self.leave();
        swarm_state()
    }

    fn leave(&mut self) {
        if !std::mem::take(&mut self.initialized) {
            return;
        }
        if let Err(e) = try_docker(&["swarm", "leave", "--force"]) {
            eprintln!("docker swarm leave --force: {e}");
        }
        if !self.gwbridge_found {
            // Its last endpoints go a moment after the swarm's containers.
            let removed = (0..50).any(|_| {
                let gone = try_docker(&["network", "rm", GWBRIDGE]).is_ok()
                    || !network_names().contains(GWBRIDGE);
                if !gone {
                    std::thread::sleep(Duration::from_millis(100));
                }
                gone
            });
            if !removed {
                eprintln!("could not remove {GWBRIDGE}");
            }
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A replica service as `docker service inspect` shows it.
#[derive(Debug, Clone)]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    /// Its task container's labels.
    pub container_labels: HashMap<String, String>,
    pub replicas: u64,
    pub endpoint_mode: String,
}

fn labels(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// One balancer instance's services: its own `--instance` and overlay `--network`.
/// Dropping it removes every service with its label and the network, even when the
/// test panicked.
pub struct SwarmInstance {
    /// The `--instance` value, also the prefix of its service names.
    pub name: String,
    /// The `--network` value.
    pub network: String,
}

impl SwarmInstance {
    /// An instance for test `test`, named after it and this process.
    pub fn new(test: &str) -> SwarmInstance {
        let name = format!("e2e-{test}-{}", std::process::id());
        let network = format!("{name}-net");
        let instance = SwarmInstance { name, network };
        instance.clean();
        instance
    }

    /// The service name of replica `hostname`.
    pub fn service_name(&self, hostname: &str) -> String {
        format!("{}-{hostname}", self.name)
    }

    /// Starts the balancer binary of the build on a free loopback port, with the
    /// swarm runtime, managing this instance's services, with `extra` arguments.
    pub fn balancer(&self, extra: &[&str]) -> Service {
        let mut args = vec![
            "--runtime",
            "swarm",
            "--listen",
            "127.0.0.1:0",
            "--instance",
            &self.name,
            "--network",
            &self.network,
            "--image",
            SERVER_IMAGE,
        ];
        args.extend_from_slice(extra);
        Service::start(bin("load_balancer"), &args, &[("RUST_LOG", "info")])
    }

    /// The instance's services, by name.
    pub fn services(&self) -> Vec<SwarmService> {
        let filter = format!("label=lb.managed-by={}", self.name);
        let ids = match try_docker(&["service", "ls", "-q", "--filter", &filter]) {
            Ok(ids) => ids,
            // No swarm (any more): no services.
            Err(_) => return Vec::new(),
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut found: Vec<SwarmService> = ids
            .iter()
            .filter_map(|id| try_docker(&["service", "inspect", id]).ok())
            .flat_map(|json| {
                let v: Value = serde_json::from_str(&json).expect("docker prints JSON");
                v.as_array().cloned().unwrap_or_default()
            })
            .map(|s| SwarmService {
                id: s["ID"].as_str().unwrap_or_default().to_string(),
                name: s["Spec"]["Name"].as_str().unwrap_or_default().to_string(),
                labels: labels(&s["Spec"]["Labels"]),
                container_labels: labels(&s["Spec"]["TaskTemplate"]["ContainerSpec"]["Labels"]),
                replicas: s["Spec"]["Mode"]["Replicated"]["Replicas"]
                    .as_u64()
                    .unwrap_or(0),
                endpoint_mode: s["Spec"]["EndpointSpec"]["Mode"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    /// The ids of the tasks of service `name` that run and are meant to.
    pub fn running_tasks(&self, name: &str) -> Vec<String> {
        let out = try_docker(&[
            "service",
            "ps",
            name,
            "-q",
            "--no-trunc",
            "--filter",
            "desired-state=running",
        ])
        .unwrap_or_default();
        out.split_whitespace()
            .filter(|id| {
                try_docker(&["inspect", "--format", "{{.Status.State}}", id])
                    .is_ok_and(|s| s.trim() == "running")
            })
            .map(str::to_string)
            .collect()
    }

    /// The running containers of the instance's tasks: (container id, labels).
    pub fn containers(&self) -> Vec<(String, HashMap<String, String>)> {
        let filter = format!("label=lb.managed-by={}", self.name);
        let ids = try_docker(&["ps", "-q", "--no-trunc", "--filter", &filter]).unwrap_or_default();
        ids.split_whitespace()
            .filter_map(|id| {
                let json = try_docker(&["inspect", "--format", "{{json .Config.Labels}}", id]);
                let v: Value = serde_json::from_str(&json.ok()?).ok()?;
                Some((id.to_string(), labels(&v)))
            })
            .collect()
    }

    /// Every container of the instance's tasks, running or not: Swarm removes a
    /// deleted service's containers a few seconds after they stop.
    pub fn any_containers(&self) -> Vec<String> {
        let filter = format!("label=lb.managed-by={}", self.name);
        try_docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Whether the instance's network exists.
    pub fn has_network(&self) -> bool {
        network_names().contains(&self.network)
    }

    fn clean(&self) {
        for s in self.services() {
            let _ = try_docker(&["service", "rm", &s.id]);
        }
        // A network with containers still attached cannot go, and the engine is to
        // be left as found: wait for Swarm to remove them, then remove stragglers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.any_containers().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for id in self.any_containers() {
            let _ = try_docker(&["rm", "-f", &id]);
        }
        if self.has_network() {
            let _ = try_docker(&["network", "rm", &self.network]);
        }
    }
}

impl Drop for SwarmInstance {
    fn drop(&mut self) {
        self.clean();
    }
}
