//! The routing settings `GET /policy` shows and `PUT /policy` changes: the policy
//! and what tunes it. Validating an update is a pure function from the current
//! settings and a JSON body to new settings or the reason it is refused, so a bad
//! body can never change anything.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{names, Tuning};
use crate::hashkey::HashKey;
use crate::ring::Geometry;
use crate::scheme::bounded::Bound;

/// The longest a fixed hedge delay may be.
const MAX_HEDGE_DELAY: Duration = Duration::from_secs(60);

/// The longest slow start.
const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// The default share of requests that may be hedged, in percent.
pub const DEFAULT_HEDGE_BUDGET: f64 = 5.0;

/// When an unanswered request is also sent to the next candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    /// After a fixed delay with no response head.
    After(Duration),
    /// After the running percentile `p` (0 < p < 100) of response times.
    Percentile(f64),
}

/// Why a hedge was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hedge '{0}' is neither a duration from 1ms to 60s (e.g. 50ms) nor a percentile pNN from p1 to p99.9 (e.g. p95)")]
pub struct BadHedge(String);

impl FromStr for Hedge {
    type Err = BadHedge;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadHedge(s.into());
        if let Some(p) = s.strip_prefix('p') {
            let p: f64 = p.parse().map_err(|_| bad())?;
            return if (1.0..=99.9).contains(&p) {
                Ok(Hedge::Percentile(p))
            } else {
                Err(bad())
            };
        }
        let d = humantime::parse_duration(s).map_err(|_| bad())?;
        if d >= Duration::from_millis(1) && d <= MAX_HEDGE_DELAY {
            Ok(Hedge::After(d))
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for Hedge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hedge::After(d) => write!(f, "{}", humantime::format_duration(*d)),
            Hedge::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

/// Why a `PUT /policy` body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("The body must be a JSON object with any of policy, hash_key, balance_factor, slow_start, hedge, hedge_budget")]
    NotAnObject,
    #[error("Unknown field '{0}': use policy, hash_key, balance_factor, slow_start, hedge or hedge_budget")]
    UnknownField(String),
    #[error("'{0}' must be {1}")]
    WrongType(&'static str, &'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("'policies' is the list of every policy and cannot be changed")]
    ReadOnly,
}

/// The routing settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The policy's name.
    pub policy: &'static str,
    /// Where a request's hash key comes from.
    pub hash_key: HashKey,
    /// Bounded loads for hash policies (`C >= 1`).
    pub balance_factor: Option<f64>,
    /// How long a newly healthy replica's share ramps up.
    pub slow_start: Option<Duration>,
    /// When to hedge, if at all.
    pub hedge: Option<Hedge>,
    /// The most requests hedged, in percent of requests.
    pub hedge_budget: f64,
}

impl Default for Settings {
    /// The flags' defaults: the design's ring, random keys, nothing else on.
    fn default() -> Self {
        Settings {
            policy: "quadratic",
            hash_key: HashKey::Random,
            balance_factor: None,
            slow_start: None,
            hedge: None,
            hedge_budget: DEFAULT_HEDGE_BUDGET,
        }
    }
}

/// The name as `names()` spells it, so it can be kept as `&'static str`.
pub fn policy_name(name: &str) -> Option<&'static str> {
    names().find(|n| *n == name)
}

fn string<'a>(field: &'static str, v: &'a Value) -> Result<&'a str, SettingsError> {
    v.as_str()
        .ok_or(SettingsError::WrongType(field, "a string"))
}

impl Settings {
    /// What the policy is built from besides its name.
    pub fn tuning(&self, geometry: Geometry) -> Tuning {
        Tuning {
            geometry,
            balance_factor: self.balance_factor,
            slow_start: self.slow_start,
        }
    }

    /// These settings with `body`'s fields applied, or why `body` is refused.
    pub fn updated(&self, body: &Value) -> Result<Settings, SettingsError> {
        let fields: &Map<String, Value> = body.as_object().ok_or(SettingsError::NotAnObject)?;
        let mut new = self.clone();
        for (field, v) in fields {
            match field.as_str() {
                "policy" => {
                    let name = string("policy", v)?;
                    new.policy = policy_name(name).ok_or_else(|| {
                        SettingsError::Invalid(super::UnknownPolicy(name.into()).to_string())
                    })?;
                }
                "hash_key" => {
                    new.hash_key = string("hash_key", v)?.parse().map_err(
                        |e: crate::hashkey::ParseHashKeyError| {
                            SettingsError::Invalid(e.to_string())
                        },
                    )?;
                }
                "balance_factor" => {
                    new.balance_factor = match v {
                        Value::Null => None,
                        Value::Number(n) => Some(
                            n.as_f64()
                                .and_then(Bound::new)
                                .map(|b| b.factor())
                                .ok_or_else(|| {
                                    SettingsError::Invalid(
                                        "'balance_factor' must be a number >= 1, or null".into(),
                                    )
                                })?,
                        ),
                        _ => {
                            return Err(SettingsError::WrongType(
                                "balance_factor",
                                "a number or null",
                            ))
                        }
                    }
                }
                "slow_start" => {
                    new.slow_start = match v {
                        Value::Null => None,
                        Value::String(s) => Some(
                            humantime::parse_duration(s)
                                .ok()
                                .filter(|d| *d <= MAX_SLOW_START)
                                .ok_or_else(|| {
                                    SettingsError::Invalid(format!(
                                        "slow_start '{s}' is not a duration up to 1h (e.g. 30s)"
                                    ))
                                })?,
                        )
                        .filter(|d| !d.is_zero()),
                        _ => {
                            return Err(SettingsError::WrongType(
                                "slow_start",
                                "a duration string or null",
                            ))
                        }
                    }
                }
                "hedge" => {
                    new.hedge = match v {
                        Value::Null => None,
                        Value::String(s) => Some(
                            s.parse()
                                .map_err(|e: BadHedge| SettingsError::Invalid(e.to_string()))?,
                        ),
                        _ => return Err(SettingsError::WrongType("hedge", "a string or null")),
                    }
                }
                "hedge_budget" => {
                    new.hedge_budget = v.as_f64().filter(|b| (0.0..=100.0).contains(b)).ok_or(
                        SettingsError::WrongType("hedge_budget", "a number from 0 to 100"),
                    )?;
                }
                "policies" => {
                    let same = v.as_array().is_some_and(|list| {
                        list.len() == names().count()
                            && list.iter().zip(names()).all(|(v, n)| v.as_str() == Some(n))
                    });
                    if !same {
                        return Err(SettingsError::ReadOnly);
                    }
                }
                other => return Err(SettingsError::UnknownField(other.into())),
            }
        }
        Ok(new)
    }

    /// The `message` of `GET /policy`.
    pub fn view(&self) -> Value {
        json!({
            "policy": self.policy,
            "hash_key": self.hash_key.to_string(),
            "balance_factor": self.balance_factor,
            "slow_start": self.slow_start.map(|d| humantime::format_duration(d).to_string()),
            "hedge": self.hedge.map(|h| h.to_string()),
            "hedge_budget": self.hedge_budget,
            "policies": names().collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_has_the_specified_fields_and_every_policy() {
        let v = Settings::default().view();
        assert_eq!(v["policy"], "quadratic");
        assert_eq!(v["hash_key"], "random");
        assert_eq!(v["balance_factor"], Value::Null);
        assert_eq!(v["hedge"], Value::Null);
        assert_eq!(v["policies"].as_array().unwrap().len(), 15);
    }

    #[test]
    fn each_field_is_applied_and_null_turns_an_option_off() {
        let s = Settings::default()
            .updated(&json!({"policy": "p2c-ewma", "hash_key": "header:x-user",
                "balance_factor": 1.25, "slow_start": "30s", "hedge": "p95", "hedge_budget": 2}))
            .unwrap();
        assert_eq!(s.policy, "p2c-ewma");
        assert_eq!(s.hash_key, HashKey::Header("x-user".into()));
        assert_eq!(s.balance_factor, Some(1.25));
        assert_eq!(s.slow_start, Some(Duration::from_secs(30)));
        assert_eq!(s.hedge, Some(Hedge::Percentile(95.0)));
        assert_eq!(s.hedge_budget, 2.0);
        let off = s
            .updated(&json!({"balance_factor": null, "hedge": null, "slow_start": null}))
            .unwrap();
        assert_eq!(
            (off.balance_factor, off.hedge, off.slow_start),
            (None, None, None)
        );
    }

    #[test]
    fn the_view_put_back_changes_nothing() {
        let s = Settings::default()
            .updated(&json!({"hedge": "50ms", "slow_start": "10s"}))
            .unwrap();
        assert_eq!(s.updated(&s.view()).unwrap(), s);
    }

    #[test]
    fn every_bad_body_is_refused_with_its_reason() {
        let refused = |body: Value| Settings::default().updated(&body).unwrap_err().to_string();
        assert!(refused(json!([1])).contains("JSON object"));
        assert!(refused(json!({"policy": "fastest"})).contains("unknown policy 'fastest'"));
        assert!(refused(json!({"policy": 3})).contains("'policy' must be a string"));
        assert!(refused(json!({"hash_key": "nope"})).contains("unknown hash key"));
        assert!(refused(json!({"balance_factor": 0.5})).contains(">= 1"));
        assert!(refused(json!({"balance_factor": "2"})).contains("a number or null"));
        assert!(refused(json!({"hedge": "soon"})).contains("percentile"));
        assert!(refused(json!({"hedge": "p100"})).contains("percentile"));
        assert!(refused(json!({"hedge": "2m"})).contains("percentile"));
        assert!(refused(json!({"hedge_budget": 101})).contains("0 to 100"));
        assert!(refused(json!({"slow_start": "forever"})).contains("slow_start"));
        assert!(refused(json!({"policies": ["quadratic"]})).contains("cannot be changed"));
        assert!(refused(json!({"polcy": "random"})).contains("Unknown field 'polcy'"));
        // One bad field refuses the whole body.
        assert!(refused(json!({"policy": "random", "hedge": "x"})).contains("hedge"));
    }

    #[test]
    fn hedges_parse_and_print_back() {
        for s in ["50ms", "1s", "p95", "p99.9"] {
            assert_eq!(s.parse::<Hedge>().unwrap().to_string(), s);
        }
        assert!("0ms".parse::<Hedge>().is_err());
        assert!("p0".parse::<Hedge>().is_err());
    }
}
