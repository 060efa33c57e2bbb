//! The report's A-6 section: the setup, a table of both paths per strategy, requests
//! per backend, `GetBestServer`'s rate, and what the numbers mean, all from
//! [`LookAside`].

use std::fmt::Write;

use crate::loadgen::Latency;
use crate::results::{LookAside, Side, StrategyRuns};

fn lat(l: Option<&Latency>) -> String {
    l.map_or("–".into(), |l| format!("{:.1} / {:.1}", l.mean, l.p99))
}

/// `N (P %): what N` for a side's failures, or `0`.
fn errors_cell(s: &Side) -> String {
    if s.errors == 0 {
        return "0".into();
    }
    let by: Vec<String> = s
        .errors_by
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!(
        "{} ({:.1} %): {}",
        s.errors,
        s.error_percent(),
        by.join(", ")
    )
}

fn find<'a>(l: &'a LookAside, strategy: &str) -> Option<&'a StrategyRuns> {
    l.strategies.iter().find(|r| r.strategy == strategy)
}

/// Every backend name any run saw, in order (`b1`, `b2`, … `b10`).
fn backend_names(l: &LookAside) -> Vec<String> {
    let mut names: Vec<String> = l
        .strategies
        .iter()
        .flat_map(|r| {
            r.sides()
                .map(|s| s.counts.keys().cloned().collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    names.sort_by_key(|n| {
        let digits = n.trim_start_matches(|c: char| !c.is_ascii_digit());
        (
            n.len() - digits.len(),
            digits.parse::<u64>().unwrap_or(0),
            n.clone(),
        )
    });
    names.dedup();
    names
}

/// The lowest and highest of `f` over `values`, as `lo–hi` (or one figure).
fn span(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        return "–".into();
    }
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(f64::MIN, f64::max);
    let (lo, hi) = (format!("{lo:.decimals$}"), format!("{hi:.decimals$}"));
    if lo == hi {
        lo
    } else {
        format!("{lo}–{hi}")
    }
}

/// The A-6 section.
pub fn markdown(w: &mut String, l: &LookAside) {
    let _ = writeln!(w, "## A-6: look-aside against the proxy\n");
    let _ = writeln!(
        w,
        "The seeds' look-aside experiment at this machine's scale. {} `server` processes \
         register themselves with one balancer over gRPC (`--register-with`, \
         `--report-interval {}ms`) and each takes at most {} computations at once \
         (`--max-concurrent {}`): past that it answers `RESOURCE_EXHAUSTED` on gRPC and `503` \
         on HTTP, and reports itself unavailable until it is below again. So {} computations \
         at most for {} clients. For each strategy, {} client loops (`loadgen --look-aside`) \
         call `GetBestServer(strategy)`, then `Compute` on the backend it names, fib(N) with N \
         drawn uniformly from {}..={}, for {:.0} s; then the same workload goes through the \
         balancer's HTTP proxy for {:.0} s, `GET /compute?n=N` with {} in flight (`loadgen`), \
         after `PUT /policy` set the balancer's policy of the same name. Each run starts with \
         fresh backends (the old ones deregister, new ones register under the same names), \
         so none inherits the balancer's estimates from the run before. Neither client \
         retries: a failed request is counted and the next one starts at once. Latency is \
         over every request (failed ones included) and over the successful ones alone. The \
         balancer, the backends and the clients share the machine's {} cores{}. A-6 took \
         {:.0} s.\n",
        l.backends,
        l.report_interval_ms,
        l.max_concurrent,
        l.max_concurrent,
        l.backends as u64 * l.max_concurrent,
        l.clients,
        l.clients,
        l.task.0,
        l.task.1,
        l.duration_s,
        l.duration_s,
        l.clients,
        l.cores,
        l.load_average.map_or(String::new(), |a| format!(
            " (their 1-minute load average was {a:.2} when A-6 started)"
        )),
        l.wall_s
    );
    let _ = writeln!(
        w,
        "![A-6 throughput](charts/a6-throughput.png)\n\n\
         ![A-6 latency](charts/a6-latency.png)\n\n\
         ![A-6 errors](charts/a6-errors.png)\n"
    );
    let _ = writeln!(
        w,
        "| strategy | path | requests | ok/s | avg / p99, all (ms) | avg / p99, ok (ms) | \
         GetBestServer avg / p99 (ms) | errors | busiest backend |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for r in &l.strategies {
        for (i, s) in r.sides().iter().enumerate() {
            let name = if i == 0 {
                format!("`{}`", r.strategy)
            } else {
                String::new()
            };
            let busiest = s
                .busiest()
                .map_or("–".into(), |(b, share)| format!("{b}, {share:.1} %"));
            let _ = writeln!(
                w,
                "| {name} | {} | {} | {:.0} | {} | {} | {} | {} | {busiest} |",
                s.path,
                s.requests,
                s.goodput(),
                lat(Some(s.latency_ms)),
                lat(s.ok_latency_ms),
                lat(s.get_best_ms),
                errors_cell(s)
            );
        }
    }
    let names = backend_names(l);
    let _ = writeln!(w, "\nSuccessful requests per backend:\n");
    let _ = writeln!(
        w,
        "| strategy | path | {} |\n|---|---|{}",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for r in &l.strategies {
        for s in r.sides() {
            let cells: Vec<String> = names
                .iter()
                .map(|n| s.counts.get(n).copied().unwrap_or(0).to_string())
                .collect();
            let _ = writeln!(
                w,
                "| `{}` | {} | {} |",
                r.strategy,
                s.path,
                cells.join(" | ")
            );
        }
    }
    let g = &l.get_best;
    let gl = &g.report.get_best_ms;
    let _ = writeln!(w, "\n### `GetBestServer` alone\n");
    let _ = writeln!(
        w,
        "One client loop calling only `GetBestServer({})`, on a runtime of one thread, for \
         {:.0} s: **{:.0} calls per second** ({} calls, {} errors), p50 {:.3} ms, p99 {:.3} ms, \
         max {:.1} ms per call.{}\n",
        g.strategy,
        g.report.elapsed_s,
        g.report.throughput,
        g.report.requests,
        g.report.errors,
        gl.p50,
        gl.p99,
        gl.max,
        match (g.balancer_cpu_s, g.per_cpu_second(), g.client_cpu_s) {
            (Some(b), Some(per), client) => format!(
                " Meanwhile the balancer process used {b:.2} CPU-seconds (from `/proc`), so \
                 it answered **{per:.0} calls per CPU-second**: what one core given to it \
                 alone would answer at this cost per call{}. The balancer was busy {:.0} % \
                 of the run: one loop waits for each answer before it asks again, so the \
                 round trip bounds its rate.",
                client.map_or(String::new(), |c| format!(
                    "; the client used {c:.2} CPU-seconds"
                )),
                b / g.report.elapsed_s.max(1e-9) * 100.0
            ),
            _ => String::new(),
        }
    );
    meaning(w, l);
}

/// What the table says, each sentence read off it.
fn meaning(w: &mut String, l: &LookAside) {
    let _ = writeln!(w, "### What the numbers mean\n");
    let both = || l.strategies.iter().map(|r| r.sides());
    let best = |path: usize| {
        l.strategies
            .iter()
            .map(|r| (r.strategy.as_str(), r.sides()[path].goodput()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    if let (Some(a), Some(p)) = (best(0), best(1)) {
        let ratios: Vec<String> = l
            .strategies
            .iter()
            .map(|r| {
                let [a, p] = r.sides();
                format!(
                    "`{}` {:.2}×",
                    r.strategy,
                    a.goodput() / p.goodput().max(1e-9)
                )
            })
            .collect();
        let _ = writeln!(
            w,
            "- Most successful requests per second: look-aside with `{}`, {:.0}/s; through the \
             proxy with `{}`, {:.0}/s. Look-aside over proxy, per strategy: {}.",
            a.0,
            a.1,
            p.0,
            p.1,
            ratios.join(", ")
        );
    }
    let _ = writeln!(
        w,
        "- Failed requests: look-aside {} % of requests, proxy {} %. A client whose request \
         is turned away sends the next one at once, so a path that turns more away also sends \
         more: the proxy's clients sent {} times as many requests as the look-aside clients \
         for the same strategy. Latency over every request is pulled down by these quick \
         failures; over the successful ones alone it is the time a computation took, waiting \
         for the machine's {} cores included.",
        span(both().map(|s| s[0].error_percent()), 1),
        span(both().map(|s| s[1].error_percent()), 1),
        span(
            both().map(|s| s[1].requests as f64 / s[0].requests.max(1) as f64),
            1
        ),
        l.cores
    );
    if let Some(r) = find(l, "pick_first") {
        let [a, p] = r.sides();
        let share = |s: &Side| s.busiest().map_or(0.0, |b| b.1);
        let _ = writeln!(
            w,
            "- `pick_first` sends everything to the first available backend: {} served {:.1} % \
             of its successful look-aside requests and {} {:.1} % of the proxied ones. A backend \
             reports whether it is available every {} ms, so until its next report every \
             request goes to the first one that last said it was, however full it is now: \
             `pick_first` failed {:.1} % of look-aside requests and {:.1} % of proxied ones.",
            a.busiest().map_or("–", |b| b.0),
            share(&a),
            p.busiest().map_or("–", |b| b.0),
            share(&p),
            l.report_interval_ms,
            a.error_percent(),
            p.error_percent()
        );
    }
    let spread: Vec<String> = l
        .strategies
        .iter()
        .filter(|r| r.strategy != "pick_first")
        .map(|r| {
            let [a, _] = r.sides();
            format!("`{}` {:.1} %", r.strategy, a.busiest().map_or(0.0, |b| b.1))
        })
        .collect();
    let _ = writeln!(
        w,
        "- The other strategies spread the look-aside requests: the busiest backend's share \
         was {} (even: {:.1} %). In look-aside mode the balancer never sees a `Compute`: \
         `least_connections` (requests in flight through the balancer) and `p2c_ewma` \
         (latency of what it proxied) choose on figures only proxied requests feed, and \
         `least_load` reads the load each backend last reported (through the proxy, plus what \
         the balancer sent it since), which is up to {} ms old.",
        spread.join(", "),
        100.0 / l.backends.max(1) as f64,
        l.report_interval_ms
    );
    let shares: Vec<f64> = l
        .strategies
        .iter()
        .filter_map(|r| {
            let a = &r.look_aside;
            (a.ok_latency_ms.mean > 0.0).then(|| a.get_best_ms.mean / a.ok_latency_ms.mean * 100.0)
        })
        .collect();
    let _ = writeln!(
        w,
        "- `GetBestServer` took {} ms on average under load ({} % of a successful look-aside \
         request's average time), against {:.3} ms for one loop alone.\n",
        span(
            l.strategies.iter().map(|r| r.look_aside.get_best_ms.mean),
            2
        ),
        span(shares.into_iter(), 0),
        l.get_best.report.get_best_ms.mean
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::StrategyRuns;

    #[test]
    fn backends_are_listed_in_numeric_order() {
        let mut r = StrategyRuns::default();
        r.look_aside.counts = [("b10".into(), 1), ("b2".into(), 1), ("b1".into(), 1)].into();
        r.proxy.counts = [("b3".into(), 1)].into();
        let l = LookAside {
            strategies: vec![r],
            ..LookAside::default()
        };
        assert_eq!(backend_names(&l), ["b1", "b2", "b3", "b10"]);
    }
}
