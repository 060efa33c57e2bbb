//! The look-aside client (`loadgen --look-aside`): `clients` tasks each loop on
//! `GetBestServer(strategy)` at the balancer's gRPC service, then `Compute(task)` on
//! the backend it names, as the seeds' clients do, until a request count or a
//! duration runs out. It records each request's latency (both calls) and that of
//! `GetBestServer` alone, the failures by call and gRPC code, and the requests each
//! backend served, by the name `GetBestServer` gave.
//!
//! One channel (an HTTP/2 connection) to the balancer and one per backend address,
//! shared by every client: a backend's channel is opened the first time an answer
//! names it and kept for the rest of the run. A request that fails is not retried:
//! the client counts it and starts its next request at once.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lb_proto::backend_service_client::BackendServiceClient;
use lb_proto::load_balancer_client::LoadBalancerClient;
use lb_proto::{BalanceRequest, LoadBalanceStrategy, TaskRequest};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::loadgen::{self, Latency};

/// What to send, and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// The balancer's gRPC address, `HOST:PORT`.
    pub balancer: String,
    /// What every `GetBestServer` asks for.
    pub strategy: LoadBalanceStrategy,
    /// Where each `Compute`'s N is drawn from, uniformly.
    pub task: RangeInclusive<u64>,
    /// Client loops running at once, so at most this many requests in flight.
    pub clients: usize,
    /// Stop after this many requests (`None`: only the duration bounds the run).
    pub requests: Option<u64>,
    /// Stop after this long (`None`: only the request count bounds the run).
    pub duration: Option<Duration>,
    /// A call slower than this counts as failed (`DEADLINE_EXCEEDED`).
    pub timeout: Duration,
    /// Seed of the tasks drawn, so a run's tasks can be repeated.
    pub seed: u64,
    /// Only `GetBestServer`, no `Compute`: measures the balancer's answer alone.
    pub get_best_only: bool,
    /// Draw a progress bar (only drawn on a terminal anyway).
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The strategy asked for, snake_case (`round_robin`).
    pub strategy: String,
    /// Whether `Compute` was left out (`--get-best-only`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub get_best_only: bool,
    /// Requests finished, whatever their outcome: a `GetBestServer` and, when it
    /// answered, a `Compute`.
    pub requests: u64,
    /// Requests whose calls all succeeded.
    pub ok: u64,
    pub errors: u64,
    /// Failed requests by the call that failed and its gRPC code, e.g.
    /// `"Compute RESOURCE_EXHAUSTED"`, `"GetBestServer UNAVAILABLE"` (a call that
    /// timed out on the client: `DEADLINE_EXCEEDED`).
    pub error_codes: BTreeMap<String, u64>,
    /// Successful requests by the backend name `GetBestServer` answered.
    pub counts: BTreeMap<String, u64>,
    /// Failed `Compute` calls by that name.
    pub failed_by: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Finished requests per second.
    pub throughput: f64,
    /// Of each whole request, `GetBestServer` and `Compute` (failed ones included).
    pub latency_ms: Latency,
    /// Of the successful requests alone.
    #[serde(default)]
    pub ok_latency_ms: Latency,
    /// `GetBestServer` calls made (one per request).
    pub get_best_calls: u64,
    /// Of `GetBestServer` alone.
    pub get_best_ms: Latency,
}

impl Report {
    /// Successful requests per second.
    pub fn goodput(&self) -> f64 {
        self.ok as f64 / self.elapsed_s.max(1e-9)
    }

    /// Failed requests with this gRPC code, whichever call failed.
    pub fn errors_with(&self, code: &str) -> u64 {
        self.error_codes
            .iter()
            .filter(|(k, _)| k.rsplit(' ').next() == Some(code))
            .map(|(_, n)| n)
            .sum()
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served by this backend (or, with `--get-best-only`, this backend named).
    Served(String),
    /// Failed: the error key (`"Compute RESOURCE_EXHAUSTED"`) and, when the failed
    /// call was a `Compute`, the backend it went to.
    Failed(String, Option<String>),
}

/// Per-client tallies, merged at the end so clients never share a lock.
#[derive(Debug, Default)]
pub struct Tally {
    total_us: Vec<u64>,
    ok_us: Vec<u64>,
    get_best_us: Vec<u64>,
    ok: u64,
    error_codes: BTreeMap<String, u64>,
    counts: BTreeMap<String, u64>,
    failed_by: BTreeMap<String, u64>,
}

impl Tally {
    /// One finished request: how long it took, how long its `GetBestServer` took,
    /// and how it ended.
    pub fn record(&mut self, total: Duration, get_best: Duration, outcome: Outcome) {
        self.total_us.push(total.as_micros() as u64);
        self.get_best_us.push(get_best.as_micros() as u64);
        match outcome {
            Outcome::Served(name) => {
                self.ok += 1;
                self.ok_us.push(total.as_micros() as u64);
                *self.counts.entry(name).or_default() += 1;
            }
            Outcome::Failed(key, name) => {
                *self.error_codes.entry(key).or_default() += 1;
                if let Some(name) = name {
                    *self.failed_by.entry(name).or_default() += 1;
                }
            }
        }
    }

    /// Adds another client's tallies to these.
    pub fn merge(&mut self, other: Tally) {
        self.total_us.extend(other.total_us);
        self.ok_us.extend(other.ok_us);
        self.get_best_us.extend(other.get_best_us);
        self.ok += other.ok;
        for (into, from) in [
            (&mut self.error_codes, other.error_codes),
            (&mut self.counts, other.counts),
            (&mut self.failed_by, other.failed_by),
        ] {
            for (k, v) in from {
                *into.entry(k).or_default() += v;
            }
        }
    }

    /// The report of a run of `strategy` that took `elapsed`.
    pub fn report(mut self, strategy: LoadBalanceStrategy, elapsed: Duration) -> Report {
        let requests = self.total_us.len() as u64;
        let elapsed_s = elapsed.as_secs_f64();
        Report {
            strategy: strategy_name(strategy),
            get_best_only: false,
            requests,
            ok: self.ok,
            errors: requests - self.ok,
            error_codes: self.error_codes,
            counts: self.counts,
            failed_by: self.failed_by,
            elapsed_s,
            throughput: requests as f64 / elapsed_s.max(1e-9),
            latency_ms: loadgen::latency(&mut self.total_us),
            ok_latency_ms: loadgen::latency(&mut self.ok_us),
            get_best_calls: self.get_best_us.len() as u64,
            get_best_ms: loadgen::latency(&mut self.get_best_us),
        }
    }
}

/// A strategy by the snake_case of its enum name (`round_robin`, `p2c_ewma`); the
/// balancer's policy names (`round-robin`) and the enum's own (`ROUND_ROBIN`) too.
pub fn parse_strategy(s: &str) -> Result<LoadBalanceStrategy, String> {
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    LoadBalanceStrategy::from_str_name(&name).ok_or_else(|| {
        format!(
            "unknown strategy '{s}': one of {}",
            strategies()
                .map(strategy_name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Every strategy, in enum order.
pub fn strategies() -> impl Iterator<Item = LoadBalanceStrategy> {
    (0..).map_while(|i| LoadBalanceStrategy::try_from(i).ok())
}

/// `ROUND_ROBIN` → `round_robin`.
pub fn strategy_name(s: LoadBalanceStrategy) -> String {
    s.as_str_name().to_ascii_lowercase()
}

/// The balancer's policy of the same name, as `PUT /policy` takes it:
/// `ROUND_ROBIN` → `round-robin`.
pub fn policy_name(s: LoadBalanceStrategy) -> String {
    strategy_name(s).replace('_', "-")
}

/// `--task`: `N`, or `LO..HI` (HI excluded) or `LO..=HI` (HI included), drawn
/// uniformly per request.
pub fn parse_task(s: &str) -> Result<RangeInclusive<u64>, String> {
    let bad = || format!("'{s}': expected N, LO..HI or LO..=HI, e.g. 25 or 20..=30");
    let number = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
    let range = if let Some((lo, hi)) = s.split_once("..=") {
        number(lo)?..=number(hi)?
    } else if let Some((lo, hi)) = s.split_once("..") {
        let hi = number(hi)?;
        if hi == 0 {
            return Err(format!("'{s}' is empty"));
        }
        number(lo)?..=hi - 1
    } else {
        let n = number(s)?;
        n..=n
    };
    if range.is_empty() {
        return Err(format!("'{s}' is empty"));
    }
    Ok(range)
}

/// `HOST:PORT` (an `http://` in front is accepted and dropped; there is no TLS).
pub fn parse_host_port(s: &str) -> Result<String, String> {
    let bare = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    let bad = || format!("'{s}': expected HOST:PORT, e.g. 127.0.0.1:50050");
    if bare.contains("://") {
        return Err(format!("'{s}': only plain gRPC (http) is supported"));
    }
    let (host, port) = bare.rsplit_once(':').ok_or_else(bad)?;
    match (host.is_empty(), port.parse::<u16>()) {
        (false, Ok(p)) if p > 0 => Ok(bare.to_string()),
        _ => Err(bad()),
    }
}

/// The URI of a channel to `address`, as `GetBestServer` gives it (`HOST:PORT`).
pub fn endpoint_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// The canonical name of a gRPC code, as the gRPC specification writes it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC address of the first balancer (in key order) among the entries under
/// `prefix` (`/lb/<instance>/balancers/`), each `(key, value)` with a value of
/// `{"http": "host:port", "grpc": "host:port"}`.
pub fn pick_balancer(prefix: &str, entries: &[(String, String)]) -> Result<String, String> {
    if entries.is_empty() {
        return Err(format!("no balancer is registered under {prefix}"));
    }
    let mut sorted: Vec<&(String, String)> = entries.iter().collect();
    sorted.sort();
    sorted
        .iter()
        .find_map(|(_, value)| {
            let v: serde_json::Value = serde_json::from_str(value).ok()?;
            let grpc = v.get("grpc")?.as_str()?;
            parse_host_port(grpc).ok()
        })
        .ok_or_else(|| {
            format!(
                "{} balancer(s) under {prefix}, none with a gRPC address (look-aside off?)",
                entries.len()
            )
        })
}

/// Finds a balancer's gRPC address in etcd at `endpoint`, under
/// `/lb/<instance>/balancers/`.
pub async fn find_balancer(endpoint: &str, instance: &str) -> Result<String, String> {
    use etcd_client::{Client, ConnectOptions, GetOptions};
    let prefix = format!("/lb/{instance}/balancers/");
    let failed = |e: &dyn std::fmt::Display| format!("etcd at {endpoint}: {e}");
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5));
    let lookup = async {
        let mut client = Client::connect([endpoint], Some(options))
            .await
            .map_err(|e| failed(&e))?;
        let answer = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| failed(&e))?;
        Ok::<_, String>(
            answer
                .kvs()
                .iter()
                .map(|kv| {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    (text(kv.key()), text(kv.value()))
                })
                .collect::<Vec<_>>(),
        )
    };
    let entries = tokio::time::timeout(Duration::from_secs(10), lookup)
        .await
        .map_err(|_| failed(&"no answer within 10 s"))??;
    pick_balancer(&prefix, &entries).map_err(|e| format!("{e} (etcd at {endpoint})"))
}

/// One channel per backend address, opened lazily and shared by every client.
#[derive(Default)]
struct Channels(RwLock<HashMap<String, Channel>>);

impl Channels {
    fn get(&self, address: &str) -> Result<Channel, String> {
        if let Some(c) = self.0.read().expect("not poisoned").get(address) {
            return Ok(c.clone());
        }
        let mut map = self.0.write().expect("not poisoned");
        if let Some(c) = map.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(endpoint_uri(address))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Runs the load described by `opts` and reports what it measured.
pub async fn run(opts: &Options) -> Result<Report, String> {
    if opts.requests.is_none() && opts.duration.is_none() {
        return Err("give a request count, a duration, or both".into());
    }
    if opts.task.is_empty() {
        return Err(format!("the task range {:?} is empty", opts.task));
    }
    let address = parse_host_port(&opts.balancer)?;
    let balancer = Endpoint::from_shared(endpoint_uri(&address))
        .map_err(|e| format!("bad balancer address {address}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the balancer's gRPC service at {address}: {}",
                causes(&e)
            )
        })?;
    let channels = Arc::new(Channels::default());
    let bar = loadgen::progress(opts.requests, opts.progress);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = opts.duration.map(|d| start + d);
    let mut tasks = Vec::new();
    for client in 0..opts.clients.max(1) {
        let (issued, bar, channels) = (issued.clone(), bar.clone(), channels.clone());
        let mut lb = LoadBalancerClient::new(balancer.clone());
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ client as u64);
            let mut tally = Tally::default();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if opts.requests.is_some_and(|max| n >= max)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let task = rng.gen_range(opts.task.clone());
                let sent = Instant::now();
                let ask = BalanceRequest {
                    strategy: opts.strategy as i32,
                    key: None,
                };
                let best = tokio::time::timeout(opts.timeout, lb.get_best_server(ask)).await;
                let asked = Instant::now();
                let outcome = match best {
                    Err(_) => Outcome::Failed("GetBestServer DEADLINE_EXCEEDED".into(), None),
                    Ok(Err(status)) => {
                        Outcome::Failed(format!("GetBestServer {}", code_name(status.code())), None)
                    }
                    Ok(Ok(answer)) => {
                        let info = answer.into_inner();
                        let name = if info.name.is_empty() {
                            info.address.clone()
                        } else {
                            info.name
                        };
                        if opts.get_best_only {
                            Outcome::Served(name)
                        } else {
                            match compute(&channels, &info.address, task, opts.timeout).await {
                                Ok(()) => Outcome::Served(name),
                                Err(key) => Outcome::Failed(key, Some(name)),
                            }
                        }
                    }
                };
                tally.record(sent.elapsed(), asked - sent, outcome);
                bar.inc(1);
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.map_err(|e| format!("a client failed: {e}"))?);
    }
    bar.finish_and_clear();
    let mut report = all.report(opts.strategy, start.elapsed());
    report.get_best_only = opts.get_best_only;
    Ok(report)
}

/// An error and its causes, `a: b: c`, since tonic's own text is only "transport
/// error".
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `Compute(task)` on the backend at `address`; the error key when it fails.
async fn compute(
    channels: &Channels,
    address: &str,
    task: u64,
    timeout: Duration,
) -> Result<(), String> {
    if address.is_empty() {
        // A backend that registered over HTTP only has no gRPC address to call.
        return Err("Compute no gRPC address".into());
    }
    let channel = channels
        .get(address)
        .map_err(|_| "Compute bad address".to_string())?;
    let mut client = BackendServiceClient::new(channel);
    let call = client.compute(TaskRequest {
        task: task.to_string(),
    });
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err("Compute DEADLINE_EXCEEDED".into()),
        Ok(Err(status)) => Err(format!("Compute {}", code_name(status.code()))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// The report as a plain-text table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
    let lat = |l: &Latency| {
        format!(
            "avg {:.2}  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.mean, l.p50, l.p99, l.p999, l.max
        )
    };
    line(&mut out, "strategy", r.strategy.clone());
    line(&mut out, "requests", r.requests.to_string());
    line(&mut out, "ok", r.ok.to_string());
    line(&mut out, "errors", r.errors.to_string());
    line(&mut out, "elapsed", format!("{:.2} s", r.elapsed_s));
    line(
        &mut out,
        "throughput",
        format!("{:.0} req/s ({:.0} ok/s)", r.throughput, r.goodput()),
    );
    if !r.get_best_only {
        line(&mut out, "latency (ms)", lat(&r.latency_ms));
        line(&mut out, "latency, ok only (ms)", lat(&r.ok_latency_ms));
    }
    line(&mut out, "GetBestServer (ms)", lat(&r.get_best_ms));
    for (key, n) in &r.error_codes {
        line(&mut out, &format!("error {key}"), n.to_string());
    }
    let who = if r.get_best_only {
        "named"
    } else {
        "served by"
    };
    crate::loadgen::per_backend(&mut out, who, &r.counts, r.ok, "failed on", &r.failed_by);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_by_their_snake_case_names_and_unknown_ones_list_the_valid_ones() {
        assert_eq!(
            parse_strategy("pick_first"),
            Ok(LoadBalanceStrategy::PickFirst)
        );
        assert_eq!(
            parse_strategy("round_robin"),
            Ok(LoadBalanceStrategy::RoundRobin)
        );
        assert_eq!(
            parse_strategy("least_load"),
            Ok(LoadBalanceStrategy::LeastLoad)
        );
        assert_eq!(parse_strategy("p2c_ewma"), Ok(LoadBalanceStrategy::P2cEwma));
        assert_eq!(
            parse_strategy("failure-weighted-round-robin"),
            Ok(LoadBalanceStrategy::FailureWeightedRoundRobin)
        );
        assert_eq!(
            parse_strategy("RENDEZVOUS"),
            Ok(LoadBalanceStrategy::Rendezvous)
        );
        let err = parse_strategy("fastest").unwrap_err();
        assert!(err.contains("'fastest'"), "{err}");
        assert!(
            err.contains("pick_first") && err.contains("rendezvous"),
            "{err}"
        );
    }

    #[test]
    fn every_strategy_round_trips_through_its_name_and_maps_to_a_policy_name() {
        let all: Vec<_> = strategies().collect();
        assert_eq!(all.len(), 15);
        for s in all {
            assert_eq!(parse_strategy(&strategy_name(s)), Ok(s));
            assert_eq!(parse_strategy(&policy_name(s)), Ok(s));
        }
        assert_eq!(policy_name(LoadBalanceStrategy::P2cEwma), "p2c-ewma");
        assert_eq!(policy_name(LoadBalanceStrategy::PickFirst), "pick-first");
    }

    #[test]
    fn a_task_is_one_number_or_a_range_with_rust_s_end_rules() {
        assert_eq!(parse_task("25"), Ok(25..=25));
        assert_eq!(parse_task("20..=30"), Ok(20..=30));
        assert_eq!(parse_task("20..30"), Ok(20..=29));
        assert_eq!(parse_task(" 20 ..= 30 "), Ok(20..=30));
        assert!(parse_task("30..20").is_err());
        assert!(parse_task("20..20").is_err());
        assert!(parse_task("0..0").is_err());
        assert!(parse_task("-1").is_err());
        assert!(parse_task("twenty").is_err());
        assert!(parse_task("20..").is_err());
    }

    #[test]
    fn addresses_need_a_host_and_a_port_and_no_tls() {
        assert_eq!(
            parse_host_port("127.0.0.1:50050"),
            Ok("127.0.0.1:50050".into())
        );
        assert_eq!(parse_host_port("http://lb:50050/"), Ok("lb:50050".into()));
        assert!(parse_host_port("127.0.0.1").is_err());
        assert!(parse_host_port(":50050").is_err());
        assert!(parse_host_port("lb:0").is_err());
        assert!(parse_host_port("lb:99999").is_err());
        assert!(parse_host_port("https://lb:443").is_err());
        assert_eq!(endpoint_uri("127.0.0.1:7001"), "http://127.0.0.1:7001");
        assert_eq!(endpoint_uri("http://b1:7001"), "http://b1:7001");
    }

    #[test]
    fn grpc_codes_are_named_as_the_grpc_specification_writes_them() {
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }

    #[test]
    fn the_first_balancer_with_a_grpc_address_is_the_one_found_in_etcd() {
        let p = "/lb/load_balancer/balancers/";
        let entries = vec![
            (
                format!("{p}host-2"),
                r#"{"http": "h:5001", "grpc": "h:50051"}"#.into(),
            ),
            (format!("{p}host-0"), r#"{"http": "h:5003"}"#.into()),
            (
                format!("{p}host-1"),
                r#"{"http": "h:5000", "grpc": "h:50050"}"#.into(),
            ),
            (format!("{p}host-3"), "not json".into()),
        ];
        assert_eq!(pick_balancer(p, &entries), Ok("h:50050".into()));
        let err = pick_balancer(p, &entries[1..2]).unwrap_err();
        assert!(err.contains("none with a gRPC address"), "{err}");
        let err = pick_balancer(p, &[]).unwrap_err();
        assert!(err.contains("no balancer") && err.contains(p), "{err}");
    }

    #[test]
    fn a_summary_counts_requests_by_backend_and_failures_by_call_and_code() {
        let ms = Duration::from_millis;
        let mut a = Tally::default();
        a.record(ms(10), ms(1), Outcome::Served("b1".into()));
        a.record(ms(20), ms(2), Outcome::Served("b2".into()));
        a.record(
            ms(3),
            ms(1),
            Outcome::Failed("Compute RESOURCE_EXHAUSTED".into(), Some("b1".into())),
        );
        let mut b = Tally::default();
        b.record(ms(30), ms(3), Outcome::Served("b1".into()));
        b.record(
            ms(1),
            ms(1),
            Outcome::Failed("GetBestServer UNAVAILABLE".into(), None),
        );
        a.merge(b);
        let r = a.report(LoadBalanceStrategy::RoundRobin, Duration::from_secs(2));
        assert_eq!(r.strategy, "round_robin");
        assert_eq!((r.requests, r.ok, r.errors), (5, 3, 2));
        assert_eq!(r.counts, [("b1".into(), 2), ("b2".into(), 1)].into());
        assert_eq!(r.failed_by, [("b1".into(), 1)].into());
        assert_eq!(r.errors_with("RESOURCE_EXHAUSTED"), 1);
        assert_eq!(r.errors_with("UNAVAILABLE"), 1);
        assert_eq!((r.throughput, r.goodput()), (2.5, 1.5));
        assert_eq!(r.get_best_calls, 5);
        assert_eq!((r.latency_ms.max, r.latency_ms.mean), (30.0, 12.8));
        assert_eq!((r.ok_latency_ms.p50, r.ok_latency_ms.mean), (20.0, 20.0));
        assert_eq!((r.get_best_ms.p50, r.get_best_ms.max), (1.0, 3.0));
        let text = table(&r);
        assert!(text.contains("error Compute RESOURCE_EXHAUSTED"), "{text}");
        assert!(
            text.contains("b1                      2   66.7 %"),
            "{text}"
        );
    }
}
