//! The `docker` runtime against the real engine: the host balancer binary starts,
//! replaces, adopts and removes containers of the `lb-server:latest` image.
//!
//! Each test has its own instance label and network, so they run in parallel, and
//! its [`Instance`] guard removes what it created even when it fails.
//! `LB_SKIP_DOCKER_TESTS=1` skips them; `make images` must have run before.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::docker::{docker, try_docker, Instance, SERVER_IMAGE};
use e2e::{poll, rep_names, replicas, wait_healthy, Service};
use nix::sys::signal::Signal;

/// Generous: two cores may be busy with other tests' containers.
const BOOT: Duration = Duration::from_secs(60);

/// The `/status` handle (container id) of replica `hostname`, once it is healthy.
fn healthy_handle(lb: &Service, hostname: &str) -> Option<String> {
    replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == hostname && r["state"] == "healthy")
        .and_then(|r| r["handle"].as_str().map(String::from))
}

/// The set of container ids `/status` reports.
fn status_handles(lb: &Service) -> BTreeSet<String> {
    replicas(lb)
        .iter()
        .filter_map(|r| r["handle"].as_str().map(String::from))
        .collect()
}

#[test]
fn boots_three_labelled_containers_and_routes_through_them() {
    let Some(inst) = Instance::new("boot") else {
        return;
    };
    let started = Instant::now();
    let lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);
    eprintln!("boot to 3 healthy replicas: {:?}", started.elapsed());

    let found = inst.containers();
    let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["Server1", "Server2", "Server3"].map(|h| inst.container_name(h)),
        "containers of the instance"
    );
    for (i, c) in found.iter().enumerate() {
        assert!(c.running, "{} runs", c.name);
        assert_eq!(c.labels["lb.managed-by"], inst.name);
        assert_eq!(c.labels["lb.server-id"], (i + 1).to_string());
        assert_eq!(c.labels["lb.hostname"], format!("Server{}", i + 1));
    }
    let ids: BTreeSet<String> = found.iter().map(|c| c.id.clone()).collect();
    assert_eq!(
        status_handles(&lb),
        ids,
        "/status handles are the container ids"
    );

    // The quadratic ring gives Server1 432 of the 512 request slots with 3 replicas:
    // 100 random ids all landing there has odds of 4e-8 (30 had 0.6 %).
    let mut served = BTreeSet::new();
    for _ in 0..100 {
        let r = lb.get("/home");
        assert_eq!(r.status, 200, "{}", r.body);
        let by = r.header("X-Served-By").expect("X-Served-By").to_string();
        assert_eq!(
            r.json()["message"],
            format!("Hello from Server: {by}"),
            "the body comes from the replica named in X-Served-By"
        );
        served.insert(by);
    }
    assert!(
        served
            .iter()
            .all(|s| ["Server1", "Server2", "Server3"].contains(&s.as_str())),
        "served by {served:?}"
    );
    assert!(
        served.len() >= 2,
        "random ids spread over replicas: {served:?}"
    );
}

#[test]
fn add_starts_containers_and_rm_removes_them() {
    let Some(inst) = Instance::new("scale") else {
        return;
    };
    let lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);

    let r = lb.send(
        "POST",
        "/add",
        Some(r#"{"n": 2, "hostnames": ["S5", "S4"]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["N"], 5);
    let names: BTreeSet<String> = inst.containers().into_iter().map(|c| c.name).collect();
    assert!(
        names.contains(&inst.container_name("S4")) && names.contains(&inst.container_name("S5")),
        "/add answered after the containers exist: {names:?}"
    );
    assert_eq!(names.len(), 5);
    let new_ids: BTreeSet<String> = inst
        .containers()
        .into_iter()
        .filter(|c| ["S4", "S5"].contains(&c.labels["lb.hostname"].as_str()))
        .map(|c| c.labels["lb.server-id"].clone())
        .collect();
    assert_eq!(
        new_ids,
        ["4", "5"].map(String::from).into(),
        "the smallest free ids"
    );
    wait_healthy(&lb, 5, BOOT);

    let r = lb.send("DELETE", "/rm", Some(r#"{"n": 2, "hostnames": ["S5"]}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["N"], 3);
    let left: BTreeSet<String> = rep_names(&lb).into_iter().collect();
    assert!(!left.contains("S5"));
    let expected: BTreeSet<String> = left.iter().map(|h| inst.container_name(h)).collect();
    let names: BTreeSet<String> = inst.containers().into_iter().map(|c| c.name).collect();
    assert_eq!(
        names, expected,
        "/rm answered after the containers are gone"
    );
}

#[test]
fn a_same_named_container_it_does_not_own_is_left_alone() {
    let Some(inst) = Instance::new("foreign") else {
        return;
    };
    let lb = inst.balancer(&["--replicas", "1"]);
    wait_healthy(&lb, 1, BOOT);
    let foreign = inst.container_name("Foreign");
    // No label: it belongs to somebody else. Created, never started: nothing runs.
    let id = docker(&["create", "--name", &foreign, SERVER_IMAGE]);
    let id = id.trim();
    let _cleanup = RemoveOnDrop(id.to_string());

    let r = lb.send(
        "POST",
        "/add",
        Some(r#"{"n": 1, "hostnames": ["Foreign"]}"#),
    );
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert!(r.body.contains("not managed"), "says why: {}", r.body);
    assert_eq!(rep_names(&lb), ["Server1"], "nothing was added");
    let still = docker(&["inspect", "-f", "{{.Id}}", &foreign]);
    assert_eq!(still.trim(), id, "the stranger's container is untouched");
}

struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = try_docker(&["rm", "-f", &self.0]);
    }
}

#[test]
fn a_killed_container_is_replaced_by_one_with_the_same_name() {
    let Some(inst) = Instance::new("kill") else {
        return;
    };
    let lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);
    let old = healthy_handle(&lb, "Server2").expect("Server2 healthy");
    let name = inst.container_name("Server2");

    let killed = Instant::now();
    docker(&["kill", &name]);
    let new = poll("Server2 replaced and healthy", BOOT, || {
        healthy_handle(&lb, "Server2").filter(|h| *h != old)
    });
    let took = killed.elapsed();
    eprintln!("docker kill to healthy replacement: {took:?}");

    let c = inst
        .containers()
        .into_iter()
        .find(|c| c.name == name)
        .expect("a container with the same name");
    assert_eq!(c.id, new, "the replacement is the container named {name}");
    assert!(c.running);
    assert_eq!(c.labels["lb.server-id"], "2", "same id, same ring slots");
    assert!(
        inst.containers().iter().all(|c| c.id != old),
        "the killed container was removed"
    );
    let s2 = replicas(&lb)
        .into_iter()
        .find(|r| r["hostname"] == "Server2")
        .expect("Server2");
    assert_eq!(s2["restarts"], 1);
    wait_healthy(&lb, 3, BOOT);
}

#[test]
fn a_restarted_balancer_adopts_its_running_containers() {
    let Some(inst) = Instance::new("adopt") else {
        return;
    };
    let mut lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);
    let before = status_handles(&lb);
    assert_eq!(before.len(), 3);
    lb.stop_with(Signal::SIGKILL, Duration::from_secs(10))
        .expect("the balancer dies on SIGKILL");
    drop(lb);
    let survivors: BTreeSet<String> = inst
        .containers()
        .into_iter()
        .filter(|c| c.running)
        .map(|c| c.id)
        .collect();
    assert_eq!(survivors, before, "replicas outlive a killed balancer");

    let lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);
    assert_eq!(status_handles(&lb), before, "the same containers, adopted");
    assert!(
        replicas(&lb).iter().all(|r| r["restarts"] == 0),
        "adoption is not a restart"
    );
    let after = inst.containers();
    let ids: BTreeSet<String> = after.iter().map(|c| c.id.clone()).collect();
    assert_eq!(after.len(), 3, "no duplicates: {after:?}");
    assert_eq!(ids, before, "no orphans, no new containers");
    assert_eq!(lb.get("/home").status, 200);
}

#[test]
fn cleanup_on_exit_leaves_no_container_behind() {
    let Some(inst) = Instance::new("cleanup") else {
        return;
    };
    let mut lb = inst.balancer(&["--cleanup-on-exit"]);
    wait_healthy(&lb, 3, BOOT);
    assert_eq!(inst.containers().len(), 3);
    let status = lb
        .stop_with(Signal::SIGTERM, Duration::from_secs(30))
        .expect("the balancer exits on SIGTERM");
    assert!(status.success(), "{status}");
    let left = inst.containers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn replicas_run_unprivileged_read_only_and_limited() {
    let Some(inst) = Instance::new("harden") else {
        return;
    };
    let lb = inst.balancer(&[
        "--replicas",
        "1",
        "--replica-memory-mb",
        "48",
        "--replica-cpus",
        "0.5",
        "--replica-pids",
        "32",
    ]);
    wait_healthy(&lb, 1, BOOT);
    let id = healthy_handle(&lb, "Server1").expect("a healthy replica");
    let format = "{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|\
                  {{.HostConfig.SecurityOpt}}|{{.HostConfig.Privileged}}|{{.HostConfig.Memory}}|\
                  {{.HostConfig.NanoCpus}}|{{.HostConfig.PidsLimit}}|{{.HostConfig.RestartPolicy.Name}}";
    let got = docker(&["inspect", "-f", format, &id]);
    assert_eq!(
        got.trim(),
        format!(
            "65534:65534|true|[ALL]|[no-new-privileges]|false|{}|500000000|32|no",
            48 * 1024 * 1024
        )
    );
    assert_eq!(
        lb.get("/home").status,
        200,
        "a hardened replica still serves"
    );
}

#[test]
fn control_reaches_a_container_and_its_heartbeat_reports_back() {
    let Some(inst) = Instance::new("control") else {
        return;
    };
    let lb = inst.balancer(&["--policy", "round-robin"]);
    wait_healthy(&lb, 3, BOOT);
    let r = lb.send(
        "POST",
        "/replicas/Server2/control",
        Some(r#"{"delay_ms": 300, "weight": 3}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["delay_ms"], 300);
    assert_eq!(
        lb.get("/replicas/Server2/control").json()["message"]["weight"],
        3
    );
    // The container's heartbeat now declares the weight, and the balancer reads it.
    poll("Server2's declared weight in /status", BOOT, || {
        replicas(&lb)
            .into_iter()
            .find(|r| r["hostname"] == "Server2" && r["weight"] == 3)
    });
    // And the fault is in force in the container: its answers take 300 ms at least.
    for _ in 0..3 {
        let started = Instant::now();
        let r = lb.get("/home");
        assert_eq!(r.status, 200, "{}", r.body);
        if r.header("x-served-by") == Some("Server2") {
            assert!(started.elapsed() >= Duration::from_millis(300));
            return;
        }
    }
    panic!("round-robin never reached Server2 in three requests");
}
