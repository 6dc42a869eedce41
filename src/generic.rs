//! The generic backend: every norm as candle tensor ops, for tensors on a device this
//! build has no kernels for (Metal; CUDA without the `cuda` feature). The semantics are
//! the fused kernels' (`docs/semantics.md`): statistics in f32 for f16/bf16 inputs and
//! f64 for f64, the variance in two passes, eps inside the square root, and the output
//! rounded to the input's dtype once. Through autograd the composed ops train as they
//! are; the standalone backward is written out as composed ops (the two statistics,
//! then the two means of the gradient, then dγ and dβ).
//!
//! For inference (no input tracks a gradient), RMSNorm runs candle-nn's fused forward
//! where it computes what this crate does: its Metal and CUDA kernels accumulate in f32
//! and round once, as its CPU code does in f32; in f16 and bf16 its CPU code divides in
//! the input's dtype, and f64 takes eps as an f32, so those run the composed ops, as
//! do empty inputs and GPUs whose kernels candle-nn was built without.
//! candle-nn's fused LayerNorm takes the variance as E[x²] − mean², which loses what the
//! two-pass variance keeps for rows with a large mean: LayerNorm always runs the
//! composed ops.
//!
//! Every norm is one shape of the same computation ([`Geometry`]): x viewed so that its
//! statistics reduce over some dimensions and its parameters broadcast along others.
//! GroupNorm + SiLU is candle's `silu` after the affine step, and in the standalone
//! backward dy times SiLU's derivative at the recomputed x̂·γ + β.

use crate::backend::{Grads, Outputs, Slots};
use crate::spec::{Activation, Affine, Kind, Spec};
use candle_core::{bail, DType, Device, Result, Tensor};

/// How x is viewed for a norm: the view's dimensions, those its statistics reduce
/// over, and the shape γ and β broadcast as.
struct Geometry {
    view: Vec<usize>,
    stat_dims: Vec<usize>,
    param_shape: Vec<usize>,
}

impl Geometry {
    fn of(spec: &Spec) -> Self {
        let (rows, len) = (spec.rows, spec.len);
        match spec.kind {
            Kind::Layer | Kind::Rms => Self {
                view: vec![rows, len],
                stat_dims: vec![1],
                param_shape: vec![1, len],
            },
            // [B, C, *S] as [B, C, S].
            Kind::LayerFirst => {
                let s = spec.inner;
                Self {
                    view: vec![rows / s.max(1), len, s],
                    stat_dims: vec![1],
                    param_shape: vec![1, len, 1],
                }
            }
            // [B, C, *S] as [B, G, C/G, S].
            Kind::Group => {
                let (g, per, s) = (spec.param_blocks, spec.params_per_row, spec.inner);
                Self {
                    view: vec![rows / g.max(1), g, per, s],
                    stat_dims: vec![2, 3],
                    param_shape: vec![1, g, per, 1],
                }
            }
            // [B, *S, C] as [B, S, G, C/G].
            Kind::GroupLast => {
                let (g, per, s) = (spec.param_blocks, spec.params_per_row, spec.inner);
                Self {
                    view: vec![rows / g.max(1), s, g, per],
                    stat_dims: vec![1, 3],
                    param_shape: vec![1, 1, g, per],
                }
            }
            // [B, C, *S] as [B, C, S].
            Kind::Batch => {
                let c = spec.param_blocks;
                Self {
                    view: vec![rows / c.max(1), c, len],
                    stat_dims: vec![0, 2],
                    param_shape: vec![1, c, 1],
                }
            }
        }
    }

    /// The dimensions the parameters' gradients sum over: those they broadcast along.
    fn param_sum_dims(&self) -> Vec<usize> {
        (0..self.param_shape.len())
            .filter(|&d| self.param_shape[d] == 1)
            .collect()
    }

    /// The shape of a statistic: the view with its reduced dimensions kept as 1.
    fn stat_shape(&self) -> Vec<usize> {
        (0..self.view.len())
            .map(|d| if self.stat_dims.contains(&d) { 1 } else { self.view[d] })
            .collect()
    }
}

/// Elements summed in one run. Longer reductions are cut into chunks, each summed on
/// its own before the chunk sums are: candle's CPU reduction adds sequentially, and a
/// running sum over a million values in f32 drifts by 1e-4 of it; in chunks of about
/// √n no running sum takes more than about √n addends. (A GPU's tree reduction needs
/// none of this, and loses nothing by it.)
const RUN: usize = 1024;

/// The sum over `dims`, kept as dimensions of size 1, each long one summed in chunks.
fn sum_keepdim(t: &Tensor, dims: &[usize]) -> Result<Tensor> {
    dims.iter().try_fold(t.clone(), |t, &d| sum_dim(&t, d))
}

fn sum_dim(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = t.dim(dim)?;
    if n <= RUN {
        return t.sum_keepdim(dim);
    }
    let chunk = n.isqrt().max(2);
    let padded = n.next_multiple_of(chunk);
    let t = if padded > n {
        t.pad_with_zeros(dim, 0, padded - n)?
    } else {
        t.clone()
    };
    let mut shape = t.dims().to_vec();
    shape.splice(dim..=dim, [padded / chunk, chunk]);
    let chunks = sum_dim(&t.reshape(shape)?, dim + 1)?.squeeze(dim + 1)?;
    sum_dim(&chunks, dim)
}

/// The mean over `dims`, kept as dimensions of size 1.
fn mean_keepdim(t: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let count: usize = dims.iter().map(|&d| t.dim(d)).product::<Result<usize>>()?;
    sum_keepdim(t, dims)? / count.max(1) as f64
}

/// The dtype statistics accumulate in.
fn acc_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// x in the accumulation dtype, viewed by `g`, and the normalized x̂ with its rstd
/// (shaped as a statistic), from the batch or from running statistics, and the mean
/// (None for RMSNorm) and biased variance (the mean square for RMSNorm).
struct Normalized {
    xhat: Tensor,
    rstd: Tensor,
    mean: Option<Tensor>,
    var: Tensor,
}

fn normalize(spec: &Spec, g: &Geometry, x: &Tensor, running: Option<[&Tensor; 2]>) -> Result<Normalized> {
    let acc = acc_dtype(x.dtype());
    let xa = x.to_dtype(acc)?.reshape(g.view.as_slice())?;
    let stat = g.stat_shape();
    let (mean, var) = match running {
        Some([m, v]) => (
            Some(m.to_dtype(acc)?.reshape(stat.as_slice())?),
            v.to_dtype(acc)?.reshape(stat.as_slice())?,
        ),
        // The mean of x − x₀ (x₀: the first element each statistic reduces over), then
        // x₀ added back: with a large offset and a small spread the sums are of the
        // small differences, which lose nothing to rounding where candle's running
        // sums of the offset would (the fused CPU path does the same). x₀ is any constant
        // to the statistics, and detached so that autograd has no path through it to
        // cancel in rounding. Empty x has no x₀.
        None if spec.center() => {
            let first = (xa.elem_count() > 0)
                .then(|| g.stat_dims.iter().try_fold(xa.clone(), |t, &d| t.narrow(d, 0, 1)))
                .transpose()?
                .map(|f| f.detach());
            let xs = match &first {
                Some(f) => xa.broadcast_sub(f)?,
                None => xa.clone(),
            };
            let mean = mean_keepdim(&xs, &g.stat_dims)?;
            let var = mean_keepdim(&xs.broadcast_sub(&mean)?.sqr()?, &g.stat_dims)?;
            let mean = match first {
                Some(f) => (mean + f)?,
                None => mean,
            };
            (Some(mean), var)
        }
        None => (None, mean_keepdim(&xa.sqr()?, &g.stat_dims)?),
    };
    let rstd = (var.clone() + spec.eps)?.sqrt()?.recip()?;
    let centered = match &mean {
        Some(m) => xa.broadcast_sub(m)?,
        None => xa,
    };
    Ok(Normalized {
        xhat: centered.broadcast_mul(&rstd)?,
        rstd,
        mean,
        var,
    })
}

/// A parameter in the accumulation dtype, shaped to broadcast over the view.
fn param(g: &Geometry, p: &Tensor, acc: DType) -> Result<Tensor> {
    p.to_dtype(acc)?.reshape(g.param_shape.as_slice())
}

/// Whether candle-nn's fused RMSNorm forward computes what this crate does for a
/// tensor of `dtype` on `dev` (module comment).
fn candle_nn_rms_matches(dev: &Device, dtype: DType) -> bool {
    match dev {
        Device::Cpu => dtype == DType::F32,
        _ => matches!(dtype, DType::F32 | DType::F16 | DType::BF16),
    }
}

/// The forward: y (and h, with a residual; BatchNorm's batch statistics in training).
pub(crate) fn forward(spec: &Spec, ins: Slots<&Tensor>) -> Result<Outputs> {
    let dtype = ins.x.dtype();
    let h = ins.residual.map(|r| ins.x + r).transpose()?;
    let x = h.as_ref().unwrap_or(ins.x);
    let tracked = [Some(x), ins.weight].into_iter().flatten().any(Tensor::track_op);
    // candle-nn's kernels divide by the row length and launch a grid of the row count:
    // empty inputs take the composed ops, as do mixed dtypes, which candle-nn has not.
    let plain = ins.weight.is_none_or(|w| w.dtype() == dtype);
    if spec.kind == Kind::Rms && plain && !tracked && x.elem_count() > 0 && candle_nn_rms_matches(x.device(), dtype) {
        let w = match ins.weight {
            Some(w) => w.contiguous()?,
            None => Tensor::ones(spec.len, dtype, x.device())?,
        };
        match candle_nn::ops::rms_norm(&x.contiguous()?, &w, spec.eps as f32) {
            Ok(y) => return Ok(Outputs { y, h, stats: None }),
            // candle-nn has a GPU's kernel only when built with that device's feature
            // (`metal`, `cuda`); without it, the error comes before any work is done,
            // and the composed ops below run instead.
            Err(_) if !x.device().is_cpu() => {}
            Err(e) => return Err(e),
        }
    }
    let g = Geometry::of(spec);
    let acc = acc_dtype(dtype);
    let n = normalize(spec, &g, x, ins.running.map(|[m, v]| [m, v]))?;
    let mut y = n.xhat;
    if let Some(w) = ins.weight {
        y = y.broadcast_mul(&param(&g, w, acc)?)?;
    }
    if let Some(b) = ins.bias {
        y = y.broadcast_add(&param(&g, b, acc)?)?;
    }
    if spec.act == Activation::Silu {
        y = y.silu()?;
    }
    let y = y.to_dtype(dtype)?.reshape(x.shape())?;
    // BatchNorm's batch statistics, in the parameters' dtype (x's without any).
    let pdtype = ins.first_param().map_or(dtype, |p| p.dtype());
    let stat = |s: Tensor| -> Result<Tensor> { Ok(s.to_dtype(pdtype)?.reshape(spec.param_blocks)?.detach()) };
    let stats = match (spec.kind, ins.running, n.mean) {
        (Kind::Batch, None, Some(mean)) => Some([stat(mean)?, stat(n.var)?]),
        _ => None,
    };
    Ok(Outputs { y, h, stats })
}

/// `v` through the Jacobian of x̂ with respect to x, which is symmetric, so that this is
/// both the backward's dx from g = γ·dy and the forward-mode ẋ̂ from ẋ: ρ·(v − mean(v)
/// − x̂·mean(v·x̂)) over each reduction with batch statistics (no mean(v) for RMSNorm),
/// ρ·v with running ones (`eval`: the statistics are constants).
fn through_xhat(spec: &Spec, g: &Geometry, n: &Normalized, v: &Tensor, eval: bool) -> Result<Tensor> {
    if eval {
        return v.broadcast_mul(&n.rstd);
    }
    let stat_dims = g.stat_dims.as_slice();
    let mean_vx = mean_keepdim(&v.mul(&n.xhat)?, stat_dims)?;
    let mut inner = v.broadcast_sub(&n.xhat.broadcast_mul(&mean_vx)?)?;
    if spec.center() {
        inner = inner.broadcast_sub(&mean_keepdim(v, stat_dims)?)?;
    }
    inner.broadcast_mul(&n.rstd)
}

/// The forward-mode derivative ẏ of the norm at `ins` along the tangents `[ẋ, γ̇, β̇]`
/// (absent: zero), in x's shape and dtype: ẏ = ẋ̂·γ + x̂·γ̇ + β̇ with ẋ̂ from
/// [`through_xhat`], in the accumulation dtype, rounded once.
pub(crate) fn tangent(spec: &Spec, ins: &Slots<&Tensor>, [tx, tw, tb]: [Option<&Tensor>; 3]) -> Result<Tensor> {
    let dtype = ins.x.dtype();
    let acc = acc_dtype(dtype);
    let g = Geometry::of(spec);
    let n = normalize(spec, &g, ins.x, ins.running.map(|[m, v]| [m, v]))?;
    let mut dy = match tx {
        Some(tx) => {
            let txa = tx.to_dtype(acc)?.reshape(g.view.as_slice())?;
            let dxhat = through_xhat(spec, &g, &n, &txa, ins.running.is_some())?;
            match ins.weight {
                Some(w) => dxhat.broadcast_mul(&param(&g, w, acc)?)?,
                None => dxhat,
            }
        }
        None => n.xhat.zeros_like()?,
    };
    if let Some(tw) = tw {
        dy = (dy + n.xhat.broadcast_mul(&param(&g, tw, acc)?)?)?;
    }
    if let Some(tb) = tb {
        dy = dy.broadcast_add(&param(&g, tb, acc)?)?;
    }
    dy.to_dtype(dtype)?.reshape(ins.x.shape())
}

/// SiLU's derivative at z = x̂·γ + β, recomputed: σ(z)·(1 + z·(1 − σ(z))).
fn silu_grad(g: &Geometry, n: &Normalized, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let acc = n.xhat.dtype();
    let mut z = n.xhat.clone();
    if let Some(w) = weight {
        z = z.broadcast_mul(&param(g, w, acc)?)?;
    }
    if let Some(b) = bias {
        z = z.broadcast_add(&param(g, b, acc)?)?;
    }
    let sig = z.neg()?.exp()?.affine(1.0, 1.0)?.recip()?;
    let one_minus = sig.affine(-1.0, 1.0)?;
    sig.mul(&z.mul(&one_minus)?.affine(1.0, 1.0)?)
}

/// The backward from `ins.dy` (and `ins.dh`, added to dx; x is then h): dx, and dγ and
/// dβ as `affine` asks.
pub(crate) fn backward(spec: &Spec, affine: Affine, ins: Slots<&Tensor>) -> Result<Grads> {
    let Some(dy) = ins.dy else {
        bail!("{}: internal error: a backward without dy", spec.name())
    };
    let dtype = ins.x.dtype();
    let acc = acc_dtype(dtype);
    let g = Geometry::of(spec);
    let n = normalize(spec, &g, ins.x, ins.running.map(|[m, v]| [m, v]))?;
    let mut dya = dy.to_dtype(acc)?.reshape(g.view.as_slice())?;
    if spec.act == Activation::Silu {
        dya = dya.mul(&silu_grad(&g, &n, ins.weight, ins.bias)?)?;
    }
    let gy = match ins.weight {
        Some(w) => dya.broadcast_mul(&param(&g, w, acc)?)?,
        None => dya.clone(),
    };
    let mut dx = through_xhat(spec, &g, &n, &gy, ins.running.is_some())?;
    if let Some(dh) = ins.dh {
        dx = (dx + dh.to_dtype(acc)?.reshape(g.view.as_slice())?)?;
    }
    let sum_dims = g.param_sum_dims();
    let np = spec.params();
    let pdtype = ins.first_param().map_or(dtype, |p| p.dtype());
    let dweight = affine
        .weight
        .then(|| {
            sum_keepdim(&dya.mul(&n.xhat)?, &sum_dims)?
                .reshape(np)?
                .to_dtype(pdtype)
        })
        .transpose()?;
    let dbias = affine
        .bias
        .then(|| sum_keepdim(&dya, &sum_dims)?.reshape(np)?.to_dtype(pdtype))
        .transpose()?;
    Ok(Grads {
        dx: dx.to_dtype(dtype)?.reshape(ins.x.shape())?,
        dweight,
        dbias,
    })
}
