//! Element-wise passes over the rows of `K` equally laid-out inputs into one output
//! written once: y from x (the forward's normalize pass), dx from x and dy (BatchNorm's
//! backward). The output is split into pieces that rayon's jobs fill straight into the
//! vector's uninitialized capacity; each piece is handed to the op run by run, a run
//! being the piece's elements of one row, with the row's index and the offset of the
//! run in it.

use super::alloc::filled;
use super::blocks::direct;
use super::elem::{Acc, Elem, Slot};
use super::simd::run;

/// An element-wise op over runs of a row's elements, in accumulators.
pub(super) trait RunOp<A, const K: usize>: Sync {
    /// What a job keeps across its runs (a row's statistics once computed).
    type State;

    /// A job's state, made once per job.
    fn state(&self) -> Self::State;

    /// Writes `out[i]` for each element `i` of a run: elements `i0..i0 + out.len()` of
    /// `row`, whose inputs are `ins`. Every element of `out` must be written.
    fn run<O: Slot<A>>(&self, state: &mut Self::State, row: usize, i0: usize, ins: [&[A]; K], out: &mut [O]);
}

/// Calls `part(row, i0, at, n)` for each run of a piece of `piece` elements from
/// `start` that lies in one row of `len`: `n` elements from `at` (relative to `start`),
/// element `i0` of `row` onwards. Divides once per piece, not once per run: rows of a
/// 7 × 7 feature map are 49 elements long.
#[inline(always)]
fn row_runs(len: usize, piece: usize, start: usize, mut part: impl FnMut(usize, usize, usize, usize)) {
    let (mut r, mut i0) = (start / len, start % len);
    let mut at = 0;
    while at < piece {
        let n = (len - i0).min(piece - at);
        part(r, i0, at, n);
        (r, i0, at) = (r + 1, 0, at + n);
    }
}

/// `op` over every element of the rows of `len` elements of `ins`, into a new vector
/// laid out as they are, written once, never zeroed (`super::alloc::filled`). f32 and
/// f64 runs read the inputs and write the output in place; f16/bf16 pieces are widened
/// once into buffers the job keeps, computed there run by run, and rounded once into
/// the output. (Converting run by run costs a stack buffer per run, which for
/// BatchNorm's rows of 49 was most of the time: docs/perf-notes.md, c16.)
pub(super) fn map_rows<T: Elem, const K: usize, Op: RunOp<T::Acc, K>>(len: usize, ins: [&[T]; K], op: &Op) -> Vec<T> {
    let n = ins.first().map_or(0, |s| s.len());
    if let Some(xs) = direct(ins) {
        let out = filled(
            n,
            || op.state(),
            |state, start, y| {
                run(
                    #[inline(always)]
                    || {
                        row_runs(
                            len,
                            y.len(),
                            start,
                            #[inline(always)]
                            |r, i0, at, m| {
                                let part = xs.map(|x| &x[start + at..start + at + m]);
                                op.run(state, r, i0, part, &mut y[at..at + m]);
                            },
                        )
                    },
                )
            },
        );
        if let Some(out) = T::from_acc_vec(out) {
            return out;
        }
    }
    let with_buffers = || (op.state(), std::array::from_fn::<_, K, _>(|_| Vec::new()), Vec::new());
    filled(n, with_buffers, |(state, wide, ybuf), start, y| {
        run(
            #[inline(always)]
            || {
                let m = y.len();
                for (buf, x) in wide.iter_mut().zip(ins) {
                    buf.resize(m, T::Acc::ZERO);
                    T::load(&x[start..start + m], buf);
                }
                ybuf.resize(m, T::Acc::ZERO);
                row_runs(
                    len,
                    m,
                    start,
                    #[inline(always)]
                    |r, i0, at, k| {
                        let part = std::array::from_fn(|j| &wide[j][at..at + k]);
                        op.run(state, r, i0, part, &mut ybuf[at..at + k]);
                    },
                );
                T::store_uninit(ybuf, y);
            },
        )
    })
}
