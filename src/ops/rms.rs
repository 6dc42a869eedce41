//! RMSNorm: the public functions and their checks.

use super::{NormGrads, Tangents};
use crate::check;
use crate::spec::{Kind, Spec};
use candle_core::{Result, Tensor};

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`, as
/// `torch.nn.functional.rms_norm`.
///
/// `x` has any rank >= 1 and a float dtype (f32, f16, bf16, f64); `weight`, when given,
/// has shape `[N]` (N is the last dimension of `x`), `x`'s device and `x`'s dtype (or
/// f32 for f16 and bf16 `x`: mixed precision, dγ then f32).
/// Statistics are accumulated in f32 (f64 for f64) and the output, of `x`'s shape and
/// dtype, is rounded once. The op is differentiable: `Tensor::backward` yields
/// gradients for `x` and `weight` through one fused backward.
///
/// # Errors
/// A rank-0 `x`, an unsupported dtype, a `weight` of another shape, dtype or device, or
/// an `eps` that is negative or not finite.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    super::forward(checked(x, weight, eps, false)?, x, weight, None)
}

/// The backward of [`rms_norm`] on its own, outside autograd: given the upstream
/// gradient `dy` (shape, dtype and device of `x`), the gradients of `x` and of `weight`
/// when given (`dbias` is `None`), from the same fused kernel that `Tensor::backward`
/// runs. For training loops that do their own backward pass, and for benchmarking the
/// backward alone.
///
/// # Errors
/// Those of [`rms_norm`], and a `dy` whose shape, dtype or device differ from `x`'s.
pub fn rms_norm_backward(x: &Tensor, weight: Option<&Tensor>, dy: &Tensor, eps: f64) -> Result<NormGrads> {
    super::backward(checked(x, weight, eps, false)?, x, weight, None, dy, None)
}

/// The forward-mode derivative of [`rms_norm`]: `(y, ẏ)` along the tangents `t` of x
/// and the weight (RMSNorm has no bias: a bias tangent is an error). With x̂ = x·rstd,
/// ẋ̂ = rstd·(ẋ − x̂·mean(ẋ·x̂)) and ẏ = ẋ̂·γ + x̂·γ̇, as [`crate::layer_norm_jvp`]
/// computes it.
///
/// # Errors
/// Those of [`rms_norm`] and of [`crate::layer_norm_jvp`].
pub fn rms_norm_jvp(x: &Tensor, weight: Option<&Tensor>, eps: f64, t: Tangents) -> Result<(Tensor, Tensor)> {
    super::jvp(checked(x, weight, eps, false)?, x, (weight, None), None, t)
}

/// The checked [`Spec`] of an RMSNorm of `x`, of `x + residual` when `residual`
/// (the errors then name `add_rms_norm`).
pub(super) fn checked(x: &Tensor, weight: Option<&Tensor>, eps: f64, residual: bool) -> Result<Spec> {
    let spec = Spec::last_dim(Kind::Rms, x.dims(), eps);
    let spec = if residual { spec.with_residual() } else { spec };
    let op = spec.name();
    super::check_last_dim(op, x, eps)?;
    check::param(op, x, weight, "weight", x.dims()[x.rank() - 1], "the last dimension")?;
    Ok(spec)
}
