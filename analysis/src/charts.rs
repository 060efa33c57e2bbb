//! The charts, drawn from [`Results`] alone with plotters' bitmap backend. Text needs
//! a TrueType font: DejaVu Sans from Debian's `fonts-dejavu-core`, which
//! `scripts/analysis.sh` installs when it is missing.

use std::path::Path;

use plotters::prelude::*;

use crate::results::{Recovery, Results, Run};

/// Where the font is looked for.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Res = Result<(), String>;

/// A line: its legend label, its color index, and its `(N, y)` points.
pub type Series = (String, usize, Vec<(f64, f64)>);

/// Error bars in a color: `(N, low, high)` each.
pub type Bars = (usize, Vec<(f64, f64, f64)>);

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

/// Every chart of the report into `dir`.
pub fn all(dir: &Path, res: &Results, labels: &[String]) -> Res {
    std::fs::create_dir_all(dir).map_err(err)?;
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
    )?;
    if let Some(r) = &res.a3 {
        timeline(&dir.join("a3.png"), r)?;
    }
    Ok(())
}
