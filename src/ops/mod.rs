//! The public ops, one file per family, and the two fused ops they share: [`NormFwd`]
//! (the forward, whose gradient is [`NormBwd`]) and [`NormBwd`] (the fused backward).
//!
//! A public op checks its inputs (`crate::check`), describes the norm as a
//! [`Spec`], and runs it through [`forward`] or [`backward`]; the fused ops pick the
//! backend (`crate::cpu`, `crate::cuda`) by device.

mod group;
mod layer;
mod rms;
mod weight;

pub use group::{group_norm, group_norm_backward};
pub use layer::{layer_norm, layer_norm_backward};
pub use rms::{rms_norm, rms_norm_backward};
pub use weight::{weight_norm, weight_standardization};

use crate::custom_op::{self, Arg, Fused};
use crate::spec::{Affine, Spec};
use crate::{check, cpu};
use candle_core::{CpuStorage, Result, Shape, Tensor};

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

/// Checks `x` and `eps` of a norm over the last dimension.
fn check_last_dim(op: &str, x: &Tensor, eps: f64) -> Result<()> {
    check::input(op, x, 1, "the last dimension is normalized")?;
    check::eps(op, eps)
}

/// The inputs of a norm in the order the fused ops take them: x, then the weight and
/// the bias that are given.
fn inputs<'a>(x: &'a Tensor, weight: Option<&'a Tensor>, bias: Option<&'a Tensor>) -> Vec<&'a Tensor> {
    std::iter::once(x).chain(weight).chain(bias).collect()
}

/// Runs the forward (recorded for autograd) on checked inputs.
pub(crate) fn forward(spec: Spec, x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let (x, w, b) = (
        x.contiguous()?,
        weight.map(Tensor::contiguous).transpose()?,
        bias.map(Tensor::contiguous).transpose()?,
    );
    let affine = Affine {
        weight: w.is_some(),
        bias: b.is_some(),
    };
    custom_op::apply(NormFwd { spec, affine }, &inputs(&x, w.as_ref(), b.as_ref()), true)
}

/// Runs the fused backward on checked inputs, outside autograd: the gradients that
/// `Tensor::backward` gives for the forward with the same arguments.
pub(crate) fn backward(
    spec: Spec,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
) -> Result<NormGrads> {
    check::dy(spec.kind.name(), x, dy)?;
    let affine = Affine {
        weight: weight.is_some(),
        bias: bias.is_some(),
    };
    let w = weight.map(Tensor::contiguous).transpose()?;
    grads(spec, affine, &x.contiguous()?, w.as_ref(), dy)
}

/// The fused backward of checked, contiguous x and weight, its flat output split.
fn grads(spec: Spec, affine: Affine, x: &Tensor, w: Option<&Tensor>, dy: &Tensor) -> Result<NormGrads> {
    let dy = dy.contiguous()?;
    let ins: Vec<&Tensor> = std::iter::once(x).chain(w).chain([&dy]).collect();
    let flat = custom_op::apply(NormBwd { spec, affine }, &ins, false)?;
    let (n, np) = (x.elem_count(), spec.params());
    let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
    let dweight = affine.weight.then(|| flat.narrow(0, n, np)).transpose()?;
    let at = n + if affine.weight { np } else { 0 };
    let dbias = affine.bias.then(|| flat.narrow(0, at, np)).transpose()?;
    Ok(NormGrads { dx, dweight, dbias })
}

/// x, the weight and the bias from the inputs of a [`NormFwd`].
fn split_fwd<A: Copy>(affine: Affine, ins: &[A]) -> (A, Option<A>, Option<A>) {
    let w = affine.weight.then(|| ins[1]);
    let b = affine.bias.then(|| ins[ins.len() - 1]);
    (ins[0], w, b)
}

/// x, the weight and dy from the inputs of a [`NormBwd`].
fn split_bwd<A: Copy>(affine: Affine, ins: &[A]) -> (A, Option<A>, A) {
    (ins[0], affine.weight.then(|| ins[1]), ins[ins.len() - 1])
}

/// The forward: x (and the weight and bias that are given) to y, shaped as x.
struct NormFwd {
    spec: Spec,
    affine: Affine,
}

/// The fused backward: (x, [weight,] dy) to one flat tensor holding dx, then dγ with a
/// weight, then dβ with a bias.
struct NormBwd {
    spec: Spec,
    affine: Affine,
}

impl Fused for NormFwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
    }

    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = split_fwd(self.affine, ins);
        Ok((cpu::forward(&self.spec, x, w, b)?, x.1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<candle_core::CudaStorage>]) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, w, b) = split_fwd(self.affine, ins);
        Ok((crate::cuda::forward(&self.spec, x, w, b)?, x.1.shape().clone()))
    }

    fn grads(&self, ins: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (x, w, _) = split_fwd(self.affine, ins);
        let g = grads(self.spec, self.affine, x, w, dy)?;
        Ok(std::iter::once(Some(g.dx))
            .chain(self.affine.weight.then_some(g.dweight))
            .chain(self.affine.bias.then_some(g.dbias))
            .collect())
    }
}

impl Fused for NormBwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
    }

    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = split_bwd(self.affine, ins);
        let out = cpu::backward(&self.spec, self.affine, x, w, dy)?;
        Ok((out, Shape::from(self.spec.packed_grads(self.affine))))
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<candle_core::CudaStorage>]) -> Result<(candle_core::CudaStorage, Shape)> {
        let (x, w, dy) = split_bwd(self.affine, ins);
        let out = crate::cuda::backward(&self.spec, self.affine, x, w, dy)?;
        Ok((out, Shape::from(self.spec.packed_grads(self.affine))))
    }
}
