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

/// A launch: the shape the kernels read, the vector flag, and the grid (C, splits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct BatchLaunch {
    pub shape: BatchShape,
    pub flags: i32,
    pub grid: (usize, usize),
}

impl BatchLaunch {
    /// The launch for `spec` (rows = B·C, len = S, param_blocks = C; spec.rs) of `elem`-byte
    /// elements on a device of `sm` SMs: each channel's B·S elements cut into slices by
    /// [`slice_len`], 16-byte vectors when every pointer is aligned and S is a multiple
    /// of the width.
    pub(super) fn new(spec: &Spec, elem: usize, aligned: bool, sm: usize) -> Result<Self> {
        let (c, s) = (spec.param_blocks, spec.len);
        let k = spec.rows / c * s;
        let v = 16 / elem;
        let vec = aligned && s.is_multiple_of(v);
        let chunk = slice_len(sm, c, k, if vec { v } else { 1 });
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
            grid: (c, splits),
        })
    }
}

/// The kernel of `stage`, eval's variant with running statistics: every one after the
/// statistics kernel has parameter fields (`Dtypes::params_suffix`).
fn stage(spec: &Spec, d: Dtypes, eval: bool, stage: &str) -> String {
    match eval {
        true => entry(spec, &format!("eval_{stage}"), d.params_suffix),
        false => entry(spec, stage, d.params_suffix),
    }
}

/// The launch, and in training (`eval` false) the partial moments (count, mean, M2)
/// of every slice of every channel, C·splits·3 floats, from the statistics kernel
/// (eval's statistics are the running ones).
fn prepare(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    x: u64,
    aligned: bool,
    eval: bool,
) -> Result<(BatchLaunch, u64)> {
    let l = BatchLaunch::new(spec, d.x.size_in_bytes(), aligned, ex.profile().sm_count()?)?;
    if eval {
        return Ok((l, 0));
    }
    let moments = ex.scratch(l.grid.0 * l.grid.1 * 3 * 4, false, "statistics partials")?;
    let args = BatchStatsArgs {
        x,
        moments,
        shape: l.shape,
        flags: l.flags,
    };
    ex.launch(&Launch::new(
        spec,
        entry(spec, "stats", d.x_suffix),
        l.grid,
        BLOCK,
        0,
        args,
    )?)?;
    Ok((l, moments))
}

/// The forward: y for every element of x, and in training each channel's batch mean
/// then biased variance at `p.stats` (2·C elements of the parameters' dtype).
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    let stats = p.stats;
    let eval = p.running.is_some();
    // The kernels read γ and β one at a time: only x's alignment matters.
    let (l, moments) = prepare(ex, spec, d, p.x, p.x.is_multiple_of(16), eval)?;
    let [running_mean, running_var] = p.running.unwrap_or_default();
    let c = (spec.param_blocks * d.params.size_in_bytes()) as u64;
    let args = BatchFwdArgs {
        x: p.x,
        weight: p.w.unwrap_or(0),
        bias: p.b.unwrap_or(0),
        moments,
        running_mean,
        running_var,
        y: p.y,
        mean: stats.unwrap_or(0),
        var: stats.map_or(0, |s| s + c),
        shape: l.shape,
        eps: spec.eps as f32,
        flags: l.flags,
    };
    ex.launch(&Launch::new(spec, stage(spec, d, eval, "fwd"), l.grid, BLOCK, 0, args)?)
}

/// The backward: dx, and the per-slice sums Σ dy·x̂ and Σ dy of each channel, which
/// are the dγ/dβ partials (`[splits, C]`). Training needs the sums for dx; eval's dx
/// does not, so there they are computed only when `sums` asks for dγ or dβ.
pub(super) fn backward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Bwd, sums: bool) -> Result<Partials> {
    let eval = p.running.is_some();
    let (l, moments) = prepare(ex, spec, d, p.x, p.aligned(), eval)?;
    let [running_mean, running_var] = p.running.unwrap_or_default();
    let len = l.grid.0 * l.grid.1 * 4;
    let (partial_dw, partial_db) = (
        ex.scratch(len, false, "Σ dy·x̂ partials")?,
        ex.scratch(len, false, "Σ dy partials")?,
    );
    let (shape, eps, flags) = (l.shape, spec.eps as f32, l.flags);
    if !eval || sums {
        let args = BatchSumsArgs {
            x: p.x,
            dy: p.dy,
            moments,
            running_mean,
            running_var,
            partial_dw,
            partial_db,
            shape,
            eps,
            flags,
        };
        ex.launch(&Launch::new(
            spec,
            stage(spec, d, eval, "bwd_sums"),
            l.grid,
            BLOCK,
            0,
            args,
        )?)?;
    }
    let args = BatchDxArgs {
        x: p.x,
        weight: p.w.unwrap_or(0),
        dy: p.dy,
        moments,
        running_mean,
        running_var,
        partial_dw,
        partial_db,
        dx: p.dx,
        shape,
        eps,
        flags,
    };
    ex.launch(&Launch::new(
        spec,
        stage(spec, d, eval, "bwd_dx"),
        l.grid,
        BLOCK,
        0,
        args,
    )?)?;
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
        let l = BatchLaunch::new(&spec, 4, true, 132).unwrap();
        assert_eq!((l.grid, l.flags), ((64, 9), BVEC));
        assert_eq!(l.shape.chunk % 4, 0);
        // S = 49 is no multiple of the width: scalar.
        let spec = Spec::batch(&[256, 512, 7, 7], 1e-5);
        let l = BatchLaunch::new(&spec, 2, true, 132).unwrap();
        assert_eq!((l.grid, l.flags), ((512, 2), 0));
    }
}
