//! Helpers for the tests of the `docker` runtime: the real engine, driven through the
//! `docker` CLI so the tests share no code with the runtime they check.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

use crate::{bin, Service};

/// The image the balancer starts replicas from.
pub const SERVER_IMAGE: &str = "lb-server:latest";

/// Runs `docker ARGS`; `Err` carries stderr when it fails.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs `docker ARGS` and panics when it fails.
pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
}

/// A container as the engine reports it.
#[derive(Debug, Clone)]
pub struct Container {
    /// The full id.
    pub id: String,
    /// The name, without the leading `/`.
    pub name: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
}

/// Every container (running or not) labelled `lb.managed-by=INSTANCE`, by name.
pub fn containers(instance: &str) -> Vec<Container> {
    let filter = format!("label=lb.managed-by={instance}");
    let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["inspect"];
    args.extend(&ids);
    // A container may vanish between `ps` and `inspect`: take what is still there.
    let json = match try_docker(&args) {
        Ok(j) => j,
        Err(_) => return containers_one_by_one(&ids),
    };
    let mut found = parse_inspect(&json);
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn containers_one_by_one(ids: &[&str]) -> Vec<Container> {
    let mut found: Vec<Container> = ids
        .iter()
        .filter_map(|id| try_docker(&["inspect", id]).ok())
        .flat_map(|j| parse_inspect(&j))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn parse_inspect(json: &str) -> Vec<Container> {
    let v: Value = serde_json::from_str(json).expect("docker inspect prints JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| Container {
            id: c["Id"].as_str().unwrap_or_default().to_string(),
            name: c["Name"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: c["Config"]["Labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            running: c["State"]["Running"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// A balancer instance of one test: its own `--instance` and `--network`, so tests
/// run in parallel on one engine. Dropping it removes every container with its label
/// and the network, even when the test panicked.
pub struct Instance {
    /// The `--instance` value, also the prefix of its container names.
    pub name: String,
    /// The `--network` value.
    pub network: String,
}

impl Instance {
    /// An instance for test `test`, or `None` when `LB_SKIP_DOCKER_TESTS=1` says to
    /// skip. Panics when the engine is unreachable or the server image is missing.
    pub fn new(test: &str) -> Option<Instance> {
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
        let name = format!("e2e-{test}-{}", std::process::id());
        let network = format!("{name}-net");
        let instance = Instance { name, network };
        // Leftovers of an earlier run that reused this pid.
        instance.clean();
        Some(instance)
    }

    /// The container name of replica `hostname`.
    pub fn container_name(&self, hostname: &str) -> String {
        format!("{}-{hostname}", self.name)
    }

    /// Starts the balancer binary of the build on a free loopback port, managing
    /// this instance's containers, with `extra` arguments.
    pub fn balancer(&self, extra: &[&str]) -> Service {
        let mut args = vec![
            "--runtime",
            "docker",
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

    /// The instance's containers (running or not), by name.
    pub fn containers(&self) -> Vec<Container> {
        containers(&self.name)
    }

    fn clean(&self) {
        for c in self.containers() {
            let _ = try_docker(&["rm", "-f", &c.id]);
        }
        let _ = try_docker(&["network", "rm", &self.network]);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.clean();
    }
}
