//! Which norm for a small CNN, at a normal batch and at a tiny one: the same network
//! trained on Fashion-MNIST with no norm, BatchNorm, GroupNorm, LayerNorm,
//! InstanceNorm, weight standardization + GroupNorm, and weight normalization, at
//! batch 64 and at batch 4, on the same images in the same order.
//!
//! ```text
//! scripts/fashion-mnist.sh                                  # fetch the data once
//! cargo run --release --example norm_comparison            # ~5 min on 2 cores
//! cargo run --release --features cuda --example norm_comparison -- --device cuda
//! ```
//!
//! Writes to `--out` (default `runs/norm-comparison/`): `results.csv`, `accuracy.svg`
//! and a checkpoint per run, `{norm}-b{batch}.safetensors`.

#[path = "../common/mod.rs"]
mod common;
mod data;
mod model;
mod report;
#[cfg(test)]
mod tests;
mod train;

use clap::Parser;
use common::DeviceArg;
use indicatif::{ProgressBar, ProgressStyle};
use model::Variant;
use std::path::PathBuf;

/// Train a small CNN on Fashion-MNIST with each norm, at two batch sizes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The directory of the four `*-ubyte.gz` files (default: the cache that
    /// scripts/fashion-mnist.sh fills, else /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training images each run sees (a prefix of a seeded shuffle of the 60,000).
    #[arg(long, default_value_t = 8000)]
    images: usize,
    /// Batch sizes, each run for every norm.
    #[arg(long, value_delimiter = ',', default_value = "64,4")]
    batch: Vec<usize>,
    /// The norms to train (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    norm: Vec<Variant>,
    /// Test accuracy is measured every this many training images ...
    #[arg(long, default_value_t = 1000)]
    eval_every: usize,
    /// ... on the first this many test images (the final accuracy uses all 10,000).
    #[arg(long, default_value_t = 1000)]
    eval_images: usize,
    /// AdamW's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for the CSV, the plot and the checkpoints.
    #[arg(long, default_value = "runs/norm-comparison")]
    out: PathBuf,
}

fn main() {
    common::main_with(run);
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.images == 0 || args.eval_every == 0 || args.batch.contains(&0) {
        return Err("--images, --eval-every and every --batch must be at least 1".into());
    }
    let dev = common::device(args.device, "norm_comparison")?;
    let data = data::load(&args.data.clone().unwrap_or_else(data::default_dir))?;
    let norms = if args.norm.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.norm.clone()
    };
    std::fs::create_dir_all(&args.out)?;
    let mut runs = Vec::new();
    for &batch in &args.batch {
        for &variant in &norms {
            let cfg = train::TrainConfig {
                variant,
                batch,
                images: args.images,
                eval_every: args.eval_every,
                eval_images: args.eval_images,
                lr: args.lr,
                seed: args.seed,
            };
            let bar = ProgressBar::new(args.images as u64).with_style(
                ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} images ({eta} left)")?
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{} b{batch}", variant.name()));
            let checkpoint = args.out.join(format!("{}-b{batch}.safetensors", variant.name()));
            let record = train::train(&cfg, &data, &dev, Some(&checkpoint), &mut |seen| {
                bar.set_position(seen as u64)
            })?;
            bar.finish();
            runs.push(report::Run {
                name: variant.name(),
                batch,
                record,
            });
        }
    }
    println!("\n{}", report::summary(&runs));
    report::write_csv(&args.out.join("results.csv"), &runs)?;
    report::plot(&args.out.join("accuracy.svg"), &runs)?;
    println!(
        "wrote {0}/results.csv, {0}/accuracy.svg and a checkpoint per run",
        args.out.display()
    );
    Ok(())
}
