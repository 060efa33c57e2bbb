//! A-6, look-aside against the proxy: the seeds' experiment at this machine's
//! scale. Eight `server` processes register themselves with one balancer over gRPC
//! (`--register-with`), report their load every 200 ms and turn work away past four
//! computations at once (`--max-concurrent 4`: `RESOURCE_EXHAUSTED` on gRPC, `503`
//! on HTTP, and `available = false` in their reports). Forty clients then loop on
//! `GetBestServer(strategy)` and `Compute(fib(N))` on the backend named, N drawn from
//! 20..=30, for each strategy in turn; and the same workload goes through the HTTP
//! proxy (`/compute?n=N`, forty in flight) with the balancer's policy set to that
//! strategy by `PUT /policy`. Before the strategies, one client loop calls only
//! `GetBestServer` for 5 s: the balancer's answer rate.
//!
//! Every run starts with fresh backends: the old ones leave (SIGTERM: they
//! deregister) and new ones register under the same names. The balancer keeps its
//! estimates (latency, failures) per backend incarnation and they fade over tens of
//! seconds, so without this a run would inherit the last one's view: a `503` counts
//! as a slow answer in `p2c_ewma`'s estimate, and a backend that gave many in one run
//! would be avoided in the next.
//!
//! The backends are started here rather than by the balancer (`--replicas 0`): the
//! process runtime starts its replicas with fixed flags, and `--max-concurrent` is not
//! one of them. So the runtime named in the results is `process` whatever `--runtime`
//! says: nothing here runs in a container.

use std::io::{BufRead, BufReader};
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_proto::LoadBalanceStrategy;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::deploy::{Deployment, Runtime, Spec};
use crate::loadgen::{self, KeyMode};
use crate::lookaside::{self, policy_name, strategy_name};
use crate::results::{GetBestRate, LookAside, StrategyRuns};

/// The seeds' three, then two of ours for comparison.
pub const STRATEGIES: [LoadBalanceStrategy; 5] = [
    LoadBalanceStrategy::PickFirst,
    LoadBalanceStrategy::RoundRobin,
    LoadBalanceStrategy::LeastLoad,
    LoadBalanceStrategy::P2cEwma,
    LoadBalanceStrategy::LeastConnections,
];

const BACKENDS: usize = 8;
const MAX_CONCURRENT: u64 = 4;
const REPORT_INTERVAL_MS: u64 = 200;
const CLIENTS: usize = 40;
const TASK: RangeInclusive<u64> = 20..=30;
/// What the `GetBestServer`-only loop asks for.
const GET_BEST_STRATEGY: LoadBalanceStrategy = LoadBalanceStrategy::RoundRobin;
/// A call slower than this counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long A-6 runs: the command line can shrink it to check the code path.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds of each run (one per strategy and path).
    pub seconds: f64,
    /// Seconds of the `GetBestServer`-only loop.
    pub get_best_seconds: f64,
}

/// Runs A-6 on a deployment of its own.
pub fn run(rt: &tokio::runtime::Runtime, base: &Spec, plan: &Plan) -> Result<LookAside, String> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let spec = Spec {
        runtime: Runtime::Process,
        scheme: policy_name(LoadBalanceStrategy::RoundRobin),
        balance_factor: None,
        replicas: 0,
        tag: format!("{}-a6", base.tag),
        extra_args: vec!["--grpc-listen".into(), "127.0.0.1:0".into()],
        ..base.clone()
    };
    let dep = Deployment::start(&spec)?;
    let grpc = dep
        .grpc
        .clone()
        .ok_or("the balancer printed no gRPC address")?;
    let mut backends = renew(&dep, &spec, &grpc, None)?;
    eprintln!(
        "A-6: {BACKENDS} backends (--max-concurrent {MAX_CONCURRENT}) registered at {grpc}; \
         GetBestServer alone for {} s",
        plan.get_best_seconds
    );
    let get_best = get_best_rate(&dep, &grpc, plan)?;
    eprintln!(
        "  GetBestServer alone: {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms{}",
        get_best.report.throughput,
        get_best.report.get_best_ms.p50,
        get_best.report.get_best_ms.p99,
        get_best.per_cpu_second().map_or(String::new(), |c| format!(
            ", {c:.0} per CPU-second of the balancer"
        ))
    );
    eprintln!(
        "A-6: {CLIENTS} clients, {} s per strategy and path, fib(N) with N in {}..={}",
        plan.seconds,
        TASK.start(),
        TASK.end()
    );
    let mut strategies = Vec::new();
    for strategy in STRATEGIES {
        backends = renew(&dep, &spec, &grpc, Some(backends))?;
        let look_aside = rt.block_on(lookaside::run(&lookaside::Options {
            balancer: grpc.clone(),
            strategy,
            task: TASK,
            clients: CLIENTS,
            requests: None,
            duration: Some(Duration::from_secs_f64(plan.seconds)),
            timeout: TIMEOUT,
            seed: 1,
            get_best_only: false,
            progress: true,
        }))?;
        let policy = policy_name(strategy);
        set_policy(&dep, &policy)?;
        backends = renew(&dep, &spec, &grpc, Some(backends))?;
        let proxy = rt.block_on(loadgen::run(&loadgen::Options {
            url: dep.url.clone(),
            path: "/compute?n={n}".into(),
            n_range: Some(TASK),
            requests: None,
            duration: Some(Duration::from_secs_f64(plan.seconds)),
            concurrency: CLIENTS,
            key: KeyMode::None,
            seed: 1,
            timeout: TIMEOUT,
            progress: true,
        }))?;
        let runs = StrategyRuns {
            strategy: strategy_name(strategy),
            policy,
            look_aside,
            proxy,
        };
        log(&runs);
        strategies.push(runs);
    }
    drop(backends);
    drop(dep);
    Ok(LookAside {
        runtime: Runtime::Process.name().into(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        started_unix,
        wall_s: started.elapsed().as_secs_f64(),
        load_average,
        backends: BACKENDS,
        max_concurrent: MAX_CONCURRENT,
        report_interval_ms: REPORT_INTERVAL_MS,
        clients: CLIENTS,
        duration_s: plan.seconds,
        task: (*TASK.start(), *TASK.end()),
        strategies,
        get_best,
    })
}

fn log(r: &StrategyRuns) {
    let (a, p) = (&r.look_aside, &r.proxy);
    eprintln!(
        "  {:<18} look-aside {:>5.0} ok/s  avg {:>6.1}  p99 {:>6.1} ms  {:>6} errors {:?}",
        r.strategy,
        a.goodput(),
        a.latency_ms.mean,
        a.latency_ms.p99,
        a.errors,
        a.error_codes
    );
    eprintln!(
        "  {:<18} proxy      {:>5.0} ok/s  avg {:>6.1}  p99 {:>6.1} ms  {:>6} errors {:?}",
        "",
        p.ok as f64 / p.elapsed_s.max(1e-9),
        p.latency_ms.mean,
        p.latency_ms.p99,
        p.errors,
        p.statuses
            .iter()
            .filter(|(s, _)| !s.starts_with('2'))
            .collect::<Vec<_>>()
    );
}

/// One client loop calling only `GetBestServer`, on a runtime of one thread, with
/// the CPU time the balancer and this process spent meanwhile.
fn get_best_rate(dep: &Deployment, grpc: &str, plan: &Plan) -> Result<GetBestRate, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let opts = lookaside::Options {
        balancer: grpc.into(),
        strategy: GET_BEST_STRATEGY,
        task: TASK,
        clients: 1,
        requests: None,
        duration: Some(Duration::from_secs_f64(plan.get_best_seconds)),
        timeout: TIMEOUT,
        seed: 1,
        get_best_only: true,
        progress: false,
    };
    let tick = clock_ticks_per_second();
    let balancer = format!("/proc/{}/stat", dep.pid());
    let cpu = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| cpu_ticks(&s))
    };
    let before = (cpu(&balancer), cpu("/proc/self/stat"));
    let report = rt.block_on(lookaside::run(&opts))?;
    let after = (cpu(&balancer), cpu("/proc/self/stat"));
    let spent = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / tick);
    Ok(GetBestRate {
        strategy: strategy_name(GET_BEST_STRATEGY),
        report,
        balancer_cpu_s: spent(before.0, after.0),
        client_cpu_s: spent(before.1, after.1),
    })
}

/// User plus system CPU time, in clock ticks, from a `/proc/<pid>/stat` line (whose
/// second field, the command name, may hold spaces and parentheses).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK`: the unit of `/proc`'s CPU times (100 on Linux when unknown).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t: &f64| *t > 0.0)
        .unwrap_or(100.0)
}

/// Replaces `old` backends (if any) by fresh ones: the old leave and are gone from
/// the balancer before the new register, so every run starts from no history.
fn renew(
    dep: &Deployment,
    spec: &Spec,
    grpc: &str,
    old: Option<Backends>,
) -> Result<Backends, String> {
    drop(old);
    dep.wait_healthy(0, Duration::from_secs(15))?;
    let fresh = Backends::start(spec, grpc)?;
    dep.wait_healthy(BACKENDS, Duration::from_secs(30))?;
    Ok(fresh)
}

fn set_policy(dep: &Deployment, policy: &str) -> Result<(), String> {
    let body = serde_json::json!({ "policy": policy }).to_string();
    match dep.call("PUT", "/policy", Some(&body))? {
        (200, _) => Ok(()),
        (status, reply) => Err(format!("PUT /policy {policy} answered {status}: {reply}")),
    }
}

/// The backends: `server` processes that register with the balancer themselves.
/// Dropping them sends SIGTERM (they deregister and finish what they carry), then
/// SIGKILL to any still running after 10 s.
struct Backends {
    children: Vec<Child>,
}

impl Backends {
    fn start(spec: &Spec, balancer_grpc: &str) -> Result<Backends, String> {
        let mut backends = Backends {
            children: Vec::new(),
        };
        let mut ready = Vec::new();
        for i in 1..=BACKENDS {
            let name = format!("b{i}");
            let log = std::fs::File::create(spec.log_dir.join(format!("{}-{name}.log", spec.tag)))
                .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(spec.bin_dir.join("server"));
            cmd.args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
                .args(["--server-id", &name])
                .args(["--max-concurrent", &MAX_CONCURRENT.to_string()])
                .args(["--register-with", balancer_grpc])
                .args(["--report-interval", &format!("{REPORT_INTERVAL_MS}ms")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log);
            #[cfg(target_os = "linux")]
            // SAFETY: the closure runs in the forked child before exec and only makes
            // prctl(2), an async-signal-safe system call.
            unsafe {
                use std::os::unix::process::CommandExt;
                // If `analysis` is killed outright, its backends go with it (this
                // runs on the main thread, which lives as long as the process).
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", spec.bin_dir.display()))?;
            let stdout = child.stdout.take().expect("piped");
            backends.children.push(child);
            let (tx, rx) = mpsc::channel();
            // Its last line once it serves is `listening on http://ADDR`; keep
            // draining afterwards so it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("listening on ") {
                        let _ = tx.send(());
                    }
                }
            });
            ready.push((name, rx));
        }
        for (name, rx) in ready {
            rx.recv_timeout(Duration::from_secs(20))
                .map_err(|_| format!("backend {name} did not start listening within 20 s"))?;
        }
        Ok(backends)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for c in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name_even_with_spaces_in_it() {
        let stat = "4242 (load (bal) er) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 205 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(936));
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
