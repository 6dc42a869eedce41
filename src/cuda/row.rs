//! LayerNorm and RMSNorm launches (kernels/row_norm.cuh): the path, block and grid of
//! a row kernel, chosen from the row length.

use super::launch::{MAX_THREADS, MULTI, ROW_REG, ROW_REG_BWD, VEC, WARP_TEAM};
use super::module::{function, sm_count, CudaElem};
use super::{cfg, int, push_opt, AddIns, BwdIns, FwdIns, Partials, BLOCK};
use crate::spec::Spec;
use candle_core::cuda_backend::cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

/// Grid, block and flags of a row kernel: a warp per row for short rows, a block per
/// row while the row fits in the block's registers (`reg` elements a thread), else the
/// multi-pass path. A block-per-row block is as small as lets each thread fill its `reg`
/// registers: the kernels' register use allows few threads per SM, and several small
/// blocks keep more loads in flight than one large block stalled at its reductions.
fn row_launch<T>(spec: &Spec, aligned: bool, reg: usize) -> (usize, usize, i32) {
    let (m, n) = (spec.rows, spec.len);
    let v = 16 / std::mem::size_of::<T>();
    let mut flags = if aligned && n.is_multiple_of(v) { VEC } else { 0 };
    let (grid, block) = if n <= 32 * reg {
        flags |= WARP_TEAM;
        (m.div_ceil(BLOCK / 32), BLOCK)
    } else if n <= MAX_THREADS * reg {
        let (items, per_thread) = if flags & VEC != 0 { (n / v, reg / v) } else { (n, reg) };
        (m, items.div_ceil(per_thread).next_multiple_of(32).min(MAX_THREADS))
    } else {
        flags |= MULTI;
        (m, MAX_THREADS)
    };
    (grid.max(1), block, flags)
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
    let (grid, block, flags) = row_launch::<T>(spec, aligned, ROW_REG);
    let f = function::<T>(dev, spec.kind, "fwd")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv);
    push_opt(&mut lb, wv, &null);
    push_opt(&mut lb, bv, &null);
    lb.arg(y).arg(&m).arg(&n).arg(&eps).arg(&flags);
    // SAFETY: matches {layer,rms}_norm_fwd (x, w, b, y, M, N, eps, flags); x and y
    // hold M·N elements, w and b N or are null; the block fits MAX_THREADS.
    unsafe { lb.launch(cfg((grid, 1), block, 0)) }.w()?;
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
    let (grid, block, flags) = row_launch::<T>(spec, aligned, ROW_REG);
    let f = function::<T>(dev, spec.kind, "add_fwd")?;
    let stream = dev.cuda_stream();
    let mut lb = stream.launch_builder(&f);
    lb.arg(xv).arg(rv);
    push_opt(&mut lb, wv, &null);
    push_opt(&mut lb, bv, &null);
    lb.arg(h).arg(y).arg(&m).arg(&n).arg(&eps).arg(&flags);
    // SAFETY: matches {layer,rms}_norm_add_fwd (x, r, w, b, h, y, M, N, eps, flags);
    // x, r, h and y hold M·N elements, w and b N or are null; the block fits MAX_THREADS.
    unsafe { lb.launch(cfg((grid, 1), block, 0)) }.w()?;
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
    let (grid, block, flags) = row_launch::<T>(spec, aligned, ROW_REG_BWD);
    let smem = if flags & WARP_TEAM != 0 {
        2 * spec.len * std::mem::size_of::<f32>()
    } else {
        0
    };
    let f = function::<T>(dev, spec.kind, if dh.is_some() { "add_bwd" } else { "bwd" })?;
    // Persistent: as many blocks as fit on the GPU at once, each adding its rows
    // into one partial row, so that the partials stay few and in L2.
    let resident = f
        .occupancy_max_active_blocks_per_multiprocessor(block as u32, smem, None)
        .w()?;
    let grid = grid.min(sm_count(dev)? * resident.max(1) as usize);
    // The multi-pass kernel adds into its partial row; the others write all of it.
    let partials = || -> Result<_> {
        if flags & MULTI != 0 {
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
    lb.arg(dx).arg(&pdg).arg(&pdb).arg(&m).arg(&n).arg(&eps).arg(&flags);
    // SAFETY: matches {layer,rms}_norm_bwd (x, w, dy, dx, pdg, pdb, M, N, eps, flags),
    // or with dh {layer,rms}_norm_add_bwd (h, w, dy, dh, dx, ...); x, dy, dh and dx
    // hold M·N elements, w N or is null; pdg/pdb hold grid·N floats, the warp path's 2·N floats of shared memory
    // (N <= 512) are requested, the block fits MAX_THREADS.
    unsafe { lb.launch(cfg((grid, 1), block, smem)) }.w()?;
    Ok(Partials {
        dg: pdg,
        db: pdb,
        count: grid,
    })
}
