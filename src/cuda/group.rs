//! GroupNorm launches (kernels/group_norm.cu), channels-first and channels-last: each
//! group is split over enough blocks to fill the GPU, a statistics kernel first, then
//! the forward or the two backward kernels.

use super::launch::{BLOCK, GVEC};
use super::plan::{entry, int, Executor, KArg, Launch};
use super::{Bwd, Fwd, Partials};
use crate::spec::{Kind, Spec};
use candle_core::{DType, Result};

/// Elements a GroupNorm block should own at least when a group is split.
const MIN_SLICE: usize = 2048;

/// The `GroupShape` struct of kernels/group_norm.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupShape {
    rows: i32,
    k: i32,
    s: i32,
    cpg: i32,
    g: i32,
    c: i32,
    splits: i32,
    chunk: i32,
}

/// GroupNorm launch shape for `elem`-byte elements on a device of `sm` SMs: each group
/// cut into slices by [`slice_len`]. Vectors stay in one channel (channels-first) or
/// in one row of a group (channels-last). Returns the shape and the kernels' flags.
pub(super) fn group_shape(spec: &Spec, elem: usize, aligned: bool, sm: usize) -> Result<(GroupShape, i32)> {
    let v = 16 / elem;
    let run = if spec.kind == Kind::GroupLast {
        spec.params_per_row
    } else {
        spec.inner
    };
    let vec = aligned && run.is_multiple_of(v);
    let chunk = slice_len(sm, spec.rows, spec.len, if vec { v } else { 1 });
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
/// into slices, so that about four blocks per SM (of `sm`) have work, each slice at
/// least [`MIN_SLICE`] elements and a multiple of `step` (a vector width); the last
/// slice of a row may be shorter. GroupNorm's groups and BatchNorm's channels are
/// split so.
pub(super) fn slice_len(sm: usize, rows: usize, len: usize, step: usize) -> usize {
    let want = (4 * sm).div_ceil(rows.max(1));
    let splits = want.clamp(1, len.div_ceil(MIN_SLICE).max(1)).min(65535);
    len.div_ceil(splits).next_multiple_of(step)
}

/// Channels-last backward sums: the S spatial rows of each of the `b` samples cut into
/// R slices of `rows` rows, (R, rows), so that about four blocks per SM have work.
pub(super) fn row_slices(spec: &Spec, sm: usize, b: usize) -> (usize, usize) {
    let s = spec.inner.max(1);
    let rows = s.div_ceil((4 * sm).div_ceil(b).clamp(1, s));
    (s.div_ceil(rows), rows)
}

/// GroupNorm's first kernel, shared by forward and backward: the launch shape, its
/// flags, and the per-slice partial statistics of every group (rows·splits·3 floats).
fn group_stats(
    ex: &mut impl Executor,
    spec: &Spec,
    dtype: DType,
    x: u64,
    aligned: bool,
) -> Result<(GroupShape, i32, u64)> {
    let sm = ex.profile().sm_count()?;
    let (g, flags) = group_shape(spec, dtype.size_in_bytes(), aligned, sm)?;
    let splits = g.splits as usize;
    let part = ex.scratch(spec.rows * splits * 3 * 4, true, "statistics partials")?;
    let args = vec![KArg::Ptr(x), KArg::Ptr(part), KArg::Group(g), KArg::I32(flags)];
    ex.launch(&Launch::new(
        spec,
        entry(spec, "stats", dtype)?,
        (spec.rows, splits),
        BLOCK,
        0,
        args,
    )?)?;
    Ok((g, flags, part))
}

/// The forward: y for every element of x.
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, dtype: DType, p: &Fwd) -> Result<()> {
    let (g, flags, part) = group_stats(ex, spec, dtype, p.x, p.aligned())?;
    let eps = KArg::F32(spec.eps as f32);
    let args = vec![
        KArg::Ptr(p.x),
        KArg::opt(p.w),
        KArg::opt(p.b),
        KArg::Ptr(part),
        KArg::Ptr(p.y),
        KArg::Group(g),
        eps,
        KArg::I32(flags),
    ];
    ex.launch(&Launch::new(
        spec,
        entry(spec, "fwd", dtype)?,
        (spec.rows, g.splits as usize),
        BLOCK,
        0,
        args,
    )?)
}

/// The backward: per-(sample, channel) sums, then dx; the sums are the dγ/dβ partials,
/// one row per sample (channels-first) or per slice of a sample's spatial rows
/// (channels-last, whose sums kernel reads whole rows of channels).
pub(super) fn backward(ex: &mut impl Executor, spec: &Spec, dtype: DType, p: &Bwd) -> Result<Partials> {
    let np = spec.params();
    let (g, flags, part) = group_stats(ex, spec, dtype, p.x, p.aligned())?;
    let b = spec.rows / spec.groups;
    let last = spec.kind == Kind::GroupLast;
    let (r, rows) = if last {
        row_slices(spec, ex.profile().sm_count()?, b)
    } else {
        (1, spec.inner)
    };
    let s1 = ex.scratch(b * r * np * 4, true, "Σ dy·x̂ partials")?;
    let s2 = ex.scratch(b * r * np * 4, true, "Σ dy partials")?;
    let eps = KArg::F32(spec.eps as f32);
    let mut args = vec![
        KArg::Ptr(p.x),
        KArg::Ptr(p.dy),
        KArg::Ptr(part),
        KArg::Ptr(s1),
        KArg::Ptr(s2),
        KArg::Group(g),
        eps,
    ];
    let (ri, rows_i) = (int(spec, "row slices", r)?, int(spec, "rows per slice", rows)?);
    let sums_grid = if last {
        args.extend([KArg::I32(ri), KArg::I32(rows_i)]);
        (b, r)
    } else {
        args.push(KArg::I32(flags));
        (b * np, 1)
    };
    ex.launch(&Launch::new(
        spec,
        entry(spec, "bwd_sums", dtype)?,
        sums_grid,
        BLOCK,
        0,
        args,
    )?)?;
    let mut args = vec![
        KArg::Ptr(p.x),
        KArg::opt(p.w),
        KArg::Ptr(p.dy),
        KArg::Ptr(part),
        KArg::Ptr(s1),
        KArg::Ptr(s2),
    ];
    args.extend([KArg::Ptr(p.dx), KArg::Group(g), eps, KArg::I32(flags)]);
    if last {
        args.push(KArg::I32(ri));
    }
    ex.launch(&Launch::new(
        spec,
        entry(spec, "bwd_dx", dtype)?,
        (spec.rows, g.splits as usize),
        BLOCK,
        0,
        args,
    )?)?;
    Ok(Partials {
        dg: s1,
        db: s2,
        count: b * r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// About four blocks an SM, slices of at least MIN_SLICE elements, on the vector
    /// width's multiple.
    #[test]
    fn groups_are_split_to_fill_the_device() {
        // 32 groups of 40 960 on 132 SMs: 17 slices of 2 416 (a multiple of 8).
        assert_eq!(slice_len(132, 32, 40960, 8), 2416);
        // Few elements: one slice.
        assert_eq!(slice_len(132, 4, 100, 1), 100);
        // Many rows: one slice each.
        assert_eq!(slice_len(132, 10_000, 4096, 4), 4096);
        let spec = Spec::channel_groups(&[1, 320, 64, 64], 32, 1e-5);
        let (g, flags) = group_shape(&spec, 2, true, 132).unwrap();
        assert_eq!(flags, GVEC);
        assert_eq!((g.splits, g.chunk), (17, 2416));
        let (_, flags) = group_shape(&spec, 2, false, 132).unwrap();
        assert_eq!(flags, 0);
    }

    #[test]
    fn channels_last_rows_are_sliced_per_sample() {
        let spec = Spec::channels_last_groups(&[2, 64, 64, 320], 32, 1e-5);
        assert_eq!(row_slices(&spec, 132, 2), (4096usize.div_ceil(16), 16));
        let spec = Spec::channels_last_groups(&[512, 1, 8], 2, 1e-5);
        assert_eq!(row_slices(&spec, 132, 512), (1, 1));
    }
}
