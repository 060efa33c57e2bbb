//! `loadgen`: drives an HTTP server with concurrent GETs and reports per-replica
//! counts (from `X-Served-By`), throughput, latency percentiles (to p99.9) and errors.

use std::time::Duration;

use analysis::loadgen::{self, KeyMode, Options};
use clap::Parser;

/// An HTTP load generator that counts who served each request.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Target base URL (http only).
    #[arg(default_value = "http://127.0.0.1:5000")]
    url: String,
    /// Path to request; `{n}` in it is replaced per request by a number drawn from
    /// --n-range (e.g. `/compute?n={n}`).
    #[arg(long, default_value = "/home")]
    path: String,
    /// Where `{n}` is drawn from, uniformly: `LO..=HI`, e.g. `20..=32`.
    #[arg(long, value_parser = loadgen::parse_range)]
    n_range: Option<std::ops::RangeInclusive<u64>>,
    /// Total requests [default: 10000 when no --duration is given].
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Run for this long, e.g. `30s` (with -n, whichever ends first).
    #[arg(short = 'd', long, value_parser = humantime_like)]
    duration: Option<Duration>,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: usize,
    /// Hash key per request: none, query:NAME or header:NAME (a random 6-digit id).
    #[arg(long, default_value = "none")]
    key: KeyMode,
    /// Seed of the random keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout in seconds.
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
    let v: f64 = num.parse().map_err(|_| format!("bad duration '{s}'"))?;
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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build().expect("a tokio runtime");
    let opts = Options {
        url: args.url,
        path: args.path,
        n_range: args.n_range,
        requests: args.requests.or(args.duration.is_none().then_some(10_000)),
        duration: args.duration,
        concurrency: args.concurrency.max(1),
        key: args.key,
        seed: args.seed,
        timeout: Duration::from_secs_f64(args.timeout),
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
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    }
}
