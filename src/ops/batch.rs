//! BatchNorm: the public functions, their checks and their two fused ops, on the CPU
//! and on CUDA.

use super::{affine, halves, packed_params, run_backward, split_params, NormGrads};
use crate::check;
use crate::custom_op::{self, Arg, Fused};
use crate::spec::{Affine, Spec};
use candle_core::op::BackpropOp;
use candle_core::{bail, CpuStorage, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

const OP: &str = "batch_norm";

/// BatchNorm in training mode over channels-first `x` of shape `[B, C]` or
/// `[B, C, *spatial]`: each channel is normalized with the mean and biased variance of
/// its B·prod(spatial) elements in this batch, then scaled and shifted, as
/// `torch.nn.functional.batch_norm(training=True)`. Statistics are accumulated in f32
/// (f64 for f64); the op is differentiable in `x`, `weight` and `bias` through one
/// fused backward. [`batch_norm_train`] also returns the statistics, and
/// [`batch_norm_eval`] normalizes with running ones.
///
/// # Errors
/// `x` of rank < 2 or with fewer than two values per channel (B·prod(spatial) < 2, as
/// PyTorch refuses in training), an unsupported dtype, a `weight`/`bias` not of shape
/// `[C]` or of another dtype or device, or an `eps` that is negative or not finite.
pub fn batch_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    Ok(batch_norm_train(x, weight, bias, eps)?.0)
}

/// [`batch_norm`], returning `(y, mean, var)`: y, and each channel's batch mean and
/// biased variance (shape `[C]`, `x`'s dtype) from the same pass that normalized it,
/// for updating running statistics without reading x again. The statistics are
/// detached: no gradient flows through them.
///
/// # Errors
/// As [`batch_norm`].
pub fn batch_norm_train(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let spec = spec(x, weight, bias, eps, None)?;
    let (x, p) = (x.contiguous()?, packed_params(weight, bias)?);
    let ins: Vec<&Tensor> = [Some(&x), p.as_ref()].into_iter().flatten().collect();
    let stats = Arc::new(Mutex::new(None));
    let op = BatchFwd {
        spec,
        affine: affine(weight, bias),
        eval: false,
        stats: stats.clone(),
    };
    let y = custom_op::apply(op, &ins)?;
    let stats = stats
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: statistics lock poisoned")))?
        .take();
    let Some(stats) = stats else {
        bail!("{OP}: internal error: the forward left no statistics")
    };
    let stats = Tensor::from_storage(stats, 2 * spec.groups, BackpropOp::none(), false);
    Ok((
        y,
        stats.narrow(0, 0, spec.groups)?,
        stats.narrow(0, spec.groups, spec.groups)?,
    ))
}

/// BatchNorm in eval mode: `(x − running_mean) / sqrt(running_var + eps) · weight +
/// bias` per channel, in one fused pass, as `torch.nn.functional.batch_norm(training=False)`.
/// Differentiable in `x`, `weight` and `bias` (fine-tuning with frozen statistics:
/// dx = dy·γ/sqrt(running_var + eps)); the running statistics are constants.
///
/// # Errors
/// Those of [`batch_norm`] but the count of values per channel, and a `running_mean` or
/// `running_var` not of shape `[C]` or of another dtype or device than `x`.
pub fn batch_norm_eval(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let spec = spec(x, weight, bias, eps, Some((running_mean, running_var)))?;
    let stats = Tensor::cat(&[running_mean, running_var], 0)?.detach();
    let (x, p) = (x.contiguous()?, packed_params(weight, bias)?);
    let ins: Vec<&Tensor> = [Some(&x), p.as_ref(), Some(&stats)].into_iter().flatten().collect();
    let op = BatchFwd {
        spec,
        affine: affine(weight, bias),
        eval: true,
        stats: Arc::default(),
    };
    custom_op::apply(op, &ins)
}

/// The training backward of [`batch_norm`] on its own, outside autograd: given `dy`
/// (shape, dtype and device of `x`), the gradients of `x`, of `weight` when given and
/// of `bias` when given, from the fused kernels `Tensor::backward` runs (statistics
/// recomputed from `x`).
///
/// # Errors
/// Those of [`batch_norm`], and a `dy` whose shape, dtype or device differ from `x`'s.
pub fn batch_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    let spec = spec(x, weight, bias, eps, None)?;
    check::same(OP, dy, "dy", x, "x")?;
    let w = weight.map(Tensor::contiguous).transpose()?;
    let affine = affine(weight, bias);
    let (dx, params) = grads(spec, affine, &x.contiguous()?, w.as_ref(), dy, None)?;
    split_params(&spec, affine, dx, &params)
}

/// The checked [`Spec`]: running statistics given for eval, else training's rule of
/// more than one value per channel.
fn spec(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    running: Option<(&Tensor, &Tensor)>,
) -> Result<Spec> {
    check::input(OP, x, 2, "[B, C, *spatial]")?;
    check::eps(OP, eps)?;
    let c = x.dims()[1];
    check::param(OP, x, weight, "weight", c, "the channel dimension")?;
    check::param(OP, x, bias, "bias", c, "the channel dimension")?;
    match running {
        Some((m, v)) => {
            check::param(OP, x, Some(m), "running_mean", c, "the channel dimension")?;
            check::param(OP, x, Some(v), "running_var", c, "the channel dimension")?;
        }
        None if x.elem_count() / c.max(1) < 2 => bail!(
            "{OP}: training needs more than 1 value per channel, got x of shape {:?}",
            x.dims()
        ),
        None => {}
    }
    Ok(Spec::channels(x.dims(), eps))
}

/// The fused backward of contiguous x and weight: dx, and dγ then dβ (those wanted) in
/// one tensor; with `stats` (the running mean and variance packed), eval's.
fn grads(
    spec: Spec,
    affine: Affine,
    x: &Tensor,
    w: Option<&Tensor>,
    dy: &Tensor,
    stats: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let dy = dy.contiguous()?;
    let ins: Vec<&Tensor> = [Some(x), w, Some(&dy), stats].into_iter().flatten().collect();
    let op = BatchBwd {
        spec,
        affine,
        eval: stats.is_some(),
    };
    run_backward(&op, x, &ins)
}

/// The forward: (x[, params]) to y (training), or (x[, params], running statistics) to y
/// (eval). The parameters are packed into one input when both are given, and the
/// running statistics always. In training the batch's mean and biased variance, from
/// the same pass, are left in `stats` (a custom op has one output, and returning them
/// within it would cost autograd a copy of y's gradient).
struct BatchFwd {
    spec: Spec,
    affine: Affine,
    eval: bool,
    stats: Arc<Mutex<Option<Storage>>>,
}

/// The fused backward: (x, [weight,] dy[, stats]) to dx, dγ, dβ in one flat tensor.
struct BatchBwd {
    spec: Spec,
    affine: Affine,
    eval: bool,
}

impl BatchFwd {
    /// Leaves training's statistics for [`batch_norm_train`].
    fn keep(&self, stats: Storage) -> Result<()> {
        let mut slot = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: statistics lock poisoned")))?;
        *slot = Some(stats);
        Ok(())
    }

    /// Calls `f(x, [weight, bias], running)` with the inputs of this op.
    fn with_inputs<S, R>(
        &self,
        ins: &[Arg<S>],
        f: impl FnOnce(Arg<S>, [Option<Arg<S>>; 2], Option<[Arg<S>; 2]>) -> Result<R>,
    ) -> Result<R> {
        let Affine { weight, bias } = self.affine;
        let (c, op) = (self.spec.groups, self.spec.name());
        let p = (weight || bias).then(|| ins[1]);
        let stats = self.eval.then(|| ins[ins.len() - 1]);
        let with_params = |running: Option<[Arg<S>; 2]>| match p {
            Some(p) if weight && bias => halves(op, p, c, |[w, b]| f(ins[0], [Some(w), Some(b)], running)),
            p => f(ins[0], [p.filter(|_| weight), p.filter(|_| bias)], running),
        };
        match stats {
            Some(s) => halves(op, s, c, |mv| with_params(Some(mv))),
            None => with_params(None),
        }
    }
}

/// BatchNorm's forward on CPU storage: the fused CPU path, or within
/// [`emulator::run`](crate::emulator::run) the CUDA kernels on the emulator; training's
/// statistics beside y.
fn host_forward(
    spec: &Spec,
    x: Arg<CpuStorage>,
    wb: [Option<Arg<CpuStorage>>; 2],
    running: Option<[Arg<CpuStorage>; 2]>,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    #[cfg(feature = "cuda-emulator")]
    if let Some(gpu) = crate::cuda::emulator::active() {
        return crate::cuda::emulator::batch_forward(gpu, spec, x, wb, running);
    }
    let train = running.is_none();
    let (y, stats) = crate::cpu::batch_forward(spec, x, wb, running)?;
    Ok((y, train.then_some(stats)))
}

impl Fused for BatchFwd {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        self.with_inputs(ins, |x, wb, running| {
            let (y, stats) = host_forward(&self.spec, x, wb, running)?;
            if let Some(stats) = stats {
                self.keep(Storage::Cpu(stats))?;
            }
            Ok((y, x.1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<candle_core::CudaStorage>]) -> Result<(candle_core::CudaStorage, Shape)> {
        self.with_inputs(ins, |x, wb, running| {
            let (y, stats) = crate::cuda::batch_forward(&self.spec, x, wb, running)?;
            if let Some(stats) = stats {
                self.keep(Storage::Cuda(stats))?;
            }
            Ok((y, x.1.shape().clone()))
        })
    }

    fn grads(&self, ins: &[&Tensor], _y: &Tensor, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let Affine { weight, bias } = self.affine;
        let (x, np) = (ins[0], self.spec.params());
        let w = if weight { Some(ins[1].narrow(0, 0, np)?) } else { None };
        let stats = self.eval.then(|| ins[ins.len() - 1]);
        let (dx, params) = grads(self.spec, self.affine, x, w.as_ref(), dy, stats)?;
        Ok(std::iter::once(Some(dx))
            .chain((weight || bias).then_some(Some(params)))
            .chain(self.eval.then_some(None))
            .collect())
    }
}

/// A backward of one device: `(spec, want, [x, dy], weight, running)` to the flat
/// gradients.
type Backend<S> = for<'a> fn(&Spec, Affine, [Arg<'a, S>; 2], Option<Arg<'a, S>>, Option<[Arg<'a, S>; 2]>) -> Result<S>;

impl BatchBwd {
    /// Runs `backend` on the inputs of this op (x, [weight,] dy[, running statistics
    /// packed]), and gives the output's shape.
    fn with_inputs<S>(&self, ins: &[Arg<S>], backend: Backend<S>) -> Result<(S, Shape)> {
        let w = self.affine.weight.then(|| ins[1]);
        let dy = ins[1 + usize::from(self.affine.weight)];
        let (spec, affine) = (&self.spec, self.affine);
        let out = match self.eval {
            true => halves(OP, ins[ins.len() - 1], spec.groups, |mv| {
                backend(spec, affine, [ins[0], dy], w, Some(mv))
            })?,
            false => backend(spec, affine, [ins[0], dy], w, None)?,
        };
        Ok((out, Shape::from(spec.packed_grads(affine))))
    }
}

impl Fused for BatchBwd {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        self.with_inputs(ins, |spec, want, xdy, w, running| {
            super::host_backward(spec, want, xdy, [w, None], running)
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<candle_core::CudaStorage>]) -> Result<(candle_core::CudaStorage, Shape)> {
        self.with_inputs(ins, crate::cuda::batch_backward)
    }
}
