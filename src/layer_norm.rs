//! LayerNorm: input checks and the [`Spec`] of the op.

use crate::op::{self, Kind, NormGrads, Spec};
use candle_core::{Result, Tensor};

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`,
/// with the biased variance, as `torch.nn.functional.layer_norm`.
///
/// `x` has any rank >= 1 and a float dtype (f32, f16, bf16, f64); `weight` and `bias`,
/// when given, have shape `[N]` (N is the last dimension of `x`) and `x`'s dtype and
/// device. Statistics are accumulated in f32 (f64 for f64) and the output, of `x`'s
/// shape and dtype, is rounded once. The op is differentiable: `Tensor::backward`
/// yields gradients for `x`, `weight` and `bias` through one fused backward.
///
/// # Errors
/// A rank-0 `x`, an unsupported dtype, a `weight`/`bias` of another shape, dtype or
/// device, or an `eps` that is negative or not finite.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    op::apply(spec(x, weight, bias, eps)?, x, weight, bias)
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
    op::apply_backward(spec(x, weight, bias, eps)?, x, weight, bias, dy)
}

fn spec(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Spec> {
    let op = Kind::Layer.name();
    let spec = row_spec(Kind::Layer, x, eps)?;
    op::check_param(op, x, weight, "weight", spec.len, "the last dimension")?;
    op::check_param(op, x, bias, "bias", spec.len, "the last dimension")?;
    Ok(spec)
}

/// Checks `x` and `eps` for a norm over the last dimension and returns its [`Spec`].
pub(crate) fn row_spec(kind: Kind, x: &Tensor, eps: f64) -> Result<Spec> {
    let op = kind.name();
    op::check_input(op, x, 1, "the last dimension is normalized")?;
    op::check_eps(op, eps)?;
    let (rows, len) = x
        .dims()
        .split_last()
        .map(|(&n, rest)| (rest.iter().product(), n))
        .unwrap_or((0, 0));
    Ok(Spec {
        kind,
        rows,
        len,
        inner: 1,
        params_per_row: len,
        groups: 1,
        eps,
    })
}
