//! `normalize`: mean and variance over any set of axes, on the fused row kernels once
//! the axes are moved last.

use crate::check;
use candle_core::{bail, DType, Result, Tensor};

const OP: &str = "normalize";

/// Normalization over any set of `axes` of `x`: `(x − mean) / sqrt(var + eps) ·
/// weight + bias`, with the mean and the biased variance over the elements that share
/// every index outside `axes`. `weight` and `bias`, when given, broadcast to x's shape
/// as in PyTorch (trailing dimensions aligned) and have x's dtype (or f32 for f16 and
/// bf16 `x`) and device. [`crate::layer_norm`] is `axes = [rank − 1]` with weight and
/// bias of shape `[N]`; InstanceNorm's statistics are `axes = [2, …]`, BatchNorm's in
/// training `[0, 2, …]`, with weight and bias of shape `[C, 1, …]`.
///
/// The axes are moved last and x runs through the fused LayerNorm kernels as rows of
/// their product. A weight and a bias of the axes' shape (size 1 in every other
/// dimension) ride in the same fused op; others are applied after it, in f32 (f64 for
/// f64 x), their gradients summed in f32 too, and y is rounded to x's dtype once.
/// Differentiable in `x`, `weight` and `bias` through the same ops. The output has x's
/// shape and dtype and is contiguous.
///
/// # Errors
/// An unsupported dtype, no axis, an axis out of range or repeated, a `weight` or
/// `bias` that does not broadcast to x's shape or has another dtype or device, or an
/// `eps` that is negative or not finite.
pub fn normalize(
    x: &Tensor,
    axes: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    check::input(OP, x, 1, "the axes are normalized")?;
    check::eps(OP, eps)?;
    let (rank, dims) = (x.rank(), x.dims());
    let mut on = vec![false; rank];
    for &a in axes {
        if a >= rank || on[a] {
            bail!("{OP}: axes {axes:?} must be distinct dimensions of x, whose shape is {dims:?}")
        }
        on[a] = true;
    }
    if axes.is_empty() {
        bail!("{OP}: axes must name at least one dimension of x, whose shape is {dims:?}")
    }
    let mut params = [None, None];
    for (slot, (name, p)) in params.iter_mut().zip([("weight", weight), ("bias", bias)]) {
        let Some(p) = p else { continue };
        check::param_dtype(OP, x, p, name)?;
        if p.rank() > rank
            || p.dims()
                .iter()
                .rev()
                .zip(dims.iter().rev())
                .any(|(&a, &b)| a != 1 && a != b)
        {
            bail!(
                "{OP}: {name} of shape {:?} does not broadcast to x's shape {dims:?}",
                p.dims()
            )
        }
        // Its shape aligned with x's, leading dimensions of size 1 added.
        let mut full = vec![1; rank - p.rank()];
        full.extend_from_slice(p.dims());
        *slot = Some(p.reshape(full)?);
    }
    check::one_param_dtype(OP, &[("weight", weight), ("bias", bias)])?;

    // The other dimensions in order, then the axes in order.
    let order: Vec<usize> = (0..rank)
        .filter(|&d| !on[d])
        .chain((0..rank).filter(|&d| on[d]))
        .collect();
    let mut inverse = vec![0; rank];
    for (i, &d) in order.iter().enumerate() {
        inverse[d] = i;
    }
    let moved: Vec<usize> = order.iter().map(|&d| dims[d]).collect();
    let n: usize = axes.iter().map(|&a| dims[a]).product();
    let m = moved[..rank - axes.len()].iter().product::<usize>();
    let rows = x.permute(order.as_slice())?.reshape((m, n))?;
    let back = |y: Tensor| -> Result<Tensor> { y.reshape(moved.as_slice())?.permute(inverse.as_slice())?.contiguous() };

    // Parameters of the axes' shape, constant along the other dimensions, as [N] rows of
    // the fused op. (One broadcast along an axis too would reach the op as N copies,
    // whose gradients autograd would then sum in x's dtype.)
    let along_axes = |p: &Tensor| (0..rank).all(|d| p.dims()[d] == if on[d] { dims[d] } else { 1 });
    if params.iter().flatten().all(along_axes) {
        let row = |p: &Tensor| p.permute(order.as_slice())?.contiguous()?.reshape(n);
        let [w, b] = [&params[0], &params[1]].map(|p| p.as_ref().map(row).transpose());
        let (w, b) = (w?, b?);
        return back(crate::layer_norm(&rows, w.as_ref(), b.as_ref(), eps)?);
    }
    let acc = if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut y = back(crate::layer_norm(&rows.to_dtype(acc)?, None, None, eps)?)?;
    if let Some(w) = &params[0] {
        y = y.broadcast_mul(&w.to_dtype(acc)?)?;
    }
    if let Some(b) = &params[1] {
        y = y.broadcast_add(&b.to_dtype(acc)?)?;
    }
    y.to_dtype(x.dtype())
}
