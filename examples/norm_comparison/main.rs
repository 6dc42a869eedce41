//! The normalization experiments, on Fashion-MNIST (standing in for MNIST, which no
//! package we can install ships):
//!
//! - `cnn`: which norm for a small CNN, at a normal batch and at a tiny one: the same
//!   network trained with no norm, BatchNorm, GroupNorm, LayerNorm, RMSNorm,
//!   InstanceNorm, weight standardization + GroupNorm, and weight normalization, at
//!   batch 64 and at batch 4, on the same images in the same order;
//! - `deep-sigmoid`: BatchNorm lets a deep saturating MLP learn (sigmoids, SGD), with
//!   the histograms of its hidden activations;
//! - `mlp`: which norm for an MLP at batch 64 and at batch 4, where a BatchNorm channel
//!   is one feature.
//!
//! ```text
//! scripts/fashion-mnist.sh                                  # fetch the data once
//! cargo run --release --example norm_comparison            # all three, ~6 min on 2 cores
//! cargo run --release --example norm_comparison -- --experiment mlp
//! cargo run --release --features cuda --example norm_comparison -- --device cuda
//! ```
//!
//! Writes to `--out` (default `runs/norm-comparison/`): for `cnn` `results.csv`,
//! `accuracy.svg` and a checkpoint per run, `{norm}-b{batch}.safetensors`; for
//! `deep-sigmoid` `deep-sigmoid.csv`, `deep-sigmoid-accuracy.svg` and
//! `deep-sigmoid-activations.svg`; for `mlp` `mlp.csv` and `mlp-accuracy.svg`; and
//! `summary.md`, the tables printed at the end.

#[path = "../common/mod.rs"]
mod common;
mod data;
mod experiments;
mod mlp;
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

/// Which experiment to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Experiment {
    Cnn,
    DeepSigmoid,
    Mlp,
}

impl Experiment {
    fn title(self) -> &'static str {
        match self {
            Experiment::Cnn => "Which norm for a small CNN",
            Experiment::DeepSigmoid => "A deep sigmoid MLP with and without BatchNorm",
            Experiment::Mlp => "Which norm for an MLP, at batch 64 and at batch 4",
        }
    }
}

/// The normalization experiments on Fashion-MNIST: a small CNN with each norm at two
/// batch sizes, a deep sigmoid MLP with and without BatchNorm, and an MLP with each
/// norm at batch 64 and 4.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The experiments to run (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    experiment: Vec<Experiment>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The directory of the four `*-ubyte.gz` files (default: the cache that
    /// scripts/fashion-mnist.sh fills, else /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// CNN: training images each run sees (a prefix of a seeded shuffle of the 60,000).
    #[arg(long, default_value_t = 4000)]
    images: usize,
    /// CNN: batch sizes, each run for every norm.
    #[arg(long, value_delimiter = ',', default_value = "64,4")]
    batch: Vec<usize>,
    /// CNN: the norms to train (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    norm: Vec<Variant>,
    /// CNN: test accuracy is measured every this many training images ...
    #[arg(long, default_value_t = 1000)]
    eval_every: usize,
    /// ... on the first this many test images (the final accuracy uses all 10,000).
    #[arg(long, default_value_t = 1000)]
    eval_images: usize,
    /// CNN: AdamW's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Deep sigmoid MLP: epochs ...
    #[arg(long, default_value_t = 5)]
    sigmoid_epochs: usize,
    /// ... over the first this many training images.
    #[arg(long, default_value_t = 30000)]
    sigmoid_images: usize,
    /// Which-norm MLP: epochs at batch 64, then at batch 4.
    #[arg(long, value_delimiter = ',', default_value = "20,15")]
    mlp_epochs: Vec<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for the CSV, the plot and the checkpoints.
    #[arg(long, default_value = "runs/norm-comparison")]
    out: PathBuf,
}

fn main() {
    common::main_with(run);
}

/// A progress bar over `total` images, labelled `prefix`.
fn bar(prefix: &str, total: usize) -> Result<ProgressBar, Box<dyn std::error::Error>> {
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} images ({eta} left)")?.progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    Ok(bar)
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.images == 0
        || args.eval_every == 0
        || args.batch.contains(&0)
        || args.sigmoid_epochs == 0
        || args.sigmoid_images == 0
        || args.mlp_epochs.len() != 2
        || args.mlp_epochs.contains(&0)
    {
        return Err(
            "--images, --eval-every, every --batch, --sigmoid-epochs and --sigmoid-images must be at least 1, and --mlp-epochs two numbers of at least 1"
                .into(),
        );
    }
    let dev = common::device(args.device, "norm_comparison")?;
    let data = data::load(&args.data.clone().unwrap_or_else(data::default_dir))?;
    std::fs::create_dir_all(&args.out)?;
    let experiments = if args.experiment.is_empty() {
        vec![Experiment::Cnn, Experiment::DeepSigmoid, Experiment::Mlp]
    } else {
        args.experiment.clone()
    };
    let budget = experiments::Budget {
        sigmoid_epochs: args.sigmoid_epochs,
        sigmoid_images: args.sigmoid_images,
        mlp_epochs: (args.mlp_epochs[0], args.mlp_epochs[1]),
        seed: args.seed,
    };
    let mut progress = |prefix: &str, total: usize| -> Box<dyn FnMut(usize)> {
        match bar(prefix, total) {
            Ok(b) => Box::new(move |seen| {
                b.set_position(seen as u64);
                if seen == total {
                    b.finish();
                }
            }),
            Err(_) => Box::new(|_| {}),
        }
    };
    let mut summary = String::new();
    for e in experiments {
        let table = match e {
            Experiment::Cnn => cnn(args, &data, &dev)?,
            Experiment::DeepSigmoid => experiments::deep_sigmoid(&budget, &data, &dev, &args.out, &mut progress)?,
            Experiment::Mlp => experiments::mlp(&budget, &data, &dev, &args.out, &mut progress)?,
        };
        summary += &format!("## {}\n\n{table}\n", e.title());
    }
    println!("\n{summary}");
    std::fs::write(args.out.join("summary.md"), &summary)?;
    println!("wrote the CSVs, the plots and summary.md to {}", args.out.display());
    Ok(())
}

/// The CNN comparison: every norm at every batch size. Writes `results.csv`,
/// `accuracy.svg` and the checkpoints; returns the summary table.
fn cnn(args: &Args, data: &data::Data, dev: &candle_core::Device) -> Result<String, Box<dyn std::error::Error>> {
    let norms = if args.norm.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.norm.clone()
    };
    let mut runs = Vec::new();
    for &batch in &args.batch {
        for &variant in &norms {
            let cfg = train::TrainConfig {
                batch,
                images: args.images,
                train_images: data.train.len(),
                eval_every: args.eval_every,
                eval_images: args.eval_images,
                test_images: data.test.len(),
                opt: train::Opt::AdamW(args.lr),
                seed: args.seed,
                batch_norm: variant == Variant::Batch,
            };
            let varmap = candle_nn::VarMap::new();
            let net = model::Net::new(
                variant,
                candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, dev),
            )?;
            train::init(&varmap, args.seed)?;
            let b = bar(&format!("{} b{batch}", variant.name()), args.images)?;
            let checkpoint = args.out.join(format!("{}-b{batch}.safetensors", variant.name()));
            let record = train::train(&net, &varmap, &cfg, data, dev, Some(&checkpoint), &mut |seen| {
                b.set_position(seen as u64)
            })?;
            b.finish();
            runs.push(report::Run {
                name: variant.name().to_string(),
                batch,
                record,
            });
        }
    }
    report::write_csv(&args.out.join("results.csv"), &runs)?;
    report::plot(&args.out.join("accuracy.svg"), &runs, None)?;
    Ok(report::summary(&runs))
}
