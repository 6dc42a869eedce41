//! The run's outputs: the summary table, the CSV files and the SVG plot.

use crate::model::Placement;
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

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A legend below the charts, one entry (a line with a dot, and a label) per series, so
/// that no legend covers data.
fn legend(area: &Area, entries: &[(String, RGBColor)]) -> Result<(), Box<dyn std::error::Error>> {
    let mut x = 60;
    for (label, color) in entries {
        let y = 18;
        area.draw(&PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)))?;
        area.draw(&Circle::new((x + 12, y), 4, color.filled()))?;
        area.draw(&Text::new(label.clone(), (x + 30, y - 7), ("sans-serif", 14)))?;
        x += 40 + 8 * label.len() as i32;
    }
    Ok(())
}

/// `training.svg`: loss curves (training loss smoothed over 10 steps, validation loss
/// as points) on the left, gradient norm per block at initialization on the right, the
/// legend below both.
pub fn plot(path: &Path, variants: &[Variant], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 470)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 16))?;
    let (charts, strip) = root.split_vertically(400);
    let (left, right) = charts.split_horizontally(620);
    let entries: Vec<(String, RGBColor)> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.clone(), COLORS[i % COLORS.len()]))
        .collect();
    legend(&strip, &entries)?;

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
        chart.draw_series(LineSeries::new(smooth, color.stroke_width(2)))?;
        chart.draw_series(
            v.record
                .val
                .iter()
                .filter_map(|&(s, l)| finite(l).map(|l| Circle::new((s, l.min(top)), 4, color.filled()))),
        )?;
    }

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
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    root.present()?;
    Ok(())
}

/// One model of the gradient sweep: its placement and the FFN gradient norm of each
/// block (the depth is their count).
pub struct SweepPoint {
    pub placement: Placement,
    pub norms: Vec<f32>,
}

fn placement_name(p: Placement) -> &'static str {
    match p {
        Placement::Pre => "pre",
        Placement::Post => "post",
    }
}

/// `grad_depths.csv`: (placement, depth, block, FFN gradient norm).
pub fn write_sweep_csv(path: &Path, points: &[SweepPoint]) -> std::io::Result<()> {
    let mut s = String::from("placement,depth,block,ffn_grad_norm\n");
    for p in points {
        for (block, n) in p.norms.iter().enumerate() {
            let _ = writeln!(s, "{},{},{block},{n}", placement_name(p.placement), p.norms.len());
        }
    }
    std::fs::write(path, s)
}

/// `grad_depths.svg`: one panel per depth, the FFN gradient norm of each block at
/// initialization for Pre-LN and Post-LN, the legend below.
pub fn plot_sweep(path: &Path, points: &[SweepPoint], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut depths: Vec<usize> = points.iter().map(|p| p.norms.len()).collect();
    depths.dedup();
    let root = SVGBackend::new(path, (380 * depths.len().max(1) as u32, 430)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 15))?;
    let (charts, strip) = root.split_vertically(360);
    let color = |p: Placement| if p == Placement::Pre { COLORS[0] } else { COLORS[1] };
    let entries = [Placement::Pre, Placement::Post].map(|p| (format!("{}-LN", placement_name(p)), color(p)));
    legend(&strip, &entries)?;
    for (panel, &depth) in charts.split_evenly((1, depths.len().max(1))).iter().zip(&depths) {
        let here: Vec<&SweepPoint> = points.iter().filter(|p| p.norms.len() == depth).collect();
        let top = here
            .iter()
            .flat_map(|p| p.norms.iter().cloned())
            .filter(|n| n.is_finite())
            .fold(1e-6f32, f32::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{depth} blocks"), ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0..depth.saturating_sub(1).max(1), 0f32..top * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("block (0 = nearest the input)")
            .y_desc("‖∇ FFN weights‖₂")
            .draw()?;
        for p in here {
            let c = color(p.placement);
            let pts: Vec<(usize, f32)> = p.norms.iter().cloned().enumerate().collect();
            chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            chart.draw_series(pts.into_iter().map(|q| Circle::new(q, 3, c.filled())))?;
        }
    }
    root.present()?;
    Ok(())
}
