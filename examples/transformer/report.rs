//! The run's outputs: the summary table, the CSV files and the SVG plot.

use crate::train::Record;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// One trained variant and its record.
pub struct Variant {
    pub name: String,
    pub record: Record,
}

/// The summary table printed after training.
pub fn summary(variants: &[Variant]) -> String {
    let mut s =
        String::from("| variant | final train loss | final val loss | tokens/s | diverged |\n|---|---|---|---|---|\n");
    for v in variants {
        let r = &v.record;
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.0} | {} |",
            v.name,
            r.final_train(20),
            r.final_val(),
            r.tokens_per_s,
            if r.diverged { "yes" } else { "no" }
        );
    }
    s
}

/// `loss.csv` (variant, step, split, loss) and `grad_norms.csv` (variant, layer, norm).
pub fn write_csv(dir: &Path, variants: &[Variant]) -> std::io::Result<()> {
    let mut loss = String::from("variant,step,split,loss\n");
    let mut norms = String::from("variant,layer,grad_norm\n");
    for v in variants {
        for (step, l) in &v.record.train {
            let _ = writeln!(loss, "{},{step},train,{l}", v.name);
        }
        for (step, l) in &v.record.val {
            let _ = writeln!(loss, "{},{step},val,{l}", v.name);
        }
        for (layer, n) in v.record.grad_norms.iter().enumerate() {
            let _ = writeln!(norms, "{},{layer},{n}", v.name);
        }
    }
    std::fs::write(dir.join("loss.csv"), loss)?;
    std::fs::write(dir.join("grad_norms.csv"), norms)
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// `training.svg`: loss curves (training loss smoothed over 10 steps, validation loss
/// as points) on the left, gradient norm per block at initialization on the right.
pub fn plot(path: &Path, variants: &[Variant], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(620);

    let finite = |l: f32| l.is_finite().then_some(l);
    let all: Vec<f32> = variants
        .iter()
        .flat_map(|v| v.record.train.iter().chain(&v.record.val).filter_map(|p| finite(p.1)))
        .collect();
    let steps = variants.iter().map(|v| v.record.train.len()).max().unwrap_or(1).max(1);
    let top = all.iter().cloned().fold(1.0f32, f32::max).min(6.0);
    let bottom = all.iter().cloned().fold(top, f32::min);
    let mut chart = ChartBuilder::on(&left)
        .caption("loss (train: 10-step mean; val: points)", ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0..steps, (bottom - 0.1)..(top + 0.1))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy (nats)")
        .draw()?;
    for (i, v) in variants.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let smooth: Vec<(usize, f32)> = v
            .record
            .train
            .iter()
            .enumerate()
            .filter_map(|(k, &(step, _))| {
                let w = &v.record.train[k.saturating_sub(9)..=k];
                finite(w.iter().map(|p| p.1).sum::<f32>() / w.len() as f32).map(|l| (step, l.min(top)))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, color.stroke_width(2)))?
            .label(format!("{} train", v.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(
            v.record
                .val
                .iter()
                .filter_map(|&(s, l)| finite(l).map(|l| Circle::new((s, l.min(top)), 4, color.filled()))),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let layers = variants
        .iter()
        .map(|v| v.record.grad_norms.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let max_norm = variants
        .iter()
        .flat_map(|v| v.record.grad_norms.iter().cloned())
        .filter(|n| n.is_finite())
        .fold(1e-6f32, f32::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("gradient norm per block at initialization", ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0..(layers - 1).max(1), 0f32..max_norm * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("block (0 = nearest the input)")
        .y_desc("‖grad‖₂")
        .draw()?;
    for (i, v) in variants.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(usize, f32)> = v.record.grad_norms.iter().cloned().enumerate().collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(v.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
