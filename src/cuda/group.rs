//! GroupNorm launches (kernels/group_norm.cu), channels-first and channels-last: each
//! group is split over enough blocks to fill the GPU, a statistics kernel first, then
//! the forward or the two backward kernels.

use super::launch::{BLOCK, GVEC};
use super::module::{function, sm_count, CudaElem};
use super::{cfg, int, push_opt, BwdIns, FwdIns, Partials};
use crate::spec::{Kind, Spec};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

/// Elements a GroupNorm block should own at least when a group is split.
const MIN_SLICE: usize = 2048;

/// The `GroupShape` struct of kernels/group_norm.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct GroupShape {
    rows: i32,
    k: i32,
    s: i32,
    cpg: i32,
    g: i32,
    c: i32,
    splits: i32,
    chunk: i32,
}

// SAFETY: a #[repr(C)] struct of eight i32, laid out as the kernels' `cn::GroupShape`.
unsafe impl DeviceRepr for GroupShape {}

/// GroupNorm launch shape: each group cut into slices by [`slice_len`]. Vectors stay in
/// one channel (channels-first) or in one row of a group (channels-last).
fn group_shape<T>(spec: &Spec, dev: &CudaDevice, aligned: bool) -> Result<(GroupShape, i32)> {
    let v = 16 / std::mem::size_of::<T>();
    let run = if spec.kind == Kind::GroupLast {
        spec.params_per_row
    } else {
        spec.inner
    };
    let vec = aligned && run.is_multiple_of(v);
    let chunk = slice_len(dev, spec.rows, spec.len, if vec { v } else { 1 })?;
    let g = GroupShape {
        rows: int(spec, "B·G", spec.rows)?,
        k: int(spec, "group size", spec.len)?,
        s: int(spec, "spatial size", spec.inner)?,
        cpg: int(spec, "channels per group", spec.params_per_row)?,
        g: int(spec, "groups", spec.groups)?,
        c: int(spec, "channels", spec.params())?,
        splits: int(spec, "splits", spec.len.div_ceil(chunk))?,
        chunk: int(spec, "slice", chunk)?,
    };
    int(spec, "element count", spec.rows * spec.len)?;
    // The kernels' int indices run up to a slice, then a block's stride, past K.
    int(spec, "group size, with a slice's margin", spec.len + chunk + BLOCK * v)?;
    Ok((g, if vec { GVEC } else { 0 }))
}

/// The elements of each slice when `rows` reductions of `len` elements are each cut
/// into slices, so that about four blocks per SM have work, each slice at least
/// [`MIN_SLICE`] elements and a multiple of `step` (a vector width); the last slice of
/// a row may be shorter. GroupNorm's groups and BatchNorm's channels are split so.
pub(super) fn slice_len(dev: &CudaDevice, rows: usize, len: usize, step: usize) -> Result<usize> {
    let want = (4 * sm_count(dev)?).div_ceil(rows.max(1));
    let splits = want.clamp(1, len.div_ceil(MIN_SLICE).max(1)).min(65535);
    Ok(len.div_ceil(splits).next_multiple_of(step))
}

/// GroupNorm's first kernel, shared by forward and backward: the launch shape and the
/// per-slice partial statistics of every group (rows·splits·3 floats).
fn group_stats<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    xv: &CudaView<'_, T>,
    aligned: bool,
) -> Result<(GroupShape, i32, CudaSlice<f32>)> {
    let (g, flags) = group_shape::<T>(spec, dev, aligned)?;
    let part = dev.alloc_zeros::<f32>(spec.rows * g.splits as usize * 3)?;
    let f = function::<T>(dev, spec.kind, "stats")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv).arg(&part).arg(&g).arg(&flags);
    // SAFETY: the argument list matches group_norm_stats (x, part, g, flags); part holds
    // rows·splits·3 floats, x holds rows·K elements.
    unsafe { lb.launch(cfg((spec.rows, g.splits as usize), BLOCK, 0)) }.w()?;
    Ok((g, flags, part))
}

/// The forward: y for every element of x.
pub(super) fn forward<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, wv, bv): FwdIns<'_, '_, T>,
    y: &mut CudaViewMut<'_, T>,
    aligned: bool,
) -> Result<()> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let (g, flags, part) = group_stats::<T>(spec, dev, xv, aligned)?;
    let grid = (spec.rows, g.splits as usize);
    let f = function::<T>(dev, spec.kind, "fwd")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    push_opt(&mut lb, bv, &null);
    lb.arg(&part).arg(y).arg(&g).arg(&eps).arg(&flags);
    // SAFETY: matches group_norm_fwd (x, w, b, part, y, g, eps, flags); w and b are
    // [C] or null, y has as many elements as x.
    unsafe { lb.launch(cfg(grid, BLOCK, 0)) }.w()?;
    Ok(())
}

/// Channels-last backward sums: the S spatial rows of each of the `b` samples cut into
/// R slices of `rows` rows, (R, rows), so that about four blocks per SM have work.
fn row_slices(spec: &Spec, dev: &CudaDevice, b: usize) -> Result<(usize, usize)> {
    let s = spec.inner.max(1);
    let rows = s.div_ceil((4 * sm_count(dev)?).div_ceil(b).clamp(1, s));
    Ok((s.div_ceil(rows), rows))
}

/// The backward: per-(sample, channel) sums, then dx; the sums are the dγ/dβ partials,
/// one row per sample (channels-first) or per slice of a sample's spatial rows
/// (channels-last, whose sums kernel reads whole rows of channels).
pub(super) fn backward<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, wv, dyv): BwdIns<'_, '_, T>,
    dx: &mut CudaViewMut<'_, T>,
    aligned: bool,
) -> Result<Partials> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let np = spec.params();
    let stream = dev.cuda_stream();
    let (g, flags, part) = group_stats::<T>(spec, dev, xv, aligned)?;
    let b = spec.rows / spec.groups;
    let last = spec.kind == Kind::GroupLast;
    let (r, rows) = if last {
        row_slices(spec, dev, b)?
    } else {
        (1, spec.inner)
    };
    let (s1, s2) = (dev.alloc_zeros::<f32>(b * r * np)?, dev.alloc_zeros::<f32>(b * r * np)?);
    let f = function::<T>(dev, spec.kind, "bwd_sums")?;
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv).arg(dyv).arg(&part).arg(&s1).arg(&s2).arg(&g).arg(&eps);
    let (ri, rows_i) = (int(spec, "row slices", r)?, int(spec, "rows per slice", rows)?);
    if last {
        lb.arg(&ri).arg(&rows_i);
        // SAFETY: matches group_norm_channels_last_bwd_sums (x, dy, part, s1, s2, g, eps,
        // R, rows); one block per (b, slice), s1 and s2 hold B·R·C floats.
        unsafe { lb.launch(cfg((b, r), BLOCK, 0)) }.w()?;
    } else {
        lb.arg(&flags);
        // SAFETY: matches group_norm_bwd_sums (x, dy, part, s1, s2, g, eps, flags); one
        // block per (b, c), s1 and s2 hold B·C floats.
        unsafe { lb.launch(cfg((b * np, 1), BLOCK, 0)) }.w()?;
    }
    let f = function::<T>(dev, spec.kind, "bwd_dx")?;
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    lb.arg(dyv)
        .arg(&part)
        .arg(&s1)
        .arg(&s2)
        .arg(dx)
        .arg(&g)
        .arg(&eps)
        .arg(&flags);
    if last {
        lb.arg(&ri);
    }
    // SAFETY: matches group_norm[_channels_last]_bwd_dx (x, w, dy, part, s1, s2, dx, g,
    // eps, flags[, R]); s1 and s2 as the sums kernel wrote them, dx the first B·C·S
    // elements of the output.
    unsafe { lb.launch(cfg((spec.rows, g.splits as usize), BLOCK, 0)) }.w()?;
    Ok(Partials {
        dg: s1,
        db: s2,
        count: b * r,
    })
}
