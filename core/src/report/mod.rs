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
mod tests;
