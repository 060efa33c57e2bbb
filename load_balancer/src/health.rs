//! Active health: `GET /heartbeat` probes, the wait for a new replica to answer, and
//! the loop that reports replicas that stopped answering.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::snapshot::{ReplicaState, SharedSnapshot};

/// Heartbeat settings.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatConfig {
    /// Time between two probes of a replica.
    pub interval: Duration,
    /// Failed probes in a row that take a replica out.
    pub failures: u32,
}

/// How the balancer learns whether a replica answers: an HTTP heartbeat today, gRPC
/// health or reported load later. A trait, so the managed source is tested with a
/// fake.
#[async_trait]
pub trait Health: Send + Sync {
    /// Whether the replica at `address` answers now.
    async fn check(&self, address: &str) -> bool;

    /// Polls until the replica at `address` answers, or `within` passes.
    async fn wait_ready(&self, address: &str, within: Duration) -> bool {
        let poll = async {
            let mut pause = Duration::from_millis(10);
            loop {
                if self.check(address).await {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        };
        tokio::time::timeout(within, poll).await.is_ok()
    }
}

/// Sends `GET /heartbeat` to replicas.
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Prober {
    /// A prober whose probes give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Prober { client, timeout }
    }
}

#[async_trait]
impl Health for Prober {
    /// Whether `address` answers `/heartbeat` with 200 in time.
    async fn check(&self, address: &str) -> bool {
        let Ok(uri) = format!("http://{address}/heartbeat").parse::<hyper::Uri>() else {
            return false;
        };
        match tokio::time::timeout(self.timeout, self.client.get(uri)).await {
            Ok(Ok(res)) => res.status() == hyper::StatusCode::OK,
            _ => false,
        }
    }
}

/// Probes every healthy replica of the current snapshot each `interval`, and sends
/// the handle of any that failed `failures` probes in a row. A success also clears
/// the replica's passive-health failures, which is how an ejected replica returns.
pub async fn heartbeat_loop(
    snapshot: SharedSnapshot,
    health: Arc<dyn Health>,
    config: HeartbeatConfig,
    unhealthy: mpsc::UnboundedSender<String>,
) {
    let mut misses: HashMap<String, u32> = HashMap::new();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snap = snapshot.load_full();
        let targets: Vec<_> = snap
            .replicas
            .iter()
            // A disabled replica still runs, and its death must still be noticed.
            .filter(|r| matches!(r.state, ReplicaState::Healthy | ReplicaState::Disabled))
            .filter_map(|r| Some((r.id, r.handle.clone()?, r.address.clone()?)))
            .collect();
        let probes = targets.iter().map(|(_, _, addr)| health.check(addr));
        let results = futures_util::future::join_all(probes).await;
        let mut still_there = HashMap::new();
        for ((id, handle, _), ok) in targets.into_iter().zip(results) {
            let missed = if ok {
                if let Some(b) = snap.picker.backend(id) {
                    b.failures.store(0, Ordering::Relaxed);
                }
                0
            } else {
                misses.get(&handle).copied().unwrap_or(0) + 1
            };
            if missed >= config.failures {
                log::warn!("replica {id} missed {missed} heartbeats");
                if unhealthy.send(handle).is_err() {
                    return;
                }
            } else {
                still_there.insert(handle, missed);
            }
        }
        misses = still_there;
    }
}
