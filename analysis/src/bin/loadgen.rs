//! `loadgen`: drives an HTTP server with concurrent GETs and reports per-replica
//! counts (from `X-Served-By`), throughput, latency percentiles (to p99.9) and errors.
//! With `--look-aside HOST:PORT` (or `--etcd URL`) it is a look-aside gRPC client
//! instead: `GetBestServer` at the balancer, then `Compute` on the backend named.

use std::ops::RangeInclusive;
use std::time::Duration;

use analysis::loadgen::{self, KeyMode, Options};
use analysis::lookaside;
use clap::{ArgGroup, Parser};
use lb_proto::LoadBalanceStrategy;

/// An HTTP load generator that counts who served each request, or (with
/// --look-aside or --etcd) a look-aside gRPC client: each client loops on
/// GetBestServer(--strategy) then Compute(--task) on the backend it names.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
#[command(group(ArgGroup::new("aside").args(["look_aside", "etcd"])))]
struct Args {
    /// Target base URL (http only).
    #[arg(default_value = "http://127.0.0.1:5000", conflicts_with = "aside")]
    url: String,
    // clap prints the placeholder itself as a line break, hence the words for it.
    /// Path to request; the placeholder, n in curly braces (as in the README's
    /// `/compute?n=` example), is replaced per request by a number drawn from --n-range.
    #[arg(long, default_value = "/home", conflicts_with = "aside")]
    path: String,
    /// Where the path's placeholder is drawn from, uniformly: `LO..=HI`, e.g. `20..=32`.
    #[arg(long, value_parser = loadgen::parse_range, conflicts_with = "aside")]
    n_range: Option<RangeInclusive<u64>>,
    /// Look-aside mode: the balancer's gRPC service (its --grpc-listen), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", value_parser = lookaside::parse_host_port)]
    look_aside: Option<String>,
    /// Look-aside mode, the balancer found in etcd: the first entry under
    /// `/lb/<instance>/balancers/` with a gRPC address.
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
    /// With --etcd: the balancer's --instance.
    #[arg(long, default_value = "load_balancer", requires = "etcd")]
    instance: String,
    /// Look-aside: the strategy GetBestServer is asked for, the snake_case of
    /// LoadBalanceStrategy: pick_first, round_robin, least_load, weighted_round_robin,
    /// random, least_connections, p2c_ewma, response_time, health_score,
    /// failure_weighted_round_robin, resource_fit, quadratic, mixed, maglev, rendezvous.
    #[arg(long, default_value = "round_robin", value_parser = lookaside::parse_strategy, requires = "aside")]
    strategy: LoadBalanceStrategy,
    /// Look-aside: Compute's N (fib(N)): `N`, or drawn uniformly per request from
    /// `LO..=HI` (HI included) or `LO..HI` (HI excluded), e.g. `20..=30`.
    #[arg(long, default_value = "25", value_parser = lookaside::parse_task, requires = "aside")]
    task: RangeInclusive<u64>,
    /// Look-aside: call only GetBestServer, no Compute (the balancer's answer rate).
    #[arg(long, requires = "aside")]
    get_best_only: bool,
    /// Total requests [default: 10000 when no --duration is given].
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Run for this long, e.g. `30s` (with -n, whichever ends first).
    #[arg(short = 'd', long, value_parser = humantime_like)]
    duration: Option<Duration>,
    /// Requests in flight at once (look-aside: client loops).
    #[arg(short = 'c', long, visible_alias = "clients", default_value_t = 50)]
    concurrency: usize,
    /// Hash key per request: none, query:NAME or header:NAME (a random 6-digit id).
    #[arg(long, default_value = "none", conflicts_with = "aside")]
    key: KeyMode,
    /// Seed of the random keys (look-aside: of the tasks drawn).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout in seconds (look-aside: per call).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Worker threads [default: cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `10s`, `500ms`, `2m`, or plain seconds.
fn humantime_like(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("bad duration '{s}': a positive number with ms, s or m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in '{s}': use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    let args = Args::parse();
    if args.concurrency == 0 {
        fail("-c/--clients must be at least 1");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        fail("--timeout must be a positive number of seconds");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build().expect("a tokio runtime");
    let requests = args.requests.or(args.duration.is_none().then_some(10_000));
    let timeout = Duration::from_secs_f64(args.timeout);
    if args.look_aside.is_some() || args.etcd.is_some() {
        let balancer = match (&args.look_aside, &args.etcd) {
            (Some(addr), _) => addr.clone(),
            (None, Some(url)) => rt
                .block_on(lookaside::find_balancer(url, &args.instance))
                .unwrap_or_else(|e| fail(&e)),
            (None, None) => unreachable!("one of the two is given"),
        };
        let opts = lookaside::Options {
            balancer,
            strategy: args.strategy,
            task: args.task,
            clients: args.concurrency,
            requests,
            duration: args.duration,
            timeout,
            seed: args.seed,
            get_best_only: args.get_best_only,
            progress: !args.json,
        };
        match rt.block_on(lookaside::run(&opts)) {
            Ok(report) if args.json => println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("serializable")
            ),
            Ok(report) => print!("{}", lookaside::table(&report)),
            Err(e) => fail(&e),
        }
        return;
    }
    let opts = Options {
        url: args.url,
        path: args.path,
        n_range: args.n_range,
        requests,
        duration: args.duration,
        concurrency: args.concurrency,
        key: args.key,
        seed: args.seed,
        timeout,
        progress: !args.json,
    };
    match rt.block_on(loadgen::run(&opts)) {
        Ok(report) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("serializable")
            );
        }
        Ok(report) => print!("{}", loadgen::table(&report)),
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> ! {
    eprintln!("loadgen: {e}");
    std::process::exit(2);
}
