//! The built-in load and stress test (`POST /loadtest`): bounded GETs sent to this
//! balancer's own data plane over loopback, so a person can watch the ring and the
//! policies at work without a load generator.
//!
//! One test at a time. It runs as a task on the balancer's main runtime (not on the
//! admin API's thread, which keeps serving the dashboard) and publishes its report,
//! a few times a second while it runs, where the API and the dashboard read it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod plan;
pub mod tally;

use crate::error::ApiError;
use plan::{Plan, Step};
use tally::{Outcome, Report, RunState, StepReport, Tally};

/// How often a running test's report is refreshed.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Starts, stops and shows the load test.
#[derive(Clone)]
pub struct LoadTester(Arc<Inner>);

struct Inner {
    /// The data plane, as a loopback address.
    target: SocketAddr,
    runtime: tokio::runtime::Handle,
    running: Mutex<Running>,
    report: ArcSwapOption<Report>,
}

#[derive(Default)]
struct Running {
    last_id: u64,
    /// The stop switch of the test under way.
    stop: Option<(u64, watch::Sender<bool>)>,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

impl LoadTester {
    /// A tester aimed at the data plane listening on `listen`; its tests run on
    /// `runtime`.
    pub fn new(listen: SocketAddr, runtime: tokio::runtime::Handle) -> Self {
        let mut target = listen;
        if target.ip().is_unspecified() {
            target.set_ip(match listen {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        LoadTester(Arc::new(Inner {
            target,
            runtime,
            running: Mutex::default(),
            report: ArcSwapOption::empty(),
        }))
    }

    /// The test under way, or the last one.
    pub fn report(&self) -> Option<Arc<Report>> {
        self.0.report.load_full()
    }

    /// Starts `plan`, unless a test is under way.
    pub fn start(&self, plan: Plan) -> Result<Arc<Report>, ApiError> {
        let (id, stop) = {
            let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((id, _)) = &running.stop {
                return Err(ApiError::Conflict(format!(
                    "A load test is already running (id {id})"
                )));
            }
            running.last_id += 1;
            let (tx, rx) = watch::channel(false);
            running.stop = Some((running.last_id, tx));
            (running.last_id, rx)
        };
        let report = Arc::new(Report::running(
            id,
            &plan,
            unix_ms(),
            Duration::ZERO,
            &mut Tally::default(),
        ));
        self.0.report.store(Some(report.clone()));
        log::info!(
            "load test {id}: {} GET {} with {} in flight for at most {:?} ({:?})",
            plan.requests,
            plan.path,
            plan.concurrency,
            plan.duration,
            plan.mode
        );
        self.0.runtime.spawn(run(self.0.clone(), id, plan, stop));
        Ok(report)
    }

    /// Stops the test under way; its report says `stopped` once it has wound down.
    pub fn stop(&self) -> Result<Arc<Report>, ApiError> {
        let running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        match &running.stop {
            Some((_, stop)) => {
                let _ = stop.send(true);
                self.report()
                    .ok_or_else(|| ApiError::Conflict("No load test is running".into()))
            }
            None => Err(ApiError::Conflict("No load test is running".into())),
        }
    }
}

/// Runs one test to its end and publishes its final report.
async fn run(inner: Arc<Inner>, id: u64, plan: Plan, stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let started_ms = unix_ms();
    let live = Live::default();
    let publisher = {
        let (inner, live, plan) = (inner.clone(), live.clone(), plan.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            loop {
                tick.tick().await;
                let elapsed = started.elapsed();
                let report = Report::running(id, &plan, started_ms, elapsed, &mut lock(&live));
                inner.report.store(Some(Arc::new(report)));
            }
        })
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(plan.concurrency)
        .build_http();
    let uri: Arc<hyper::Uri> = match format!("http://{}{}", inner.target, plan.path).parse() {
        Ok(uri) => Arc::new(uri),
        Err(e) => {
            publisher.abort();
            let mut report =
                Report::running(id, &plan, started_ms, Duration::ZERO, &mut Tally::default());
            report.error = Some(format!("bad path: {e}"));
            report.state = RunState::Failed;
            return finish(&inner, id, report);
        }
    };
    let mut steps = Vec::new();
    for step in plan.steps() {
        if *stop.borrow() {
            break;
        }
        let step_started = Instant::now();
        let mut tally = run_step(&client, &uri, step, &stop, &live).await;
        if plan.mode == plan::Mode::Stress {
            steps.push(StepReport {
                concurrency: step.concurrency,
                summary: tally.summary(step_started.elapsed()),
            });
        }
    }
    publisher.abort();
    let state = if *stop.borrow() {
        RunState::Stopped
    } else {
        RunState::Done
    };
    let elapsed = started.elapsed();
    let all = std::mem::take(&mut *lock(&live));
    let report = Report::running(id, &plan, started_ms, elapsed, &mut Tally::default())
        .finished(state, all, elapsed, steps);
    log::info!(
        "load test {id} {state:?}: {} requests in {elapsed:.1?}, {:.0}/s, p99 {:?} ms, {} errors",
        report.summary.completed,
        report.summary.throughput,
        report.summary.p99_ms,
        report.summary.errors
    );
    finish(&inner, id, report);
}

fn finish(inner: &Inner, id: u64, report: Report) {
    inner.report.store(Some(Arc::new(report)));
    let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
    if running.stop.as_ref().is_some_and(|(i, _)| *i == id) {
        running.stop = None;
    }
}

/// What a running test has counted so far, shared by its workers and its
/// publisher. The workers all run on one thread, so the lock is never contended
/// by them; the publisher holds it for a linear-time summary a few times a second.
type Live = Arc<Mutex<Tally>>;

fn lock(live: &Live) -> std::sync::MutexGuard<'_, Tally> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

/// One step: `concurrency` workers share `requests` until they are sent or the
/// step's time is up; a request still unanswered then is abandoned, not counted.
async fn run_step(
    client: &HttpClient,
    uri: &Arc<hyper::Uri>,
    step: Step,
    stop: &watch::Receiver<bool>,
    live: &Live,
) -> Tally {
    let deadline = tokio::time::Instant::now() + step.duration;
    let left = Arc::new(AtomicU64::new(step.requests));
    let out_of_time = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for _ in 0..step.concurrency {
        let (client, uri, left, live) = (client.clone(), uri.clone(), left.clone(), live.clone());
        let (mut stop, out_of_time) = (stop.clone(), out_of_time.clone());
        workers.spawn(async move {
            let mut tally = Tally::default();
            while take_one(&left) && !*stop.borrow() && !out_of_time.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let outcome = tokio::select! {
                    r = tokio::time::timeout_at(deadline, send(&client, &uri)) => match r {
                        Ok(result) => result.unwrap_or(Outcome::Failed { took: sent.elapsed() }),
                        Err(_) => {
                            out_of_time.store(true, Ordering::Relaxed);
                            break;
                        }
                    },
                    _ = stop.changed() => break,
                };
                lock(&live).record(outcome.clone());
                tally.record(outcome);
            }
            tally
        });
    }
    let mut step_tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        if let Ok(t) = done {
            step_tally.merge(t);
        }
    }
    step_tally
}

/// Takes one request from the step's budget, if any is left.
fn take_one(left: &AtomicU64) -> bool {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// One GET, its body read to the end so the connection can be reused.
async fn send(client: &HttpClient, uri: &hyper::Uri) -> Option<Outcome> {
    let sent = Instant::now();
    let res = client.get(uri.clone()).await.ok()?;
    let status = res.status().as_u16();
    let served_by = res
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    res.into_body().collect().await.ok()?;
    Some(Outcome::Answered {
        status,
        served_by,
        took: sent.elapsed(),
    })
}

/// The time now, in milliseconds since the Unix epoch, as the page shows times.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
