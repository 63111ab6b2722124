//! Run reports for people: the training loss and evaluation metric curves of one run drawn as
//! an SVG file (two stacked panels), with `plotters`' SVG backend. The SVG backend writes
//! `<text>` elements and leaves fonts to the viewer, so no font files are needed.

use std::io::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use plotters::coord::types::{RangedCoordf64, RangedCoordi64};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One named curve: (step, value) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub name: String,
    pub points: Vec<(usize, f64)>,
}

/// Size of the whole picture in pixels.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 820;
const FONT: &str = "sans-serif";
/// The raw loss polyline keeps at most this many buckets (each its minimum and maximum), so a
/// long run still gives a small file; the plot is narrower than this in pixels anyway.
const MAX_BUCKETS: usize = 1500;

/// Colours of the metric curves (Tableau 10), cycled.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const LOSS_COLOUR: RGBColor = RGBColor(31, 119, 180);
const TEXT_COLOUR: RGBColor = RGBColor(40, 40, 40);

/// Two stacked panels in one SVG: training loss per step (top; raw loss faint plus a moving
/// average over `smooth` steps, drawn bold) and the evaluation metrics per evaluation step
/// (bottom; one line+markers per curve, y from 0 to 1 when all values lie in [0,1]). Axes
/// labelled ("step", "loss", "metric"), a legend naming each curve, a title.
///
/// Non-finite values are skipped; empty inputs give an empty panel with a note. Both panels
/// share the step axis so that evaluations line up with the loss above them.
pub fn curves_svg(
    title: &str,
    losses: &[(usize, f64)],
    metrics: &[Curve],
    smooth: usize,
) -> anyhow::Result<String> {
    let losses = finite(losses);
    let metrics: Vec<(&str, Vec<(i64, f64)>)> = metrics
        .iter()
        .map(|c| (c.name.as_str(), finite(&c.points)))
        .collect();
    let steps = losses
        .iter()
        .chain(metrics.iter().flat_map(|(_, p)| p.iter()))
        .map(|&(s, _)| s);
    let x_range = step_range(steps);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let body = root
            .titled(title, (FONT, 26).into_font().color(&TEXT_COLOUR))
            .map_err(plot_err)?;
        let (top, bottom) = body.split_vertically(body.dim_in_pixel().1 / 2);
        draw_loss_panel(&top, x_range.clone(), &losses, smooth)?;
        draw_metric_panel(&bottom, x_range, &metrics)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Writes curves_svg(...) to `path` atomically (write to a tempfile::NamedTempFile in the same
/// folder, then persist/rename).
pub fn write_curves_svg(
    path: &Path,
    title: &str,
    losses: &[(usize, f64)],
    metrics: &[Curve],
    smooth: usize,
) -> anyhow::Result<()> {
    let svg = curves_svg(title, losses, metrics, smooth)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".curves-")
        .suffix(".svg.tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(svg.as_bytes())
        .and_then(|()| tmp.flush())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    // Temporary files are created private (0600); a report is meant to be read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting permissions of {}", tmp.path().display()))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the plot into {}", path.display()))?;
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// The finite points, with steps as plot coordinates.
fn finite(points: &[(usize, f64)]) -> Vec<(i64, f64)> {
    points
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(s, v)| (i64::try_from(s).unwrap_or(i64::MAX), v))
        .collect()
}

/// The step axis: from the first to the last step, widened when there is at most one step.
fn step_range(steps: impl Iterator<Item = i64>) -> std::ops::Range<i64> {
    let (lo, hi) = steps.fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if lo > hi {
        0..1
    } else if lo == hi {
        lo.saturating_sub(1)..hi.saturating_add(1)
    } else {
        lo..hi
    }
}

/// A value axis covering `values` with a margin; all-equal values get a margin of their own.
fn value_range(values: impl Iterator<Item = f64>) -> anyhow::Result<std::ops::Range<f64>> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return Ok(0.0..1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 && span.is_finite() {
        span * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.1
    } else {
        0.5
    };
    let (lo, hi) = (lo - pad, hi + pad);
    anyhow::ensure!(
        lo.is_finite() && hi.is_finite() && (hi - lo).is_finite() && lo < hi,
        "values too large to plot ({lo} to {hi})"
    );
    Ok(lo..hi)
}

/// Trailing mean over the last `window` points (fewer at the start).
fn moving_average(points: &[(i64, f64)], window: usize) -> Vec<(i64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(s, v)) in points.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= points[i - window].1;
        }
        let n = (i + 1).min(window);
        let mean = sum / n as f64;
        if mean.is_finite() {
            out.push((s, mean));
        }
    }
    out
}

/// At most `MAX_BUCKETS` buckets of consecutive points, each kept as its minimum and maximum
/// (in step order), so spikes stay visible.
fn decimate(points: &[(i64, f64)]) -> Vec<(i64, f64)> {
    if points.len() <= 2 * MAX_BUCKETS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_BUCKETS);
    let mut out = Vec::with_capacity(2 * MAX_BUCKETS + 1);
    for chunk in points.chunks(per) {
        let min = chunk.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let max = chunk.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(&a), Some(&b)) = (min, max) {
            if a.0 <= b.0 {
                out.extend([a, b]);
            } else {
                out.extend([b, a]);
            }
        }
    }
    out.dedup();
    out
}

/// Tick labels of the value axis `range` (with `n` labels at most), with as many decimals as
/// the ticks' spacing needs: "0.25" and "0.50", "2.0" and "2.5", "100" and "200".
fn tick_label(range: std::ops::Range<f64>, n: usize) -> impl Fn(&f64) -> String {
    let ticks = RangedCoordf64::from(range.clone()).key_points(n);
    let spacing = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(range.end - range.start, f64::min);
    let decimals = (0..=8)
        .find(|&d| {
            let scaled = spacing * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(8) as usize;
    let largest = range.start.abs().max(range.end.abs());
    let scientific = !(largest < 1e7 && spacing >= 1e-5);
    move |v: &f64| {
        // -0.0 and rounding noise around zero print as zero.
        let v = if v.abs() < spacing * 1e-6 { 0.0 } else { *v };
        if scientific {
            format!("{v:.3e}")
        } else {
            format!("{v:.decimals$}")
        }
    }
}

/// A short rendering of a value for a legend.
fn short(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordi64, RangedCoordf64>>;

fn chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    x_range: std::ops::Range<i64>,
    y_range: std::ops::Range<f64>,
    y_desc: &str,
) -> anyhow::Result<Chart<'a, 'b>> {
    let y_labels = tick_label(y_range.clone(), 8);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 19).into_font().color(&TEXT_COLOUR))
        .margin_top(6)
        .margin_bottom(6)
        .margin_left(10)
        .margin_right(28)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, y_range)
        .map_err(plot_err)?;
    let label_font = (FONT, 14).into_font().color(&TEXT_COLOUR);
    let desc_font = (FONT, 16).into_font().color(&TEXT_COLOUR);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .x_labels(10)
        .y_labels(8)
        .y_label_formatter(&y_labels)
        .label_style(label_font)
        .axis_desc_style(desc_font)
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(TRANSPARENT)
        .axis_style(RGBColor(90, 90, 90))
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// A grey note in the middle of an empty panel.
fn note(chart: &Chart<'_, '_>, text: &str) -> anyhow::Result<()> {
    let area = chart.plotting_area();
    let (w, h) = area.dim_in_pixel();
    let style = (FONT, 18)
        .into_font()
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    let pixels = area.strip_coord_spec();
    pixels
        .draw(&Text::new(text, (w as i32 / 2, h as i32 / 2), style))
        .map_err(plot_err)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, pos: SeriesLabelPosition) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .margin(12)
        .legend_area_size(28)
        .label_font((FONT, 14).into_font().color(&TEXT_COLOUR))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)
}

fn draw_loss_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    x_range: std::ops::Range<i64>,
    losses: &[(i64, f64)],
    smooth: usize,
) -> anyhow::Result<()> {
    let y_range = value_range(losses.iter().map(|&(_, v)| v))?;
    let mut chart = chart(area, "training loss", x_range, y_range, "loss")?;
    let Some(&(_, last)) = losses.last() else {
        return note(&chart, "no training loss recorded");
    };
    if smooth > 1 && losses.len() > 1 {
        let raw = LOSS_COLOUR.mix(0.35).stroke_width(1);
        chart
            .draw_series(LineSeries::new(decimate(losses), raw))
            .map_err(plot_err)?
            .label(format!("loss per step (last {})", short(last)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], raw));
        let avg = moving_average(losses, smooth);
        // The window counts logged values: steps when the loss is logged at every step.
        let every_step = losses.windows(2).all(|w| w[1].0 - w[0].0 == 1);
        let unit = if every_step { "steps" } else { "logged values" };
        let label = match avg.last() {
            Some(&(_, v)) => format!("loss, mean of last {smooth} {unit} (last {})", short(v)),
            None => format!("loss, mean of last {smooth} {unit}"),
        };
        let bold = LOSS_COLOUR.stroke_width(3);
        chart
            .draw_series(LineSeries::new(decimate(&avg), bold))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], bold));
    } else {
        let bold = LOSS_COLOUR.stroke_width(2);
        // A lone point has no line to show: give every point a marker then.
        let size = if losses.len() == 1 { 4 } else { 0 };
        chart
            .draw_series(LineSeries::new(decimate(losses), bold.filled()).point_size(size))
            .map_err(plot_err)?
            .label(format!("loss per step (last {})", short(last)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], bold));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

fn draw_metric_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    x_range: std::ops::Range<i64>,
    metrics: &[(&str, Vec<(i64, f64)>)],
) -> anyhow::Result<()> {
    let values: Vec<f64> = metrics
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, v)| v))
        .collect();
    let y_range = if !values.is_empty() && values.iter().all(|v| (0.0..=1.0).contains(v)) {
        0.0..1.0
    } else {
        value_range(values.into_iter())?
    };
    let mut chart = chart(area, "evaluation metrics", x_range, y_range, "metric")?;
    if metrics.iter().all(|(_, p)| p.is_empty()) {
        note(&chart, "no evaluation recorded")?;
        if metrics.is_empty() {
            return Ok(());
        }
    }
    for (i, (name, points)) in metrics.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let line = colour.stroke_width(2);
        let label = match points.last() {
            Some(&(_, v)) => format!("{name} (last {})", short(v)),
            None => format!("{name} (no values)"),
        };
        chart
            .draw_series(
                LineSeries::new(points.iter().copied(), colour.filled().stroke_width(2))
                    .point_size(4),
            )
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (22, 0)], line)
                    + Circle::new((11, 0), 4, colour.filled())
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realistic() -> (Vec<(usize, f64)>, Vec<Curve>) {
        // Deterministic noise: a small LCG, no dependency on `rand`'s stream.
        let mut state = 12345u64;
        let mut noise = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let losses = (1..=300)
            .map(|s| {
                let t = s as f64;
                (s, 0.35 + 1.9 * (-t / 70.0).exp() + 0.25 * noise())
            })
            .collect();
        let steps = (50..=300).step_by(50);
        let accuracy = Curve {
            name: "accuracy".into(),
            points: steps
                .clone()
                .map(|s| (s, 0.9 - 0.5 * (-(s as f64) / 90.0).exp()))
                .collect(),
        };
        let f1 = Curve {
            name: "macro-F1".into(),
            points: steps
                .map(|s| (s, 0.85 - 0.6 * (-(s as f64) / 90.0).exp()))
                .collect(),
        };
        (losses, vec![accuracy, f1])
    }

    /// Elements of the SVG by tag name.
    fn count(svg: &str, tag: &str) -> usize {
        svg.matches(&format!("<{tag} ")).count()
    }

    /// The `<text>` contents, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text ")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    fn check_well_formed(svg: &str) {
        assert!(
            svg.trim_start().starts_with("<svg"),
            "{}",
            &svg[..80.min(svg.len())]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite coordinates"
        );
    }

    #[test]
    fn realistic_run_has_title_legends_axes_and_one_line_per_series() {
        let (losses, metrics) = realistic();
        let svg = curves_svg("lora r=8 on sst2", &losses, &metrics, 20).unwrap();
        check_well_formed(&svg);
        let texts = texts(&svg);
        for want in [
            "lora r=8 on sst2",
            "training loss",
            "evaluation metrics",
            "step",
            "loss",
            "metric",
        ] {
            assert!(
                texts.iter().any(|t| t == want),
                "no text {want:?} in {texts:?}"
            );
        }
        for name in [
            "accuracy (last ",
            "macro-F1 (last ",
            "loss per step",
            "mean of last 20 steps",
        ] {
            assert!(
                texts
                    .iter()
                    .any(|t| t.starts_with(name) || t.contains(name)),
                "no legend {name:?} in {texts:?}"
            );
        }
        // Series polylines: raw loss with 300 points, its average, one per metric with 6 points.
        let lines: Vec<usize> = svg
            .split("<polyline ")
            .skip(1)
            .map(|p| {
                let pts = &p[p.find("points=\"").unwrap() + 8..];
                pts[..pts.find('"').unwrap()].split_whitespace().count()
            })
            .collect();
        assert_eq!(lines.iter().filter(|&&n| n == 300).count(), 2, "{lines:?}");
        assert_eq!(lines.iter().filter(|&&n| n == 6).count(), 2, "{lines:?}");
        // Markers: 6 per metric plus one in each metric's legend entry.
        assert_eq!(count(&svg, "circle"), 2 * 6 + 2);
        // Metrics lie in [0, 1]: the metric axis runs from 0 to 1.
        assert!(texts.iter().any(|t| t == "0.0") && texts.iter().any(|t| t == "1.0"));
    }

    /// Writes the realistic plot for a person to look at:
    /// `cargo test -p peft-host --lib report::tests::sample -- --ignored --nocapture`.
    #[test]
    #[ignore = "writes a file for eyes, checks nothing more than the other tests"]
    fn sample() {
        let (losses, metrics) = realistic();
        let path = std::env::temp_dir().join("peft-report-sample.svg");
        write_curves_svg(&path, "lora r=8 on sst2", &losses, &metrics, 20).unwrap();
        let edge = std::env::temp_dir().join("peft-report-edge.svg");
        let one = [Curve {
            name: "accuracy".into(),
            points: vec![(100, 0.5)],
        }];
        write_curves_svg(&edge, "one point", &[(100, 2.0)], &one, 20).unwrap();
        let empty = std::env::temp_dir().join("peft-report-empty.svg");
        write_curves_svg(&empty, "nothing yet", &[], &[], 20).unwrap();
        println!(
            "wrote {}, {} and {}",
            path.display(),
            edge.display(),
            empty.display()
        );
    }

    #[test]
    fn title_and_names_are_escaped() {
        let metrics = [Curve {
            name: "p<0.5 & \"f1\"".into(),
            points: vec![(1, 0.5), (2, 0.6)],
        }];
        let svg = curves_svg("a < b & c", &[(1, 1.0), (2, 0.5)], &metrics, 5).unwrap();
        check_well_formed(&svg);
        assert!(svg.contains("a &lt; b &amp; c"));
        assert!(svg.contains("p&lt;0.5 &amp; &quot;f1&quot;"));
        assert!(!svg.contains("a < b"));
    }

    #[test]
    fn edge_cases_render() {
        let metric = |points: Vec<(usize, f64)>| {
            vec![Curve {
                name: "accuracy".into(),
                points,
            }]
        };
        // Nothing at all: both panels carry a note.
        let svg = curves_svg("empty", &[], &[], 10).unwrap();
        check_well_formed(&svg);
        assert!(svg.contains("no training loss recorded"));
        assert!(svg.contains("no evaluation recorded"));
        assert_eq!(count(&svg, "circle"), 0);

        // A single loss point and a single evaluation: both drawn as markers.
        let svg = curves_svg("one", &[(0, 2.0)], &metric(vec![(0, 0.5)]), 10).unwrap();
        check_well_formed(&svg);
        assert_eq!(
            count(&svg, "circle"),
            1 + 1 + 1,
            "loss, metric and its legend marker"
        );
        assert!(texts(&svg).iter().any(|t| t == "accuracy (last 0.5000)"));

        // One evaluation among many loss steps.
        let losses: Vec<_> = (0..50).map(|s| (s, 1.0 / (1.0 + s as f64))).collect();
        let svg = curves_svg("one eval", &losses, &metric(vec![(25, 0.7)]), 10).unwrap();
        check_well_formed(&svg);
        assert_eq!(count(&svg, "circle"), 2);

        // Non-finite values are skipped, not drawn.
        let losses = [
            (0, f64::NAN),
            (1, 2.0),
            (2, f64::INFINITY),
            (3, 1.0),
            (4, f64::NEG_INFINITY),
        ];
        let svg = curves_svg(
            "nan",
            &losses,
            &metric(vec![(1, f64::NAN), (3, 0.25), (4, 0.5)]),
            2,
        )
        .unwrap();
        check_well_formed(&svg);
        assert_eq!(count(&svg, "circle"), 2 + 1);

        // Only non-finite values: empty panels, the curve still named.
        let svg = curves_svg("all nan", &[(0, f64::NAN)], &metric(vec![(1, f64::NAN)]), 3).unwrap();
        check_well_formed(&svg);
        assert!(svg.contains("no training loss recorded"));
        assert!(svg.contains("accuracy (no values)"));

        // All-equal values, including zero, and metrics outside [0, 1].
        for v in [0.0, 3.5, -2.0, 1e300] {
            let losses: Vec<_> = (0..10).map(|s| (s, v)).collect();
            let curves = metric((0..10).map(|s| (s, v + 100.0)).collect());
            let svg = curves_svg("flat", &losses, &curves, 4).unwrap();
            check_well_formed(&svg);
            assert_eq!(count(&svg, "circle"), 11);
        }

        // Values whose range overflows: an error, not a panic.
        let huge = [(0, -1.7e308), (1, 1.7e308)];
        let err = curves_svg("huge", &huge, &[], 2).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");

        // smooth of 0 or 1: the raw loss alone.
        let svg = curves_svg("raw", &losses_of(30), &[], 0).unwrap();
        assert!(!svg.contains("mean of last"));
        assert!(svg.contains("loss per step"));
        let svg = curves_svg("raw", &losses_of(30), &[], 1).unwrap();
        assert!(!svg.contains("mean of last"));

        // Loss logged every 10 steps: the window is named in logged values.
        let sparse: Vec<_> = (0..30).map(|s| (10 * s, 1.0 / (1.0 + s as f64))).collect();
        let svg = curves_svg("sparse", &sparse, &[], 5).unwrap();
        assert!(svg.contains("mean of last 5 logged values"));
    }

    fn losses_of(n: usize) -> Vec<(usize, f64)> {
        (0..n).map(|s| (s, 1.0 / (1.0 + s as f64))).collect()
    }

    #[test]
    fn long_runs_are_decimated_but_keep_extremes() {
        let mut losses = losses_of(100_000);
        losses[54_321].1 = 9.0;
        let svg = curves_svg("long", &losses, &[], 100).unwrap();
        check_well_formed(&svg);
        assert!(svg.len() < 400_000, "{} bytes", svg.len());
        // The spike survives: the loss axis reaches past 9.
        assert!(texts(&svg)
            .iter()
            .any(|t| t.parse::<f64>().is_ok_and(|v| v >= 8.0)));
        let d = decimate(&finite(&losses));
        assert!(d.len() <= 2 * MAX_BUCKETS);
        assert!(d.contains(&(54_321, 9.0)));
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn tick_labels_have_the_decimals_their_spacing_needs() {
        let f = tick_label(0.0..1.0, 8);
        assert_eq!(
            (f(&0.0), f(&0.6), f(&1.0)),
            ("0.0".into(), "0.6".into(), "1.0".into())
        );
        let f = tick_label(1.8..2.2, 8);
        assert_eq!((f(&1.9), f(&2.0)), ("1.9".into(), "2.0".into()));
        let f = tick_label(0.0..1.0, 30);
        assert_eq!(f(&0.05), "0.05");
        assert_eq!(tick_label(0.0..900.0, 8)(&200.0), "200");
        assert_eq!(tick_label(-1e-9..1e-9, 8)(&-0.0), "0.000e0");
        assert_eq!(tick_label(0.0..2e300, 8)(&1e300), "1.000e300");
    }

    #[test]
    fn moving_average_is_trailing() {
        let p = [(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)];
        assert_eq!(
            moving_average(&p, 2),
            vec![(0, 1.0), (1, 2.0), (2, 4.0), (3, 6.0)]
        );
        assert_eq!(moving_average(&p, 0), p.to_vec());
    }

    #[test]
    fn write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.svg");
        let (losses, metrics) = realistic();
        write_curves_svg(&path, "run", &losses, &metrics, 10).unwrap();
        // Overwriting works too and stays atomic.
        write_curves_svg(&path, "run again", &losses, &metrics, 10).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("curves.svg")]);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written,
            curves_svg("run again", &losses, &metrics, 10).unwrap()
        );
        // A missing folder is an error, not a panic.
        let err = write_curves_svg(&dir.path().join("no/such/x.svg"), "t", &[], &[], 1);
        assert!(err.is_err());
    }
}
