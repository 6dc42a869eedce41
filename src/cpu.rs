//! The CPU path: one generic forward and one generic backward for all three norms.
//!
//! Every norm is a set of rows of `len` elements (see [`Spec`]). Rows are spread over
//! rayon tasks. When there are too few rows to keep every core busy, or a row is too
//! long for one task, each row is cut into chunks whose partial results are merged in
//! chunk order.
//!
//! Every pass over a row walks it in blocks of [`BLOCK`] elements. f16 and bf16 blocks
//! are converted into f32 stack buffers as they are read and converted back as they are
//! written, so there is no row-sized scratch: a row is read from memory once and then
//! served from L1/L2. The moments of each block are taken in two passes over the block
//! (never E[x²] − mean²) and merged across blocks and chunks with Chan's formula.
//!
//! The forward makes two passes over a row (moments, then y), and writes y piece by
//! piece into memory that is never zeroed first ([`collect`]). The backward makes two
//! passes too: the first reads x and dy from memory and gathers the moments together
//! with Σg and the co-moment Σg·(x − mean) ([`GradSums`]); the second, from cache,
//! accumulates dγ/dβ and writes dx.
//!
//! A library cannot count on its users building with `target-cpu=native`, so each
//! task runs through [`simd`], which compiles the hot loops for AVX2+FMA and AVX-512
//! as well as the baseline and picks the widest the CPU has at run time.
//!
//! Sums run over four groups of [`LANES`] accumulators (which the compiler keeps in
//! vector registers) folded in a fixed order; the dγ/dβ partials are per task and
//! reduced in task order. Results are therefore identical from run to run.

use crate::op::Spec;
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// f32 lanes of an AVX-512 register: the width of one of the four accumulator groups
/// of a reduction (four, so that the adds of a pass do not wait on each other).
const LANES: usize = 16;
/// Elements per block of a pass (a multiple of [`LANES`]); f16/bf16 blocks are
/// converted through stack buffers of this many f32.
const BLOCK: usize = 512;
/// Rows up to this length are processed whole by one task.
const MAX_WHOLE_ROW: usize = 1 << 16;
/// Chunk length for rows that are split across tasks (a multiple of [`BLOCK`]).
const CHUNK: usize = 1 << 14;
/// Elements one rayon task should own at least, so scheduling costs stay small.
const TASK_ELEMS: usize = 1 << 14;
/// Upper bound on the dγ/dβ partial buffers of the backward (one per task).
const MAX_PARTIALS: usize = 32;

/// The accumulation type: f32 for f32/f16/bf16 inputs, f64 for f64.
pub(crate) trait Acc:
    Copy + Send + Sync + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn sqrt(self) -> Self;
}

macro_rules! impl_acc {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    )*};
}
impl_acc!(f32, f64);

/// An element type the CPU path accepts, with block conversion to and from its accumulator.
pub(crate) trait Elem: candle_core::WithDType {
    type Acc: Acc;
    fn load(src: &[Self], dst: &mut [Self::Acc]);
    fn store(src: &[Self::Acc], dst: &mut [Self]);
    /// The elements as accumulators when they already are (f32, f64): no conversion.
    fn as_acc(v: &[Self]) -> Option<&[Self::Acc]>;
    fn as_acc_mut(v: &mut [Self]) -> Option<&mut [Self::Acc]>;
}

macro_rules! impl_full_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            type Acc = $t;
            #[inline(always)]
            fn load(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
            }
            #[inline(always)]
            fn store(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
            }
            #[inline(always)]
            fn as_acc(v: &[$t]) -> Option<&[$t]> {
                Some(v)
            }
            #[inline(always)]
            fn as_acc_mut(v: &mut [$t]) -> Option<&mut [$t]> {
                Some(v)
            }
        }
    )*};
}
impl_full_elem!(f32, f64);

impl Elem for f16 {
    type Acc = f32;
    #[inline(always)]
    fn load(src: &[f16], dst: &mut [f32]) {
        // half picks F16C at run time where the CPU has it.
        src.convert_to_f32_slice(dst)
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src)
    }
    #[inline(always)]
    fn as_acc(_: &[f16]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_acc_mut(_: &mut [f16]) -> Option<&mut [f32]> {
        None
    }
}

impl Elem for bf16 {
    type Acc = f32;
    #[inline(always)]
    fn load(src: &[bf16], dst: &mut [f32]) {
        // Written on the bits so that the compiler vectorizes it.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [bf16]) {
        // Round to nearest even on the bits, NaN kept quiet, vectorizable.
        for (d, s) in dst.iter_mut().zip(src) {
            let b = s.to_bits();
            let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
            *d = bf16::from_bits(if s.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded });
        }
    }
    #[inline(always)]
    fn as_acc(_: &[bf16]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_acc_mut(_: &mut [bf16]) -> Option<&mut [f32]> {
        None
    }
}

/// Runs `f` compiled for the widest vector instruction set of this CPU, which pulp
/// detects once. Only code inlined into `f` gets the wider instructions, hence the
/// `#[inline(always)]` on the hot path below.
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The `K` inputs as accumulators, when their element type already is one.
#[inline(always)]
fn direct<T: Elem, const K: usize>(ins: [&[T]; K]) -> Option<[&[T::Acc]; K]> {
    let d = ins.map(T::as_acc);
    d.iter().all(Option::is_some).then(|| d.map(Option::unwrap_or_default))
}

/// Calls `f(offset, blocks)` for consecutive blocks of at most [`BLOCK`] elements of
/// the `K` equally long inputs, seen as accumulators: slices of the inputs themselves
/// for f32 and f64, stack buffers converted from them otherwise.
#[inline(always)]
fn read_blocks<T: Elem, const K: usize>(ins: [&[T]; K], mut f: impl FnMut(usize, [&[T::Acc]; K])) {
    let n = ins.first().map_or(0, |s| s.len());
    if let Some(d) = direct(ins) {
        for o in (0..n).step_by(BLOCK) {
            f(o, d.map(|s| &s[o..n.min(o + BLOCK)]));
        }
        return;
    }
    let mut bufs = [[T::Acc::ZERO; BLOCK]; K];
    for o in (0..n).step_by(BLOCK) {
        let m = BLOCK.min(n - o);
        for (b, s) in bufs.iter_mut().zip(ins) {
            T::load(&s[o..o + m], &mut b[..m]);
        }
        f(o, std::array::from_fn(|k| &bufs[k][..m]));
    }
}

/// As [`read_blocks`], with an output block that `f` fills and that is then stored
/// into `out` (written in place for f32 and f64).
#[inline(always)]
fn write_blocks<T: Elem, const K: usize>(
    ins: [&[T]; K],
    out: &mut [T],
    mut f: impl FnMut(usize, [&[T::Acc]; K], &mut [T::Acc]),
) {
    let n = out.len();
    if let (Some(d), Some(o_acc)) = (direct(ins), T::as_acc_mut(out)) {
        for (o, ob) in (0..n).step_by(BLOCK).zip(o_acc.chunks_mut(BLOCK)) {
            f(o, d.map(|s| &s[o..o + ob.len()]), ob);
        }
        return;
    }
    let mut ybuf = [T::Acc::ZERO; BLOCK];
    read_blocks(
        ins,
        #[inline(always)]
        |o, blocks| {
            let yb = &mut ybuf[..blocks[0].len()];
            f(o, blocks, yb);
            T::store(yb, &mut out[o..o + yb.len()]);
        },
    );
}

/// `a[l] += f(x[l], y[l])` for one group of lanes.
#[inline(always)]
fn add_lanes<A: Acc>(a: &mut [A; LANES], x: &[A], y: &[A], f: &impl Fn(A, A) -> A) {
    for l in 0..LANES {
        a[l] += f(x[l], y[l]);
    }
}

/// Sum of `f(x[i], y[i])` in a fixed order: over four groups of [`LANES`]
/// accumulators, then over the first group for what is left, then the last few
/// elements one by one; the groups are added lane by lane and the lanes halved. The
/// groups are four separate arrays updated by straight-line calls, which the compiler
/// keeps in vector registers (a loop over groups makes it spill or gather them).
#[inline(always)]
fn lane_sum2<A: Acc>(x: &[A], y: &[A], f: impl Fn(A, A) -> A) -> A {
    let (mut a0, mut a1, mut a2, mut a3) = ([A::ZERO; LANES], [A::ZERO; LANES], [A::ZERO; LANES], [A::ZERO; LANES]);
    let (xw, yw) = (x.chunks_exact(4 * LANES), y.chunks_exact(4 * LANES));
    let (xr, yr) = (xw.remainder().chunks_exact(LANES), yw.remainder().chunks_exact(LANES));
    let (xt, yt) = (xr.remainder(), yr.remainder());
    for (a, b) in xw.zip(yw) {
        add_lanes(&mut a0, a, b, &f);
        add_lanes(&mut a1, &a[LANES..], &b[LANES..], &f);
        add_lanes(&mut a2, &a[2 * LANES..], &b[2 * LANES..], &f);
        add_lanes(&mut a3, &a[3 * LANES..], &b[3 * LANES..], &f);
    }
    for (a, b) in xr.zip(yr) {
        add_lanes(&mut a0, a, b, &f);
    }
    for l in 0..LANES {
        a0[l] = (a0[l] + a1[l]) + (a2[l] + a3[l]);
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            a0[l] += a0[l + width];
        }
    }
    a0[0] + xt.iter().zip(yt).fold(A::ZERO, |s, (&a, &b)| s + f(a, b))
}

/// Sum of `f(x[i])`, accumulated as in [`lane_sum2`].
#[inline(always)]
fn lane_sum<A: Acc>(x: &[A], f: impl Fn(A) -> A) -> A {
    lane_sum2(x, x, |v, _| f(v))
}

/// Sum of `x[i] * y[i]`, accumulated as in [`lane_sum2`].
#[inline(always)]
fn lane_dot<A: Acc>(x: &[A], y: &[A]) -> A {
    lane_sum2(x, y, |a, b| a * b)
}

/// Count, mean and sum of squared deviations of a block (mean 0 and plain sum of
/// squares when the norm does not center).
#[derive(Clone, Copy)]
struct Moments<A> {
    n: A,
    mean: A,
    m2: A,
}

impl<A: Acc> Moments<A> {
    /// No elements: merging it into anything changes nothing.
    const EMPTY: Self = Self {
        n: A::ZERO,
        mean: A::ZERO,
        m2: A::ZERO,
    };

    /// Two passes over a block held in L1: never E[x²] − mean².
    #[inline(always)]
    fn of(x: &[A], center: bool) -> Self {
        let n = A::from_f64(x.len() as f64);
        let mean = if center { lane_sum(x, |v| v) / n } else { A::ZERO };
        let m2 = lane_sum(x, |v| (v - mean) * (v - mean));
        Self { n, mean, m2 }
    }

    /// Chan et al.'s pairwise merge of two non-empty blocks, or of [`Self::EMPTY`] and
    /// a non-empty block; exact for the non-centered case (delta is 0).
    #[inline(always)]
    fn merge(self, o: Self) -> Self {
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        Self {
            n,
            mean: self.mean + delta * (o.n / n),
            m2: self.m2 + o.m2 + delta * delta * (self.n * o.n / n),
        }
    }

    /// (mean, rstd) with eps inside the square root.
    fn stats(self, eps: A) -> (A, A) {
        (self.mean, A::ONE / (self.m2 / self.n + eps).sqrt())
    }
}

/// Moments of a non-empty part of a row, block by block.
#[inline(always)]
fn moments<T: Elem>(x: &[T], center: bool) -> Moments<T::Acc> {
    let mut m = Moments::EMPTY;
    read_blocks(
        [x],
        #[inline(always)]
        |_, [b]| m = m.merge(Moments::of(b, center)),
    );
    m
}

/// Calls `f(param, range)` for each run of elements of `row[i0..i0 + n]` that share
/// one affine parameter; ranges are relative to `i0`. Used when `spec.inner > 1`.
#[inline(always)]
fn for_segments(spec: &Spec, row: usize, i0: usize, n: usize, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
    let base = spec.param_offset(row);
    let mut i = i0;
    while i < i0 + n {
        let c = i / spec.inner;
        let end = ((c + 1) * spec.inner).min(i0 + n);
        f(base + c, i - i0..end - i0);
        i = end;
    }
}

/// `y = (x - mean) * rstd * w + b` for elements `i0..` of `row`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn apply_forward<A: Acc>(
    spec: &Spec,
    row: usize,
    i0: usize,
    x: &[A],
    y: &mut [A],
    (mean, rstd): (A, A),
    w: &[A],
    b: &[A],
) {
    if spec.inner == 1 {
        let p = spec.param_offset(row) + i0;
        let (w, b) = (&w[p..p + x.len()], &b[p..p + x.len()]);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mean) * rstd * w + b;
        }
    } else {
        for_segments(
            spec,
            row,
            i0,
            x.len(),
            #[inline(always)]
            |p, r| {
                let (scale, shift) = (rstd * w[p], b[p]);
                for (y, &x) in y[r.clone()].iter_mut().zip(&x[r]) {
                    *y = (x - mean) * scale + shift;
                }
            },
        );
    }
}

/// Normalizes elements `i0..` of `row` (x) into y with the row's (mean, rstd).
#[inline(always)]
fn forward_part<T: Elem>(
    spec: &Spec,
    (row, i0): (usize, usize),
    x: &[T],
    y: &mut [T],
    stats: (T::Acc, T::Acc),
    (w, b): (&[T::Acc], &[T::Acc]),
) {
    write_blocks(
        [x],
        y,
        #[inline(always)]
        |o, [xa], ya| apply_forward(spec, row, i0 + o, xa, ya, stats, w, b),
    );
}

/// dγ/dβ accumulators of one task or chunk, indexed by parameter − `p_base`.
struct ParamGrads<A> {
    p_base: usize,
    dg: Vec<A>,
    db: Vec<A>,
}

impl<A: Acc> ParamGrads<A> {
    fn zeros(p_base: usize, n: usize) -> Self {
        Self {
            p_base,
            dg: vec![A::ZERO; n],
            db: vec![A::ZERO; n],
        }
    }

    /// Adds `o` into `self`, which covers every parameter of `o`.
    fn add(&mut self, o: &Self) {
        let off = o.p_base - self.p_base;
        for (d, &v) in self.dg[off..].iter_mut().zip(&o.dg) {
            *d += v;
        }
        for (d, &v) in self.db[off..].iter_mut().zip(&o.db) {
            *d += v;
        }
    }
}

/// g = dy·w for the block at `i0..` of `row`, into `g`.
#[inline(always)]
fn dy_times_w<A: Acc>(spec: &Spec, (row, i0): (usize, usize), dy: &[A], w: &[A], g: &mut [A]) {
    if spec.inner == 1 {
        let p = spec.param_offset(row) + i0;
        for ((g, &d), &w) in g.iter_mut().zip(dy).zip(&w[p..p + dy.len()]) {
            *g = d * w;
        }
    } else {
        for_segments(
            spec,
            row,
            i0,
            dy.len(),
            #[inline(always)]
            |p, r| {
                for (g, &d) in g[r.clone()].iter_mut().zip(&dy[r]) {
                    *g = d * w[p];
                }
            },
        );
    }
}

/// Adds dy·x̂ and dy of the block at `i0..` of `row` to the dγ/dβ partials.
#[inline(always)]
fn accumulate_params<A: Acc>(spec: &Spec, (row, i0): (usize, usize), xh: &[A], dy: &[A], acc: &mut ParamGrads<A>) {
    if spec.inner == 1 {
        let o = spec.param_offset(row) + i0 - acc.p_base;
        let n = dy.len();
        let (dg, db) = (&mut acc.dg[o..o + n], &mut acc.db[o..o + n]);
        for (((dg, db), &x), &d) in dg.iter_mut().zip(db.iter_mut()).zip(xh).zip(dy) {
            *dg += d * x;
            *db += d;
        }
    } else {
        for_segments(
            spec,
            row,
            i0,
            dy.len(),
            #[inline(always)]
            |p, r| {
                acc.dg[p - acc.p_base] += lane_dot(&xh[r.clone()], &dy[r.clone()]);
                acc.db[p - acc.p_base] += lane_sum(&dy[r], |v| v);
            },
        );
    }
}

/// What the first backward pass learns about a run of elements of a row: the moments
/// of x, Σg and the co-moment Σg·(x − mean) (g = dy·w, mean the run's own), merged
/// like [`Moments`]. The co-moment is summed over deviations from each block's mean,
/// as the variance is, rather than as Σg·x − mean·Σg, whose terms are |mean|/std times
/// larger than what is left of them.
#[derive(Clone, Copy)]
struct GradSums<A> {
    x: Moments<A>,
    sg: A,
    cgx: A,
}

impl<A: Acc> GradSums<A> {
    const EMPTY: Self = Self {
        x: Moments::EMPTY,
        sg: A::ZERO,
        cgx: A::ZERO,
    };

    #[inline(always)]
    fn merge(self, o: Self) -> Self {
        let x = self.x.merge(o.x);
        Self {
            x,
            sg: self.sg + o.sg,
            cgx: self.cgx + o.cgx + self.sg * (self.x.mean - x.mean) + o.sg * (o.x.mean - x.mean),
        }
    }

    /// What the second pass needs, once the sums cover the whole row.
    fn finish(self, spec: &Spec) -> RowGrad<A> {
        let (mean, rstd) = self.x.stats(A::from_f64(spec.eps));
        let inv_n = A::ONE / self.x.n;
        RowGrad {
            mean,
            rstd,
            mean_g: if spec.center() { self.sg * inv_n } else { A::ZERO },
            mean_gx: rstd * self.cgx * inv_n,
        }
    }
}

/// A row's statistics for its second backward pass: mean and rstd of x, mean(g) (0
/// for a norm that does not center) and mean(g·x̂).
#[derive(Clone, Copy)]
struct RowGrad<A> {
    mean: A,
    rstd: A,
    mean_g: A,
    mean_gx: A,
}

/// First backward pass over the elements of a row from `at = (row, i0)` on, the one
/// that reads x and dy from memory: their [`GradSums`], block by block.
#[inline(always)]
fn backward_sums<T: Elem>(spec: &Spec, at: (usize, usize), (x, dy): (&[T], &[T]), w: &[T::Acc]) -> GradSums<T::Acc> {
    let mut g = [T::Acc::ZERO; BLOCK];
    let mut sums = GradSums::EMPTY;
    read_blocks(
        [x, dy],
        #[inline(always)]
        |o, [xa, da]| {
            let g = &mut g[..xa.len()];
            dy_times_w(spec, (at.0, at.1 + o), da, w, g);
            let m = Moments::of(xa, spec.center());
            let sg = lane_sum(g, |v| v);
            let cgx = lane_sum2(g, xa, |g, x| g * (x - m.mean));
            sums = sums.merge(GradSums { x: m, sg, cgx });
        },
    );
    sums
}

/// Second backward pass over the same elements, from cache: adds dy·x̂ and dy
/// to `acc` and writes dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)).
#[inline(always)]
fn backward_dx<T: Elem>(
    spec: &Spec,
    at: (usize, usize),
    (x, dy): (&[T], &[T]),
    dx: &mut [T],
    r: RowGrad<T::Acc>,
    w: &[T::Acc],
    acc: &mut ParamGrads<T::Acc>,
) {
    let (mut xh, mut g) = ([T::Acc::ZERO; BLOCK], [T::Acc::ZERO; BLOCK]);
    write_blocks(
        [x, dy],
        dx,
        #[inline(always)]
        |o, [xa, da], out| {
            let at = (at.0, at.1 + o);
            let (xh, g) = (&mut xh[..xa.len()], &mut g[..xa.len()]);
            for (h, &x) in xh.iter_mut().zip(xa) {
                *h = (x - r.mean) * r.rstd;
            }
            accumulate_params(spec, at, xh, da, acc);
            dy_times_w(spec, at, da, w, g);
            for ((d, &g), &x) in out.iter_mut().zip(&*g).zip(&*xh) {
                *d = r.rstd * (g - r.mean_g - x * r.mean_gx);
            }
        },
    );
}

fn to_acc<T: Elem>(v: &[T]) -> Vec<T::Acc> {
    let mut out = vec![T::Acc::ZERO; v.len()];
    T::load(v, &mut out);
    out
}

/// Weight and bias as accumulator vectors; a missing one becomes ones or zeros so one
/// loop serves every affine case.
fn affine<T: Elem>(spec: &Spec, w: Option<&[T]>, b: Option<&[T]>) -> (Vec<T::Acc>, Vec<T::Acc>) {
    let n = spec.params();
    (
        w.map_or_else(|| vec![T::Acc::ONE; n], to_acc),
        b.map_or_else(|| vec![T::Acc::ZERO; n], to_acc),
    )
}

/// `n` zeros with room for `capacity` elements, in memory asked to be backed by huge
/// pages, for the backward's dx, whose tasks (fixed, for deterministic dγ/dβ
/// partials) write into it in place. Large outputs are zeroed by all threads, so that
/// the first touch of fresh pages is shared among the cores instead of falling on the
/// calling thread alone.
fn output<T: Elem>(n: usize, capacity: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(capacity);
    advise_huge_pages(&v);
    if n < TASK_ELEMS {
        v.resize(n, T::zero());
    } else {
        v.par_extend(rayon::iter::repeat_n(T::zero(), n));
    }
    v
}

/// Asks Linux to back the whole 2 MiB pages inside `v`'s allocation with transparent
/// huge pages, before anything touches them. Large outputs are mostly fresh memory
/// (glibc maps allocations of 32 MiB and more anew each time and gives trimmed heap
/// back), and faulting them in 4 KiB at a time costs more than computing them
/// (docs/perf-notes.md). Without THP, or in "never" mode, the advice changes nothing.
#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &Vec<T>) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = v.as_ptr() as usize;
    let begin = start.next_multiple_of(HUGE_PAGE);
    let end = (start + v.capacity() * std::mem::size_of::<T>()) / HUGE_PAGE * HUGE_PAGE;
    if end > begin {
        // SAFETY: [begin, end) lies inside the allocation `v` owns (its capacity, in
        // bytes, from its start), and MADV_HUGEPAGE only changes how the kernel backs
        // those pages, never their contents or whether they are mapped. The result is
        // ignored: the advice is optional and failing it leaves the memory as it was.
        unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_: &Vec<T>) {}

/// Whether rows are cut into chunks: too long for one task, or too few to give every
/// thread work.
fn split_rows(spec: &Spec) -> bool {
    spec.len > MAX_WHOLE_ROW || (spec.len > CHUNK && spec.rows < 2 * rayon::current_num_threads())
}

/// Rows per task for the row-parallel path.
fn rows_per_task(spec: &Spec) -> usize {
    TASK_ELEMS.div_ceil(spec.len).clamp(1, spec.rows)
}

/// The elements `k·CHUNK..` of row `r` of `v`, for rows cut into chunks.
fn chunk_of<'a, T>(spec: &Spec, v: &'a [T], r: usize, k: usize) -> &'a [T] {
    let row = &v[r * spec.len..(r + 1) * spec.len];
    &row[k * CHUNK..((k + 1) * CHUNK).min(spec.len)]
}

/// (row, chunk, mutable chunk) for every chunk of every row of `out`, in parallel.
fn chunks_mut<'a, T: Send>(spec: &Spec, out: &'a mut [T]) -> impl ParallelIterator<Item = (usize, usize, &'a mut [T])> {
    out.par_chunks_mut(spec.len)
        .enumerate()
        .flat_map(|(r, row)| row.par_chunks_mut(CHUNK).enumerate().map(move |(k, c)| (r, k, c)))
}

/// Per-row (mean, rstd) for split rows, from chunk moments merged in chunk order.
fn split_stats<T: Elem>(spec: &Spec, x: &[T]) -> Vec<(T::Acc, T::Acc)> {
    let eps = T::Acc::from_f64(spec.eps);
    let nck = spec.len.div_ceil(CHUNK);
    let moments: Vec<Moments<T::Acc>> = (0..spec.rows * nck)
        .into_par_iter()
        .map(|item| {
            let c = chunk_of(spec, x, item / nck, item % nck);
            simd(
                #[inline(always)]
                || moments(c, spec.center()),
            )
        })
        .collect();
    moments
        .chunks(nck)
        .map(|m| m.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)).stats(eps))
        .collect()
}

/// Elements of one piece of a [`collect`]ed output: a few KiB, so that a piece is
/// filled in L1 before it is moved to its place.
const PIECE: usize = 2048;

/// A vector of `n` elements filled in parallel by `fill(state, start, out)`, which
/// writes elements `start..start + out.len()`; `state` is made by `init` once per
/// rayon job and sees that job's pieces in order.
///
/// Rayon's indexed collect writes each piece straight into the vector's spare
/// capacity, so the output is never zeroed first: zeroing it would move as many bytes
/// again as writing it (docs/perf-notes.md).
fn collect<T: Elem, S>(
    n: usize,
    init: impl Fn() -> S + Send + Sync,
    fill: impl Fn(&mut S, usize, &mut [T]) + Send + Sync,
) -> Vec<T> {
    let count = n.div_ceil(PIECE);
    let mut pieces: Vec<[T; PIECE]> = Vec::with_capacity(count);
    advise_huge_pages(&pieces);
    (0..count)
        .into_par_iter()
        .with_min_len(TASK_ELEMS / PIECE)
        .map_init(init, |state, k| {
            let mut piece = [T::zero(); PIECE];
            let start = k * PIECE;
            fill(state, start, &mut piece[..PIECE.min(n - start)]);
            piece
        })
        .collect_into_vec(&mut pieces);
    let mut v = pieces.into_flattened();
    v.truncate(n);
    v
}

/// A row and its (mean, rstd), kept by a forward job for the pieces that follow.
type CachedStats<A> = (usize, (A, A));

/// Forward: y for every element of `x`, laid out as `x`.
pub(crate) fn forward<T: Elem>(spec: &Spec, x: &[T], w: Option<&[T]>, b: Option<&[T]>) -> Vec<T> {
    if x.is_empty() {
        return Vec::new();
    }
    let (w, b) = affine(spec, w, b);
    let wb = (&w[..], &b[..]);
    let len = spec.len;
    // Split rows have their statistics gathered first, across tasks. A whole row has
    // them taken by each job that meets it, once (the job then finds the row in cache
    // for the rest of it); only rows cut between two jobs are read twice.
    let split = split_rows(spec).then(|| split_stats(spec, x));
    let eps = T::Acc::from_f64(spec.eps);
    collect(
        x.len(),
        || None,
        |cached: &mut Option<CachedStats<T::Acc>>, start, out| {
            simd(
                #[inline(always)]
                || {
                    let mut done = 0;
                    while done < out.len() {
                        let (r, i0) = ((start + done) / len, (start + done) % len);
                        let n = (len - i0).min(out.len() - done);
                        let xr = &x[r * len..(r + 1) * len];
                        let stats = match (&split, *cached) {
                            (Some(s), _) => s[r],
                            (None, Some((cr, s))) if cr == r => s,
                            (None, _) => {
                                let s = moments(xr, spec.center()).stats(eps);
                                *cached = Some((r, s));
                                s
                            }
                        };
                        forward_part(spec, (r, i0), &xr[i0..i0 + n], &mut out[done..done + n], stats, wb);
                        done += n;
                    }
                },
            )
        },
    )
}

/// Gradients of one backward call.
pub(crate) struct Grads<T> {
    /// dx, laid out as x.
    pub dx: Vec<T>,
    /// dγ, one per parameter (computed with a weight of ones when there is none).
    pub dw: Vec<T>,
    /// dβ, one per parameter.
    pub db: Vec<T>,
}

/// Backward: dx, dγ and dβ from x, the weight and dy, recomputing the row statistics.
pub(crate) fn backward<T: Elem>(spec: &Spec, x: &[T], w: Option<&[T]>, dy: &[T]) -> Grads<T> {
    let np = spec.params();
    // Room for dγ and dβ, which the caller appends to dx.
    let mut dx = output(x.len(), x.len() + 2 * np);
    let (w, _) = affine(spec, w, None);
    let acc = if x.is_empty() {
        ParamGrads::zeros(0, np)
    } else if split_rows(spec) {
        backward_split(spec, x, &w, dy, &mut dx)
    } else {
        backward_rows(spec, x, &w, dy, &mut dx)
    };
    let mut grads = Grads {
        dx,
        dw: vec![T::zero(); np],
        db: vec![T::zero(); np],
    };
    T::store(&acc.dg, &mut grads.dw);
    T::store(&acc.db, &mut grads.db);
    grads
}

/// Backward for rows held whole: one task per block of rows, each with its own dγ/dβ
/// partial, summed in task order.
fn backward_rows<T: Elem>(spec: &Spec, x: &[T], w: &[T::Acc], dy: &[T], dx: &mut [T]) -> ParamGrads<T::Acc> {
    let (np, len) = (spec.params(), spec.len);
    let rpt = rows_per_task(spec).max(spec.rows.div_ceil(MAX_PARTIALS));
    let partials: Vec<ParamGrads<T::Acc>> = dx
        .par_chunks_mut(rpt * len)
        .zip(x.par_chunks(rpt * len).zip(dy.par_chunks(rpt * len)))
        .enumerate()
        .map(|(t, (dxt, (xt, dyt)))| {
            let mut acc = ParamGrads::zeros(0, np);
            simd(
                #[inline(always)]
                || {
                    let rows = dxt.chunks_mut(len).zip(xt.chunks(len).zip(dyt.chunks(len)));
                    for (i, (dxr, (xr, dyr))) in rows.enumerate() {
                        let at = (t * rpt + i, 0);
                        let stats = backward_sums(spec, at, (xr, dyr), w).finish(spec);
                        backward_dx(spec, at, (xr, dyr), dxr, stats, w, &mut acc);
                    }
                },
            );
            acc
        })
        .collect();
    let mut total = ParamGrads::zeros(0, np);
    total
        .dg
        .par_chunks_mut(TASK_ELEMS)
        .zip(total.db.par_chunks_mut(TASK_ELEMS))
        .enumerate()
        .for_each(|(k, (dgc, dbc))| {
            let o = k * TASK_ELEMS;
            for p in &partials {
                for (d, &v) in dgc.iter_mut().zip(&p.dg[o..]) {
                    *d += v;
                }
                for (d, &v) in dbc.iter_mut().zip(&p.db[o..]) {
                    *d += v;
                }
            }
        });
    total
}

/// Backward for split rows: per-chunk [`GradSums`] merged per row in chunk order, then
/// dx and a dγ/dβ partial per chunk, the partials summed in chunk order.
fn backward_split<T: Elem>(spec: &Spec, x: &[T], w: &[T::Acc], dy: &[T], dx: &mut [T]) -> ParamGrads<T::Acc> {
    let nck = spec.len.div_ceil(CHUNK);
    let sums: Vec<GradSums<T::Acc>> = (0..spec.rows * nck)
        .into_par_iter()
        .map(|item| {
            let (r, k) = (item / nck, item % nck);
            let (xc, dyc) = (chunk_of(spec, x, r, k), chunk_of(spec, dy, r, k));
            simd(
                #[inline(always)]
                || backward_sums(spec, (r, k * CHUNK), (xc, dyc), w),
            )
        })
        .collect();
    let rows: Vec<_> = sums
        .chunks(nck)
        .map(|s| s.iter().fold(GradSums::EMPTY, |a, &b| a.merge(b)).finish(spec))
        .collect();
    let parts: Vec<ParamGrads<T::Acc>> = chunks_mut(spec, dx)
        .map(|(r, k, dxc)| {
            let (xc, dyc) = (chunk_of(spec, x, r, k), chunk_of(spec, dy, r, k));
            let i0 = k * CHUNK;
            let p_base = spec.param(r, i0);
            let mut acc = ParamGrads::zeros(p_base, spec.param(r, i0 + xc.len() - 1) - p_base + 1);
            simd(
                #[inline(always)]
                || backward_dx(spec, (r, i0), (xc, dyc), dxc, rows[r], w, &mut acc),
            );
            acc
        })
        .collect();
    let mut total = ParamGrads::zeros(0, spec.params());
    for p in &parts {
        total.add(p);
    }
    total
}
