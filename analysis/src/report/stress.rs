//! The report's A-5 section: the targets with their measured figures, a table per
//! scenario, and what the numbers mean, all from [`Stress`].

use std::fmt::Write;

use crate::results::{PolicyRun, Stress};

/// `p2c-ewma`'s p99 over `round-robin`'s, with one replica slow, must be at most this.
const P2C_TARGET: f64 = 0.2;

/// Hedged `round-robin`'s p99.9 over unhedged, with one replica slow, at most this.
const HEDGE_TARGET: f64 = 0.5;

fn find<'a>(runs: &'a [PolicyRun], policy: &str, hedge: Option<&str>) -> Option<&'a PolicyRun> {
    runs.iter()
        .find(|r| r.policy == policy && r.hedge.as_deref() == hedge)
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "**PASS**"
    } else {
        "**MISS**"
    }
}

/// The policies of `runs` (unhedged) that pass `keep`, as a Markdown list of names.
fn names(runs: &[PolicyRun], keep: impl Fn(&PolicyRun) -> bool) -> String {
    let v: Vec<String> = runs
        .iter()
        .filter(|r| r.hedge.is_none() && keep(r))
        .map(|r| format!("`{}`", r.policy))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The lowest and highest of `f` over `runs` (unhedged) that pass `keep`, as
/// `lo–hi` with `decimals` decimals.
fn span(
    runs: &[PolicyRun],
    keep: impl Fn(&PolicyRun) -> bool,
    f: impl Fn(&PolicyRun) -> f64,
    decimals: usize,
) -> String {
    let v: Vec<f64> = runs
        .iter()
        .filter(|r| r.hedge.is_none() && keep(r))
        .map(&f)
        .collect();
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(f64::MIN, f64::max);
    let (lo, hi) = (format!("{lo:.decimals$}"), format!("{hi:.decimals$}"));
    match v.len() {
        0 => "–".into(),
        _ if lo == hi => lo,
        _ => format!("{lo}–{hi}"),
    }
}

/// The run of `runs` (unhedged) with the least `f`.
fn least(runs: &[PolicyRun], f: impl Fn(&PolicyRun) -> f64) -> Option<&PolicyRun> {
    runs.iter()
        .filter(|r| r.hedge.is_none())
        .min_by(|a, b| f(a).total_cmp(&f(b)))
}

fn hedges_cell(r: &PolicyRun, counted: bool) -> String {
    match (&r.hedge, r.hedges, r.hedge_percent()) {
        (None, _, _) => "–".into(),
        (Some(_), Some(h), Some(p)) => {
            let wins = r.hedge_wins.map_or(String::new(), |w| format!(", {w} won"));
            format!("{h} ({p:.2} %{wins})")
        }
        _ if !counted => "not counted".into(),
        _ => "–".into(),
    }
}

/// One scenario's table: latency, throughput, errors, the faulty replica's share
/// (or, with no fault, the busiest replica's), hedges.
fn table(w: &mut String, runs: &[PolicyRun], faulty: Option<&str>, counted: bool) {
    let share = faulty.map_or("busiest replica's share".to_string(), |f| {
        format!("{f}'s share")
    });
    let _ = writeln!(
        w,
        "| policy | p50 (ms) | p99 (ms) | p99.9 (ms) | req/s | errors | {share} | hedges sent |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let l = &r.latency_ms;
        let share = faulty.map_or(r.busiest_share(), |f| r.share(f));
        let _ = writeln!(
            w,
            "| `{}` | {:.1} | {:.1} | {:.1} | {:.0} | {} ({:.2} %) | {share:.1} % | {} |",
            r.label(),
            l.p50,
            l.p99,
            l.p999,
            r.throughput,
            r.errors,
            r.error_percent(),
            hedges_cell(r, counted)
        );
    }
    let _ = writeln!(w);
}

/// The two targets, each with its measured figures.
fn targets(w: &mut String, s: &Stress) {
    let _ = writeln!(w, "### Targets\n");
    let rr = find(&s.slow, "round-robin", None);
    match (find(&s.slow, "p2c-ewma", None), rr) {
        (Some(p), Some(rr)) => {
            let ratio = p.latency_ms.p99 / rr.latency_ms.p99.max(1e-9);
            let _ = writeln!(
                w,
                "- With {} slow, `p2c-ewma`'s p99 at most a fifth of `round-robin`'s: {:.1} ms \
                 against {:.1} ms, {ratio:.3}× (target ≤ {P2C_TARGET}×): {}.",
                s.faulty,
                p.latency_ms.p99,
                rr.latency_ms.p99,
                verdict(ratio <= P2C_TARGET)
            );
        }
        _ => {
            let _ = writeln!(w, "- `p2c-ewma` against `round-robin`: not measured.");
        }
    }
    for r in s
        .slow
        .iter()
        .filter(|r| r.policy == "round-robin" && r.hedge.is_some())
    {
        let Some(rr) = rr else { break };
        let ratio = r.latency_ms.p999 / rr.latency_ms.p999.max(1e-9);
        let budget = r.hedge_budget.unwrap_or(0.0);
        let (sent, within) = match r.hedge_percent() {
            Some(p) => (format!("{p:.2} % of requests hedged"), p <= budget),
            None => ("hedges not counted (no `lb_hedges_total`)".into(), false),
        };
        let _ = writeln!(
            w,
            "- Hedging (`{}`) cuts `round-robin`'s p99.9 by at least half within its {budget} % \
             budget: {:.1} ms against {:.1} ms unhedged, {ratio:.3}× (target ≤ {HEDGE_TARGET}×), \
             {sent}: {}.",
            r.hedge.as_deref().unwrap_or_default(),
            r.latency_ms.p999,
            rr.latency_ms.p999,
            verdict(ratio <= HEDGE_TARGET && within)
        );
    }
    let _ = writeln!(w);
}

/// What the numbers of (a), (b) and (c) say, each sentence read off the tables.
fn meaning(w: &mut String, s: &Stress) {
    let _ = writeln!(w, "### What the numbers mean\n");
    slow_meaning(w, s);
    failing_meaning(w, s);
    compute_meaning(w, s);
    let _ = writeln!(w);
}

/// (a): who kept p99 off the slow replica, and what hedging did.
fn slow_meaning(w: &mut String, s: &Stress) {
    let f = s.faulty.as_str();
    let delay = s.delay_ms as f64;
    let share = |r: &PolicyRun| r.share(f);
    let fast = |r: &PolicyRun| r.latency_ms.p99 < delay / 2.0;
    let _ = writeln!(
        w,
        "- (a) p99 under {:.0} ms: {} ({f} got {} % of their requests). p99 at the delay: {} \
         ({f} got {} %). Every request that lands on {f} waits {} ms, so a policy that sends it \
         more than 1 % of requests has a p99 of about {} ms however fast the other replicas \
         are, and more than 0.1 % puts p99.9 there; p99.9 under {:.0} ms too: {}. \
         `pick-first` and `quadratic` give {f} a fixed share (none, and the arc the ring gives \
         it), so theirs says where {f} sits, not how they react.",
        delay / 2.0,
        names(&s.slow, fast),
        span(&s.slow, fast, share, 1),
        names(&s.slow, |r| !fast(r)),
        span(&s.slow, |r| !fast(r), share, 1),
        s.delay_ms,
        s.delay_ms,
        delay / 2.0,
        names(&s.slow, |r| r.latency_ms.p999 < delay / 2.0)
    );
    let hedged: Vec<&PolicyRun> = s.slow.iter().filter(|r| r.hedge.is_some()).collect();
    let (Some(rr), false) = (find(&s.slow, "round-robin", None), hedged.is_empty()) else {
        return;
    };
    let each: Vec<String> = hedged
        .iter()
        .map(|r| {
            format!(
                "`{}` p99 {:.1} ms, p99.9 {:.1} ms, {}",
                r.hedge.as_deref().unwrap_or_default(),
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.hedge_percent()
                    .map_or("hedges not counted".into(), |p| format!("{p:.2} % hedged"))
            )
        })
        .collect();
    let share = rr.share(f);
    // What each budget leaves unhedged, and whether a percentile hedge waits for
    // the slow answers themselves.
    let budgets: Vec<String> = hedged
        .iter()
        .filter_map(|r| r.hedge_budget)
        .fold(Vec::<f64>::new(), |mut seen, b| {
            if !seen.contains(&b) {
                seen.push(b);
            }
            seen
        })
        .iter()
        .map(|b| {
            if *b < share {
                format!(
                    "a {b} % budget leaves at least {:.1} % of requests waiting for {f}'s answer, \
                     above the 1 % that sets p99 and the 0.1 % that sets p99.9",
                    share - b
                )
            } else {
                format!("a {b} % budget covers every one of them")
            }
        })
        .collect();
    let _ = writeln!(
        w,
        "- (a) Hedged `round-robin`: {} (unhedged: p99 {:.1} ms, p99.9 {:.1} ms). `round-robin` \
         sends {f} {share:.1} % of requests: {}. A percentile hedge waits for the running \
         percentile of response times, which is {f}'s delay itself once more than 100 − NN % \
         of answers are that slow (`p95` here): it then fires when the slow answer is about to \
         arrive anyway; below that share (`p75`), it fires early.",
        each.join("; "),
        rr.latency_ms.p99,
        rr.latency_ms.p999,
        budgets.join("; ")
    );
}

/// (b): errors follow the share of the failing replica.
fn failing_meaning(w: &mut String, s: &Stress) {
    let f = s.faulty.as_str();
    let Some(rr) = find(&s.failing, "round-robin", None) else {
        return;
    };
    let clean = |r: &PolicyRun| r.errors == 0;
    let share = |r: &PolicyRun| r.share(f);
    let _ = writeln!(
        w,
        "- (b) A `500` from {f} goes back to the client (the balancer tries the next candidate \
         only when a replica cannot be reached or breaks off), so a policy's errors are about \
         its share of {f} times {} %. No errors: {} ({f} got {} % of their requests). Errors \
         from the others: {} % of requests ({f} got {} %); `round-robin` {:.2} %. Under half of \
         `round-robin`'s errors: {}.",
        s.fail_percent,
        names(&s.failing, clean),
        span(&s.failing, clean, share, 1),
        span(&s.failing, |r| !clean(r), PolicyRun::error_percent, 2),
        span(&s.failing, |r| !clean(r), share, 1),
        rr.error_percent(),
        names(&s.failing, |r| r.error_percent() < rr.error_percent() / 2.0)
    );
}

/// (c): throughput and p99 when CPU is what runs out.
fn compute_meaning(w: &mut String, s: &Stress) {
    let fastest = least(&s.compute, |r| -r.throughput);
    let steadiest = least(&s.compute, |r| r.latency_ms.p99);
    let (Some(a), Some(b)) = (fastest, steadiest) else {
        return;
    };
    let crowded: Vec<String> = s
        .compute
        .iter()
        .filter(|r| r.busiest_share() > 100.0 / 3.0)
        .map(|r| {
            format!(
                "`{}` ({:.1} %, {:.0} req/s)",
                r.policy,
                r.busiest_share(),
                r.throughput
            )
        })
        .collect();
    let _ = writeln!(
        w,
        "- (c) Most throughput: `{}`, {:.0} req/s; lowest p99: `{}`, {:.0} ms; all policies \
         {} req/s. More than a third of the requests on one replica: {}. The {} replicas share \
         the machine's {} cores, so a replica that looks idle competes for the same CPU as the \
         busy ones, and the policies differ less than they would across machines.",
        a.policy,
        a.throughput,
        b.policy,
        b.latency_ms.p99,
        span(&s.compute, |_| true, |r| r.throughput, 0),
        if crowded.is_empty() {
            "none".to_string()
        } else {
            crowded.join(", ")
        },
        s.replicas,
        s.cores
    );
}

/// The A-5 section.
pub fn markdown(w: &mut String, s: &Stress) {
    let _ = writeln!(w, "## A-5: policies under stress\n");
    let _ = writeln!(
        w,
        "One deployment of {} replicas (`{}` runtime, {}-core machine), every load-aware policy \
         and the design's `quadratic` hash in turn, switched with `PUT /policy`. Each run sets \
         the fault on {} through the balancer (`POST /replicas/{}/control`), sends {} requests \
         that are not counted so the policy's latency and failure estimates learn the fault, \
         then {} counted requests to `/home` with {} in flight (`loadgen`; p99.9 by nearest \
         rank over every request's latency). Before each run the faulty replica (in (c) every \
         replica) is replaced by a fresh one, `/rm` then `/add` under the same name and so the \
         same place on the ring: the balancer's estimates of a replica live as long as it \
         does and take about a minute to forget a fault, so no run inherits another's. (c) sends `/compute?n=N`, \
         N drawn uniformly from {}..={} per request (naive Fibonacci: CPU-bound), {} + {} \
         requests with {} in flight and no fault. Hedged runs are `round-robin` with `hedge` \
         and `hedge_budget` set by `PUT /policy`. A-5 took {:.0} s.\n",
        s.replicas,
        s.runtime,
        s.cores,
        s.faulty,
        s.faulty,
        s.warmup,
        s.requests,
        s.concurrency,
        s.compute_n.0,
        s.compute_n.1,
        s.compute_warmup,
        s.compute_requests,
        s.compute_concurrency,
        s.wall_s
    );
    if !s.hedge_counters {
        let _ = writeln!(
            w,
            "`/metrics` had no `lb_hedges_total` in this run: the build measured does not count \
             hedges (or does not hedge yet), so hedges sent are unknown.\n"
        );
    }
    targets(w, s);
    let _ = writeln!(
        w,
        "### (a) {} answers {} ms late\n\n![A-5 (a) latency](charts/a5-slow-latency.png)\n\n\
         ![A-5 (a) share](charts/a5-slow-share.png)\n",
        s.faulty, s.delay_ms
    );
    table(w, &s.slow, Some(&s.faulty), s.hedge_counters);
    let _ = writeln!(
        w,
        "### (b) {} fails {} % of its requests\n\n\
         ![A-5 (b) errors](charts/a5-failing-errors.png)\n\n\
         ![A-5 (b) latency](charts/a5-failing-latency.png)\n",
        s.faulty, s.fail_percent
    );
    table(w, &s.failing, Some(&s.faulty), s.hedge_counters);
    let _ = writeln!(
        w,
        "### (c) `/compute?n={}..={}`, no fault\n\n\
         ![A-5 (c) throughput](charts/a5-compute-throughput.png)\n\n\
         ![A-5 (c) latency](charts/a5-compute-latency.png)\n",
        s.compute_n.0, s.compute_n.1
    );
    table(w, &s.compute, None, s.hedge_counters);
    meaning(w, s);
}
