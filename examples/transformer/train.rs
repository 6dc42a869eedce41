//! Training one variant, the record it leaves (loss curves, gradient norms at
//! initialization, speed), checkpoints, and sampling from a checkpoint.

use crate::data::{encode, Corpus, Rng};
use crate::model::{init_weights, Gpt, Init, ModelConfig};
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// Everything a training run needs besides the data and the device.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub steps: usize,
    pub lr: f64,
    /// Steps of linear learning-rate warm-up from 0 (0: none).
    pub warmup: usize,
    pub batch: usize,
    pub seed: u64,
    pub dtype: DType,
    /// Validation loss every this many steps (and after the last).
    pub eval_every: usize,
    pub eval_batches: usize,
}

/// What one training run measured.
#[derive(Clone, Debug)]
pub struct Record {
    /// (step, training loss of that step's batch).
    pub train: Vec<(usize, f32)>,
    /// (step, mean validation loss over fixed batches).
    pub val: Vec<(usize, f32)>,
    /// L2 norm of the gradient of each block's parameters on the first batch, at
    /// initialization (block 0 nearest the input).
    pub grad_norms: Vec<f32>,
    pub tokens_per_s: f64,
    /// The loss became non-finite, or ended above ln(vocab) (no better than guessing).
    pub diverged: bool,
}

impl Record {
    /// Mean training loss over the last `n` steps recorded.
    pub fn final_train(&self, n: usize) -> f32 {
        let tail = &self.train[self.train.len().saturating_sub(n)..];
        tail.iter().map(|p| p.1).sum::<f32>() / tail.len().max(1) as f32
    }

    pub fn final_val(&self) -> f32 {
        self.val.last().map_or(f32::NAN, |p| p.1)
    }
}

/// Cross-entropy of the model's predictions for `y`, computed in f32.
fn loss(model: &Gpt, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let logits = model.forward(x)?.to_dtype(DType::F32)?;
    candle_nn::loss::cross_entropy(&logits.flatten_to(1)?, &y.flatten_all()?)
}

/// Mean validation loss over `n` batches drawn from a fixed seed.
fn evaluate(model: &Gpt, cfg: &TrainConfig, data: &Corpus, dev: &Device) -> Result<f32> {
    let mut rng = Rng::new(cfg.seed ^ 0x5eed_5eed);
    let mut total = 0.0;
    for _ in 0..cfg.eval_batches {
        let (x, y) = data.batch(true, &mut rng, cfg.batch, cfg.model.seq_len, dev)?;
        total += loss(model, &x, &y)?.to_scalar::<f32>()?;
    }
    Ok(total / cfg.eval_batches.max(1) as f32)
}

/// Per-block gradient norms from a gradient store.
fn block_grad_norms(varmap: &VarMap, grads: &candle_core::backprop::GradStore, layers: usize) -> Result<Vec<f32>> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut sq = vec![0f32; layers];
    for (name, var) in data.iter() {
        let Some(rest) = name.strip_prefix("blocks.") else {
            continue;
        };
        let layer: usize = rest.split('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        if let Some(g) = grads.get(var) {
            sq[layer] += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        }
    }
    Ok(sq.into_iter().map(f32::sqrt).collect())
}

/// The gradient norm of each block's feed-forward weights (`mlp.fc` and `mlp.out`
/// together) at initialization, the quantity of Xiong et al.'s Fig. 3, averaged over
/// `batches` training batches of `batch` sequences; the model starts from `seed`'s
/// initialization drawn as `init` says, and the batches are the first ones its training
/// would draw.
pub fn ffn_grad_norms(
    cfg: &ModelConfig,
    init: Init,
    data: &Corpus,
    seed: u64,
    batches: usize,
    batch: usize,
    dev: &Device,
) -> Result<Vec<f32>> {
    let varmap = VarMap::new();
    let model = Gpt::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    init_weights(&varmap, seed, init)?;
    let ffn: Vec<(usize, candle_core::Var)> = {
        let vars = varmap.data().lock().expect("varmap lock");
        (0..cfg.layers)
            .flat_map(|i| ["fc", "out"].map(|m| (i, vars[&format!("blocks.{i}.mlp.{m}.weight")].clone())))
            .collect()
    };
    let mut rng = Rng::new(seed.wrapping_add(1));
    let mut mean = vec![0f32; cfg.layers];
    for _ in 0..batches {
        let (x, y) = data.batch(false, &mut rng, batch, cfg.seq_len, dev)?;
        let grads = loss(&model, &x, &y)?.backward()?;
        let mut sq = vec![0f32; cfg.layers];
        for (layer, var) in &ffn {
            if let Some(g) = grads.get(var) {
                sq[*layer] += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        for (m, s) in mean.iter_mut().zip(sq) {
            *m += s.sqrt() / batches as f32;
        }
    }
    Ok(mean)
}

/// Builds the model of `cfg` with its initialization and trains it with AdamW,
/// calling `progress(step, loss)` after every step. Returns the record and the trained
/// variables.
pub fn train(
    cfg: &TrainConfig,
    data: &Corpus,
    dev: &Device,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<(Record, VarMap, Gpt)> {
    let varmap = VarMap::new();
    let model = Gpt::new(&cfg.model, VarBuilder::from_varmap(&varmap, cfg.dtype, dev))?;
    init_weights(&varmap, cfg.seed, Init::Gpt2)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: cfg.lr,
            ..Default::default()
        },
    )?;
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut record = Record {
        train: Vec::new(),
        val: vec![(0, evaluate(&model, cfg, data, dev)?)],
        grad_norms: Vec::new(),
        tokens_per_s: 0.0,
        diverged: false,
    };
    let mut busy = Duration::ZERO;
    for step in 1..=cfg.steps {
        let start = Instant::now();
        let warm = if cfg.warmup > 0 {
            (step as f64 / cfg.warmup as f64).min(1.0)
        } else {
            1.0
        };
        opt.set_learning_rate(cfg.lr * warm);
        let (x, y) = data.batch(false, &mut rng, cfg.batch, cfg.model.seq_len, dev)?;
        let l = loss(&model, &x, &y)?;
        let grads = l.backward()?;
        if step == 1 {
            record.grad_norms = block_grad_norms(&varmap, &grads, cfg.model.layers)?;
        }
        opt.step(&grads)?;
        let value = l.to_scalar::<f32>()?;
        busy += start.elapsed();
        record.train.push((step, value));
        progress(step, value);
        if !value.is_finite() {
            record.diverged = true;
            break;
        }
        if step % cfg.eval_every == 0 || step == cfg.steps {
            record.val.push((step, evaluate(&model, cfg, data, dev)?));
        }
    }
    let steps = record.train.len();
    record.tokens_per_s = (steps * cfg.batch * cfg.model.seq_len) as f64 / busy.as_secs_f64().max(1e-9);
    let end = record.final_train(10);
    record.diverged |= !end.is_finite() || end >= (cfg.model.vocab as f32).ln();
    Ok((record, varmap, model))
}

/// What `--sample` needs to rebuild a model: its shape, vocabulary and dtype.
#[derive(Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub model: ModelConfig,
    pub chars: String,
    pub dtype: String,
}

/// Writes `{stem}.safetensors` (the variables, with the names of the model) and
/// `{stem}.json` (its [`CheckpointMeta`]).
pub fn save_checkpoint(dir: &Path, stem: &str, varmap: &VarMap, meta: &CheckpointMeta) -> Result<()> {
    varmap.save(dir.join(format!("{stem}.safetensors")))?;
    let json = serde_json::to_string_pretty(meta).map_err(candle_core::Error::wrap)?;
    std::fs::write(dir.join(format!("{stem}.json")), json)?;
    Ok(())
}

/// Rebuilds a model from a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path, stem: &str, dev: &Device) -> Result<(Gpt, CheckpointMeta)> {
    let json = std::fs::read_to_string(dir.join(format!("{stem}.json")))?;
    let meta: CheckpointMeta = serde_json::from_str(&json).map_err(candle_core::Error::wrap)?;
    let dtype: DType = meta.dtype.parse().map_err(candle_core::Error::wrap)?;
    let mut varmap = VarMap::new();
    let model = Gpt::new(&meta.model, VarBuilder::from_varmap(&varmap, dtype, dev))?;
    varmap.load(dir.join(format!("{stem}.safetensors")))?;
    Ok((model, meta))
}

/// `n` characters continuing `prompt`, sampled at `temperature` from a seeded generator.
pub fn sample(
    model: &Gpt,
    meta: &CheckpointMeta,
    prompt: &str,
    n: usize,
    temperature: f64,
    seed: u64,
    dev: &Device,
) -> Result<String> {
    let chars: Vec<char> = meta.chars.chars().collect();
    let mut ids = encode(&chars, prompt)
        .map_err(|c| candle_core::Error::Msg(format!("the prompt's character {c:?} is not in the vocabulary")))?;
    if ids.is_empty() {
        ids.push(0);
    }
    let mut rng = Rng::new(seed);
    let mut out = String::from(prompt);
    for _ in 0..n {
        let ctx = &ids[ids.len().saturating_sub(meta.model.seq_len)..];
        let x = Tensor::new(ctx, dev)?.unsqueeze(0)?;
        let logits = model.forward(&x)?.to_dtype(DType::F32)?.squeeze(0)?;
        let last = (logits.get(ctx.len() - 1)? / temperature.max(1e-3))?;
        let probs: Vec<f32> = candle_nn::ops::softmax(&last, D::Minus1)?.to_vec1()?;
        let mut u = rng.uniform();
        let mut next = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                next = i;
                break;
            }
            u -= p;
        }
        ids.push(next as u32);
        out.push(chars[next]);
    }
    Ok(out)
}
