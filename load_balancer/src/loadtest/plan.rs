//! What `POST /loadtest` asks for: parsed and bounded before anything starts, so a
//! bad body starts nothing. Pure.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::admin::MAX_BODY;
use crate::error::ApiError;

/// The most requests one test may send.
pub const MAX_REQUESTS: u64 = 1_000_000;
/// The most requests in flight at once.
pub const MAX_CONCURRENCY: usize = 1_000;
/// The longest a test may run.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// The longest path (with its query).
pub const MAX_PATH: usize = 1024;

/// A plain load test keeps `concurrency` requests in flight; a stress test ramps
/// them up in steps to find where throughput stops growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Load,
    Stress,
}

/// A validated test.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub requests: u64,
    pub concurrency: usize,
    pub duration: Duration,
    /// Path and query, starting with `/`.
    pub path: String,
    pub mode: Mode,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            requests: 10_000,
            concurrency: 10,
            duration: Duration::from_secs(60),
            path: "/home".into(),
            mode: Mode::Load,
        }
    }
}

/// One stretch of a test at one concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub concurrency: usize,
    pub requests: u64,
    pub duration: Duration,
}

impl Plan {
    /// The stretches the test runs: one for a load test; for a stress test 1, 2,
    /// 4, … up to `concurrency`, sharing the requests and the time equally.
    pub fn steps(&self) -> Vec<Step> {
        let levels: Vec<usize> = match self.mode {
            Mode::Load => vec![self.concurrency],
            Mode::Stress => {
                let mut v: Vec<usize> = std::iter::successors(Some(1usize), |c| c.checked_mul(2))
                    .take_while(|c| *c < self.concurrency)
                    .collect();
                v.push(self.concurrency);
                v
            }
        };
        let n = levels.len() as u64;
        levels
            .into_iter()
            .map(|concurrency| Step {
                concurrency,
                requests: (self.requests / n).max(1),
                duration: self.duration / n as u32,
            })
            .collect()
    }
}

/// Parses a `POST /loadtest` body; every field is optional. `is_own_endpoint`
/// says whether a path is one of the balancer's own, which a test may not aim at.
pub fn parse(body: &[u8], is_own_endpoint: impl Fn(&str) -> bool) -> Result<Plan, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::PayloadTooLarge { limit: MAX_BODY });
    }
    let mut plan = Plan::default();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(plan);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("Request body is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad("Request body must be a JSON object"))?;
    if let Some(field) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "Unknown field '{field}': use {}",
            FIELDS.join(", ")
        )));
    }
    if let Some(n) = integer(obj, "requests", 1, MAX_REQUESTS)? {
        plan.requests = n;
    }
    if let Some(c) = integer(obj, "concurrency", 1, MAX_CONCURRENCY as u64)? {
        plan.concurrency = c as usize;
    }
    if let Some(v) = obj.get("duration_s") {
        let secs = v
            .as_f64()
            .filter(|s| *s > 0.0 && *s <= MAX_DURATION.as_secs_f64())
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "Field 'duration_s' must be a number of seconds above 0 and at most {}",
                    MAX_DURATION.as_secs()
                ))
            })?;
        plan.duration = Duration::from_secs_f64(secs);
    }
    if let Some(v) = obj.get("path") {
        let path = v
            .as_str()
            .ok_or_else(|| ApiError::bad("Field 'path' must be a string"))?;
        check_path(path, &is_own_endpoint)?;
        plan.path = path.to_string();
    }
    if let Some(v) = obj.get("mode") {
        plan.mode = match v.as_str() {
            Some("load") => Mode::Load,
            Some("stress") => Mode::Stress,
            _ => return Err(ApiError::bad("Field 'mode' must be \"load\" or \"stress\"")),
        };
    }
    Ok(plan)
}

const FIELDS: [&str; 5] = ["requests", "concurrency", "duration_s", "path", "mode"];

fn integer(
    obj: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    obj.get(field)
        .map(|v| {
            v.as_u64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "Field '{field}' must be an integer from {min} to {max}"
                    ))
                })
        })
        .transpose()
}

fn check_path(path: &str, is_own_endpoint: &impl Fn(&str) -> bool) -> Result<(), ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::bad("Field 'path' must start with '/'"));
    }
    if path.len() > MAX_PATH {
        return Err(ApiError::bad(format!(
            "Field 'path' is longer than {MAX_PATH} bytes"
        )));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad(
            "Field 'path' must be printable ASCII with no spaces (percent-encode the rest)",
        ));
    }
    let bare = path.split(['?', '#']).next().unwrap_or(path);
    if is_own_endpoint(bare) {
        return Err(ApiError::bad(format!(
            "Field 'path' names the balancer's own endpoint {bare}: a load test goes to the replicas"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> Result<Plan, ApiError> {
        parse(body.as_bytes(), |p| p == "/rep" || p == "/loadtest")
    }

    fn refused(body: &str) -> String {
        parsed(body).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_body_runs_the_default_test() {
        assert_eq!(parsed("").unwrap(), Plan::default());
        assert_eq!(parsed("{}").unwrap(), Plan::default());
    }

    #[test]
    fn every_field_is_read() {
        let plan = parsed(
            r#"{"requests": 500, "concurrency": 4, "duration_s": 2.5, "path": "/home?id=7", "mode": "stress"}"#,
        )
        .unwrap();
        assert_eq!(
            plan,
            Plan {
                requests: 500,
                concurrency: 4,
                duration: Duration::from_millis(2500),
                path: "/home?id=7".into(),
                mode: Mode::Stress,
            }
        );
    }

    #[test]
    fn bounds_are_enforced_with_a_reason() {
        assert!(refused(r#"{"requests": 0}"#).contains("'requests'"));
        assert!(refused(r#"{"requests": 1000001}"#).contains("1000000"));
        assert!(refused(r#"{"requests": 1.5}"#).contains("integer"));
        assert!(refused(r#"{"concurrency": 1001}"#).contains("'concurrency'"));
        assert!(refused(r#"{"duration_s": 0}"#).contains("'duration_s'"));
        assert!(refused(r#"{"duration_s": 301}"#).contains("300"));
        assert!(refused(r#"{"mode": "soak"}"#).contains("'mode'"));
        assert!(refused(r#"{"requets": 5}"#).contains("Unknown field 'requets'"));
        assert!(refused("[1]").contains("object"));
        assert!(refused("{").contains("JSON"));
        assert!(parsed(r#"{"requests": 1000000, "concurrency": 1000, "duration_s": 300}"#).is_ok());
    }

    #[test]
    fn a_test_cannot_aim_at_the_balancers_own_endpoints_or_a_malformed_path() {
        assert!(refused(r#"{"path": "/rep"}"#).contains("own endpoint /rep"));
        assert!(refused(r#"{"path": "/loadtest?x=1"}"#).contains("own endpoint"));
        assert!(refused(r#"{"path": "home"}"#).contains("start with '/'"));
        assert!(refused(r#"{"path": "/a b"}"#).contains("printable"));
        assert!(refused(r#"{"path": "/\r\nX: 1"}"#).contains("printable"));
        let long = format!(r#"{{"path": "/{}"}}"#, "a".repeat(MAX_PATH));
        assert!(refused(&long).contains("longer"));
        assert!(refused(r#"{"path": 5}"#).contains("string"));
    }

    #[test]
    fn a_stress_test_doubles_its_concurrency_up_to_the_limit_sharing_the_budget() {
        let plan = Plan {
            requests: 1000,
            concurrency: 12,
            duration: Duration::from_secs(50),
            mode: Mode::Stress,
            ..Plan::default()
        };
        let steps = plan.steps();
        let levels: Vec<usize> = steps.iter().map(|s| s.concurrency).collect();
        assert_eq!(levels, [1, 2, 4, 8, 12]);
        assert!(steps
            .iter()
            .all(|s| s.requests == 200 && s.duration == Duration::from_secs(10)));
        let one = Plan {
            concurrency: 1,
            ..plan
        };
        assert_eq!(one.steps().len(), 1);
        let load = Plan::default().steps();
        assert_eq!(load.len(), 1);
        assert_eq!(load[0].requests, 10_000);
    }
}
