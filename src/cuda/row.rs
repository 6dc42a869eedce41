//! LayerNorm and RMSNorm launches (kernels/row_norm.cuh): the path, block and grid of
//! a row kernel, chosen from the row length.

use super::launch::{BLOCK, MAX_THREADS, ROW_REG, ROW_REG_BWD, ROW_REG_BWD_SCALAR, ROW_REG_SCALAR};
use super::params::{AddBwdArgs, AddFwdArgs, RowBwdArgs, RowFwdArgs};
use super::plan::{int, Dtypes, Executor, Launch};
use super::{Bwd, Fwd, Partials};
use crate::spec::Spec;
use candle_core::Result;

/// How a row kernel holds a row; each path is its own compiled entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path {
    /// A warp per row, several rows a block, the row in registers.
    Warp,
    /// A block per row, the row in registers.
    Block,
    /// A block per row, the row re-read from memory.
    Multi,
}

/// Grid, block and entry point of a row kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RowLaunch {
    pub grid: usize,
    pub block: usize,
    pub path: Path,
    pub vec: bool,
}

impl RowLaunch {
    /// A warp per row for short rows, a block per row while the row fits in the block's
    /// registers (`reg` elements a thread: the launch constants for the direction and
    /// the width), else the multi-pass path. A block-per-row block is as small as lets
    /// each thread fill its registers: the kernels' register use allows few threads per
    /// SM, and several small blocks keep more loads in flight than one large block
    /// stalled at its reductions. 16-byte vectors (of `elem`-byte elements) when every
    /// pointer is aligned and N is a multiple of the width.
    pub(super) fn new(spec: &Spec, elem: usize, aligned: bool, backward: bool) -> Self {
        let (m, n) = (spec.rows, spec.len);
        let v = 16 / elem;
        let vec = aligned && n.is_multiple_of(v);
        let reg = match (backward, vec) {
            (false, true) => ROW_REG,
            (false, false) => ROW_REG_SCALAR,
            (true, true) => ROW_REG_BWD,
            (true, false) => ROW_REG_BWD_SCALAR,
        };
        let (grid, block, path) = if n <= 32 * reg {
            (m.div_ceil(BLOCK / 32), BLOCK, Path::Warp)
        } else if n <= MAX_THREADS * reg {
            let (items, per_thread) = if vec { (n / v, reg / v) } else { (n, reg) };
            let block = items.div_ceil(per_thread).next_multiple_of(32).min(MAX_THREADS);
            (m, block, Path::Block)
        } else {
            (m, MAX_THREADS, Path::Multi)
        };
        Self {
            grid: grid.max(1),
            block,
            path,
            vec,
        }
    }

    /// The entry point `{kind}_{stage}_{path}_{width}_{dtypes}` of kernels/row_norm.cuh
    /// (every row kernel reads γ).
    pub(super) fn entry(&self, spec: &Spec, stage: &str, d: Dtypes) -> String {
        let path = match self.path {
            Path::Warp => "warp",
            Path::Block => "block",
            Path::Multi => "multi",
        };
        let width = if self.vec { "vec" } else { "scalar" };
        format!("{}_{stage}_{path}_{width}_{}", spec.kind.name(), d.params_suffix)
    }
}

/// The forward: y (and h, with a residual) for the `M·N` elements of x.
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    let l = RowLaunch::new(spec, d.x.size_in_bytes(), p.aligned(), false);
    let (rows, len, eps) = (
        int(spec, "rows", spec.rows)?,
        int(spec, "row length", spec.len)?,
        spec.eps as f32,
    );
    let (weight, bias) = (p.w.unwrap_or(0), p.b.unwrap_or(0));
    let (grid, block) = ((l.grid, 1), l.block);
    let launch = match (p.residual, p.h) {
        (Some(residual), Some(h)) => {
            let args = AddFwdArgs {
                x: p.x,
                residual,
                weight,
                bias,
                h,
                y: p.y,
                rows,
                len,
                eps,
            };
            Launch::new(spec, l.entry(spec, "add_fwd", d), grid, block, 0, args)?
        }
        _ => {
            let args = RowFwdArgs {
                x: p.x,
                weight,
                bias,
                y: p.y,
                rows,
                len,
                eps,
            };
            Launch::new(spec, l.entry(spec, "fwd", d), grid, block, 0, args)?
        }
    };
    ex.launch(&launch)
}

/// Bytes of shared memory the warp path's backward needs: a block's 2·N partial sums.
fn warp_partial_bytes(spec: &Spec, l: &RowLaunch) -> usize {
    if l.path == Path::Warp {
        2 * spec.len * std::mem::size_of::<f32>()
    } else {
        0
    }
}

/// The backward: dx, and one dγ/dβ partial row per block of a persistent grid. With
/// `dh` (the fused residual add), x is h and dh is added to dx.
pub(super) fn backward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Bwd) -> Result<Partials> {
    let np = spec.params();
    let l = RowLaunch::new(spec, d.x.size_in_bytes(), p.aligned(), true);
    let smem = warp_partial_bytes(spec, &l);
    let entry = l.entry(spec, if p.dh.is_some() { "add_bwd" } else { "bwd" }, d);
    // Persistent: as many blocks as fit on the GPU at once, each adding its rows
    // into one partial row, so that the partials stay few and in L2.
    let profile = ex.profile();
    let resident = profile.resident_blocks(&entry, l.block as u32, smem as u32)?;
    let grid = l.grid.min(profile.sm_count()? * resident.max(1));
    // The multi-pass kernel adds into its partial row; the others write all of it.
    let zeroed = l.path == Path::Multi;
    let partial_dw = ex.scratch(grid * np * 4, zeroed, "dγ partials")?;
    let partial_db = ex.scratch(grid * np * 4, zeroed, "dβ partials")?;
    let (rows, len, eps) = (
        int(spec, "rows", spec.rows)?,
        int(spec, "row length", spec.len)?,
        spec.eps as f32,
    );
    let weight = p.w.unwrap_or(0);
    let launch = match p.dh {
        Some(dh) => {
            let args = AddBwdArgs {
                h: p.x,
                weight,
                dy: p.dy,
                dh,
                dx: p.dx,
                partial_dw,
                partial_db,
                rows,
                len,
                eps,
            };
            Launch::new(spec, entry, (grid, 1), l.block, smem, args)?
        }
        None => {
            let args = RowBwdArgs {
                x: p.x,
                weight,
                dy: p.dy,
                dx: p.dx,
                partial_dw,
                partial_db,
                rows,
                len,
                eps,
            };
            Launch::new(spec, entry, (grid, 1), l.block, smem, args)?
        }
    };
    ex.launch(&launch)?;
    Ok(Partials {
        dw: partial_dw,
        db: partial_db,
        count: grid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Kind;

    fn rows(m: usize, n: usize) -> Spec {
        Spec::last_dim(Kind::Layer, &[m, n], 1e-5)
    }

    /// Each path's limit ±1, forward and backward, on the vector and scalar widths.
    #[test]
    fn paths_switch_at_the_register_limits() {
        let path = |n: usize, elem: usize, aligned: bool, bwd: bool| RowLaunch::new(&rows(3, n), elem, aligned, bwd);
        // f32 vectors: warp up to 32·ROW_REG, block up to MAX_THREADS·ROW_REG.
        assert_eq!(path(32 * ROW_REG, 4, true, false).path, Path::Warp);
        assert_eq!(path(32 * ROW_REG + 4, 4, true, false).path, Path::Block);
        assert_eq!(path(MAX_THREADS * ROW_REG, 4, true, false).path, Path::Block);
        assert_eq!(path(MAX_THREADS * ROW_REG + 4, 4, true, false).path, Path::Multi);
        assert_eq!(path(32 * ROW_REG_BWD, 2, true, true).path, Path::Warp);
        assert_eq!(path(32 * ROW_REG_BWD + 8, 2, true, true).path, Path::Block);
        assert_eq!(path(MAX_THREADS * ROW_REG_BWD + 8, 2, true, true).path, Path::Multi);
        // Odd N or a misaligned pointer: the scalar limits.
        assert!(!path(32 * ROW_REG_SCALAR - 1, 4, true, false).vec);
        assert_eq!(path(32 * ROW_REG_SCALAR - 1, 4, true, false).path, Path::Warp);
        assert_eq!(path(32 * ROW_REG_SCALAR + 1, 4, true, false).path, Path::Block);
        assert_eq!(
            path(MAX_THREADS * ROW_REG_BWD_SCALAR + 8, 4, false, true).path,
            Path::Multi
        );
        assert!(!path(1024, 4, false, false).vec);
    }

    /// A block-per-row block gives each thread a full register row, in whole warps.
    #[test]
    fn block_path_blocks_fill_each_thread() {
        let l = RowLaunch::new(&rows(5, 4096), 4, true, false);
        assert_eq!((l.path, l.block, l.grid), (Path::Block, 128, 5));
        let l = RowLaunch::new(&rows(5, 4097), 2, false, false);
        assert_eq!((l.path, l.block), (Path::Block, 352));
        let l = RowLaunch::new(&rows(1000, 100), 4, true, false);
        assert_eq!(
            (l.path, l.block, l.grid),
            (Path::Warp, BLOCK, 1000usize.div_ceil(BLOCK / 32))
        );
    }

    #[test]
    fn entries_name_path_width_and_dtypes() {
        use candle_core::DType::{BF16, F16, F32, F64};
        let spec = rows(2, 8);
        let l = RowLaunch::new(&spec, 2, true, true);
        let entry = |x, params| Dtypes::new(&spec, x, params).map(|d| l.entry(&spec, "bwd", d));
        assert_eq!(entry(F16, F16).unwrap(), "layer_norm_bwd_warp_vec_f16");
        assert_eq!(entry(BF16, F32).unwrap(), "layer_norm_bwd_warp_vec_bf16_f32");
        assert!(entry(F64, F64).is_err());
        assert!(entry(F32, F16).is_err());
        assert!(entry(F16, BF16).is_err());
    }
}
