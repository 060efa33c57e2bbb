//! The shared view, read: every balancer of a cluster (the leader too) takes its
//! managed replicas from `/lb/<instance>/cluster/replicas/`, so they all route over
//! the same set with the same ids, and the same key goes to the same replica
//! through any of them.
//!
//! One task owns what it read. A session lists the prefix, makes what it holds
//! match, and watches from the listing's revision + 1; when etcd fails, what was
//! read stays and a new session starts after a backoff.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures_util::stream::StreamExt;
use tokio::sync::{mpsc, watch};

use super::entries::Entry;
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::registry::claims::Owner;
use crate::registry::etcd::entries::backoff;
use crate::registry::etcd::{bounded, connect, stopped, SessionError};
use crate::registry::{Batch, Change, Member, Placement};
use crate::snapshot::ReplicaState;

/// A replica as read, with the figures this balancer keeps for it.
struct Held {
    entry: Entry,
    backend: Option<Arc<Backend>>,
}

/// The task: reads the prefix and reports changes as batches.
pub struct Mirror {
    pub endpoints: Vec<String>,
    /// `/lb/<instance>/cluster/replicas/`
    pub prefix: String,
    pub metrics: Arc<Metrics>,
    pub changes: mpsc::UnboundedSender<Batch>,
    held: BTreeMap<String, Held>,
}

impl Mirror {
    /// A mirror of `prefix` reporting on `changes`.
    pub fn new(
        endpoints: Vec<String>,
        prefix: String,
        metrics: Arc<Metrics>,
        changes: mpsc::UnboundedSender<Batch>,
    ) -> Self {
        Mirror {
            endpoints,
            prefix,
            metrics,
            changes,
            held: BTreeMap::new(),
        }
    }

    /// Runs until `stop` turns true (or is dropped).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut failures = 0;
        loop {
            tokio::select! {
                result = self.session() => {
                    let e = result.err();
                    if failures == 0 {
                        log::warn!("cluster view at {:?}: {}; keeping the {} replicas read, retrying",
                            self.endpoints, e.map_or("ended".into(), |e| e.to_string()), self.held.len());
                    }
                    failures += 1;
                }
                _ = stopped(&mut stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// One connection's life; returns when etcd fails.
    async fn session(&mut self) -> Result<(), SessionError> {
        let mut client = connect(&self.endpoints).await?;
        let all = Some(GetOptions::new().with_prefix());
        let listing = bounded(
            "listing the cluster's replicas",
            client.get(self.prefix.as_str(), all),
        )
        .await?;
        let revision = listing.header().map_or(0, |h| h.revision());
        let listed: BTreeMap<String, Entry> = listing
            .kvs()
            .iter()
            .filter_map(|kv| self.read(kv.key(), kv.value()))
            .collect();
        self.resync(listed);
        let from = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = client.watch(self.prefix.as_str(), Some(from));
        let mut events = bounded("watching the cluster's replicas", watch).await?;
        log::info!(
            "cluster view: {} replicas under {}, watching from revision {}",
            self.held.len(),
            self.prefix,
            revision + 1
        );
        while let Some(response) = events.next().await {
            let response = response?;
            if response.canceled() {
                return Err(SessionError::WatchCanceled(
                    response.cancel_reason().to_string(),
                ));
            }
            let mut changes = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        if let Some((name, entry)) = self.read(kv.key(), kv.value()) {
                            self.put(name, entry, &mut changes);
                        }
                    }
                    EventType::Delete => {
                        if let Some(name) = self.name_of(kv.key()) {
                            self.delete(&name, &mut changes);
                        }
                    }
                }
            }
            self.publish(changes);
        }
        Err(SessionError::WatchEnded)
    }

    fn name_of(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let name = key.strip_prefix(&self.prefix)?;
        crate::admin::validate_name(name).ok()?;
        Some(name.to_string())
    }

    fn read(&self, key: &[u8], value: &[u8]) -> Option<(String, Entry)> {
        let name = self.name_of(key)?;
        match serde_json::from_slice::<Entry>(value) {
            Ok(entry) => Some((name, entry)),
            Err(e) => {
                log::warn!("cluster view: skipping {name}: {e}");
                None
            }
        }
    }

    /// Makes what is held match a listing.
    fn resync(&mut self, listed: BTreeMap<String, Entry>) {
        let mut changes = Vec::new();
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|n| !listed.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.delete(&name, &mut changes);
        }
        for (name, entry) in listed {
            self.put(name, entry, &mut changes);
        }
        self.publish(changes);
    }

    fn put(&mut self, name: String, entry: Entry, changes: &mut Vec<Change>) {
        let before = self.held.get(&name);
        if before.is_some_and(|h| h.entry == entry) {
            return;
        }
        if let Some(old) = before.filter(|h| h.entry.id != entry.id) {
            changes.push(Change::Remove(old.entry.id));
        }
        let serving = matches!(entry.state, ReplicaState::Healthy | ReplicaState::Disabled);
        let backend = match (serving, &entry.address) {
            (true, Some(address)) => {
                // The same incarnation keeps its figures (in flight, latency).
                let kept = before
                    .filter(|h| h.entry.handle == entry.handle && h.entry.address == entry.address)
                    .and_then(|h| h.backend.clone());
                let backend = kept.unwrap_or_else(|| {
                    Arc::new(
                        Backend::new(
                            entry.id,
                            name.clone(),
                            address.clone(),
                            self.metrics.replica(&name),
                        )
                        .serving_grpc(entry.grpc_address.clone()),
                    )
                });
                backend.set_enabled(entry.enabled);
                Some(backend)
            }
            _ => None,
        };
        if let Some(p) = entry.placement.as_ref() {
            if before.is_none_or(|h| h.entry.placement.as_ref() != Some(p)) {
                let placement = Placement {
                    scheme: p.scheme.clone(),
                    slots: p.slots.clone(),
                };
                changes.push(Change::Place(entry.id, placement));
            }
        }
        changes.push(Change::Upsert(Member {
            id: entry.id,
            hostname: name.clone(),
            state: entry.state,
            address: entry.address.clone(),
            handle: entry.handle.clone(),
            restarts: entry.restarts,
            backend: backend.clone(),
            enabled: entry.enabled,
            owner: Owner::Managed,
            grpc_address: entry.grpc_address.clone(),
        }));
        self.held.insert(name, Held { entry, backend });
    }

    fn delete(&mut self, name: &str, changes: &mut Vec<Change>) {
        if let Some(h) = self.held.remove(name) {
            changes.push(Change::Remove(h.entry.id));
        }
    }

    fn publish(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            let _ = self.changes.send(Batch {
                changes,
                then: None,
            });
        }
    }
}
