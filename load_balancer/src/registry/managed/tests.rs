//! The managed source's logic over a fake provisioner and fake health: no processes, no
//! sockets, and starts that take exactly as long as a test says.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;
// The test's clock, paused: backoff sleeps pass at once and are measured exactly.
use tokio::time::Instant;

use super::*;
use crate::health::Health;
use crate::provisioner::{EventSender, ProvisionError};
use crate::registry::Registry;
use crate::ring::Geometry;
use crate::snapshot::{ReplicaStatus, SharedSnapshot};

/// A provisioner that records what it is asked. A hostname can be held at its start
/// (until released) or made to fail; every start gets a new handle.
#[derive(Default)]
struct FakeProvisioner {
    starts: Mutex<Vec<(String, Instant)>>,
    stops: Mutex<Vec<String>>,
    held: Mutex<HashMap<String, Arc<Notify>>>,
    failing: Mutex<HashSet<String>>,
    adoptable: Mutex<Vec<Running>>,
    next: Mutex<u32>,
}

impl FakeProvisioner {
    fn hold(&self, hostname: &str) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        let mut held = self.held.lock().unwrap();
        held.insert(hostname.into(), gate.clone());
        gate
    }

    fn starts_of(&self, hostname: &str) -> Vec<Instant> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(h, _)| h == hostname)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[async_trait]
impl Provisioner for FakeProvisioner {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn discover(&self) -> Result<Vec<Running>, ProvisionError> {
        Ok(std::mem::take(&mut *self.adoptable.lock().unwrap()))
    }

    async fn start(&self, spec: &ReplicaSpec) -> Result<Running, ProvisionError> {
        self.starts
            .lock()
            .unwrap()
            .push((spec.hostname.clone(), Instant::now()));
        let gate = self.held.lock().unwrap().get(&spec.hostname).cloned();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        if self.failing.lock().unwrap().contains(&spec.hostname) {
            return Err(ProvisionError::Start {
                hostname: spec.hostname.clone(),
                reason: "told to fail".into(),
            });
        }
        let n = {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            *next
        };
        Ok(Running {
            hostname: spec.hostname.clone(),
            id: spec.id,
            address: format!("fake:{n}"),
            grpc_address: None,
            handle: format!("h{n}"),
        })
    }

    async fn stop(&self, replica: &Running, _grace: Duration) -> Result<(), ProvisionError> {
        self.stops.lock().unwrap().push(replica.handle.clone());
        Ok(())
    }
}

/// Health that every replica passes.
struct AlwaysUp;

#[async_trait]
impl Health for AlwaysUp {
    async fn check(&self, _address: &str) -> Option<crate::health::Heartbeat> {
        Some(Default::default())
    }
}

struct Harness {
    snapshot: SharedSnapshot,
    handle: ManagedHandle,
    events: EventSender,
}

fn start(provisioner: Arc<FakeProvisioner>, replicas: usize) -> Harness {
    let metrics = Arc::new(Metrics::new());
    let (registry, snapshot, _) = Registry::new(
        crate::policy::settings::Settings::default(),
        Geometry::DEFAULT,
        metrics.clone(),
    )
    .unwrap();
    let managed = Managed::new(
        provisioner.clone(),
        Arc::new(AlwaysUp),
        ManagedConfig {
            replicas,
            capacity: 56,
            start_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(1),
        },
        crate::registry::claims::Claims::new(56),
        metrics.clone(),
    );
    let (events, events_rx) = mpsc::unbounded_channel();
    let (_unhealthy, unhealthy_rx) = mpsc::unbounded_channel();
    let (handle, source, _task) = managed.spawn(events_rx, unhealthy_rx);
    tokio::spawn(registry.run(vec![Box::new(source)]));
    Harness {
        snapshot,
        handle,
        events,
    }
}

impl Harness {
    fn status(&self, hostname: &str) -> Option<ReplicaStatus> {
        let snap = self.snapshot.load();
        snap.replicas
            .iter()
            .find(|r| r.hostname == hostname)
            .cloned()
    }

    /// Waits (in the test's clock) until `hostname` is healthy under a handle other
    /// than `not`.
    async fn healthy(&self, hostname: &str, not: Option<&str>) -> ReplicaStatus {
        let wait = async {
            loop {
                if let Some(r) = self.status(hostname) {
                    if r.state == ReplicaState::Healthy && r.handle.as_deref() != not {
                        return r;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("{hostname} never became healthy"))
    }

    fn kill(&self, r: &ReplicaStatus) {
        let handle = r.handle.clone().expect("running");
        self.events
            .send(ProvisionerEvent::Died {
                handle,
                reason: "killed".into(),
            })
            .unwrap();
    }

    fn names(&self) -> Vec<String> {
        self.snapshot.load().hostnames()
    }
}

fn request(n: usize, hostnames: &[&str]) -> ScaleRequest {
    ScaleRequest {
        n,
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_death_during_a_slow_add_is_handled_at_once() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let h = start(provisioner.clone(), 3);
    let before = h.healthy("Server2", None).await;
    let gate = provisioner.hold("Slow");
    let handle = h.handle.clone();
    let add = tokio::spawn(async move { handle.add(request(1, &["Slow"])).await });
    while provisioner.starts_of("Slow").is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let killed_at = Instant::now();
    h.kill(&before);
    let after = h.healthy("Server2", before.handle.as_deref()).await;
    assert_ne!(after.handle, before.handle);
    assert_eq!(after.restarts, 1);
    // Replaced at once, in the test's clock, with the /add still waiting on its start.
    assert!(killed_at.elapsed() < Duration::from_millis(50));
    assert!(!add.is_finished());
    gate.notify_one();
    add.await.unwrap().unwrap();
    assert_eq!(h.names(), ["Server1", "Server2", "Server3", "Slow"]);
}

#[tokio::test(start_paused = true)]
async fn an_add_whose_replica_cannot_start_adds_none_and_stops_the_rest() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let h = start(provisioner.clone(), 1);
    h.healthy("Server1", None).await;
    provisioner.failing.lock().unwrap().insert("Bad".into());
    let err = h
        .handle
        .add(request(2, &["Good", "Bad"]))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::StartFailed(_)), "{err:?}");
    assert!(err.to_string().contains("none were added"), "{err}");
    assert_eq!(h.names(), ["Server1"]);
    // The one that did start was stopped again.
    assert_eq!(provisioner.starts_of("Good").len(), 1);
    assert_eq!(provisioner.stops.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn admin_requests_take_turns_while_deaths_do_not_wait() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let h = start(provisioner.clone(), 2);
    h.healthy("Server2", None).await;
    let gate = provisioner.hold("A");
    let (first, second) = (h.handle.clone(), h.handle.clone());
    let add = tokio::spawn(async move { first.add(request(1, &["A"])).await });
    while provisioner.starts_of("A").is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Queued behind the add: it must not remove "A" before A exists, nor fail.
    let rm = tokio::spawn(async move { second.remove(request(1, &["A"])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!rm.is_finished());
    gate.notify_one();
    add.await.unwrap().unwrap();
    rm.await.unwrap().unwrap();
    assert_eq!(h.names(), ["Server1", "Server2"]);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_keeps_failing_to_start_is_retried_with_growing_pauses() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let h = start(provisioner.clone(), 1);
    let first = h.healthy("Server1", None).await;
    provisioner.failing.lock().unwrap().insert("Server1".into());
    h.kill(&first);
    while provisioner.starts_of("Server1").len() < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let starts = provisioner.starts_of("Server1");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // After the boot start: an immediate respawn, then 250 ms, 500 ms, 1 s.
    let near =
        |gap: Duration, want: Duration| gap >= want && gap < want + Duration::from_millis(20);
    assert!(near(gaps[0], backoff(0)), "{gaps:?}");
    assert!(near(gaps[1], backoff(1)), "{gaps:?}");
    assert!(near(gaps[2], backoff(2)), "{gaps:?}");
    assert!(near(gaps[3], backoff(3)), "{gaps:?}");
    assert_eq!(h.status("Server1").unwrap().state, ReplicaState::Down);
    provisioner.failing.lock().unwrap().clear();
    h.healthy("Server1", None).await;
}

#[tokio::test(start_paused = true)]
async fn running_replicas_are_adopted_at_boot_and_only_the_rest_are_started() {
    let provisioner = Arc::new(FakeProvisioner::default());
    provisioner.adoptable.lock().unwrap().push(Running {
        hostname: "Server2".into(),
        id: 2,
        address: "fake:old".into(),
        grpc_address: None,
        handle: "adopted".into(),
    });
    let h = start(provisioner.clone(), 3);
    let adopted = h.healthy("Server2", None).await;
    assert_eq!(adopted.handle.as_deref(), Some("adopted"));
    h.healthy("Server1", None).await;
    h.healthy("Server3", None).await;
    assert!(provisioner.starts_of("Server2").is_empty());
    assert_eq!(provisioner.starts_of("Server1").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_start_report_from_before_a_newer_death_is_ignored() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let h = start(provisioner.clone(), 1);
    let first = h.healthy("Server1", None).await;
    // The replacement is held at its start; the old incarnation then "dies" again
    // (a late event about the same handle) and nothing may double-start it.
    let gate = provisioner.hold("Server1");
    h.kill(&first);
    while provisioner.starts_of("Server1").len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    h.kill(&first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(provisioner.starts_of("Server1").len(), 2);
    gate.notify_one();
    let second = h.healthy("Server1", first.handle.as_deref()).await;
    assert_eq!(second.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_replica_removed_while_it_starts_is_stopped_when_its_start_reports() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let h = start(provisioner.clone(), 2);
    let first = h.healthy("Server2", None).await;
    h.healthy("Server1", None).await;
    let gate = provisioner.hold("Server2");
    h.kill(&first);
    while provisioner.starts_of("Server2").len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    h.handle.remove(request(1, &["Server2"])).await.unwrap();
    assert_eq!(h.names(), ["Server1"]);
    let stops_before = provisioner.stops.lock().unwrap().len();
    gate.notify_one();
    // Its late start belongs to nobody: it is stopped, not put in the ring.
    while provisioner.stops.lock().unwrap().len() == stops_before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(h.names(), ["Server1"]);
}
