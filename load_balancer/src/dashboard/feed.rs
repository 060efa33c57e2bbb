//! The task behind `GET /events`: it owns the dashboard's history, reads the
//! counters once a second, hears every snapshot the registry publishes and looks at
//! the load test, and turns each change into a frame. Every frame goes to every
//! open event stream, so a replica that is down for a few milliseconds still shows;
//! a stream that falls far behind skips ahead instead of queueing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, watch};

use super::figures::{History, Reading, Sample};
use super::ring_view::ring_view;
use super::view::{self, Context};
use crate::loadtest::{unix_ms, LoadTester};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// How often the load test is looked at while nothing else happens.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// How often the counters are read, and the longest between two frames.
const READ_EVERY: Duration = Duration::from_secs(1);

/// How many frames a stream may fall behind before it skips ahead.
const BACKLOG: usize = 64;

/// One published state.
#[derive(Debug, Default)]
pub struct Frame {
    /// Increases by one per frame.
    pub version: u64,
    /// The newest sample's number: the event's id.
    pub seq: u64,
    /// The `state` event's data, serialized once for every stream.
    pub state: String,
    /// The samples kept (five minutes), for a stream that starts or resumes.
    pub samples: Arc<Vec<Sample>>,
    /// The last frame: the balancer is stopping and streams end.
    pub end: bool,
}

/// What the feed reads.
pub struct Sources {
    /// The current snapshot, and every one published after it.
    pub snapshot: Arc<Snapshot>,
    pub published: broadcast::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub loadtest: LoadTester,
    pub runtime: &'static str,
    pub auth_required: bool,
}

/// Where event streams get their frames.
#[derive(Clone)]
pub struct Feed {
    latest: watch::Receiver<Arc<Frame>>,
    every: broadcast::Sender<Arc<Frame>>,
}

impl Feed {
    /// The newest frame, and every frame after it.
    pub fn subscribe(&self) -> (Arc<Frame>, broadcast::Receiver<Arc<Frame>>) {
        // Subscribe first, so no frame falls between the two.
        let every = self.every.subscribe();
        (self.latest.borrow().clone(), every)
    }

    /// Starts the feed; when `stop` fires or is dropped it sends a last frame that
    /// ends every event stream, and returns.
    pub fn spawn(
        sources: Sources,
        stop: oneshot::Receiver<()>,
    ) -> (Feed, tokio::task::JoinHandle<()>) {
        let (latest_tx, latest) = watch::channel(Arc::new(Frame::default()));
        let (every, _) = broadcast::channel(BACKLOG);
        let feed = Feed {
            latest,
            every: every.clone(),
        };
        let publish = move |frame: Frame| {
            let frame = Arc::new(frame);
            latest_tx.send_replace(frame.clone());
            let _ = every.send(frame);
        };
        (feed, tokio::spawn(run(sources, publish, stop)))
    }
}

/// The next frame from a stream's subscription, skipping frames it already has
/// (older than `after`) and skipping ahead when it fell behind; `None` at the end.
pub async fn next_frame(
    frames: &mut broadcast::Receiver<Arc<Frame>>,
    after: u64,
) -> Option<Arc<Frame>> {
    loop {
        match frames.recv().await {
            Ok(f) if f.end => return None,
            Ok(f) if f.version > after => return Some(f),
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return None,
        }
    }
}

async fn run(sources: Sources, publish: impl Fn(Frame), mut stop: oneshot::Receiver<()>) {
    let Sources {
        snapshot: mut snap,
        published,
        metrics,
        loadtest,
        runtime,
        auth_required,
    } = sources;
    let mut published = Some(published);
    let mut history = History::default();
    let mut samples = Arc::new(Vec::new());
    let mut version = 0;
    let mut ring = Value::Null;
    let mut ring_of: Option<Arc<Snapshot>> = None;
    let mut last_read: Option<Instant> = None;
    let mut last_sent = Instant::now();
    let mut last_report = None;
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut changed = false;
        tokio::select! {
            _ = &mut stop => break,
            next = recv(&mut published) => match next {
                Ok(s) => {
                    snap = s;
                    changed = true;
                }
                // Behind: the newest is all that matters now.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => published = None,
            },
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if last_read.is_none_or(|t| now - t >= READ_EVERY) {
            history.push(read(&metrics, &snap));
            samples = Arc::new(history.samples_after(0).cloned().collect());
            last_read = Some(now);
            changed = true;
        }
        if !ring_of.as_ref().is_some_and(|s| Arc::ptr_eq(s, &snap)) {
            ring = serde_json::to_value(ring_view(&snap)).unwrap_or(Value::Null);
            ring_of = Some(snap.clone());
        }
        let report = loadtest.report();
        if !ptr_eq_opt(&report, &last_report) {
            last_report = report.clone();
            changed = true;
        }
        if !changed && now - last_sent < READ_EVERY {
            continue;
        }
        let cx = Context {
            runtime,
            auth_required,
            ring: &ring,
            loadtest: report.as_deref(),
            time_ms: unix_ms(),
        };
        version += 1;
        publish(Frame {
            version,
            seq: history.seq(),
            state: view::state(&snap, &history, &cx, now).to_string(),
            samples: samples.clone(),
            end: false,
        });
        last_sent = now;
    }
    publish(Frame {
        version: version + 1,
        end: true,
        ..Frame::default()
    });
}

/// The next published snapshot, or never once the registry is gone.
async fn recv(
    published: &mut Option<broadcast::Receiver<Arc<Snapshot>>>,
) -> Result<Arc<Snapshot>, RecvError> {
    match published {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Every counter the dashboard follows, now.
pub(super) fn read(metrics: &Metrics, snap: &Snapshot) -> Reading {
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
