//! Look-aside balancing through the real balancer: a client generated from the
//! seeds' proto text alone registers backends, reports their load and asks for the
//! best server; real servers register themselves over gRPC and HTTP.

use std::time::{Duration, Instant};

use e2e::seed::backend_service_client::BackendServiceClient;
use e2e::seed::load_balancer_client::LoadBalancerClient;
use e2e::seed::{BalanceRequest, LoadBalanceStrategy, ServerInfo, ServerLoad, TaskRequest};
use e2e::{bin, free_port, poll, process_balancer, replicas, Service};
use nix::sys::signal::Signal;
use tonic::transport::Channel;
use tonic::Code;

/// A balancer with no managed replica and its look-aside port.
fn balancer(extra: &[&str]) -> (Service, String) {
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--grpc-listen", grpc.as_str(), "--registration-ttl", "1s"];
    args.extend_from_slice(extra);
    (process_balancer(&args), grpc)
}

async fn client(grpc: &str) -> LoadBalancerClient<Channel> {
    LoadBalancerClient::connect(format!("http://{grpc}"))
        .await
        .expect("the look-aside port answers")
}

async fn register(c: &mut LoadBalancerClient<Channel>, address: &str) {
    c.register_server(ServerInfo {
        address: address.into(),
    })
    .await
    .expect("registered");
}

async fn report(c: &mut LoadBalancerClient<Channel>, address: &str, load: i32, available: bool) {
    c.report_load(ServerLoad {
        address: address.into(),
        load,
        available,
    })
    .await
    .expect("reported");
}

async fn best(c: &mut LoadBalancerClient<Channel>, strategy: LoadBalanceStrategy) -> String {
    c.get_best_server(BalanceRequest {
        strategy: strategy as i32,
    })
    .await
    .expect("a best server")
    .into_inner()
    .address
}

const A: &str = "127.0.0.1:61001";
const B: &str = "127.0.0.1:61002";
const C: &str = "127.0.0.1:61003";

#[tokio::test(flavor = "multi_thread")]
async fn each_seed_strategy_answers_as_defined() {
    let (_lb, grpc) = balancer(&["--replicas", "0"]);
    let mut c = client(&grpc).await;
    for (address, load) in [(A, 5), (B, 1), (C, 3)] {
        register(&mut c, address).await;
        report(&mut c, address, load, true).await;
    }
    for _ in 0..5 {
        assert_eq!(best(&mut c, LoadBalanceStrategy::PickFirst).await, A);
        assert_eq!(best(&mut c, LoadBalanceStrategy::LeastLoad).await, B);
    }
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(best(&mut c, LoadBalanceStrategy::RoundRobin).await);
    }
    assert_eq!(turns[..3], turns[3..], "round-robin cycles: {turns:?}");
    let mut cycle = turns[..3].to_vec();
    cycle.sort();
    assert_eq!(cycle, [A, B, C]);
    // A lower report moves least-load at once.
    report(&mut c, C, 0, true).await;
    assert_eq!(best(&mut c, LoadBalanceStrategy::LeastLoad).await, C);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_reporting_unavailable_is_never_returned() {
    let (_lb, grpc) = balancer(&["--replicas", "0"]);
    let mut c = client(&grpc).await;
    for address in [A, B] {
        register(&mut c, address).await;
        report(&mut c, address, 0, true).await;
    }
    report(&mut c, A, 0, false).await;
    for strategy in [
        LoadBalanceStrategy::PickFirst,
        LoadBalanceStrategy::RoundRobin,
        LoadBalanceStrategy::LeastLoad,
    ] {
        for _ in 0..10 {
            assert_eq!(best(&mut c, strategy).await, B, "{strategy:?}");
        }
    }
    report(&mut c, B, 0, false).await;
    let none = c
        .get_best_server(BalanceRequest { strategy: 0 })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unavailable, "{none:?}");
    report(&mut c, A, 0, true).await;
    assert_eq!(best(&mut c, LoadBalanceStrategy::PickFirst).await, A);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_stops_reporting_disappears() {
    let (lb, grpc) = balancer(&["--replicas", "0"]);
    let mut c = client(&grpc).await;
    for address in [A, B] {
        register(&mut c, address).await;
    }
    // B keeps reporting; A falls silent.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        report(&mut c, B, 0, true).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<String> = replicas(&lb)
        .iter()
        .filter_map(|r| r["grpc_address"].as_str().map(String::from))
        .collect();
    assert_eq!(left, [B]);
    for _ in 0..5 {
        assert_eq!(best(&mut c, LoadBalanceStrategy::PickFirst).await, B);
    }
    let stale = c
        .report_load(ServerLoad {
            address: A.into(),
            load: 1,
            available: true,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::NotFound, "{stale:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_grpc_error_and_changes_nothing() {
    let (lb, grpc) = balancer(&["--replicas", "0"]);
    let mut c = client(&grpc).await;
    for address in ["nowhere", "127.0.0.1:0", "", "a b:80"] {
        let e = c
            .register_server(ServerInfo {
                address: address.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{address}: {e:?}");
    }
    assert!(replicas(&lb).is_empty());
    register(&mut c, A).await;
    report(&mut c, A, 4, true).await;
    let e = c
        .report_load(ServerLoad {
            address: A.into(),
            load: -1,
            available: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let figures = replicas(&lb);
    assert_eq!(figures[0]["reported_load"], 4);
    assert_eq!(figures[0]["available"], true);
    let e = c
        .get_best_server(BalanceRequest { strategy: 99 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_replicas_are_answered_and_compute_on_the_answer() {
    let (lb, grpc) = balancer(&["--replicas", "2"]);
    let mut c = client(&grpc).await;
    let managed: Vec<String> = replicas(&lb)
        .iter()
        .map(|r| {
            r["grpc_address"]
                .as_str()
                .expect("a gRPC address")
                .to_string()
        })
        .collect();
    let answer = best(&mut c, LoadBalanceStrategy::RoundRobin).await;
    assert!(managed.contains(&answer), "{answer} not in {managed:?}");
    let mut backend = BackendServiceClient::connect(format!("http://{answer}"))
        .await
        .expect("the replica serves gRPC");
    let result = backend
        .compute(TaskRequest { task: "20".into() })
        .await
        .expect("computed")
        .into_inner()
        .result;
    assert_eq!(result, "6765");
    for task in ["x", "41"] {
        let e = backend
            .compute(TaskRequest { task: task.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{task}: {e:?}");
    }
}

/// A real server registering itself with `--register-with`.
fn self_registering(name: &str, grpc_lb: &str) -> Service {
    Service::start(
        bin("server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--register-with",
            grpc_lb,
            "--report-interval",
            "200ms",
        ],
        &[("SERVER_ID", name)],
    )
}

fn routable(lb: &Service, name: &str) -> Option<()> {
    (lb.get("/home").header("x-served-by") == Some(name)).then_some(())
}

#[test]
fn a_self_registered_server_is_routed_to_and_leaves_when_it_stops() {
    let (lb, grpc) = balancer(&["--replicas", "0", "--policy", "round-robin"]);
    let started = Instant::now();
    let mut server = self_registering("selfreg1", &grpc);
    poll("selfreg1 to take requests", Duration::from_secs(10), || {
        routable(&lb, "selfreg1")
    });
    eprintln!("start to routable: {:?}", started.elapsed());
    let entry = replicas(&lb).remove(0);
    assert_eq!(entry["source"], "registered");
    assert_eq!(entry["hostname"], "selfreg1");
    // SIGTERM: it deregisters on its way out.
    let stopped = Instant::now();
    server.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    poll("selfreg1 to leave", Duration::from_secs(5), || {
        replicas(&lb).is_empty().then_some(())
    });
    eprintln!("SIGTERM to gone: {:?}", stopped.elapsed());
    // SIGKILL: its reports stop, and it expires.
    let mut killed = self_registering("selfreg2", &grpc);
    poll("selfreg2 to take requests", Duration::from_secs(10), || {
        routable(&lb, "selfreg2")
    });
    let at = Instant::now();
    killed.stop_with(Signal::SIGKILL, Duration::from_secs(5));
    poll("selfreg2 to expire", Duration::from_secs(5), || {
        replicas(&lb).is_empty().then_some(())
    });
    eprintln!("SIGKILL to gone (TTL 1 s): {:?}", at.elapsed());
}

#[test]
fn an_http_backend_registers_with_a_ttl_and_expires_without_renewal() {
    let (lb, _) = balancer(&["--replicas", "0"]);
    let backend = Service::start(
        bin("server"),
        &["--listen", "127.0.0.1:0"],
        &[("SERVER_ID", "web1")],
    );
    let address = backend.base.trim_start_matches("http://").to_string();
    let body = format!(r#"{{"name": "web1", "address": "{address}", "ttl_s": 1.5}}"#);
    let r = lb.send("POST", "/register", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["name"], "web1");
    assert_eq!(routable(&lb, "web1"), Some(()));
    assert_eq!(
        lb.get("/rep").json()["message"]["N"],
        0,
        "/rep lists managed replicas"
    );
    // Renewed, it stays past its first TTL.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(lb.send("POST", "/register", Some(&body)).status, 200);
    }
    assert_eq!(routable(&lb, "web1"), Some(()));
    poll("web1 to expire", Duration::from_secs(5), || {
        replicas(&lb).is_empty().then_some(())
    });
    assert_eq!(lb.get("/home").status, 503);
    for (body, status) in [
        (r#"{"name": "web1"}"#, 404),
        (r#"{"name": 1}"#, 400),
        ("nope", 400),
    ] {
        let r = lb.send("DELETE", "/register", Some(body));
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("<Error> "));
    }
    for bad in [
        r#"{"name": "web1", "address": "nowhere", "ttl_s": 5}"#.to_string(),
        format!(r#"{{"name": "web 1", "address": "{address}"}}"#),
        format!(r#"{{"name": "web1", "address": "{address}", "ttl_s": -1}}"#),
    ] {
        let r = lb.send("POST", "/register", Some(&bad));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    assert!(replicas(&lb).is_empty());
}
