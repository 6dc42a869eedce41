//! RMSNorm: input checks and the [`Spec`](crate::op::Spec) of the op.

use crate::layer_norm::row_spec;
use crate::op::{self, Kind};
use candle_core::{Result, Tensor};

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`, as
/// `torch.nn.functional.rms_norm`.
///
/// `x` has any rank >= 1 and a float dtype (f32, f16, bf16, f64); `weight`, when given,
/// has shape `[N]` (N is the last dimension of `x`) and `x`'s dtype and device.
/// Statistics are accumulated in f32 (f64 for f64) and the output, of `x`'s shape and
/// dtype, is rounded once. The op is differentiable: `Tensor::backward` yields
/// gradients for `x` and `weight` through one fused backward.
///
/// # Errors
/// A rank-0 `x`, an unsupported dtype, a `weight` of another shape, dtype or device, or
/// an `eps` that is negative or not finite.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let spec = row_spec(Kind::Rms, x, eps)?;
    op::check_param(Kind::Rms.name(), x, weight, "weight", spec.len, "the last dimension")?;
    op::apply(spec, x, weight, None)
}
