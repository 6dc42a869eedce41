//! GroupNorm launches (kernels/group_norm.cu), channels-first and channels-last: each
//! group is split over enough blocks to fill the GPU, a statistics kernel first, then
//! the forward or the two backward kernels.

use super::launch::{BLOCK, GVEC};
use super::params::{
    GroupDxArgs, GroupFwdArgs, GroupLastDxArgs, GroupLastSumsArgs, GroupShape, GroupStatsArgs, GroupSumsArgs,
};
use super::plan::{entry, int, Dtypes, Executor, Launch};
use super::{Bwd, Fwd, Partials};
use crate::spec::{Activation, Kind, Spec};
use candle_core::Result;

/// Elements a GroupNorm block should own at least when a group is split.
const MIN_SLICE: usize = 2048;

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
        len: int(spec, "group size", spec.len)?,
        spatial: int(spec, "spatial size", spec.inner)?,
        per_group: int(spec, "channels per group", spec.params_per_row)?,
        groups: int(spec, "groups", spec.param_blocks)?,
        channels: int(spec, "channels", spec.params())?,
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

/// A stage's name among the entries: GroupNorm + SiLU has its own forward and backward
/// entries (`silu_fwd`, ...), beside the plain statistics and dparams kernels.
fn stage(spec: &Spec, stage: &str) -> String {
    match spec.act {
        Activation::Identity => stage.to_string(),
        Activation::Silu => format!("silu_{stage}"),
    }
}

/// GroupNorm's first kernel, shared by forward and backward: the per-slice partial
/// statistics of every group (rows·splits·3 floats). Returns the launch shape, its
/// flags, and the statistics.
fn group_stats(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    x: u64,
    aligned: bool,
) -> Result<(GroupShape, i32, u64)> {
    let sm = ex.profile().sm_count()?;
    let (shape, flags) = group_shape(spec, d.x.size_in_bytes(), aligned, sm)?;
    let splits = shape.splits as usize;
    let moments = ex.scratch(spec.rows * splits * 3 * 4, true, "statistics partials")?;
    let args = GroupStatsArgs {
        x,
        moments,
        shape,
        flags,
    };
    ex.launch(&Launch::new(
        spec,
        entry(spec, "stats", d.x_suffix),
        (spec.rows, splits),
        BLOCK,
        0,
        args,
    )?)?;
    Ok((shape, flags, moments))
}

/// The forward: y for every element of x.
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    let (shape, flags, moments) = group_stats(ex, spec, d, p.x, p.aligned())?;
    let args = GroupFwdArgs {
        x: p.x,
        weight: p.w.unwrap_or(0),
        bias: p.b.unwrap_or(0),
        moments,
        y: p.y,
        shape,
        eps: spec.eps as f32,
        flags,
    };
    let grid = (spec.rows, shape.splits as usize);
    ex.launch(&Launch::new(
        spec,
        entry(spec, &stage(spec, "fwd"), d.params_suffix),
        grid,
        BLOCK,
        0,
        args,
    )?)
}

/// The backward: per-(sample, channel) sums, then dx; the sums are the dγ/dβ partials,
/// one row per sample (channels-first) or per slice of a sample's spatial rows
/// (channels-last, whose sums kernel reads whole rows of channels).
pub(super) fn backward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Bwd) -> Result<Partials> {
    let np = spec.params();
    let (shape, flags, moments) = group_stats(ex, spec, d, p.x, p.aligned())?;
    let b = spec.rows / spec.param_blocks;
    let last = spec.kind == Kind::GroupLast;
    let (r, rows) = if last {
        row_slices(spec, ex.profile().sm_count()?, b)
    } else {
        (1, spec.inner)
    };
    let partial_dw = ex.scratch(b * r * np * 4, true, "Σ dy·x̂ partials")?;
    let partial_db = ex.scratch(b * r * np * 4, true, "Σ dy partials")?;
    let (x, dy, dx, eps) = (p.x, p.dy, p.dx, spec.eps as f32);
    let (weight, bias) = (p.w.unwrap_or(0), p.b.unwrap_or(0));
    let grid = (spec.rows, shape.splits as usize);
    let (sums, dx_entry) = (
        entry(spec, &stage(spec, "bwd_sums"), d.params_suffix),
        entry(spec, &stage(spec, "bwd_dx"), d.params_suffix),
    );
    let slices = int(spec, "row slices", r)?;
    let [sums, dx] = if last {
        let sums_args = GroupLastSumsArgs {
            x,
            weight,
            bias,
            dy,
            moments,
            partial_dw,
            partial_db,
            shape,
            eps,
            slices,
            slice_rows: int(spec, "rows per slice", rows)?,
        };
        let dx_args = GroupLastDxArgs {
            x,
            weight,
            bias,
            dy,
            moments,
            partial_dw,
            partial_db,
            dx,
            shape,
            eps,
            flags,
            slices,
        };
        [
            Launch::new(spec, sums, (b, r), BLOCK, 0, sums_args)?,
            Launch::new(spec, dx_entry, grid, BLOCK, 0, dx_args)?,
        ]
    } else {
        let sums_args = GroupSumsArgs {
            x,
            weight,
            bias,
            dy,
            moments,
            partial_dw,
            partial_db,
            shape,
            eps,
            flags,
        };
        let dx_args = GroupDxArgs {
            x,
            weight,
            bias,
            dy,
            moments,
            partial_dw,
            partial_db,
            dx,
            shape,
            eps,
            flags,
        };
        [
            Launch::new(spec, sums, (b * np, 1), BLOCK, 0, sums_args)?,
            Launch::new(spec, dx_entry, grid, BLOCK, 0, dx_args)?,
        ]
    };
    ex.launch(&sums)?;
    ex.launch(&dx)?;
    Ok(Partials {
        dw: partial_dw,
        db: partial_db,
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
        let spec = Spec::group(&[1, 320, 64, 64], 32, 1e-5);
        let (g, flags) = group_shape(&spec, 2, true, 132).unwrap();
        assert_eq!(flags, GVEC);
        assert_eq!((g.splits, g.chunk), (17, 2416));
        let (_, flags) = group_shape(&spec, 2, false, 132).unwrap();
        assert_eq!(flags, 0);
    }

    #[test]
    fn channels_last_rows_are_sliced_per_sample() {
        let spec = Spec::group_last(&[2, 64, 64, 320], 32, 1e-5);
        assert_eq!(row_slices(&spec, 132, 2), (4096usize.div_ceil(16), 16));
        let spec = Spec::group_last(&[512, 1, 8], 2, 1e-5);
        assert_eq!(row_slices(&spec, 132, 512), (1, 1));
    }
}
