//! The replica: answers `/home` with its identity and `/heartbeat` with 200 (and its
//! load, weight and capacities), computes at `/compute`, takes injected faults and a
//! new weight or capacities at `/control`, and echoes what it received at `/echo` (for
//! tests and demos). `routes` has the handlers, `load` the in-flight count and faults
//! every request goes through, `declared` the weight and capacities it declares.
//!
//! `SERVER_ID` names it; `--listen` (env `LISTEN`) says where it serves. On SIGTERM it
//! stops accepting, finishes the requests in flight and exits 0.

mod declared;
mod load;
mod routes;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use clap::Parser;

use declared::{Capacity, Declaration, Declared, Weight};
use load::Load;
use routes::Identity;

/// A replica server for the load balancer.
#[derive(Debug, Parser)]
#[command(name = "server", version)]
struct Args {
    /// Where to serve.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// Its identity, shown by /home.
    #[arg(long, env = "SERVER_ID", default_value = "unnamed")]
    server_id: String,
    /// Request-serving threads.
    #[arg(long, env = "WORKERS", default_value_t = 1)]
    workers: usize,
    /// The most requests in flight; past it, `503` and `X-Available: false`.
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
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let identity = web::Data::new(Identity {
        server_id: args.server_id,
    });
    let echoed = web::Data::new(AtomicU64::new(0));
    let load = web::Data::new(Load::new(args.max_concurrent.map(|m| m as usize)));
    let declared = web::Data::new(Declared::new(Declaration {
        weight: args.weight,
        capacity: args.capacity,
    }));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(identity.clone())
            .app_data(echoed.clone())
            .app_data(load.clone())
            .app_data(declared.clone())
            .wrap(from_fn(load::apply))
            .configure(routes::routes)
    })
    .workers(args.workers.max(1))
    // Longer than the balancer's pool keeps idle connections, so the server is
    // not the one to close a connection the balancer is about to reuse.
    .keep_alive(std::time::Duration::from_secs(75))
    .shutdown_timeout(10)
    .bind(args.listen)?;
    for addr in server.addrs() {
        // The process runtime reads this line to learn the port it was given (port 0).
        println!("listening on http://{addr}");
    }
    std::io::stdout().flush()?;
    server.run().await
}
