//! The run's outputs: the summary table, `results.csv` and the plot.

use crate::train::Record;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// One trained variant at one batch size.
pub struct Run {
    pub name: &'static str,
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

const COLORS: [RGBColor; 7] = [
    RGBColor(127, 127, 127),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// `accuracy.svg`: test accuracy against images seen, one line per norm, one panel per
/// batch size.
pub fn plot(path: &Path, runs: &[Run]) -> Result<(), Box<dyn std::error::Error>> {
    let mut batches: Vec<usize> = runs.iter().map(|r| r.batch).collect();
    batches.dedup();
    let root = SVGBackend::new(path, (520 * batches.len() as u32, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let images = runs
        .iter()
        .flat_map(|r| r.record.evals.last())
        .map(|e| e.0)
        .max()
        .unwrap_or(1);
    for (panel, &batch) in root.split_evenly((1, batches.len())).iter().zip(&batches) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("batch {batch}"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0..images, 0f32..100f32)?;
        chart
            .configure_mesh()
            .x_desc("training images seen")
            .y_desc("test accuracy (%)")
            .draw()?;
        for (i, r) in runs.iter().filter(|r| r.batch == batch).enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points = r.record.evals.iter().map(|&(n, a)| (n, 100.0 * a));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(r.name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
