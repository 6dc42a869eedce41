//! The fused residual add + norm of pre-norm transformer blocks: `h = x + residual`,
//! `y = norm(h)`, both returned, in one pass over memory.

use super::{layer, rms, AddNormGrads, NormGrads};
use candle_core::{Result, Tensor};

/// `h = x + residual` and `y = layer_norm(h, weight, bias, eps)` in one fused op,
/// returning `(y, h)`: the residual stream of a pre-norm transformer block and its
/// normalized input.
///
/// h is rounded to the input dtype, exactly what `(x + residual)?` gives, and y is
/// [`layer_norm`](crate::layer_norm) of that rounded h, bit for bit. One read of x and
/// residual and one write of y and h, where the unfused pair also writes h and reads it
/// back. `x` and `residual` have the same shape, dtype and device; `weight`, `bias` and
/// `eps` are as for [`layer_norm`](crate::layer_norm). The op is differentiable
/// through both outputs: gradients reach x, residual, weight and bias whether y, h or
/// both are used, through one fused backward.
///
/// # Errors
/// Those of [`layer_norm`](crate::layer_norm), and a `residual` whose shape, dtype or
/// device differ from `x`'s.
pub fn add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let spec = layer::checked(x, weight, bias, eps, true)?;
    super::forward_add(spec, x, residual, weight, bias)
}

/// `h = x + residual` and `y = rms_norm(h, weight, eps)` in one fused op, returning
/// `(y, h)`; as [`add_layer_norm`], with [`rms_norm`](crate::rms_norm) in place of
/// LayerNorm.
///
/// # Errors
/// Those of [`rms_norm`](crate::rms_norm), and a `residual` whose shape, dtype or
/// device differ from `x`'s.
pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: Option<&Tensor>, eps: f64) -> Result<(Tensor, Tensor)> {
    let spec = rms::checked(x, weight, eps, true)?;
    super::forward_add(spec, x, residual, weight, None)
}

/// The backward of [`add_layer_norm`] on its own, outside autograd, from the fused
/// kernel that `Tensor::backward` runs: given `h` (the forward's second output), the
/// gradient `dy` of y and the gradient `dh` reaching h directly (`None` when h is not
/// used downstream), the gradients of x, residual (both
/// `dh + layer_norm_backward(h, dy)`), weight and bias.
///
/// # Errors
/// Those of [`add_layer_norm`] for `h`, and a `dy` or `dh` whose shape, dtype or
/// device differ from `h`'s.
pub fn add_layer_norm_backward(
    h: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    dh: Option<&Tensor>,
    eps: f64,
) -> Result<AddNormGrads> {
    let spec = layer::checked(h, weight, bias, eps, true)?;
    Ok(both(super::backward(spec, h, weight, bias, dy, dh)?))
}

/// The backward of [`add_rms_norm`] on its own, as [`add_layer_norm_backward`]
/// (`dbias` is `None`).
///
/// # Errors
/// Those of [`add_rms_norm`] for `h`, and a `dy` or `dh` whose shape, dtype or device
/// differ from `h`'s.
pub fn add_rms_norm_backward(
    h: &Tensor,
    weight: Option<&Tensor>,
    dy: &Tensor,
    dh: Option<&Tensor>,
    eps: f64,
) -> Result<AddNormGrads> {
    let spec = rms::checked(h, weight, eps, true)?;
    Ok(both(super::backward(spec, h, weight, None, dy, dh)?))
}

/// The norm's gradients as those of the add's two inputs.
pub(super) fn both(g: NormGrads) -> AddNormGrads {
    AddNormGrads {
        dresidual: g.dx.clone(),
        dx: g.dx,
        dweight: g.dweight,
        dbias: g.dbias,
    }
}
