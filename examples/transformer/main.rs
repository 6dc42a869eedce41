//! A small GPT trained through candle-norm's fused, differentiable norms: pre-norm,
//! post-norm, and post-norm with learning-rate warm-up side by side, with the same
//! initialization, data order and peak learning rate, on a character-level language
//! model of *Pride and Prejudice*; then the gradients at initialization of pre-norm and
//! post-norm models of increasing depth (Xiong et al. 2020, "On Layer Normalization in
//! the Transformer Architecture").
//!
//! ```text
//! cargo run --release --example transformer                 # ~3½ min on 2 cores
//! cargo run --release --example transformer -- --sample    # generate from the checkpoints
//! cargo run --release --features cuda --example transformer -- --device cuda
//! ```
//!
//! Writes to `--out` (default `runs/`): `loss.csv`, `grad_norms.csv`, `training.svg`,
//! `grad_depths.csv`, `grad_depths.svg`, and `{variant}.safetensors` with
//! `{variant}.json` (the checkpoint's shape).

#[path = "../common/mod.rs"]
mod common;
mod data;
mod model;
mod report;
#[cfg(test)]
mod tests;
mod train;

use candle_core::{DType, Device};
use clap::{Parser, ValueEnum};
use common::DeviceArg;
use indicatif::{ProgressBar, ProgressStyle};
use model::{Init, ModelConfig, NormKind, Placement};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DTypeArg {
    F32,
    Bf16,
}

/// The variants of the comparison: where the norms sit, and whether the learning rate
/// warms up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VariantArg {
    /// Pre-LN, no warm-up.
    Pre,
    /// Post-LN, no warm-up.
    Post,
    /// Post-LN with `--warmup` steps of linear warm-up.
    PostWarmup,
}

impl VariantArg {
    fn name(self) -> &'static str {
        match self {
            VariantArg::Pre => "pre",
            VariantArg::Post => "post",
            VariantArg::PostWarmup => "post-warmup",
        }
    }

    fn placement(self) -> Placement {
        match self {
            VariantArg::Pre => Placement::Pre,
            VariantArg::Post | VariantArg::PostWarmup => Placement::Post,
        }
    }
}

/// Train a small GPT with pre-norm and post-norm blocks through candle-norm.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Optimizer steps per variant.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Peak learning rate (AdamW). The default is high enough that Post-LN without
    /// warm-up stalls while Pre-LN trains (at 3e-3 both train alike).
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Steps of linear learning-rate warm-up of the post-warmup variant (the others have
    /// none). The default, twice the default run, keeps its rate below 5e-3: with a
    /// warm-up that reaches the 1e-2 peak, Post-LN still collapses (see the README).
    #[arg(long, default_value_t = 400)]
    warmup: usize,
    #[arg(long, default_value_t = 6)]
    layers: usize,
    #[arg(long, default_value_t = 96)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, value_enum, default_value = "layer")]
    norm: NormKind,
    /// The variants to train, from the same weights, batches and peak learning rate.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pre,post,post-warmup")]
    variant: Vec<VariantArg>,
    /// Depths of the gradient-at-initialization sweep (empty: no sweep).
    #[arg(long, value_delimiter = ',', default_value = "6,12,24", num_args = 0..)]
    grad_depths: Vec<usize>,
    /// Width (d_model) of the sweep's models.
    #[arg(long, default_value_t = 32)]
    grad_width: usize,
    /// Batches (of --batch sequences) each sweep point averages over, for each seed.
    #[arg(long, default_value_t = 4)]
    grad_batches: usize,
    /// Initializations (seeds --seed, --seed + 1, ...) each sweep point averages over.
    #[arg(long, default_value_t = 3)]
    grad_seeds: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for CSVs, the plot and the checkpoints.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// Load the checkpoints in --out instead of training, and print generated text.
    #[arg(long)]
    sample: bool,
    /// The text generation starts from (with --sample).
    #[arg(long, default_value = "It is a truth universally acknowledged")]
    prompt: String,
    /// Characters to generate (with --sample).
    #[arg(long, default_value_t = 400)]
    chars: usize,
}

fn main() {
    common::main_with(run);
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let dev = common::device(args.device, "transformer")?;
    if args.sample {
        return sample(args, &dev);
    }
    if args.steps == 0 || args.batch == 0 || args.grad_batches == 0 || args.grad_seeds == 0 {
        return Err("--steps, --batch, --grad-batches and --grad-seeds must be at least 1".into());
    }
    let corpus = data::Corpus::new(data::TEXT);
    let dtype = match args.dtype {
        DTypeArg::F32 => DType::F32,
        DTypeArg::Bf16 => DType::BF16,
    };
    std::fs::create_dir_all(&args.out)?;
    let mut variants = Vec::new();
    for &variant in &args.variant {
        let model = ModelConfig {
            vocab: corpus.chars.len(),
            layers: args.layers,
            d_model: args.d_model,
            heads: args.heads,
            seq_len: args.seq_len,
            norm: args.norm,
            placement: variant.placement(),
        };
        model.validate()?;
        let cfg = train::TrainConfig {
            model,
            steps: args.steps,
            lr: args.lr,
            warmup: if variant == VariantArg::PostWarmup {
                args.warmup
            } else {
                0
            },
            batch: args.batch,
            seed: args.seed,
            dtype,
            eval_every: (args.steps / 10).max(1),
            eval_batches: 4,
        };
        let bar = ProgressBar::new(args.steps as u64).with_style(
            ProgressStyle::with_template("{prefix:>11} [{bar:40}] {pos}/{len} steps, {msg} ({eta} left)")?
                .progress_chars("=> "),
        );
        bar.set_prefix(variant.name());
        let (record, varmap, _) = train::train(&cfg, &corpus, &dev, &mut |_, loss| {
            bar.set_message(format!("loss {loss:.3}"));
            bar.inc(1);
        })?;
        bar.finish();
        let meta = train::CheckpointMeta {
            model: cfg.model.clone(),
            chars: corpus.chars.iter().collect(),
            dtype: dtype.as_str().to_string(),
        };
        train::save_checkpoint(&args.out, variant.name(), &varmap, &meta)?;
        variants.push(report::Variant {
            name: format!("{}-{:?}", variant.name(), args.norm).to_lowercase(),
            record,
        });
    }
    println!("\n{}", report::summary(&variants));
    report::write_csv(&args.out, &variants)?;
    let title = format!(
        "{} layers, d={}, peak lr {}, post-warmup: {} warm-up steps, {:?} norm, {} steps of {}×{} characters",
        args.layers, args.d_model, args.lr, args.warmup, args.norm, args.steps, args.batch, args.seq_len
    );
    report::plot(&args.out.join("training.svg"), &variants, &title)?;
    if !args.grad_depths.is_empty() {
        sweep(args, &corpus, &dev)?;
    }
    println!("wrote {}", describe(&args.out, !args.grad_depths.is_empty()));
    Ok(())
}

/// The gradient-at-initialization sweep: Pre-LN and Post-LN at each of `--grad-depths`.
fn sweep(args: &Args, corpus: &data::Corpus, dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    let mut points = Vec::new();
    let bar = ProgressBar::new((2 * args.grad_depths.len()) as u64).with_style(
        ProgressStyle::with_template("{prefix:>11} [{bar:40}] {pos}/{len} models ({eta} left)")?.progress_chars("=> "),
    );
    bar.set_prefix("grad sweep");
    for &layers in &args.grad_depths {
        for placement in [Placement::Pre, Placement::Post] {
            let model = ModelConfig {
                vocab: corpus.chars.len(),
                layers,
                d_model: args.grad_width,
                heads: args.heads,
                seq_len: args.seq_len,
                norm: args.norm,
                placement,
            };
            model.validate()?;
            let mut norms = vec![0f32; layers];
            for seed in args.seed..args.seed + args.grad_seeds as u64 {
                let one =
                    train::ffn_grad_norms(&model, Init::Xavier, corpus, seed, args.grad_batches, args.batch, dev)?;
                for (n, o) in norms.iter_mut().zip(one) {
                    *n += o / args.grad_seeds as f32;
                }
            }
            points.push(report::SweepPoint { placement, norms });
            bar.inc(1);
        }
    }
    bar.finish();
    report::write_sweep_csv(&args.out.join("grad_depths.csv"), &points)?;
    let title = format!(
        "FFN weight gradient norm per block at a Xavier initialization: d={}, {:?} norm, mean over {} seeds × {} batches of {}×{}",
        args.grad_width, args.norm, args.grad_seeds, args.grad_batches, args.batch, args.seq_len
    );
    report::plot_sweep(&args.out.join("grad_depths.svg"), &points, &title)?;
    Ok(())
}

fn describe(out: &Path, sweep: bool) -> String {
    let sweep = if sweep {
        format!(", {0}/grad_depths.csv, {0}/grad_depths.svg", out.display())
    } else {
        String::new()
    };
    format!(
        "{0}/loss.csv, {0}/grad_norms.csv, {0}/training.svg{sweep} and a checkpoint per variant, {0}/{{variant}}.safetensors",
        out.display()
    )
}

fn sample(args: &Args, dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    for variant in &args.variant {
        let s = variant.name();
        let (model, meta) = train::load_checkpoint(&args.out, s, dev).map_err(|e| {
            format!(
                "cannot load the {s} checkpoint from {} ({e}); train first",
                args.out.display()
            )
        })?;
        let text = train::sample(&model, &meta, &args.prompt, args.chars, 0.8, args.seed, dev)?;
        println!("--- {s} ---\n{text}\n");
    }
    Ok(())
}
