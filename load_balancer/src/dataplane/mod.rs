//! The data plane: the listener every client talks to.
//!
//! `--workers` threads, each with its own single-threaded runtime, its own
//! `SO_REUSEPORT` listener on the same address (the kernel spreads connections) and
//! its own upstream connection pool. Requests for the admin API are relayed to the
//! API server on loopback like any other upstream, so the API keeps its framework and
//! the hot path keeps none.

mod body;
pub mod chunked;
mod deadline;
pub mod forward;
mod hedge;
pub mod http1;
mod per_ip;
mod pool;
#[cfg(test)]
mod testing;
mod tunnel;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::sync::watch;

pub use forward::ForwardConfig;

use crate::metrics::Metrics;
use crate::snapshot::SharedSnapshot;

/// How much a socket read asks for at most.
const READ_CHUNK: usize = 16 * 1024;

/// The running data plane; [`DataPlane::stop`] drains and ends it.
pub struct DataPlane {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

impl DataPlane {
    /// Binds `listen` (port 0 picks one) and starts `workers` threads serving it.
    pub fn start(
        listen: SocketAddr,
        workers: usize,
        config: ForwardConfig,
        snapshot: SharedSnapshot,
        metrics: Arc<Metrics>,
        drain: Duration,
    ) -> std::io::Result<DataPlane> {
        let first = listener(listen)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers.max(1) {
            listeners.push(listener(addr)?);
        }
        let (shutdown, rx) = watch::channel(false);
        let per_ip = per_ip::PerIp::new(config.max_connections_per_ip);
        let mut threads = Vec::new();
        let count = listeners.len();
        for (i, l) in listeners.into_iter().enumerate() {
            let (config, snapshot, metrics, rx, per_ip) = (
                config.clone(),
                snapshot.clone(),
                metrics.clone(),
                rx.clone(),
                per_ip.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lb-worker-{i}"))
                    .spawn(move || {
                        // Sockets and timers only: a process or signal driver would
                        // be polled on every park of a runtime that needs neither.
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_io()
                            .enable_time()
                            .build_local(Default::default())
                            .expect("a runtime for the worker");
                        let worker = Rc::new(forward::Worker::new(config, snapshot, metrics, rx));
                        rt.block_on(accept_loop(l, worker, per_ip, count, drain));
                    })?,
            );
        }
        Ok(DataPlane {
            addr,
            shutdown,
            threads,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to the drain time given
    /// at start), and waits for the workers to end.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    worker: Rc<forward::Worker>,
    per_ip: Arc<per_ip::PerIp>,
    workers: usize,
    drain: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot use the listener: {e}");
            return;
        }
    };
    let active = Rc::new(Cell::new(0usize));
    let freed = Rc::new(tokio::sync::Notify::new());
    let cap = worker.config.max_connections.div_ceil(workers).max(1);
    let refusal = {
        let err =
            crate::error::ApiError::Unavailable("Too many connections from your address".into());
        forward::error_reply(&err, true)
    };
    let mut shutdown = worker.shutdown.clone();
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog
        // until one closes, instead of being taken and starved.
        if active.get() >= cap {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = freed.notified() => continue,
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(held) = per_ip.admit(peer.ip()) else {
                        // One try, no wait: a client over its share gets no task of ours.
                        let _ = stream.try_write(&refusal);
                        continue;
                    };
                    let (worker, active, freed) = (worker.clone(), active.clone(), freed.clone());
                    active.set(active.get() + 1);
                    tokio::task::spawn_local(async move {
                        forward::serve(worker, stream, peer).await;
                        drop(held);
                        active.set(active.get() - 1);
                        freed.notify_one();
                    });
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
