//! GroupNorm: input checks and the [`Spec`](crate::op::Spec) of the op.

use crate::op::{self, Kind, NormGrads, Spec};
use candle_core::{bail, Result, Tensor};

/// GroupNorm over channels-first input `[B, C, *spatial]`: the C channels are split
/// into `num_groups` groups and each (sample, group) is normalized over its
/// `C / num_groups · prod(spatial)` elements, then scaled and shifted per channel, as
/// `torch.nn.functional.group_norm`.
///
/// `x` has rank >= 2 (zero or more spatial dimensions) and a float dtype (f32, f16,
/// bf16, f64); `weight` and `bias`, when given, have shape `[C]` and `x`'s dtype and
/// device. Statistics are accumulated in f32 (f64 for f64) and the output, of `x`'s
/// shape and dtype, is rounded once. The op is differentiable: `Tensor::backward`
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
    op::apply(spec(x, num_groups, weight, bias, eps)?, x, weight, bias)
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
    op::apply_backward(spec(x, num_groups, weight, bias, eps)?, x, weight, bias, dy)
}

fn spec(x: &Tensor, num_groups: usize, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Spec> {
    let op = Kind::Group.name();
    op::check_input(op, x, 2, "[B, C, *spatial]")?;
    op::check_eps(op, eps)?;
    let dims = x.dims();
    let (b, c) = (dims[0], dims[1]);
    if num_groups == 0 || !c.is_multiple_of(num_groups) {
        bail!("{op}: num_groups ({num_groups}) must be > 0 and divide the {c} channels of x, whose shape is {dims:?}")
    }
    op::check_param(op, x, weight, "weight", c, "the channel dimension")?;
    op::check_param(op, x, bias, "bias", c, "the channel dimension")?;
    let inner: usize = dims[2..].iter().product();
    let params_per_row = c / num_groups;
    Ok(Spec {
        kind: Kind::Group,
        rows: b * num_groups,
        len: params_per_row * inner,
        inner,
        params_per_row,
        groups: num_groups,
        eps,
    })
}
