//! Slow reference implementations, composed from candle tensor ops.
//!
//! They wrap candle-nn's own composed norms (`candle_nn::ops::layer_norm_slow`,
//! `candle_nn::ops::rms_norm_slow`, `candle_nn::GroupNorm`) behind the signatures of
//! this crate's fused ops, filling a missing weight with ones and a missing bias with
//! zeros. They are differentiable through candle autograd, which makes them the
//! yardstick of this crate's tests (forward and backward) and the "composed autograd"
//! baseline of its benchmarks. They are not meant for production use: each makes
//! several passes over memory and materializes intermediates.

use candle_core::{Module, Result, Tensor, D};

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
