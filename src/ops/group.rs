//! GroupNorm, channels-first and channels-last: the public functions and their checks.

use super::{NormGrads, Tangents};
use crate::check;
use crate::spec::{Kind, Spec};
use candle_core::{Result, Tensor};

/// GroupNorm over channels-first input `[B, C, *spatial]`: the C channels are split
/// into `num_groups` groups and each (sample, group) is normalized over its
/// `C / num_groups · prod(spatial)` elements, then scaled and shifted per channel, as
/// `torch.nn.functional.group_norm`.
///
/// `x` has rank >= 2 (zero or more spatial dimensions) and a float dtype (f32, f16,
/// bf16, f64); `weight` and `bias`, when given, have shape `[C]`, `x`'s device and
/// `x`'s dtype (or both f32 for f16 and bf16 `x`: mixed precision). Statistics are
/// accumulated in f32 (f64 for f64) and the output, of `x`'s shape and dtype, is
/// rounded once. The op is differentiable: `Tensor::backward`
/// yields gradients for `x`, `weight` and `bias` through one fused backward.
/// InstanceNorm is `num_groups = C`.
///
/// # Errors
/// `x` of rank < 2, an unsupported dtype, `num_groups` of 0 or not dividing C, a
/// `weight`/`bias` of another shape, dtype or device, or an `eps` that is negative or
/// not finite.
pub fn group_norm(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    super::forward(
        checked(Kind::Group.name(), x, num_groups, weight, bias, eps)?,
        x,
        weight,
        bias,
    )
}

/// GroupNorm over channels-last input `[B, *spatial, C]` (the layout of NHWC
/// convolutions and of transformer-style vision blocks): the same statistics and
/// output as [`group_norm`] of the input moved to `[B, C, *spatial]`, without moving
/// it. Each (sample, group) is normalized over its `C / num_groups · prod(spatial)`
/// elements, then scaled and shifted per channel (the last dimension).
///
/// `x` has rank >= 2 (`[B, C]` has no spatial dimension) and a float dtype (f32,
/// f16, bf16, f64); `weight` and `bias`, when given, have shape `[C]`, `x`'s device
/// and `x`'s dtype (or both f32 for f16 and bf16 `x`). Statistics are accumulated in f32 (f64 for f64); the op is
/// differentiable through one fused backward, as [`group_norm`] is.
///
/// # Errors
/// As [`group_norm`], with C the last dimension of `x`.
pub fn group_norm_channels_last(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    super::forward(
        checked_last(Kind::GroupLast.name(), x, num_groups, weight, bias, eps)?,
        x,
        weight,
        bias,
    )
}

/// The backward of [`group_norm_channels_last`] on its own, outside autograd: given
/// `dy` (shape, dtype and device of `x`), the gradients of `x`, of `weight` when given
/// and of `bias` when given, from the fused kernels `Tensor::backward` runs.
///
/// # Errors
/// Those of [`group_norm_channels_last`], and a `dy` whose shape, dtype or device
/// differ from `x`'s.
pub fn group_norm_channels_last_backward(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    super::backward(
        checked_last(Kind::GroupLast.name(), x, num_groups, weight, bias, eps)?,
        x,
        weight,
        bias,
        dy,
        None,
    )
}

/// The backward of [`group_norm`] on its own, outside autograd: given the upstream
/// gradient `dy` (shape, dtype and device of `x`), the gradients of `x`, of `weight`
/// when given and of `bias` when given, from the same fused kernels that
/// `Tensor::backward` runs. For training loops that do their own backward pass, and
/// for benchmarking the backward alone.
///
/// # Errors
/// Those of [`group_norm`], and a `dy` whose shape, dtype or device differ from `x`'s.
pub fn group_norm_backward(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    super::backward(
        checked(Kind::Group.name(), x, num_groups, weight, bias, eps)?,
        x,
        weight,
        bias,
        dy,
        None,
    )
}

/// The forward-mode derivative of [`group_norm`]: `(y, ẏ)` along the tangents `t` of x,
/// the weight and the bias, with the means of [`crate::layer_norm_jvp`]'s formula over
/// each (sample, group).
///
/// # Errors
/// Those of [`group_norm`] and of [`crate::layer_norm_jvp`].
pub fn group_norm_jvp(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    let spec = checked(Kind::Group.name(), x, num_groups, weight, bias, eps)?;
    super::jvp(spec, x, (weight, bias), None, t)
}

/// The forward-mode derivative of [`group_norm_channels_last`], as
/// [`group_norm_jvp`].
///
/// # Errors
/// Those of [`group_norm_channels_last`] and of [`crate::layer_norm_jvp`].
pub fn group_norm_channels_last_jvp(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    super::jvp(
        checked_last(Kind::GroupLast.name(), x, num_groups, weight, bias, eps)?,
        x,
        (weight, bias),
        None,
        t,
    )
}

/// GroupNorm followed by SiLU, `silu(group_norm(x, ...))` in one pass: z = x̂·γ + β is
/// never stored, and y = z·σ(z) is rounded once (the block that opens every residual
/// block of a diffusion UNet or VAE). Inputs, dtypes and statistics as [`group_norm`];
/// the op is differentiable, its fused backward applying SiLU's derivative to dy as it
/// recomputes z from x.
///
/// Runs fused on the CPU and, with the `cuda` feature, in GroupNorm's CUDA kernels
/// (SiLU applied in the forward's and the backward's passes); elsewhere as composed
/// candle ops (the GroupNorm statistics, then candle's `silu`), with the same
/// semantics.
///
/// # Errors
/// Those of [`group_norm`], naming `group_norm_silu`.
pub fn group_norm_silu(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let spec = checked(SILU, x, num_groups, weight, bias, eps)?.with_silu(SILU);
    super::forward(spec, x, weight, bias)
}

/// The backward of [`group_norm_silu`] on its own, outside autograd, as
/// [`group_norm_backward`] is for [`group_norm`].
///
/// # Errors
/// Those of [`group_norm_silu`], and a `dy` whose shape, dtype or device differ from
/// `x`'s.
pub fn group_norm_silu_backward(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    let spec = checked(SILU, x, num_groups, weight, bias, eps)?.with_silu(SILU);
    super::backward(spec, x, weight, bias, dy, None)
}

/// [`group_norm_silu`] over channels-last input `[B, *spatial, C]`, as
/// [`group_norm_channels_last`] is [`group_norm`] over it.
///
/// # Errors
/// Those of [`group_norm_channels_last`], naming `group_norm_channels_last_silu`.
pub fn group_norm_channels_last_silu(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let spec = checked_last(SILU_LAST, x, num_groups, weight, bias, eps)?.with_silu(SILU_LAST);
    super::forward(spec, x, weight, bias)
}

/// The backward of [`group_norm_channels_last_silu`] on its own, outside autograd.
///
/// # Errors
/// Those of [`group_norm_channels_last_silu`], and a `dy` whose shape, dtype or device
/// differ from `x`'s.
pub fn group_norm_channels_last_silu_backward(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    let spec = checked_last(SILU_LAST, x, num_groups, weight, bias, eps)?.with_silu(SILU_LAST);
    super::backward(spec, x, weight, bias, dy, None)
}

/// The public names of GroupNorm + SiLU, channels-first and channels-last.
const SILU: &str = "group_norm_silu";
const SILU_LAST: &str = "group_norm_channels_last_silu";

/// The checked [`Spec`] of a GroupNorm of `x`, its errors naming `op`.
pub(super) fn checked(
    op: &'static str,
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Spec> {
    check::input(op, x, 2, "[B, C, *spatial]")?;
    check_params(op, x, x.dims()[1], num_groups, (weight, bias), eps)?;
    Ok(Spec::group(x.dims(), num_groups, eps).named(op))
}

/// The checked [`Spec`] of a channels-last GroupNorm of `x`, its errors naming `op`.
fn checked_last(
    op: &'static str,
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Spec> {
    check::input(op, x, 2, "[B, *spatial, C]")?;
    check_params(op, x, x.dims()[x.rank() - 1], num_groups, (weight, bias), eps)?;
    Ok(Spec::group_last(x.dims(), num_groups, eps).named(op))
}

/// Checks eps, the groups of the `c` channels and the per-channel weight and bias.
fn check_params(
    op: &str,
    x: &Tensor,
    c: usize,
    num_groups: usize,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    eps: f64,
) -> Result<()> {
    check::eps(op, eps)?;
    check::groups(op, x, num_groups, c)?;
    check::affine(op, x, (weight, bias), c, "the channel dimension")
}
