//! `analysis`: runs experiments against real deployments, adds ring-only
//! simulations, and writes `results.json`, `charts/*.png` and `report.md`.
//! `make analysis` runs it; `--report-only` redraws charts and report from an
//! existing `results.json`; `--only a5` (or `a6`) reruns that experiment and keeps
//! the rest of it.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use analysis::a6;
use analysis::deploy::{Runtime, Spec};
use analysis::experiments::{self, Load};
use analysis::results::{Meta, Results, Simulation};
use analysis::stress::{self, Plan};
use analysis::{charts, report, sim};
use clap::{Parser, ValueEnum};

/// An experiment that can be rerun alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// A-5, the policies under stress.
    A5,
    /// A-6, look-aside against the proxy.
    A6,
}

/// Experiments, their charts and report.
#[derive(Debug, Parser)]
#[command(name = "analysis")]
struct Args {
    /// Who runs the replicas: docker or process.
    #[arg(long, env = "RUNTIME", default_value = "docker")]
    runtime: String,
    /// Directory of `results.json`, `charts/` and `report.md`.
    #[arg(long, default_value = "analysis")]
    out: PathBuf,
    /// Directory of the `load_balancer` and `server` binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Requests per run of.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Requests in flight at once in.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Requests per policy in A-5's slow and failing replica runs.
    #[arg(long, default_value_t = 20_000)]
    a5_requests: u64,
    /// Requests per policy in A-5's compute runs.
    #[arg(long, default_value_t = 5_000)]
    a5_compute_requests: u64,
    /// Seconds of each A-6 run (one per strategy and path).
    #[arg(long, default_value_t = 20.0, value_parser = positive)]
    a6_seconds: f64,
    /// Run only this experiment; the others' results stay as results.json has them.
    #[arg(long, value_enum, conflicts_with = "report_only")]
    only: Option<Only>,
    /// Only redraw charts and report from the existing results.json.
    #[arg(long)]
    report_only: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("analysis: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let labels: Vec<String> = sim::configs().iter().map(|c| c.label()).collect();
    let results_path = args.out.join("results.json");
    charts::register_font()?;
    let res = if args.report_only {
        read_results(&results_path)?
    } else {
        let res = match args.only {
            Some(which) => only(&args, &results_path, which)?,
            None => measure(&args)?,
        };
        let json = serde_json::to_string_pretty(&res).map_err(|e| e.to_string())?;
        std::fs::write(&results_path, json + "\n").map_err(|e| e.to_string())?;
        res
    };
    charts::all(&args.out.join("charts"), &res, &labels)?;
    std::fs::write(args.out.join("report.md"), report::markdown(&res, &labels))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {}, {}/charts/*.png and {}/report.md",
        results_path.display(),
        args.out.display(),
        args.out.display()
    );
    Ok(())
}

fn read_results(path: &Path) -> Result<Results, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What every deployment starts from.
fn base_spec(args: &Args) -> Result<Spec, String> {
    let runtime = match args.runtime.as_str() {
        "docker" => Runtime::Docker,
        "process" => Runtime::Process,
        other => return Err(format!("unknown runtime '{other}': docker or process")),
    };
    Ok(Spec {
        bin_dir: args.bin_dir.clone(),
        runtime,
        scheme: "quadratic".into(),
        balance_factor: None,
        replicas: 3,
        tag: format!("{}", std::process::id()),
        log_dir: PathBuf::from("target/analysis-logs"),
        extra_args: Vec::new(),
    })
}

fn plan(args: &Args) -> Plan {
    Plan {
        requests: args.a5_requests,
        compute_requests: args.a5_compute_requests,
    }
}

fn a6_plan(args: &Args) -> a6::Plan {
    a6::Plan {
        seconds: args.a6_seconds,
        get_best_seconds: args.a6_seconds.min(5.0),
    }
}

/// Seconds above zero.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}': a number of seconds above 0")),
    }
}

/// One experiment alone, into the results already there (none yet: the others
/// stay empty). They are read once it has run, not before, so that another
/// experiment rerun meanwhile keeps its results.
fn only(args: &Args, results_path: &Path, which: Only) -> Result<Results, String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let base = base_spec(args)?;
    // Fail before measuring rather than after, when the file cannot be read.
    if results_path.exists() {
        read_results(results_path)?;
    }
    let (a5, a6) = match which {
        Only::A5 => (Some(stress::run(&rt, &base, &plan(args))?), None),
        Only::A6 => (None, Some(a6::run(&rt, &base, &a6_plan(args))?)),
    };
    let mut res = if results_path.exists() {
        read_results(results_path)?
    } else {
        Results::default()
    };
    res.a5 = a5.or(res.a5);
    res.a6 = a6.or(res.a6);
    Ok(res)
}

fn measure(args: &Args) -> Result<Results, String> {
    let started = Instant::now();
    let base = base_spec(args)?;
    let runtime = base.runtime;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let load = Load {
        requests: args.requests,
        concurrency: args.concurrency,
    };
    let mut experiments = Vec::new();
    for config in sim::configs() {
        eprintln!(
            "{}: N = 2..6, {} requests each",
            config.label(),
            load.requests
        );
        experiments.extend(experiments::sweep(&rt, &base, &config, &load)?);
    }
    eprintln!("A-3: endpoints, then kills under load");
    let a3 = experiments::recovery(&rt, &base, 8, 20, &[(5.0, "Server1"), (12.0, "Server2")])?;
    eprintln!("simulations (computed)");
    let mut simulation = Simulation::default();
    for config in sim::configs() {
        for n in 2..=6 {
            simulation
                .balance
                .push(sim::balance(&config, n, 10_000, 20));
            simulation.movement.push(sim::movement(&config, n));
        }
    }
    let a5 = stress::run(&rt, &base, &plan(args))?;
    let a6 = a6::run(&rt, &base, &a6_plan(args))?;
    Ok(Results {
        meta: Meta {
            runtime: runtime.name().into(),
            requests: load.requests,
            concurrency: load.concurrency,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            started_unix: stamp,
            wall_s: started.elapsed().as_secs_f64(),
        },
        experiments,
        a3: Some(a3),
        simulation,
        a5: Some(a5),
        a6: Some(a6),
    })
}
