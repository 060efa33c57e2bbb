//! The replica: answers `/home` with its identity and `/heartbeat` with 200.
//!
//! `SERVER_ID` names it; `--listen` (env `LISTEN`) says where it serves. On SIGTERM it
//! stops accepting, finishes the requests in flight and exits 0.

use std::io::Write;
use std::net::SocketAddr;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use serde_json::json;

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
}

struct Identity {
    server_id: String,
}

async fn home(id: web::Data<Identity>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "message": format!("Hello from Server: {}", id.server_id),
        "status": "successful",
    }))
}

async fn heartbeat() -> HttpResponse {
    HttpResponse::Ok().finish()
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "message": format!("'{}' endpoint does not exist", req.path()),
        "status": "failure",
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let identity = web::Data::new(Identity {
        server_id: args.server_id,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(identity.clone())
            .route("/home", web::get().to(home))
            .route("/heartbeat", web::get().to(heartbeat))
            .default_service(web::to(not_found))
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
