//! BatchNorm launches (kernels/batch_norm.cu): each channel is cut into slices, a block
//! per (channel, slice), so that the GPU fills even with few channels. Training runs a
//! statistics kernel first; eval reads the running mean and variance instead.

use super::group::slice_len;
use super::launch::{BLOCK, BVEC};
use super::module::{function, CudaElem};
use super::{cfg, int, push_opt, BwdIns, FwdIns, Partials};
use crate::spec::Spec;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchArgs, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

/// The `BatchShape` struct of kernels/batch_norm.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct BatchShape {
    c: i32,
    s: i32,
    k: i32,
    splits: i32,
    chunk: i32,
}

// SAFETY: a #[repr(C)] struct of five i32, laid out as the kernels' `cn::BatchShape`.
unsafe impl DeviceRepr for BatchShape {}

/// The running mean and variance on the device (eval), or `None` (training).
pub(super) type Running<'a, T> = Option<[CudaView<'a, T>; 2]>;

/// A launch: the shape the kernels read, the vector flag, and the grid (C, splits).
struct Launch {
    shape: BatchShape,
    flags: i32,
    grid: (usize, usize),
}

/// The launch for `spec` (rows = B·C, len = S, groups = C; spec.rs): each channel's
/// B·S elements cut into slices by [`slice_len`], 16-byte vectors when every pointer is
/// aligned and S is a multiple of the width.
fn launch<T>(spec: &Spec, dev: &CudaDevice, aligned: bool) -> Result<Launch> {
    let (c, s) = (spec.groups, spec.len);
    let k = spec.rows / c * s;
    let v = 16 / std::mem::size_of::<T>();
    let vec = aligned && s.is_multiple_of(v);
    let chunk = slice_len(dev, c, k, if vec { v } else { 1 })?;
    let splits = k.div_ceil(chunk);
    int(spec, "element count", spec.rows * spec.len)?;
    // The kernels' int indices run up to a slice, then a block's stride, past K.
    int(spec, "values per channel, with a slice's margin", k + chunk + BLOCK * v)?;
    let shape = BatchShape {
        c: int(spec, "channels", c)?,
        s: int(spec, "spatial size", s)?,
        k: int(spec, "values per channel", k)?,
        splits: int(spec, "splits", splits)?,
        chunk: int(spec, "slice", chunk)?,
    };
    Ok(Launch {
        shape,
        flags: if vec { BVEC } else { 0 },
        grid: (c, splits),
    })
}

/// Training's first kernel, shared by forward and backward: the partial statistics
/// (count, mean, M2) of every slice of every channel, C·splits·3 floats; none in eval,
/// whose statistics are the `running` ones.
fn batch_stats<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    xv: &CudaView<'_, T>,
    l: &Launch,
    running: &Running<'_, T>,
) -> Result<Option<CudaSlice<f32>>> {
    if running.is_some() {
        return Ok(None);
    }
    let part = dev.alloc_zeros::<f32>(l.grid.0 * l.grid.1 * 3)?;
    let f = function::<T>(dev, spec.kind, "stats")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv).arg(&part).arg(&l.shape).arg(&l.flags);
    // SAFETY: matches batch_norm_stats (x, part, s, flags); part holds C·splits·3
    // floats, one (count, mean, M2) per block of the grid; x holds B·C·S elements.
    unsafe { lb.launch(cfg(l.grid, BLOCK, 0)) }.w()?;
    Ok(Some(part))
}

/// Pushes the statistics the kernels read: training's partials, or null, then the
/// running mean and variance, or two nulls.
fn push_stats<'a, T>(
    lb: &mut LaunchArgs<'a>,
    part: &'a Option<CudaSlice<f32>>,
    running: &'a Running<'a, T>,
    null: &'a u64,
) {
    match part {
        Some(p) => lb.arg(p),
        None => lb.arg(null),
    };
    match running {
        Some([m, v]) => lb.arg(m).arg(v),
        None => lb.arg(null).arg(null),
    };
}

/// The kernel of `stage`, eval's variant with running statistics.
fn stage<T: CudaElem>(spec: &Spec, dev: &CudaDevice, running: bool, stage: &str) -> Result<CudaFunction> {
    match running {
        true => function::<T>(dev, spec.kind, &format!("eval_{stage}")),
        false => function::<T>(dev, spec.kind, stage),
    }
}

/// The forward: y for every element of x, and in training each channel's batch mean
/// then biased variance in `stats` (2·C elements).
pub(super) fn forward<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, wv, bv): FwdIns<'_, '_, T>,
    running: &Running<'_, T>,
    y: &mut CudaViewMut<'_, T>,
    stats: Option<&mut CudaSlice<T>>,
    aligned: bool,
) -> Result<()> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let l = launch::<T>(spec, dev, aligned)?;
    let part = batch_stats::<T>(spec, dev, xv, &l, running)?;
    let f = stage::<T>(spec, dev, running.is_some(), "fwd")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    push_opt(&mut lb, bv, &null);
    push_stats(&mut lb, &part, running, &null);
    lb.arg(y);
    let mut mv = stats.map(|s| s.split_at_mut(spec.groups));
    match &mut mv {
        Some((m, v)) => lb.arg(m).arg(v),
        None => lb.arg(&null).arg(&null),
    };
    lb.arg(&l.shape).arg(&eps).arg(&l.flags);
    // SAFETY: matches batch_norm[_eval]_fwd (x, w, b, part, rmean, rvar, y, mean, var,
    // s, eps, flags); w, b, rmean, rvar and mean, var (training's statistics) are [C]
    // or null, part is as batch_stats wrote it (training) or null (eval), and y has as
    // many elements as x.
    unsafe { lb.launch(cfg(l.grid, BLOCK, 0)) }.w()?;
    Ok(())
}

/// The backward: dx, and the per-slice sums Σ dy·x̂ and Σ dy of each channel, which
/// are the dγ/dβ partials (`[splits, C]`). Training needs the sums for dx; eval's dx
/// does not, so there they are computed only when `sums` asks for dγ or dβ.
pub(super) fn backward<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, wv, dyv): BwdIns<'_, '_, T>,
    running: &Running<'_, T>,
    sums: bool,
    dx: &mut CudaViewMut<'_, T>,
    aligned: bool,
) -> Result<Partials> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let l = launch::<T>(spec, dev, aligned)?;
    let eval = running.is_some();
    let part = batch_stats::<T>(spec, dev, xv, &l, running)?;
    let len = l.grid.0 * l.grid.1;
    let (s1, s2) = (dev.alloc_zeros::<f32>(len)?, dev.alloc_zeros::<f32>(len)?);
    let stream = dev.cuda_stream();
    if !eval || sums {
        let f = stage::<T>(spec, dev, eval, "bwd_sums")?;
        let mut lb = stream.launch_builder(&f);
        lb.arg(xv).arg(dyv);
        push_stats(&mut lb, &part, running, &null);
        lb.arg(&s1).arg(&s2).arg(&l.shape).arg(&eps).arg(&l.flags);
        // SAFETY: matches batch_norm[_eval]_bwd_sums (x, dy, part, rmean, rvar, s1, s2,
        // s, eps, flags); s1 and s2 hold splits·C floats, one per block of the grid.
        unsafe { lb.launch(cfg(l.grid, BLOCK, 0)) }.w()?;
    }
    let f = stage::<T>(spec, dev, eval, "bwd_dx")?;
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    lb.arg(dyv);
    push_stats(&mut lb, &part, running, &null);
    lb.arg(&s1).arg(&s2).arg(dx).arg(&l.shape).arg(&eps).arg(&l.flags);
    // SAFETY: matches batch_norm[_eval]_bwd_dx (x, w, dy, part, rmean, rvar, s1, s2,
    // dx, s, eps, flags); training's s1 and s2 are as the sums kernel wrote them (eval
    // reads neither), and dx is the first B·C·S elements of the output.
    unsafe { lb.launch(cfg(l.grid, BLOCK, 0)) }.w()?;
    Ok(Partials {
        dg: s1,
        db: s2,
        count: l.grid.1,
    })
}
