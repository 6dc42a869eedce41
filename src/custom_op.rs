//! The bridge to candle's custom ops: a [`Fused`] op is written once over a slice of
//! inputs, and [`Op`] turns it into candle's `CustomOp1`, `CustomOp2` and `CustomOp3`,
//! so an op with optional inputs (a norm without weight or bias) is one type whatever
//! its arity. An op outside autograd ([`apply_untracked`]) runs on the inputs'
//! storages directly and takes any number of inputs.

use candle_core::op::BackpropOp;
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// A storage and its layout, as candle hands them to a custom op.
pub(crate) type Arg<'a, S> = (&'a S, &'a Layout);

/// One fused op: one output (a flat tensor where an op has several results) from one
/// to three inputs, on each device, with its gradient.
pub(crate) trait Fused: Send + Sync {
    /// The op's name, as candle reports it.
    fn name(&self) -> &'static str;

    /// The op on the CPU.
    fn cpu(&self, ins: &[Arg<CpuStorage>]) -> Result<(CpuStorage, Shape)>;

    /// The op on a CUDA device.
    #[cfg(feature = "cuda")]
    fn cuda(&self, ins: &[Arg<CudaStorage>]) -> Result<(CudaStorage, Shape)>;

    /// The gradients of the inputs, given the inputs, the output and its gradient.
    fn grads(&self, ins: &[&Tensor], out: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let _ = (ins, out, grad);
        bail!("{}: no gradient of this op", self.name())
    }
}

/// A [`Fused`] op as a candle custom op of any arity.
pub(crate) struct Op<F>(pub F);

/// Applies `op` to one, two or three inputs, recorded for autograd.
pub(crate) fn apply<F: Fused + 'static>(op: F, ins: &[&Tensor]) -> Result<Tensor> {
    let op = Op(op);
    match ins {
        [x] => x.apply_op1(op),
        [x, a] => x.apply_op2(a, op),
        [x, a, b] => x.apply_op3(a, b, op),
        _ => bail!("{}: internal error: {} inputs", op.0.name(), ins.len()),
    }
}

/// Applies `op` to any number of inputs on one device, outside autograd.
pub(crate) fn apply_untracked<F: Fused>(op: &F, ins: &[&Tensor]) -> Result<Tensor> {
    let guards: Vec<_> = ins.iter().map(|t| t.storage_and_layout()).collect();
    let (storage, shape) = match guards.first().map(|(s, _)| &**s) {
        Some(Storage::Cpu(_)) => {
            let args = args(op, &guards, |s| match s {
                Storage::Cpu(c) => Some(c),
                _ => None,
            })?;
            let (s, shape) = op.cpu(&args)?;
            (Storage::Cpu(s), shape)
        }
        #[cfg(feature = "cuda")]
        Some(Storage::Cuda(_)) => {
            let args = args(op, &guards, |s| match s {
                Storage::Cuda(c) => Some(c),
                _ => None,
            })?;
            let (s, shape) = op.cuda(&args)?;
            (Storage::Cuda(s), shape)
        }
        Some(_) => bail!("{}: this device is not supported (CPU and CUDA are)", op.name()),
        None => bail!("{}: internal error: no inputs", op.name()),
    };
    Ok(Tensor::from_storage(storage, shape, BackpropOp::none(), false))
}

/// The inputs of [`apply_untracked`] as one backend's storages (`pick` returns `None`
/// for another backend's).
fn args<'a, F: Fused, S>(
    op: &F,
    guards: &'a [(candle_core::StorageRef<'_>, &'a Layout)],
    pick: impl Fn(&Storage) -> Option<&S>,
) -> Result<Vec<Arg<'a, S>>> {
    guards
        .iter()
        .map(|(s, l)| match pick(s) {
            Some(s) => Ok((s, *l)),
            None => bail!("{}: inputs on different devices", op.name()),
        })
        .collect()
}

/// The gradients [`Fused::grads`] returns, checked to be one per input.
fn grads<F: Fused, const K: usize>(
    op: &F,
    ins: [&Tensor; K],
    out: &Tensor,
    grad: &Tensor,
) -> Result<[Option<Tensor>; K]> {
    let g = op.grads(&ins, out, grad)?;
    let n = g.len();
    g.try_into()
        .or_else(|_| bail!("{}: internal error: {n} gradients for {K} inputs", op.name()))
}

impl<F: Fused> CustomOp1 for Op<F> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.cpu(&[(s, l)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.0.cuda(&[(s, l)])
    }

    fn bwd(&self, x: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [gx] = grads(&self.0, [x], out, grad)?;
        Ok(gx)
    }
}

impl<F: Fused> CustomOp2 for Op<F> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.cpu(&[(s1, l1), (s2, l2)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        self.0.cuda(&[(s1, l1), (s2, l2)])
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = grads(&self.0, [a, b], out, grad)?;
        Ok((ga, gb))
    }
}

impl<F: Fused> CustomOp3 for Op<F> {
    fn name(&self) -> &'static str {
        self.0.name()
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
        self.0.cpu(&[(s1, l1), (s2, l2), (s3, l3)])
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
        self.0.cuda(&[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = grads(&self.0, [a, b, c], out, grad)?;
        Ok((ga, gb, gc))
    }
}
