//! InstanceNorm: GroupNorm with one group per channel, under its own name and
//! PyTorch's rule that an instance needs more than one element.

use super::{NormGrads, Tangents};
use candle_core::{bail, Result, Tensor};

const OP: &str = "instance_norm";

/// InstanceNorm over channels-first input `[B, C, *spatial]`: each (sample, channel) is
/// normalized over its `prod(spatial)` elements, then scaled and shifted per channel, as
/// `torch.nn.functional.instance_norm` with instance statistics (no running
/// statistics). It runs on the GroupNorm kernels with C groups, fused forward and
/// backward on every device, in f32, f16, bf16 (and f64 on the CPU), statistics in f32.
///
/// `weight` and `bias`, when given, have shape `[C]`, `x`'s device and `x`'s dtype (or
/// both f32 for f16 and bf16 `x`). The op
/// is differentiable: `Tensor::backward` yields gradients for `x`, `weight` and `bias`.
///
/// # Errors
/// `x` of rank < 2, an unsupported dtype, a `weight`/`bias` of another shape, dtype or
/// device, an `eps` that is negative or not finite, and, as in PyTorch, a
/// `prod(spatial)` of exactly 1 (a rank-2 `x` included): one element per instance
/// normalizes to zero.
pub fn instance_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    super::forward(spec(x, weight, bias, eps)?, x, weight, bias)
}

/// The backward of [`instance_norm`] on its own, outside autograd: given the upstream
/// gradient `dy` (shape, dtype and device of `x`), the gradients of `x`, of `weight`
/// when given and of `bias` when given, from the fused kernels `Tensor::backward` runs.
///
/// # Errors
/// Those of [`instance_norm`], and a `dy` whose shape, dtype or device differ from
/// `x`'s.
pub fn instance_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    super::backward(spec(x, weight, bias, eps)?, x, weight, bias, dy, None)
}

/// The forward-mode derivative of [`instance_norm`]: `(y, ẏ)` along the tangents `t`
/// of x, the weight and the bias, with the means of [`crate::layer_norm_jvp`]'s formula
/// over each (sample, channel).
///
/// # Errors
/// Those of [`instance_norm`] and of [`crate::layer_norm_jvp`].
pub fn instance_norm_jvp(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    super::jvp(spec(x, weight, bias, eps)?, x, (weight, bias), None, t)
}

fn spec(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<crate::spec::Spec> {
    let channels = x.dims().get(1).copied().unwrap_or(0);
    let spec = super::group::checked(OP, x, channels.max(1), weight, bias, eps)?;
    if x.dims()[2..].iter().product::<usize>() == 1 {
        bail!(
            "{OP}: expected more than 1 spatial element per instance, got x of shape {:?}",
            x.dims()
        )
    }
    Ok(spec)
}
