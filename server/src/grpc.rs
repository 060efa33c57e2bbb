//! The replica's gRPC side (`--grpc-listen`): `BackendService.Compute`, the standard
//! `grpc.health.v1`, and the announcer when one is asked for (`announce`). It runs on
//! a thread and a tokio runtime of its own: actix runs single-threaded runtimes of
//! its own, whose threads are for HTTP.
//!
//! Compute requests count in the same `Load` as HTTP ones, so that the load reported
//! to a balancer, and `--max-concurrent`, cover both.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lb_proto::backend_service_server::{BackendService, BackendServiceServer};
use lb_proto::{TaskRequest, TaskResponse};
use tokio::sync::{oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::announce::{Announcer, Stop};
use crate::compute::{fib, parse_n};
use crate::load::Load;
use crate::signals::Shutdown;

/// How long calls in flight may finish once the gRPC side stops: as long as actix
/// gives HTTP requests (`shutdown_timeout`).
const DRAIN: Duration = Duration::from_secs(10);
/// How long computations still running may hold up the exit after that.
const COMPUTE_GRACE: Duration = Duration::from_secs(1);
/// Threads for gRPC calls and the announcer; computations run on blocking threads.
const THREADS: usize = 2;

/// `BackendService`: fib(N) for a task `N`.
pub struct Backend {
    load: Arc<Load>,
}

#[tonic::async_trait]
impl BackendService for Backend {
    /// `task` is `N` as decimal text, from 0 to 40; the result is fib(N) in decimal.
    async fn compute(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskResponse>, Status> {
        let task = request.into_inner().task;
        let n = parse_n(&task).map_err(|e| Status::invalid_argument(format!("task {e}")))?;
        let load = self.load.clone();
        // Counted in flight on the blocking thread itself, so the count lasts exactly
        // as long as the computation, even when the caller gives up before it ends.
        let computed = tokio::task::spawn_blocking(move || load.enter().map(|_in| fib(n)))
            .await
            .map_err(|e| Status::internal(format!("the computation failed: {e}")))?;
        let result =
            computed.ok_or_else(|| Status::resource_exhausted("too many requests in flight"))?;
        Ok(Response::new(TaskResponse {
            result: result.to_string(),
        }))
    }
}

/// The way out: stops the announcer, which leaves the balancer or etcd.
pub struct Leave {
    stop: watch::Sender<bool>,
    left: oneshot::Receiver<()>,
    fast: Arc<AtomicBool>,
}

impl Leave {
    /// Stops announcing and returns once the replica has left (or failed to, within
    /// a short timeout), so that HTTP can stop after the balancer stopped sending.
    /// gRPC stops taking calls then and, on a graceful shutdown, finishes those in
    /// flight.
    pub async fn now(self, shutdown: Shutdown) {
        self.fast
            .store(shutdown == Shutdown::Fast, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let _ = self.left.await;
    }
}

/// The running gRPC side. Dropping its `Leave` unused stops it too.
pub struct GrpcSide {
    leave: Option<Leave>,
    thread: JoinHandle<()>,
}

impl GrpcSide {
    /// Serves on `listener` (already bound, so its address could be printed) and
    /// starts `announcer`, on a new thread.
    pub fn start(
        listener: std::net::TcpListener,
        load: Arc<Load>,
        announcer: Option<Announcer>,
    ) -> io::Result<GrpcSide> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("grpc")
            .enable_all()
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let (left_tx, left) = oneshot::channel();
        let fast = Arc::new(AtomicBool::new(false));
        let exit = Exit {
            left: left_tx,
            fast: fast.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("grpc".into())
            .spawn(move || {
                let fast = exit.fast.clone();
                runtime.block_on(serve(listener, load, announcer, stopped, exit));
                if fast.load(Ordering::Relaxed) {
                    runtime.shutdown_background();
                } else {
                    runtime.shutdown_timeout(COMPUTE_GRACE);
                }
            })?;
        Ok(GrpcSide {
            leave: Some(Leave { stop, left, fast }),
            thread,
        })
    }

    /// The way out, for whoever handles the signals; once only.
    pub fn leave(&mut self) -> Option<Leave> {
        self.leave.take()
    }

    /// Waits until the gRPC side has stopped (after `Leave::now`).
    pub fn join(self) {
        drop(self.leave);
        if self.thread.join().is_err() {
            log::error!("the gRPC side panicked");
        }
    }
}

/// How `serve` tells `Leave::now` it has left, and learns whether to drain.
struct Exit {
    left: oneshot::Sender<()>,
    fast: Arc<AtomicBool>,
}

/// Serves gRPC and runs the announcer until a stop; then leaves, says so, and
/// drains the calls in flight unless the shutdown is a fast one.
async fn serve(
    listener: std::net::TcpListener,
    load: Arc<Load>,
    announcer: Option<Announcer>,
    stopped: watch::Receiver<bool>,
    exit: Exit,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot serve gRPC: {e}");
            let _ = exit.left.send(());
            return;
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BackendServiceServer<Backend>>().await;
    let backend = BackendServiceServer::new(Backend { load: load.clone() });
    let (drain, draining) = oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(backend)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = draining.await;
        });
    let serving = tokio::spawn(async move {
        if let Err(e) = server.await {
            log::error!("the gRPC server stopped: {e}");
        }
    });
    let announcing = announcer.map(|a| tokio::spawn(a.run(load, Stop::new(stopped.clone()))));
    Stop::new(stopped).requested().await;
    // Clients that watch health stop choosing this replica before it goes.
    health
        .set_not_serving::<BackendServiceServer<Backend>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    if let Some(announcing) = announcing {
        let _ = announcing.await;
    }
    let _ = exit.left.send(());
    if exit.fast.load(Ordering::Relaxed) {
        return;
    }
    let _ = drain.send(());
    if tokio::time::timeout(DRAIN, serving).await.is_err() {
        log::warn!("gRPC calls still in flight after {DRAIN:?} were dropped");
    }
}
