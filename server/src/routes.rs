//! The replica's endpoints.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::compute::{fib, parse_n};
use crate::declared::{
    Capacity, CapacityError, Change, Declaration, Declared, Weight, WeightError,
};
use crate::load::{failure, query_param, Faults, Load};

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

/// `200`, with the load a balancer's `least-load` policy reads (requests in flight,
/// and whether one more would be taken) and what its `weighted-round-robin` and
/// `resource-fit` policies read: the declared weight and, when any is declared, the
/// capacities in their canonical form.
async fn heartbeat(load: web::Data<Load>, declared: web::Data<Declared>) -> HttpResponse {
    let declaration = declared.current();
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header(("X-Load", load.in_flight().to_string()))
        .insert_header(("X-Available", load.available().to_string()))
        .insert_header(("X-Weight", declaration.weight.to_string()));
    if !declaration.capacity.is_empty() {
        answer.insert_header(("X-Capacity", declaration.capacity.to_string()));
    }
    answer.finish()
}

/// `GET /compute?n=N`: fib(N), computed off the request threads so heartbeats are
/// still answered while it runs.
async fn compute(req: HttpRequest) -> HttpResponse {
    let n = match parse_n(query_param(req.query_string(), "n").unwrap_or("")) {
        Ok(n) => n,
        Err(e) => return failure(StatusCode::BAD_REQUEST, format!("n {e}")),
    };
    match web::block(move || fib(n)).await {
        Ok(result) => HttpResponse::Ok().json(json!({
            "message": {"n": n, "result": result.to_string()},
            "status": "successful",
        })),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// What `/control` shows: the faults and the declaration in force, in the shape a
/// `POST /control` body takes, so one can be sent back as the other.
#[derive(Debug, Serialize)]
struct ControlView {
    #[serde(flatten)]
    faults: Faults,
    weight: u8,
    capacity: String,
}

fn control_body(faults: Faults, declaration: &Declaration) -> HttpResponse {
    let view = ControlView {
        faults,
        weight: declaration.weight.get(),
        capacity: declaration.capacity.to_string(),
    };
    HttpResponse::Ok().json(json!({"message": view, "status": "successful"}))
}

/// `GET /control`: the faults and declaration in force; `?set_delay_ms=D` sets the
/// delay first.
async fn control(
    req: HttpRequest,
    load: web::Data<Load>,
    declared: web::Data<Declared>,
) -> HttpResponse {
    let Some(asked) = query_param(req.query_string(), "set_delay_ms") else {
        return control_body(load.faults(), &declared.current());
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
        Ok(f) => control_body(f, &declared.current()),
        Err(e) => failure(StatusCode::BAD_REQUEST, e),
    }
}

/// A `POST /control` body: every field optional, those given replace the current ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    delay_ms: Option<u64>,
    fail_percent: Option<u64>,
    weight: Option<u64>,
    /// In the `--capacity` syntax; `""` declares none.
    capacity: Option<String>,
}

/// Why a `/control` body was refused; nothing was changed.
#[derive(Debug)]
enum ControlError {
    Body(serde_json::Error),
    Faults(String),
    Weight(WeightError),
    Capacity(CapacityError),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Body(e) => write!(f, "bad control body: {e}"),
            ControlError::Faults(e) => f.write_str(e),
            ControlError::Weight(e) => e.fmt(f),
            ControlError::Capacity(e) => e.fmt(f),
        }
    }
}

/// Reads and checks every field of a `/control` body before anything is set, so a
/// bad one changes nothing.
fn checked_control(body: &[u8]) -> Result<(Faults, Change), ControlError> {
    let body: ControlBody = serde_json::from_slice(body).map_err(ControlError::Body)?;
    let faults = Faults {
        delay_ms: body.delay_ms,
        fail_percent: body.fail_percent,
    };
    faults.check().map_err(ControlError::Faults)?;
    let weight = body.weight.map(Weight::try_from).transpose();
    let capacity = body
        .capacity
        .as_deref()
        .map(str::parse::<Capacity>)
        .transpose();
    let change = Change {
        weight: weight.map_err(ControlError::Weight)?,
        capacity: capacity.map_err(ControlError::Capacity)?,
    };
    Ok((faults, change))
}

/// `POST /control` `{"delay_ms": D, "fail_percent": P, "weight": W, "capacity": "cpu=4"}`:
/// any of them; a bad body changes nothing.
async fn set_control(
    body: web::Bytes,
    load: web::Data<Load>,
    declared: web::Data<Declared>,
) -> HttpResponse {
    let (faults, change) = match checked_control(&body) {
        Ok(checked) => checked,
        Err(e) => return failure(StatusCode::BAD_REQUEST, e),
    };
    match load.set_faults(faults) {
        Ok(f) => control_body(f, &declared.apply(change)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_body_may_give_any_of_its_four_fields() {
        let (faults, change) = checked_control(
            br#"{"delay_ms": 5, "fail_percent": 10, "weight": 7, "capacity": "mem=2,cpu=4"}"#,
        )
        .unwrap();
        assert_eq!(faults.delay_ms, Some(5));
        assert_eq!(faults.fail_percent, Some(10));
        assert_eq!(change.weight.map(Weight::get), Some(7));
        assert_eq!(change.capacity.unwrap().to_string(), "cpu=4,mem=2");
        let (faults, change) = checked_control(br#"{"capacity": ""}"#).unwrap();
        assert_eq!(faults.delay_ms, None);
        assert_eq!(change.weight, None);
        assert!(change.capacity.unwrap().is_empty());
    }

    #[test]
    fn one_bad_field_refuses_the_whole_control_body() {
        for bad in [
            r#"{"delay_ms": 5, "weight": 0}"#,
            r#"{"weight": 101}"#,
            r#"{"weight": 2, "capacity": "cpu=0"}"#,
            r#"{"weight": 2, "fail_percent": 101}"#,
            r#"{"weight": 2, "other": 1}"#,
            r#"{"capacity": 4}"#,
            "nope",
        ] {
            assert!(checked_control(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
