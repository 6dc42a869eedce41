//! CUDA launch code: loads this crate's kernels (fatbins compiled by build.rs, so no
//! JIT on the targeted GPUs), picks each kernel's path and grid, launches it on the
//! stream of the tensor's candle device, and returns any failure as a candle error.

use crate::op::{Kind, NormBwd, Spec};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, WithDType};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `CN_MAX_THREADS` in kernels/common.cuh: the kernels' `__launch_bounds__`.
const MAX_THREADS: usize = 512;
/// `ROW_REG` and `ROW_REG_BWD` in kernels/row_norm.cuh: row elements per thread.
const ROW_REG: usize = 32;
const ROW_REG_BWD: usize = 16;
/// Flags of kernels/row_norm.cuh and kernels/group_norm.cu.
const VEC: i32 = 1;
const WARP_TEAM: i32 = 2;
const MULTI: i32 = 4;
/// Threads of the kernels whose block size is not tied to the row length.
const BLOCK: usize = 256;
/// `DPARAMS_THREADS` in kernels/common.cuh: the dγ/dβ reduction's block, 32 columns.
const DPARAMS_THREADS: usize = 256;
/// Elements a GroupNorm block should own at least when a group is split.
const GN_MIN_SLICE: usize = 2048;

const FATBINS: [(&str, &[u8]); 3] = [
    (
        "layer_norm",
        include_bytes!(concat!(env!("OUT_DIR"), "/layer_norm.fatbin")),
    ),
    ("rms_norm", include_bytes!(concat!(env!("OUT_DIR"), "/rms_norm.fatbin"))),
    (
        "group_norm",
        include_bytes!(concat!(env!("OUT_DIR"), "/group_norm.fatbin")),
    ),
];

/// A dtype with CUDA kernels; `SUFFIX` ends the kernels' extern "C" names.
trait CudaElem: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType {
    const SUFFIX: &'static str;
}

impl CudaElem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl CudaElem for f16 {
    const SUFFIX: &'static str = "f16";
}
impl CudaElem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

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

/// The kernel `{kind}_{stage}_{suffix}` of this device, its module loaded once per device.
fn function<T: CudaElem>(dev: &CudaDevice, kind: Kind, stage: &str) -> Result<CudaFunction> {
    type Cache = Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>;
    static MODULES: OnceLock<Cache> = OnceLock::new();
    let ctx = dev.cuda_stream().context().clone();
    let file = kind.name();
    let module = {
        let mut cache = MODULES
            .get_or_init(Default::default)
            .lock()
            .expect("module cache poisoned");
        match cache.get(&(ctx.ordinal(), file)) {
            Some(m) => m.clone(),
            None => {
                let bytes = FATBINS
                    .iter()
                    .find(|(n, _)| *n == file)
                    .expect("every kind has a fatbin")
                    .1;
                let m = ctx.load_module(Ptx::from_binary(bytes.to_vec())).w()?;
                cache.insert((ctx.ordinal(), file), m.clone());
                m
            }
        }
    };
    module.load_function(&format!("{file}_{stage}_{}", T::SUFFIX)).w()
}

fn sm_count(dev: &CudaDevice) -> Result<usize> {
    let ctx = dev.cuda_stream().context().clone();
    let n = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .w()?;
    Ok(n.max(1) as usize)
}

fn int(spec: &Spec, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).or_else(|_| bail!("{}: {what} = {v} is too large for the CUDA kernels", spec.kind.name()))
}

fn cfg(grid: (usize, usize), block: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// The view of a contiguous tensor's elements, and whether it starts 16-byte aligned
/// (candle's allocations are; an offset view may not be).
fn view<'a, T: CudaElem>(spec: &Spec, s: &'a CudaStorage, l: &Layout) -> Result<(CudaView<'a, T>, bool)> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!(
            "{}: internal error: a non-contiguous input reached the kernel",
            spec.kind.name()
        )
    };
    Ok((
        s.as_cuda_slice::<T>()?.slice(start..end),
        (start * std::mem::size_of::<T>()).is_multiple_of(16),
    ))
}

type Arg<'a> = (&'a CudaStorage, &'a Layout);

/// Calls `$run::<T>` for the dtype of `$x`: the one `match` on the dtype of the CUDA path.
macro_rules! dispatch {
    ($spec:expr, $x:expr, $run:ident($($arg:expr),*)) => {
        match $x.0.dtype() {
            DType::F32 => $run::<f32>($($arg),*),
            DType::F16 => $run::<f16>($($arg),*),
            DType::BF16 => $run::<bf16>($($arg),*),
            dt => bail!("{}: {dt:?} is not supported on CUDA (f32, f16 and bf16 are)", $spec.kind.name()),
        }
    };
}

/// Forward on the GPU: y, shaped as x.
pub(crate) fn forward(spec: &Spec, x: Arg, w: Option<Arg>, b: Option<Arg>) -> Result<(CudaStorage, Shape)> {
    fn run<T: CudaElem>(spec: &Spec, x: Arg, w: Option<Arg>, b: Option<Arg>) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let (xv, mut aligned) = view::<T>(spec, x.0, x.1)?;
        let wv = w.map(|(s, l)| view::<T>(spec, s, l)).transpose()?;
        let bv = b.map(|(s, l)| view::<T>(spec, s, l)).transpose()?;
        aligned &= wv.as_ref().is_none_or(|v| v.1) && bv.as_ref().is_none_or(|v| v.1);
        let (wv, bv) = (wv.map(|v| v.0), bv.map(|v| v.0));
        // SAFETY: every element of y is written by the kernels below before it is read.
        let mut y = unsafe { dev.alloc::<T>(xv.len()) }?;
        if !xv.is_empty() {
            let (eps, null) = (spec.eps as f32, 0u64);
            let stream = dev.cuda_stream();
            if spec.kind == Kind::Group {
                let (g, flags, part) = group_stats::<T>(spec, dev, &xv, aligned)?;
                let grid = (spec.rows, g.splits as usize);
                let f = function::<T>(dev, spec.kind, "fwd")?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&xv);
                push_opt(&mut lb, &wv, &null);
                push_opt(&mut lb, &bv, &null);
                lb.arg(&part).arg(&mut y).arg(&g).arg(&eps).arg(&flags);
                // SAFETY: matches group_norm_fwd (x, w, b, part, y, g, eps, flags); w and b are
                // [C] or null, y has as many elements as x.
                unsafe { lb.launch(cfg(grid, BLOCK, 0)) }.w()?;
            } else {
                let (m, n) = (int(spec, "rows", spec.rows)?, int(spec, "row length", spec.len)?);
                let (grid, block, flags) = row_launch::<T>(spec, aligned, ROW_REG);
                let f = function::<T>(dev, spec.kind, "fwd")?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&xv);
                push_opt(&mut lb, &wv, &null);
                push_opt(&mut lb, &bv, &null);
                lb.arg(&mut y).arg(&m).arg(&n).arg(&eps).arg(&flags);
                // SAFETY: matches {layer,rms}_norm_fwd (x, w, b, y, M, N, eps, flags); x and y
                // hold M·N elements, w and b N or are null; the block fits CN_MAX_THREADS.
                unsafe { lb.launch(cfg((grid, 1), block, 0)) }.w()?;
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
    Ok((dispatch!(spec, x, run(spec, x, w, b))?, x.1.shape().clone()))
}

/// Pushes a view, or a null pointer when there is none.
fn push_opt<'a, T>(
    lb: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>,
    v: &'a Option<CudaView<'a, T>>,
    null: &'a u64,
) {
    match v {
        Some(v) => lb.arg(v),
        None => lb.arg(null),
    };
}

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

/// GroupNorm launch shape: each group cut into `splits` slices so that about four
/// blocks per SM have work, each slice at least [`GN_MIN_SLICE`] elements.
fn group_shape<T>(spec: &Spec, dev: &CudaDevice, aligned: bool) -> Result<(GroupShape, i32)> {
    let v = 16 / std::mem::size_of::<T>();
    let vec = aligned && spec.inner.is_multiple_of(v);
    let want = (4 * sm_count(dev)?).div_ceil(spec.rows);
    let splits = want.clamp(1, spec.len.div_ceil(GN_MIN_SLICE).max(1)).min(65535);
    let chunk = spec.len.div_ceil(splits).next_multiple_of(if vec { v } else { 1 });
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
    Ok((g, if vec { VEC } else { 0 }))
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

/// Backward on the GPU: one flat tensor holding dx, then dγ (with a weight), then dβ
/// (with a bias), as the CPU path returns it.
pub(crate) fn backward(op: &NormBwd, x: Arg, w: Option<Arg>, dy: Arg) -> Result<(CudaStorage, Shape)> {
    fn run<T: CudaElem>(op: &NormBwd, x: Arg, w: Option<Arg>, dy: Arg) -> Result<CudaStorage> {
        let spec = &op.spec;
        let dev = &x.0.device;
        let (xv, xa) = view::<T>(spec, x.0, x.1)?;
        let (dyv, dya) = view::<T>(spec, dy.0, dy.1)?;
        let wv = w.map(|(s, l)| view::<T>(spec, s, l)).transpose()?;
        let aligned = xa && dya && wv.as_ref().is_none_or(|v| v.1);
        let wv = wv.map(|v| v.0);
        let (len, np) = (xv.len(), spec.params());
        let total = op.packed_shape(w.is_some(), x.1).elem_count();
        if len == 0 {
            // dγ/dβ of an empty input are zeros.
            return Ok(CudaStorage::wrap_cuda_slice(dev.alloc_zeros::<T>(total)?, dev.clone()));
        }
        if w.is_none() && op.bias {
            bail!("{}: internal error: a bias gradient without a weight", spec.kind.name())
        }
        // SAFETY: dx is written by the backward kernels below, and dγ/dβ, present only
        // with a weight (checked above), by the dparams kernel launched whenever w is some.
        let mut out = unsafe { dev.alloc::<T>(total) }?;
        let (eps, null) = (spec.eps as f32, 0u64);
        let stream = dev.cuda_stream();
        let (mut dx, mut params) = out.split_at_mut(len);
        // Per-block (rows) or per-sample (groups) f32 partials of dγ and dβ: [P, np].
        let (pdg, pdb, p) = if spec.kind == Kind::Group {
            let (g, flags, part) = group_stats::<T>(spec, dev, &xv, aligned)?;
            let b = spec.rows / spec.groups;
            let (s1, s2) = (dev.alloc_zeros::<f32>(b * np)?, dev.alloc_zeros::<f32>(b * np)?);
            let grid = (spec.rows, g.splits as usize);
            let f = function::<T>(dev, spec.kind, "bwd_sums")?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv)
                .arg(&dyv)
                .arg(&part)
                .arg(&s1)
                .arg(&s2)
                .arg(&g)
                .arg(&eps)
                .arg(&flags);
            // SAFETY: matches group_norm_bwd_sums (x, dy, part, s1, s2, g, eps, flags); one
            // block per (b, c), s1 and s2 hold B·C floats.
            unsafe { lb.launch(cfg((b * np, 1), BLOCK, 0)) }.w()?;
            let f = function::<T>(dev, spec.kind, "bwd_dx")?;
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv);
            push_opt(&mut lb, &wv, &null);
            lb.arg(&dyv)
                .arg(&part)
                .arg(&s1)
                .arg(&s2)
                .arg(&mut dx)
                .arg(&g)
                .arg(&eps)
                .arg(&flags);
            // SAFETY: matches group_norm_bwd_dx (x, w, dy, part, s1, s2, dx, g, eps, flags);
            // dx is the first B·C·S elements of the output.
            unsafe { lb.launch(cfg(grid, BLOCK, 0)) }.w()?;
            (s1, s2, b)
        } else {
            let (m, n) = (int(spec, "rows", spec.rows)?, int(spec, "row length", spec.len)?);
            let (grid, block, flags) = row_launch::<T>(spec, aligned, ROW_REG_BWD);
            let smem = if flags & WARP_TEAM != 0 {
                2 * spec.len * std::mem::size_of::<f32>()
            } else {
                0
            };
            let f = function::<T>(dev, spec.kind, "bwd")?;
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
            let mut lb = stream.launch_builder(&f);
            lb.arg(&xv);
            push_opt(&mut lb, &wv, &null);
            lb.arg(&dyv)
                .arg(&mut dx)
                .arg(&pdg)
                .arg(&pdb)
                .arg(&m)
                .arg(&n)
                .arg(&eps)
                .arg(&flags);
            // SAFETY: matches {layer,rms}_norm_bwd (x, w, dy, dx, pdg, pdb, M, N, eps, flags);
            // pdg/pdb hold grid·N floats, the warp path's 2·N floats of shared memory
            // (N <= 512) are requested, the block fits CN_MAX_THREADS.
            unsafe { lb.launch(cfg((grid, 1), block, smem)) }.w()?;
            (pdg, pdb, grid)
        };
        if w.is_none() {
            return Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()));
        }
        let (mut dw, mut db) = params.split_at_mut(np);
        let (p, n) = (int(spec, "partials", p)?, int(spec, "parameters", np)?);
        let f = function::<T>(dev, spec.kind, "dparams")?;
        let mut lb = stream.launch_builder(&f);
        lb.arg(&pdg).arg(&pdb).arg(&mut dw);
        let db_arg;
        if op.bias {
            lb.arg(&mut db);
        } else {
            db_arg = null;
            lb.arg(&db_arg);
        }
        lb.arg(&p).arg(&n);
        // SAFETY: matches *_dparams (dg, db, dw, dbias, P, N): the partials hold P·N floats,
        // dw and db are N elements of the output (db null without a bias).
        unsafe { lb.launch(cfg((np.div_ceil(32), 1), DPARAMS_THREADS, 0)) }.w()?;
        drop(lb);
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    let out = dispatch!(op.spec, x, run(op, x, w, dy))?;
    Ok((out, op.packed_shape(w.is_some(), x.1)))
}
