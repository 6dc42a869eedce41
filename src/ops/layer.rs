//! LayerNorm, over the last dimension and over the channels of channels-first input:
//! the public functions and their checks.

use super::{NormGrads, Tangents};
use crate::check;
use crate::spec::{Kind, Spec};
use candle_core::{Result, Tensor};

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`,
/// with the biased variance, as `torch.nn.functional.layer_norm`.
///
/// `x` has any rank >= 1 and a float dtype (f32, f16, bf16, f64); `weight` and `bias`,
/// when given, have shape `[N]` (N is the last dimension of `x`), `x`'s device and `x`'s
/// dtype (or both f32 for f16 and bf16 `x`: mixed precision, dγ and dβ then f32).
/// Statistics are accumulated in f32 (f64 for f64) and the output, of `x`'s shape and
/// dtype, is rounded once. The op is differentiable: `Tensor::backward`
/// yields gradients for `x`, `weight` and `bias` through one fused backward.
///
/// # Errors
/// A rank-0 `x`, an unsupported dtype, a `weight`/`bias` of another shape, dtype or
/// device, or an `eps` that is negative or not finite.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    super::forward(checked(x, weight, bias, eps, false)?, x, weight, bias)
}

/// The backward of [`layer_norm`] on its own, outside autograd: given the upstream
/// gradient `dy` (shape, dtype and device of `x`), the gradients of `x`, of `weight`
/// when given and of `bias` when given, from the same fused kernel that
/// `Tensor::backward` runs. Statistics are recomputed from `x`. For training loops
/// that do their own backward pass, and for benchmarking the backward alone.
///
/// # Errors
/// Those of [`layer_norm`], and a `dy` whose shape, dtype or device differ from `x`'s.
pub fn layer_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    super::backward(checked(x, weight, bias, eps, false)?, x, weight, bias, dy, None)
}

/// The forward-mode derivative (Jacobian-vector product) of [`layer_norm`]: `(y, ẏ)`,
/// y as [`layer_norm`] gives it and ẏ its derivative along the tangents `t` of x, the
/// weight and the bias. With x̂ = (x − mean)·rstd and means over each row,
/// ẋ̂ = rstd·(ẋ − mean(ẋ) − x̂·mean(ẋ·x̂)) and ẏ = ẋ̂·γ + x̂·γ̇ + β̇. ẏ is computed as
/// candle tensor ops on every device (in f32, f64 for f64) and rounded to x's dtype
/// once; the other norms' `*_jvp` are the same with their own statistics.
///
/// # Errors
/// Those of [`layer_norm`], a tangent whose shape, dtype or device differ from its
/// input's, and a tangent of a weight or a bias the call does not have.
pub fn layer_norm_jvp(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    super::jvp(checked(x, weight, bias, eps, false)?, x, (weight, bias), None, t)
}

/// LayerNorm over the channels of channels-first input `[B, C, *spatial]`: each of the
/// B·prod(spatial) positions is normalized over its C channels, then scaled and shifted
/// per channel — ConvNeXt's `LayerNorm(data_format="channels_first")` and SAM's
/// `LayerNorm2d`, and [`layer_norm`] of the input moved to `[B, *spatial, C]`, without
/// moving it.
///
/// `x` has rank >= 2 (zero or more spatial dimensions) and a float dtype (f32, f16,
/// bf16, f64); `weight` and `bias`, when given, have shape `[C]`, `x`'s device and
/// `x`'s dtype (or both f32 for f16 and bf16 `x`). Statistics are accumulated in f32
/// (f64 for f64); the op is differentiable through one fused backward, as
/// [`layer_norm`] is. CUDA has no kernels for it: on a GPU it runs the generic backend.
///
/// # Errors
/// `x` of rank < 2, an unsupported dtype, a `weight`/`bias` of another shape, dtype or
/// device, or an `eps` that is negative or not finite.
pub fn layer_norm_channels_first(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    super::forward(checked_first(x, weight, bias, eps)?, x, weight, bias)
}

/// The backward of [`layer_norm_channels_first`] on its own, outside autograd: given
/// `dy` (shape, dtype and device of `x`), the gradients of `x`, of `weight` when given
/// and of `bias` when given, from the fused backward `Tensor::backward` runs.
///
/// # Errors
/// Those of [`layer_norm_channels_first`], and a `dy` whose shape, dtype or device
/// differ from `x`'s.
pub fn layer_norm_channels_first_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    super::backward(checked_first(x, weight, bias, eps)?, x, weight, bias, dy, None)
}

/// The forward-mode derivative of [`layer_norm_channels_first`], as [`layer_norm_jvp`]
/// with the means over each position's channels.
///
/// # Errors
/// Those of [`layer_norm_channels_first`] and of [`layer_norm_jvp`].
pub fn layer_norm_channels_first_jvp(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    super::jvp(checked_first(x, weight, bias, eps)?, x, (weight, bias), None, t)
}

/// The checked [`Spec`] of a channels-first LayerNorm of `x`.
fn checked_first(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Spec> {
    let op = Kind::LayerFirst.name();
    check::input(op, x, 2, "[B, C, *spatial]")?;
    check::eps(op, eps)?;
    check::affine(op, x, (weight, bias), x.dims()[1], "the channel dimension")?;
    Ok(Spec::layer_first(x.dims(), eps))
}

/// The checked [`Spec`] of a LayerNorm of `x`, of `x + residual` when `residual`
/// (the errors then name `add_layer_norm`).
pub(super) fn checked(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    residual: bool,
) -> Result<Spec> {
    let spec = Spec::last_dim(Kind::Layer, x.dims(), eps);
    let spec = if residual { spec.with_residual() } else { spec };
    let op = spec.name();
    super::check_last_dim(op, x, eps)?;
    check::affine(op, x, (weight, bias), x.dims()[x.rank() - 1], "the last dimension")?;
    Ok(spec)
}
