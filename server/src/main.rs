//! The replica: answers `/home` with its identity and `/heartbeat` with 200 (and its
//! load), computes at `/compute`, takes injected faults at `/control`, and echoes what
//! it received at `/echo` (for tests and demos). `routes` has the handlers, `load` the
//! in-flight count and faults every request goes through.
//!
//! `SERVER_ID` names it; `--listen` (env `LISTEN`) says where it serves. On SIGTERM it
//! stops accepting, finishes the requests in flight and exits 0.

mod load;
mod routes;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use clap::Parser;

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
    let server = HttpServer::new(move || {
        App::new()
            .app_data(identity.clone())
            .app_data(echoed.clone())
            .app_data(load.clone())
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
