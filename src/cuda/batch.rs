//! BatchNorm launches (kernels/batch_norm.cu): each channel is cut into slices, a block
//! per (channel, slice), so that the GPU fills even with few channels. Training runs a
//! statistics kernel first; eval reads the running mean and variance instead.

use super::group::slice_len;
use super::launch::{BLOCK, BVEC};
use super::params::{BatchDxArgs, BatchFwdArgs, BatchShape, BatchStatsArgs, BatchSumsArgs};
use super::plan::{entry, int, Dtypes, Executor, Launch};
use super::{Bwd, Fwd, Partials};
use crate::spec::Spec;
use candle_core::Result;

/// A launch: the shape the kernels read, the vector flag, and the grid (channels of a
/// batch, splits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct BatchLaunch {
    pub shape: BatchShape,
    pub flags: i32,
    pub grid: (usize, usize),
}

impl BatchLaunch {
    /// The launch for batches of `channels` of `spec`'s channels (rows = B·C, len = S,
    /// param_blocks = C; spec.rs) of `elem`-byte elements on a device of `sm` SMs: each
    /// channel's B·S elements cut into slices by [`slice_len`], 16-byte vectors when
    /// every pointer is aligned and S is a multiple of the width.
    pub(super) fn new(spec: &Spec, elem: usize, aligned: bool, sm: usize, channels: usize) -> Result<Self> {
        let (c, s) = (spec.param_blocks, spec.len);
        let k = spec.rows / c * s;
        let v = 16 / elem;
        let vec = aligned && s.is_multiple_of(v);
        let chunk = slice_len(sm, channels, k, if vec { v } else { 1 });
        let splits = k.div_ceil(chunk);
        int(spec, "element count", spec.rows * spec.len)?;
        // The kernels' int indices run up to a slice, then a block's stride, past K.
        int(spec, "values per channel, with a slice's margin", k + chunk + BLOCK * v)?;
        let shape = BatchShape {
            channels: int(spec, "channels", c)?,
            spatial: int(spec, "spatial size", s)?,
            len: int(spec, "values per channel", k)?,
            splits: int(spec, "splits", splits)?,
            chunk: int(spec, "slice", chunk)?,
        };
        Ok(Self {
            shape,
            flags: if vec { BVEC } else { 0 },
            grid: (channels, splits),
        })
    }
}

/// Channels a batch: as many as fit in half of the L2 with `tensors` tensors re-read
/// (x forward, x and dy backward), at least one, so that the kernels after the
/// statistics find a batch in L2, as GroupNorm's and the row norms' split paths do.
/// The kernels take the whole tensors' strides; a batch's pointers start at its
/// first channel.
pub(super) fn channels_per_batch(spec: &Spec, elem: usize, tensors: usize, l2_bytes: usize) -> usize {
    let c = spec.param_blocks;
    let channel = spec.rows / c.max(1) * spec.len * elem;
    (l2_bytes / 2 / (tensors * channel).max(1)).clamp(1, c.max(1))
}

/// The batches of `size` channels: (first channel, channels).
fn batches(spec: &Spec, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let c = spec.param_blocks;
    (0..c).step_by(size).map(move |first| (first, size.min(c - first)))
}

/// The kernel of `stage`, eval's variant with running statistics: every one after the
/// statistics kernel has parameter fields (`Dtypes::params_suffix`).
fn stage(spec: &Spec, d: Dtypes, eval: bool, stage: &str) -> String {
    match eval {
        true => entry(spec, &format!("eval_{stage}"), d.params_suffix),
        false => entry(spec, stage, d.params_suffix),
    }
}

/// Byte offsets of channel `first` in the tensors laid out as x (`elem`-byte elements)
/// and in the per-channel ones (the parameters', the f32 partials').
struct Offsets {
    x: u64,
    param: u64,
    partial: u64,
}

impl Offsets {
    fn of(spec: &Spec, d: Dtypes, first: usize) -> Self {
        Self {
            x: (first * spec.len * d.x.size_in_bytes()) as u64,
            param: (first * d.params.size_in_bytes()) as u64,
            partial: (first * 4) as u64,
        }
    }
}

/// An optional tensor's address moved by `off` bytes; absent (0) stays absent.
fn shifted(p: u64, off: u64) -> u64 {
    if p == 0 {
        0
    } else {
        p + off
    }
}

/// In training, the statistics kernel: the partial moments (count, mean, M2) of every
/// slice of the batch's channels into `moments` (channels·splits·3 floats).
fn stats(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    l: &BatchLaunch,
    x: u64,
    n: usize,
    moments: u64,
) -> Result<()> {
    let args = BatchStatsArgs {
        x,
        moments,
        shape: l.shape,
        flags: l.flags,
    };
    let grid = (n, l.grid.1);
    ex.launch(&Launch::new(
        spec,
        entry(spec, "stats", d.x_suffix),
        grid,
        BLOCK,
        0,
        args,
    )?)
}

/// The launch of batches re-reading `tensors` tensors (0: one batch of every channel,
/// where nothing is re-read), and in training the scratch of a batch's
/// statistics partials (eval's statistics are the running ones).
fn prepare(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    aligned: bool,
    eval: bool,
    tensors: usize,
) -> Result<(BatchLaunch, u64)> {
    let size = match tensors {
        0 => spec.param_blocks,
        t => channels_per_batch(spec, d.x.size_in_bytes(), t, ex.profile().l2_bytes()?),
    };
    let l = BatchLaunch::new(spec, d.x.size_in_bytes(), aligned, ex.profile().sm_count()?, size)?;
    let moments = match eval {
        true => 0,
        false => ex.scratch(l.grid.0 * l.grid.1 * 3 * 4, false, "statistics partials")?,
    };
    Ok((l, moments))
}

/// The forward: y for every element of x, and in training each channel's batch mean
/// then biased variance at `p.stats` (2·C elements of the parameters' dtype); in
/// training batch by batch, statistics then y.
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    let eval = p.running.is_some();
    // The kernels read γ and β one at a time: only x's alignment matters.
    let (l, moments) = prepare(ex, spec, d, p.x.is_multiple_of(16), eval, if eval { 0 } else { 1 })?;
    let [running_mean, running_var] = p.running.unwrap_or_default();
    let c = (spec.param_blocks * d.params.size_in_bytes()) as u64;
    let name = stage(spec, d, eval, "fwd");
    for (first, n) in batches(spec, l.grid.0) {
        let o = Offsets::of(spec, d, first);
        if !eval {
            stats(ex, spec, d, &l, p.x + o.x, n, moments)?;
        }
        let args = BatchFwdArgs {
            x: p.x + o.x,
            weight: shifted(p.w.unwrap_or(0), o.param),
            bias: shifted(p.b.unwrap_or(0), o.param),
            moments,
            running_mean: shifted(running_mean, o.param),
            running_var: shifted(running_var, o.param),
            y: p.y + o.x,
            mean: p.stats.map_or(0, |s| s + o.param),
            var: p.stats.map_or(0, |s| s + c + o.param),
            shape: l.shape,
            eps: spec.eps as f32,
            flags: l.flags,
        };
        ex.launch(&Launch::new(spec, name.clone(), (n, l.grid.1), BLOCK, 0, args)?)?;
    }
    Ok(())
}

/// The backward: dx, and the per-slice sums Σ dy·x̂ and Σ dy of each channel, which
/// are the dγ/dβ partials (`[splits, C]`), batch by batch. Training needs the sums for
/// dx; eval's dx does not, so there they are computed only when `sums` asks for dγ or
/// dβ.
pub(super) fn backward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Bwd, sums: bool) -> Result<Partials> {
    let eval = p.running.is_some();
    // Eval's dx reads dy alone: nothing is re-read without the sums.
    let (l, moments) = prepare(ex, spec, d, p.aligned(), eval, if eval && !sums { 0 } else { 2 })?;
    let [running_mean, running_var] = p.running.unwrap_or_default();
    let len = spec.param_blocks * l.grid.1 * 4;
    let (partial_dw, partial_db) = (
        ex.scratch(len, false, "Σ dy·x̂ partials")?,
        ex.scratch(len, false, "Σ dy partials")?,
    );
    let (shape, eps, flags) = (l.shape, spec.eps as f32, l.flags);
    let (sums_name, dx_name) = (stage(spec, d, eval, "bwd_sums"), stage(spec, d, eval, "bwd_dx"));
    for (first, n) in batches(spec, l.grid.0) {
        let o = Offsets::of(spec, d, first);
        let (x, dy) = (p.x + o.x, p.dy + o.x);
        let (running_mean, running_var) = (shifted(running_mean, o.param), shifted(running_var, o.param));
        let (partial_dw, partial_db) = (partial_dw + o.partial, partial_db + o.partial);
        let grid = (n, l.grid.1);
        if !eval {
            stats(ex, spec, d, &l, x, n, moments)?;
        }
        if !eval || sums {
            let args = BatchSumsArgs {
                x,
                dy,
                moments,
                running_mean,
                running_var,
                partial_dw,
                partial_db,
                shape,
                eps,
                flags,
            };
            ex.launch(&Launch::new(spec, sums_name.clone(), grid, BLOCK, 0, args)?)?;
        }
        let args = BatchDxArgs {
            x,
            weight: shifted(p.w.unwrap_or(0), o.param),
            dy,
            moments,
            running_mean,
            running_var,
            partial_dw,
            partial_db,
            dx: p.dx + o.x,
            shape,
            eps,
            flags,
        };
        ex.launch(&Launch::new(spec, dx_name.clone(), grid, BLOCK, 0, args)?)?;
    }
    Ok(Partials {
        dw: partial_dw,
        db: partial_db,
        count: l.grid.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_split_into_vector_aligned_slices() {
        // [32, 64, 56, 56] f32 on 132 SMs: 9 slices of 11 152 per channel.
        let spec = Spec::batch(&[32, 64, 56, 56], 1e-5);
        let l = BatchLaunch::new(&spec, 4, true, 132, 64).unwrap();
        assert_eq!((l.grid, l.flags), ((64, 9), BVEC));
        assert_eq!(l.shape.chunk % 4, 0);
        // S = 49 is no multiple of the width: scalar.
        let spec = Spec::batch(&[256, 512, 7, 7], 1e-5);
        let l = BatchLaunch::new(&spec, 2, true, 132, 512).unwrap();
        assert_eq!((l.grid, l.flags), ((512, 2), 0));
    }

    /// Batches of channels fill half of the L2 with the tensors they re-read.
    #[test]
    fn channels_run_in_batches_that_fit_half_the_l2() {
        let l2 = 50 << 20;
        // 512 KiB a channel of f32: 50 channels forward, 25 backward.
        let big = Spec::batch(&[8, 256, 128, 128], 1e-5);
        assert_eq!(channels_per_batch(&big, 4, 1, l2), 50);
        assert_eq!(channels_per_batch(&big, 4, 2, l2), 25);
        let all: Vec<_> = batches(&big, 50).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[5], (250, 6));
        // 25.7 MB of f32 x at [32, 64, 56, 56]: one batch forward, two backward.
        let resnet = Spec::batch(&[32, 64, 56, 56], 1e-5);
        assert_eq!(channels_per_batch(&resnet, 4, 1, l2), 64);
        assert_eq!(channels_per_batch(&resnet, 4, 2, l2), 32);
    }
}
