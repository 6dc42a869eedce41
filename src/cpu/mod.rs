//! The CPU path: one generic forward and one generic backward for every norm, over
//! f32, f64, f16 and bf16.
//!
//! Every norm is a set of rows of `len` elements (see [`Spec`]). Rows are spread over
//! rayon tasks (`rows`). When there are too few rows to keep every core busy, or a row
//! is too long for one task, each row is cut into chunks whose partial results are
//! merged in chunk order.
//!
//! Every pass over a row walks it in blocks (`blocks`). bf16 inputs are read in place,
//! as f32 and f64 are, and widened in the passes' own loops (`elem::Lane`), except in
//! the fused add's backward; f16 inputs are widened to f32 (`convert`): the row-wise
//! forward and backward widen each row (or chunk) once into a buffer their task keeps,
//! other passes block by block into stack buffers. f16/bf16 outputs are computed into
//! block buffers and rounded from them. A row is read from memory once and then served
//! from L1/L2. The moments of each block are taken in two passes over the block (never
//! E[x²] − mean²) and merged across blocks and chunks with Chan's formula (`reduce`).
//!
//! The forward (`forward`) makes two passes over a row, moments then y, written once
//! into the output's uninitialized capacity (`alloc`): f32 and f64 by rayon's jobs
//! piece by piece, f16/bf16 and the fused residual add by tasks of whole rows. The
//! backward (`backward`) makes two passes too, the first reading x and dy from
//! memory, the second from cache, and writes dx once into the output's uninitialized
//! capacity; where a parameter covers runs of a row (GroupNorm, InstanceNorm), its dγ
//! and dβ come from the first pass's sums, and the second pass computes dx alone.
//!
//! Channels-last GroupNorm, whose groups are column blocks rather than rows, has its
//! own passes over tiles of rows (`channels_last`), and channels-first LayerNorm, which
//! normalizes columns, over tiles of columns (`columns`). BatchNorm (`batch`) takes its
//! statistics per channel over pieces of the channel's rows gathered into one buffer,
//! normalizes with the written-once element-wise pass (`runs`), which the forward's
//! normalize pass shares, and computes its dγ and dβ from the same channel sums as its
//! dx, which that element-wise pass then writes.
//!
//! Each task runs through `simd::run`, compiled for AVX2 and AVX-512 as well as the
//! baseline, at the widest level the CPU has. Sums run over four groups of lanes folded
//! in a fixed order, and the dγ/dβ partials are per task and reduced in task order:
//! results are identical from run to run, on any number of threads.

mod alloc;
mod backward;
mod batch;
mod blocks;
mod channels_last;
mod columns;
mod convert;
mod elem;
mod forward;
mod reduce;
mod rows;
mod runs;
pub(crate) mod simd;

use crate::backend::{Arg, Backend, Slots};
use crate::check::{self, dispatch_dtypes};
use crate::spec::{Affine, Kind, Spec};
use candle_core::{CpuStorage, Result};
use elem::Elem;
use half::{bf16, f16};

/// The fused CPU path, for every dtype.
pub(crate) struct Cpu;

/// The elements of a contiguous input.
fn slice<'a, T: Elem>(spec: &Spec, (s, l): Arg<'a, CpuStorage>) -> Result<&'a [T]> {
    Ok(&T::cpu_storage_as_slice(s)?[check::contiguous_range(spec.name(), l)?])
}

/// An op's inputs as element slices: x, residual, dy and dh as `T`, the parameter
/// slots (weight, bias, running statistics) as `P`.
struct Typed<'a, T, P> {
    big: Slots<&'a [T]>,
    weight: Option<&'a [P]>,
    bias: Option<&'a [P]>,
    running: Option<[&'a [P]; 2]>,
}

fn typed<'a, T: Elem, P: Elem>(spec: &Spec, ins: &Slots<Arg<'a, CpuStorage>>) -> Result<Typed<'a, T, P>> {
    let big = Slots {
        weight: None,
        bias: None,
        running: None,
        ..*ins
    };
    let param = |a: Option<Arg<'a, CpuStorage>>| a.map(|a| slice::<P>(spec, a)).transpose();
    Ok(Typed {
        big: big.try_map(|a| slice::<T>(spec, a))?,
        weight: param(ins.weight)?,
        bias: param(ins.bias)?,
        running: match ins.running {
            Some([m, v]) => Some([slice::<P>(spec, m)?, slice::<P>(spec, v)?]),
            None => None,
        },
    })
}

/// The statistics BatchNorm runs with: the batch's, or the running mean and variance.
fn source<'a, T, P>(ins: &Typed<'a, T, P>) -> batch::Source<'a, P> {
    match ins.running {
        None => batch::Source::Batch,
        Some([m, v]) => batch::Source::Running(m, v),
    }
}

/// The one `match` on the dtypes: x's, with parameters of x's dtype or, for f16 and
/// bf16 x, of f32 (mixed precision).
macro_rules! dispatch {
    ($spec:expr, $ins:expr, $run:ident $args:tt) => {
        dispatch_dtypes!(
            $spec.name(),
            $ins.dtypes(),
            "the CPU",
            [
                (F32, F32) => (f32, f32),
                (F64, F64) => (f64, f64),
                (F16, F16) => (f16, f16),
                (BF16, BF16) => (bf16, bf16),
                (F16, F32) => (f16, f32),
                (BF16, F32) => (bf16, f32)
            ],
            $run $args
        )
    };
}

impl Backend for Cpu {
    type Storage = CpuStorage;

    fn forward(&self, spec: &Spec, ins: &Slots<Arg<'_, CpuStorage>>) -> Result<(CpuStorage, Option<CpuStorage>)> {
        fn run<T: Elem, P: Elem<Acc = T::Acc>>(
            spec: &Spec,
            ins: &Slots<Arg<CpuStorage>>,
        ) -> Result<(CpuStorage, Option<CpuStorage>)> {
            let s = typed::<T, P>(spec, ins)?;
            let x = s.big.x;
            let (y, stats) = match spec.kind {
                Kind::Batch => {
                    let (y, stats) = batch::forward(spec, x, s.weight, s.bias, source(&s));
                    (y, s.running.is_none().then_some(stats))
                }
                Kind::GroupLast => (channels_last::forward(spec, x, s.weight, s.bias), None),
                Kind::LayerFirst => (columns::forward(spec, x, s.weight, s.bias), None),
                _ => (forward::forward(spec, x, s.big.residual, s.weight, s.bias), None),
            };
            Ok((T::to_cpu_storage_owned(y), stats.map(P::to_cpu_storage_owned)))
        }
        dispatch!(spec, ins, run(spec, ins))
    }

    fn backward(
        &self,
        spec: &Spec,
        affine: Affine,
        ins: &Slots<Arg<'_, CpuStorage>>,
    ) -> Result<(CpuStorage, Option<CpuStorage>)> {
        fn run<T: Elem, P: Elem<Acc = T::Acc>>(
            spec: &Spec,
            affine: Affine,
            ins: &Slots<Arg<CpuStorage>>,
        ) -> Result<(CpuStorage, Option<CpuStorage>)> {
            let s = typed::<T, P>(spec, ins)?;
            let (x, dh) = (s.big.x, s.big.dh);
            let Some(dy) = s.big.dy else {
                candle_core::bail!("{}: internal error: a backward without dy", spec.name())
            };
            let (dx, params) = match spec.kind {
                Kind::Batch => batch::backward(spec, affine, (x, s.weight, dy), source(&s)),
                Kind::GroupLast => channels_last::backward(spec, affine, (x, (s.weight, s.bias), dy)),
                Kind::LayerFirst => columns::backward(spec, affine, (x, (s.weight, s.bias), dy)),
                _ => backward::backward(spec, affine, (x, (s.weight, s.bias), dy, dh)),
            };
            let params = (affine.weight || affine.bias).then(|| P::to_cpu_storage_owned(params));
            Ok((T::to_cpu_storage_owned(dx), params))
        }
        dispatch!(spec, ins, run(spec, affine, ins))
    }
}
