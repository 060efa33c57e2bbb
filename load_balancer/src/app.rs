//! Builds the balancer from its configuration and runs it until a signal stops it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tokio::sync::mpsc;

use crate::api::{self, AppState};
use crate::config::{ClusterKind, Config, Discovery, RuntimeKind};
use crate::dashboard::feed::{self, Feed};
use crate::dataplane::{DataPlane, ForwardConfig};
use crate::health::{self, Health, HeartbeatConfig, Prober};
use crate::loadtest::LoadTester;
use crate::lookaside::{self, LookAside};
use crate::metrics::Metrics;
use crate::policy::settings::{policy_name, Settings};
use crate::policy::UnknownPolicy;
use crate::provisioner::docker::{DockerProvisioner, DockerSettings, ReplicaLimits};
use crate::provisioner::process::ProcessProvisioner;
use crate::provisioner::static_set::StaticProvisioner;
use crate::provisioner::swarm::{self, SwarmProvisioner};
use crate::provisioner::{EventSender, Provisioner};
use crate::registry::claims::Claims;
use crate::registry::cluster::campaign::StartManaged;
use crate::registry::cluster::entries::Leader;
use crate::registry::cluster::{Candidacy, ManagedAccess, Membership};
use crate::registry::etcd::entries::advertised;
use crate::registry::etcd::{balancer_id, hostname};
use crate::registry::etcd::{EtcdDiscovery, EtcdSettings};
use crate::registry::managed::{Managed, ManagedConfig, ManagedHandle};
use crate::registry::registered::RegisteredTask;
use crate::registry::Registry;
use crate::ring::Geometry;

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    UnknownPolicy(#[from] UnknownPolicy),
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
    Docker(crate::provisioner::ProvisionError),
    #[error("swarm runtime: {0}")]
    Swarm(crate::provisioner::ProvisionError),
    #[error("--discovery etcd needs --etcd-endpoints URL,...")]
    NoEtcdEndpoints,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn build_provisioner(
    config: &Config,
    events: EventSender,
) -> Result<Arc<dyn Provisioner>, StartError> {
    Ok(match config.runtime {
        RuntimeKind::Process => {
            let bin = match &config.server_bin {
                Some(p) => p.clone(),
                None => server_beside_self().map_err(StartError::ServerBin)?,
            };
            Arc::new(ProcessProvisioner::new(bin, events))
        }
        RuntimeKind::Static => {
            if config.backends.is_empty() {
                return Err(StartError::NoBackends);
            }
            Arc::new(StaticProvisioner::new(&config.backends))
        }
        RuntimeKind::Docker => Arc::new(
            DockerProvisioner::connect(docker_settings(config), events)
                .await
                .map_err(StartError::Docker)?,
        ),
        RuntimeKind::Swarm => {
            let settings = DockerSettings {
                network: swarm::network_for(&config.network),
                ..docker_settings(config)
            };
            Arc::new(
                SwarmProvisioner::connect(settings, config.start_timeout, events)
                    .await
                    .map_err(StartError::Swarm)?,
            )
        }
    })
}

/// What the `docker` and `swarm` runtimes take from the flags.
fn docker_settings(config: &Config) -> DockerSettings {
    DockerSettings {
        image: config.image.clone(),
        network: config.network.clone(),
        instance: config.instance.clone(),
        addressing: config.docker_addressing,
        cleanup_on_exit: config.cleanup_on_exit,
        limits: ReplicaLimits {
            memory_bytes: i64::from(config.replica_memory_mb) * 1024 * 1024,
            cpus: config.replica_cpus,
            pids: i64::from(config.replica_pids),
        },
    }
}

fn server_beside_self() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("server"))
}

/// Runs the balancer: starts its replicas, serves until SIGINT or SIGTERM, drains,
/// and lets the provisioner decide what happens to the replicas.
pub async fn run(config: Config) -> Result<(), StartError> {
    if config.discovery == Discovery::Etcd && config.etcd_endpoints.is_empty() {
        return Err(StartError::NoEtcdEndpoints);
    }
    let settings = Settings {
        policy: policy_name(&config.policy).ok_or_else(|| UnknownPolicy(config.policy.clone()))?,
        hash_key: config.hash_key.clone(),
        balance_factor: config.balance_factor,
        slow_start: config.slow_start,
        hedge: config.hedge,
        hedge_budget: config.hedge_budget,
    };
    let geometry = Geometry {
        slots: config.slots as usize,
        virtual_nodes: config.virtual_nodes as usize,
    };
    let metrics = Arc::new(Metrics::new());
    let (registry, snapshot, registry_handle) = Registry::new(settings, geometry, metrics.clone())?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let provisioner = build_provisioner(&config, events_tx).await?;
    let replicas = match config.runtime {
        RuntimeKind::Static => config.backends.len(),
        _ => config.replicas,
    };
    let capacity = config
        .max_replicas
        .unwrap_or(usize::MAX)
        .min(registry.capacity());
    if replicas > capacity {
        log::warn!("{replicas} replicas asked for, but only {capacity} fit; starting {capacity}");
    }

    let health: Arc<dyn Health> = Arc::new(Prober::new(config.heartbeat_timeout));
    let claims = Claims::new(registry.capacity());
    let managed_config = ManagedConfig {
        replicas,
        capacity,
        start_timeout: config.start_timeout,
        drain_timeout: config.drain_timeout,
    };
    let (unhealthy_tx, unhealthy_rx) = mpsc::unbounded_channel();
    // Alone, the managed source feeds this registry; in a cluster, the shared view
    // does, and the managed source runs only while this balancer leads.
    let (mut replicas_of, managed_source, access) = match config.cluster {
        ClusterKind::None => {
            let managed = Managed::new(
                provisioner.clone(),
                health.clone(),
                managed_config.clone(),
                claims.clone(),
                metrics.clone(),
            );
            let (handle, source, task) = managed.spawn(events_rx, unhealthy_rx);
            let access = ManagedAccess::Local(handle.clone());
            (ReplicasOf::Alone(handle, task), source, access)
        }
        ClusterKind::Etcd => {
            let (membership, source, access) = Membership::join(
                config.etcd_endpoints.clone(),
                config.instance.clone(),
                metrics.clone(),
            );
            let pending = (events_rx, unhealthy_rx);
            (
                ReplicasOf::Cluster(membership, Some(pending)),
                source,
                access,
            )
        }
    };
    let (registered, registered_source) = RegisteredTask::spawn(claims.clone(), metrics.clone());
    let mut sources: Vec<Box<dyn crate::registry::Source>> =
        vec![Box::new(managed_source), Box::new(registered_source)];
    let discovery = match config.discovery {
        Discovery::None => None,
        Discovery::Etcd => {
            let settings = EtcdSettings {
                endpoints: config.etcd_endpoints.clone(),
                instance: config.instance.clone(),
            };
            let (discovery, found) =
                EtcdDiscovery::spawn(settings, claims.clone(), metrics.clone());
            sources.push(Box::new(found));
            Some(discovery)
        }
    };
    let published = registry.subscribe();
    let registry_task = tokio::spawn(registry.run(sources));
    let health_for_reigns = health.clone();
    let heartbeat = tokio::spawn(health::heartbeat_loop(
        snapshot.clone(),
        health,
        HeartbeatConfig {
            interval: config.heartbeat_interval,
            failures: config.heartbeat_failures,
        },
        unhealthy_tx,
    ));

    let admin_addr = config.admin_listen.unwrap_or(config.listen);
    if config.admin_token.is_none() && !admin_addr.ip().is_loopback() {
        log::warn!(
            "the admin API is on {admin_addr} with no --admin-token: anyone who reaches it can start and stop replicas"
        );
    }
    // The admin API's own listener is on loopback; clients reach it through the data
    // plane, which relays the admin routes to it with a secret no one else knows.
    let internal = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let internal_addr = internal.local_addr()?;
    let relay_secret = api::relay_secret();
    let api_address = internal_addr.to_string();
    let workers = config
        .workers
        .map(|w| w as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dataplane = DataPlane::start(
        config.listen,
        workers,
        ForwardConfig {
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
            max_header_bytes: config.max_header_bytes as usize,
            max_connections: config.max_connections as usize,
            max_connections_per_ip: config.max_connections_per_ip as usize,
            api_address,
            admin_elsewhere: config.admin_listen.is_some(),
            relay_secret: relay_secret.clone(),
        },
        snapshot.clone(),
        metrics.clone(),
        config.drain_timeout,
    )
    .map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let loadtest = LoadTester::new(dataplane.local_addr(), tokio::runtime::Handle::current());
    let (feed_stop, feed_stopped) = tokio::sync::oneshot::channel();
    let (feed, feed_task) = Feed::spawn(
        feed::Sources {
            snapshot: snapshot.load_full(),
            published,
            metrics: metrics.clone(),
            loadtest: loadtest.clone(),
            runtime: provisioner.name(),
            auth_required: config.admin_token.is_some(),
        },
        feed_stopped,
    );
    let state = web::Data::new(AppState {
        snapshot: snapshot.clone(),
        managed: access,
        registry: registry_handle,
        registered: registered.clone(),
        metrics: metrics.clone(),
        admin_token: config.admin_token.clone(),
        runtime: provisioner.name(),
        internal: internal_addr,
        relay_secret: relay_secret.clone(),
        control_client: Default::default(),
        feed,
        loadtest,
    });
    let mut api_server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(api::only_the_relay_inside))
            .configure(api::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(10)
    .listen(internal)?;
    if let Some(addr) = config.admin_listen {
        api_server = api_server
            .bind(addr)
            .map_err(|source| StartError::Listen { addr, source })?;
        log::info!("admin API, with /add and /rm, on http://{addr}");
    }
    let api_server = api_server.run();
    let api_handle = api_server.handle();
    let api_task = actix_web::rt::spawn(api_server);

    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut grpc_addr = None;
    let grpc_task = match grpc_listener(config.grpc_listen).await? {
        Some(listener) => {
            let addr = listener.local_addr()?;
            grpc_addr = Some(addr);
            println!("grpc listening on http://{addr}");
            log::info!("look-aside gRPC on {addr}");
            let service = LookAside::new(snapshot.clone(), registered, config.registration_ttl);
            let stopped = async move {
                let _ = grpc_stopped.await;
            };
            Some(tokio::spawn(lookaside::serve(listener, service, stopped)))
        }
        None => {
            // The registered source ends when its last handle goes; without gRPC this
            // one would outlive the registry, and shutdown would wait for it forever.
            drop(registered);
            None
        }
    };
    if let Some(discovery) = &discovery {
        discovery.announce(dataplane.local_addr(), grpc_addr);
    }
    if let ReplicasOf::Cluster(membership, pending) = &mut replicas_of {
        if let Some((events, unhealthy)) = pending.take() {
            let admin = config.admin_listen.unwrap_or(dataplane.local_addr());
            let me = Leader {
                id: balancer_id(),
                admin: advertised(admin, &hostname()),
            };
            let start = start_managed(
                provisioner.clone(),
                health_for_reigns.clone(),
                managed_config.clone(),
                metrics.clone(),
            );
            let candidacy = Candidacy {
                me,
                ttl: config.leader_ttl,
                start,
                snapshot: snapshot.clone(),
                geometry,
            };
            membership.campaign(candidacy, events, unhealthy);
        }
    }
    // Tests and scripts read this line to learn the port when given port 0; it comes
    // last, once everything listens.
    println!("listening on http://{}", dataplane.local_addr());
    std::io::stdout().flush()?;
    log::info!(
        "listening on {} with {workers} workers; {} runtime, {replicas} replicas, policy {}, key {}",
        dataplane.local_addr(),
        provisioner.name(),
        config.policy,
        config.hash_key
    );

    wait_for_signal().await;
    log::info!("stopping: draining requests in flight");
    if let Some(discovery) = discovery {
        // Out of etcd first, so that clients stop finding this balancer.
        discovery.shutdown().await;
    }
    let _ = grpc_stop.send(());
    // Event streams end with the feed, so that draining does not wait for them.
    let _ = feed_stop.send(());
    let _ = feed_task.await;
    if let Some(task) = grpc_task {
        if let Ok(Err(e)) = task.await {
            log::warn!("the gRPC service ended with an error: {e}");
        }
    }
    dataplane.stop().await;
    api_handle.stop(true).await;
    let _ = api_task.await;
    heartbeat.abort();
    match replicas_of {
        ReplicasOf::Alone(handle, task) => {
            handle.shutdown().await;
            let _ = task.await;
        }
        ReplicasOf::Cluster(membership, _) => membership.leave().await,
    }
    // Its source has ended with the managed task.
    let _ = registry_task.await;
    Ok(())
}

/// Who runs the replicas: this balancer's own managed source, or the cluster's
/// leader (this one while it leads).
enum ReplicasOf {
    Alone(ManagedHandle, tokio::task::JoinHandle<()>),
    /// The death reports and missed heartbeats wait here until the campaign starts.
    Cluster(
        Membership,
        Option<(
            mpsc::UnboundedReceiver<crate::provisioner::ProvisionerEvent>,
            mpsc::UnboundedReceiver<String>,
        )>,
    ),
}

/// How a leader starts its managed source. Each reign claims names afresh: the
/// shared view, not this balancer's past reigns, says who exists.
fn start_managed(
    provisioner: Arc<dyn Provisioner>,
    health: Arc<dyn Health>,
    config: ManagedConfig,
    metrics: Arc<Metrics>,
) -> StartManaged {
    Box::new(move |events, unhealthy| {
        let claims = Claims::new(config.capacity);
        Managed::new(
            provisioner.clone(),
            health.clone(),
            config.clone(),
            claims,
            metrics.clone(),
        )
        .spawn(events, unhealthy)
    })
}

/// The look-aside gRPC listener: the address given, which must be free, or the
/// default one, without which the balancer still runs (a second balancer on the
/// same host, say) and says so.
async fn grpc_listener(
    given: Option<std::net::SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, StartError> {
    let addr = given.unwrap_or(DEFAULT_GRPC_LISTEN);
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(source) if given.is_some() => Err(StartError::Listen { addr, source }),
        Err(e) => {
            log::warn!(
                "look-aside gRPC is off: cannot listen on the default {addr} ({e}); give --grpc-listen ADDR to have it"
            );
            Ok(None)
        }
    }
}

/// Where look-aside gRPC listens unless told otherwise.
const DEFAULT_GRPC_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 50050),
);

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
