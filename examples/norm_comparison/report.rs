//! The run's outputs: the summary table, `results.csv` and the plot.

use crate::train::Record;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// One trained variant at one batch size.
pub struct Run {
    pub name: String,
    pub batch: usize,
    pub record: Record,
}

/// The summary table printed after training.
pub fn summary(runs: &[Run]) -> String {
    let mut s = String::from(
        "| norm | batch | final train loss | test accuracy (eval mode) | test accuracy (train mode) | seconds |\n|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let rec = &r.record;
        let train_mode = rec
            .train_mode_accuracy
            .map_or("—".to_string(), |a| format!("{:.1} %", 100.0 * a));
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.1} % | {train_mode} | {:.0} |",
            r.name,
            r.batch,
            rec.final_loss,
            100.0 * rec.test_accuracy,
            rec.seconds
        );
    }
    s
}

/// `results.csv`: (norm, batch, images seen, test accuracy) for every evaluation, then
/// one `final` row per run with the whole test set's accuracy.
pub fn write_csv(path: &Path, runs: &[Run]) -> std::io::Result<()> {
    let mut s = String::from("norm,batch,images,split,accuracy\n");
    for r in runs {
        for (seen, acc) in &r.record.evals {
            let _ = writeln!(s, "{},{},{seen},test-subset,{acc}", r.name, r.batch);
        }
        let last = r.record.evals.last().map_or(0, |e| e.0);
        let _ = writeln!(s, "{},{},{last},test,{}", r.name, r.batch, r.record.test_accuracy);
    }
    std::fs::write(path, s)
}

const COLORS: [RGBColor; 8] = [
    RGBColor(127, 127, 127),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
];

/// One line of a panel.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// A figure of `panels` in rows of `cols`, with one legend for all of them in a strip
/// on the right, off the data (a series keeps its color across panels by name). The y
/// axis spans `y_range`, or, when None, the data's range padded and rounded to 5, so
/// that lines between 75 and 90 are not squeezed into 0 to 100.
pub fn figure(
    path: &Path,
    panels: &[Panel],
    cols: usize,
    (x_desc, y_desc): (&str, &str),
    y_range: Option<(f64, f64)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (430 * cols as u32 + 130, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (charts, legend) = root.split_horizontally(430 * cols as u32);
    let mut names: Vec<&str> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let color = |name: &str| COLORS[names.iter().position(|n| *n == name).unwrap_or(0) % COLORS.len()];
    let points = || panels.iter().flat_map(|p| &p.series).flat_map(|s| &s.points);
    let x_max = points().map(|p| p.0).fold(1e-9, f64::max);
    let (y_lo, y_hi) = y_range.unwrap_or_else(|| {
        let (lo, hi) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        (
            ((lo - 2.0) / 5.0).floor().max(0.0) * 5.0,
            (((hi + 2.0) / 5.0).ceil() * 5.0).min(100.0),
        )
    });
    for (area, panel) in charts.split_evenly((rows, cols)).iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..x_max, y_lo..y_hi)?;
        chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
        for s in &panel.series {
            let c = color(&s.name);
            chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?;
        }
    }
    for (i, name) in names.iter().enumerate() {
        let y = 40 + 22 * i as i32;
        let c = color(name);
        legend.draw(&PathElement::new([(5, y), (30, y)], c.stroke_width(2)))?;
        legend.draw(&Text::new(name.to_string(), (36, y - 7), ("sans-serif", 14)))?;
    }
    root.present()?;
    Ok(())
}

/// Test accuracy (%) against training, one panel per batch size, one line per run; the
/// untrained start is left out of the lines (it would stretch the axis to 10 %). `epoch`
/// counts the x axis in epochs of that many images, else in images seen.
pub fn plot(path: &Path, runs: &[Run], epoch: Option<usize>) -> Result<(), Box<dyn std::error::Error>> {
    let mut batches: Vec<usize> = runs.iter().map(|r| r.batch).collect();
    batches.dedup();
    let scale = epoch.map_or(1.0, |n| n as f64);
    let panels: Vec<Panel> = batches
        .iter()
        .map(|&batch| Panel {
            title: format!("batch {batch}"),
            series: runs
                .iter()
                .filter(|r| r.batch == batch)
                .map(|r| Series {
                    name: r.name.to_string(),
                    points: r
                        .record
                        .evals
                        .iter()
                        .filter(|e| e.0 > 0)
                        .map(|&(n, a)| (n as f64 / scale, 100.0 * f64::from(a)))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let x = if epoch.is_some() {
        "epoch"
    } else {
        "training images seen"
    };
    figure(path, &panels, panels.len(), (x, "test accuracy (%)"), None)
}
