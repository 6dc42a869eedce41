//! Training a classifier (the CNN or an MLP) at one batch size, from a seeded
//! initialization and data order shared by every variant, and measuring test accuracy.

use crate::common::Rng;
use crate::data::{Data, Split};
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap, SGD};
use std::time::Instant;

/// A network that classifies images `[B, 1, 28, 28]` into 10 logits; `train` selects
/// BatchNorm's batch statistics (and updates its running ones).
pub trait Classifier {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
}

/// The optimizer and its learning rate.
#[derive(Clone, Copy, Debug)]
pub enum Opt {
    /// AdamW without weight decay (the CNN comparison).
    AdamW(f64),
    /// Plain SGD (the MLP experiments, as the classic papers ran them).
    Sgd(f64),
}

/// What one run trains.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub batch: usize,
    /// Training images seen in all (the batch size changes the number of steps) ...
    pub images: usize,
    /// ... drawn from the first this many of the training set.
    pub train_images: usize,
    /// Test accuracy is measured every this many images seen ...
    pub eval_every: usize,
    /// ... on this many test images; the final accuracy on `test_images`.
    pub eval_images: usize,
    pub test_images: usize,
    pub opt: Opt,
    pub seed: u64,
    /// The network has BatchNorm: its accuracy in train mode is measured too.
    pub batch_norm: bool,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// (images seen, test accuracy on the first `eval_images` test images, eval mode).
    pub evals: Vec<(usize, f32)>,
    /// Mean training loss over the last tenth of the steps.
    pub final_loss: f32,
    /// Accuracy on the first `test_images` test images, eval mode.
    pub test_accuracy: f32,
    /// BatchNorm only: the same with each test batch of `batch` images normalized by its
    /// own statistics (train mode).
    pub train_mode_accuracy: Option<f32>,
    pub seconds: f64,
}

/// The training images in the order every variant sees them: a seeded shuffle of the
/// training set, repeated as often as `images` needs.
pub fn order(n: usize, images: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(images);
    while out.len() < images {
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        out.extend(perm.into_iter().take(images - out.len()));
    }
    out
}

/// Overwrites the network's weights from seeded streams, one per layer, so that a
/// layer starts from the same values in every variant: convolution and classifier
/// weights uniform in ±1/√fan_in (PyTorch's default bound), biases zero; a weight-normed
/// layer's v gets that weight and g its norm per output unit, so that it starts as the
/// plain layer does. Norm layers keep their ones and zeros.
pub fn init(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap poisoned").clone();
    for (name, var) in &vars {
        let (layer, param) = name.rsplit_once('.').unwrap_or(("", name));
        if layer.starts_with("norm") {
            continue;
        }
        if param == "bias" {
            var.set(&var.zeros_like()?)?;
            continue;
        }
        if param != "weight" && param != "weight_v" {
            continue;
        }
        let dims = var.dims().to_vec();
        let fan_in: usize = dims[1..].iter().product();
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut rng = Rng::new(
            seed ^ layer
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into())),
        );
        let w: Vec<f32> = (0..var.elem_count())
            .map(|_| bound * (2.0 * rng.uniform() - 1.0))
            .collect();
        let w = Tensor::from_vec(w, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        if param == "weight_v" {
            let g = w.sqr()?.sum_keepdim((1..dims.len()).collect::<Vec<_>>())?.sqrt()?;
            vars[&format!("{layer}.weight_g")].set(&g)?;
        }
        var.set(&w)?;
    }
    Ok(())
}

/// Fraction of `n` images of `split` classified right, in batches of `batch`; `train`
/// runs the network in train mode (BatchNorm with each batch's statistics).
pub fn accuracy(net: &dyn Classifier, split: &Split, n: usize, batch: usize, train: bool, dev: &Device) -> Result<f32> {
    let mut right = 0usize;
    let idx: Vec<usize> = (0..n.min(split.len())).collect();
    for chunk in idx.chunks(batch) {
        let (x, y) = split.batch(chunk, dev)?;
        let pred = net.forward_t(&x, train)?.detach().argmax(D::Minus1)?;
        right += pred.eq(&y)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    }
    Ok(right as f32 / idx.len() as f32)
}

/// Trains `net` (initialized, its variables in `varmap`) at `cfg.batch` on the images
/// of [`order`], calling `progress(images)` after each step, and saves the trained
/// variables to `checkpoint` (before the train-mode evaluation, which moves BatchNorm's
/// running statistics). Returns what it measured.
pub fn train(
    net: &dyn Classifier,
    varmap: &VarMap,
    cfg: &TrainConfig,
    data: &Data,
    dev: &Device,
    checkpoint: Option<&std::path::Path>,
    progress: &mut dyn FnMut(usize),
) -> Result<Record> {
    enum Step {
        AdamW(AdamW),
        Sgd(SGD),
    }
    let mut opt = match cfg.opt {
        Opt::AdamW(lr) => Step::AdamW(AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?),
        Opt::Sgd(lr) => Step::Sgd(SGD::new(varmap.all_vars(), lr)?),
    };
    let order = order(cfg.train_images.min(data.train.len()), cfg.images, cfg.seed);
    let start = Instant::now();
    let mut record = Record::default();
    let mut losses = Vec::new();
    let eval_batch = 500;
    record
        .evals
        .push((0, accuracy(net, &data.test, cfg.eval_images, eval_batch, false, dev)?));
    for (step, idx) in order.chunks(cfg.batch).enumerate() {
        let (x, y) = data.train.batch(idx, dev)?;
        let loss = candle_nn::loss::cross_entropy(&net.forward_t(&x, true)?, &y)?;
        match &mut opt {
            Step::AdamW(o) => o.backward_step(&loss)?,
            Step::Sgd(o) => o.backward_step(&loss)?,
        }
        losses.push(loss.to_scalar::<f32>()?);
        let seen = (step * cfg.batch + idx.len()).min(cfg.images);
        if seen % cfg.eval_every < cfg.batch || seen == cfg.images {
            let acc = accuracy(net, &data.test, cfg.eval_images, eval_batch, false, dev)?;
            record.evals.push((seen, acc));
        }
        progress(seen);
    }
    let tail = &losses[losses.len() - losses.len().div_ceil(10)..];
    record.final_loss = tail.iter().sum::<f32>() / tail.len() as f32;
    record.test_accuracy = accuracy(net, &data.test, cfg.test_images, eval_batch, false, dev)?;
    record.seconds = start.elapsed().as_secs_f64();
    if let Some(path) = checkpoint {
        varmap.save(path)?;
    }
    if cfg.batch_norm {
        let acc = accuracy(net, &data.test, cfg.test_images, cfg.batch, true, dev)?;
        record.train_mode_accuracy = Some(acc);
    }
    Ok(record)
}
