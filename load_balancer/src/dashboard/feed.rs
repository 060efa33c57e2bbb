//! The task behind `GET /events`: it owns the dashboard's history, reads the
//! counters once a second, watches the snapshot and the load test, and publishes
//! each new state on a watch channel. Every open event stream reads the newest
//! frame; a slow one skips frames instead of queueing them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use super::figures::{History, Reading, Sample};
use super::ring_view::ring_view;
use super::view::{self, Context};
use crate::loadtest::{unix_ms, LoadTester};
use crate::metrics::Metrics;
use crate::snapshot::{SharedSnapshot, Snapshot};

/// How often the snapshot and the load test are looked at: a change reaches the
/// page within this (and the network).
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// How often the counters are read, and the longest between two frames.
const READ_EVERY: Duration = Duration::from_secs(1);

/// One published state.
#[derive(Debug, Default)]
pub struct Frame {
    /// The newest sample's number: the event's id.
    pub seq: u64,
    /// The `state` event's data, serialized once for every stream.
    pub state: String,
    /// The samples kept (five minutes), for a stream that starts or resumes.
    pub samples: Arc<Vec<Sample>>,
}

/// What the feed reads.
pub struct Sources {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub loadtest: LoadTester,
    pub runtime: &'static str,
    pub auth_required: bool,
}

/// Where event streams get their frames.
#[derive(Clone)]
pub struct Feed(watch::Receiver<Arc<Frame>>);

impl Feed {
    /// A receiver of frames, the current one not yet seen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Frame>> {
        self.0.clone()
    }

    /// Starts the feed; it ends, and with it every event stream, when `stop` fires
    /// or is dropped.
    pub fn spawn(
        sources: Sources,
        stop: oneshot::Receiver<()>,
    ) -> (Feed, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(Arc::new(Frame::default()));
        let task = tokio::spawn(run(sources, tx, stop));
        (Feed(rx), task)
    }
}

async fn run(sources: Sources, tx: watch::Sender<Arc<Frame>>, mut stop: oneshot::Receiver<()>) {
    let mut history = History::default();
    let mut samples = Arc::new(Vec::new());
    let mut last_read: Option<Instant> = None;
    let mut last_sent = Instant::now();
    let mut last_snap: Option<Arc<Snapshot>> = None;
    let mut last_report = None;
    let mut ring = Value::Null;
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let now = Instant::now();
        let mut changed = false;
        let snap = sources.snapshot.load_full();
        if last_read.is_none_or(|t| now - t >= READ_EVERY) {
            history.push(read(&sources.metrics, &snap));
            samples = Arc::new(history.samples_after(0).cloned().collect());
            last_read = Some(now);
            changed = true;
        }
        if !last_snap.as_ref().is_some_and(|s| Arc::ptr_eq(s, &snap)) {
            ring = serde_json::to_value(ring_view(&snap)).unwrap_or(Value::Null);
            last_snap = Some(snap.clone());
            changed = true;
        }
        let report = sources.loadtest.report();
        if !ptr_eq_opt(&report, &last_report) {
            last_report = report.clone();
            changed = true;
        }
        if !changed && now - last_sent < READ_EVERY {
            continue;
        }
        let cx = Context {
            runtime: sources.runtime,
            auth_required: sources.auth_required,
            ring: &ring,
            loadtest: report.as_deref(),
            time_ms: unix_ms(),
        };
        let state = view::state(&snap, &history, &cx, now).to_string();
        let frame = Frame {
            seq: history.seq(),
            state,
            samples: samples.clone(),
        };
        if tx.send(Arc::new(frame)).is_err() {
            return;
        }
        last_sent = now;
    }
}

/// Every counter the dashboard follows, now.
fn read(metrics: &Metrics, snap: &Snapshot) -> Reading {
    Reading {
        at_ms: unix_ms(),
        totals: metrics.totals(),
        replicas: snap
            .figures
            .iter()
            .map(|b| (b.hostname.clone(), b.counters.read()))
            .collect(),
    }
}

fn ptr_eq_opt<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
