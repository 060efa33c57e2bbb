//! The replica: answers `/home` with its identity and `/heartbeat` with 200, and
//! echoes what it received at `/echo` (for tests and demos).
//!
//! `SERVER_ID` names it; `--listen` (env `LISTEN`) says where it serves. On SIGTERM it
//! stops accepting, finishes the requests in flight and exits 0.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Echoes a request back as JSON, to show what a replica received behind the
/// balancer: for tests (the differential smuggling test in `tests/tests/smuggling.rs`
/// speaks this protocol to several independent servers) and demos.
///
/// Answers any method at `/echo` and below, once the whole body has been read, with
/// `{"seq", "method", "target", "body_len", "body"}`: `seq` numbers the echoed
/// requests of this process from 1, so a request the balancer never answered its
/// client for shows as a gap; `body` is the first 200 bytes as latin-1.
async fn echo(req: HttpRequest, body: web::Bytes, seq: web::Data<AtomicU64>) -> HttpResponse {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_string(), |p| p.to_string());
    HttpResponse::Ok().json(json!({
        "seq": seq.fetch_add(1, Ordering::SeqCst) + 1,
        "method": req.method().as_str(),
        "target": target,
        "body_len": body.len(),
        "body": body.iter().take(200).map(|&b| char::from(b)).collect::<String>(),
    }))
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
    let echoed = web::Data::new(AtomicU64::new(0));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(identity.clone())
            .app_data(echoed.clone())
            .route("/home", web::get().to(home))
            .route("/heartbeat", web::get().to(heartbeat))
            .route("/echo", web::route().to(echo))
            .route("/echo/{tail:.*}", web::route().to(echo))
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
