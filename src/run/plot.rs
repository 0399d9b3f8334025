//! Training curves as an SVG: train and validation perplexity per epoch (log scale) above, the
//! learning rate per epoch below. Training redraws it after every epoch; `lstm-lm report`
//! redraws it from `history.jsonl`.

use std::path::Path;

use plotters::prelude::*;

use super::history::EpochStats;
use crate::error::{Error, Result};

/// File name of the plot inside a run folder.
pub const CURVES: &str = "curves.svg";

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const VALID_COLOR: RGBColor = RGBColor(214, 39, 40);
const LR_COLOR: RGBColor = RGBColor(44, 160, 44);

/// Draws `history` into `<run_dir>/curves.svg` (written atomically) and returns its path.
pub fn write_curves(
    run_dir: &Path,
    title: &str,
    history: &[EpochStats],
) -> Result<std::path::PathBuf> {
    let path = run_dir.join(CURVES);
    let svg = curves_svg(title, history).map_err(|e| Error::Plot(e.to_string()))?;
    crate::fsutil::write_atomic(&path, svg.as_bytes())?;
    Ok(path)
}

/// The title of a run's plot: its folder name.
pub fn run_title(run_dir: &std::path::Path) -> String {
    run_dir.file_name().map_or_else(
        || run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The plot of `history` as SVG text. Non-finite values (a diverged epoch) and learning rates
/// not recorded (0) are left out; an empty history gives axes and a note.
pub fn curves_svg(
    title: &str,
    history: &[EpochStats],
) -> std::result::Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let (upper, lower) = root.split_vertically(400);

        let last_epoch = history.iter().map(|s| s.epoch).max().unwrap_or(1).max(2);
        let train = points(history, |s| s.train_perplexity);
        let valid = points(history, |s| s.valid_perplexity);
        draw_panel(
            &upper,
            last_epoch,
            "perplexity (log scale)",
            &|&v| format!("{v:.0}"),
            &[
                ("train perplexity", TRAIN_COLOR, train),
                ("valid perplexity", VALID_COLOR, valid),
            ],
            (1.0, 1000.0),
        )?;
        let lr = points(history, |s| if s.lr > 0.0 { s.lr } else { f64::NAN });
        draw_panel(
            &lower,
            last_epoch,
            "learning rate (log scale)",
            &|&v| rate_label(v),
            &[("learning rate", LR_COLOR, lr)],
            (1e-3, 1.0),
        )?;
        if history.is_empty() {
            upper.draw(&Text::new(
                "no finished epoch yet",
                (380, 180),
                ("sans-serif", 18).into_font(),
            ))?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// A labelled line: label, color, `(epoch, value)` points.
type Curve<'a> = (&'a str, RGBColor, Vec<(i32, f64)>);

/// One panel: `curves` (label, color, `(epoch, value)` points) as lines with markers over epochs
/// `1..=last_epoch`, on a log y axis fitted to the values (`empty` when there are none).
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    last_epoch: usize,
    y_desc: &str,
    y_label: &dyn Fn(&f64) -> String,
    curves: &[Curve],
    empty: (f64, f64),
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let (lo, hi) = log_range(curves.iter().flat_map(|c| c.2.iter().map(|p| p.1)), empty);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            1..last_epoch as i32,
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
        )?;
    chart
        .configure_mesh()
        .x_labels(last_epoch.min(20))
        .x_desc("epoch")
        .y_desc(y_desc)
        .y_label_formatter(y_label)
        .draw()?;
    for (label, color, data) in curves {
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(data.iter().copied(), style))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Tick values for a log axis over `lo..hi`: 1, 2, 5 (or denser: 1, 2, 3, 5, or 1 to 9) times
/// powers of ten, as many as fit in 12 (every k-th power of ten over a very wide range); the
/// ends themselves when no such value falls inside.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        (first..=last)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let sets: [&[f64]; 4] = [
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[1.0, 2.0, 3.0, 5.0],
        &[1.0, 2.0, 5.0],
        &[1.0],
    ];
    let chosen = sets
        .iter()
        .map(|m| ticks(m))
        .find(|t| t.len() <= 12)
        .unwrap_or_else(|| {
            // More than 12 decades (a diverged run): every k-th power of ten.
            let decades = ticks(&[1.0]);
            let stride = decades.len().div_ceil(12);
            decades.into_iter().step_by(stride).collect()
        });
    if chosen.len() < 2 {
        return vec![lo, hi];
    }
    chosen
}

/// A learning rate as an axis label: `0.0025`, `1`, `5.00e-5`.
fn rate_label(v: f64) -> String {
    if v >= 1e-3 {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.2e}")
    }
}

/// `(epoch, value)` for the epochs whose value is finite and positive.
fn points(history: &[EpochStats], value: impl Fn(&EpochStats) -> f64) -> Vec<(i32, f64)> {
    history
        .iter()
        .map(|s| (s.epoch as i32, value(s)))
        .filter(|&(_, v)| v.is_finite() && v > 0.0)
        .collect()
}

/// A log-axis range holding every value with a margin; `empty` when there is none.
fn log_range(values: impl Iterator<Item = f64>, empty: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return empty;
    }
    (lo / 1.25, hi * 1.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of points of each line drawn in `color` in `svg`.
    pub(crate) fn line_lengths(svg: &str, color: RGBColor) -> Vec<usize> {
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .filter_map(|l| l.split("points=\"").nth(1))
            .map(|p| p.split_whitespace().filter(|w| w.contains(',')).count())
            .collect()
    }

    fn epoch(epoch: usize, train: f64, valid: f64, lr: f64) -> EpochStats {
        EpochStats {
            epoch,
            train_perplexity: train,
            valid_perplexity: valid,
            tokens_per_second: 1000.0,
            seconds: 10.0,
            lr,
            train_bits_per_char: None,
            valid_bits_per_char: None,
            valid_word_perplexity: None,
        }
    }

    #[test]
    fn draws_both_curves_and_the_rate_with_labelled_axes() {
        let history = [
            epoch(1, 900.0, 700.0, 1.0),
            epoch(2, 400.0, 350.0, 1.0),
            epoch(3, 250.0, 260.0, 0.5),
        ];
        let svg = curves_svg("run", &history).unwrap();
        for text in [
            "train perplexity",
            "valid perplexity",
            "learning rate",
            "epoch",
            "perplexity (log scale)",
            "learning rate (log scale)",
        ] {
            assert!(svg.contains(text), "the plot lacks {text:?}");
        }
        // One line per curve through its three points (besides its legend sample).
        for color in [TRAIN_COLOR, VALID_COLOR, LR_COLOR] {
            assert!(line_lengths(&svg, color).contains(&3), "{color:?}");
        }
        // Three markers per curve.
        assert_eq!(svg.matches("<circle").count(), 9);
    }

    #[test]
    fn leaves_out_what_cannot_be_drawn() {
        // Epoch 1 has nothing drawable: one point per curve remains.
        let history = [
            epoch(1, f64::INFINITY, f64::NAN, 0.0),
            epoch(2, 50.0, 60.0, 0.1),
        ];
        let svg = curves_svg("run", &history).unwrap();
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(curves_svg("run", &[])
            .unwrap()
            .contains("no finished epoch yet"));
    }

    #[test]
    fn log_ticks_are_round_and_few() {
        assert_eq!(
            log_ticks(117.0, 828.0),
            [200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0]
        );
        assert_eq!(
            log_ticks(50.0, 2000.0),
            [50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(log_ticks(1.01, 1.09), [1.01, 1.09]);
        assert!(log_ticks(1.0, 1e150).len() <= 12);
    }

    #[test]
    fn rate_labels_are_short() {
        assert_eq!(rate_label(1.0), "1");
        assert_eq!(rate_label(0.0025), "0.0025");
        assert_eq!(rate_label(0.01), "0.01");
        assert_eq!(rate_label(5e-5), "5.00e-5");
    }

    #[test]
    fn writes_the_file_into_the_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_curves(dir.path(), "run", &[epoch(1, 9.0, 8.0, 0.1)]).unwrap();
        assert_eq!(path, dir.path().join(CURVES));
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }
}
