//! SVG plots of `membound sparsity`: log-magnitude histograms per site,
//! per-layer shares, and perplexity against achieved sparsity. Same house
//! style as `plot.rs` (plotters' SVG backend, Okabe–Ito colours).

use std::path::Path;

use anyhow::Result;
use membound::sparsity::quality::QualityPoint;
use membound::sparsity::{ActivationStats, HIST_BINS, HIST_BINS_PER_DECADE, SiteRecord};
use plotters::prelude::*;

use crate::plot::{color, err, legend, render_svg};

/// Share of values per quarter-decade of |x|, one line per site (summed
/// over layers); the legend gives each site's exact-zero share, which the
/// log axis cannot show.
pub fn histograms(path: &Path, model: &str, sites: &[(String, ActivationStats)]) -> Result<()> {
    render_svg(path, (900, 560), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        // Only the range where something was seen, padded by a decade.
        let used = |s: &ActivationStats| {
            let first = s.log10_hist.iter().position(|&c| c > 0);
            let last = s.log10_hist.iter().rposition(|&c| c > 0);
            first.zip(last)
        };
        let (lo, hi) = sites
            .iter()
            .filter_map(|(_, s)| used(s))
            .fold((HIST_BINS, 0), |(a, b), (f, l)| (a.min(f), b.max(l)));
        if lo > hi {
            return Ok(());
        }
        let pad = HIST_BINS_PER_DECADE;
        let (lo, hi) = (lo.saturating_sub(pad), (hi + pad).min(HIST_BINS - 1));
        let x0 = ActivationStats::bin_edge(lo) as f64;
        let x1 = ActivationStats::bin_edge(hi + 1) as f64;
        let ymax = sites
            .iter()
            .flat_map(|(_, s)| {
                let n = s.count.max(1) as f64;
                s.log10_hist.iter().map(move |&c| c as f64 / n)
            })
            .fold(0.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{model}: |x| of every projection input (all layers)"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, 0f64..ymax.max(1e-3))
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("log10 |x|  (quarter-decade bins)")
            .y_desc("share of values")
            .draw()
            .map_err(err(path))?;
        for (i, (site, s)) in sites.iter().enumerate() {
            let n = s.count.max(1) as f64;
            let c = color(i);
            let pts: Vec<(f64, f64)> = (lo..=hi)
                .map(|b| {
                    (
                        ActivationStats::bin_edge(b) as f64 + 0.5 / HIST_BINS_PER_DECADE as f64,
                        s.log10_hist[b] as f64 / n,
                    )
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(err(path))?
                .label(format!(
                    "{site}: exact zeros {:.2}%",
                    s.zero_share() * 100.0
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
        Ok(())
    })
}

/// Per layer, the share of each site's inputs below `rel_index`'s relative
/// threshold (solid) and exactly zero (dashed where non-zero).
pub fn layer_shares(
    path: &Path,
    model: &str,
    records: &[SiteRecord],
    rel_index: usize,
) -> Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let Some(&r) = first.stats.rel_thresholds.get(rel_index) else {
        return Ok(());
    };
    let layers = records.iter().map(|r| r.layer).max().unwrap_or(0) + 1;
    let mut sites: Vec<&str> = Vec::new();
    for rec in records {
        if !sites.contains(&rec.site.as_str()) {
            sites.push(&rec.site);
        }
    }
    render_svg(path, (900, 520), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "{model}: share of inputs below {r}·mean|x| (solid) and exactly 0 (dashed)"
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.5f64..layers as f64 - 0.5, 0f64..1f64)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .y_desc("share")
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .draw()
            .map_err(err(path))?;
        for (i, site) in sites.iter().enumerate() {
            let c = color(i);
            let mine: Vec<&SiteRecord> = records.iter().filter(|x| x.site == *site).collect();
            let rel: Vec<(f64, f64)> = mine
                .iter()
                .map(|x| (x.layer as f64, x.stats.rel_shares()[rel_index]))
                .collect();
            chart
                .draw_series(LineSeries::new(rel.clone(), c.stroke_width(2)))
                .map_err(err(path))?
                .label(site.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(rel.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(err(path))?;
            let zeros: Vec<(f64, f64)> = mine
                .iter()
                .map(|x| (x.layer as f64, x.stats.zero_share()))
                .collect();
            if zeros.iter().any(|p| p.1 > 0.0) {
                chart
                    .draw_series(DashedLineSeries::new(zeros, 6, 4, c.stroke_width(1)))
                    .map_err(err(path))?;
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight, path)?;
        Ok(())
    })
}

/// Perplexity relative to the same weights without sparsity against the
/// achieved sparsity, one line per weights × sites × method (log y).
pub fn quality(path: &Path, model: &str, points: &[QualityPoint]) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    // Past 2× the curves only say "broken": they are drawn at the top edge
    // so that the 1 % and 5 % lines stay readable.
    const CAP: f64 = 2.0;
    let ratio = |p: &QualityPoint| (1.0 + p.ppl_rise).min(CAP);
    let ymax = (points.iter().map(ratio).fold(1.0, f64::max) * 1.05).min(CAP * 1.02);
    let ymin = points.iter().map(ratio).fold(1.0, f64::min) * 0.98;
    render_svg(path, (900, 580), |root| {
        root.fill(&WHITE).map_err(err(path))?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "{model}: perplexity vs activation sparsity (held-out tokens; >2× drawn at 2×)"
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..1f64, (ymin..ymax).log_scale())
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("achieved sparsity (share of inputs zeroed, weighted by gated weights)")
            .y_desc("perplexity / dense perplexity")
            .x_label_formatter(&|x| format!("{:.0}%", x * 100.0))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(err(path))?;
        let mut series: Vec<(String, String, String)> = Vec::new();
        for p in points {
            let k = (p.weights.clone(), p.sites.clone(), p.method.clone());
            if !series.contains(&k) {
                series.push(k);
            }
        }
        for (i, (w, s, m)) in series.iter().enumerate() {
            let c = color(i);
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| &p.weights == w && &p.sites == s && &p.method == m)
                .map(|p| (p.achieved, ratio(p)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err(path))?
                .label(format!("{w}, {s} sites, {m}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(err(path))?;
        }
        for (rise, label) in [(0.01, "+1%"), (0.05, "+5%")] {
            let y = 1.0 + rise;
            if y < ymax {
                chart
                    .draw_series(DashedLineSeries::new(
                        vec![(0.0, y), (1.0, y)],
                        5,
                        5,
                        BLACK.mix(0.4).stroke_width(1),
                    ))
                    .map_err(err(path))?
                    .label(format!("perplexity {label}"))
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft, path)?;
        Ok(())
    })
}
