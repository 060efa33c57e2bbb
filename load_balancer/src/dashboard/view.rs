//! One `state` event of the dashboard's stream: the snapshot, the figures over time,
//! the ring and the load test, as JSON. Pure.

use std::time::Instant;

use serde_json::{json, Value};

use super::figures::{History, Window};
use crate::api::replica_status;
use crate::loadtest::tally::Report;
use crate::snapshot::Snapshot;

/// What else the state shows besides the snapshot and its figures.
pub struct Context<'a> {
    pub runtime: &'a str,
    /// Whether acting needs the admin token.
    pub auth_required: bool,
    /// The ring view of this snapshot, already serialized.
    pub ring: &'a Value,
    pub loadtest: Option<&'a Report>,
    /// Unix time, in milliseconds.
    pub time_ms: u64,
}

/// The `state` event's data.
pub fn state(snap: &Snapshot, history: &History, cx: &Context<'_>, now: Instant) -> Value {
    let replicas: Vec<Value> = snap
        .replicas
        .iter()
        .map(|r| {
            let mut v = replica_status(snap, r, now);
            let figures = window_json(history.replica(&r.hostname));
            if let (Some(map), Value::Object(f)) = (v.as_object_mut(), figures) {
                map.extend(f);
            }
            v
        })
        .collect();
    let in_flight: usize = snap.figures.iter().map(|b| b.load()).sum();
    let mut totals = window_json(Some(history.totals()));
    totals["in_flight"] = json!(in_flight);
    json!({
        "seq": history.seq(),
        "time_ms": cx.time_ms,
        "runtime": cx.runtime,
        "auth_required": cx.auth_required,
        "policy": snap.settings.view(),
        "replicas": replicas,
        "totals": totals,
        "sample": history.latest(),
        "ring": cx.ring,
        "loadtest": cx.loadtest,
    })
}

/// A replica without figures (down, starting) shows nulls and no traffic.
fn window_json(w: Option<Window>) -> Value {
    match w {
        Some(w) => json!(w),
        None => json!({
            "rps": 0.0, "p50_ms": null, "p99_ms": null, "success_rate": null,
            "requests": null, "errors": null,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::figures::Reading;
    use crate::metrics::Metrics;
    use crate::snapshot::testing::snapshot_in;

    #[test]
    fn the_state_has_every_replica_with_its_figures_the_policy_and_the_totals() {
        let metrics = Metrics::new();
        let snap = snapshot_in("quadratic", &[1, 2], &metrics);
        let counters = snap.figures[0].counters.clone();
        let mut history = History::default();
        let read = |at_ms| Reading {
            at_ms,
            ..crate::dashboard::feed::read(&metrics, &snap)
        };
        history.push(read(0));
        for _ in 0..4 {
            counters.response(200);
            counters.observe(std::time::Duration::from_millis(3));
        }
        history.push(read(1000));
        let ring = json!({"kind": "ring"});
        let cx = Context {
            runtime: "process",
            auth_required: true,
            ring: &ring,
            loadtest: None,
            time_ms: 1000,
        };
        let v = state(&snap, &history, &cx, Instant::now());
        assert_eq!(v["seq"], 1);
        assert_eq!(v["policy"]["policy"], "quadratic");
        assert_eq!(v["auth_required"], true);
        assert_eq!(v["ring"]["kind"], "ring");
        assert_eq!(v["loadtest"], Value::Null);
        let s1 = &v["replicas"][0];
        assert_eq!(
            (s1["hostname"].as_str(), s1["state"].as_str()),
            (Some("Server1"), Some("healthy"))
        );
        assert_eq!(
            (s1["rps"].as_f64(), s1["requests"].as_u64()),
            (Some(4.0), Some(4))
        );
        let p50 = s1["p50_ms"].as_f64().unwrap();
        assert!((2.0..=5.0).contains(&p50), "{p50}");
        assert_eq!(s1["success_rate"], 1.0);
        assert_eq!(v["replicas"][1]["rps"], 0.0);
        assert_eq!(v["totals"]["requests"], 4);
        assert_eq!(v["totals"]["in_flight"], 0);
        assert_eq!(v["sample"]["rps"]["Server1"], 4.0);
    }
}
