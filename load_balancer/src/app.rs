//! Builds the balancer from its configuration and runs it until a signal stops it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::api::{self, AppState};
use crate::config::{Config, RuntimeKind};
use crate::health::{self, HeartbeatConfig, Prober};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyConfig};
use crate::ring::{Geometry, Ring};
use crate::runtime::docker::{DockerRuntime, DockerSettings};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::static_set::StaticRuntime;
use crate::runtime::{EventSender, Runtime};
use crate::scheme;
use crate::supervisor::{Supervisor, SupervisorConfig};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown hash scheme '{0}': choose one of {names}", names = scheme::NAMES.join(", "))]
    UnknownScheme(String),
    #[error("the static runtime needs at least one --backend")]
    NoBackends,
    #[error("cannot find the server binary: {0}")]
    ServerBin(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("docker runtime: {0}")]
    Docker(crate::runtime::RuntimeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn build_runtime(
    config: &Config,
    events: EventSender,
) -> Result<Arc<dyn Runtime>, StartError> {
    Ok(match config.runtime {
        RuntimeKind::Process => {
            let bin = match &config.server_bin {
                Some(p) => p.clone(),
                None => server_beside_self().map_err(StartError::ServerBin)?,
            };
            Arc::new(ProcessRuntime::new(bin, events))
        }
        RuntimeKind::Static => {
            if config.backends.is_empty() {
                return Err(StartError::NoBackends);
            }
            Arc::new(StaticRuntime::new(&config.backends))
        }
        RuntimeKind::Docker => {
            let settings = DockerSettings {
                image: config.image.clone(),
                network: config.network.clone(),
                instance: config.instance.clone(),
                addressing: config.docker_addressing,
                cleanup_on_exit: config.cleanup_on_exit,
            };
            Arc::new(
                DockerRuntime::connect(settings, events)
                    .await
                    .map_err(StartError::Docker)?,
            )
        }
    })
}

fn server_beside_self() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("server"))
}

/// Runs the balancer: starts its replicas, serves until SIGINT or SIGTERM, drains,
/// and lets the runtime decide what happens to the replicas.
pub async fn run(config: Config) -> Result<(), StartError> {
    let scheme = scheme::by_name(&config.hash)
        .ok_or_else(|| StartError::UnknownScheme(config.hash.clone()))?;
    let geometry = Geometry {
        slots: config.slots as usize,
        virtual_nodes: config.virtual_nodes as usize,
    };
    let ring = Ring::new(geometry, scheme.clone());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let runtime = build_runtime(&config, events_tx).await?;
    let replicas = match config.runtime {
        RuntimeKind::Static => config.backends.len(),
        _ => config.replicas,
    };
    let capacity = config
        .max_replicas
        .unwrap_or(usize::MAX)
        .min(geometry.capacity());
    if replicas > capacity {
        log::warn!("{replicas} replicas asked for, but only {capacity} fit; starting {capacity}");
    }

    let snapshot = Arc::new(ArcSwap::from_pointee(Supervisor::empty_snapshot(&ring)));
    let prober = Prober::new(config.heartbeat_timeout);
    let metrics = Arc::new(Metrics::new());
    let supervisor = Supervisor::new(
        runtime.clone(),
        prober.clone(),
        ring,
        SupervisorConfig {
            replicas,
            capacity,
            start_timeout: config.start_timeout,
            drain_timeout: config.drain_timeout,
        },
        snapshot.clone(),
        metrics.clone(),
    );
    let (unhealthy_tx, unhealthy_rx) = mpsc::unbounded_channel();
    let (handle, supervisor_task) = supervisor.spawn(events_rx, unhealthy_rx);
    let heartbeat = tokio::spawn(health::heartbeat_loop(
        snapshot.clone(),
        prober,
        HeartbeatConfig {
            interval: config.heartbeat_interval,
            timeout: config.heartbeat_timeout,
            failures: config.heartbeat_failures,
        },
        unhealthy_tx,
    ));

    if config.admin_token.is_none() && !config.listen.ip().is_loopback() {
        log::warn!(
            "listening on {} with no --admin-token: anyone who reaches this port can start and stop replicas",
            config.listen
        );
    }
    let state = web::Data::new(AppState {
        snapshot: snapshot.clone(),
        supervisor: handle.clone(),
        proxy: Proxy::new(
            ProxyConfig {
                hash_key: config.hash_key.clone(),
                connect_timeout: config.connect_timeout,
                response_timeout: config.response_timeout,
            },
            snapshot,
            metrics.clone(),
        ),
        metrics,
        admin_token: config.admin_token.clone(),
        runtime: runtime.name(),
        hash: scheme.name(),
        hash_key: config.hash_key.to_string(),
    });
    let workers = config
        .workers
        .map(|w| w as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(api::routes))
        .workers(workers)
        .shutdown_timeout(10)
        .bind(config.listen)
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when given port 0.
        println!("listening on http://{addr}");
    }
    std::io::stdout().flush()?;
    log::info!(
        "{} runtime, {replicas} replicas, hash {}, key {}",
        runtime.name(),
        scheme.name(),
        config.hash_key
    );
    server.run().await?;
    log::info!("stopped serving; shutting down");
    heartbeat.abort();
    handle.shutdown().await;
    let _ = supervisor_task.await;
    Ok(())
}
