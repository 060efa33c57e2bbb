//! What a replica is carrying and what it was told to suffer: requests in flight
//! (refused past `--max-concurrent`), and injected faults (a delay, a share of
//! failures) set through `/control`. A middleware applies them to every request but
//! `/heartbeat` and `/control`, which must keep answering whatever the faults.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::json;

/// The longest delay a request or `/control` may ask for.
pub const MAX_DELAY_MS: u64 = 60_000;

/// The replica's load and faults, shared by its workers.
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicUsize,
    /// `--max-concurrent`; `None`: no limit.
    max: Option<usize>,
    delay_ms: AtomicU64,
    fail_percent: AtomicU64,
}

/// The faults `/control` shows and sets (`None`: left as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Faults {
    /// Added to every request's answer time, in ms.
    pub delay_ms: Option<u64>,
    /// The share of requests answered `500`, in percent.
    pub fail_percent: Option<u64>,
}

impl Faults {
    /// Whether every field given is in range: apart from setting, so that `/control`
    /// can check its other fields too before it changes anything.
    pub fn check(&self) -> Result<(), String> {
        if self.delay_ms.is_some_and(|d| d > MAX_DELAY_MS) {
            return Err(format!("delay_ms must be from 0 to {MAX_DELAY_MS}"));
        }
        if self.fail_percent.is_some_and(|p| p > 100) {
            return Err("fail_percent must be from 0 to 100".into());
        }
        Ok(())
    }
}

/// One request counted in flight until dropped.
pub struct InFlight<'a>(&'a Load);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Load {
    /// No request yet; at most `max` at once when given.
    pub fn new(max: Option<usize>) -> Self {
        Load {
            max,
            ..Load::default()
        }
    }

    /// Counts a request in, or `None` when that would pass `--max-concurrent`.
    pub fn enter(&self) -> Option<InFlight<'_>> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = InFlight(self);
        self.max.is_none_or(|max| now <= max).then_some(guard)
    }

    /// Requests in flight now: the load a heartbeat reports.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether it can take one more request.
    pub fn available(&self) -> bool {
        self.max.is_none_or(|max| self.in_flight() < max)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        Faults {
            delay_ms: Some(self.delay_ms.load(Ordering::Relaxed)),
            fail_percent: Some(self.fail_percent.load(Ordering::Relaxed)),
        }
    }

    /// Sets the faults given (the others stay), after checking all of them, so a
    /// bad field changes nothing.
    pub fn set_faults(&self, faults: Faults) -> Result<Faults, String> {
        faults.check()?;
        if let Some(d) = faults.delay_ms {
            self.delay_ms.store(d, Ordering::Relaxed);
        }
        if let Some(p) = faults.fail_percent {
            self.fail_percent.store(p, Ordering::Relaxed);
        }
        Ok(self.faults())
    }
}

/// A JSON failure, as every error of the server is answered.
pub fn failure(
    status: actix_web::http::StatusCode,
    message: impl std::fmt::Display,
) -> HttpResponse {
    HttpResponse::build(status).json(json!({"message": message.to_string(), "status": "failure"}))
}

/// The value of parameter `name` in a query string (undecoded: ours are numbers).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `delay_ms` from a query string: `Ok(None)` when absent.
pub fn delay_in_query(query: &str) -> Result<Option<u64>, String> {
    let Some(value) = query_param(query, "delay_ms") else {
        return Ok(None);
    };
    value
        .parse::<u64>()
        .ok()
        .filter(|d| *d <= MAX_DELAY_MS)
        .map(Some)
        .ok_or_else(|| format!("delay_ms must be a whole number from 0 to {MAX_DELAY_MS}"))
}

/// Middleware: counts the request in flight (or refuses it past `--max-concurrent`),
/// waits what `?delay_ms=` and the injected delay ask, and fails the injected share.
pub async fn apply(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    use actix_web::http::StatusCode;
    let load = req
        .app_data::<web::Data<Load>>()
        .expect("the app has a Load")
        .clone();
    let asked = match delay_in_query(req.query_string()) {
        Ok(d) => d.unwrap_or(0),
        Err(e) => {
            return Ok(req
                .into_response(failure(StatusCode::BAD_REQUEST, e))
                .map_into_right_body())
        }
    };
    let exempt = matches!(req.path(), "/heartbeat" | "/control");
    if exempt {
        actix_web::rt::time::sleep(Duration::from_millis(asked)).await;
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let Some(_in_flight) = load.enter() else {
        let busy = failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight",
        );
        return Ok(req.into_response(busy).map_into_right_body());
    };
    let faults = load.faults();
    let delay = asked + faults.delay_ms.unwrap_or(0);
    actix_web::rt::time::sleep(Duration::from_millis(delay)).await;
    if rand::random::<u64>() % 100 < faults.fail_percent.unwrap_or(0) {
        let failed = failure(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
        return Ok(req.into_response(failed).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_max_concurrent_a_request_is_refused_until_one_ends() {
        let load = Load::new(Some(2));
        let a = load.enter().unwrap();
        let _b = load.enter().unwrap();
        assert!(!load.available());
        assert!(load.enter().is_none());
        assert_eq!(load.in_flight(), 2);
        drop(a);
        assert!(load.available());
        assert!(load.enter().is_some());
    }

    #[test]
    fn a_bad_fault_changes_nothing_and_a_partial_one_keeps_the_rest() {
        let load = Load::new(None);
        let set = |d, p| Faults {
            delay_ms: d,
            fail_percent: p,
        };
        load.set_faults(set(Some(200), Some(10))).unwrap();
        assert!(load.set_faults(set(Some(5), Some(101))).is_err());
        assert!(load.set_faults(set(Some(MAX_DELAY_MS + 1), None)).is_err());
        assert_eq!(load.faults(), set(Some(200), Some(10)));
        load.set_faults(set(None, Some(0))).unwrap();
        assert_eq!(load.faults(), set(Some(200), Some(0)));
    }

    #[test]
    fn a_delay_in_the_query_is_read_and_bounded() {
        assert_eq!(delay_in_query("a=1&delay_ms=250"), Ok(Some(250)));
        assert_eq!(delay_in_query("a=1"), Ok(None));
        assert!(delay_in_query("delay_ms=x").is_err());
        assert!(delay_in_query("delay_ms=60001").is_err());
    }
}
