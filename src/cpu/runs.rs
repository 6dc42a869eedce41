//! Element-wise passes over the rows of `K` equally laid-out inputs into one output
//! written once: y from x (the forward's normalize pass, BatchNorm's per-channel
//! affine), dx from x and dy (BatchNorm's backward). The output is split into pieces
//! that rayon's jobs fill straight into the vector's uninitialized capacity; each piece
//! is handed to the op run by run, a run being the piece's elements of one row, with
//! the row's index, its place in the cycle of rows that share parameters, and the
//! offset of the run in it.

use super::alloc::filled;
use super::blocks::{as_acc_all, lanes};
use super::elem::{Acc, Elem, Lane, Slot};
use super::simd::run;

/// Where a run lies: elements `i0..` of `row`, which is row `cycle` (= row % period) of
/// the rows that share parameters (BatchNorm's channel).
#[derive(Clone, Copy)]
pub(super) struct Run {
    pub row: usize,
    pub cycle: usize,
    pub i0: usize,
}

/// An element-wise op over runs of a row's elements, in accumulators.
pub(super) trait RunOp<A, const K: usize>: Sync {
    /// What a job keeps across its runs (a row's statistics once computed).
    type State;

    /// A job's state, made once per job.
    fn state(&self) -> Self::State;

    /// Writes `out[i]` for each element `i` of a run (`at`, `out.len()` elements),
    /// whose inputs are `ins`, elements converted in the loop ([`Lane`]). Every element
    /// of `out` must be written.
    fn run<I: Lane<A>, O: Slot<A>>(&self, state: &mut Self::State, at: Run, ins: [&[I]; K], out: &mut [O]);
}

/// Elements [`each`] computes at a time: an AVX-512 register of f32, two of AVX2's.
const WIDTH: usize = 16;

/// `out[i] = f(x[i], y[i])` for every element of a run, [`WIDTH`] at a time, the last
/// [`WIDTH`] of a run that is not a multiple of it computed again over the ones before
/// (the op is element-wise, so they are written twice with the same value): no run
/// ends in the narrower and scalar loops the compiler would add, where BatchNorm's runs
/// of 49 spent as long as in the rest (docs/perf-notes.md, c23). Runs shorter than
/// [`WIDTH`] go element by element.
#[inline(always)]
pub(super) fn each<A, I: Lane<A>, J: Lane<A>, O: Slot<A>>(x: &[I], y: &[J], out: &mut [O], f: impl Fn(A, A) -> A) {
    let n = out.len();
    let (x, y) = (&x[..n], &y[..n]);
    if n < WIDTH {
        for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
            o.set(f(x.get(), y.get()));
        }
        return;
    }
    let last = n - WIDTH;
    let mut s = 0;
    loop {
        let (o, x, y) = (&mut out[s..s + WIDTH], &x[s..s + WIDTH], &y[s..s + WIDTH]);
        for l in 0..WIDTH {
            o[l].set(f(x[l].get(), y[l].get()));
        }
        if s == last {
            return;
        }
        s = (s + WIDTH).min(last);
    }
}

/// The rows of `len` elements whose parameters repeat every `period` rows.
#[derive(Clone, Copy)]
pub(super) struct Rows {
    pub len: usize,
    pub period: usize,
}

/// Calls `part(run, at, n)` for each run of a piece of `piece` elements from `start`
/// that lies in one row: `n` elements from `at` (relative to `start`). Divides once per
/// piece, not once per run: rows of a 7 × 7 feature map are 49 elements long.
#[inline(always)]
fn row_runs(rows: Rows, piece: usize, start: usize, mut part: impl FnMut(Run, usize, usize)) {
    let (row, i0) = (start / rows.len, start % rows.len);
    let mut run = Run {
        row,
        cycle: row % rows.period,
        i0,
    };
    let mut at = 0;
    while at < piece {
        let n = (rows.len - run.i0).min(piece - at);
        part(run, at, n);
        at += n;
        let cycle = if run.cycle + 1 == rows.period { 0 } else { run.cycle + 1 };
        run = Run {
            row: run.row + 1,
            cycle,
            i0: 0,
        };
    }
}

/// Elements of an f16/bf16 piece computed and rounded at a time (f16 widened first):
/// the buffers then stay in L1 between the steps.
const ROUNDED: usize = 1024;

/// `op` over every element of the `rows` of `ins`, into a new vector laid out as they
/// are, written once, never zeroed (`super::alloc::filled`). Inputs with lanes (f32,
/// f64, bf16) are read in place, converted in the op's loop; f16 pieces are widened
/// [`ROUNDED`] elements at a time into buffers the job keeps. f32 and f64 are written
/// in place; f16/bf16 are computed into a buffer, [`ROUNDED`] elements at a time, and
/// rounded from it by the block conversion (one instruction per vector with AVX-512
/// BF16, where rounding in the op's loop takes eight: docs/perf-notes.md, c23).
/// (Converting run by run costs a stack buffer per run, which for BatchNorm's rows of
/// 49 was most of the time: c16.)
pub(super) fn map_rows<T: Elem, const K: usize, Op: RunOp<T::Acc, K>>(rows: Rows, ins: [&[T]; K], op: &Op) -> Vec<T> {
    let n = ins.first().map_or(0, |s| s.len());
    let init = || (op.state(), std::array::from_fn::<_, K, _>(|_| Vec::new()), Vec::new());
    filled(n, init, |(state, bufs, ybuf), start, y| {
        run(
            #[inline(always)]
            || {
                let xs = lanes(ins);
                if let (Some(xs), Some(y)) = (xs, T::as_acc_uninit(y)) {
                    row_runs(
                        rows,
                        y.len(),
                        start,
                        #[inline(always)]
                        |run, at, m| {
                            let part = std::array::from_fn(|j| &xs[j][start + at..start + at + m]);
                            op.run(state, run, part, &mut y[at..at + m]);
                        },
                    );
                    return;
                }
                for (k, ys) in y.chunks_mut(ROUNDED).enumerate() {
                    let (from, m) = (start + k * ROUNDED, ys.len());
                    ybuf.resize(m, T::Acc::ZERO);
                    match xs {
                        Some(xs) => row_runs(
                            rows,
                            m,
                            from,
                            #[inline(always)]
                            |run, at, len| {
                                let part = std::array::from_fn(|j| &xs[j][from + at..from + at + len]);
                                op.run(state, run, part, &mut ybuf[at..at + len]);
                            },
                        ),
                        None => {
                            let wide = as_acc_all(ins.map(|x| &x[from..from + m]), bufs);
                            row_runs(
                                rows,
                                m,
                                from,
                                #[inline(always)]
                                |run, at, len| {
                                    let part = std::array::from_fn(|j| &wide[j][at..at + len]);
                                    op.run(state, run, part, &mut ybuf[at..at + len]);
                                },
                            );
                        }
                    }
                    T::store_uninit(&ybuf[..m], ys);
                }
            },
        )
    })
}
