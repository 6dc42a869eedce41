//! The public ops, one file per family (`add` is the fused residual add + norm), and
//! the route every op takes: the fused kernels of its device, through the custom-op
//! bridge (`crate::bridge`), or, on a device this build has no kernels for, the generic
//! backend (`crate::generic`).
//!
//! A public op checks its inputs (`crate::check`), describes the norm as a [`Spec`],
//! and runs it through [`run_forward`] or [`run_backward`] with its inputs by name.
//! Each family's public items are re-exported whole, so a new op is written in its
//! family's file alone.

mod add;
mod batch;
mod group;
mod instance;
mod layer;
mod normalize;
mod rms;
mod row;
mod weight;

pub use add::*;
pub use batch::*;
pub use group::*;
pub use instance::*;
pub use layer::*;
pub use normalize::*;
pub use rms::*;
pub use row::*;
pub use weight::*;

use crate::backend::{Grads, Outputs, Slots};
use crate::spec::{Affine, Spec};
use crate::{bridge, check, generic};
use candle_core::{bail, Device, Result, Tensor};
use std::cell::Cell;

/// Gradients of a norm with respect to its input and its affine parameters, as
/// returned by [`layer_norm_backward`] and the other `*_backward` functions.
#[derive(Clone, Debug)]
pub struct NormGrads {
    /// dL/dx, of `x`'s shape and dtype, contiguous.
    pub dx: Tensor,
    /// dL/dweight, when a weight was given: shape `[N]` (`[C]` for GroupNorm), the
    /// weight's dtype.
    pub dweight: Option<Tensor>,
    /// dL/dbias, when a bias was given: shape `[N]` (`[C]` for GroupNorm), the bias's
    /// dtype.
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

/// The tangents (directions of the derivative) of a norm's inputs for the `*_jvp`
/// functions ([`layer_norm_jvp`] and the others): ẋ with the shape, dtype and device of
/// `x`, γ̇ and β̇ with those of the weight and the bias. An absent tangent is zero; a
/// tangent of a parameter the call does not have is an error.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tangents<'a> {
    /// ẋ.
    pub x: Option<&'a Tensor>,
    /// γ̇.
    pub weight: Option<&'a Tensor>,
    /// β̇.
    pub bias: Option<&'a Tensor>,
}

/// A forward-mode derivative on checked primal inputs: `(y, ẏ)`, y from the op's own
/// forward (the same values [`run_forward`] gives the op), ẏ from the generic backend's
/// composed ops on every device (`generic::tangent`).
pub(crate) fn jvp(
    spec: Spec,
    x: &Tensor,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    running: Option<[&Tensor; 2]>,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    let slots = Slots {
        weight,
        bias,
        running,
        ..Slots::new(x)
    };
    let op = format!("{}_jvp", spec.name());
    if let Some(tx) = t.x {
        check::same(&op, tx, "the tangent of x", slots.x, "x")?;
    }
    for (name, p, tp) in [("weight", slots.weight, t.weight), ("bias", slots.bias, t.bias)] {
        match (p, tp) {
            (_, None) => {}
            (None, Some(_)) => bail!("{op}: a tangent of the {name} was given without a {name}"),
            (Some(p), Some(tp)) => check::same(&op, tp, &format!("the tangent of the {name}"), p, name)?,
        }
    }
    let y = run_forward(&spec, slots)?.y;
    let dy = generic::tangent(&spec, &slots, [t.x, t.weight, t.bias])?;
    Ok((y, dy))
}

/// Checks `x` and `eps` of a norm over the last dimension.
fn check_last_dim(op: &str, x: &Tensor, eps: f64) -> Result<()> {
    check::input(op, x, 1, "the last dimension is normalized")?;
    check::eps(op, eps)
}

/// The affine parameters a call has.
fn affine(weight: Option<&Tensor>, bias: Option<&Tensor>) -> Affine {
    Affine {
        weight: weight.is_some(),
        bias: bias.is_some(),
    }
}

thread_local! {
    static GENERIC: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the ops on this thread taking the generic backend whatever the device
/// (`crate::testing`).
pub(crate) fn with_generic<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GENERIC.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GENERIC.with(|g| g.replace(true)));
    f()
}

/// Whether a call runs fused kernels: on the CPU always; on CUDA with the `cuda`
/// feature, the calls the CUDA kernels take (`backend::cuda_kernels_take`: no f64, no
/// activation); other devices, the other CUDA calls, and every call within
/// [`with_generic`], run the generic backend.
fn fused(spec: &Spec, slots: &Slots<&Tensor>) -> bool {
    if GENERIC.with(Cell::get) {
        return false;
    }
    let params = slots.first_param().map_or(slots.x.dtype(), |p| p.dtype());
    match slots.x.device() {
        Device::Cpu => true,
        Device::Cuda(_) => cfg!(feature = "cuda") && crate::backend::cuda_kernels_take(spec, slots.x.dtype(), params),
        _ => false,
    }
}

/// Runs a forward on checked inputs, recorded for autograd.
pub(crate) fn run_forward(spec: &Spec, slots: Slots<&Tensor>) -> Result<Outputs> {
    if fused(spec, &slots) {
        bridge::forward(spec, slots)
    } else {
        generic::forward(spec, slots)
    }
}

/// Runs a backward on checked inputs, outside autograd: the gradients that
/// `Tensor::backward` gives for the forward with the same inputs.
pub(crate) fn run_backward(spec: &Spec, affine: Affine, slots: Slots<&Tensor>) -> Result<Grads> {
    if fused(spec, &slots) {
        bridge::backward(spec, affine, slots)
    } else {
        generic::backward(spec, affine, slots)
    }
}

/// The forward of a norm of x with the weight and bias that are given: y.
pub(crate) fn forward(spec: Spec, x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let slots = Slots {
        weight,
        bias,
        ..Slots::new(x)
    };
    Ok(run_forward(&spec, slots)?.y)
}

/// The fused residual add + norm: (y, h). The residual is checked here, the other
/// inputs before.
pub(crate) fn forward_add(
    spec: Spec,
    x: &Tensor,
    residual: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    check::same(spec.name(), residual, "residual", x, "x")?;
    let slots = Slots {
        residual: Some(residual),
        weight,
        bias,
        ..Slots::new(x)
    };
    let out = run_forward(&spec, slots)?;
    match out.h {
        Some(h) => Ok((out.y, h)),
        None => bail!("{}: internal error: no h", spec.name()),
    }
}

/// The backward on checked inputs, outside autograd. For the fused residual add, `x`
/// is h and `dh` the gradient reaching h directly, if any.
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
    let slots = Slots {
        weight,
        bias,
        dy: Some(dy),
        dh,
        ..Slots::new(x)
    };
    Ok(run_backward(&spec, affine(weight, bias), slots)?.into())
}

impl From<Grads> for NormGrads {
    fn from(g: Grads) -> Self {
        Self {
            dx: g.dx,
            dweight: g.dweight,
            dbias: g.dbias,
        }
    }
}
