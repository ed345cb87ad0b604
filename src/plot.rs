//! `rewardrt eval --plot`: the margin distribution per subset as an SVG box plot (plotters).

use std::path::Path;

use anyhow::{bail, Result};
use plotters::prelude::*;
use rewardrt::eval::{quantile, EvalReport};

/// Box plot (quartiles, whiskers to the furthest value within 1.5 IQR) of `r(chosen) − r(rejected)` per subset, every pair as a dot, and the
/// zero line where a pair flips from right to wrong.
pub fn margins(path: &Path, report: &EvalReport, model: &str) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => {}
        _ => bail!(
            "--plot {}: only .svg is supported (rasterising text would need system fonts)",
            path.display()
        ),
    }
    draw(path, report, model).map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}

fn draw(path: &Path, report: &EvalReport, model: &str) -> Result<(), Box<dyn std::error::Error>> {
    let names: Vec<&String> = report.margins.keys().collect();
    let all = report.margins.values().flatten().copied();
    let (lo, hi) = all.fold((0f64, 0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
    let pad = ((hi - lo) * 0.06).max(0.1);
    let width = (240 * names.len() as u32 + 120).clamp(640, 1800);
    let root = SVGBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = names.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{model}: r(chosen) - r(rejected) per subset"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(8)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n, (lo - 3.0 * pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE)
        .y_desc("margin (a pair is right above the red line)")
        .draw()?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (n, 0.0)], RED.stroke_width(1)))?;
    for (i, name) in names.iter().enumerate() {
        let mut values = report.margins[name.as_str()].clone();
        values.sort_by(f64::total_cmp);
        let q = |p| quantile(&values, p);
        let (q1, median, q3) = (q(0.25), q(0.5), q(0.75));
        // Whiskers: the most extreme values within 1.5 IQR of the box (Tukey).
        let fence = 1.5 * (q3 - q1);
        let low = values.iter().copied().find(|&v| v >= q1 - fence).unwrap_or(q1);
        let high = values.iter().rev().copied().find(|&v| v <= q3 + fence).unwrap_or(q3);
        let c = i as f64 + 0.5;
        let box_style = BLUE.stroke_width(2);
        chart.draw_series([Rectangle::new([(c - 0.2, q1), (c + 0.2, q3)], box_style)])?;
        chart.draw_series([
            PathElement::new(vec![(c - 0.2, median), (c + 0.2, median)], BLUE.stroke_width(3)),
            PathElement::new(vec![(c, q3), (c, high)], box_style),
            PathElement::new(vec![(c, q1), (c, low)], box_style),
            PathElement::new(vec![(c - 0.1, high), (c + 0.1, high)], box_style),
            PathElement::new(vec![(c - 0.1, low), (c + 0.1, low)], box_style),
        ])?;
        // Every pair as a dot, spread sideways by rank so that equal margins stay visible.
        let count = values.len().max(2) as f64;
        chart.draw_series(values.iter().enumerate().map(|(k, &m)| {
            let x = c + 0.3 * ((k as f64 / (count - 1.0)) - 0.5);
            Circle::new((x, m), 2, BLACK.mix(0.45).filled())
        }))?;
        let g = &report.subsets[name.as_str()];
        let label = format!("{name}: {:.1}% of {}", g.accuracy * 100.0, g.pairs);
        chart.draw_series([Text::new(
            label,
            (c - 0.45, lo - 2.0 * pad),
            ("sans-serif", 15).into_font().color(&BLACK),
        )])?;
    }
    root.present()?;
    Ok(())
}
