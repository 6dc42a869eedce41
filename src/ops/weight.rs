//! The weight-side norms: norms of a layer's weight rather than of its activations.
//! Weight standardization runs on the row kernels; weight normalization is composed
//! from candle ops.

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

/// Weight normalization (Salimans and Kingma 2016), as PyTorch's
/// `torch._weight_norm(v, g, dim)`: `w = g · v / ‖v‖`, the 2-norm taken over every axis
/// of `v` but `dim` (one norm per slice along `dim`; `None`: one norm of all of `v`).
/// `g` has `v`'s shape with every axis but `dim` of size 1 (PyTorch's `weight_g`, e.g.
/// `[out, 1]` for a `Linear` weight with `dim = Some(0)`), or one element for `None`.
/// Composed from candle ops (weights are small), so it runs on any device and is
/// differentiable in `v` and `g`. A `v` slice of zeros gives NaN, as in PyTorch.
///
/// # Errors
/// `v` of rank 0 or an unsupported dtype, `dim` out of range, or a `g` of another shape,
/// dtype or device.
pub fn weight_norm(v: &Tensor, g: &Tensor, dim: Option<usize>) -> Result<Tensor> {
    let op = "weight_norm";
    check::input(op, v, 1, "a weight")?;
    if let Some(d) = dim.filter(|&d| d >= v.rank()) {
        bail!("{op}: dim {d} is out of range for v of shape {:?}", v.dims())
    }
    let keep: Vec<usize> = (0..v.rank())
        .map(|a| if Some(a) == dim { v.dims()[a] } else { 1 })
        .collect();
    let g_ok = g.dims() == keep || (dim.is_none() && g.elem_count() == 1);
    if !g_ok {
        bail!(
            "{op}: g has shape {:?}, expected {keep:?} for v of shape {:?} and dim {dim:?}",
            g.dims(),
            v.dims()
        )
    }
    check::like(op, g, "g", v, "v")?;
    let axes: Vec<usize> = (0..v.rank()).filter(|&a| Some(a) != dim).collect();
    let norm = v.sqr()?.sum_keepdim(axes)?.sqrt()?;
    v.broadcast_mul(&g.reshape(norm.shape())?.broadcast_div(&norm)?)
}
