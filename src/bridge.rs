//! The bridge to candle's custom ops, for devices with fused kernels. An op's named
//! slots are packed into candle's inputs in one place ([`pack`]) and unpacked again in
//! one place ([`unpack`]): the tensors of x's size in slot order (x, residual, dy, dh),
//! then the parameter slots (weight, bias, running mean, running var) concatenated into
//! one, each `spec.params()` long. A forward has at most three inputs (x, residual,
//! parameters), as candle's `CustomOp3` takes; a backward runs outside autograd and
//! takes any number. The op then runs on the [`Backend`] of the device's storage.

use crate::backend::{Arg, Backend, Grads, Outputs, Slots};
use crate::spec::{Affine, Spec};
use candle_core::op::BackpropOp;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// Which slots an op has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Present {
    residual: bool,
    dy: bool,
    dh: bool,
    weight: bool,
    bias: bool,
    running: bool,
}

impl Present {
    fn of<T>(s: &Slots<T>) -> Self {
        Self {
            residual: s.residual.is_some(),
            dy: s.dy.is_some(),
            dh: s.dh.is_some(),
            weight: s.weight.is_some(),
            bias: s.bias.is_some(),
            running: s.running.is_some(),
        }
    }
}

/// Candle's inputs for `slots` (module comment).
fn pack(slots: &Slots<&Tensor>) -> Result<Vec<Tensor>> {
    let mut ins = vec![slots.x.contiguous()?];
    for t in [slots.residual, slots.dy, slots.dh].into_iter().flatten() {
        ins.push(t.contiguous()?);
    }
    let params: Vec<Tensor> = [slots.weight, slots.bias]
        .into_iter()
        .flatten()
        .chain(slots.running.iter().flatten().copied())
        .map(Tensor::contiguous)
        .collect::<Result<_>>()?;
    match params.len() {
        0 => {}
        1 => ins.extend(params),
        _ => ins.push(Tensor::cat(&params, 0)?),
    }
    Ok(ins)
}

/// Calls `f` with candle's inputs `ins` unpacked into the slots `present` names, the
/// parameter slots as views into the packed input.
fn unpack<S, R>(
    spec: &Spec,
    present: Present,
    ins: &[Arg<S>],
    f: impl FnOnce(&Slots<Arg<S>>) -> Result<R>,
) -> Result<R> {
    let mut it = ins.iter().copied();
    let mut next = |given: bool| if given { it.next() } else { None };
    let Some(x) = next(true) else {
        bail!("{}: internal error: no inputs", spec.name())
    };
    let (residual, dy, dh) = (next(present.residual), next(present.dy), next(present.dh));
    let count = [present.weight, present.bias, present.running, present.running]
        .iter()
        .filter(|&&p| p)
        .count();
    let packed = next(count > 0);
    if it.next().is_some() || (count > 0 && packed.is_none()) {
        bail!(
            "{}: internal error: {} inputs do not match the op's slots",
            spec.name(),
            ins.len()
        )
    }
    let np = spec.params();
    let (storage, start) = match packed {
        Some((s, l)) => {
            if l.shape().elem_count() != count * np {
                bail!(
                    "{}: internal error: {} packed parameters for {count} of {np}",
                    spec.name(),
                    l.shape().elem_count()
                )
            }
            (Some(s), crate::check::contiguous_range(spec.name(), l)?.start)
        }
        None => (None, 0),
    };
    let layouts: Vec<Layout> = (0..count)
        .map(|k| Layout::contiguous_with_offset(np, start + k * np))
        .collect();
    let mut at = layouts.iter().filter_map(|l| storage.map(|s| (s, l)));
    let mut take = |given: bool| if given { at.next() } else { None };
    let (weight, bias) = (take(present.weight), take(present.bias));
    let running = match (take(present.running), take(present.running)) {
        (Some(m), Some(v)) => Some([m, v]),
        _ => None,
    };
    f(&Slots {
        x,
        residual,
        weight,
        bias,
        dy,
        dh,
        running,
    })
}

/// What an op computes.
#[derive(Clone, Copy, Debug)]
enum Job {
    Forward,
    /// The backward, with dγ and dβ as the affine flags ask.
    Backward(Affine),
}

/// A norm's forward or backward on one device, with its slots.
struct FusedOp {
    spec: Spec,
    job: Job,
    present: Present,
    /// The op's second output, left beside the one a custom op returns: training
    /// BatchNorm's batch statistics (returning them within y would cost autograd a copy
    /// of y's gradient), or the backward's parameter gradients (of the parameters'
    /// dtype, which may not be x's).
    second: Arc<Mutex<Option<Storage>>>,
}

impl FusedOp {
    /// Runs the op on `backend`: its output and the shape of it.
    fn run<B: Backend>(
        &self,
        backend: &B,
        ins: &[Arg<B::Storage>],
        wrap: fn(B::Storage) -> Storage,
    ) -> Result<(B::Storage, Shape)> {
        let x_shape = ins
            .first()
            .map(|(_, l)| l.shape().clone())
            .unwrap_or_else(|| Shape::from(0));
        let keep = |second: Option<B::Storage>| -> Result<()> {
            if let Some(s) = second {
                *self.second.lock().map_err(|_| {
                    candle_core::Error::Msg(format!("{}: second output's lock poisoned", self.spec.name()))
                })? = Some(wrap(s));
            }
            Ok(())
        };
        unpack(&self.spec, self.present, ins, |slots| match self.job {
            Job::Forward => {
                let (out, stats) = backend.forward(&self.spec, slots)?;
                keep(stats)?;
                let shape = if self.spec.residual {
                    Shape::from(
                        std::iter::once(2)
                            .chain(x_shape.dims().iter().copied())
                            .collect::<Vec<_>>(),
                    )
                } else {
                    x_shape.clone()
                };
                Ok((out, shape))
            }
            Job::Backward(affine) => {
                let (dx, params) = backend.backward(&self.spec, affine, slots)?;
                keep(params)?;
                Ok((dx, x_shape.clone()))
            }
        })
    }

    /// The second output the last run left, if any.
    fn take_second(&self) -> Result<Option<Storage>> {
        Ok(self
            .second
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: second output's lock poisoned", self.spec.name())))?
            .take())
    }

    /// The CPU storage's backend: the fused CPU path, or within `emulator::run` the CUDA
    /// kernels on the emulator, for the calls they take (`cuda_kernels_take`; the
    /// others run the CPU path).
    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)> {
        #[cfg(feature = "cuda-emulator")]
        if let Some(gpu) = crate::cuda::emulator::active() {
            use candle_core::backend::BackendStorage;
            let x = ins.first().map(|(s, _)| s.dtype());
            let p = self.present;
            let params = ins
                .last()
                .filter(|_| p.weight || p.bias || p.running)
                .map(|(s, _)| s.dtype());
            if x.is_some_and(|x| crate::backend::cuda_kernels_take(&self.spec, x, params.unwrap_or(x))) {
                return self.run(&crate::cuda::emulator::Emulated(gpu), ins, Storage::Cpu);
            }
        }
        self.run(&crate::cpu::Cpu, ins, Storage::Cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<CudaStorage>]) -> Result<(CudaStorage, Shape)> {
        self.run(&crate::cuda::Cuda, ins, Storage::Cuda)
    }

    /// The gradients of the forward's inputs (x, residual, packed parameters) from the
    /// gradient of its output, through the fused backward.
    fn grads(&self, ins: &[&Tensor], out: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        if !matches!(self.job, Job::Forward) {
            bail!("{}: internal error: no gradient of a backward", self.spec.name())
        }
        let (spec, p) = (&self.spec, self.present);
        let np = spec.params();
        let packed = ins.last().filter(|_| p.weight || p.bias || p.running);
        let part = |k: usize| match packed {
            Some(t) => t.narrow(0, k * np, np),
            None => bail!("{}: internal error: no packed parameters", spec.name()),
        };
        let affine = Affine {
            weight: p.weight,
            bias: p.bias,
        };
        let skip = usize::from(p.weight) + usize::from(p.bias);
        let running = p
            .running
            .then(|| Ok::<_, candle_core::Error>([part(skip)?, part(skip + 1)?]))
            .transpose()?;
        let weight = p.weight.then(|| part(0)).transpose()?;
        let bias = p.bias.then(|| part(usize::from(p.weight))).transpose()?;
        let (x, dy, dh) = if spec.residual {
            (out.get(1)?, grad.get(0)?, Some(grad.get(1)?))
        } else {
            (ins[0].clone(), grad.clone(), None)
        };
        let slots = Slots {
            x: &x,
            residual: None,
            weight: weight.as_ref(),
            bias: bias.as_ref(),
            dy: Some(&dy),
            dh: dh.as_ref(),
            running: running.as_ref().map(|[m, v]| [m, v]),
        };
        let g = backward(spec, affine, slots)?;
        let mut grads = vec![Some(g.dx.clone())];
        if p.residual {
            grads.push(Some(g.dx));
        }
        if let Some(packed) = packed {
            let mut parts: Vec<Tensor> = [g.dweight, g.dbias].into_iter().flatten().collect();
            if p.running && !parts.is_empty() {
                parts.push(Tensor::zeros(2 * np, packed.dtype(), x.device())?);
            }
            grads.push(match parts.len() {
                0 => None,
                1 => parts.pop(),
                _ => Some(Tensor::cat(&parts, 0)?),
            });
        }
        Ok(grads)
    }
}

/// The fused forward of `spec` on `slots`, recorded for autograd.
pub(crate) fn forward(spec: &Spec, slots: Slots<&Tensor>) -> Result<Outputs> {
    let ins = pack(&slots)?;
    let second = Arc::new(Mutex::new(None));
    let op = FusedOp {
        spec: *spec,
        job: Job::Forward,
        present: Present::of(&slots),
        second: second.clone(),
    };
    let out = match ins.as_slice() {
        [x] => x.apply_op1(op),
        [x, a] => x.apply_op2(a, op),
        [x, a, b] => x.apply_op3(a, b, op),
        _ => bail!("{}: internal error: {} inputs to a forward", spec.name(), ins.len()),
    }?;
    let stats = second
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{}: statistics lock poisoned", spec.name())))?
        .take()
        .map(|s| {
            let t = Tensor::from_storage(s, 2 * spec.param_blocks, BackpropOp::none(), false);
            Ok::<_, candle_core::Error>([
                t.narrow(0, 0, spec.param_blocks)?,
                t.narrow(0, spec.param_blocks, spec.param_blocks)?,
            ])
        })
        .transpose()?;
    let (y, h) = if spec.residual {
        (out.get(0)?, Some(out.get(1)?))
    } else {
        (out, None)
    };
    Ok(Outputs { y, h, stats })
}

/// The fused backward of `spec` on `slots`, outside autograd.
pub(crate) fn backward(spec: &Spec, affine: Affine, slots: Slots<&Tensor>) -> Result<Grads> {
    let ins = pack(&slots)?;
    let op = FusedOp {
        spec: *spec,
        job: Job::Backward(affine),
        present: Present::of(&slots),
        second: Arc::default(),
    };
    let guards: Vec<_> = ins.iter().map(|t| t.storage_and_layout()).collect();
    let (storage, shape) = match guards.first().map(|(s, _)| &**s) {
        Some(Storage::Cpu(_)) => {
            let args = same_device(spec, &guards, |s| match s {
                Storage::Cpu(c) => Some(c),
                _ => None,
            })?;
            let (s, shape) = op.cpu(&args)?;
            (Storage::Cpu(s), shape)
        }
        #[cfg(feature = "cuda")]
        Some(Storage::Cuda(_)) => {
            let args = same_device(spec, &guards, |s| match s {
                Storage::Cuda(c) => Some(c),
                _ => None,
            })?;
            let (s, shape) = op.cuda(&args)?;
            (Storage::Cuda(s), shape)
        }
        _ => bail!("{}: internal error: no fused kernels for this device", spec.name()),
    };
    let dx = Tensor::from_storage(storage, shape, BackpropOp::none(), false);
    let np = spec.params();
    let params = op
        .take_second()?
        .map(|s| Tensor::from_storage(s, spec.param_grads(affine), BackpropOp::none(), false));
    let part = |given: bool, k: usize| match (&params, given) {
        (Some(p), true) => p.narrow(0, k * np, np).map(Some),
        (None, true) => bail!("{}: internal error: no parameter gradients", spec.name()),
        (_, false) => Ok(None),
    };
    let dweight = part(affine.weight, 0)?;
    let dbias = part(affine.bias, usize::from(affine.weight))?;
    Ok(Grads { dx, dweight, dbias })
}

/// The inputs as one backend's storages (`pick` returns `None` for another's).
fn same_device<'a, S>(
    spec: &Spec,
    guards: &'a [(candle_core::StorageRef<'_>, &'a Layout)],
    pick: impl Fn(&Storage) -> Option<&S>,
) -> Result<Vec<Arg<'a, S>>> {
    guards
        .iter()
        .map(|(s, l)| match pick(s) {
            Some(s) => Ok((s, *l)),
            None => bail!("{}: inputs on different devices", spec.name()),
        })
        .collect()
}

/// The gradients `FusedOp::grads` returns, checked to be one per input.
fn grads_of<const K: usize>(
    op: &FusedOp,
    ins: [&Tensor; K],
    out: &Tensor,
    grad: &Tensor,
) -> Result<[Option<Tensor>; K]> {
    let g = op.grads(&ins, out, grad)?;
    let n = g.len();
    g.try_into()
        .or_else(|_| bail!("{}: internal error: {n} gradients for {K} inputs", op.spec.name()))
}

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        self.spec.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu(&[(s, l)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda(&[(s, l)])
    }

    fn bwd(&self, x: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [gx] = grads_of(self, [x], out, grad)?;
        Ok(gx)
    }
}

impl CustomOp2 for FusedOp {
    fn name(&self) -> &'static str {
        self.spec.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu(&[(s1, l1), (s2, l2)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda(&[(s1, l1), (s2, l2)])
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = grads_of(self, [a, b], out, grad)?;
        Ok((ga, gb))
    }
}

impl CustomOp3 for FusedOp {
    fn name(&self) -> &'static str {
        self.spec.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu(&[(s1, l1), (s2, l2), (s3, l3)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda(&[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = grads_of(self, [a, b, c], out, grad)?;
        Ok((ga, gb, gc))
    }
}
