//! The two classic MLP experiments. `deep_sigmoid`: a deep sigmoid MLP learns with
//! BatchNorm and barely without it, and the histograms of its hidden activations show
//! why (saturation). `mlp`: which norm at batch 64 and at batch 4, where a BatchNorm
//! channel is one feature, so that at batch 4 its statistics come from 4 values.

use crate::data::{Data, Split};
use crate::mlp::{Act, Mlp, MlpNorm};
use crate::report::{self, Panel, Run, Series};
use crate::train::{self, Opt, TrainConfig};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use std::fmt::Write as _;
use std::path::Path;

/// How long each experiment trains (the defaults are the classic setups, some on
/// subsets to keep the example's default run short).
#[derive(Clone, Debug)]
pub struct Budget {
    /// Deep sigmoid MLP: epochs, over the first this many training images.
    pub sigmoid_epochs: usize,
    pub sigmoid_images: usize,
    /// Which-norm MLP: epochs at batch 64 and at batch 4 (5,000 training images).
    pub mlp_epochs: (usize, usize),
    pub seed: u64,
}

type Progress<'a> = &'a mut dyn FnMut(&str, usize) -> Box<dyn FnMut(usize)>;

/// Trains one MLP; returns the run and the network.
#[allow(clippy::too_many_arguments)]
fn run_mlp(
    sizes: &[usize],
    act: Act,
    norm: MlpNorm,
    cfg: &TrainConfig,
    data: &Data,
    dev: &Device,
    progress: Progress,
    before: &mut dyn FnMut(&Mlp) -> candle_core::Result<()>,
) -> Result<(Run, Mlp), Box<dyn std::error::Error>> {
    let varmap = VarMap::new();
    let net = Mlp::new(sizes, act, norm, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    train::init(&varmap, cfg.seed)?;
    before(&net)?;
    let mut bar = progress(&format!("{} b{}", norm.name(), cfg.batch), cfg.images);
    let record = train::train(&net, &varmap, cfg, data, dev, None, &mut *bar)?;
    let run = Run {
        name: norm.name().to_string(),
        batch: cfg.batch,
        record,
    };
    Ok((run, net))
}

/// Bins of the activation histograms over [0, 1].
const BINS: usize = 25;

/// Each hidden layer's activations on the first `images` images of `split`, in train
/// mode (BatchNorm with the batch's statistics, as training sees it; at initialization
/// its running statistics are still the identity): the fraction of values in each of
/// [`BINS`] bins over [0, 1], and their standard deviation.
fn histograms(net: &Mlp, split: &Split, images: usize, dev: &Device) -> candle_core::Result<Vec<(Vec<f64>, f64)>> {
    let idx: Vec<usize> = (0..images.min(split.len())).collect();
    let (x, _) = split.batch(&idx, dev)?;
    let (_, acts) = net.forward_all(&x, true)?;
    acts.iter()
        .map(|a| {
            let v = a.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let mut h = vec![0.0; BINS];
            for x in &v {
                h[((x * BINS as f32) as usize).min(BINS - 1)] += 1.0 / v.len() as f64;
            }
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
            Ok((h, var.sqrt()))
        })
        .collect()
}

/// The fraction of a histogram in its outer bins: saturated sigmoid outputs (below 0.04
/// or above 0.96).
fn saturated(h: &[f64]) -> f64 {
    h[0] + h[BINS - 1]
}

/// The deep saturating net: 784-256-256-256-256-10 with sigmoids, SGD at lr 0.1, batch
/// 128, without and with BatchNorm before each sigmoid, from the same weights on the
/// same batches. Writes `deep-sigmoid.csv`, `deep-sigmoid-accuracy.svg` and
/// `deep-sigmoid-activations.svg` to `out`; returns the README's tables.
pub fn deep_sigmoid(
    budget: &Budget,
    data: &Data,
    dev: &Device,
    out: &Path,
    progress: Progress,
) -> Result<String, Box<dyn std::error::Error>> {
    let sizes = [784, 256, 256, 256, 256, 10];
    let train_images = budget.sigmoid_images.min(data.train.len());
    let cfg = TrainConfig {
        batch: 128,
        images: budget.sigmoid_epochs * train_images,
        train_images,
        eval_every: train_images,
        eval_images: data.test.len(),
        test_images: data.test.len(),
        opt: Opt::Sgd(0.1),
        seed: budget.seed,
        batch_norm: false,
    };
    let probe = 1000;
    let (mut runs, mut hists) = (Vec::new(), Vec::new());
    for norm in [MlpNorm::None, MlpNorm::Batch] {
        let mut at_init = Vec::new();
        let (run, net) = run_mlp(&sizes, Act::Sigmoid, norm, &cfg, data, dev, progress, &mut |net| {
            at_init = histograms(net, &data.train, probe, dev)?;
            Ok(())
        })?;
        hists.push((norm, at_init, histograms(&net, &data.train, probe, dev)?));
        runs.push(run);
    }
    report::write_csv(&out.join("deep-sigmoid.csv"), &runs)?;
    report::plot(&out.join("deep-sigmoid-accuracy.svg"), &runs, Some(train_images))?;
    let bins: Vec<f64> = (0..BINS).map(|b| (b as f64 + 0.5) / BINS as f64).collect();
    let mut panels = Vec::new();
    for (norm, init, trained) in &hists {
        for (layer, (a, b)) in init.iter().zip(trained).enumerate() {
            let series = |name: &str, h: &(Vec<f64>, f64)| Series {
                name: name.to_string(),
                points: bins.iter().zip(&h.0).map(|(&x, &y)| (x, y)).collect(),
            };
            panels.push(Panel {
                title: format!(
                    "{} · layer {}",
                    if *norm == MlpNorm::None { "no norm" } else { "BatchNorm" },
                    layer + 1
                ),
                series: vec![series("at initialization", a), series("after training", b)],
            });
        }
    }
    let y_max = panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| &s.points)
        .map(|p| p.1)
        .fold(0.0, f64::max);
    report::figure(
        &out.join("deep-sigmoid-activations.svg"),
        &panels,
        sizes.len() - 2,
        ("sigmoid output", "fraction of activations"),
        Some((0.0, (y_max * 1.05).min(1.0))),
    )?;

    let mut s = String::from("| epoch | no norm | BatchNorm |\n|---|---|---|\n");
    for (a, b) in runs[0].record.evals.iter().zip(&runs[1].record.evals).skip(1) {
        let _ = writeln!(
            s,
            "| {} | {:.1} % | {:.1} % |",
            a.0 / train_images,
            100.0 * a.1,
            100.0 * b.1
        );
    }
    s += "\nEach hidden layer's sigmoid outputs on 1,000 training images in train mode: standard deviation, and (in parentheses) the share saturated below 0.04 or above 0.96:\n\n| net | when | layer 1 | layer 2 | layer 3 | layer 4 |\n|---|---|---|---|---|---|\n";
    for (norm, init, trained) in &hists {
        for (when, h) in [("initialization", init), ("after training", trained)] {
            let cells: Vec<String> = h
                .iter()
                .map(|(h, std)| format!("{std:.3} ({:.0} %)", 100.0 * saturated(h)))
                .collect();
            let _ = writeln!(s, "| {} | {when} | {} |", norm.name(), cells.join(" | "));
        }
    }
    Ok(s)
}

/// Which norm for an MLP at batch 64 and at batch 4 (ReLU, SGD): 784-256-128-10 at lr
/// 0.1 with no norm, BatchNorm, LayerNorm, RMSNorm and GroupNorm, then 784-128-64-10 at
/// lr 0.05 with no norm, BatchNorm, LayerNorm and GroupNorm, each on the first 5,000
/// training images and tested on the first 2,000 test images. Writes `mlp.csv` and
/// `mlp-accuracy.svg`; returns the summary table.
pub fn mlp(
    budget: &Budget,
    data: &Data,
    dev: &Device,
    out: &Path,
    progress: Progress,
) -> Result<String, Box<dyn std::error::Error>> {
    let train_images = 5000.min(data.train.len());
    struct Setup {
        sizes: &'static [usize],
        batch: usize,
        lr: f64,
        epochs: usize,
        norms: &'static [MlpNorm],
    }
    let setups = [
        Setup {
            sizes: &[784, 256, 128, 10],
            batch: 64,
            lr: 0.1,
            epochs: budget.mlp_epochs.0,
            norms: &[
                MlpNorm::None,
                MlpNorm::Batch,
                MlpNorm::Layer,
                MlpNorm::Rms,
                MlpNorm::Group,
            ],
        },
        Setup {
            sizes: &[784, 128, 64, 10],
            batch: 4,
            lr: 0.05,
            epochs: budget.mlp_epochs.1,
            norms: &[MlpNorm::None, MlpNorm::Batch, MlpNorm::Layer, MlpNorm::Group],
        },
    ];
    let mut runs = Vec::new();
    for setup in setups {
        for &norm in setup.norms {
            let cfg = TrainConfig {
                batch: setup.batch,
                images: setup.epochs * train_images,
                train_images,
                eval_every: train_images,
                eval_images: 2000.min(data.test.len()),
                test_images: 2000.min(data.test.len()),
                opt: Opt::Sgd(setup.lr),
                seed: budget.seed,
                batch_norm: norm == MlpNorm::Batch,
            };
            let (run, _) = run_mlp(setup.sizes, Act::Relu, norm, &cfg, data, dev, progress, &mut |_| Ok(()))?;
            runs.push(run);
        }
    }
    report::write_csv(&out.join("mlp.csv"), &runs)?;
    report::plot(&out.join("mlp-accuracy.svg"), &runs, Some(train_images))?;
    Ok(report::summary(&runs))
}
