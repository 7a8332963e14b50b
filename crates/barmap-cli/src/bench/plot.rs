//! The SVG plot of populate time vs mapping size.

use std::path::PathBuf;

use super::MIB;

/// Named series of (mapping size in bytes, populate time in ms).
pub(super) type Series = Vec<(String, Vec<(usize, f64)>)>;

/// Draws `series` on log-log axes into an SVG file at `path`.
pub(super) fn plot(path: &PathBuf, series: &Series) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let xs = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x as f64 / MIB as f64));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (ymin, ymax) = ys.fold((f64::MAX, 0f64), |(a, b), y| (a.min(y), b.max(y)));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "barmap populate (1 thread, first read of every page)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (xmin / 1.5..xmax * 1.5).log_scale(),
            (ymin.max(1e-3) / 1.5..ymax * 1.5).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("mapping size (MiB)")
        .y_desc("populate time (ms, median)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if name == "native" {
            BLACK.stroke_width(3)
        } else {
            color.stroke_width(2)
        };
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(x, y)| (x as f64 / MIB as f64, y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, style.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
