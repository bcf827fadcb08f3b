//! SVG plots of the study results (plotters' SVG backend, no font files
//! needed): the SQNR-vs-bits frontier per codec, weight histograms with their
//! fitted Gaussian, and synthetic SQNR against group size.

use std::path::Path;

use anyhow::{Result, anyhow};
use membound::study::synthetic::SyntheticStudy;
use membound::study::weights::{Histogram, SettingSummary};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Maps a plotting error to one naming the file.
pub(crate) fn err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{}: plotting failed: {e}", path.display())
}

/// Draws an SVG of `size` with `draw` and writes it to `path` atomically
/// (rendered to a string, then a temporary file and a rename), so a
/// reader never sees half a plot.
pub(crate) fn render_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root)?;
        root.present().map_err(err(path))?;
    }
    membound::sparsity::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Draws `chart`'s series legend at `at`, on a translucent white box with a
/// black border.
pub(crate) fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    at: SeriesLabelPosition,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err(path))
}

/// Series colour `i` (cycling).
pub(crate) fn color(i: usize) -> RGBColor {
    // Okabe–Ito and a few more: distinguishable, colour-blind safe first.
    const C: [(u8, u8, u8); 12] = [
        (0, 114, 178),
        (230, 159, 0),
        (0, 158, 115),
        (213, 94, 0),
        (204, 121, 167),
        (86, 180, 233),
        (189, 172, 0),
        (68, 170, 153),
        (128, 128, 128),
        (153, 79, 0),
        (102, 51, 153),
        (0, 102, 51),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// SQNR (mean over tensors) against bits/weight, one series per codec
/// family, with the overall Pareto frontier dashed.
pub fn frontier(path: &Path, title: &str, settings: &[SettingSummary]) -> Result<()> {
    let pts: Vec<&SettingSummary> = settings
        .iter()
        .filter(|s| {
            s.bits_per_weight.is_finite() && s.bits_per_weight > 0.0 && s.mean_sqnr_db.is_finite()
        })
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let xmin = pts
        .iter()
        .map(|s| s.bits_per_weight)
        .fold(f64::INFINITY, f64::min)
        * 0.8;
    let xmax = pts.iter().map(|s| s.bits_per_weight).fold(0.0, f64::max) * 1.25;
    let ymax = pts.iter().map(|s| s.mean_sqnr_db).fold(0.0, f64::max) + 3.0;
    let ymin = pts.iter().map(|s| s.mean_sqnr_db).fold(0.0, f64::min) - 1.0;
    render_svg(path, (900, 600), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((xmin..xmax).log_scale(), ymin..ymax)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("bits per weight (all side information, log scale)")
            .y_desc("SQNR, dB (mean over tensors)")
            .x_labels(10)
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{}", (x * 100.0).round() / 100.0))
            .draw()
            .map_err(err(path))?;
        let mut families: Vec<&str> = Vec::new();
        for s in &pts {
            if !families.contains(&s.family.as_str()) {
                families.push(&s.family);
            }
        }
        for (i, fam) in families.iter().enumerate() {
            let mut series: Vec<(f64, f64)> = pts
                .iter()
                .filter(|s| s.family == *fam)
                .map(|s| (s.bits_per_weight, s.mean_sqnr_db))
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Each family's own frontier as the line; every setting as a dot.
            let mut line = Vec::new();
            let mut best = f64::NEG_INFINITY;
            for &(x, y) in &series {
                if y > best {
                    line.push((x, y));
                    best = y;
                }
            }
            let c = color(i);
            chart
                .draw_series(LineSeries::new(line, c.stroke_width(2)))
                .map_err(err(path))?
                .label(*fam)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(
                    series
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, c.filled())),
                )
                .map_err(err(path))?;
        }
        let mut front: Vec<(f64, f64)> = pts
            .iter()
            .filter(|s| s.on_frontier)
            .map(|s| (s.bits_per_weight, s.mean_sqnr_db))
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(DashedLineSeries::new(front, 6, 4, BLACK.stroke_width(1)))
            .map_err(err(path))?
            .label("Pareto frontier")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1)));
        legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
        Ok(())
    })
}

fn hist_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    h: &Histogram,
    log: bool,
    path: &Path,
) -> Result<()> {
    let n = h.counts.len().max(1);
    let width = (h.hi - h.lo) / n as f64;
    let total = h.count as f64;
    let gauss = |x: f64| {
        if h.std > 0.0 {
            let z = (x - h.mean) / h.std;
            total * width * (-0.5 * z * z).exp() / (h.std * (2.0 * std::f64::consts::PI).sqrt())
        } else {
            0.0
        }
    };
    let peak = h.counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let ymax = peak.max(gauss(h.mean)) * 1.1;
    let caption = if log {
        "log scale: the tails"
    } else {
        "linear scale"
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(55);
    let bars: Vec<(f64, f64, f64)> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            (
                h.lo + i as f64 * width,
                h.lo + (i + 1) as f64 * width,
                c as f64,
            )
        })
        .collect();
    let curve: Vec<(f64, f64)> = (0..=400)
        .map(|i| h.lo + (h.hi - h.lo) * i as f64 / 400.0)
        .map(|x| (x, gauss(x)))
        .collect();
    let blue = RGBColor(0, 114, 178);
    let red = RGBColor(213, 94, 0);
    if log {
        let mut chart = builder
            .build_cartesian_2d(h.lo..h.hi, (0.5f64..ymax).log_scale())
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("weight")
            .y_desc("count")
            .draw()
            .map_err(err(path))?;
        chart
            .draw_series(
                bars.iter()
                    .filter(|b| b.2 > 0.0)
                    .map(|&(a, b, c)| Rectangle::new([(a, 0.5), (b, c)], blue.mix(0.5).filled())),
            )
            .map_err(err(path))?;
        chart
            .draw_series(LineSeries::new(
                curve.into_iter().filter(|p| p.1 >= 0.5),
                red.stroke_width(2),
            ))
            .map_err(err(path))?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(h.lo..h.hi, 0f64..ymax)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("weight")
            .y_desc("count")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(err(path))?;
        chart
            .draw_series(
                bars.iter()
                    .map(|&(a, b, c)| Rectangle::new([(a, 0.0), (b, c)], blue.mix(0.5).filled())),
            )
            .map_err(err(path))?;
        chart
            .draw_series(LineSeries::new(curve, red.stroke_width(2)))
            .map_err(err(path))?
            .label("Gaussian, same mean and σ")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::UpperRight, path)?;
    }
    Ok(())
}

/// A tensor's weight histogram over mean ± 6σ with the Gaussian of the same
/// mean and σ, on a linear and a log axis side by side.
pub fn histogram(path: &Path, model: &str, h: &Histogram) -> Result<()> {
    render_svg(path, (1000, 420), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let title = format!(
            "{model}: {} — excess kurtosis {:.2}, {} weights ({} beyond ±6σ)",
            h.tensor,
            h.excess_kurtosis,
            h.count,
            h.below + h.above
        );
        let root = root.titled(&title, ("sans-serif", 17)).map_err(err(path))?;
        let (left, right) = root.split_horizontally(500);
        hist_panel(&left, h, false, path)?;
        hist_panel(&right, h, true, path)?;
        Ok(())
    })
}

/// 4-bit affine SQNR against values per group, one line per distribution,
/// with the notes' figures marked.
pub fn grouping(path: &Path, s: &SyntheticStudy) -> Result<()> {
    let names: Vec<String> = s
        .distributions
        .iter()
        .map(|d| {
            d.notes
                .map_or_else(|| d.description.clone(), |n| n.name.to_string())
        })
        .collect();
    let mut pts: Vec<(f64, Vec<f64>)> = s
        .grouping
        .iter()
        .map(|g| (g.group_len as f64, g.sqnr_db.clone()))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if pts.is_empty() {
        return Ok(());
    }
    let all: Vec<f64> = pts
        .iter()
        .flat_map(|p| p.1.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let ymin = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0) - 1.0;
    let ymax = all.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 2.0;
    let (xmin, xmax) = (pts[0].0 * 0.8, pts[pts.len() - 1].0 * 1.25);
    render_svg(path, (900, 560), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "4-bit affine SQNR against group size (same values, regrouped)",
                ("sans-serif", 19),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((xmin..xmax).log_scale(), ymin..ymax)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("values sharing one scale and bias (log scale)")
            .y_desc("SQNR, dB")
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(err(path))?;
        for (i, name) in names.iter().enumerate() {
            let c = color(i);
            let line: Vec<(f64, f64)> = pts
                .iter()
                .filter_map(|p| p.1.get(i).map(|&y| (p.0, y)))
                .collect();
            chart
                .draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))
                .map_err(err(path))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(
                    line.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, c.filled())),
                )
                .map_err(err(path))?;
            if let Some(n) = s.distributions.get(i).and_then(|d| d.notes) {
                chart
                    .draw_series(std::iter::once(TriangleMarker::new(
                        (s.options.cols as f64, n.affine_db),
                        7,
                        c.stroke_width(2),
                    )))
                    .map_err(err(path))?;
            }
        }
        chart
            .draw_series(std::iter::once(TriangleMarker::new((xmin, ymin), 0, BLACK)))
            .map_err(err(path))?
            .label("▲ = the notes' figure")
            .legend(|(x, y)| TriangleMarker::new((x + 9, y), 6, BLACK.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::LowerLeft, path)?;
        Ok(())
    })
}

/// `bench kernels --plot`: each case's median time against the bytes it
/// reads (log–log), one colour per weight format, with the plain-read
/// floor as a black line: a kernel on the line reads as fast as the device
/// reads anything of that size.
pub fn kernels(path: &Path, report: &membound::bench::kernels::Report) -> Result<()> {
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let rows: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.bytes_read > 0 && r.median_us.is_finite() && r.median_us > 0.0)
        .collect();
    if rows.is_empty() {
        return Err(anyhow!("{}: no measured case to plot", path.display()));
    }
    let mut floor: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.floor_us.map(|f| (mib(r.bytes_read), f)))
        .collect();
    floor.sort_by(|a, b| a.0.total_cmp(&b.0));
    floor.dedup_by(|a, b| a.0 == b.0);
    let xs = rows.iter().map(|r| mib(r.bytes_read));
    let ys = rows
        .iter()
        .map(|r| r.median_us)
        .chain(floor.iter().map(|p| p.1));
    let (xmin, xmax) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (ymin, ymax) = ys.fold((f64::INFINITY, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
    let mut labels: Vec<&str> = Vec::new();
    for r in &rows {
        if !labels.contains(&r.weights.as_str()) {
            labels.push(&r.weights);
        }
    }
    render_svg(path, (1000, 650), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{}: GEMV time against bytes read", report.device),
                ("sans-serif", 19),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (xmin * 0.8..xmax * 1.25).log_scale(),
                (ymin * 0.8..ymax * 1.25).log_scale(),
            )
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("MiB read per call (log scale)")
            .y_desc("median µs per call (log scale)")
            .light_line_style(WHITE)
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|v| significant(*v))
            .y_label_formatter(&|v| significant(*v))
            .draw()
            .map_err(err(path))?;
        if !floor.is_empty() {
            chart
                .draw_series(LineSeries::new(floor, BLACK.stroke_width(2)))
                .map_err(err(path))?
                .label("floor: a plain read of the same bytes")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2))
                });
        }
        for (i, label) in labels.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(
                    rows.iter()
                        .filter(|r| r.weights == *label)
                        .map(|r| Circle::new((mib(r.bytes_read), r.median_us), 4, c.filled())),
                )
                .map_err(err(path))?
                .label(*label)
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
        Ok(())
    })
}

/// `v` with two significant digits, for log-axis labels.
fn significant(v: f64) -> String {
    if v <= 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (1 - v.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Tokens/s over dense against sparsity for each sparse and zero-overhead
/// bound row of a `bench decode` report (GPU-resident where measured, else
/// step by step): one colour per weight spec, solid with dots for the
/// sparse kernels, dashed with triangles for the bound; the research
/// notes' model 1/(1 − s) in grey and dense (1×) in black.
pub fn sparse_decode(path: &Path, report: &membound::bench::decode::Report) -> Result<()> {
    // (weights, bound, sparsity, × dense)
    let mut points: Vec<(&str, bool, f64, f64)> = report
        .rows
        .iter()
        .filter_map(|r| {
            let x = r.resident_speedup_vs_dense.or(r.speedup_vs_dense)?;
            Some((r.weights.as_str(), r.zero_overhead_bound, r.sparsity?, x))
        })
        .collect();
    if points.is_empty() {
        return Err(anyhow!(
            "{}: no sparse or bound row to plot (measure with --sparsity, or read such reports with --from)",
            path.display()
        ));
    }
    points.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut labels: Vec<&str> = Vec::new();
    for p in &points {
        if !labels.contains(&p.0) {
            labels.push(p.0);
        }
    }
    let smax = points.iter().fold(0.0f64, |m, p| m.max(p.2));
    let ymax = points.iter().fold(1.0f64, |m, p| m.max(p.3)) * 1.25;
    let xmax = (smax + 0.05).min(1.0);
    let all_resident = report
        .rows
        .iter()
        .filter(|r| r.sparsity.is_some())
        .all(|r| r.resident_speedup_vs_dense.is_some());
    render_svg(path, (900, 600), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{}: decode speed with activation sparsity", report.adapter),
                ("sans-serif", 19),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("share of the sparse projections' inputs skipped")
            .y_desc(if all_resident {
                "tokens/s ÷ dense (GPU-resident)"
            } else {
                "tokens/s ÷ dense (GPU-resident where measured, else step by step)"
            })
            .light_line_style(WHITE)
            .x_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()
            .map_err(err(path))?;
        let grey = RGBColor(150, 150, 150);
        let notes: Vec<(f64, f64)> = (0..=100)
            .map(|i| xmax * f64::from(i) / 100.0)
            .map(|s| (s, 1.0 / (1.0 - s)))
            .filter(|p| p.1 <= ymax)
            .collect();
        chart
            .draw_series(LineSeries::new(notes, grey.stroke_width(2)))
            .map_err(err(path))?
            .label("research notes' model 1/(1 − s)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 1.0), (xmax, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(err(path))?
            .label("dense")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1)));
        for (i, label) in labels.iter().enumerate() {
            let c = color(i);
            for bound in [false, true] {
                let series: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.0 == *label && p.1 == bound)
                    .map(|p| (p.2, p.3))
                    .collect();
                if series.is_empty() {
                    continue;
                }
                if bound {
                    chart
                        .draw_series(DashedLineSeries::new(
                            series.clone(),
                            6,
                            4,
                            c.stroke_width(2),
                        ))
                        .map_err(err(path))?;
                    chart
                        .draw_series(
                            series
                                .iter()
                                .map(|&p| TriangleMarker::new(p, 6, c.filled())),
                        )
                        .map_err(err(path))?
                        .label(format!("{label}: zero-overhead bound"))
                        .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, c.filled()));
                } else {
                    chart
                        .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))
                        .map_err(err(path))?;
                    chart
                        .draw_series(series.iter().map(|&p| Circle::new(p, 4, c.filled())))
                        .map_err(err(path))?
                        .label(format!("{label}: sparse kernels"))
                        .legend(move |(x, y)| Circle::new((x + 9, y), 4, c.filled()));
                }
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
        Ok(())
    })
}
