//! The saturation plots of docs/method.md, side by side: the target's score along the path,
//! and the mean absolute gradient along the path (which collapses as alpha nears 1); and the
//! bar chart of a tabular explanation's feature attributions.

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1200, 450);

/// One evaluated point of the integration path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSample {
    pub alpha: f32,
    /// The target's score (probability or logit) at the interpolated input.
    pub score: f32,
    /// The mean absolute gradient of the score there.
    pub mean_abs_gradient: f32,
}

#[derive(Debug, thiserror::Error)]
#[error("could not draw the saturation plots: {0}")]
pub struct PlotError(String);

/// PNG bytes of the two plots for the path `samples` (ascending alpha) of the explanation of
/// `label`, whose score is `objective` (e.g. "probability").
pub fn saturation_png(
    samples: &[PathSample],
    objective: &str,
    label: &str,
) -> Result<Vec<u8>, PlotError> {
    register();
    let mut buffer = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError(e.to_string()))?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        let alphas: Vec<f64> = samples.iter().map(|p| f64::from(p.alpha)).collect();
        let scores: Vec<f64> = samples.iter().map(|p| f64::from(p.score)).collect();
        let grads: Vec<f64> = samples
            .iter()
            .map(|p| f64::from(p.mean_abs_gradient))
            .collect();
        let title = format!("{objective} ({label}) along the path");
        line_chart(
            &left,
            &title,
            "target score",
            &alphas,
            &scores,
            &RGBColor(31, 119, 180),
        )?;
        line_chart(
            &right,
            "mean |gradient| along the path",
            "mean |gradient|",
            &alphas,
            &grads,
            &RGBColor(214, 39, 40),
        )?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(SIZE.0, SIZE.1, buffer)
        .ok_or_else(|| PlotError("plot buffer size".into()))?;
    Ok(super::png(&image))
}

fn line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    xs: &[f64],
    ys: &[f64],
    colour: &RGBColor,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    xy_chart(area, title, "alpha", y_label, xs, ys, colour)
}

/// One faithfulness curve to draw: its title (the metric and its area) and axes.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

/// PNG bytes of up to four curves side by side, two per row, titled on top with `title`
/// (the evaluated target): the deletion, insertion, SIC and AIC curves of an Evaluate.
pub fn curves_png(title: &str, curves: &[CurvePlot]) -> Result<Vec<u8>, PlotError> {
    register();
    let rows = curves.len().div_ceil(2).max(1) as u32;
    let size = (1200u32, 40 + 420 * rows);
    let colours = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError(e.to_string()))?;
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| PlotError(e.to_string()))?;
        let cells = root.split_evenly((rows as usize, 2));
        for (i, (curve, cell)) in curves.iter().zip(&cells).enumerate() {
            xy_chart(
                cell,
                &curve.title,
                &curve.x_label,
                &curve.y_label,
                &curve.x,
                &curve.y,
                &colours[i % colours.len()],
            )?;
        }
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, buffer)
        .ok_or_else(|| PlotError("plot buffer size".into()))?;
    Ok(super::png(&image))
}

fn xy_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[f64],
    ys: &[f64],
    colour: &RGBColor,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError(e.to_string());
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi + (hi - lo) * 0.05)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..1f64, lo.min(0.0)..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            xs.iter().copied().zip(ys.iter().copied()),
            colour.stroke_width(2),
        ))
        .map_err(err)?;
    Ok(())
}

fn register() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One bar of the feature chart.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBar {
    /// What the bar is labelled with (e.g. `age = 41`).
    pub label: String,
    pub attribution: f32,
}

/// PNG bytes of a horizontal bar chart of `bars`, largest |attribution| on top, positive
/// bars (pushing the score up) in one colour and negative in another, titled `title`.
pub fn features_png(bars: &[FeatureBar], title: &str) -> Result<Vec<u8>, PlotError> {
    register();
    let mut sorted: Vec<&FeatureBar> = bars.iter().collect();
    sorted.sort_by(|a, b| b.attribution.abs().total_cmp(&a.attribution.abs()));
    let n = sorted.len().max(1);
    let size = (1000u32, (120 + 34 * n as u32).min(4000));
    let mut buffer = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area();
        let err_any = |e| PlotError(format!("{e:?}"));
        root.fill(&WHITE).map_err(err_any)?;
        let largest = sorted
            .iter()
            .map(|b| f64::from(b.attribution.abs()))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let reach = if largest > 0.0 { largest * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(260)
            .build_cartesian_2d(-reach..reach, (0..n).into_segmented())
            .map_err(err_any)?;
        let labels: Vec<String> = sorted.iter().map(|b| b.label.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("attribution")
            .y_labels(n)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => labels.get(n - 1 - *i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err_any)?;
        let (up, down) = (RGBColor(214, 39, 40), RGBColor(31, 119, 180));
        chart
            .draw_series(sorted.iter().enumerate().map(|(i, bar)| {
                let row = n - 1 - i;
                let value = f64::from(bar.attribution);
                let value = if value.is_finite() { value } else { 0.0 };
                let colour = if value >= 0.0 { up } else { down };
                let (from, to) = if value >= 0.0 {
                    (0.0, value)
                } else {
                    (value, 0.0)
                };
                let mut rect = Rectangle::new(
                    [
                        (from, SegmentValue::Exact(row)),
                        (to, SegmentValue::Exact(row + 1)),
                    ],
                    colour.filled(),
                );
                rect.set_margin(4, 4, 0, 0);
                rect
            }))
            .map_err(err_any)?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(size.0, size.1, buffer)
        .ok_or_else(|| PlotError("plot buffer size".into()))?;
    Ok(super::png(&image))
}

/// A word's background: red, green, blue, and the strength in [0, 1] blended over white.
pub type Highlight = (u8, u8, u8, f32);

/// PNG bytes of a text with each word's background coloured: `pieces` in order, each a piece
/// of text and, for a word, its colour (r, g, b, strength in [0, 1], blended over white).
/// Lines wrap at word pieces; `title` goes on top. Text the font lacks (CJK, emoji) shows as
/// boxes: the HTML page shows it as sent.
pub fn tokens_png(
    title: &str,
    pieces: &[(String, Option<Highlight>)],
) -> Result<Vec<u8>, PlotError> {
    register();
    const WIDTH: u32 = 1000;
    const MARGIN: i32 = 20;
    const LINE: i32 = 34;
    let style = ("sans-serif", 22).into_font();
    let title_style = ("sans-serif", 18).into_font();
    // Lay out first (the height follows from the lines).
    let measure = |text: &str| -> i32 {
        style
            .box_size(text)
            .map(|(w, _)| w as i32)
            .unwrap_or(12 * text.chars().count() as i32)
    };
    let mut placed = Vec::with_capacity(pieces.len());
    let (mut x, mut y) = (MARGIN, MARGIN + 40);
    for (text, colour) in pieces {
        for (i, part) in text.split('\n').enumerate() {
            if i > 0 {
                (x, y) = (MARGIN, y + LINE);
            }
            let width = measure(part);
            if x + width > WIDTH as i32 - MARGIN && x > MARGIN {
                (x, y) = (MARGIN, y + LINE);
            }
            let shown = if x == MARGIN { part.trim_start() } else { part };
            placed.push((x, y, shown.to_string(), *colour, measure(shown)));
            x += measure(shown);
        }
    }
    let height = (y + LINE + MARGIN).clamp(120, 4000) as u32;
    let mut buffer = vec![0u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, height)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| PlotError(e.to_string());
        root.fill(&WHITE).map_err(err)?;
        root.draw(&Text::new(title.to_string(), (MARGIN, MARGIN), title_style))
            .map_err(err)?;
        for (x, y, text, colour, width) in placed {
            if let Some((r, g, b, s)) = colour {
                let mix = |c: u8| (255.0 - s * (255.0 - f32::from(c))).round() as u8;
                root.draw(&Rectangle::new(
                    [(x - 1, y - 4), (x + width + 1, y + LINE - 11)],
                    RGBColor(mix(r), mix(g), mix(b)).filled(),
                ))
                .map_err(err)?;
            }
            root.draw(&Text::new(text, (x, y), style.clone()))
                .map_err(err)?;
        }
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(WIDTH, height, buffer)
        .ok_or_else(|| PlotError("plot buffer size".into()))?;
    Ok(super::png(&image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_drawn_on_their_colours() {
        let pieces = vec![
            ("good".to_string(), Some((214, 39, 40, 1.0))),
            (" and ".to_string(), None),
            ("bad".to_string(), Some((31, 119, 180, 1.0))),
        ];
        let png = tokens_png("test", &pieces).unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        let has = |c: [u8; 3]| image.pixels().any(|p| p.0 == c);
        assert!(has([214, 39, 40]) && has([31, 119, 180]));
    }

    #[test]
    fn curves_are_drawn_in_their_colours() {
        let line = |title: &str| CurvePlot {
            title: title.into(),
            x_label: "fraction of pixels".into(),
            y_label: "probability".into(),
            x: vec![0.0, 0.5, 1.0],
            y: vec![0.9, 0.2, 0.1],
        };
        let png = curves_png("test", &[line("deletion"), line("insertion")]).unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        let has = |c: [u8; 3]| image.pixels().any(|p| p.0 == c);
        // The first two colours, one per curve; the third is unused.
        assert!(has([214, 39, 40]) && has([31, 119, 180]));
        assert!(!has([44, 160, 44]));
    }

    #[test]
    fn feature_bars_are_drawn_in_both_colours() {
        let bars = [
            FeatureBar {
                label: "up = 1".into(),
                attribution: 0.5,
            },
            FeatureBar {
                label: "down = 2".into(),
                attribution: -0.25,
            },
        ];
        let png = features_png(&bars, "test").unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        let has = |c: [u8; 3]| image.pixels().any(|p| p.0 == c);
        assert!(has([214, 39, 40]) && has([31, 119, 180]));
    }
}
