//! The CUDA path: launch code for this crate's kernels (kernels/, compiled by
//! build.rs). Each call picks its kernels' path and grid on the host, launches them on
//! the stream of the tensor's candle device, and returns any failure as a candle error.
//!
//! `row` launches LayerNorm/RMSNorm, `group` GroupNorm (both layouts), `batch`
//! BatchNorm; their backwards all end in the shared dγ/dβ reduction below. `module`
//! loads the kernels, `launch` holds the constants the kernels share with this code.

/// Declares the constants of `launch.rs` for the launch code (build.rs declares the same
/// list as the kernels' header).
macro_rules! launch_constants {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[doc = $doc])* pub(super) const $name: $ty = $value;)*
    };
}

mod batch;
mod group;
mod launch;
mod module;
mod row;

use crate::check::{self, dispatch_dtype};
use crate::custom_op::Arg;
use crate::spec::{Affine, Kind, Spec};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, Result};
use half::{bf16, f16};
use module::{function, CudaElem};

/// A size as the kernels' `int`, or an error naming the op.
fn int(spec: &Spec, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).or_else(|_| bail!("{}: {what} = {v} is too large for the CUDA kernels", spec.name()))
}

fn cfg(grid: (usize, usize), block: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// The view of a contiguous input's elements, and whether it starts 16-byte aligned
/// (candle's allocations are; an offset view may not be).
fn view<'a, T: CudaElem>(spec: &Spec, (s, l): Arg<'a, CudaStorage>) -> Result<(CudaView<'a, T>, bool)> {
    let range = check::contiguous_range(spec.name(), l)?;
    let aligned = (range.start * std::mem::size_of::<T>()).is_multiple_of(16);
    Ok((s.as_cuda_slice::<T>()?.slice(range), aligned))
}

/// The forward's inputs on the device: x, and the weight and bias when given.
type FwdIns<'a, 'b, T> = (
    &'b CudaView<'a, T>,
    &'b Option<CudaView<'a, T>>,
    &'b Option<CudaView<'a, T>>,
);

/// The fused residual add's forward inputs on the device: x, the residual, and the
/// weight and bias when given.
type AddIns<'a, 'b, T> = (
    &'b CudaView<'a, T>,
    &'b CudaView<'a, T>,
    &'b Option<CudaView<'a, T>>,
    &'b Option<CudaView<'a, T>>,
);

/// The backward's inputs on the device: x, the weight when given, and dy.
type BwdIns<'a, 'b, T> = (&'b CudaView<'a, T>, &'b Option<CudaView<'a, T>>, &'b CudaView<'a, T>);

/// Pushes a view, or a null pointer when there is none.
fn push_opt<'a, T>(lb: &mut LaunchArgs<'a>, v: &'a Option<CudaView<'a, T>>, null: &'a u64) {
    match v {
        Some(v) => lb.arg(v),
        None => lb.arg(null),
    };
}

/// Forward on the GPU: y, laid out as x, then h with a `residual` (the fused
/// residual add, LayerNorm and RMSNorm only).
pub(crate) fn forward(
    spec: &Spec,
    x: Arg<CudaStorage>,
    residual: Option<Arg<CudaStorage>>,
    w: Option<Arg<CudaStorage>>,
    b: Option<Arg<CudaStorage>>,
) -> Result<CudaStorage> {
    fn run<T: CudaElem>(
        spec: &Spec,
        x: Arg<CudaStorage>,
        [residual, w, b]: [Option<Arg<CudaStorage>>; 3],
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let (xv, mut aligned) = view::<T>(spec, x)?;
        let [rv, wv, bv] = [residual, w, b].map(|a| a.map(|a| view::<T>(spec, a)).transpose());
        let [rv, wv, bv] = [rv?, wv?, bv?].map(|v| {
            aligned &= v.as_ref().is_none_or(|v| v.1);
            v.map(|v| v.0)
        });
        let n = xv.len();
        // SAFETY: every element of y (and h) is written by the kernels below before it
        // is read.
        let mut out = unsafe { dev.alloc::<T>(spec.outputs()) }?;
        if n > 0 {
            let (mut y, mut h) = out.split_at_mut(n);
            match (spec.kind, rv) {
                (Kind::Group | Kind::GroupLast, None) => group::forward(spec, dev, (&xv, &wv, &bv), &mut y, aligned)?,
                (Kind::Layer | Kind::Rms, None) => row::forward(spec, dev, (&xv, &wv, &bv), &mut y, aligned)?,
                (Kind::Layer | Kind::Rms, Some(rv)) => {
                    aligned &= (n * std::mem::size_of::<T>()).is_multiple_of(16);
                    row::forward_add(spec, dev, (&xv, &rv, &wv, &bv), (&mut h, &mut y), aligned)?
                }
                _ => bail!("{}: internal error: no CUDA kernel for this input", spec.name()),
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], run(spec, x, [residual, w, b]))
}

/// BatchNorm's forward on the GPU: y, and in training (`running` is `None`) each
/// channel's batch mean, then its biased variance (2·C elements of x's dtype); in eval,
/// y normalized with the running mean and variance, and no statistics.
pub(crate) fn batch_forward(
    spec: &Spec,
    x: Arg<CudaStorage>,
    [w, b]: [Option<Arg<CudaStorage>>; 2],
    running: Option<[Arg<CudaStorage>; 2]>,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    fn run<T: CudaElem>(
        spec: &Spec,
        x: Arg<CudaStorage>,
        [w, b]: [Option<Arg<CudaStorage>>; 2],
        running: Option<[Arg<CudaStorage>; 2]>,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        let dev = &x.0.device;
        // The kernels read γ and β one at a time: only x's alignment matters.
        let (xv, aligned) = view::<T>(spec, x)?;
        let [wv, bv] = [w, b].map(|a| a.map(|a| view::<T>(spec, a)).transpose());
        let [wv, bv] = [wv?.map(|v| v.0), bv?.map(|v| v.0)];
        let running = running_views::<T>(spec, running)?;
        let n = xv.len();
        // SAFETY: every element of y is written by the forward kernel below, which runs
        // whenever y has elements.
        let mut y = unsafe { dev.alloc::<T>(n) }?;
        let mut stats = match running {
            None => Some(dev.alloc_zeros::<T>(2 * spec.groups)?),
            Some(_) => None,
        };
        if n > 0 {
            batch::forward(
                spec,
                dev,
                (&xv, &wv, &bv),
                &running,
                &mut y.as_view_mut(),
                stats.as_mut(),
                aligned,
            )?;
        }
        let wrap = |s| CudaStorage::wrap_cuda_slice(s, dev.clone());
        Ok((wrap(y), stats.map(wrap)))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], run(spec, x, [w, b], running))
}

/// The views of BatchNorm's running mean and variance, when given.
fn running_views<'a, T: CudaElem>(
    spec: &Spec,
    running: Option<[Arg<'a, CudaStorage>; 2]>,
) -> Result<Option<[CudaView<'a, T>; 2]>> {
    running
        .map(|[m, v]| Ok([view::<T>(spec, m)?.0, view::<T>(spec, v)?.0]))
        .transpose()
}

/// Per-block (rows), per-sample (groups) or per-slice (BatchNorm) f32 partials of dγ
/// and dβ, `[count, N]`.
struct Partials {
    dg: CudaSlice<f32>,
    db: CudaSlice<f32>,
    count: usize,
}

/// Backward on the GPU: one flat storage holding dx, then dγ when `want.weight`, then
/// dβ when `want.bias`, as the CPU path returns it. With `dh` (the fused residual add),
/// `x` is h and dh is added to dx.
pub(crate) fn backward(
    spec: &Spec,
    want: Affine,
    x: Arg<CudaStorage>,
    w: Option<Arg<CudaStorage>>,
    dy: Arg<CudaStorage>,
    dh: Option<Arg<CudaStorage>>,
) -> Result<CudaStorage> {
    grads(spec, want, [x, dy], [w, dh], None)
}

/// BatchNorm's backward on the GPU, laid out as [`backward`]'s, with the batch's
/// statistics (training, `running` is `None`) or the running mean and variance (eval).
pub(crate) fn batch_backward(
    spec: &Spec,
    want: Affine,
    [x, dy]: [Arg<CudaStorage>; 2],
    w: Option<Arg<CudaStorage>>,
    running: Option<[Arg<CudaStorage>; 2]>,
) -> Result<CudaStorage> {
    grads(spec, want, [x, dy], [w, None], running)
}

/// [`backward`] and [`batch_backward`].
fn grads(
    spec: &Spec,
    want: Affine,
    [x, dy]: [Arg<CudaStorage>; 2],
    [w, dh]: [Option<Arg<CudaStorage>>; 2],
    running: Option<[Arg<CudaStorage>; 2]>,
) -> Result<CudaStorage> {
    fn run<T: CudaElem>(
        spec: &Spec,
        want: Affine,
        [x, dy]: [Arg<CudaStorage>; 2],
        [w, dh]: [Option<Arg<CudaStorage>>; 2],
        running: Option<[Arg<CudaStorage>; 2]>,
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let (xv, xa) = view::<T>(spec, x)?;
        let (dyv, dya) = view::<T>(spec, dy)?;
        let [wv, dhv] = [w, dh].map(|a| a.map(|a| view::<T>(spec, a)).transpose());
        let mut aligned = xa && dya;
        let [wv, dhv] = [wv?, dhv?].map(|v| {
            aligned &= v.as_ref().is_none_or(|v| v.1);
            v.map(|v| v.0)
        });
        let (len, total) = (xv.len(), spec.packed_grads(want));
        if len == 0 {
            // dγ/dβ of an empty input are zeros.
            return Ok(CudaStorage::wrap_cuda_slice(dev.alloc_zeros::<T>(total)?, dev.clone()));
        }
        // SAFETY: dx is written by the backward kernels below, and dγ/dβ, present only
        // when wanted, by the dparams kernel, launched whenever one of them is.
        let mut out = unsafe { dev.alloc::<T>(total) }?;
        let (mut dx, mut params) = out.split_at_mut(len);
        let running = running_views::<T>(spec, running)?;
        let ins = (&xv, &wv, &dyv);
        let partials = match (spec.kind, &dhv) {
            (Kind::Group | Kind::GroupLast, None) => group::backward(spec, dev, ins, &mut dx, aligned)?,
            (Kind::Layer | Kind::Rms, dh) => row::backward(spec, dev, ins, dh, &mut dx, aligned)?,
            (Kind::Batch, None) => {
                let sums = want.weight || want.bias;
                batch::backward(spec, dev, ins, &running, sums, &mut dx, aligned)?
            }
            _ => bail!("{}: internal error: no CUDA kernel for this input", spec.name()),
        };
        if want.weight || want.bias {
            reduce_params::<T>(spec, dev, want, &partials, &mut params)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], run(spec, want, [x, dy], [w, dh], running))
}

/// Sums the partials in a fixed order into dγ (the first N elements of `params`, with
/// a weight) and dβ (the N after, with a bias).
fn reduce_params<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    want: Affine,
    p: &Partials,
    params: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let np = spec.params();
    let (mut dw, mut db) = params.split_at_mut(if want.weight { np } else { 0 });
    let (count, n, null) = (int(spec, "partials", p.count)?, int(spec, "parameters", np)?, 0u64);
    let f = function::<T>(dev, spec.kind, "dparams")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(&p.dg).arg(&p.db);
    if want.weight {
        lb.arg(&mut dw);
    } else {
        lb.arg(&null);
    }
    if want.bias {
        lb.arg(&mut db);
    } else {
        lb.arg(&null);
    }
    lb.arg(&count).arg(&n);
    // SAFETY: matches *_dparams (dg, db, dw, dbias, P, N): the partials hold P·N floats,
    // dw and dbias are N elements of the output each, or null when not wanted.
    unsafe { lb.launch(cfg((np.div_ceil(32), 1), launch::DPARAMS_THREADS, 0)) }.w()?;
    Ok(())
}
