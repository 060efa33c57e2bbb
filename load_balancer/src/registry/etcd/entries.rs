//! The pure part of etcd discovery: what a key and its value say, what a listing or
//! a put changes against what the source holds, the balancer's own entry, and the
//! wait between attempts. The task in `mod.rs` only carries these decisions out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::admin::validate_name;
use crate::registry::registered::check_address;

/// A backend as its etcd entry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// `address`: where it serves look-aside gRPC, if it does.
    pub grpc_address: Option<String>,
    /// `http_address`: where it serves HTTP, if it does: the data plane routes there.
    pub http_address: Option<String>,
    /// `load`, 0 when absent.
    pub load: u32,
    /// `available`, true when absent.
    pub available: bool,
}

impl Announced {
    /// Whether both are reached at the same addresses (only the figures differ).
    fn same_place(&self, other: &Announced) -> bool {
        self.grpc_address == other.grpc_address && self.http_address == other.http_address
    }
}

/// Reads an entry's value: a JSON object with `address` (gRPC) and/or
/// `http_address`, each `host:port` (an empty string counts as absent), and
/// optionally `load` (an integer from 0) and `available` (a boolean). Other fields
/// are ignored, so a newer writer may add some.
pub fn parse_value(value: &[u8]) -> Result<Announced, String> {
    let v: Value = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let fields = v.as_object().ok_or("not a JSON object")?;
    let address = |field: &str| -> Result<Option<String>, String> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => match check_address(s) {
                Ok(()) => Ok(Some(s.clone())),
                Err(e) => Err(format!("'{field}': {e}")),
            },
            Some(_) => Err(format!("'{field}' is not a string")),
        }
    };
    let grpc_address = address("address")?;
    let http_address = address("http_address")?;
    if grpc_address.is_none() && http_address.is_none() {
        return Err("neither 'address' (gRPC) nor 'http_address' is given".into());
    }
    let load = match fields.get("load") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .map(|l| u32::try_from(l).unwrap_or(u32::MAX))
            .ok_or("'load' is not an integer from 0")?,
    };
    let available = match fields.get("available") {
        None | Some(Value::Null) => true,
        Some(v) => v.as_bool().ok_or("'available' is not true or false")?,
    };
    Ok(Announced {
        grpc_address,
        http_address,
        load,
        available,
    })
}

/// Where an instance's backends are: `/lb/<instance>/backends/`.
pub fn backends_prefix(instance: &str) -> String {
    format!("/lb/{instance}/backends/")
}

/// Where an instance's balancers are: `/lb/<instance>/balancers/`.
pub fn balancers_prefix(instance: &str) -> String {
    format!("/lb/{instance}/balancers/")
}

/// The backend's name in a key under `prefix` (`backends_prefix`): its last
/// segment, which must be a valid replica name (as `/add` takes them).
pub fn name_of(prefix: &str, key: &[u8]) -> Result<String, String> {
    let key = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
    let name = key
        .strip_prefix(prefix)
        .ok_or_else(|| format!("'{key}' is not under {prefix}"))?;
    if name.contains('/') {
        return Err(format!("'{name}' is more than one key segment"));
    }
    validate_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_string())
}

/// What one key's news does to the source's set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A backend it does not hold yet.
    Join(String, Announced),
    /// A backend it holds, now at other addresses: a new `Backend` under the same id.
    Move(String, Announced),
    /// A backend it holds whose load or availability changed: a report, no batch.
    Report(String, Announced),
    /// A backend it holds whose key is gone.
    Leave(String),
}

/// What a put of `name`'s key with `now` does, given what the source holds of it.
pub fn on_put(held: Option<&Announced>, name: &str, now: Announced) -> Option<Step> {
    let name = name.to_string();
    match held {
        None => Some(Step::Join(name, now)),
        Some(h) if !h.same_place(&now) => Some(Step::Move(name, now)),
        Some(h) if *h != now => Some(Step::Report(name, now)),
        Some(_) => None,
    }
}

/// What a fresh listing changes against what the source holds: every held name that
/// is not listed leaves (first, so that the ids they free are there for newcomers),
/// then every listed one joins, moves or reports. A listed key whose value could not
/// be read (`None`) changes nothing: the key is there, and what was known of it stays.
pub fn diff<'a>(
    held: impl IntoIterator<Item = (&'a String, &'a Announced)>,
    listed: &BTreeMap<String, Option<Announced>>,
) -> Vec<Step> {
    let held: BTreeMap<&String, &Announced> = held.into_iter().collect();
    let leaves = held
        .keys()
        .filter(|name| !listed.contains_key(name.as_str()))
        .map(|name| Step::Leave(name.to_string()));
    let puts = listed.iter().filter_map(|(name, now)| {
        let now = now.clone()?;
        on_put(held.get(name).copied(), name, now)
    });
    leaves.chain(puts).collect()
}

/// The balancer's own value: `{"http": "<host:port>", "grpc": "<host:port>"}`, the
/// second only when it serves look-aside gRPC.
pub fn balancer_value(http: &str, grpc: Option<&str>) -> String {
    let mut v = serde_json::json!({ "http": http });
    if let Some(grpc) = grpc {
        v["grpc"] = grpc.into();
    }
    v.to_string()
}

/// The address to give out for one bound at `bound`: an unspecified IP (`0.0.0.0`,
/// `::`), which nobody can dial, becomes `host` (this machine's name).
pub fn advertised(bound: SocketAddr, host: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("{host}:{}", bound.port())
    } else {
        bound.to_string()
    }
}

/// The wait before attempt `failures + 1` after `failures` failures in a row:
/// none at first, then 100 ms doubling up to 2 s.
pub fn backoff(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(2);
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST
        .checked_mul(1 << (failures - 1).min(31))
        .map_or(CAP, |d| d.min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(grpc: &str, http: &str, load: u32, available: bool) -> Announced {
        Announced {
            grpc_address: Some(grpc.into()),
            http_address: Some(http.into()),
            load,
            available,
        }
    }

    #[test]
    fn a_replicas_value_is_read_whole() {
        let v = br#"{"address": "127.0.0.1:7001", "http_address": "127.0.0.1:8001",
                     "load": 3, "available": false}"#;
        assert_eq!(
            parse_value(v).unwrap(),
            both("127.0.0.1:7001", "127.0.0.1:8001", 3, false)
        );
    }

    #[test]
    fn one_address_is_enough_and_missing_figures_mean_idle_and_available() {
        let http = parse_value(br#"{"http_address": "b1.local:80", "extra": [1]}"#).unwrap();
        assert_eq!(http.http_address.as_deref(), Some("b1.local:80"));
        assert_eq!(http.grpc_address, None);
        assert_eq!((http.load, http.available), (0, true));
        let grpc = parse_value(br#"{"address": "10.0.0.5:50051", "http_address": ""}"#).unwrap();
        assert_eq!(grpc.grpc_address.as_deref(), Some("10.0.0.5:50051"));
        assert_eq!(grpc.http_address, None);
    }

    #[test]
    fn a_malformed_value_is_refused_with_the_reason() {
        for (bad, why) in [
            (&b"nope"[..], "JSON"),
            (b"[1]", "object"),
            (b"{}", "neither"),
            (br#"{"address": "", "http_address": null}"#, "neither"),
            (br#"{"http_address": "127.0.0.1"}"#, "http_address"),
            (br#"{"http_address": "h:0"}"#, "http_address"),
            (br#"{"address": 7001}"#, "address"),
            (br#"{"http_address": "h:1", "load": -1}"#, "load"),
            (br#"{"http_address": "h:1", "load": 1.5}"#, "load"),
            (
                br#"{"http_address": "h:1", "available": "yes"}"#,
                "available",
            ),
        ] {
            let err = parse_value(bad).unwrap_err();
            assert!(err.contains(why), "{}: {err}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_huge_load_is_read_as_the_largest_one() {
        let v = parse_value(br#"{"http_address": "h:1", "load": 99999999999}"#).unwrap();
        assert_eq!(v.load, u32::MAX);
    }

    #[test]
    fn a_keys_name_is_its_last_segment_and_must_be_a_valid_name() {
        let prefix = backends_prefix("lb1");
        assert_eq!(prefix, "/lb/lb1/backends/");
        assert_eq!(
            name_of(&prefix, b"/lb/lb1/backends/b-1.x_2").unwrap(),
            "b-1.x_2"
        );
        for bad in [
            &b"/lb/lb1/backends/"[..],
            b"/lb/lb1/backends/a/b",
            b"/lb/lb1/backends/-a",
            b"/lb/lb1/backends/a b",
            b"/lb/lb1/backends/\xff",
            b"/lb/lb2/backends/a",
        ] {
            assert!(
                name_of(&prefix, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("{prefix}{}", "a".repeat(64));
        assert!(name_of(&prefix, long.as_bytes()).is_err());
    }

    #[test]
    fn a_put_joins_moves_reports_or_changes_nothing() {
        let was = both("h:1", "h:2", 0, true);
        assert_eq!(
            on_put(None, "b", was.clone()),
            Some(Step::Join("b".into(), was.clone()))
        );
        assert_eq!(on_put(Some(&was), "b", was.clone()), None);
        let busy = both("h:1", "h:2", 5, true);
        assert_eq!(
            on_put(Some(&was), "b", busy.clone()),
            Some(Step::Report("b".into(), busy))
        );
        let moved = both("h:1", "h:3", 0, true);
        assert_eq!(
            on_put(Some(&was), "b", moved.clone()),
            Some(Step::Move("b".into(), moved))
        );
    }

    #[test]
    fn a_listing_adds_the_new_updates_the_changed_and_removes_the_vanished() {
        let held: BTreeMap<String, Announced> = [
            ("gone".to_string(), both("h:1", "h:1", 0, true)),
            ("same".to_string(), both("h:2", "h:2", 0, true)),
            ("busier".to_string(), both("h:3", "h:3", 0, true)),
            ("moved".to_string(), both("h:4", "h:4", 0, true)),
            ("unreadable".to_string(), both("h:5", "h:5", 0, true)),
        ]
        .into();
        let listed: BTreeMap<String, Option<Announced>> = [
            ("same".to_string(), Some(both("h:2", "h:2", 0, true))),
            ("busier".to_string(), Some(both("h:3", "h:3", 9, false))),
            ("moved".to_string(), Some(both("h:4", "h:44", 0, true))),
            ("unreadable".to_string(), None),
            ("new".to_string(), Some(both("h:6", "h:6", 0, true))),
            ("new-but-unreadable".to_string(), None),
        ]
        .into();
        assert_eq!(
            diff(&held, &listed),
            vec![
                Step::Leave("gone".into()),
                Step::Report("busier".into(), both("h:3", "h:3", 9, false)),
                Step::Move("moved".into(), both("h:4", "h:44", 0, true)),
                Step::Join("new".into(), both("h:6", "h:6", 0, true)),
            ]
        );
    }

    #[test]
    fn an_empty_listing_removes_everything_and_an_unchanged_one_nothing() {
        let held: BTreeMap<String, Announced> =
            [("a".to_string(), both("h:1", "h:1", 0, true))].into();
        assert_eq!(diff(&held, &BTreeMap::new()), vec![Step::Leave("a".into())]);
        let same = held
            .iter()
            .map(|(n, a)| (n.clone(), Some(a.clone())))
            .collect();
        assert_eq!(diff(&held, &same), vec![]);
    }

    #[test]
    fn the_balancers_value_names_its_http_address_and_its_grpc_one_if_any() {
        let v: Value = serde_json::from_str(&balancer_value("h:5000", Some("h:50050"))).unwrap();
        assert_eq!(v, serde_json::json!({"http": "h:5000", "grpc": "h:50050"}));
        let v: Value = serde_json::from_str(&balancer_value("h:5000", None)).unwrap();
        assert_eq!(v, serde_json::json!({"http": "h:5000"}));
        assert_eq!(balancers_prefix("x"), "/lb/x/balancers/");
    }

    #[test]
    fn an_unspecified_address_is_given_out_under_the_hosts_name() {
        assert_eq!(
            advertised("0.0.0.0:5000".parse().unwrap(), "lb-1"),
            "lb-1:5000"
        );
        assert_eq!(
            advertised("[::]:5000".parse().unwrap(), "lb-1"),
            "lb-1:5000"
        );
        assert_eq!(
            advertised("127.0.0.1:5000".parse().unwrap(), "lb-1"),
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn retries_wait_100_ms_doubling_up_to_2_s() {
        let waits: Vec<u128> = (0..8).map(|f| backoff(f).as_millis()).collect();
        assert_eq!(waits, [0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(2));
    }
}
