//! The `server` binary's gRPC side: `BackendService.Compute` and `grpc.health.v1`, the
//! load HTTP and gRPC requests share, and the two ways a replica makes itself known
//! for look-aside balancing: registering with a balancer (a fake `LoadBalancer` made
//! here, which records what it is told) and keeping an entry in a real etcd.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use e2e::etcd::{Entry, Etcd};
use e2e::{bin, free_port, poll, request, Reply, Service};
use lb_proto::backend_service_client::BackendServiceClient;
use lb_proto::load_balancer_server::{LoadBalancer, LoadBalancerServer};
use lb_proto::{
    BalanceRequest, LoadResponse, RegisterResponse, ServerInfo, ServerLoad, TaskRequest,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SOON: Duration = Duration::from_secs(10);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A `server` with gRPC on a known port.
struct Replica {
    service: Service,
    /// gRPC `127.0.0.1:PORT`
    grpc: String,
    /// HTTP `127.0.0.1:PORT`
    http: String,
}

fn replica(extra: &[&str]) -> Replica {
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--listen", "127.0.0.1:0", "--grpc-listen", &grpc];
    args.extend_from_slice(extra);
    let service = Service::start(bin("server"), &args, &[("RUST_LOG", "warn")]);
    let http = service.base.trim_start_matches("http://").to_string();
    Replica {
        service,
        grpc,
        http,
    }
}

impl Replica {
    fn compute_client(&self, rt: &Runtime) -> BackendServiceClient<Channel> {
        rt.block_on(BackendServiceClient::connect(format!(
            "http://{}",
            self.grpc
        )))
        .expect("a gRPC connection")
    }

    /// A `GET /home` held `ms` in the replica, on a thread of its own.
    fn slow_request(&self, ms: u64) -> JoinHandle<Result<Reply, String>> {
        let url = format!("{}/home?delay_ms={ms}", self.service.base);
        std::thread::spawn(move || request("GET", &url, &[], None))
    }

    fn heartbeat_load(&self) -> Option<String> {
        self.service
            .get("/heartbeat")
            .header("X-Load")
            .map(str::to_string)
    }
}

fn compute(
    rt: &Runtime,
    client: &mut BackendServiceClient<Channel>,
    task: &str,
) -> Result<String, Status> {
    let task = TaskRequest { task: task.into() };
    rt.block_on(client.compute(task))
        .map(|r| r.into_inner().result)
}

#[test]
fn compute_over_grpc_gives_fibonacci_and_refuses_a_bad_task() {
    let rt = runtime();
    let r = replica(&[]);
    let mut client = r.compute_client(&rt);
    for (task, fib) in [("20", "6765"), ("0", "0"), ("1", "1"), ("30", "832040")] {
        assert_eq!(compute(&rt, &mut client, task).unwrap(), fib, "fib({task})");
    }
    for bad in ["x", "41", "-1", "", "2.5", " 20"] {
        let e = compute(&rt, &mut client, bad).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e}");
        assert!(
            e.message().contains("from 0 to 40"),
            "{bad:?}: {}",
            e.message()
        );
    }
}

#[test]
fn grpc_health_says_serving_for_the_server_and_for_compute() {
    let rt = runtime();
    let r = replica(&[]);
    let channel = rt
        .block_on(
            Channel::from_shared(format!("http://{}", r.grpc))
                .unwrap()
                .connect(),
        )
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "loadbalancer.BackendService"] {
        let asked = HealthCheckRequest {
            service: service.into(),
        };
        let status = rt
            .block_on(health.check(asked))
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[test]
fn the_grpc_address_is_printed_before_the_http_one_when_both_ports_are_0() {
    let rt = runtime();
    let mut child = Command::new(bin("server"))
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let grpc = first
        .strip_prefix("grpc listening on http://")
        .unwrap_or_else(|| panic!("first line: {first:?}"));
    let http = second
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("second line: {second:?}"));
    assert_ne!(grpc, http);
    assert!(!grpc.ends_with(":0") && !http.ends_with(":0"));
    let mut client = rt
        .block_on(BackendServiceClient::connect(format!("http://{grpc}")))
        .unwrap();
    assert_eq!(compute(&rt, &mut client, "10").unwrap(), "55");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn registering_with_a_balancer_or_etcd_needs_grpc_listen() {
    for flag in ["--register-with", "--etcd-endpoints"] {
        let out = Command::new(bin("server"))
            .args(["--listen", "127.0.0.1:0", flag, "127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("--grpc-listen"), "{flag}: {said}");
    }
}

#[test]
fn grpc_and_http_requests_count_in_one_load_and_one_max_concurrent() {
    let rt = runtime();
    let r = replica(&["--max-concurrent", "1"]);
    let mut client = r.compute_client(&rt);
    // An HTTP request in flight fills the replica for gRPC too...
    let slow = r.slow_request(1500);
    poll("the HTTP request in flight", SOON, || {
        (r.heartbeat_load().as_deref() == Some("1")).then_some(())
    });
    let refused = compute(&rt, &mut client, "5").unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    // ...and a computation in flight counts for HTTP.
    let mut other = client.clone();
    let computing = rt.spawn(async move { other.compute(TaskRequest { task: "39".into() }).await });
    poll("the computation in flight", SOON, || {
        (r.heartbeat_load().as_deref() == Some("1")).then_some(())
    });
    assert_eq!(r.service.get("/home").status, 503);
    let fib39 = rt.block_on(computing).unwrap().unwrap().into_inner().result;
    assert_eq!(fib39, "63245986");
    assert_eq!(r.heartbeat_load().as_deref(), Some("0"));
    assert_eq!(compute(&rt, &mut client, "5").unwrap(), "5");
}

/// What the fake balancer was told, in order.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Register(ServerInfo),
    Report(ServerLoad),
    Deregister(ServerInfo),
}

/// A `LoadBalancer` that records its calls and, like ours, answers `NOT_FOUND` to a
/// report from a backend it does not know.
#[derive(Debug, Clone, Default)]
struct FakeBalancer {
    calls: Arc<Mutex<Vec<Call>>>,
    known: Arc<Mutex<HashSet<String>>>,
}

impl FakeBalancer {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn reports(&self) -> Vec<ServerLoad> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Report(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    fn registrations(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Register(_)))
            .count()
    }

    /// Forgets every backend, as a restarted balancer would.
    fn forget(&self) {
        self.known.lock().unwrap().clear();
    }
}

#[tonic::async_trait]
impl LoadBalancer for FakeBalancer {
    async fn register_server(
        &self,
        request: Request<ServerInfo>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let info = request.into_inner();
        self.known.lock().unwrap().insert(info.address.clone());
        self.record(Call::Register(info));
        Ok(Response::new(RegisterResponse {
            message: "registered".into(),
        }))
    }

    async fn report_load(
        &self,
        request: Request<ServerLoad>,
    ) -> Result<Response<LoadResponse>, Status> {
        let load = request.into_inner();
        let known = self.known.lock().unwrap().contains(&load.address);
        self.record(Call::Report(load));
        if !known {
            return Err(Status::not_found("unknown backend: register first"));
        }
        Ok(Response::new(LoadResponse {
            message: "ok".into(),
        }))
    }

    async fn get_best_server(
        &self,
        _: Request<BalanceRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn deregister_server(
        &self,
        request: Request<ServerInfo>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let info = request.into_inner();
        self.known.lock().unwrap().remove(&info.address);
        self.record(Call::Deregister(info));
        Ok(Response::new(RegisterResponse {
            message: "deregistered".into(),
        }))
    }
}

/// The fake serving on a port, until stopped.
struct Serving {
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn serve(rt: &Runtime, port: u16, fake: &FakeBalancer) -> Serving {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("the fake balancer's port");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(LoadBalancerServer::new(fake.clone()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stopped.await;
        });
    Serving {
        shutdown,
        task: rt.spawn(server),
    }
}

impl Serving {
    fn stop(self, rt: &Runtime) {
        let _ = self.shutdown.send(());
        rt.block_on(async { tokio::time::timeout(SOON, self.task).await })
            .expect("the fake balancer stopped")
            .unwrap()
            .unwrap();
    }
}

fn register_with(port: u16, name: &str, extra: &[&str]) -> Replica {
    let balancer = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--server-id",
        name,
        "--register-with",
        &balancer,
        "--report-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    replica(&args)
}

#[test]
fn a_replica_registers_reports_its_load_periodically_and_deregisters_on_sigterm() {
    let rt = runtime();
    let port = free_port();
    let fake = FakeBalancer::default();
    let serving = serve(&rt, port, &fake);
    let mut r = register_with(port, "r1", &[]);
    let me = ServerInfo {
        address: r.grpc.clone(),
        name: "r1".into(),
        http_address: r.http.clone(),
    };
    poll("a first report", SOON, || {
        (!fake.reports().is_empty()).then_some(())
    });
    assert_eq!(fake.calls()[0], Call::Register(me.clone()));
    // Every 100 ms, while idle: load 0 and available.
    let before = fake.reports().len();
    std::thread::sleep(Duration::from_secs(1));
    let idle = fake.reports();
    assert!(
        (5..=20).contains(&(idle.len() - before)),
        "{} reports in 1 s",
        idle.len() - before
    );
    for report in &idle {
        assert_eq!(report.address, me.address);
        assert_eq!((report.load, report.available), (0, true));
    }
    // A request in flight shows in the next reports, and goes from them after.
    let slow = r.slow_request(1000);
    poll("a report of load 1", SOON, || {
        fake.reports().iter().any(|l| l.load == 1).then_some(())
    });
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    let after = fake.reports().len();
    poll("a report of load 0 again", SOON, || {
        fake.reports()[after..]
            .iter()
            .any(|l| l.load == 0)
            .then_some(())
    });
    assert_eq!(fake.registrations(), 1);
    let status = r
        .service
        .stop_with(Signal::SIGTERM, SOON)
        .expect("it exits");
    assert!(status.success(), "{status}");
    assert_eq!(fake.calls().last(), Some(&Call::Deregister(me)));
    serving.stop(&rt);
}

#[test]
fn a_replica_registers_again_when_the_balancer_forgets_it_or_comes_back() {
    let rt = runtime();
    let port = free_port();
    let fake = FakeBalancer::default();
    let serving = serve(&rt, port, &fake);
    let r = register_with(port, "r2", &[]);
    poll("a first report", SOON, || {
        (!fake.reports().is_empty()).then_some(())
    });
    // A report answered NOT_FOUND: registers again, then reports.
    fake.forget();
    poll("a second registration", SOON, || {
        (fake.registrations() == 2).then_some(())
    });
    let calls = fake.calls();
    let again = calls.iter().rposition(|c| matches!(c, Call::Register(_)));
    assert!(
        matches!(&calls[again.unwrap() - 1], Call::Report(l) if l.address == r.grpc),
        "{calls:?}"
    );
    // The balancer goes down: the replica keeps serving, and registers first when
    // the balancer is back.
    serving.stop(&rt);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(r.service.get("/heartbeat").status, 200);
    fake.forget();
    let back_from = fake.calls().len();
    let serving = serve(&rt, port, &fake);
    poll("a registration after the balancer came back", SOON, || {
        (!fake.reports().is_empty() && fake.calls().len() > back_from + 1).then_some(())
    });
    assert!(
        matches!(&fake.calls()[back_from], Call::Register(i) if i.address == r.grpc),
        "{:?}",
        &fake.calls()[back_from..]
    );
    poll("reports after it", SOON, || {
        matches!(fake.calls().last(), Some(Call::Report(_))).then_some(())
    });
    drop(r);
    serving.stop(&rt);
}

#[test]
fn a_replica_advertises_the_addresses_it_is_given() {
    let rt = runtime();
    let port = free_port();
    let fake = FakeBalancer::default();
    let serving = serve(&rt, port, &fake);
    let advertised = [
        "--advertise-grpc",
        "backend-7.internal:7007",
        "--advertise-http",
        "backend-7.internal:8007",
    ];
    let r = register_with(port, "r7", &advertised);
    poll("a first report", SOON, || {
        (!fake.reports().is_empty()).then_some(())
    });
    let me = ServerInfo {
        address: "backend-7.internal:7007".into(),
        name: "r7".into(),
        http_address: "backend-7.internal:8007".into(),
    };
    assert_eq!(fake.calls()[0], Call::Register(me));
    assert_eq!(fake.reports()[0].address, "backend-7.internal:7007");
    drop(r);
    serving.stop(&rt);
}

const PREFIX: &str = "/lb/e2e";
const TTL: Duration = Duration::from_secs(2);

fn in_etcd(etcd: &Etcd, name: &str) -> Replica {
    let endpoint = etcd.endpoint();
    replica(&[
        "--server-id",
        name,
        "--etcd-endpoints",
        &endpoint,
        "--etcd-prefix",
        PREFIX,
        "--etcd-ttl",
        "2s",
        "--report-interval",
        "100ms",
    ])
}

fn key(name: &str) -> String {
    format!("{PREFIX}/backends/{name}")
}

fn value(entry: &Entry) -> Value {
    serde_json::from_str(&entry.value).unwrap_or_else(|e| panic!("{entry:?}: {e}"))
}

#[test]
fn a_replica_keeps_its_entry_in_etcd_with_its_load_and_removes_it_on_sigterm() {
    let etcd = Etcd::start();
    let mut r = in_etcd(&etcd, "e1");
    let first = poll("the entry", SOON, || etcd.get(&key("e1")));
    assert_eq!(
        value(&first),
        json!({"address": r.grpc, "http_address": r.http, "load": 0, "available": true})
    );
    assert_ne!(first.lease, 0, "written under a lease");
    // The load changes, under the same lease.
    let slow = r.slow_request(1000);
    let busy = poll("load 1 in the entry", SOON, || {
        etcd.get(&key("e1")).filter(|e| value(e)["load"] == 1)
    });
    assert_eq!(busy.lease, first.lease);
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    poll("load 0 in the entry again", SOON, || {
        etcd.get(&key("e1")).filter(|e| value(e)["load"] == 0)
    });
    // Kept alive past its TTL.
    std::thread::sleep(TTL + Duration::from_millis(500));
    assert_eq!(etcd.get(&key("e1")).map(|e| e.lease), Some(first.lease));
    // SIGTERM revokes the lease before the replica exits: the entry is gone at once.
    let status = r
        .service
        .stop_with(Signal::SIGTERM, SOON)
        .expect("it exits");
    assert!(status.success(), "{status}");
    assert_eq!(etcd.get(&key("e1")), None);
    assert!(etcd.list(PREFIX).is_empty());
}

#[test]
fn a_killed_replicas_entry_expires_within_its_ttl() {
    let etcd = Etcd::start();
    let mut r = in_etcd(&etcd, "e2");
    poll("the entry", SOON, || etcd.get(&key("e2")));
    r.service.stop_with(Signal::SIGKILL, SOON).expect("it dies");
    let killed = Instant::now();
    assert!(
        etcd.get(&key("e2")).is_some(),
        "not revoked by a dead replica"
    );
    poll("the entry to expire", TTL * 3, || {
        etcd.get(&key("e2")).is_none().then_some(())
    });
    // Its last keep-alive was at most a third of the TTL before; etcd checks expiry
    // every 500 ms.
    let gone = killed.elapsed();
    assert!(
        gone <= TTL + Duration::from_secs(1),
        "expired after {gone:?}"
    );
}

#[test]
fn a_replica_writes_its_entry_again_under_a_new_lease_when_etcd_comes_back() {
    let mut etcd = Etcd::start();
    let r = in_etcd(&etcd, "e3");
    let before = poll("the entry", SOON, || etcd.get(&key("e3")));
    etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(r.service.get("/heartbeat").status, 200, "serving meanwhile");
    etcd.restart();
    let after = poll("the entry under a new lease", SOON * 2, || {
        etcd.get(&key("e3")).filter(|e| e.lease != before.lease)
    });
    assert_eq!(value(&after), value(&before));
    // The new lease is kept alive: the entry outlives the old one's TTL.
    std::thread::sleep(TTL + Duration::from_millis(500));
    assert_eq!(etcd.get(&key("e3")).map(|e| e.lease), Some(after.lease));
}
