//! The replica's endpoints.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::load::{failure, query_param, Faults, Load};

/// The largest `n` `/compute` takes: fib(40) by the naive recursion is seconds of CPU.
const MAX_N: u32 = 40;

/// Registers every endpoint.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/home", web::get().to(home))
        .route("/heartbeat", web::get().to(heartbeat))
        .route("/compute", web::get().to(compute))
        .route("/control", web::get().to(control))
        .route("/control", web::post().to(set_control))
        .route("/echo", web::route().to(echo))
        .route("/echo/{tail:.*}", web::route().to(echo))
        .default_service(web::to(not_found));
}

/// Who this replica is.
pub struct Identity {
    pub server_id: String,
}

async fn home(id: web::Data<Identity>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "message": format!("Hello from Server: {}", id.server_id),
        "status": "successful",
    }))
}

/// `200`, with the load a balancer's `least-load` policy reads: requests in flight,
/// and whether one more would be taken.
async fn heartbeat(load: web::Data<Load>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("X-Load", load.in_flight().to_string()))
        .insert_header(("X-Available", load.available().to_string()))
        .finish()
}

/// Fibonacci by the naive recursion, on purpose: the CPU-heavy task of the seeds.
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// `GET /compute?n=N`: fib(N), computed off the request threads so heartbeats are
/// still answered while it runs.
async fn compute(req: HttpRequest) -> HttpResponse {
    let n = query_param(req.query_string(), "n")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n <= MAX_N);
    let Some(n) = n else {
        return failure(
            StatusCode::BAD_REQUEST,
            format!("n must be a whole number from 0 to {MAX_N}"),
        );
    };
    match web::block(move || fib(n)).await {
        Ok(result) => HttpResponse::Ok().json(json!({
            "message": {"n": n, "result": result.to_string()},
            "status": "successful",
        })),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn faults_body(faults: Faults) -> HttpResponse {
    HttpResponse::Ok().json(json!({"message": faults, "status": "successful"}))
}

/// `GET /control`: the faults in force; `?set_delay_ms=D` sets the delay first.
async fn control(req: HttpRequest, load: web::Data<Load>) -> HttpResponse {
    let Some(asked) = query_param(req.query_string(), "set_delay_ms") else {
        return faults_body(load.faults());
    };
    let Ok(delay) = asked.parse::<u64>() else {
        return failure(
            StatusCode::BAD_REQUEST,
            "set_delay_ms must be a whole number",
        );
    };
    let change = Faults {
        delay_ms: Some(delay),
        fail_percent: None,
    };
    match load.set_faults(change) {
        Ok(f) => faults_body(f),
        Err(e) => failure(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /control` `{"delay_ms": D, "fail_percent": P}`: either or both; a bad body
/// changes nothing.
async fn set_control(body: web::Bytes, load: web::Data<Load>) -> HttpResponse {
    let change: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return failure(StatusCode::BAD_REQUEST, format!("bad control body: {e}")),
    };
    match load.set_faults(change) {
        Ok(f) => faults_body(f),
        Err(e) => failure(StatusCode::BAD_REQUEST, e),
    }
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
