//! The `swarm` runtime against the real engine made a one-node swarm: the host
//! balancer binary runs its replicas as one-task services of `lb-server:latest`,
//! hears of a killed task, takes Swarm's replacement back on the same slots, adopts
//! the services after a restart, and leaves the engine as it found it.
//!
//! One test in steps: the swarm is the engine's, so tests sharing it must not race
//! each other's `swarm init` and `swarm leave` (another process's run waits on a lock
//! file). `LB_SKIP_DOCKER_TESTS=1` skips it; `make images` must have run before.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::docker::docker;
use e2e::swarm::{Swarm, SwarmInstance};
use e2e::{poll, replicas, wait_healthy, Service};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Generous: two cores may be busy with other builds.
const BOOT: Duration = Duration::from_secs(60);
const HOSTS: [&str; 3] = ["Server1", "Server2", "Server3"];

/// The `/status` handle (task id) of replica `hostname`, once it is healthy.
fn healthy_handle(lb: &Service, hostname: &str) -> Option<String> {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == hostname && r["state"] == "healthy")
        .and_then(|r| r["handle"].as_str().map(String::from))
}

/// The set of task ids `/status` reports.
fn status_handles(lb: &Service) -> BTreeSet<String> {
    replicas(lb)
        .iter()
        .filter_map(|r| r["handle"].as_str().map(String::from))
        .collect()
}

/// The running task of every service of the instance.
fn running_tasks(inst: &SwarmInstance) -> BTreeSet<String> {
    inst.services()
        .iter()
        .flat_map(|s| inst.running_tasks(&s.name))
        .collect()
}

/// The ring's virtual nodes, `[slot, id]`: what "the same slots" means.
fn vnodes(lb: &Service) -> Value {
    lb.get("/ring").json()["message"]["vnodes"].clone()
}

#[test]
fn replicas_run_as_swarm_services_that_heal_scale_survive_a_restart_and_leave_nothing_behind() {
    let Some(swarm) = Swarm::join("swarm_runtime") else {
        return;
    };
    let found = swarm.found.clone();
    let inst = SwarmInstance::new("swarm");
    let lb = boots_three_labelled_services_and_routes_through_them(&inst);
    add_creates_a_service_and_rm_removes_it(&inst, &lb);
    a_killed_task_is_replaced_by_swarm_and_back_on_the_same_slots(&inst, &lb);
    let lb = a_restarted_balancer_adopts_the_services(&inst, lb);
    cleanup_leaves_no_service_network_or_swarm_behind(lb, inst, swarm, &found);
}

fn boots_three_labelled_services_and_routes_through_them(inst: &SwarmInstance) -> Service {
    let started = Instant::now();
    let lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);
    eprintln!("boot to 3 healthy replicas: {:?}", started.elapsed());

    let services = inst.services();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, HOSTS.map(|h| inst.service_name(h)), "services");
    for (i, s) in services.iter().enumerate() {
        for labels in [&s.labels, &s.container_labels] {
            assert_eq!(labels["lb.managed-by"], inst.name, "{}", s.name);
            assert_eq!(labels["lb.server-id"], (i + 1).to_string());
            assert_eq!(labels["lb.hostname"], HOSTS[i]);
        }
        assert_eq!(s.replicas, 1, "one task");
        assert_eq!(s.endpoint_mode, "dnsrr", "no VIP: no IPVS here");
    }
    let containers = inst.containers();
    assert_eq!(containers.len(), 3, "docker ps shows the tasks' containers");
    assert!(containers
        .iter()
        .all(|(_, l)| l["lb.managed-by"] == inst.name && l.contains_key("lb.server-id")));
    assert_eq!(
        status_handles(&lb),
        running_tasks(inst),
        "/status handles are the services' running tasks"
    );

    // With 3 replicas the quadratic ring gives Server1 most slots; 100 random ids
    // all landing there is all but impossible.
    let mut served = BTreeSet::new();
    for _ in 0..100 {
        let r = lb.get("/home");
        assert_eq!(r.status, 200, "{}", r.body);
        let by = r.header("X-Served-By").expect("X-Served-By").to_string();
        assert_eq!(r.json()["message"], format!("Hello from Server: {by}"));
        served.insert(by);
    }
    assert!(served.iter().all(|s| HOSTS.contains(&s.as_str())));
    assert!(served.len() >= 2, "spread over replicas: {served:?}");
    lb
}

fn add_creates_a_service_and_rm_removes_it(inst: &SwarmInstance, lb: &Service) {
    let asked = Instant::now();
    let r = lb.send("POST", "/add", Some(r#"{"n": 1, "hostnames": ["S4"]}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!("/add of one replica: {:?}", asked.elapsed());
    assert_eq!(r.json()["message"]["N"], 4);
    let s4 = inst
        .services()
        .into_iter()
        .find(|s| s.name == inst.service_name("S4"))
        .expect("/add answered after the service exists");
    assert_eq!(s4.labels["lb.server-id"], "4", "the smallest free id");
    assert_eq!(healthy_handle(lb, "S4"), inst.running_tasks(&s4.name).pop());

    let asked = Instant::now();
    let r = lb.send("DELETE", "/rm", Some(r#"{"n": 1, "hostnames": ["S4"]}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!("/rm of one replica: {:?}", asked.elapsed());
    assert_eq!(r.json()["message"]["N"], 3);
    let names: Vec<String> = inst.services().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        HOSTS.map(|h| inst.service_name(h)),
        "/rm answered after the service is gone"
    );
    assert!(
        inst.containers()
            .iter()
            .all(|(_, l)| l["lb.hostname"] != "S4"),
        "and its task's container stopped"
    );
}

fn a_killed_task_is_replaced_by_swarm_and_back_on_the_same_slots(
    inst: &SwarmInstance,
    lb: &Service,
) {
    let ring = vnodes(lb);
    let services: Vec<String> = inst.services().into_iter().map(|s| s.id).collect();
    let old = healthy_handle(lb, "Server2").expect("Server2 healthy");
    let (container, _) = inst
        .containers()
        .into_iter()
        .find(|(_, l)| l.get("com.docker.swarm.task.id") == Some(&old))
        .expect("the container of Server2's task");

    let killed = Instant::now();
    docker(&["kill", &container]);
    let new = poll("Server2 replaced and healthy", BOOT, || {
        healthy_handle(lb, "Server2").filter(|h| *h != old)
    });
    eprintln!("docker kill to healthy replacement: {:?}", killed.elapsed());

    let after: Vec<String> = inst.services().into_iter().map(|s| s.id).collect();
    assert_eq!(
        after, services,
        "the same services: Swarm replaced the task"
    );
    assert_eq!(
        inst.running_tasks(&inst.service_name("Server2")),
        [new],
        "the replica's handle is the service's new task"
    );
    let s2 = replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == "Server2")
        .expect("Server2");
    assert_eq!(s2["id"], 2);
    assert_eq!(s2["restarts"], 1);
    wait_healthy(lb, 3, BOOT);
    assert_eq!(vnodes(lb), ring, "back on the same ring slots");
    assert_eq!(lb.get("/home").status, 200);
}

fn a_restarted_balancer_adopts_the_services(inst: &SwarmInstance, mut lb: Service) -> Service {
    let before = status_handles(&lb);
    let services: Vec<String> = inst.services().into_iter().map(|s| s.id).collect();
    lb.stop_with(Signal::SIGKILL, Duration::from_secs(10))
        .expect("the balancer dies on SIGKILL");
    drop(lb);
    assert_eq!(
        running_tasks(inst),
        before,
        "replicas outlive a killed balancer"
    );

    // This one removes its services when it exits: the last step checks that.
    let lb = inst.balancer(&["--cleanup-on-exit"]);
    wait_healthy(&lb, 3, BOOT);
    assert_eq!(status_handles(&lb), before, "the same tasks, adopted");
    let after: Vec<String> = inst.services().into_iter().map(|s| s.id).collect();
    assert_eq!(after, services, "no duplicate and no new service");
    let ids: Vec<Value> = replicas(&lb).iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [1, 2, 3], "the same ids");
    assert!(
        replicas(&lb).iter().all(|r| r["restarts"] == 0),
        "adoption is not a restart"
    );
    assert_eq!(lb.get("/home").status, 200);
    lb
}

fn cleanup_leaves_no_service_network_or_swarm_behind(
    mut lb: Service,
    inst: SwarmInstance,
    swarm: Swarm,
    found: &str,
) {
    let status = lb
        .stop_with(Signal::SIGTERM, Duration::from_secs(30))
        .expect("the balancer exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        inst.services().is_empty(),
        "--cleanup-on-exit removed the services"
    );
    let waited = Instant::now();
    poll("Swarm to remove the task containers", BOOT, || {
        inst.any_containers().is_empty().then_some(())
    });
    eprintln!(
        "task containers removed {:?} after the balancer exited",
        waited.elapsed()
    );
    let network = inst.network.clone();
    drop(inst);
    let now = swarm.restore();
    assert_eq!(now, found, "the engine's swarm state is as found");
    let networks = docker(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !networks.lines().any(|n| n == network),
        "the overlay network is gone: {networks}"
    );
    if found == "inactive" {
        for swarm_made in ["ingress", "docker_gwbridge"] {
            assert!(
                !networks.lines().any(|n| n == swarm_made),
                "{swarm_made} is gone with the swarm"
            );
        }
    }
}
