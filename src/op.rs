//! The candle custom ops shared by the three norms: [`NormFwd`] (forward, with a
//! backward) and [`NormBwd`] (the fused backward itself), plus the input checks the
//! public functions share.
//!
//! All three norms reduce to one [`Spec`]: `rows` rows of `len` elements, normalized
//! over the row, with an affine parameter that changes every `inner` elements.

use crate::cpu::{self, Elem};
use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Tensor};
use candle_core::{CustomOp1, CustomOp2, CustomOp3};
use half::{bf16, f16};

/// Which norm a [`Spec`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Layer,
    Rms,
    Group,
}

impl Kind {
    /// The public function's name, used in custom-op names and error messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Layer => "layer_norm",
            Kind::Rms => "rms_norm",
            Kind::Group => "group_norm",
        }
    }
}

/// The shape of a normalization, common to all three norms.
///
/// LayerNorm/RMSNorm over [M, N]: `rows = M`, `len = N`, `inner = 1`,
/// `params_per_row = N`, `groups = 1`. GroupNorm over [B, C, *S] with G groups:
/// `rows = B·G`, `len = (C/G)·S`, `inner = S`, `params_per_row = C/G`, `groups = G`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub kind: Kind,
    pub rows: usize,
    pub len: usize,
    /// Consecutive elements of a row that share one affine parameter.
    pub inner: usize,
    pub params_per_row: usize,
    /// Rows cycle through this many blocks of `params_per_row` parameters.
    pub groups: usize,
    pub eps: f64,
}

impl Spec {
    /// LayerNorm subtracts the mean (GroupNorm too); RMSNorm does not.
    pub(crate) fn center(&self) -> bool {
        self.kind != Kind::Rms
    }

    /// Length of the weight and bias (N, or C for GroupNorm).
    pub(crate) fn params(&self) -> usize {
        self.groups * self.params_per_row
    }

    /// Index of the first parameter used by `row`.
    pub(crate) fn param_offset(&self, row: usize) -> usize {
        (row % self.groups) * self.params_per_row
    }

    /// Index of the parameter of element `i` of `row`.
    pub(crate) fn param(&self, row: usize, i: usize) -> usize {
        self.param_offset(row) + i / self.inner
    }
}

/// The dtypes every path supports.
const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

/// Checks the input tensor: a supported dtype and at least `min_rank` dimensions.
pub(crate) fn check_input(op: &str, x: &Tensor, min_rank: usize, what: &str) -> Result<()> {
    if !DTYPES.contains(&x.dtype()) {
        bail!(
            "{op}: x has dtype {:?}; supported dtypes are f32, f16, bf16 and f64",
            x.dtype()
        )
    }
    if x.rank() < min_rank {
        bail!(
            "{op}: x must have rank >= {min_rank} ({what}), got shape {:?}",
            x.dims()
        )
    }
    Ok(())
}

/// Checks eps: finite and not negative, so that rstd is finite for any finite row.
pub(crate) fn check_eps(op: &str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("{op}: eps must be finite and >= 0, got {eps}")
    }
    Ok(())
}

/// Checks an affine parameter: shape `[len]`, the dtype and device of x.
pub(crate) fn check_param(op: &str, x: &Tensor, p: Option<&Tensor>, name: &str, len: usize, of: &str) -> Result<()> {
    let Some(p) = p else { return Ok(()) };
    if p.dims() != [len] {
        bail!(
            "{op}: {name} has shape {:?}, expected [{len}] ({of} of x, whose shape is {:?})",
            p.dims(),
            x.dims()
        )
    }
    if p.dtype() != x.dtype() {
        bail!(
            "{op}: {name} has dtype {:?} but x has dtype {:?}; they must match",
            p.dtype(),
            x.dtype()
        )
    }
    if !p.device().same_device(x.device()) {
        bail!(
            "{op}: {name} is on {:?} but x is on {:?}",
            p.device().location(),
            x.device().location()
        )
    }
    Ok(())
}

/// Runs the forward custom op (which records its backward) on checked inputs.
pub(crate) fn apply(spec: Spec, x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let op = NormFwd { spec };
    match (kernel_weight(weight, bias)?, bias) {
        (None, _) => x.apply_op1(op),
        (Some(w), None) => x.apply_op2(&w, op),
        (Some(w), Some(b)) => x.apply_op3(&w, &b.contiguous()?, op),
    }
}

/// The weight the kernels take: `weight` made contiguous, or a weight of ones when
/// only a bias is given (its gradient is then computed and dropped).
fn kernel_weight(weight: Option<&Tensor>, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    match (weight, bias) {
        (Some(w), _) => Ok(Some(w.contiguous()?)),
        (None, Some(b)) => Ok(Some(b.ones_like()?)),
        (None, None) => Ok(None),
    }
}

/// Gradients of a norm with respect to its input and its affine parameters, as
/// returned by [`layer_norm_backward`](crate::layer_norm_backward) and friends.
#[derive(Clone, Debug)]
pub struct NormGrads {
    /// dL/dx, of `x`'s shape and dtype, contiguous.
    pub dx: Tensor,
    /// dL/dweight, when a weight was given: shape `[N]` (`[C]` for GroupNorm).
    pub dweight: Option<Tensor>,
    /// dL/dbias, when a bias was given: shape `[N]` (`[C]` for GroupNorm).
    pub dbias: Option<Tensor>,
}

/// Runs the fused backward on checked inputs, outside autograd: the gradients that
/// `Tensor::backward` would give for the forward with the same arguments.
pub(crate) fn apply_backward(
    spec: Spec,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
) -> Result<NormGrads> {
    let op = spec.kind.name();
    if dy.dims() != x.dims() || dy.dtype() != x.dtype() || !dy.device().same_device(x.device()) {
        bail!(
            "{op}: dy must have the shape, dtype and device of x: dy is {:?} {:?} on {:?}, x is {:?} {:?} on {:?}",
            dy.dims(),
            dy.dtype(),
            dy.device().location(),
            x.dims(),
            x.dtype(),
            x.device().location()
        )
    }
    let x = x.contiguous()?;
    let w = kernel_weight(weight, bias)?;
    let (dx, dw, db) = backward(spec, &x, w.as_ref(), bias.is_some(), dy)?;
    Ok(NormGrads {
        dx,
        dweight: weight.and(dw),
        dbias: db,
    })
}

/// The forward op: x (and weight, bias) to y, same shape as x, contiguous.
pub(crate) struct NormFwd {
    pub(crate) spec: Spec,
}

/// The fused backward op: (x, [weight,] dy) to one flat tensor holding dx, then
/// dγ when there is a weight, then dβ when there is a bias.
pub(crate) struct NormBwd {
    pub(crate) spec: Spec,
    pub(crate) bias: bool,
}

/// The contiguous elements of a storage, or an error naming the op.
fn contiguous<'a, T: Elem>(spec: &Spec, s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{}: internal error: a non-contiguous input reached the kernel",
            spec.kind.name()
        ),
    }
}

type Arg<'a> = (&'a CpuStorage, &'a Layout);

/// Calls `$run::<T>` for the dtype of `$x`: the one `match` on the dtype of the CPU path.
macro_rules! dispatch {
    ($spec:expr, $x:expr, $run:ident($($arg:expr),*)) => {
        match $x.0 {
            CpuStorage::F32(_) => $run::<f32>($($arg),*),
            CpuStorage::F64(_) => $run::<f64>($($arg),*),
            CpuStorage::F16(_) => $run::<f16>($($arg),*),
            CpuStorage::BF16(_) => $run::<bf16>($($arg),*),
            _ => bail!("{}: unsupported dtype", $spec.kind.name()),
        }
    };
}

fn cpu_forward(spec: &Spec, x: Arg, w: Option<Arg>, b: Option<Arg>) -> Result<(CpuStorage, Shape)> {
    fn run<T: Elem>(spec: &Spec, x: Arg, w: Option<Arg>, b: Option<Arg>) -> Result<CpuStorage> {
        let xs = contiguous::<T>(spec, x.0, x.1)?;
        let ws = w.map(|(s, l)| contiguous::<T>(spec, s, l)).transpose()?;
        let bs = b.map(|(s, l)| contiguous::<T>(spec, s, l)).transpose()?;
        Ok(T::to_cpu_storage_owned(cpu::forward(spec, xs, ws, bs)))
    }
    Ok((dispatch!(spec, x, run(spec, x, w, b))?, x.1.shape().clone()))
}

fn cpu_backward(op: &NormBwd, x: Arg, w: Option<Arg>, dy: Arg) -> Result<(CpuStorage, Shape)> {
    fn run<T: Elem>(op: &NormBwd, x: Arg, w: Option<Arg>, dy: Arg) -> Result<CpuStorage> {
        let spec = &op.spec;
        let xs = contiguous::<T>(spec, x.0, x.1)?;
        let ws = w.map(|(s, l)| contiguous::<T>(spec, s, l)).transpose()?;
        let dys = contiguous::<T>(spec, dy.0, dy.1)?;
        let g = cpu::backward(spec, xs, ws, dys);
        let mut out = g.dx;
        if w.is_some() {
            out.extend_from_slice(&g.dw);
        }
        if op.bias {
            out.extend_from_slice(&g.db);
        }
        Ok(T::to_cpu_storage_owned(out))
    }
    let out = dispatch!(op.spec, x, run(op, x, w, dy))?;
    Ok((out, op.packed_shape(w.is_some(), x.1)))
}

impl NormBwd {
    /// Shape of the flat backward output: dx, then dγ and dβ when present.
    pub(crate) fn packed_shape(&self, weight: bool, x: &Layout) -> Shape {
        let np = self.spec.params();
        Shape::from(x.shape().elem_count() + if weight { np } else { 0 } + if self.bias { np } else { 0 })
    }
}

/// Runs the fused backward and splits its flat output into (dx, dγ, dβ).
fn backward(
    spec: Spec,
    x: &Tensor,
    w: Option<&Tensor>,
    bias: bool,
    dy: &Tensor,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let op = NormBwd { spec, bias };
    let flat = match w {
        None => x.apply_op2_no_bwd(&dy, &op)?,
        Some(w) => x.apply_op3_no_bwd(w, &dy, &op)?,
    };
    let (n, np) = (x.elem_count(), spec.params());
    let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
    let dw = w.map(|_| flat.narrow(0, n, np)).transpose()?;
    let db = bias
        .then(|| flat.narrow(0, n + if w.is_some() { np } else { 0 }, np))
        .transpose()?;
    Ok((dx, dw, db))
}

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

impl CustomOp1 for NormFwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_forward(&self.spec, (s, l), None, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        crate::cuda::forward(&self.spec, (s, l), None, None)
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(backward(self.spec, x, None, false, dy)?.0))
    }
}

impl CustomOp2 for NormFwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_forward(&self.spec, (s1, l1), Some((s2, l2)), None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        crate::cuda::forward(&self.spec, (s1, l1), Some((s2, l2)), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = backward(self.spec, x, Some(w), false, dy)?;
        Ok((Some(dx), dw))
    }
}

impl CustomOp3 for NormFwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
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
        cpu_forward(&self.spec, (s1, l1), Some((s2, l2)), Some((s3, l3)))
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
        crate::cuda::forward(&self.spec, (s1, l1), Some((s2, l2)), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = backward(self.spec, x, Some(w), true, dy)?;
        Ok((Some(dx), dw, db))
    }
}

impl CustomOp2 for NormBwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_backward(self, (s1, l1), None, (s2, l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        crate::cuda::backward(self, (s1, l1), None, (s2, l2))
    }
}

impl CustomOp3 for NormBwd {
    fn name(&self) -> &'static str {
        self.spec.kind.name()
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
        cpu_backward(self, (s1, l1), Some((s2, l2)), (s3, l3))
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
        crate::cuda::backward(self, (s1, l1), Some((s2, l2)), (s3, l3))
    }
}
