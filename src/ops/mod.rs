//! The public ops, one file per family (`add` is the fused residual add + norm), and
//! the two fused ops they share: [`NormFwd`] (the forward, whose gradient is
//! [`NormBwd`]) and [`NormBwd`] (the fused backward).
//!
//! A public op checks its inputs (`crate::check`), describes the norm as a
//! [`Spec`], and runs it through [`forward`] or [`backward`]; the fused ops pick the
//! backend (`crate::cpu`, `crate::cuda`) by device.

mod add;
mod batch;
mod group;
mod instance;
mod layer;
mod rms;
mod weight;

pub use add::{add_layer_norm, add_layer_norm_backward, add_rms_norm, add_rms_norm_backward};
pub use batch::{batch_norm, batch_norm_backward, batch_norm_eval, batch_norm_train};
pub use group::{group_norm, group_norm_backward, group_norm_channels_last, group_norm_channels_last_backward};
pub use instance::{instance_norm, instance_norm_backward};
pub use layer::{layer_norm, layer_norm_backward};
pub use rms::{rms_norm, rms_norm_backward};
pub use weight::{weight_norm, weight_standardization};

use crate::custom_op::{self, Arg, Fused};
use crate::spec::{Affine, Spec};
use crate::{check, cpu};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

/// Gradients of a norm with respect to its input and its affine parameters, as
/// returned by [`layer_norm_backward`] and the other `*_backward` functions.
#[derive(Clone, Debug)]
pub struct NormGrads {
    /// dL/dx, of `x`'s shape and dtype, contiguous.
    pub dx: Tensor,
    /// dL/dweight, when a weight was given: shape `[N]` (`[C]` for GroupNorm).
    pub dweight: Option<Tensor>,
    /// dL/dbias, when a bias was given: shape `[N]` (`[C]` for GroupNorm).
    pub dbias: Option<Tensor>,
}

/// Gradients of a fused residual add + norm with respect to its four inputs, as
/// returned by [`add_layer_norm_backward`] and [`add_rms_norm_backward`].
#[derive(Clone, Debug)]
pub struct AddNormGrads {
    /// dL/dx: dL/dh, the gradient reaching `h = x + residual` through y and directly.
    /// Of `x`'s shape and dtype, contiguous.
    pub dx: Tensor,
    /// dL/dresidual, equal to `dx` (the same tensor).
    pub dresidual: Tensor,
    /// dL/dweight, when a weight was given: shape `[N]`.
    pub dweight: Option<Tensor>,
    /// dL/dbias, when a bias was given: shape `[N]`.
    pub dbias: Option<Tensor>,
}

/// Checks `x` and `eps` of a norm over the last dimension.
fn check_last_dim(op: &str, x: &Tensor, eps: f64) -> Result<()> {
    check::input(op, x, 1, "the last dimension is normalized")?;
    check::eps(op, eps)
}

/// Contiguous copies (or the tensors themselves) of optional inputs.
fn contiguous<const K: usize>(ts: [Option<&Tensor>; K]) -> Result<[Option<Tensor>; K]> {
    let mut out = [const { None }; K];
    for (o, t) in out.iter_mut().zip(ts) {
        *o = t.map(Tensor::contiguous).transpose()?;
    }
    Ok(out)
}

/// The affine parameters a call has.
fn affine(weight: Option<&Tensor>, bias: Option<&Tensor>) -> Affine {
    Affine {
        weight: weight.is_some(),
        bias: bias.is_some(),
    }
}

/// Runs the forward (recorded for autograd) on checked inputs.
pub(crate) fn forward(spec: Spec, x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let [x, w, b] = contiguous([Some(x), weight, bias])?;
    let ins: Vec<&Tensor> = [&x, &w, &b].into_iter().flatten().collect();
    let op = NormFwd {
        spec,
        affine: affine(weight, bias),
    };
    custom_op::apply(op, &ins)
}

/// Runs the fused residual add + norm (recorded for autograd): (y, h). The residual is
/// checked here, the other inputs before. candle's custom ops take at most three
/// inputs, so a weight and a bias are packed into one (2·N elements, copied).
pub(crate) fn forward_add(
    spec: Spec,
    x: &Tensor,
    residual: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    check::same(spec.name(), residual, "residual", x, "x")?;
    let (x, r) = (x.contiguous()?, residual.contiguous()?);
    let params = packed_params(weight, bias)?;
    let ins: Vec<&Tensor> = [Some(&x), Some(&r), params.as_ref()].into_iter().flatten().collect();
    let op = NormFwd {
        spec,
        affine: affine(weight, bias),
    };
    let out = custom_op::apply(op, &ins)?;
    Ok((out.get(0)?, out.get(1)?))
}

/// Runs the fused backward on checked inputs, outside autograd: the gradients that
/// `Tensor::backward` gives for the forward with the same arguments. For the fused
/// residual add, `x` is h and `dh` the gradient reaching h directly, if any.
pub(crate) fn backward(
    spec: Spec,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    dh: Option<&Tensor>,
) -> Result<NormGrads> {
    let x_name = if spec.residual { "h" } else { "x" };
    check::same(spec.name(), dy, "dy", x, x_name)?;
    if let Some(dh) = dh {
        check::same(spec.name(), dh, "dh", x, x_name)?;
    }
    let [w] = contiguous([weight])?;
    let affine = affine(weight, bias);
    let (dx, params) = grads(spec, affine, &x.contiguous()?, w.as_ref(), dy, dh)?;
    split_params(&spec, affine, dx, &params)
}

/// dx and the packed dγ, dβ of a fused backward as [`NormGrads`].
fn split_params(spec: &Spec, affine: Affine, dx: Tensor, params: &Tensor) -> Result<NormGrads> {
    let np = spec.params();
    let dweight = affine.weight.then(|| params.narrow(0, 0, np)).transpose()?;
    let at = if affine.weight { np } else { 0 };
    let dbias = affine.bias.then(|| params.narrow(0, at, np)).transpose()?;
    Ok(NormGrads { dx, dweight, dbias })
}

/// The fused backward of contiguous x (or h) and weight: dx, and dγ then dβ (those
/// wanted) in one tensor.
fn grads(
    spec: Spec,
    affine: Affine,
    x: &Tensor,
    w: Option<&Tensor>,
    dy: &Tensor,
    dh: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (dy, [dh]) = (dy.contiguous()?, contiguous([dh])?);
    let ins: Vec<&Tensor> = [Some(x), w, Some(&dy), dh.as_ref()].into_iter().flatten().collect();
    let op = NormBwd {
        spec,
        affine,
        dh: dh.is_some(),
    };
    run_backward(&op, x, &ins)
}

/// Runs a fused backward op (outside autograd) and splits its flat output: dx, shaped
/// as `x`, and the packed dγ, dβ after it.
fn run_backward<F: Fused>(op: &F, x: &Tensor, ins: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let flat = custom_op::apply_untracked(op, ins)?;
    let n = x.elem_count();
    let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
    Ok((dx, flat.narrow(0, n, flat.elem_count() - n)?))
}

/// The forward: x (and the weight and bias that are given) to y, shaped as x; or, for
/// the fused residual add, x, the residual and the affine parameters (packed into one
/// input when both are given) to y and h stacked, shaped `[2, *x.dims()]`.
struct NormFwd {
    spec: Spec,
    affine: Affine,
}

impl NormFwd {
    fn shape(&self, x: &Shape) -> Shape {
        if self.spec.residual {
            Shape::from(std::iter::once(2).chain(x.dims().iter().copied()).collect::<Vec<_>>())
        } else {
            x.clone()
        }
    }

    /// Calls `f(x, residual, weight, bias)` with the inputs of this op.
    fn with_inputs<S, R>(
        &self,
        ins: &[Arg<S>],
        f: impl FnOnce(Arg<S>, Option<Arg<S>>, Option<Arg<S>>, Option<Arg<S>>) -> Result<R>,
    ) -> Result<R> {
        let Affine { weight, bias } = self.affine;
        if !self.spec.residual {
            let w = weight.then(|| ins[1]);
            return f(ins[0], None, w, bias.then(|| ins[ins.len() - 1]));
        }
        let (x, r, p) = (ins[0], Some(ins[1]), ins.get(2).copied());
        match p {
            Some(p) if weight && bias => halves(self.spec.name(), p, self.spec.params(), |[w, b]| {
                f(x, r, Some(w), Some(b))
            }),
            p => f(x, r, p.filter(|_| weight), p.filter(|_| bias)),
        }
    }
}

/// The two halves of an input that packs two tensors of `half` elements each (candle's
/// custom ops take at most three inputs), as inputs of their own, for the duration of
/// `f`.
fn halves<S, R>(op: &str, (s, l): Arg<S>, half: usize, f: impl FnOnce([Arg<S>; 2]) -> Result<R>) -> Result<R> {
    let start = check::contiguous_range(op, l)?.start;
    let (a, b) = (
        Layout::contiguous_with_offset(half, start),
        Layout::contiguous_with_offset(half, start + half),
    );
    f([(s, &a), (s, &b)])
}

/// The affine parameters as the forward ops take them: one input, packed when both
/// are given.
fn packed_params(weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    match (weight, bias) {
        (Some(w), Some(b)) => Ok(Some(Tensor::cat(&[w, b], 0)?)),
        (p, None) | (None, p) => p.map(Tensor::contiguous).transpose(),
    }
}

/// The fused backward: (x, [weight,] dy[, dh]) to one flat tensor holding dx, then dγ
/// with a weight, then dβ with a bias. With dh (the fused residual add), x is h and dh
/// is added to dx.
struct NormBwd {
    spec: Spec,
    affine: Affine,
    dh: bool,
}

impl NormBwd {
    /// x (or h), the weight, dy and dh from the inputs of this op.
    fn split<A: Copy>(&self, ins: &[A]) -> (A, Option<A>, A, Option<A>) {
        let dy = ins.len() - 1 - usize::from(self.dh);
        (
            ins[0],
            self.affine.weight.then(|| ins[1]),
            ins[dy],
            self.dh.then(|| ins[dy + 1]),
        )
    }
}

/// The forward on CPU storage: the fused CPU path, or within
/// [`emulator::run`](crate::emulator::run) the CUDA kernels on the emulator.
fn host_forward(
    spec: &Spec,
    x: Arg<CpuStorage>,
    r: Option<Arg<CpuStorage>>,
    w: Option<Arg<CpuStorage>>,
    b: Option<Arg<CpuStorage>>,
) -> Result<CpuStorage> {
    #[cfg(feature = "cuda-emulator")]
    if let Some(gpu) = crate::cuda::emulator::active() {
        return crate::cuda::emulator::forward(gpu, spec, x, r, w, b);
    }
    cpu::forward(spec, x, r, w, b)
}

/// The backward on CPU storage, as [`host_forward`]; BatchNorm's with `running`
/// statistics in eval.
pub(crate) fn host_backward(
    spec: &Spec,
    want: Affine,
    [x, dy]: [Arg<CpuStorage>; 2],
    [w, dh]: [Option<Arg<CpuStorage>>; 2],
    running: Option<[Arg<CpuStorage>; 2]>,
) -> Result<CpuStorage> {
    #[cfg(feature = "cuda-emulator")]
    if let Some(gpu) = crate::cuda::emulator::active() {
        return crate::cuda::emulator::backward(gpu, spec, want, [x, dy], [w, dh], running);
    }
    match spec.kind {
        crate::spec::Kind::Batch => cpu::batch_backward(spec, want, [x, dy], w, running),
        _ => cpu::backward(spec, want, x, w, dy, dh),
    }
}

impl Fused for NormFwd {
    fn name(&self) -> &'static str {
        self.spec.name()
    }

    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        self.with_inputs(ins, |x, r, w, b| {
            Ok((host_forward(&self.spec, x, r, w, b)?, self.shape(x.1.shape())))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<candle_core::CudaStorage>]) -> Result<(candle_core::CudaStorage, Shape)> {
        self.with_inputs(ins, |x, r, w, b| {
            Ok((crate::cuda::forward(&self.spec, x, r, w, b)?, self.shape(x.1.shape())))
        })
    }

    fn grads(&self, ins: &[&Tensor], out: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let Affine { weight, bias } = self.affine;
        let np = self.spec.params();
        if self.spec.residual {
            // The packed parameters' gradient is dγ then dβ: the backward's tail.
            let w = if weight { Some(ins[2].narrow(0, 0, np)?) } else { None };
            let (dh, params) = grads(
                self.spec,
                self.affine,
                &out.get(1)?,
                w.as_ref(),
                &grad.get(0)?,
                Some(&grad.get(1)?),
            )?;
            let packed = (weight || bias).then_some(params);
            return Ok(vec![Some(dh.clone()), Some(dh)]
                .into_iter()
                .chain(packed.map(Some))
                .collect());
        }
        let (dx, params) = grads(self.spec, self.affine, ins[0], weight.then(|| ins[1]), grad, None)?;
        let dw = weight.then(|| params.narrow(0, 0, np)).transpose()?;
        let db = bias
            .then(|| params.narrow(0, if weight { np } else { 0 }, np))
            .transpose()?;
        Ok(std::iter::once(Some(dx))
            .chain(weight.then_some(dw))
            .chain(bias.then_some(db))
            .collect())
    }
}

impl Fused for NormBwd {
    fn name(&self) -> &'static str {
        self.spec.name()
    }

    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy, dh) = self.split(ins);
        let out = host_backward(&self.spec, self.affine, [x, dy], [w, dh], None)?;
        Ok((out, Shape::from(self.spec.packed_grads(self.affine))))
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<candle_core::CudaStorage>]) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, w, dy, dh) = self.split(ins);
        let out = crate::cuda::backward(&self.spec, self.affine, x, w, dy, dh)?;
        Ok((out, Shape::from(self.spec.packed_grads(self.affine))))
    }
}
