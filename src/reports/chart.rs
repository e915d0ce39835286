//! Charts with plotters: each is drawn once per backend, as SVG text (inlined into HTML
//! reports) and as a PNG file. Text uses DejaVu Sans compiled into the binary, so charts
//! need no system font. Every chart has a title, axis labels with units and a legend, and
//! grows with the number of models so that 50 stay legible.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// A drawing error, as text (plotters' error types are generic over the backend).
#[derive(Debug, thiserror::Error)]
#[error("drawing '{what}': {message}")]
pub(crate) struct ChartError {
    pub what: String,
    pub message: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> ChartError {
    ChartError {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Registers the embedded font under the family names plotters asks for.
fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            let _ =
                plotters::style::register_font(family, FontStyle::Normal, dejavu::sans::regular());
            let _ = plotters::style::register_font(family, FontStyle::Bold, dejavu::sans::bold());
        }
    });
}

/// One drawn chart: its SVG text and where its PNG went.
pub(crate) struct Chart {
    pub title: String,
    pub svg: String,
    pub png: Option<std::path::PathBuf>,
}

/// A categorical colour for series `i` (Tableau 10, then a golden-angle hue walk).
pub(crate) fn color(i: usize) -> RGBColor {
    const T10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    if i < T10.len() {
        let (r, g, b) = T10[i];
        return RGBColor(r, g, b);
    }
    let hue = (i as f64 * 137.507_764) % 360.0;
    let (r, g, b) = hsl(hue, 0.65, 0.45);
    RGBColor(r, g, b)
}

fn hsl(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = l - c / 2.0;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    (
        ((r + m) * 255.0) as u8,
        ((g + m) * 255.0) as u8,
        ((b + m) * 255.0) as u8,
    )
}

/// Viridis, t in [0, 1].
pub(crate) fn viridis(t: f64) -> RGBColor {
    const V: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 44.0, 122.0),
        (59.0, 81.0, 139.0),
        (44.0, 113.0, 142.0),
        (33.0, 144.0, 141.0),
        (39.0, 173.0, 129.0),
        (92.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (V.len() - 1) as f64;
    let i = (x.floor() as usize).min(V.len() - 2);
    let f = x - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f) as u8;
    RGBColor(
        mix(V[i].0, V[i + 1].0),
        mix(V[i].1, V[i + 1].1),
        mix(V[i].2, V[i + 1].2),
    )
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// A legend column: colour swatch and name per series.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    names: &[String],
    heading: &str,
) -> Result<(), String> {
    let text = TextStyle::from(("sans-serif", 14).into_font());
    area.draw(&Text::new(
        heading.to_string(),
        (10, 10),
        ("sans-serif", 15).into_font().style(FontStyle::Bold),
    ))
    .map_err(|e| e.to_string())?;
    for (i, name) in names.iter().enumerate() {
        let y = 36 + 17 * i as i32;
        area.draw(&Rectangle::new(
            [(10, y + 3), (28, y + 12)],
            color(i).filled(),
        ))
        .map_err(|e| e.to_string())?;
        area.draw(&Text::new(shorten(name, 40), (34, y), text.clone()))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The axes of a `lines` chart and its series (the values `keep` accepts). A macro because
/// the log and linear charts are different types in plotters.
macro_rules! mesh_and_lines {
    ($chart:ident, $n:expr, $x_fmt:expr, $y_label:expr, $series:expr, $keep:expr) => {{
        $chart
            .configure_mesh()
            .x_labels($n)
            .x_label_formatter(&$x_fmt)
            .y_desc($y_label)
            .x_desc("block / component")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (_, v)) in $series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .filter(|(_, y)| $keep(**y))
                .map(|(x, y)| (x as f64, *y))
                .collect();
            $chart
                .draw_series(LineSeries::new(pts.clone(), color(i).stroke_width(2)))
                .map_err(|e| e.to_string())?;
            $chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color(i).filled())))
                .map_err(|e| e.to_string())?;
        }
    }};
}

/// Lines over categories: one series per model, with markers; `log` for a log y axis.
pub(crate) fn lines(
    title: &str,
    x_labels: &[String],
    series: &[(String, Vec<f64>)],
    y_label: &str,
    log: bool,
    png: Option<&Path>,
) -> Result<Chart, ChartError> {
    let height = (640).max(120 + 17 * series.len() as u32);
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            let (plot, side) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 330);
            legend(
                &side.margin(40, 10, 10, 10),
                &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                "models",
            )?;
            // The values a chart can place: finite, and positive on a log axis.
            let keep = |v: f64| v.is_finite() && (!log || v > 0.0);
            let finite: Vec<f64> = series
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .filter(|v| keep(*v))
                .collect();
            let (lo, hi) = if finite.is_empty() {
                (0.0, 1.0)
            } else {
                (
                    finite.iter().copied().fold(f64::INFINITY, f64::min),
                    finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            };
            let n = x_labels.len().max(1);
            let mut builder = ChartBuilder::on(&plot);
            builder
                .caption(title, ("sans-serif", 22))
                .margin(16)
                .x_label_area_size(60)
                .y_label_area_size(90);
            let x_fmt = |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    x_labels[i as usize].clone()
                } else {
                    String::new()
                }
            };
            if log {
                let (lo, hi) = (lo.max(1e-300) / 1.5, (hi * 1.5).max(lo * 2.0));
                let mut chart = builder
                    .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())
                    .map_err(|e| e.to_string())?;
                mesh_and_lines!(chart, n, x_fmt, y_label, series, keep);
            } else {
                let pad = ((hi - lo) * 0.08).max(1e-12);
                let lo = if lo >= 0.0 {
                    (lo - pad).max(0.0)
                } else {
                    lo - pad
                };
                let mut chart = builder
                    .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), lo..(hi + pad))
                    .map_err(|e| e.to_string())?;
                mesh_and_lines!(chart, n, x_fmt, y_label, series, keep);
            }
            Ok(())
        }};
    }
    render_both(
        title,
        (1500, height),
        png,
        |r: &DrawingArea<SVGBackend<'_>, Shift>| body!(r),
        |r: &DrawingArea<BitMapBackend<'_>, Shift>| body!(r),
    )
}

/// Renders with one closure per backend (plotters' areas are generic over the backend).
fn render_both(
    title: &str,
    size: (u32, u32),
    png: Option<&Path>,
    svg_f: impl Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
    png_f: impl Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<Chart, ChartError> {
    fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(title, e))?;
        svg_f(&root).map_err(|e| err(title, e))?;
        root.present().map_err(|e| err(title, e))?;
    }
    if let Some(p) = png {
        let root = BitMapBackend::new(p, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(title, e))?;
        png_f(&root).map_err(|e| err(title, e))?;
        root.present().map_err(|e| err(title, e))?;
    }
    Ok(Chart {
        title: title.to_string(),
        svg,
        png: png.map(Path::to_path_buf),
    })
}

/// A heat map: rows x columns of values with a viridis colour bar; values are written in
/// the cells when they fit.
pub(crate) fn heatmap(
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
    value_label: &str,
    fmt: &dyn Fn(f64) -> String,
    png: Option<&Path>,
) -> Result<Chart, ChartError> {
    let (nr, nc) = (row_labels.len().max(1), col_labels.len().max(1));
    let cell_w = if nc > 30 { 24 } else { 46 };
    let cell_h = if nr > 30 { 16 } else { 24 };
    let label_w = 300u32;
    let width = label_w + 130 + cell_w * nc as u32 + 40;
    let height = 140 + cell_h * nr as u32 + 80;
    let finite: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if finite.is_empty() {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo, lo + 1.0)
    };
    let annotate = cell_w >= 46 && cell_h >= 24;
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            root.draw(&Text::new(
                title.to_string(),
                (20, 14),
                ("sans-serif", 22).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            let x0 = label_w as i32;
            let y0 = 110;
            for (j, c) in col_labels.iter().enumerate() {
                let x = x0 + j as i32 * cell_w as i32 + cell_w as i32 / 2;
                let style = TextStyle::from(("sans-serif", 12).into_font())
                    .transform(FontTransform::Rotate270);
                root.draw(&Text::new(shorten(c, 16), (x - 6, y0 - 6), style))
                    .map_err(|e| e.to_string())?;
            }
            for (i, r) in row_labels.iter().enumerate() {
                let y = y0 + i as i32 * cell_h as i32;
                root.draw(&Text::new(
                    shorten(r, 38),
                    (10, y + cell_h as i32 / 2 - 7),
                    ("sans-serif", 13).into_font(),
                ))
                .map_err(|e| e.to_string())?;
                for (j, v) in values[i].iter().enumerate() {
                    let x = x0 + j as i32 * cell_w as i32;
                    let t = (v - lo) / (hi - lo);
                    let fill = if v.is_finite() {
                        viridis(t)
                    } else {
                        RGBColor(230, 230, 230)
                    };
                    root.draw(&Rectangle::new(
                        [(x, y), (x + cell_w as i32 - 1, y + cell_h as i32 - 1)],
                        fill.filled(),
                    ))
                    .map_err(|e| e.to_string())?;
                    if annotate && v.is_finite() {
                        let ink = if t > 0.6 { BLACK } else { WHITE };
                        root.draw(&Text::new(
                            fmt(*v),
                            (x + 3, y + cell_h as i32 / 2 - 6),
                            ("sans-serif", 11).into_font().color(&ink),
                        ))
                        .map_err(|e| e.to_string())?;
                    }
                }
            }
            // Colour bar.
            let bx = x0 + cell_w as i32 * nc as i32 + 30;
            let bh = (cell_h as i32 * nr as i32).max(120);
            for k in 0..bh {
                let t = 1.0 - k as f64 / bh as f64;
                root.draw(&Rectangle::new(
                    [(bx, y0 + k), (bx + 18, y0 + k + 1)],
                    viridis(t).filled(),
                ))
                .map_err(|e| e.to_string())?;
            }
            root.draw(&Text::new(
                fmt(hi),
                (bx + 22, y0 - 4),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            root.draw(&Text::new(
                fmt(lo),
                (bx + 22, y0 + bh - 10),
                ("sans-serif", 12).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            root.draw(&Text::new(
                value_label.to_string(),
                (20, 44),
                ("sans-serif", 14).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            Ok(())
        }};
    }
    render_both(
        title,
        (width.max(700), height.max(320)),
        png,
        |r: &DrawingArea<SVGBackend<'_>, Shift>| body!(r),
        |r: &DrawingArea<BitMapBackend<'_>, Shift>| body!(r),
    )
}

/// A 2-D map: points marked with short labels (`marks`, explained in the legend next to
/// `names`); axes in the distances' units.
pub(crate) fn map(
    title: &str,
    marks: &[String],
    names: &[String],
    coords: &[[f64; 2]],
    subtitle: &str,
    png: Option<&Path>,
) -> Result<Chart, ChartError> {
    let height = (820).max(140 + 17 * names.len() as u32);
    let xs: Vec<f64> = coords.iter().map(|c| c[0]).collect();
    let ys: Vec<f64> = coords.iter().map(|c| c[1]).collect();
    let span = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let ((x0, x1), (y0, y1)) = (span(&xs), span(&ys));
    let side = (x1 - x0).max(y1 - y0).max(1e-12) * 0.56;
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let numbered: Vec<String> = marks
        .iter()
        .zip(names)
        .map(|(m, n)| format!("{m}  {n}"))
        .collect();
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            let (plot, side_area) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 360);
            legend(
                &side_area.margin(40, 10, 10, 10),
                &numbered,
                "models (mark on the map)",
            )?;
            let mut chart = ChartBuilder::on(&plot)
                .caption(title, ("sans-serif", 22))
                .margin(20)
                .x_label_area_size(50)
                .y_label_area_size(80)
                .build_cartesian_2d((cx - side)..(cx + side), (cy - side)..(cy + side))
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("MDS axis 1 (L2 distance units)")
                .y_desc("MDS axis 2 (L2 distance units)")
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, c) in coords.iter().enumerate() {
                let point = EmptyElement::at((c[0], c[1]))
                    + Circle::new((0, 0), 7, color(i).filled())
                    + Text::new(marks[i].clone(), (9, -9), ("sans-serif", 14).into_font());
                chart
                    .draw_series(std::iter::once(point))
                    .map_err(|e| e.to_string())?;
            }
            plot.draw(&Text::new(
                subtitle.to_string(),
                (100, 46),
                ("sans-serif", 14).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            Ok(())
        }};
    }
    render_both(
        title,
        (1360, height),
        png,
        |r: &DrawingArea<SVGBackend<'_>, Shift>| body!(r),
        |r: &DrawingArea<BitMapBackend<'_>, Shift>| body!(r),
    )
}
