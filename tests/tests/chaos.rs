//! Faults injected under steady load: replicas killed every few seconds (process and
//! Docker runtimes), the balancer itself killed and restarted, and a storm of
//! concurrent `/add` and `/rm` calls. Each test prints what it measured, for
//! docs/reliability.md.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::docker::{docker, Instance};
use e2e::{
    free_port, poll, process_balancer, rep_names, replaced, replicas, wait_healthy, Load, Service,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BOOT: Duration = Duration::from_secs(60);
const RECOVERY: Duration = Duration::from_secs(20);

/// Kills replica `hostname` with `kill_it`, then waits until it is healthy again
/// under a new handle and all `n` replicas are healthy; returns the time it took.
fn kill_and_wait(lb: &Service, hostname: &str, n: usize, kill_it: impl FnOnce(&str)) -> Duration {
    let before = replicas(lb)
        .into_iter()
        .find(|r| r["hostname"] == hostname)
        .and_then(|r| r["handle"].as_str().map(String::from))
        .expect("the victim has a handle");
    let killed = Instant::now();
    kill_it(&before);
    poll(&format!("{hostname} to be replaced"), RECOVERY, || {
        let all = replicas(lb);
        let settled = all.len() == n && all.iter().all(|r| r["state"] == "healthy");
        (settled && replaced(lb, hostname, &before).is_some()).then_some(())
    });
    killed.elapsed()
}

fn summary(what: &str, ok: usize, failed: usize, recoveries: &[Duration]) {
    let ms: Vec<u128> = recoveries.iter().map(Duration::as_millis).collect();
    eprintln!(
        "{what}: {} requests sent, {failed} failed; kill-to-healthy ms: {ms:?}",
        ok + failed
    );
}

#[test]
fn killing_a_process_replica_every_few_seconds_loses_no_request() {
    let lb = process_balancer(&[]);
    let load = Load::start(&lb.base, 4, Duration::from_secs(120));
    load.wait_for(100, Duration::from_secs(20));
    let mut recoveries = Vec::new();
    for k in 0..6 {
        let victim = format!("Server{}", k % 3 + 1);
        recoveries.push(kill_and_wait(&lb, &victim, 3, |pid| {
            kill(Pid::from_raw(pid.parse().unwrap()), Signal::SIGKILL).unwrap();
        }));
        load.wait_for(200, Duration::from_secs(20));
    }
    let (ok, failed) = load.stop();
    summary("process runtime, 6 kills", ok, failed, &recoveries);
    assert_eq!(failed, 0, "idempotent requests failed while replicas died");
    assert_eq!(rep_names(&lb), ["Server1", "Server2", "Server3"]);
}

#[test]
fn killing_a_container_every_few_seconds_loses_no_request() {
    let Some(inst) = Instance::new("chaos-kill") else {
        return;
    };
    let lb = inst.balancer(&[]);
    wait_healthy(&lb, 3, BOOT);
    let load = Load::start(&lb.base, 4, Duration::from_secs(120));
    load.wait_for(100, Duration::from_secs(20));
    let mut recoveries = Vec::new();
    for k in 0..4 {
        let victim = format!("Server{}", k % 3 + 1);
        recoveries.push(kill_and_wait(&lb, &victim, 3, |id| {
            docker(&["kill", id]);
        }));
        load.wait_for(200, Duration::from_secs(20));
    }
    let (ok, failed) = load.stop();
    summary("docker runtime, 4 kills", ok, failed, &recoveries);
    assert_eq!(
        failed, 0,
        "idempotent requests failed while containers died"
    );
    let running: Vec<_> = inst
        .containers()
        .into_iter()
        .filter(|c| c.running)
        .collect();
    assert_eq!(running.len(), 3, "{running:?}");
}

#[test]
fn a_balancer_killed_under_load_comes_back_with_the_same_containers() {
    let Some(inst) = Instance::new("chaos-lb") else {
        return;
    };
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut lb = inst.balancer(&["--listen", &listen]);
    wait_healthy(&lb, 3, BOOT);
    let before: BTreeSet<String> = inst.containers().into_iter().map(|c| c.id).collect();
    let load = Load::start(&lb.base, 4, Duration::from_secs(120));
    load.wait_for(100, Duration::from_secs(20));
    let killed = Instant::now();
    lb.stop_with(Signal::SIGKILL, Duration::from_secs(10))
        .expect("the balancer dies on SIGKILL");
    let lb = inst.balancer(&["--listen", &listen]);
    wait_healthy(&lb, 3, BOOT);
    load.wait_for(100, Duration::from_secs(20));
    let back = killed.elapsed();
    let (ok, failed) = load.stop();
    eprintln!(
        "balancer SIGKILL under load: back serving within {:?}; {} requests sent, {failed} failed during the outage",
        back,
        ok + failed
    );
    let after: BTreeSet<String> = inst.containers().into_iter().map(|c| c.id).collect();
    assert_eq!(after, before, "adopted, not orphaned or doubled");
    assert!(replicas(&lb).iter().all(|r| r["restarts"] == 0));
}

#[test]
fn fifty_concurrent_adds_and_removes_leave_the_engine_and_the_balancer_agreeing() {
    let Some(inst) = Instance::new("chaos-admin") else {
        return;
    };
    let lb = Arc::new(inst.balancer(&[]));
    wait_healthy(&lb, 3, BOOT);
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let lb = lb.clone();
            std::thread::spawn(move || {
                let (method, path) = if i % 2 == 0 {
                    ("POST", "/add")
                } else {
                    ("DELETE", "/rm")
                };
                let r = lb.send(method, path, Some(r#"{"n": 1}"#));
                (method, r.status, r.body)
            })
        })
        .collect();
    let mut applied = 0;
    for call in calls {
        let (method, status, body) = call.join().unwrap();
        match status {
            200 => applied += 1,
            // Removing from an empty set is refused, and that is the only refusal.
            400 if method == "DELETE" => assert!(body.contains("only 0 exist"), "{body}"),
            _ => panic!("{method}: {status} {body}"),
        }
    }
    eprintln!(
        "50 concurrent /add and /rm: {applied} applied in {:?}",
        started.elapsed()
    );
    let names: BTreeSet<String> = rep_names(&lb).into_iter().collect();
    let engine: BTreeSet<String> = inst
        .containers()
        .into_iter()
        .filter(|c| c.running)
        .map(|c| c.labels["lb.hostname"].clone())
        .collect();
    assert_eq!(names, engine, "the balancer's set is what the engine runs");
    assert_eq!(inst.containers().len(), names.len(), "no stopped leftovers");
    wait_healthy(&lb, names.len(), BOOT);
}
