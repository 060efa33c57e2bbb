//! Discovery through etcd, end to end: a real etcd, the real balancer with
//! `--discovery etcd` over one fixed backend (`--runtime static`, round-robin), and
//! real `server`s keeping their entries under `/lb/<instance>/backends/`.
//!
//! The times measured are printed (`cargo test -- --nocapture` shows them).

use std::time::{Duration, Instant};

use e2e::etcd::Etcd;
use e2e::{bin, free_port, replicas, wait_healthy, Service};
use lb_proto::load_balancer_client::LoadBalancerClient;
use lb_proto::{BalanceRequest, LoadBalanceStrategy};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The replicas' lease (`--etcd-ttl`).
const TTL: Duration = Duration::from_secs(2);
/// How long a backend whose key appeared may take to serve traffic.
const ROUTABLE: Duration = Duration::from_secs(5);
/// What etcd adds to a TTL before a key expires: it checks leases every 500 ms.
const MARGIN: Duration = Duration::from_millis(1500);
const SOON: Duration = Duration::from_secs(10);

/// The fixed backend's name.
const FIXED: &str = "S0";

/// A unique `--instance` for a test.
fn instance(tag: &str) -> String {
    format!("e2e-{tag}-{}", std::process::id())
}

/// The balancer and its look-aside address, over one fixed backend (kept alive with
/// it), finding further backends in `etcd` under `/lb/<instance>`.
struct Balancer {
    lb: Service,
    grpc: String,
    fixed: Service,
}

fn balancer(etcd: &Etcd, instance: &str) -> Balancer {
    let fixed = Service::start(
        bin("server"),
        &["--listen", "127.0.0.1:0", "--server-id", FIXED],
        &[("RUST_LOG", "warn")],
    );
    let backend = format!("{FIXED}={}", fixed.base.trim_start_matches("http://"));
    let grpc = format!("127.0.0.1:{}", free_port());
    let endpoint = etcd.endpoint();
    let lb = Service::start(
        bin("load_balancer"),
        &[
            "--runtime",
            "static",
            "--backend",
            &backend,
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            &grpc,
            "--workers",
            "2",
            "--policy",
            "round-robin",
            "--discovery",
            "etcd",
            "--etcd-endpoints",
            &endpoint,
            "--instance",
            instance,
        ],
        &[("RUST_LOG", "warn")],
    );
    wait_healthy(&lb, 1, SOON);
    Balancer { lb, grpc, fixed }
}

/// A `server` named `name` keeping its entry in `etcd` under `/lb/<instance>`.
fn backend(etcd: &Etcd, instance: &str, name: &str) -> Service {
    let endpoint = etcd.endpoint();
    let prefix = format!("/lb/{instance}");
    Service::start(
        bin("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--server-id",
            name,
            "--etcd-endpoints",
            &endpoint,
            "--etcd-prefix",
            &prefix,
            "--etcd-ttl",
            "2s",
        ],
        &[("RUST_LOG", "warn")],
    )
}

fn backend_key(instance: &str, name: &str) -> String {
    format!("/lb/{instance}/backends/{name}")
}

/// Calls `check` every 2 ms until it gives something, or panics after `within`;
/// what it gave and when.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> (T, Instant) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return (v, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends `GET /home` through the balancer until `name` answers one; when it did.
fn served_by(lb: &Service, name: &str, within: Duration) -> Instant {
    wait_for(&format!("{name} to serve a request"), within, || {
        let r = lb.try_send("GET", "/home", &[], None).ok()?;
        (r.status == 200 && r.header("x-served-by") == Some(name)).then_some(())
    })
    .1
}

/// Who served each of `n` requests.
fn served(lb: &Service, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = lb.get("/home");
            assert_eq!(r.status, 200, "{}", r.body);
            r.header("x-served-by").expect("X-Served-By").to_string()
        })
        .collect()
}

/// The replica called `name` in `/status`, if it is there.
fn in_status(lb: &Service, name: &str) -> Option<Value> {
    replicas(lb).into_iter().find(|r| r["hostname"] == name)
}

fn names(lb: &Service) -> Vec<String> {
    let mut names: Vec<String> = replicas(lb)
        .iter()
        .map(|r| r["hostname"].as_str().expect("a hostname").to_string())
        .collect();
    names.sort();
    names
}

/// What the look-aside service answers for round-robin.
fn best_server(grpc: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut c = LoadBalancerClient::connect(format!("http://{grpc}"))
            .await
            .expect("the look-aside port answers");
        c.get_best_server(BalanceRequest {
            strategy: LoadBalanceStrategy::RoundRobin as i32,
            key: None,
        })
        .await
        .expect("a best server")
        .into_inner()
        .address
    })
}

#[test]
fn a_backend_that_registers_in_etcd_is_routed_to_and_leaves_within_its_ttl_when_killed() {
    let etcd = Etcd::start();
    let inst = instance("join");
    let b = balancer(&etcd, &inst);
    let mut b1 = backend(&etcd, &inst, "b1");
    let key = backend_key(&inst, "b1");
    let (entry, registered) = wait_for("b1's key", SOON, || etcd.get(&key));
    let routable = served_by(&b.lb, "b1", ROUTABLE) - registered;
    println!("etcd discovery: registration to routable in {routable:?}");

    let value: Value = serde_json::from_str(&entry.value).expect("JSON");
    let status = in_status(&b.lb, "b1").expect("b1 in /status");
    assert_eq!(status["source"], "discovered");
    assert_eq!(status["state"], "healthy");
    assert_eq!(status["address"], value["http_address"]);
    assert_eq!(status["grpc_address"], value["address"]);
    assert_eq!(status["address"], b1.base.trim_start_matches("http://"));
    // Round-robin takes turns between the fixed backend and the one found.
    let turns = served(&b.lb, 4);
    assert_eq!(turns.iter().filter(|s| *s == "b1").count(), 2, "{turns:?}");
    // Only b1 serves gRPC: look-aside clients are sent to it.
    assert_eq!(Value::from(best_server(&b.grpc)), value["address"]);

    b1.stop_with(Signal::SIGKILL, SOON).expect("b1 dies");
    let killed = Instant::now();
    let mut expired = None;
    let ((), gone) = wait_for("b1 to leave /status", TTL + MARGIN, || {
        if expired.is_none() && etcd.get(&key).is_none() {
            expired = Some(Instant::now());
        }
        in_status(&b.lb, "b1").is_none().then_some(())
    });
    let expired = expired.unwrap_or(gone);
    println!(
        "etcd discovery: killed to expired {:?}, expired to gone from /status {:?}, killed to gone {:?} (TTL {TTL:?})",
        expired - killed,
        gone.saturating_duration_since(expired),
        gone - killed
    );
    assert_eq!(names(&b.lb), [FIXED]);
    assert!(served(&b.lb, 4).iter().all(|s| s == FIXED));
}

#[test]
fn keys_with_a_bad_value_or_name_or_a_name_in_use_are_ignored() {
    let etcd = Etcd::start();
    let inst = instance("bad");
    let b = balancer(&etcd, &inst);
    let prefix = format!("/lb/{inst}/backends");
    let http = b.fixed.base.trim_start_matches("http://").to_string();
    etcd.put(&format!("{prefix}/junk"), "not json");
    etcd.put(
        &format!("{prefix}/nowhere"),
        r#"{"http_address": "no-port"}"#,
    );
    etcd.put(
        &format!("{prefix}/a/b"),
        &format!(r#"{{"http_address": "{http}"}}"#),
    );
    etcd.put(
        &format!("{prefix}/-x"),
        &format!(r#"{{"http_address": "{http}"}}"#),
    );
    // The fixed backend's name, claimed by the runtime's source.
    etcd.put(
        &format!("{prefix}/{FIXED}"),
        r#"{"http_address": "127.0.0.1:9"}"#,
    );
    // A good key written by hand after them: once it is routable, the others have
    // been seen too.
    let good = format!("{prefix}/by-hand");
    etcd.put(&good, &format!(r#"{{"http_address": "{http}"}}"#));
    wait_for("by-hand in /status", SOON, || in_status(&b.lb, "by-hand"));
    assert_eq!(names(&b.lb), ["S0", "by-hand"]);
    assert_eq!(in_status(&b.lb, FIXED).expect("S0")["source"], "managed");
    assert_eq!(
        in_status(&b.lb, FIXED).expect("S0")["address"].as_str(),
        Some(http.as_str())
    );
    // A good value for a key that was bad joins; a bad value for a key that was good
    // changes nothing.
    etcd.put(
        &format!("{prefix}/junk"),
        &format!(r#"{{"http_address": "{http}"}}"#),
    );
    wait_for("junk in /status", SOON, || in_status(&b.lb, "junk"));
    etcd.put(&good, "{broken");
    etcd.delete(&format!("{prefix}/junk"));
    wait_for("junk to leave", SOON, || {
        in_status(&b.lb, "junk").is_none().then_some(())
    });
    assert_eq!(names(&b.lb), ["S0", "by-hand"]);
    // A key without a lease leaves when it is deleted.
    etcd.delete(&good);
    wait_for("by-hand to leave", SOON, || {
        in_status(&b.lb, "by-hand").is_none().then_some(())
    });
    assert_eq!(b.lb.get("/heartbeat").status, 200);
    assert_eq!(names(&b.lb), [FIXED]);
}

#[test]
fn the_balancer_keeps_routing_while_etcd_is_down_and_resyncs_when_it_is_back() {
    let mut etcd = Etcd::start();
    let inst = instance("restart");
    let b = balancer(&etcd, &inst);
    let b1 = backend(&etcd, &inst, "b1");
    served_by(&b.lb, "b1", SOON);
    let mut b2 = backend(&etcd, &inst, "b2");
    served_by(&b.lb, "b2", SOON);

    etcd.stop();
    // Longer than the replicas' TTL: what was found stays, etcd being unreachable.
    std::thread::sleep(TTL + Duration::from_millis(500));
    assert_eq!(names(&b.lb), ["S0", "b1", "b2"]);
    served_by(&b.lb, "b1", SOON);
    // b2 dies while etcd is down; its lease says so once etcd is back.
    b2.stop_with(Signal::SIGKILL, SOON).expect("b2 dies");

    etcd.restart();
    let back = Instant::now();
    let b3 = backend(&etcd, &inst, "b3");
    let (_, registered) = wait_for("b3's key", SOON, || etcd.get(&backend_key(&inst, "b3")));
    let routable = served_by(&b.lb, "b3", SOON);
    println!(
        "etcd discovery: etcd back to b3 routable in {:?} (b3 registered to routable {:?})",
        routable - back,
        routable - registered
    );
    let ((), gone) = wait_for("b2 to leave after etcd is back", SOON, || {
        in_status(&b.lb, "b2").is_none().then_some(())
    });
    println!(
        "etcd discovery: etcd back to the dead b2 gone in {:?}",
        gone - back
    );
    assert_eq!(names(&b.lb), ["S0", "b1", "b3"]);
    served_by(&b.lb, "b1", SOON);
    drop((b1, b3));
}

#[test]
fn a_balancer_started_while_etcd_is_down_finds_the_backends_once_it_is_up() {
    let mut etcd = Etcd::start();
    let inst = instance("late");
    let _b1 = backend(&etcd, &inst, "b1");
    wait_for("b1's key", SOON, || etcd.get(&backend_key(&inst, "b1")));
    etcd.stop();
    let b = balancer(&etcd, &inst);
    assert_eq!(served(&b.lb, 2), [FIXED, FIXED]);
    etcd.restart();
    let back = Instant::now();
    let routable = served_by(&b.lb, "b1", SOON);
    println!(
        "etcd discovery: etcd up to b1 routable in {:?}",
        routable - back
    );
    // Its own entry is written again after the listing, so it may come a moment later.
    let prefix = format!("/lb/{inst}/balancers/");
    let (list, _) = wait_for("the balancer's own entry", SOON, || {
        let list = etcd.list(&prefix);
        (!list.is_empty()).then_some(list)
    });
    assert_eq!(list.len(), 1, "{list:?}");
}

#[test]
fn the_balancers_own_entry_is_there_while_it_runs_and_gone_after_sigterm() {
    let etcd = Etcd::start();
    let inst = instance("own");
    let mut b = balancer(&etcd, &inst);
    let prefix = format!("/lb/{inst}/balancers/");
    let (list, _) = wait_for("the balancer's entry", SOON, || {
        Some(etcd.list(&prefix)).filter(|l| !l.is_empty())
    });
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    let id = entry.key.strip_prefix(&prefix).expect("under the prefix");
    assert!(id.ends_with(&format!("-{}", b.lb.pid())), "{id}");
    assert_ne!(entry.lease, 0, "under a lease");
    let value: Value = serde_json::from_str(&entry.value).expect("JSON");
    assert_eq!(
        value,
        serde_json::json!({"http": b.lb.base.trim_start_matches("http://"), "grpc": b.grpc})
    );
    // Kept alive past its 10 s TTL? That takes long; one keep-alive period (TTL/3)
    // and a bit is enough to see the same lease still there.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(etcd.get(&entry.key).map(|e| e.lease), Some(entry.lease));
    let status = b.lb.stop_with(Signal::SIGTERM, SOON).expect("it exits");
    assert!(status.success(), "{status}");
    assert!(etcd.list(&prefix).is_empty(), "revoked on the way out");
}
