//! How a [`Spec`]'s rows are cut into rayon tasks and chunks, and which affine
//! parameters a run of a row's elements uses.

use super::elem::{Acc, Elem};
use crate::spec::{Affine, Spec};
use rayon::prelude::*;

/// Rows up to this length are processed whole by one task.
const MAX_WHOLE_ROW: usize = 1 << 16;

/// Chunk length for rows that are split across tasks (a multiple of [`BLOCK`]).
pub(super) const CHUNK: usize = 1 << 14;

/// Elements one rayon task should own at least, so scheduling costs stay small.
pub(super) const TASK_ELEMS: usize = 1 << 14;

/// Upper bound on the dγ/dβ partial buffers of the backward (one per task).
pub(super) const MAX_PARTIALS: usize = 32;

/// Calls `f(param, range)` for each run of elements of `row[i0..i0 + n]` that share
/// one affine parameter; ranges are relative to `i0`. Used when `spec.inner > 1`.
#[inline(always)]
pub(super) fn for_segments(
    spec: &Spec,
    row: usize,
    i0: usize,
    n: usize,
    mut f: impl FnMut(usize, std::ops::Range<usize>),
) {
    let base = spec.param_offset(row);
    let mut i = i0;
    while i < i0 + n {
        let c = i / spec.inner;
        let end = ((c + 1) * spec.inner).min(i0 + n);
        f(base + c, i - i0..end - i0);
        i = end;
    }
}

fn to_acc<T: Elem>(v: &[T]) -> Vec<T::Acc> {
    let mut out = vec![T::Acc::ZERO; v.len()];
    T::load(v, &mut out);
    out
}

/// Weight and bias as accumulator vectors, from parameters of type `P` (x's element
/// type, or f32 for half-precision x); a missing one becomes ones or zeros so one loop
/// serves every affine case.
pub(super) fn affine_params<P: Elem>(spec: &Spec, w: Option<&[P]>, b: Option<&[P]>) -> (Vec<P::Acc>, Vec<P::Acc>) {
    let n = spec.params();
    (
        w.map_or_else(|| vec![P::Acc::ONE; n], to_acc),
        b.map_or_else(|| vec![P::Acc::ZERO; n], to_acc),
    )
}

/// dγ then dβ, as `affine` asks, stored to the parameters' type: the backward's
/// parameter gradients.
pub(super) fn param_grads_out<P: Elem>(affine: Affine, dg: &[P::Acc], db: &[P::Acc]) -> Vec<P> {
    let mut out = Vec::new();
    for (given, g) in [(affine.weight, dg), (affine.bias, db)] {
        if given {
            let at = out.len();
            out.resize(at + g.len(), P::zero());
            P::store(g, &mut out[at..]);
        }
    }
    out
}

/// Whether rows are cut into chunks: too long for one task, or too few to give every
/// thread work.
pub(super) fn split_rows(spec: &Spec) -> bool {
    spec.len > MAX_WHOLE_ROW || (spec.len > CHUNK && spec.rows < 2 * rayon::current_num_threads())
}

/// Rows per task for the row-parallel path.
pub(super) fn rows_per_task(spec: &Spec) -> usize {
    TASK_ELEMS.div_ceil(spec.len).clamp(1, spec.rows)
}

/// The elements `k·CHUNK..` of row `r` of `v`, for rows cut into chunks.
pub(super) fn chunk_of<'a, T>(spec: &Spec, v: &'a [T], r: usize, k: usize) -> &'a [T] {
    let row = &v[r * spec.len..(r + 1) * spec.len];
    &row[k * CHUNK..((k + 1) * CHUNK).min(spec.len)]
}

/// (row, chunk, mutable chunk) for every chunk of every row of `out`, in parallel.
pub(super) fn chunks_mut<'a, T: Send>(
    spec: &Spec,
    out: &'a mut [T],
) -> impl ParallelIterator<Item = (usize, usize, &'a mut [T])> {
    out.par_chunks_mut(spec.len)
        .enumerate()
        .flat_map(|(r, row)| row.par_chunks_mut(CHUNK).enumerate().map(move |(k, c)| (r, k, c)))
}
