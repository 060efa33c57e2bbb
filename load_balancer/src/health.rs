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

use crate::backend::{Resources, DEFAULT_WEIGHT};
use crate::snapshot::{ReplicaState, SharedSnapshot};

/// Heartbeat settings.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatConfig {
    /// Time between two probes of a replica.
    pub interval: Duration,
    /// Failed probes in a row that take a replica out.
    pub failures: u32,
}

/// What a replica says of itself when it answers its heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// `X-Load`: its requests in flight, or whatever load it reports.
    pub load: u32,
    /// `X-Available`: whether it can take more work.
    pub available: bool,
    /// `X-Weight`: its share under `weighted-round-robin`.
    pub weight: u32,
    /// `X-Capacity`: what `resource-fit` matches demands against.
    pub capacity: Resources,
}

impl Default for Heartbeat {
    /// What a replica that reports nothing is taken to say: idle, available,
    /// weight 1, no declared capacity.
    fn default() -> Self {
        Heartbeat {
            load: 0,
            available: true,
            weight: DEFAULT_WEIGHT,
            capacity: Resources::default(),
        }
    }
}

impl Heartbeat {
    /// Reads the report from a heartbeat's headers; a header that is missing or
    /// malformed keeps its default, so a server that is not ours still works.
    pub fn from_headers(headers: &hyper::HeaderMap) -> Self {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let d = Heartbeat::default();
        Heartbeat {
            load: get("x-load").and_then(|v| v.parse().ok()).unwrap_or(d.load),
            available: get("x-available")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.available),
            weight: get("x-weight")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.weight),
            capacity: get("x-capacity")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.capacity),
        }
    }
}

/// How the balancer learns whether a replica answers: an HTTP heartbeat today, gRPC
/// health or reported load later. A trait, so the managed source is tested with a
/// fake.
#[async_trait]
pub trait Health: Send + Sync {
    /// What the replica at `address` reports, if it answers now.
    async fn check(&self, address: &str) -> Option<Heartbeat>;

    /// Polls until the replica at `address` answers, or `within` passes.
    async fn wait_ready(&self, address: &str, within: Duration) -> bool {
        let poll = async {
            let mut pause = Duration::from_millis(10);
            loop {
                if self.check(address).await.is_some() {
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
    /// Its report, if `address` answers `/heartbeat` with 200 in time.
    async fn check(&self, address: &str) -> Option<Heartbeat> {
        let uri = format!("http://{address}/heartbeat")
            .parse::<hyper::Uri>()
            .ok()?;
        match tokio::time::timeout(self.timeout, self.client.get(uri)).await {
            Ok(Ok(res)) if res.status() == hyper::StatusCode::OK => {
                Some(Heartbeat::from_headers(res.headers()))
            }
            _ => None,
        }
    }
}

/// Probes every healthy replica of the current snapshot each `interval`, and sends
/// the handle of any that failed `failures` probes in a row. A success records what
/// the replica reports (load, availability, weight, capacity) and clears its
/// passive-health failures, which is how an ejected replica returns.
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
            let missed = if let Some(report) = ok {
                if let Some(b) = snap.figures_of(id) {
                    b.failures.store(0, Ordering::Relaxed);
                    b.report(report.load, report.available);
                    b.declare(report.weight, report.capacity);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_report_is_read_from_its_headers() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-load", "7".parse().unwrap());
        h.insert("x-available", "false".parse().unwrap());
        h.insert("x-weight", "3".parse().unwrap());
        h.insert("x-capacity", "cpu=4,storage=2".parse().unwrap());
        let r = Heartbeat::from_headers(&h);
        assert_eq!((r.load, r.available, r.weight), (7, false, 3));
        assert_eq!(r.capacity.get("storage"), Some(2.0));
    }

    #[test]
    fn missing_or_malformed_headers_keep_their_defaults() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-load", "lots".parse().unwrap());
        h.insert("x-capacity", "cpu".parse().unwrap());
        assert_eq!(Heartbeat::from_headers(&h), Heartbeat::default());
    }
}
