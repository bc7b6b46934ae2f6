//! SVG plots of what the harness measured: latency CDFs per mode, and a value over time.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

const COLORS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
];

/// One line of a plot: its label and its points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` as lines on linear axes that fit them all.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for s in series {
        for (x, y) in &s.points {
            x_max = x_max.max(*x);
            y_max = y_max.max(*y);
        }
    }
    let (x_max, y_max) = ((x_max * 1.05).max(1e-9), (y_max * 1.05).max(1e-9));
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).context("drawing")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .context("chart axes")?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .context("chart mesh")?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .context("series")?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .context("legend")?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A latency CDF per mode: `cdf` points are (latency ms, fraction at or below).
pub fn latency_cdf(
    path: &Path,
    title: &str,
    modes: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let series: Vec<Series> = modes
        .iter()
        .map(|(label, cdf)| Series {
            label: label.clone(),
            points: cdf.clone(),
        })
        .collect();
    lines(path, title, "latency (ms)", "fraction of requests", &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_series() {
        let dir = std::env::temp_dir().join(format!("edgeplane-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cdf.svg");
        latency_cdf(
            &path,
            "test",
            &[
                ("local".into(), vec![(1.0, 0.5), (2.0, 1.0)]),
                ("smart".into(), vec![(0.5, 0.5), (1.0, 1.0)]),
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("local") && svg.contains("smart"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
