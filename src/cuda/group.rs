//! GroupNorm launches (kernels/group_norm.cu), channels-first and channels-last: a
//! group that fits one block's registers takes the group path (one kernel forward,
//! one backward before the dγ/dβ reduction); a larger one, or one read by scalar
//! accesses, is split over enough blocks to fill the GPU, a statistics kernel first,
//! then the forward or the two backward kernels.

use super::launch::{BLOCK, GVEC, GVEC8, MAX_THREADS, ROW_REG, ROW_REG_BWD};
use super::params::{
    GroupDxArgs, GroupFwdArgs, GroupLastDxArgs, GroupLastSumsArgs, GroupRegBwdArgs, GroupRegFwdArgs, GroupShape,
    GroupStatsArgs, GroupSumsArgs,
};
use super::plan::{entry, int, Dtypes, Executor, Launch};
use super::{Bwd, Fwd, Partials};
use crate::spec::{Activation, Kind, Spec};
use candle_core::Result;

/// Elements a GroupNorm block should own at least when a group is split.
const MIN_SLICE: usize = 2048;

/// The kernels' flags for `spec`'s tensors of `elem`-byte elements, when every pointer
/// is `aligned` and a vector stays in one channel (channels-first) or in one row of a
/// group (channels-last): GVEC (16-byte vectors), else channels-last GVEC8 (8-byte
/// vectors, which only the group path reads by; the split path reads by elements).
pub(super) fn group_flags(spec: &Spec, elem: usize, aligned: bool) -> i32 {
    let last = spec.kind == Kind::GroupLast;
    let run = if last { spec.params_per_row } else { spec.inner };
    if !aligned {
        0
    } else if run.is_multiple_of(16 / elem) {
        GVEC
    } else if last && run.is_multiple_of(8 / elem) {
        GVEC8
    } else {
        0
    }
}

/// GroupNorm launch shape for `rows` of `spec`'s groups (all, or a batch's) of
/// `elem`-byte elements on a device of `sm` SMs: each group cut into slices by
/// [`slice_len`], on the vector width with GVEC in `flags`.
pub(super) fn group_shape(spec: &Spec, rows: usize, elem: usize, flags: i32, sm: usize) -> Result<GroupShape> {
    let v = if flags & GVEC != 0 { 16 / elem } else { 1 };
    let chunk = slice_len(sm, rows, spec.len, v);
    let g = GroupShape {
        rows: int(spec, "B·G", rows)?,
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
    int(
        spec,
        "group size, with a slice's margin",
        spec.len + chunk + BLOCK * 16 / elem,
    )?;
    Ok(g)
}

/// The split path's batches of whole samples: as many a batch as fit in half of the
/// L2 with `tensors` tensors re-read (x forward, x and dy backward), at least one, so
/// that the kernels after the statistics find them in L2, as the row norms' split
/// path does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Batches {
    samples: usize,
    /// Samples a batch (the last may hold fewer).
    pub size: usize,
    /// Bytes of one sample of x.
    sample_bytes: usize,
}

impl Batches {
    pub(super) fn new(spec: &Spec, elem: usize, tensors: usize, l2_bytes: usize) -> Self {
        let samples = spec.rows / spec.param_blocks;
        let sample_bytes = spec.params() * spec.inner * elem;
        Self {
            samples,
            size: (l2_bytes / 2 / (tensors * sample_bytes).max(1)).clamp(1, samples.max(1)),
            sample_bytes,
        }
    }

    /// The batches: (first sample, samples, byte offset of the first in x).
    fn iter(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        (0..self.samples).step_by(self.size).map(|first| {
            (
                first,
                self.size.min(self.samples - first),
                (first * self.sample_bytes) as u64,
            )
        })
    }
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

/// The group path's block for `spec`'s groups, whose threads hold `reg` elements each
/// (ROW_REG forward, ROW_REG_BWD backward): the fewest warps that hold a group, or
/// None when a group takes the split path: scalar accesses (`flags` without GVEC or
/// GVEC8), more than MAX_THREADS·`reg` elements, or channels-last with (C/G)/V not
/// dividing 32 (the kernel adds a channel's sums across a warp's lanes by shuffles).
/// Returns the threads and the bytes of dynamic shared memory of the backward's
/// channel sums.
pub(super) fn reg_block(spec: &Spec, elem: usize, flags: i32, reg: usize) -> Option<(usize, usize)> {
    let v = if flags & GVEC != 0 {
        16 / elem
    } else if flags & GVEC8 != 0 {
        8 / elem
    } else {
        return None;
    };
    let per_group = spec.params_per_row;
    if spec.len > MAX_THREADS * reg {
        return None;
    }
    let threads = spec.len.div_ceil(reg).next_multiple_of(32);
    if spec.kind == Kind::GroupLast {
        let period = per_group / v;
        (32 % period == 0).then_some((threads, 2 * (threads / 32) * per_group * 4))
    } else {
        Some((threads, 2 * (spec.len / v) * 4))
    }
}

/// A stage's name among the entries: GroupNorm + SiLU has its own forward and backward
/// entries (`silu_fwd`, ...), beside the plain statistics and dparams kernels.
fn stage(spec: &Spec, stage: &str) -> String {
    match spec.act {
        Activation::Identity => stage.to_string(),
        Activation::Silu => format!("silu_{stage}"),
    }
}

/// The split path's first kernel, shared by forward and backward: the per-slice
/// partial statistics of `rows` groups from x (rows·splits·3 floats, into `moments`).
fn group_stats(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    x: u64,
    (shape, flags): (GroupShape, i32),
    rows: usize,
    moments: u64,
) -> Result<()> {
    let args = GroupStatsArgs {
        x,
        moments,
        shape,
        flags,
    };
    let grid = (rows, shape.splits as usize);
    ex.launch(&Launch::new(
        spec,
        entry(spec, "stats", d.x_suffix),
        grid,
        BLOCK,
        0,
        args,
    )?)
}

/// The split path's batches (re-reading `tensors` tensors), the launch shape of a
/// batch, and the statistics partials of a batch's groups.
fn split(
    ex: &mut impl Executor,
    spec: &Spec,
    elem: usize,
    flags: i32,
    tensors: usize,
) -> Result<(Batches, GroupShape, u64)> {
    let batches = Batches::new(spec, elem, tensors, ex.profile().l2_bytes()?);
    let rows = batches.size * spec.param_blocks;
    let shape = group_shape(spec, rows, elem, flags, ex.profile().sm_count()?)?;
    let moments = ex.scratch(rows * shape.splits as usize * 3 * 4, false, "statistics partials")?;
    Ok((batches, shape, moments))
}

/// The group path's shape: one slice a group (`group_shape`'s slicing set aside).
fn whole(spec: &Spec, elem: usize, flags: i32) -> Result<GroupShape> {
    let shape = group_shape(spec, spec.rows, elem, flags, 1)?;
    Ok(GroupShape {
        splits: 1,
        chunk: shape.len,
        ..shape
    })
}

/// The forward: y for every element of x, on the group path or the split path batch
/// by batch.
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    let elem = d.x.size_in_bytes();
    let flags = group_flags(spec, elem, p.aligned());
    let eps = spec.eps as f32;
    let (weight, bias) = (p.w.unwrap_or(0), p.b.unwrap_or(0));
    if let Some((threads, _)) = reg_block(spec, elem, flags, ROW_REG) {
        let args = GroupRegFwdArgs {
            x: p.x,
            weight,
            bias,
            y: p.y,
            shape: whole(spec, elem, flags)?,
            eps,
            flags,
        };
        let name = entry(spec, &stage(spec, "reg_fwd"), d.params_suffix);
        return ex.launch(&Launch::new(spec, name, (spec.rows, 1), threads, 0, args)?);
    }
    let (batches, shape, moments) = split(ex, spec, elem, flags, 1)?;
    let g = spec.param_blocks;
    let name = entry(spec, &stage(spec, "fwd"), d.params_suffix);
    for (_, n, off) in batches.iter() {
        group_stats(ex, spec, d, p.x + off, (shape, flags), n * g, moments)?;
        let args = GroupFwdArgs {
            x: p.x + off,
            weight,
            bias,
            moments,
            y: p.y + off,
            shape,
            eps,
            flags,
        };
        let grid = (n * g, shape.splits as usize);
        ex.launch(&Launch::new(spec, name.clone(), grid, BLOCK, 0, args)?)?;
    }
    Ok(())
}

/// The backward: dx and the dγ/dβ partials, one row per sample (the group path and
/// channels-first) or per slice of a sample's spatial rows (channels-last, whose
/// split path's sums kernel reads whole rows of channels). The split path runs batch
/// by batch: statistics, per-(sample, channel) sums, then dx.
pub(super) fn backward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Bwd) -> Result<Partials> {
    let np = spec.params();
    let b = spec.rows / spec.param_blocks;
    let elem = d.x.size_in_bytes();
    let flags = group_flags(spec, elem, p.aligned());
    let (weight, bias, eps) = (p.w.unwrap_or(0), p.b.unwrap_or(0), spec.eps as f32);
    if let Some((threads, smem)) = reg_block(spec, elem, flags, ROW_REG_BWD) {
        let partial_dw = ex.scratch(b * np * 4, false, "Σ dy·x̂ partials")?;
        let partial_db = ex.scratch(b * np * 4, false, "Σ dy partials")?;
        let args = GroupRegBwdArgs {
            x: p.x,
            weight,
            bias,
            dy: p.dy,
            dx: p.dx,
            partial_dw,
            partial_db,
            shape: whole(spec, elem, flags)?,
            eps,
            flags,
        };
        let name = entry(spec, &stage(spec, "reg_bwd"), d.params_suffix);
        ex.launch(&Launch::new(spec, name, (spec.rows, 1), threads, smem, args)?)?;
        return Ok(Partials {
            dw: partial_dw,
            db: partial_db,
            count: b,
        });
    }
    let (batches, shape, moments) = split(ex, spec, elem, flags, 2)?;
    let g = spec.param_blocks;
    let last = spec.kind == Kind::GroupLast;
    let (r, rows) = if last {
        row_slices(spec, ex.profile().sm_count()?, batches.size)
    } else {
        (1, spec.inner)
    };
    let partial_dw = ex.scratch(b * r * np * 4, false, "Σ dy·x̂ partials")?;
    let partial_db = ex.scratch(b * r * np * 4, false, "Σ dy partials")?;
    let (sums, dx_entry) = (
        entry(spec, &stage(spec, "bwd_sums"), d.params_suffix),
        entry(spec, &stage(spec, "bwd_dx"), d.params_suffix),
    );
    let slices = int(spec, "row slices", r)?;
    let slice_rows = int(spec, "rows per slice", rows)?;
    for (first, n, off) in batches.iter() {
        let (x, dy, dx) = (p.x + off, p.dy + off, p.dx + off);
        // This batch's partial rows: r a sample.
        let poff = (first * r * np * 4) as u64;
        let (partial_dw, partial_db) = (partial_dw + poff, partial_db + poff);
        group_stats(ex, spec, d, x, (shape, flags), n * g, moments)?;
        let grid = (n * g, shape.splits as usize);
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
                slice_rows,
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
                Launch::new(spec, sums.clone(), (n, r), BLOCK, 0, sums_args)?,
                Launch::new(spec, dx_entry.clone(), grid, BLOCK, 0, dx_args)?,
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
                Launch::new(spec, sums.clone(), (n * np, 1), BLOCK, 0, sums_args)?,
                Launch::new(spec, dx_entry.clone(), grid, BLOCK, 0, dx_args)?,
            ]
        };
        ex.launch(&sums)?;
        ex.launch(&dx)?;
    }
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
        assert_eq!(group_flags(&spec, 2, true), GVEC);
        assert_eq!(group_flags(&spec, 2, false), 0);
        let g = group_shape(&spec, 32, 2, GVEC, 132).unwrap();
        assert_eq!((g.splits, g.chunk), (17, 2416));
    }

    /// The split path's batches fill half of the L2 with whole samples of the tensors
    /// it re-reads: one batch when the tensors fit.
    #[test]
    fn split_groups_run_in_batches_that_fit_half_the_l2() {
        let l2 = 50 << 20;
        let big = Spec::group(&[8, 512, 64, 64], 32, 1e-5);
        // 8 MiB a sample of f32: 3 samples forward, 1 backward (x and dy).
        assert_eq!(Batches::new(&big, 4, 1, l2).size, 3);
        assert_eq!(Batches::new(&big, 4, 2, l2).size, 1);
        assert_eq!(Batches::new(&big, 2, 2, l2).size, 3);
        let b = Batches::new(&big, 4, 1, l2);
        let all: Vec<_> = b.iter().collect();
        assert_eq!(all, [(0, 3, 0), (3, 3, 3 << 23), (6, 2, 6 << 23)]);
        let small = Spec::group_last(&[1, 64, 64, 320], 32, 1e-5);
        assert_eq!(Batches::new(&small, 4, 2, l2).iter().count(), 1);
    }

    /// Groups that fit a block's registers, read by vectors, take the group path with
    /// the fewest warps that hold them; channels-last only where a channel's lanes
    /// repeat within a warp.
    #[test]
    fn small_groups_take_the_group_path() {
        let first = Spec::group(&[8, 128, 32, 32], 32, 1e-5);
        assert_eq!(reg_block(&first, 4, GVEC, ROW_REG), Some((128, 2 * 1024 * 4)));
        assert_eq!(reg_block(&first, 2, GVEC, ROW_REG_BWD), Some((256, 2 * 512 * 4)));
        assert_eq!(reg_block(&first, 4, 0, ROW_REG), None);
        let at = |shape: &[usize], g: usize, reg: usize| reg_block(&Spec::group(shape, g, 1e-5), 4, GVEC, reg);
        assert!(at(&[1, 4, 64, 64], 1, ROW_REG).is_some());
        assert!(at(&[1, 4, 64, 64], 1, ROW_REG_BWD).is_none());
        assert!(at(&[1, 4, 64, 66], 1, ROW_REG).is_none());
        assert_eq!(at(&[64, 64, 2, 2], 64, ROW_REG), Some((32, 2 * 4)));
        let last = |c: usize, elem: usize| reg_block(&Spec::group_last(&[2, 8, 8, c], 1, 1e-5), elem, GVEC, ROW_REG);
        // C/G/V lanes: 32 of f32 at C/G = 128, 64 at 256 (split); bf16 32 at 256.
        assert_eq!(last(128, 4), Some((256, 2 * 8 * 128 * 4)));
        assert_eq!(last(256, 4), None);
        assert_eq!(last(256, 2), Some((512, 2 * 16 * 256 * 4)));
        // 12 lanes: not a divisor of 32.
        assert_eq!(last(48, 4), None);
    }

    /// Channels-last runs of C/G a multiple of 8 bytes but not of 16 take the group
    /// path by 8-byte vectors and the split path by elements.
    #[test]
    fn eight_byte_runs_take_the_group_path_by_8_byte_vectors() {
        let last = Spec::group_last(&[8, 32, 32, 128], 32, 1e-5);
        assert_eq!(group_flags(&last, 4, true), GVEC);
        assert_eq!(group_flags(&last, 2, true), GVEC8);
        assert_eq!(group_flags(&last, 2, false), 0);
        // 4 096 elements a group, one channel-group of 4 a vector: one lane a period.
        assert_eq!(reg_block(&last, 2, GVEC8, ROW_REG_BWD), Some((256, 2 * 8 * 4 * 4)));
        // C/G = 12: 8-byte vectors, but 3 lanes a period take the split path.
        let twelve = Spec::group_last(&[2, 8, 8, 48], 4, 1e-5);
        assert_eq!(group_flags(&twelve, 2, true), GVEC8);
        assert_eq!(reg_block(&twelve, 2, GVEC8, ROW_REG), None);
        let chunk = |flags| group_shape(&twelve, 8, 2, flags, 132).unwrap().chunk;
        assert_eq!(chunk(GVEC8), chunk(0));
        // Channels-first, S = 36: 16-byte runs in f32; in f16 not, and no 8-byte ones.
        let first = Spec::group(&[2, 8, 6, 6], 4, 1e-5);
        assert_eq!(group_flags(&first, 4, true), GVEC);
        assert_eq!(group_flags(&first, 2, true), 0);
    }

    #[test]
    fn channels_last_rows_are_sliced_per_sample() {
        let spec = Spec::group_last(&[2, 64, 64, 320], 32, 1e-5);
        assert_eq!(row_slices(&spec, 132, 2), (4096usize.div_ceil(16), 16));
        let spec = Spec::group_last(&[512, 1, 8], 2, 1e-5);
        assert_eq!(row_slices(&spec, 132, 512), (1, 1));
    }
}
