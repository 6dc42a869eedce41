//! The CPU path: one generic forward and one generic backward for every norm, over
//! f32, f64, f16 and bf16.
//!
//! Every norm is a set of rows of `len` elements (see [`Spec`]). Rows are spread over
//! rayon tasks (`rows`). When there are too few rows to keep every core busy, or a row
//! is too long for one task, each row is cut into chunks whose partial results are
//! merged in chunk order.
//!
//! Every pass over a row walks it in blocks (`blocks`). f16 and bf16 are converted to
//! f32 (`convert`): the row-wise forward and backward widen each row (or chunk) once
//! into a buffer their task keeps, other passes block by block into stack buffers. A
//! row is read from memory once and then served from L1/L2. The moments of each block
//! are taken in two passes over the block (never E[x²] − mean²) and merged across
//! blocks and chunks with Chan's formula (`reduce`).
//!
//! The forward (`forward`) makes two passes over a row, moments then y. f32 and f64
//! collect y into memory written once; f16/bf16 and the fused residual add write it
//! in place into an output zeroed by every thread (`alloc`). The backward
//! (`backward`) makes two passes too, the first reading x and dy from memory, the
//! second from cache.
//!
//! Channels-last GroupNorm, whose groups are column blocks rather than rows, has its
//! own passes over tiles of rows (`channels_last`); BatchNorm gathers its statistics
//! per channel across rows (`batch`) and then runs the common passes.
//!
//! Each task runs through `simd::run`, compiled for AVX2 and AVX-512 as well as the
//! baseline, at the widest level the CPU has. Sums run over four groups of lanes folded
//! in a fixed order, and the dγ/dβ partials are per task and reduced in task order:
//! results are identical from run to run, on any number of threads.

mod alloc;
mod backward;
mod batch;
mod blocks;
mod channels_last;
mod convert;
mod elem;
mod forward;
mod reduce;
mod rows;
pub(crate) mod simd;

use crate::check::{self, dispatch_dtype};
use crate::custom_op::Arg;
use crate::spec::{Affine, Kind, Spec};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Result};
use elem::Elem;
use half::{bf16, f16};

/// The elements of a contiguous input.
fn slice<'a, T: Elem>(spec: &Spec, (s, l): Arg<'a, CpuStorage>) -> Result<&'a [T]> {
    Ok(&T::cpu_storage_as_slice(s)?[check::contiguous_range(spec.name(), l)?])
}

/// The forward of `spec`: y, laid out as x, then h with a `residual`.
pub(crate) fn forward(
    spec: &Spec,
    x: Arg<CpuStorage>,
    residual: Option<Arg<CpuStorage>>,
    w: Option<Arg<CpuStorage>>,
    b: Option<Arg<CpuStorage>>,
) -> Result<CpuStorage> {
    fn run<T: Elem>(
        spec: &Spec,
        x: Arg<CpuStorage>,
        [residual, w, b]: [Option<Arg<CpuStorage>>; 3],
    ) -> Result<CpuStorage> {
        let [residual, w, b] = [residual, w, b].map(|a| a.map(|a| slice::<T>(spec, a)).transpose());
        let (x, residual, w, b) = (slice::<T>(spec, x)?, residual?, w?, b?);
        let y = match spec.kind {
            Kind::GroupLast => channels_last::forward(spec, x, w, b),
            _ => forward::forward(spec, x, residual, w, b),
        };
        Ok(T::to_cpu_storage_owned(y))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "the CPU", [F32 => f32, F64 => f64, F16 => f16, BF16 => bf16], run(spec, x, [residual, w, b]))
}

/// The fused backward of `spec`: dx, then dγ when `want.weight`, then dβ when
/// `want.bias`, in one flat storage. With `dh` (the fused residual add), `x` is h and
/// dh is added to dx.
pub(crate) fn backward(
    spec: &Spec,
    want: Affine,
    x: Arg<CpuStorage>,
    w: Option<Arg<CpuStorage>>,
    dy: Arg<CpuStorage>,
    dh: Option<Arg<CpuStorage>>,
) -> Result<CpuStorage> {
    fn run<T: Elem>(
        spec: &Spec,
        want: Affine,
        [x, dy]: [Arg<CpuStorage>; 2],
        [w, dh]: [Option<Arg<CpuStorage>>; 2],
    ) -> Result<CpuStorage> {
        let [w, dh] = [w, dh].map(|a| a.map(|a| slice::<T>(spec, a)).transpose());
        let (x, w, dy, dh) = (slice::<T>(spec, x)?, w?, slice::<T>(spec, dy)?, dh?);
        let out = match spec.kind {
            Kind::GroupLast => channels_last::backward(spec, want, (x, w, dy)),
            _ => backward::backward(spec, want, (x, w, dy, dh), backward::RowGrads::Computed),
        };
        Ok(T::to_cpu_storage_owned(out))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "the CPU", [F32 => f32, F64 => f64, F16 => f16, BF16 => bf16], run(spec, want, [x, dy], [w, dh]))
}

/// BatchNorm's forward: y, and in training (`running` is `None`) each channel's batch
/// mean, then its biased variance (2·C elements); in eval, y normalized with the running
/// mean and variance, and no statistics.
pub(crate) fn batch_forward(
    spec: &Spec,
    x: Arg<CpuStorage>,
    [w, b]: [Option<Arg<CpuStorage>>; 2],
    running: Option<[Arg<CpuStorage>; 2]>,
) -> Result<(CpuStorage, CpuStorage)> {
    fn run<T: Elem>(
        spec: &Spec,
        x: Arg<CpuStorage>,
        [w, b]: [Option<Arg<CpuStorage>>; 2],
        running: Option<[Arg<CpuStorage>; 2]>,
    ) -> Result<(CpuStorage, CpuStorage)> {
        let [w, b] = [w, b].map(|a| a.map(|a| slice::<T>(spec, a)).transpose());
        let source = source::<T>(spec, running)?;
        let (y, stats) = batch::forward(spec, slice::<T>(spec, x)?, w?, b?, source);
        Ok((T::to_cpu_storage_owned(y), T::to_cpu_storage_owned(stats)))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "the CPU", [F32 => f32, F64 => f64, F16 => f16, BF16 => bf16], run(spec, x, [w, b], running))
}

/// BatchNorm's backward, as [`backward`] lays it out, with batch statistics (training,
/// `running` is `None`) or running ones (eval).
pub(crate) fn batch_backward(
    spec: &Spec,
    want: Affine,
    [x, dy]: [Arg<CpuStorage>; 2],
    w: Option<Arg<CpuStorage>>,
    running: Option<[Arg<CpuStorage>; 2]>,
) -> Result<CpuStorage> {
    fn run<T: Elem>(
        spec: &Spec,
        want: Affine,
        [x, dy]: [Arg<CpuStorage>; 2],
        w: Option<Arg<CpuStorage>>,
        running: Option<[Arg<CpuStorage>; 2]>,
    ) -> Result<CpuStorage> {
        let w = w.map(|a| slice::<T>(spec, a)).transpose()?;
        let ins = (slice::<T>(spec, x)?, w, slice::<T>(spec, dy)?);
        let out = batch::backward(spec, want, ins, source::<T>(spec, running)?);
        Ok(T::to_cpu_storage_owned(out))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "the CPU", [F32 => f32, F64 => f64, F16 => f16, BF16 => bf16], run(spec, want, [x, dy], w, running))
}

/// The statistics BatchNorm runs with: the batch's, or the running mean and variance.
fn source<'a, T: Elem>(spec: &Spec, running: Option<[Arg<'a, CpuStorage>; 2]>) -> Result<batch::Source<'a, T>> {
    Ok(match running {
        None => batch::Source::Batch,
        Some([m, v]) => batch::Source::Running(slice::<T>(spec, m)?, slice::<T>(spec, v)?),
    })
}
