//! A small GPT-style decoder: token and position embeddings, `layers` blocks of causal
//! multi-head self-attention and an MLP with residual connections, a final norm and an
//! output projection. The norms are candle-norm's modules, placed before each sublayer
//! (pre-norm, `x + f(norm(x))`) or after each residual sum (post-norm, `norm(x + f(x))`).
//! In the pre-norm model every residual add is fused with the norm that reads its sum
//! (`forward_with_residual`), as LLM implementations do.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder, VarMap};
use candle_norm::nn::{layer_norm, rms_norm, LayerNorm};
use serde::{Deserialize, Serialize};

/// Where the norms sit in a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Placement {
    /// `x + f(norm(x))`: the norm on the sublayer's input (GPT-2 and later).
    Pre,
    /// `norm(x + f(x))`: the norm after the residual sum (the original Transformer).
    Post,
}

/// Which norm the blocks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum NormKind {
    /// LayerNorm with weight and bias.
    Layer,
    /// RMSNorm with a weight.
    Rms,
}

/// The model's shape; saved beside each checkpoint so that `--sample` can rebuild it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab: usize,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub seq_len: usize,
    pub norm: NormKind,
    pub placement: Placement,
}

impl ModelConfig {
    /// Checks what the layers cannot: a one-line reason when the shape is unusable.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.layers == 0 || self.d_model == 0 || self.heads == 0 || self.seq_len == 0 {
            return Err("--layers, --d-model, --heads and --seq-len must be at least 1".into());
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(format!(
                "--d-model ({}) must be divisible by --heads ({})",
                self.d_model, self.heads
            ));
        }
        Ok(())
    }
}

const EPS: f64 = 1e-5;

fn norm(kind: NormKind, d: usize, vb: VarBuilder) -> Result<LayerNorm> {
    match kind {
        NormKind::Layer => layer_norm(d, EPS, vb),
        NormKind::Rms => Ok(rms_norm(d, EPS, vb)?.into_inner()),
    }
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self.qkv.forward(x)?.reshape((b, t, 3, self.heads, hd))?;
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
        let att = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.proj.forward(&y)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc: Linear,
    out: Linear,
}

impl Block {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            norm1: norm(cfg.norm, d, vb.pp("norm1"))?,
            attn: Attention {
                qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
                proj: linear(d, d, vb.pp("attn.proj"))?,
                heads: cfg.heads,
            },
            norm2: norm(cfg.norm, d, vb.pp("norm2"))?,
            fc: linear(d, 4 * d, vb.pp("mlp.fc"))?,
            out: linear(4 * d, d, vb.pp("mlp.out"))?,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.fc.forward(x)?.gelu()?)
    }

    /// A pre-norm block, given its input `h` (the residual stream) already normalized by
    /// `norm1`: each residual add is fused with the norm that reads its sum, `norm2`
    /// here and `next` (the next block's `norm1`, or the final norm) at the end.
    /// Returns the next norm's output and the new residual stream.
    fn forward_pre(&self, normed: &Tensor, h: &Tensor, mask: &Tensor, next: &LayerNorm) -> Result<(Tensor, Tensor)> {
        let (normed, h) = self.norm2.forward_with_residual(&self.attn.forward(normed, mask)?, h)?;
        next.forward_with_residual(&self.mlp(&normed)?, &h)
    }

    /// A post-norm block: `norm(x + f(x))` after each sublayer.
    fn forward_post(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = self.norm1.forward(&(x + self.attn.forward(x, mask)?)?)?;
        self.norm2.forward(&(&x + self.mlp(&x)?)?)
    }
}

/// The decoder. Its variables live in the [`VarMap`] it was built from, under the names
/// `wte`, `wpe`, `blocks.{i}.*`, `norm_f` and `head`.
pub struct Gpt {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    norm_f: LayerNorm,
    head: Linear,
    cfg: ModelConfig,
}

impl Gpt {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            wte: embedding(cfg.vocab, d, vb.pp("wte"))?,
            wpe: embedding(cfg.seq_len, d, vb.pp("wpe"))?,
            blocks: (0..cfg.layers)
                .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
                .collect::<Result<_>>()?,
            norm_f: norm(cfg.norm, d, vb.pp("norm_f"))?,
            head: linear(d, cfg.vocab, vb.pp("head"))?,
            cfg: cfg.clone(),
        })
    }

    /// Logits `[B, T, vocab]` for token ids `[B, T]` (T <= seq_len).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let dev = ids.device();
        let pos = Tensor::arange(0u32, t as u32, dev)?;
        let mut x = self.wte.forward(ids)?.broadcast_add(&self.wpe.forward(&pos)?)?;
        let mask = causal_mask(t, x.dtype(), dev)?;
        match self.cfg.placement {
            Placement::Pre => {
                let first = self.blocks.first().map_or(&self.norm_f, |b| &b.norm1);
                let mut normed = first.forward(&x)?;
                for (i, block) in self.blocks.iter().enumerate() {
                    let next = self.blocks.get(i + 1).map_or(&self.norm_f, |b| &b.norm1);
                    (normed, x) = block.forward_pre(&normed, &x, &mask, next)?;
                }
                self.head.forward(&normed)
            }
            Placement::Post => {
                for block in &self.blocks {
                    x = block.forward_post(&x, &mask)?;
                }
                self.head.forward(&self.norm_f.forward(&x)?)
            }
        }
    }
}

/// `[T, T]`: 0 on and below the diagonal, -inf above, added to the attention scores.
fn causal_mask(t: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t)
        .map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    Tensor::from_vec(m, (t, t), dev)?.to_dtype(dtype)
}

/// How [`init_weights`] draws the weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// N(0, 0.02²), GPT-2's: what the training runs use.
    Gpt2,
    /// N(0, 2/(fan_in + fan_out)), Xavier/Glorot's, the initialization Xiong et al.'s
    /// analysis assumes: each sublayer's output starts at the scale of its input.
    Xavier,
}

/// The initialization, drawn from `seed` in name order so that every placement, device
/// and dtype starts from the same numbers: N(0, 1) for the embeddings (candle-nn's
/// default, and the scale of the original Transformer's √d-scaled embeddings, so the
/// residual stream starts at unit scale), the weight matrices as `init` says, 0 for
/// biases, 1 for norm weights.
pub fn init_weights(varmap: &VarMap, seed: u64, init: Init) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = crate::data::Rng::new(seed);
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let is_norm = name.contains("norm");
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else if is_norm {
            vec![1.0; n]
        } else if name.starts_with("wte") || name.starts_with("wpe") {
            (0..n).map(|_| rng.normal()).collect()
        } else {
            let std = match init {
                Init::Gpt2 => 0.02,
                Init::Xavier => {
                    let dims = var.dims();
                    (2.0 / (dims[0] + dims[dims.len() - 1]) as f32).sqrt()
                }
            };
            (0..n).map(|_| std * rng.normal()).collect()
        };
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
