//! The replica: answers `/home` with its identity and `/heartbeat` with 200 (and its
//! load, weight and capacities), computes at `/compute`, takes injected faults and a
//! new weight or capacities at `/control`, and echoes what it received at `/echo` (for
//! tests and demos). `routes` has the handlers, `load` the in-flight count and faults
//! every request goes through, `declared` the weight and capacities it declares,
//! `compute` the task `/compute` and gRPC share.
//!
//! With `--grpc-listen` it also serves gRPC `BackendService.Compute` (`grpc`), and can
//! register with a balancer or etcd and report its load for look-aside balancing
//! (`announce`).
//!
//! `SERVER_ID` names it; `--listen` (env `LISTEN`) says where it serves. On SIGTERM it
//! leaves its balancer or etcd, stops accepting, finishes the requests in flight and
//! exits 0.

mod announce;
mod compute;
mod declared;
mod grpc;
mod load;
mod routes;
mod signals;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use clap::{CommandFactory, Parser};

use declared::{Capacity, Declaration, Declared, Weight};
use grpc::GrpcSide;
use load::Load;
use routes::Identity;
use signals::Signals;

/// A replica server for the load balancer.
#[derive(Debug, Parser)]
#[command(name = "server", version)]
struct Args {
    /// Where to serve.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// Its identity, shown by /home (and its name to a balancer or in etcd).
    #[arg(long, env = "SERVER_ID", default_value = "unnamed")]
    server_id: String,
    /// Request-serving threads.
    #[arg(long, env = "WORKERS", default_value_t = 1)]
    workers: usize,
    /// The most requests in flight (HTTP and gRPC); past it, `503` and
    /// `X-Available: false` (gRPC: `RESOURCE_EXHAUSTED`).
    #[arg(long, env = "MAX_CONCURRENT", value_parser = clap::value_parser!(u64).range(1..))]
    max_concurrent: Option<u64>,
    /// Its share of the balancer's `weighted-round-robin`, from 1 to 100; sent as
    /// `X-Weight` on every heartbeat.
    #[arg(long, env = "WEIGHT", value_name = "N", default_value = "1")]
    weight: Weight,
    /// The resources it offers the balancer's `resource-fit`, as `name=number,...`
    /// (e.g. `cpu=4,storage=2`; empty: none); sent as `X-Capacity` on heartbeats.
    #[arg(long, env = "CAPACITY", value_name = "SPEC", default_value = "")]
    capacity: Capacity,
    /// Where to serve gRPC `BackendService.Compute` and `grpc.health.v1` (default: no
    /// gRPC).
    #[arg(long, env = "GRPC_LISTEN", value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    #[command(flatten)]
    announce: announce::Flags,
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let mut signals = Signals::register()?;
    let grpc_listener = args.grpc_listen.map(TcpListener::bind).transpose()?;
    let load = Arc::new(Load::new(args.max_concurrent.map(|m| m as usize)));
    let identity = web::Data::new(Identity {
        server_id: args.server_id.clone(),
    });
    let echoed = web::Data::new(AtomicU64::new(0));
    let app_load = web::Data::from(load.clone());
    let declared = web::Data::new(Declared::new(Declaration {
        weight: args.weight,
        capacity: args.capacity,
    }));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(identity.clone())
            .app_data(echoed.clone())
            .app_data(app_load.clone())
            .app_data(declared.clone())
            .wrap(from_fn(load::apply))
            .configure(routes::routes)
    })
    .workers(args.workers.max(1))
    // Longer than the balancer's pool keeps idle connections, so the server is
    // not the one to close a connection the balancer is about to reuse.
    .keep_alive(std::time::Duration::from_secs(75))
    .shutdown_timeout(10)
    // `signals` handles them, so that the replica leaves before HTTP stops.
    .disable_signals()
    .bind(args.listen)?;
    let grpc_addr = grpc_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let http_addr = server.addrs()[0];
    let announcer = args
        .announce
        .announcer(&args.server_id, grpc_addr, http_addr)
        .unwrap_or_else(|e| {
            Args::command()
                .error(clap::error::ErrorKind::ValueValidation, e)
                .exit()
        });
    if let Some(addr) = grpc_addr {
        // Before the HTTP line: the process runtime takes that one as "ready".
        println!("grpc listening on http://{addr}");
    }
    for addr in server.addrs() {
        // The process runtime reads this line to learn the port it was given (port 0).
        println!("listening on http://{addr}");
    }
    std::io::stdout().flush()?;
    let mut grpc = grpc_listener
        .map(|listener| GrpcSide::start(listener, load, announcer))
        .transpose()?;
    let leave = grpc.as_mut().and_then(GrpcSide::leave);
    let running = server.run();
    let http = running.handle();
    actix_web::rt::spawn(async move {
        let shutdown = signals.next().await;
        if let Some(leave) = leave {
            leave.now(shutdown).await;
        }
        http.stop(shutdown == signals::Shutdown::Graceful).await;
    });
    running.await?;
    if let Some(grpc) = grpc {
        grpc.join();
    }
    Ok(())
}
