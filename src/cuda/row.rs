//! LayerNorm and RMSNorm launches (kernels/row_norm.cuh): the path, block and grid of
//! a row kernel, chosen from the row length; rows too long for one block's registers
//! are split into chunks over blocks, two kernels launched on batches of rows.

use super::launch::{BLOCK, MAX_THREADS, ROW_REG, ROW_REG_BWD, ROW_REG_BWD_SCALAR, ROW_REG_SCALAR};
use super::params::{
    AddBwdArgs, AddFwdArgs, RowBwdArgs, RowFwdArgs, RowSplit, SplitBwdArgs, SplitFwdArgs, SplitStatsArgs, SplitSumsArgs,
};
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
    /// A row cut into chunks, a block a chunk in registers ([`Split`]).
    Split,
}

/// Grid, block and entry point of a row kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RowLaunch {
    pub grid: usize,
    pub block: usize,
    pub path: Path,
    pub vec: bool,
    /// Row elements a thread holds (the launch constant of the direction and width).
    pub reg: usize,
}

impl RowLaunch {
    /// A warp per row for short rows, a block per row while the row fits in the block's
    /// registers (`reg` elements a thread: the launch constants for the direction and
    /// the width), else the split path (whose grid and block [`Split`] sizes). A
    /// block-per-row block is as small as lets each thread fill its registers: the
    /// kernels' register use allows few threads per SM, and several small blocks keep
    /// more loads in flight than one large block stalled at its reductions. 16-byte
    /// vectors (of `elem`-byte elements) when every pointer is aligned and N is a
    /// multiple of the width.
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
            (m, MAX_THREADS, Path::Split)
        };
        Self {
            grid: grid.max(1),
            block,
            path,
            vec,
            reg,
        }
    }

    /// The width: elements a vector access moves (1 on the scalar paths).
    fn width(&self, elem: usize) -> usize {
        if self.vec {
            16 / elem
        } else {
            1
        }
    }

    /// The entry point `{kind}_{stage}_{path}_{width}_{suffix}` of kernels/row_norm.cuh:
    /// `path` named as given (the split path's first kernels are `stats` and `sums`),
    /// `suffix` one of the dtypes' suffixes.
    fn entry_named(&self, spec: &Spec, stage: &str, path: &str, suffix: &str) -> String {
        let width = if self.vec { "vec" } else { "scalar" };
        format!("{}_{stage}_{path}_{width}_{suffix}", spec.kind.name())
    }

    /// The entry point of this path for `stage` (every such kernel reads γ).
    pub(super) fn entry(&self, spec: &Spec, stage: &str, d: Dtypes) -> String {
        let path = match self.path {
            Path::Warp => "warp",
            Path::Block => "block",
            Path::Split => "split",
        };
        self.entry_named(spec, stage, path, d.params_suffix)
    }
}

/// The largest grid height a launch takes.
const MAX_GRID_Y: usize = 65535;

/// The split path's cut: `chunks` chunks of `span` elements a row (the last may hold
/// fewer), blocks of `block` threads, and its kernel pair launched on `batch` rows at a
/// time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Split {
    pub chunks: usize,
    pub span: usize,
    pub block: usize,
    pub batch: usize,
}

impl Split {
    /// As few chunks as let each fit one block's registers, or, when there are too
    /// few rows to give every SM two blocks, more chunks (down to one warp's worth)
    /// until there are; chunks of equal size in whole vectors. A batch is as many rows
    /// as fit in half of the L2 (`reread` bytes a row: what the second kernel reads
    /// again), so that the second kernel reads them from L2 rather than memory, and at
    /// most a grid's height (the kernels' grid is (chunks, rows)).
    pub(super) fn new(
        spec: &Spec,
        l: &RowLaunch,
        elem: usize,
        sm_count: usize,
        l2_bytes: usize,
        reread: usize,
    ) -> Self {
        let (m, n) = (spec.rows, spec.len);
        let v = l.width(elem);
        let items = n / v;
        let per_thread = l.reg / v;
        let fewest = items.div_ceil(MAX_THREADS * per_thread);
        let fill = (2 * sm_count).div_ceil(m).min(items / (32 * per_thread));
        let span_items = items.div_ceil(fewest.max(fill));
        Self {
            chunks: items.div_ceil(span_items),
            span: span_items * v,
            block: span_items.div_ceil(per_thread).next_multiple_of(32).min(MAX_THREADS),
            batch: (l2_bytes / 2 / reread.max(1)).clamp(1, m.min(MAX_GRID_Y)),
        }
    }

    /// The kernels' description of batch `first..first + rows`.
    fn args(&self, spec: &Spec, first: usize, rows: usize) -> Result<RowSplit> {
        Ok(RowSplit {
            first: int(spec, "rows", first)?,
            rows: int(spec, "rows", rows)?,
            len: int(spec, "row length", spec.len)?,
            chunks: int(spec, "chunks", self.chunks)?,
            span: int(spec, "chunk", self.span)?,
            accumulate: i32::from(first > 0),
        })
    }

    /// The batches: (first row, rows).
    fn batches(&self, m: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..m)
            .step_by(self.batch)
            .map(move |first| (first, self.batch.min(m - first)))
    }
}

/// The forward: y (and h, with a residual) for the `M·N` elements of x.
pub(super) fn forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    let elem = d.x.size_in_bytes();
    let l = RowLaunch::new(spec, elem, p.aligned(), false);
    if l.path == Path::Split {
        return split_forward(ex, spec, d, p, &l);
    }
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

/// The split forward, batch by batch: each chunk's moments (after writing h, with a
/// residual), then y from x (or h).
fn split_forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd, l: &RowLaunch) -> Result<()> {
    let elem = d.x.size_in_bytes();
    let profile = ex.profile();
    let s = Split::new(spec, l, elem, profile.sm_count()?, profile.l2_bytes()?, spec.len * elem);
    let moments = ex.scratch(s.batch * s.chunks * 3 * 4, false, "chunk moments")?;
    // With a residual, the statistics kernel writes h, which the output kernel reads.
    let (stage, residual, h, normalized) = match (p.residual, p.h) {
        (Some(r), Some(h)) => ("add_fwd", r, h, h),
        _ => ("fwd", 0, 0, p.x),
    };
    let (stats_entry, out_entry) = (l.entry_named(spec, stage, "stats", d.x_suffix), l.entry(spec, "fwd", d));
    for (first, rows) in s.batches(spec.rows) {
        let split = s.args(spec, first, rows)?;
        let grid = (s.chunks, rows);
        let stats = SplitStatsArgs {
            x: p.x,
            residual,
            h,
            moments,
            split,
        };
        ex.launch(&Launch::new(spec, stats_entry.clone(), grid, s.block, 0, stats)?)?;
        let out = SplitFwdArgs {
            x: normalized,
            weight: p.w.unwrap_or(0),
            bias: p.b.unwrap_or(0),
            moments,
            y: p.y,
            split,
            eps: spec.eps as f32,
        };
        ex.launch(&Launch::new(spec, out_entry.clone(), grid, s.block, 0, out)?)?;
    }
    Ok(())
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
    if l.path == Path::Split {
        return split_backward(ex, spec, d, p, &l);
    }
    let smem = warp_partial_bytes(spec, &l);
    let entry = l.entry(spec, if p.dh.is_some() { "add_bwd" } else { "bwd" }, d);
    // Persistent: as many blocks as fit on the GPU at once, each adding its rows
    // into one partial row, so that the partials stay few and in L2.
    let profile = ex.profile();
    let resident = profile.resident_blocks(&entry, l.block as u32, smem as u32)?;
    let grid = l.grid.min(profile.sm_count()? * resident.max(1));
    let partial_dw = ex.scratch(grid * np * 4, false, "dγ partials")?;
    let partial_db = ex.scratch(grid * np * 4, false, "dβ partials")?;
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

/// The split backward, batch by batch: each chunk's sums, then dx, P blocks a chunk
/// (as many as fit on the GPU at once, at most a batch's rows) each adding dγ/dβ over
/// its rows in registers into its partial row, written by the first batch and added
/// to by the others.
fn split_backward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Bwd, l: &RowLaunch) -> Result<Partials> {
    let elem = d.x.size_in_bytes();
    let profile = ex.profile();
    let s = Split::new(
        spec,
        l,
        elem,
        profile.sm_count()?,
        profile.l2_bytes()?,
        2 * spec.len * elem,
    );
    let entry = l.entry(spec, if p.dh.is_some() { "add_bwd" } else { "bwd" }, d);
    let sums_entry = l.entry_named(spec, "bwd", "sums", d.params_suffix);
    let resident = profile.resident_blocks(&entry, s.block as u32, 0)?;
    let per_chunk = (profile.sm_count()? * resident.max(1) / s.chunks).clamp(1, s.batch);
    let np = spec.params();
    let sums = ex.scratch(s.batch * s.chunks * 5 * 4, false, "chunk sums")?;
    let partial_dw = ex.scratch(per_chunk * np * 4, false, "dγ partials")?;
    let partial_db = ex.scratch(per_chunk * np * 4, false, "dβ partials")?;
    let weight = p.w.unwrap_or(0);
    for (first, rows) in s.batches(spec.rows) {
        let split = s.args(spec, first, rows)?;
        let args = SplitSumsArgs {
            x: p.x,
            weight,
            dy: p.dy,
            sums,
            split,
        };
        ex.launch(&Launch::new(
            spec,
            sums_entry.clone(),
            (s.chunks, rows),
            s.block,
            0,
            args,
        )?)?;
        let args = SplitBwdArgs {
            x: p.x,
            weight,
            dy: p.dy,
            dh: p.dh.unwrap_or(0),
            sums,
            dx: p.dx,
            partial_dw,
            partial_db,
            split,
            eps: spec.eps as f32,
        };
        ex.launch(&Launch::new(
            spec,
            entry.clone(),
            (s.chunks, per_chunk),
            s.block,
            0,
            args,
        )?)?;
    }
    Ok(Partials {
        dw: partial_dw,
        db: partial_db,
        count: per_chunk,
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
        assert_eq!(path(MAX_THREADS * ROW_REG + 4, 4, true, false).path, Path::Split);
        assert_eq!(path(32 * ROW_REG_BWD, 2, true, true).path, Path::Warp);
        assert_eq!(path(32 * ROW_REG_BWD + 8, 2, true, true).path, Path::Block);
        assert_eq!(path(MAX_THREADS * ROW_REG_BWD + 8, 2, true, true).path, Path::Split);
        // Odd N or a misaligned pointer: the scalar limits.
        assert!(!path(32 * ROW_REG_SCALAR - 1, 4, true, false).vec);
        assert_eq!(path(32 * ROW_REG_SCALAR - 1, 4, true, false).path, Path::Warp);
        assert_eq!(path(32 * ROW_REG_SCALAR + 1, 4, true, false).path, Path::Block);
        assert_eq!(
            path(MAX_THREADS * ROW_REG_BWD_SCALAR + 8, 4, false, true).path,
            Path::Split
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

    /// The split path's chunks cover each row once, in whole vectors, each within one
    /// block's registers; few rows get more chunks, up to two blocks an SM; a batch
    /// fits in half the L2.
    #[test]
    fn split_chunks_cover_rows_and_fill_the_gpu() {
        let (sms, l2) = (132, 50 << 20);
        for m in [1, 2, 7, 300, 5000] {
            for n in [8200, 16392, 65536, 65539, 1 << 20, 3_000_001] {
                for (elem, aligned, bwd) in [(4, true, false), (2, true, true), (4, false, true), (2, false, false)] {
                    let spec = rows(m, n);
                    let l = RowLaunch::new(&spec, elem, aligned, bwd);
                    if l.path != Path::Split {
                        continue;
                    }
                    let s = Split::new(&spec, &l, elem, sms, l2, n * elem);
                    let what = format!("{m} x {n}, {elem} bytes, aligned {aligned}, backward {bwd}: {s:?}");
                    let v = l.width(elem);
                    assert!(
                        s.span.is_multiple_of(v) && s.chunks * s.span >= n && (s.chunks - 1) * s.span < n,
                        "{what}"
                    );
                    assert!(
                        s.block <= MAX_THREADS && s.block.is_multiple_of(32) && s.block * l.reg >= s.span,
                        "{what}"
                    );
                    assert!(s.chunks * m >= sms.min(n / (64 * l.reg)), "{what}");
                    assert!(
                        s.batch >= 1 && s.batch <= m && (s.batch == 1 || s.batch * n * elem <= l2 / 2),
                        "{what}"
                    );
                }
            }
        }
        // One row of 2^20 f32: 264 chunks (two blocks an SM) of 993 vectors.
        let spec = rows(1, 1 << 20);
        let s = Split::new(&spec, &RowLaunch::new(&spec, 4, true, false), 4, sms, l2, 4 << 20);
        assert_eq!((s.chunks, s.span, s.block, s.batch), (264, 3972, 128, 1));
        // 4096 rows of 32 768 bf16, backward: four chunks of 8192, 200 rows a batch.
        let spec = rows(4096, 32768);
        let s = Split::new(&spec, &RowLaunch::new(&spec, 2, true, true), 2, sms, l2, 2 * 32768 * 2);
        assert_eq!((s.chunks, s.span, s.block, s.batch), (4, 8192, 512, 200));
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
