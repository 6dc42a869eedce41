//! Weight standardization: a norm of a layer's weight rather than of its activations,
//! run on the row kernels.

use crate::check;
use candle_core::{bail, Result, Tensor};

/// Weight standardization (Qiao et al. 2019): each output unit of a weight `w` of shape
/// `[out, *in]` (a `Linear` weight `[out, in]`, a `Conv2d` weight `[out, in/groups, kh,
/// kw]`) standardized over all its other axes, `(w − mean) / sqrt(var + eps)`, with the
/// biased variance and no affine. It is LayerNorm of `w` seen as `[out, prod(in)]`, so it
/// runs on this crate's fused kernels (CPU, and CUDA with the `cuda` feature) and is
/// differentiable. Used with GroupNorm in small-batch vision models; see
/// [`nn::WsConv2d`](crate::nn::WsConv2d) for a convolution that applies it on every
/// forward.
///
/// # Errors
/// `w` of rank < 2, an unsupported dtype, or an `eps` that is negative or not finite.
pub fn weight_standardization(w: &Tensor, eps: f64) -> Result<Tensor> {
    let op = "weight_standardization";
    check::input(op, w, 2, "[out, *in]: each output unit is standardized")?;
    check::eps(op, eps)?;
    if w.dims()[1..].contains(&0) || w.dim(0)? == 0 {
        bail!("{op}: w has shape {:?}; every dimension must be non-zero", w.dims())
    }
    super::layer_norm(&w.flatten_from(1)?, None, None, eps)?.reshape(w.shape())
}
