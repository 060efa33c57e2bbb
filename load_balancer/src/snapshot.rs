//! What request handlers read: an immutable picture of the replicas and the routing
//! table, published by the supervisor and swapped atomically.
//!
//! A request loads one snapshot and uses it to the end, so a concurrent `/add` or a
//! respawn never shows it a half-changed ring, and no lock sits on the request path.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::metrics::ReplicaCounters;
use crate::ring::{ServerId, Table};

/// Consecutive forwarding failures after which a backend is skipped until its next
/// successful heartbeat (passive health).
pub const EJECT_AFTER_FAILURES: u32 = 3;

/// A replica that may take traffic, shared by every snapshot of its incarnation so
/// that counters survive republishing.
#[derive(Debug)]
pub struct Backend {
    pub id: ServerId,
    pub hostname: String,
    /// `host:port` to connect to.
    pub address: String,
    /// Requests being forwarded to it right now; `/rm` waits for this to reach 0.
    pub in_flight: AtomicUsize,
    /// Forwarding failures in a row; reset by a success or a heartbeat.
    pub failures: AtomicU32,
    /// Its request counters in `/metrics`.
    pub counters: ReplicaCounters,
}

impl Backend {
    /// A backend with no traffic yet.
    pub fn new(id: ServerId, hostname: String, address: String, counters: ReplicaCounters) -> Self {
        Backend {
            id,
            hostname,
            address,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            counters,
        }
    }

    /// Forgets earlier failures after a success (a load first: the common case
    /// writes nothing, so the cache line stays shared between workers).
    pub fn clear_failures(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a forwarding failure; true when this one ejects the backend.
    pub fn record_failure(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1 == EJECT_AFTER_FAILURES
    }

    /// Whether passive health has taken it out of routing.
    pub fn ejected(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= EJECT_AFTER_FAILURES
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }
}

/// Decrements a backend's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Backend);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A replica's lifecycle state, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Launched (or being launched), not yet answering `/heartbeat`.
    Starting,
    /// In the ring and taking traffic.
    Healthy,
    /// Dead or unresponsive; a replacement is scheduled.
    Down,
}

/// One replica in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    pub hostname: String,
    pub id: ServerId,
    pub state: ReplicaState,
    /// `host:port`, when running.
    pub address: Option<String>,
    /// How many times it was replaced after dying.
    pub restarts: u32,
    /// The runtime's handle (pid, container id), when running.
    pub handle: Option<String>,
}

/// The routing table and the backends it names.
#[derive(Debug, Clone)]
pub struct Routing {
    pub table: Table,
    /// Indexed by server id; only routable replicas are present.
    backends: Vec<Option<Arc<Backend>>>,
}

impl Routing {
    /// Routing over `backends`, which must be exactly the servers `table` names.
    pub fn new(table: Table, backends: impl IntoIterator<Item = Arc<Backend>>) -> Self {
        let mut by_id: Vec<Option<Arc<Backend>>> = Vec::new();
        for b in backends {
            let i = b.id as usize;
            if by_id.len() <= i {
                by_id.resize(i + 1, None);
            }
            by_id[i] = Some(b);
        }
        Routing {
            table,
            backends: by_id,
        }
    }

    /// The backend with this id, if routable.
    pub fn backend(&self, id: ServerId) -> Option<&Arc<Backend>> {
        self.backends.get(id as usize).and_then(Option::as_ref)
    }

    /// The backends to try for `request_id`, best first. Ejected backends come last
    /// rather than never: when all are ejected, trying one beats refusing. With
    /// bounded loads, a backend whose in-flight count would pass the bound comes
    /// after those within it, for the same reason.
    pub fn candidates(&self, request_id: u64) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        let all = self
            .table
            .candidates(request_id)
            .filter_map(|id| self.backend(id));
        // The sum is O(N) and only paid when bounded loads are on.
        let cap = self
            .table
            .bound()
            .map(|b| b.cap(self.in_flight(), self.table.servers()));
        let within = move |b: &&Arc<Backend>| {
            !b.ejected() && cap.is_none_or(|c| b.in_flight.load(Ordering::Relaxed) < c)
        };
        let over = move |b: &&Arc<Backend>| !b.ejected() && !within(b);
        let live = all.clone().filter(within);
        live.chain(all.clone().filter(over))
            .chain(all.filter(|b| b.ejected()))
    }

    /// Requests in flight over every routable backend: the `total` of bounded loads.
    pub fn in_flight(&self) -> usize {
        self.backends
            .iter()
            .flatten()
            .map(|b| b.in_flight.load(Ordering::Relaxed))
            .sum()
    }
}

/// Everything the handlers read, published whole.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub routing: Routing,
    /// Every managed replica, sorted by id.
    pub replicas: Vec<ReplicaStatus>,
}

impl Snapshot {
    /// The replicas' hostnames, as `/rep` lists them.
    pub fn hostnames(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.hostname.clone()).collect()
    }
}

/// The shared, atomically swapped current snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
