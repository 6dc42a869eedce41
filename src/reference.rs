//! Slow reference implementations, composed from candle tensor ops.
//!
//! They wrap candle-nn's own composed norms (`candle_nn::ops::layer_norm_slow`,
//! `candle_nn::ops::rms_norm_slow`, `candle_nn::GroupNorm`, the latter also on a
//! channels-last input moved to channels-first and back) behind the signatures of
//! this crate's fused ops, filling a missing weight with ones and a missing bias with
//! zeros; BatchNorm is composed here, as candle-nn's `BatchNorm` computes it, with its
//! statistics returned. They are differentiable through candle autograd, which makes them the
//! yardstick of this crate's tests (forward and backward) and the "composed autograd"
//! baseline of its benchmarks. They are not meant for production use: each makes
//! several passes over memory and materializes intermediates.

use candle_core::{DType, Module, Result, Tensor, D};

fn or_const(p: Option<&Tensor>, n: usize, like: &Tensor, v: f64) -> Result<Tensor> {
    match p {
        Some(p) => Ok(p.clone()),
        None => Tensor::full(v, n, like.device())?.to_dtype(like.dtype()),
    }
}

/// LayerNorm over the last dimension through `candle_nn::ops::layer_norm_slow`.
///
/// # Errors
/// Whatever the composed ops return for mismatched shapes or dtypes.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    candle_nn::ops::layer_norm_slow(x, &or_const(weight, n, x, 1.)?, &or_const(bias, n, x, 0.)?, eps as f32)
}

/// RMSNorm over the last dimension through `candle_nn::ops::rms_norm_slow`.
///
/// # Errors
/// Whatever the composed ops return for mismatched shapes or dtypes.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    candle_nn::ops::rms_norm_slow(x, &or_const(weight, n, x, 1.)?, eps as f32)
}

/// GroupNorm over `[B, C, *spatial]` through `candle_nn::GroupNorm` (an input with no
/// spatial dimension gets a unit one, which candle-nn requires).
///
/// # Errors
/// Whatever candle-nn returns for mismatched shapes, dtypes or group counts.
pub fn group_norm(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let gn = candle_nn::GroupNorm::new(
        or_const(weight, c, x, 1.)?,
        or_const(bias, c, x, 0.)?,
        c,
        num_groups,
        eps,
    )?;
    if x.rank() == 2 {
        gn.forward(&x.unsqueeze(2)?)?.squeeze(2)
    } else {
        gn.forward(x)
    }
}

/// GroupNorm over channels-last `[B, *spatial, C]`: the input moved to
/// `[B, C, *spatial]` (a copy), [`group_norm`], and the result moved back (another).
///
/// # Errors
/// `x` of rank < 2, or what [`group_norm`] returns.
pub fn group_norm_channels_last(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        candle_core::bail!(
            "group_norm_channels_last: x must have rank >= 2, got shape {:?}",
            x.dims()
        )
    }
    let mut to_first: Vec<usize> = (0..rank - 1).collect();
    to_first.insert(1, rank - 1);
    let y = group_norm(&x.permute(to_first)?.contiguous()?, num_groups, weight, bias, eps)?;
    let mut to_last: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
    to_last.push(1);
    y.permute(to_last)?.contiguous()
}

/// x as `[C, B·prod(spatial)]`, in f32 for f16/bf16 (candle-nn's BatchNorm computes in
/// f32 too), and the shape to view a `[C]` tensor as to broadcast it against x.
fn channels_first(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dtype = match x.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        dt => dt,
    };
    let per_channel = x
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 1 { d } else { 1 })
        .collect();
    Ok((x.to_dtype(dtype)?.transpose(0, 1)?.flatten_from(1)?, per_channel))
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` with per-channel `[C]` statistics.
fn normalize_channels(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (_, shape) = channels_first(x)?;
    let c = x.dim(1)?;
    let f32_like = |t: &Tensor| t.to_dtype(mean.dtype())?.reshape(shape.as_slice());
    let xf = x.to_dtype(mean.dtype())?;
    let y = xf
        .broadcast_sub(&f32_like(mean)?)?
        .broadcast_div(&(f32_like(var)? + eps)?.sqrt()?)?
        .broadcast_mul(&f32_like(&or_const(weight, c, x, 1.)?)?)?
        .broadcast_add(&f32_like(&or_const(bias, c, x, 0.)?)?)?;
    y.to_dtype(x.dtype())
}

/// BatchNorm in training mode over `[B, C, *spatial]`, composed: `(y, mean, var)` with
/// each channel's batch mean and biased variance (in x's dtype, detached), computed in
/// f32 for f16/bf16.
///
/// # Errors
/// Whatever the composed ops return for mismatched shapes or dtypes.
pub fn batch_norm_train(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (xc, _) = channels_first(x)?;
    let mean = xc.mean_keepdim(1)?;
    let var = xc.broadcast_sub(&mean)?.sqr()?.mean(1)?;
    let mean = mean.flatten_all()?;
    let y = normalize_channels(x, &mean, &var, weight, bias, eps)?;
    let stat = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(x.dtype())?.detach()) };
    Ok((y, stat(mean)?, stat(var)?))
}

/// BatchNorm in eval mode, composed: x normalized per channel with the given running
/// statistics (constants for autograd), computed in f32 for f16/bf16.
///
/// # Errors
/// Whatever the composed ops return for mismatched shapes or dtypes.
pub fn batch_norm_eval(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let (xc, _) = channels_first(x)?;
    let stat = |t: &Tensor| t.detach().to_dtype(xc.dtype());
    normalize_channels(x, &stat(running_mean)?, &stat(running_var)?, weight, bias, eps)
}
