//! LayerNorm and RMSNorm launches (kernels/row_norm.cuh): the path, block and grid of
//! a row kernel, chosen from the row length.

use super::launch::{BLOCK, MAX_THREADS, ROW_REG, ROW_REG_BWD, ROW_REG_BWD_SCALAR, ROW_REG_SCALAR};
use super::module::{function, sm_count, CudaElem};
use super::{cfg, int, push_opt, AddIns, BwdIns, FwdIns, Partials};
use crate::spec::Spec;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaView, CudaViewMut, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

/// How a row kernel holds a row; each path is its own compiled entry point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A warp per row, several rows a block, the row in registers.
    Warp,
    /// A block per row, the row in registers.
    Block,
    /// A block per row, the row re-read from memory.
    Multi,
}

/// Grid, block and entry point of a row kernel.
struct RowLaunch {
    grid: usize,
    block: usize,
    path: Path,
    vec: bool,
}

impl RowLaunch {
    /// A warp per row for short rows, a block per row while the row fits in the block's
    /// registers (`reg` elements a thread: the launch constants for the direction and
    /// the width), else the multi-pass path. A block-per-row block is as small as lets
    /// each thread fill its registers: the kernels' register use allows few threads per
    /// SM, and several small blocks keep more loads in flight than one large block
    /// stalled at its reductions. 16-byte vectors when every pointer is aligned and N is
    /// a multiple of the width.
    fn new<T>(spec: &Spec, aligned: bool, backward: bool) -> Self {
        let (m, n) = (spec.rows, spec.len);
        let v = 16 / std::mem::size_of::<T>();
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

    /// The entry point `{kind}_{stage}_{path}_{width}_{dtype}` of kernels/row_norm.cuh.
    fn function<T: CudaElem>(&self, spec: &Spec, dev: &CudaDevice, stage: &str) -> Result<CudaFunction> {
        let path = match self.path {
            Path::Warp => "warp",
            Path::Block => "block",
            Path::Multi => "multi",
        };
        let width = if self.vec { "vec" } else { "scalar" };
        function::<T>(dev, spec.kind, &format!("{stage}_{path}_{width}"))
    }
}

/// The forward: y for the `M·N` elements of x.
pub(super) fn forward<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, wv, bv): FwdIns<'_, '_, T>,
    y: &mut CudaViewMut<'_, T>,
    aligned: bool,
) -> Result<()> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let (m, n) = (int(spec, "rows", spec.rows)?, int(spec, "row length", spec.len)?);
    let l = RowLaunch::new::<T>(spec, aligned, false);
    let f = l.function::<T>(spec, dev, "fwd")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    push_opt(&mut lb, bv, &null);
    lb.arg(y).arg(&m).arg(&n).arg(&eps);
    // SAFETY: matches {layer,rms}_norm_fwd_* (x, w, b, y, M, N, eps); x and y hold M·N
    // elements, w and b N or are null; the block fits the entry's launch bounds.
    unsafe { lb.launch(cfg((l.grid, 1), l.block, 0)) }.w()?;
    Ok(())
}

/// The fused residual add's forward: h = x + residual and y of h, for the `M·N`
/// elements of x.
pub(super) fn forward_add<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, rv, wv, bv): AddIns<'_, '_, T>,
    (h, y): (&mut CudaViewMut<'_, T>, &mut CudaViewMut<'_, T>),
    aligned: bool,
) -> Result<()> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let (m, n) = (int(spec, "rows", spec.rows)?, int(spec, "row length", spec.len)?);
    let l = RowLaunch::new::<T>(spec, aligned, false);
    let f = l.function::<T>(spec, dev, "add_fwd")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv).arg(rv);
    push_opt(&mut lb, wv, &null);
    push_opt(&mut lb, bv, &null);
    lb.arg(h).arg(y).arg(&m).arg(&n).arg(&eps);
    // SAFETY: matches {layer,rms}_norm_add_fwd_* (x, r, w, b, h, y, M, N, eps); x, r,
    // h and y hold M·N elements, w and b N or are null; the block fits the entry's
    // launch bounds.
    unsafe { lb.launch(cfg((l.grid, 1), l.block, 0)) }.w()?;
    Ok(())
}

/// The backward: dx, and one dγ/dβ partial row per block of a persistent grid. With
/// `dh` (the fused residual add), x is h and dh is added to dx.
pub(super) fn backward<T: CudaElem>(
    spec: &Spec,
    dev: &CudaDevice,
    (xv, wv, dyv): BwdIns<'_, '_, T>,
    dh: &Option<CudaView<'_, T>>,
    dx: &mut CudaViewMut<'_, T>,
    aligned: bool,
) -> Result<Partials> {
    let (eps, null) = (spec.eps as f32, 0u64);
    let np = spec.params();
    let (m, n) = (int(spec, "rows", spec.rows)?, int(spec, "row length", spec.len)?);
    let l = RowLaunch::new::<T>(spec, aligned, true);
    let smem = if l.path == Path::Warp {
        2 * spec.len * std::mem::size_of::<f32>()
    } else {
        0
    };
    let f = l.function::<T>(spec, dev, if dh.is_some() { "add_bwd" } else { "bwd" })?;
    // Persistent: as many blocks as fit on the GPU at once, each adding its rows
    // into one partial row, so that the partials stay few and in L2.
    let resident = f
        .occupancy_max_active_blocks_per_multiprocessor(l.block as u32, smem, None)
        .w()?;
    let grid = l.grid.min(sm_count(dev)? * resident.max(1) as usize);
    // The multi-pass kernel adds into its partial row; the others write all of it.
    let partials = || -> Result<_> {
        if l.path == Path::Multi {
            dev.alloc_zeros::<f32>(grid * np)
        } else {
            // SAFETY: the register-path kernels store every element of their block's
            // partial row before the dparams kernel reads it.
            unsafe { dev.alloc::<f32>(grid * np) }
        }
    };
    let (pdg, pdb) = (partials()?, partials()?);
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    lb.arg(dyv);
    if let Some(dh) = dh {
        lb.arg(dh);
    }
    lb.arg(dx).arg(&pdg).arg(&pdb).arg(&m).arg(&n).arg(&eps);
    // SAFETY: matches {layer,rms}_norm_bwd_* (x, w, dy, dx, pdg, pdb, M, N, eps), or
    // with dh {layer,rms}_norm_add_bwd_* (h, w, dy, dh, dx, ...); x, dy, dh and dx hold
    // M·N elements, w N or is null; pdg/pdb hold grid·N floats, the warp path's 2·N
    // floats of shared memory (N <= 512) are requested, the block fits the entry's
    // launch bounds.
    unsafe { lb.launch(cfg((grid, 1), l.block, smem)) }.w()?;
    Ok(Partials {
        dg: pdg,
        db: pdb,
        count: grid,
    })
}
