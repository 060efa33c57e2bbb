//! The load generator: `concurrency` tasks send requests to one URL until a request
//! count or a duration runs out, and record who served each one (`X-Served-By`), its
//! status and its latency. A path may hold `{n}`, drawn per request from a range, so
//! one run can mix cheap and costly requests (`/compute?n={n}`).
//!
//! Kept general on purpose: the analysis uses it through [`run`], the `loadgen`
//! binary from the command line, and later work as a CPU-heavy client.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Where each request's hash key goes, so the balancer can be run with `--hash-key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMode {
    /// No key: the balancer picks (its `--hash-key random`).
    None,
    /// A random 6-digit id in this query parameter.
    Query(String),
    /// A random 6-digit id in this header.
    Header(String),
}

impl std::str::FromStr for KeyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(KeyMode::None),
            Some(("query", name)) if !name.is_empty() => Ok(KeyMode::Query(name.into())),
            Some(("header", name)) if !name.is_empty() => Ok(KeyMode::Header(name.into())),
            _ => Err(format!("'{s}': expected none, query:NAME or header:NAME")),
        }
    }
}

/// What to send, and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// Path appended to the URL, e.g. `/home`; `{n}` in it is replaced per request
    /// by a number drawn from `n_range`.
    pub path: String,
    /// Where `{n}` is drawn from, uniformly (`None`: the path has no `{n}`).
    pub n_range: Option<RangeInclusive<u64>>,
    /// Stop after this many requests (`None`: only the duration bounds the run).
    pub requests: Option<u64>,
    /// Stop after this long (`None`: only the request count bounds the run).
    pub duration: Option<Duration>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Where the hash key goes.
    pub key: KeyMode,
    /// Seed of the key generator, so a run's keys can be repeated.
    pub seed: u64,
    /// A request slower than this counts as an error.
    pub timeout: Duration,
    /// Draw a progress bar (only drawn on a terminal anyway).
    pub progress: bool,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// 0 when not measured: results written before it was recorded lack it, and
    /// it is left out again rather than written back as if measured.
    #[serde(default, skip_serializing_if = "not_measured")]
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn not_measured(v: &f64) -> bool {
    *v == 0.0
}

/// Successes and failures finished in one second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Second {
    pub ok: u64,
    pub failed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Requests finished, whatever their outcome.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers, transport errors and timeouts.
    pub errors: u64,
    /// Answers by status code; transport errors and timeouts under `"error"`.
    pub statuses: BTreeMap<String, u64>,
    /// 2xx answers by the `X-Served-By` header (`"?"` when missing).
    pub counts: BTreeMap<String, u64>,
    /// Non-2xx answers by `X-Served-By` (the balancer's own errors carry none: `"?"`),
    /// so a failing replica's share of all answers can be told.
    #[serde(default)]
    pub failed_by: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Finished requests per second.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// Of the 2xx answers alone (absent from results written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok_latency_ms: Option<Latency>,
    /// Per second of the run, from its start.
    pub timeline: Vec<Second>,
}

/// Per-task tallies, merged at the end so tasks never share a lock.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok_latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    counts: BTreeMap<String, u64>,
    failed_by: BTreeMap<String, u64>,
    timeline: Vec<Second>,
}

impl Tally {
    fn second(&mut self, at: Duration) -> &mut Second {
        let s = at.as_secs() as usize;
        if self.timeline.len() <= s {
            self.timeline.resize(s + 1, Second::default());
        }
        &mut self.timeline[s]
    }
}

/// Runs the load described by `opts` and reports what it measured.
pub async fn run(opts: &Options) -> Result<Report, String> {
    if opts.requests.is_none() && opts.duration.is_none() {
        return Err("give a request count, a duration, or both".into());
    }
    check_template(&opts.path, opts.n_range.as_ref())?;
    let base: Uri = opts
        .url
        .parse()
        .map_err(|e| format!("bad URL {}: {e}", opts.url))?;
    if base.scheme_str() != Some("http") {
        return Err(format!("only http:// URLs are supported: {}", opts.url));
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.concurrency)
        .build(connector);
    let bar = progress_bar(opts);
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = opts.duration.map(|d| start + d);
    let mut tasks = Vec::new();
    for task in 0..opts.concurrency.max(1) {
        let (client, issued, bar) = (client.clone(), issued.clone(), bar.clone());
        let opts = opts.clone();
        let base = opts.url.trim_end_matches('/').to_string();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ task as u64);
            let mut tally = Tally::default();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if opts.requests.is_some_and(|max| n >= max)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let path = match &opts.n_range {
                    Some(r) => opts
                        .path
                        .replace("{n}", &rng.gen_range(r.clone()).to_string()),
                    None => opts.path.clone(),
                };
                let key: u32 = rng.gen_range(100_000..1_000_000);
                let (uri, header) = match &opts.key {
                    KeyMode::None => (format!("{base}{path}"), None),
                    KeyMode::Query(q) => {
                        let sep = if path.contains('?') { '&' } else { '?' };
                        (format!("{base}{path}{sep}{q}={key}"), None)
                    }
                    KeyMode::Header(h) => (format!("{base}{path}"), Some((h, key))),
                };
                let sent = Instant::now();
                let outcome = send(&client, &uri, header, opts.timeout).await;
                let done = Instant::now();
                let took = (done - sent).as_micros() as u64;
                tally.latencies_us.push(took);
                let second = tally.second(done - start);
                match &outcome {
                    Ok((status, _)) if (200..300).contains(status) => {
                        second.ok += 1;
                        tally.ok_latencies_us.push(took);
                    }
                    _ => second.failed += 1,
                }
                let status = match outcome {
                    Ok((status, served_by)) => {
                        let by = if (200..300).contains(&status) {
                            &mut tally.counts
                        } else {
                            &mut tally.failed_by
                        };
                        *by.entry(served_by).or_default() += 1;
                        status.to_string()
                    }
                    Err(_) => "error".to_string(),
                };
                *tally.statuses.entry(status).or_default() += 1;
                bar.inc(1);
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.map_err(|e| format!("a load task failed: {e}"))?;
        all.latencies_us.extend(t.latencies_us);
        all.ok_latencies_us.extend(t.ok_latencies_us);
        for (k, v) in t.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        for (k, v) in t.counts {
            *all.counts.entry(k).or_default() += v;
        }
        for (k, v) in t.failed_by {
            *all.failed_by.entry(k).or_default() += v;
        }
        for (i, s) in t.timeline.iter().enumerate() {
            let at = all.second(Duration::from_secs(i as u64));
            at.ok += s.ok;
            at.failed += s.failed;
        }
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    let requests = all.latencies_us.len() as u64;
    let ok: u64 = all.counts.values().sum();
    Ok(Report {
        requests,
        ok,
        errors: requests - ok,
        statuses: all.statuses,
        counts: all.counts,
        failed_by: all.failed_by,
        elapsed_s: elapsed,
        throughput: requests as f64 / elapsed.max(1e-9),
        latency_ms: latency(&mut all.latencies_us),
        ok_latency_ms: Some(latency(&mut all.ok_latencies_us)),
        timeline: all.timeline,
    })
}

/// A path with `{n}` needs a range to draw it from, and a range needs a `{n}`.
fn check_template(path: &str, range: Option<&RangeInclusive<u64>>) -> Result<(), String> {
    match (path.contains("{n}"), range) {
        (true, None) => Err(format!("{path} has {{n}}: give a range to draw it from")),
        (false, Some(_)) => Err(format!("a range was given but {path} has no {{n}}")),
        (_, Some(r)) if r.is_empty() => Err(format!("the range {r:?} is empty")),
        _ => Ok(()),
    }
}

/// `LO..=HI`, as the command line gives a range for `{n}`.
pub fn parse_range(s: &str) -> Result<RangeInclusive<u64>, String> {
    let bad = || format!("'{s}': expected LO..=HI, e.g. 20..=32");
    let (lo, hi) = s.split_once("..=").ok_or_else(bad)?;
    let (lo, hi) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

/// One GET: its status and `X-Served-By`, with the body read to the end so that the
/// connection goes back to the pool.
async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &str,
    header: Option<(&String, u32)>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut req = hyper::Request::get(uri);
    if let Some((name, value)) = header {
        req = req.header(name.as_str(), value);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let served_by = resp
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, served_by))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "timeout".to_string())?
}

fn progress_bar(opts: &Options) -> ProgressBar {
    progress(opts.requests, opts.progress)
}

/// A progress bar on stderr, of `requests` when the run is bounded by a count (a
/// spinner otherwise); hidden when `on` is false or stdout is not a terminal.
pub fn progress(requests: Option<u64>, on: bool) -> ProgressBar {
    use std::io::IsTerminal;
    if !on || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match requests {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Percentiles by nearest rank over the sorted samples.
pub fn latency(samples_us: &mut [u64]) -> Latency {
    if samples_us.is_empty() {
        return Latency::default();
    }
    samples_us.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * samples_us.len() as f64).ceil() as usize).clamp(1, samples_us.len());
        samples_us[rank - 1] as f64 / 1000.0
    };
    let sum: u64 = samples_us.iter().sum();
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
        mean: sum as f64 / samples_us.len() as f64 / 1000.0,
    }
}

/// The report as a plain-text table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    line(&mut out, "requests", r.requests.to_string());
    line(&mut out, "ok", r.ok.to_string());
    line(&mut out, "errors", r.errors.to_string());
    line(&mut out, "elapsed", format!("{:.2} s", r.elapsed_s));
    line(&mut out, "throughput", format!("{:.0} req/s", r.throughput));
    let l = &r.latency_ms;
    line(
        &mut out,
        "latency (ms)",
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        ),
    );
    if let Some(l) = &r.ok_latency_ms {
        line(
            &mut out,
            "2xx only (ms)",
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        );
    }
    for (status, n) in &r.statuses {
        line(&mut out, &format!("status {status}"), n.to_string());
    }
    per_backend(
        &mut out,
        "served by",
        &r.counts,
        r.ok,
        "failed by",
        &r.failed_by,
    );
    out
}

/// The per-backend part of a summary: requests each answered with their share of
/// the successful ones, then the failures each caused.
pub fn per_backend(
    out: &mut String,
    served: &str,
    counts: &BTreeMap<String, u64>,
    ok: u64,
    failed: &str,
    failed_by: &BTreeMap<String, u64>,
) {
    out.push_str(&format!("\n{served:<16} requests   share\n"));
    for (who, n) in counts {
        let share = *n as f64 / ok.max(1) as f64 * 100.0;
        out.push_str(&format!("{who:<16} {n:>8}  {share:>5.1} %\n"));
    }
    if !failed_by.is_empty() {
        out.push_str(&format!("\n{failed:<16} requests\n"));
        for (who, n) in failed_by {
            out.push_str(&format!("{who:<16} {n:>8}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let l = latency(&mut s);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        let mut s: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(latency(&mut s).p999, 999.0);
        assert_eq!(latency(&mut []), Latency::default());
    }

    #[test]
    fn key_modes_parse_and_bad_ones_are_refused() {
        assert_eq!("none".parse(), Ok(KeyMode::None));
        assert_eq!("query:id".parse(), Ok(KeyMode::Query("id".into())));
        assert_eq!("header:X-Key".parse(), Ok(KeyMode::Header("X-Key".into())));
        assert!("query:".parse::<KeyMode>().is_err());
        assert!("cookie:a".parse::<KeyMode>().is_err());
    }

    #[test]
    fn a_template_and_its_range_come_together() {
        assert_eq!(parse_range("20..=32"), Ok(20..=32));
        assert!(parse_range("20..32").is_err());
        assert!(parse_range("32..=20").is_err());
        assert!(check_template("/compute?n={n}", Some(&(20..=32))).is_ok());
        assert!(check_template("/home", None).is_ok());
        assert!(check_template("/compute?n={n}", None).is_err());
        assert!(check_template("/home", Some(&(1..=2))).is_err());
    }
}
