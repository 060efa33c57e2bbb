//! The charts, drawn from [`Results`] alone with plotters' bitmap backend. Text needs
//! a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core`, which
//! `scripts/analysis.sh` installs when it is missing.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::loadgen::Latency;

use crate::results::{LookAside, PolicyRun, Recovery, Results, Run, Side, Stress};

/// Where the font is looked for.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Res = Result<(), String>;

/// A line: its legend label, its color index, and its `(N, y)` points.
pub type Series = (String, usize, Vec<(f64, f64)>);

/// Error bars in a color: `(N, low, high)` each.
pub type Bars = (usize, Vec<(f64, f64, f64)>);

/// One measure across the rows of a bar chart: its legend label, its color index,
/// and one value per row.
pub type Measure = (String, usize, Vec<f64>);

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Makes `FONT` the `sans-serif` of every chart. Call once before drawing.
pub fn register_font() -> Res {
    let bytes = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    // plotters keeps fonts for the life of the process, hence the leak (once, ~700 KB).
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT} is not a usable font"))
}

/// A fixed color per scheme label, so every chart agrees.
pub fn color(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
    ];
    P[i % P.len()]
}

/// Bars of requests per replica for `runs` (one group per replica, one bar per run),
/// with each run's mean as a dashed line.
pub fn bars(path: &Path, title: &str, runs: &[(&str, usize, &Run)]) -> Res {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = runs.iter().map(|r| r.2.n).max().unwrap_or(1);
    let ymax = runs
        .iter()
        .flat_map(|r| r.2.counts.values().copied())
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                format!("Server{}", i as usize + 1)
            } else {
                String::new()
            }
        })
        .y_desc("requests handled")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let width = 0.8 / runs.len() as f64;
    for (k, (label, ci, run)) in runs.iter().enumerate() {
        let c = color(*ci);
        let bars = (0..run.n).map(|i| {
            let v = run
                .counts
                .get(&format!("Server{}", i + 1))
                .copied()
                .unwrap_or(0) as f64;
            let x0 = i as f64 + 0.1 + k as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], c.filled())
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        let mean = run.mean();
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, mean), (n as f64, mean)],
                8,
                5,
                c.stroke_width(2),
            ))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present().map_err(err)
}

/// Every chart's legend, in one style; `position` keeps it off the data.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, position: SeriesLabelPosition) -> Res
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)
}

/// Lines over N: one `(label, color, points)` per series, optional error bars.
pub fn lines(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[Series],
    error_bars: &[Bars],
    y_from_zero: bool,
) -> Res {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ys = series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
    let ys = ys.chain(
        error_bars
            .iter()
            .flat_map(|e| e.1.iter().flat_map(|p| [p.1, p.2])),
    );
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let lo = if y_from_zero { 0.0 } else { lo * 0.9 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(1.8f64..6.2, lo..hi * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("replicas N")
        .y_desc(y_desc)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (ci, bars) in error_bars {
        let c = color(*ci);
        chart
            .draw_series(bars.iter().map(|&(x, a, b)| {
                ErrorBar::new_vertical(x, a, (a + b) / 2.0, b, c.stroke_width(2), 12)
            }))
            .map_err(err)?;
    }
    for (label, ci, points) in series {
        let c = color(*ci);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(3)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, c.filled())))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)
}

/// Horizontal bars, one group per row (named down the left, first at the top) and
/// one bar per measure: rows are policies, whose names are too long to sit under
/// vertical bars. `x` is the value axis (`0.0..hi`, or `(lo..hi).log_scale()` when the
/// values span decades); `mark` draws a dashed reference line with its label.
pub fn hbars<X>(
    path: &Path,
    title: &str,
    x_desc: &str,
    rows: &[String],
    measures: &[Measure],
    x: X,
    mark: Option<(f64, &str)>,
) -> Res
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let n = rows.len().max(1);
    let row_px = 12 + 12 * measures.len() as u32;
    // A band under the last row holds the legend, so it never hides a bar.
    let entries = measures.len() + usize::from(mark.is_some());
    let band = (entries as f64 * 22.0 + 16.0) / row_px as f64;
    let height = 150 + ((n as f64 + band) * row_px as f64) as u32;
    let root = BitMapBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(260)
        .build_cartesian_2d(x, -band..n as f64)
        .map_err(err)?;
    let (lo, hi) = {
        let r = chart.x_range();
        (r.start, r.end)
    };
    // Row i is the band from n-i-1 to n-i, so the first row is at the top.
    let row_at = |y: f64| {
        let i = (n as f64 - y - 0.5).round();
        ((n as f64 - y - 0.5 - i).abs() < 0.01 && i >= 0.0).then_some(i as usize)
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels((n + band.ceil() as usize) * 2 + 1)
        .y_label_formatter(&|y| {
            row_at(*y)
                .and_then(|i| rows.get(i))
                .cloned()
                .unwrap_or_default()
        })
        .x_label_formatter(&|x| tick(*x))
        .x_desc(x_desc)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let thick = 0.8 / measures.len().max(1) as f64;
    for (k, (label, ci, values)) in measures.iter().enumerate() {
        let c = color(*ci);
        let bars = values.iter().enumerate().map(|(i, v)| {
            let top = n as f64 - i as f64 - 0.1 - k as f64 * thick;
            let v = v.clamp(lo, hi);
            Rectangle::new([(lo, top - thick * 0.9), (v, top)], c.filled())
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    if let Some((at, label)) = mark {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(at, -band), (at, n as f64)],
                8,
                5,
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)
}

/// An axis value with no trailing zeros: `200`, `1.5`, `0.25`.
fn tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A log axis from below the smallest to above the largest of `values` (ms).
fn log_axis(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return 0.1..10.0;
    }
    lo * 0.5..hi * 2.0
}

/// p50, p99 and p99.9 of each run: on a log axis when they span two decades or
/// more (a slow replica's 500 ms beside 2 ms answers), else a linear one, whose
/// labels stay readable where a log axis would have only a decade's worth.
fn latency_bars(path: &Path, title: &str, runs: &[PolicyRun]) -> Res {
    let rows: Vec<String> = runs.iter().map(PolicyRun::label).collect();
    let pick = |f: fn(&PolicyRun) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let measures = [
        ("p50".to_string(), 2, pick(|r| r.latency_ms.p50)),
        ("p99".to_string(), 1, pick(|r| r.latency_ms.p99)),
        ("p99.9".to_string(), 0, pick(|r| r.latency_ms.p999)),
    ];
    let values = || measures.iter().flat_map(|m| m.2.iter().copied());
    let x = log_axis(values());
    if x.end / x.start >= 400.0 {
        hbars(
            path,
            title,
            "latency (ms, log scale)",
            &rows,
            &measures,
            x.log_scale(),
            None,
        )
    } else {
        let x = linear_axis(values(), 1.0);
        hbars(path, title, "latency (ms)", &rows, &measures, x, None)
    }
}

/// A linear axis from 0 to a little above the largest of `values` (at least `floor`).
fn linear_axis(values: impl Iterator<Item = f64>, floor: f64) -> std::ops::Range<f64> {
    0.0..values.fold(floor, f64::max) * 1.15
}

/// A-5's charts: latency of (a) and (b), the faulty replica's share, (b)'s errors,
/// (c)'s throughput and latency.
pub fn stress(dir: &Path, s: &Stress) -> Res {
    let even = 100.0 / s.replicas.max(1) as f64;
    let even_label = format!("even share (1/{})", s.replicas);
    let rows = |runs: &[PolicyRun]| runs.iter().map(PolicyRun::label).collect::<Vec<_>>();
    latency_bars(
        &dir.join("a5-slow-latency.png"),
        &format!(
            "A-5 (a): latency, {} answering {} ms late (measured)",
            s.faulty, s.delay_ms
        ),
        &s.slow,
    )?;
    let share: Vec<f64> = s.slow.iter().map(|r| r.share(&s.faulty)).collect();
    hbars(
        &dir.join("a5-slow-share.png"),
        &format!(
            "A-5 (a): requests the slow {} answered (measured)",
            s.faulty
        ),
        "% of requests",
        &rows(&s.slow),
        &[(format!("{}'s share", s.faulty), 1, share.clone())],
        linear_axis(share.into_iter(), even),
        Some((even, &even_label)),
    )?;
    latency_bars(
        &dir.join("a5-failing-latency.png"),
        &format!(
            "A-5 (b): latency, {} failing {} % (measured)",
            s.faulty, s.fail_percent
        ),
        &s.failing,
    )?;
    let errors: Vec<f64> = s.failing.iter().map(PolicyRun::error_percent).collect();
    let share: Vec<f64> = s.failing.iter().map(|r| r.share(&s.faulty)).collect();
    hbars(
        &dir.join("a5-failing-errors.png"),
        &format!(
            "A-5 (b): errors, {} failing {} % (measured)",
            s.faulty, s.fail_percent
        ),
        "% of requests",
        &rows(&s.failing),
        &[
            ("errors".to_string(), 0, errors.clone()),
            (format!("{}'s share", s.faulty), 1, share.clone()),
        ],
        linear_axis(errors.into_iter().chain(share), even),
        Some((even, &even_label)),
    )?;
    let n = format!("/compute?n={}..={}", s.compute_n.0, s.compute_n.1);
    let throughput: Vec<f64> = s.compute.iter().map(|r| r.throughput).collect();
    hbars(
        &dir.join("a5-compute-throughput.png"),
        &format!("A-5 (c): throughput, {n} (measured)"),
        "requests per second",
        &rows(&s.compute),
        &[("req/s".to_string(), 1, throughput.clone())],
        linear_axis(throughput.into_iter(), 1.0),
        None,
    )?;
    latency_bars(
        &dir.join("a5-compute-latency.png"),
        &format!("A-5 (c): latency, {n} (measured)"),
        &s.compute,
    )
}

/// A-6's charts: successful requests per second, latency of the successful ones,
/// and the share that failed, each strategy through both paths.
pub fn lookaside(dir: &Path, l: &LookAside) -> Res {
    let rows: Vec<String> = l.strategies.iter().map(|r| r.strategy.clone()).collect();
    let per = |path: usize, f: &dyn Fn(&Side) -> f64| -> Vec<f64> {
        l.strategies.iter().map(|r| f(&r.sides()[path])).collect()
    };
    let load = format!(
        "{} clients, {} backends × {}",
        l.clients, l.backends, l.max_concurrent
    );
    let goodput = [
        ("look-aside".to_string(), 1, per(0, &|s| s.goodput())),
        ("proxy".to_string(), 0, per(1, &|s| s.goodput())),
    ];
    hbars(
        &dir.join("a6-throughput.png"),
        &format!("A-6: successful requests per second, {load} (measured)"),
        "successful requests per second",
        &rows,
        &goodput,
        linear_axis(goodput.iter().flat_map(|m| m.2.iter().copied()), 1.0),
        None,
    )?;
    let ok = |s: &Side, f: fn(&Latency) -> f64| s.ok_latency_ms.map_or(0.0, f);
    let latency = [
        (
            "look-aside avg".to_string(),
            1,
            per(0, &|s| ok(s, |l| l.mean)),
        ),
        (
            "look-aside p99".to_string(),
            5,
            per(0, &|s| ok(s, |l| l.p99)),
        ),
        ("proxy avg".to_string(), 0, per(1, &|s| ok(s, |l| l.mean))),
        ("proxy p99".to_string(), 4, per(1, &|s| ok(s, |l| l.p99))),
    ];
    let title = format!("A-6: latency of successful requests, {load} (measured)");
    let values = || latency.iter().flat_map(|m| m.2.iter().copied());
    let x = log_axis(values());
    let path = dir.join("a6-latency.png");
    if x.end / x.start >= 400.0 {
        hbars(
            &path,
            &title,
            "latency (ms, log scale)",
            &rows,
            &latency,
            x.log_scale(),
            None,
        )?;
    } else {
        let x = linear_axis(values(), 1.0);
        hbars(&path, &title, "latency (ms)", &rows, &latency, x, None)?;
    }
    let errors = [
        ("look-aside".to_string(), 1, per(0, &|s| s.error_percent())),
        ("proxy".to_string(), 0, per(1, &|s| s.error_percent())),
    ];
    hbars(
        &dir.join("a6-errors.png"),
        &format!("A-6: requests turned away or failed, {load} (measured)"),
        "% of requests",
        &rows,
        &errors,
        linear_axis(errors.iter().flat_map(|m| m.2.iter().copied()), 1.0),
        None,
    )
}

/// A-3's timeline: successes and failures per second, replicas healthy (right axis),
/// and a vertical line at each kill.
pub fn timeline(path: &Path, r: &Recovery) -> Res {
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    // The load's last second is cut short by its deadline: drawn, it would look like
    // a collapse. Plot only the seconds the replica sampler covered in full.
    let full = r.timeline.len().min(r.replicas.len());
    let r = &Recovery {
        timeline: r.timeline[..full].to_vec(),
        ..r.clone()
    };
    let secs = r.timeline.len().max(1) as f64;
    let ymax = r
        .timeline
        .iter()
        .map(|s| s.ok + s.failed)
        .max()
        .unwrap_or(1) as f64
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption("A-3: load while replicas are killed", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..secs, 0f64..ymax)
        .map_err(err)?
        .set_secondary_coord(0f64..secs, 0f64..(r.n as f64 + 1.5));
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("requests per second")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("healthy replicas")
        .y_labels(r.n + 2)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let per_sec = |f: fn(&crate::loadgen::Second) -> u64| {
        r.timeline
            .iter()
            .enumerate()
            .map(move |(i, s)| (i as f64 + 0.5, f(s) as f64))
            .collect::<Vec<_>>()
    };
    let (ok_c, fail_c, rep_c) = (color(1), color(0), color(2));
    chart
        .draw_series(LineSeries::new(per_sec(|s| s.ok), ok_c.stroke_width(3)))
        .map_err(err)?
        .label("successes / s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ok_c.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(
            per_sec(|s| s.failed),
            fail_c.stroke_width(3),
        ))
        .map_err(err)?
        .label("failures / s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], fail_c.stroke_width(3)));
    for k in &r.kills {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(k.at_s, 0.0), (k.at_s, ymax)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("kill {}", k.hostname),
                (k.at_s + 0.2, ymax * 0.97),
                ("sans-serif", 15),
            )))
            .map_err(err)?;
    }
    let steps: Vec<(f64, f64)> = r
        .replicas
        .iter()
        .enumerate()
        .flat_map(|(i, n)| [(i as f64, *n as f64), (i as f64 + 1.0, *n as f64)])
        .collect();
    chart
        .draw_secondary_series(LineSeries::new(steps, rep_c.stroke_width(3)))
        .map_err(err)?
        .label("healthy replicas (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], rep_c.stroke_width(3)));
    legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
    root.present().map_err(err)
}

/// Every chart of the report into `dir`: of the experiments `res` holds (A-5 or A-6
/// alone when it was run alone into no earlier results).
pub fn all(dir: &Path, res: &Results, labels: &[String]) -> Res {
    std::fs::create_dir_all(dir).map_err(err)?;
    if !res.experiments.is_empty() {
        schemes(dir, res, labels)?;
    }
    if let Some(r) = &res.a3 {
        timeline(&dir.join("a3.png"), r)?;
    }
    if let Some(s) = &res.a5 {
        stress(dir, s)?;
    }
    if let Some(l) = &res.a6 {
        lookaside(dir, l)?;
    }
    Ok(())
}

/// and A-4's charts.
fn schemes(dir: &Path, res: &Results, labels: &[String]) -> Res {
    let find = |name: &str, scheme: &str, n: usize| {
        res.experiments
            .iter()
            .find(|r| r.name == name && r.scheme == scheme && r.n == n)
    };
    if let Some(q) = find("A-1", "quadratic", 3) {
        bars(
            &dir.join("a1.png"),
            "A-1: requests per replica, quadratic, N = 3 (measured)",
            &[("quadratic", 0, q)],
        )?;
    }
    let a1: Vec<(&str, usize, &Run)> = labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| find("A-1", l, 3).map(|r| (l.as_str(), i, r)))
        .collect();
    bars(
        &dir.join("a4-a1.png"),
        "A-4: A-1 for every scheme, N = 3 (measured)",
        &a1,
    )?;

    let sweep =
        |scheme: &str| -> Vec<&Run> { (2..=6).filter_map(|n| find("A-2", scheme, n)).collect() };
    let q = sweep("quadratic");
    let pts = |f: &dyn Fn(&Run) -> f64| q.iter().map(|r| (r.n as f64, f(r))).collect::<Vec<_>>();
    lines(
        &dir.join("a2.png"),
        "A-2: load per replica, quadratic (measured; bars: mean ± std dev)",
        "requests per replica",
        &[
            ("mean (average load)".into(), 1, pts(&|r| r.mean())),
            (
                "busiest replica".into(),
                0,
                pts(&|r| r.counts.values().copied().max().unwrap_or(0) as f64),
            ),
            ("least busy replica".into(), 2, pts(&|r| r.min() as f64)),
        ],
        &[(
            1,
            q.iter()
                .map(|r| (r.n as f64, r.mean() - r.std_dev(), r.mean() + r.std_dev()))
                .collect(),
        )],
        true,
    )?;
    let spread: Vec<_> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = sweep(l)
                .iter()
                .map(|r| (r.n as f64, r.max_over_mean()))
                .collect();
            (l.clone(), i, p)
        })
        .collect();
    lines(
        &dir.join("a4-a2.png"),
        "A-4: busiest replica / mean, every scheme (measured)",
        "max / mean",
        &spread,
        &[],
        false,
    )?;
    let moved: Vec<_> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = res
                .simulation
                .movement
                .iter()
                .filter(|m| &m.scheme == l)
                .map(|m| (m.n as f64, m.added))
                .collect();
            (l.clone(), i, p)
        })
        .chain(std::iter::once((
            "ideal 1/(N+1)".to_string(),
            7,
            (2..=6)
                .map(|n| (n as f64, 1.0 / (n as f64 + 1.0)))
                .collect(),
        )))
        .collect();
    lines(
        &dir.join("a4-movement.png"),
        "A-4: keys moved when replica N+1 joins (computed, all 6-digit ids)",
        "fraction of keys moved",
        &moved,
        &[],
        true,
    )
}
