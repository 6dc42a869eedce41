//! The CPU path: one generic forward and one generic backward for all three norms.
//!
//! Every norm is a set of rows of `len` elements (see [`Spec`]). A row that fits in
//! cache is converted once into an f32 scratch buffer (f64 for f64 inputs), reduced
//! there with two passes, and written back converted once, so x is read from memory
//! once per output. Rows are spread over rayon tasks. When there are too few rows to
//! keep every core busy, or a row is too long for the cache, each row is cut into
//! chunks: per-chunk moments are merged with Chan's formula, then the chunks are
//! normalized in parallel.
//!
//! Sums run over [`LANES`] independent accumulators (which the compiler turns into
//! SIMD adds) folded in a fixed order; the dγ/dβ partials are per task and reduced
//! in task order. Results are therefore identical from run to run.

use crate::op::Spec;
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// Independent accumulators per reduction: enough for 2 × AVX-512 f32 registers.
const LANES: usize = 16;
/// Rows up to this length are processed whole, held in one scratch buffer.
const MAX_FUSED_LEN: usize = 1 << 16;
/// Chunk length for rows that are split across tasks.
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
    /// The elements as accumulators when they already are (f32, f64): no scratch copy.
    fn as_acc(v: &[Self]) -> Option<&[Self::Acc]>;
    fn as_acc_mut(v: &mut [Self]) -> Option<&mut [Self::Acc]>;
}

macro_rules! impl_full_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            type Acc = $t;
            fn load(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
            }
            fn store(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
            }
            fn as_acc(v: &[$t]) -> Option<&[$t]> {
                Some(v)
            }
            fn as_acc_mut(v: &mut [$t]) -> Option<&mut [$t]> {
                Some(v)
            }
        }
    )*};
}
impl_full_elem!(f32, f64);

impl Elem for f16 {
    type Acc = f32;
    fn load(src: &[f16], dst: &mut [f32]) {
        // half picks F16C at run time where the CPU has it.
        src.convert_to_f32_slice(dst)
    }
    fn store(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src)
    }
    fn as_acc(_: &[f16]) -> Option<&[f32]> {
        None
    }
    fn as_acc_mut(_: &mut [f16]) -> Option<&mut [f32]> {
        None
    }
}

impl Elem for bf16 {
    type Acc = f32;
    fn load(src: &[bf16], dst: &mut [f32]) {
        // Written on the bits so that the compiler vectorizes it.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    fn store(src: &[f32], dst: &mut [bf16]) {
        // Round to nearest even on the bits, NaN kept quiet, vectorizable.
        for (d, s) in dst.iter_mut().zip(src) {
            let b = s.to_bits();
            let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
            *d = bf16::from_bits(if s.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded });
        }
    }
    fn as_acc(_: &[bf16]) -> Option<&[f32]> {
        None
    }
    fn as_acc_mut(_: &mut [bf16]) -> Option<&mut [f32]> {
        None
    }
}

/// Sum of `f(x[i])` over [`LANES`] accumulators, folded in a fixed order.
#[inline(always)]
fn lane_sum<A: Acc>(x: &[A], f: impl Fn(A) -> A) -> A {
    let mut acc = [A::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += f(v);
    }
    acc.iter().fold(A::ZERO, |s, &v| s + v)
}

/// Sum of `x[i] * y[i]` over [`LANES`] accumulators, folded in a fixed order.
#[inline(always)]
fn lane_dot<A: Acc>(x: &[A], y: &[A]) -> A {
    let mut acc = [A::ZERO; LANES];
    let xc = x.chunks_exact(LANES);
    let yc = y.chunks_exact(LANES);
    let (xt, yt) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    for (l, (&a, &b)) in xt.iter().zip(yt).enumerate() {
        acc[l] += a * b;
    }
    acc.iter().fold(A::ZERO, |s, &v| s + v)
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
    /// Two passes over a block held in cache: never E[x²] − mean².
    fn of(x: &[A], center: bool) -> Self {
        let n = A::from_f64(x.len() as f64);
        let mean = if center { lane_sum(x, |v| v) / n } else { A::ZERO };
        let m2 = lane_sum(x, |v| (v - mean) * (v - mean));
        Self { n, mean, m2 }
    }

    /// Chan et al.'s pairwise merge; exact for the non-centered case (delta is 0).
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

/// Calls `f(param, range)` for each run of elements of `row[i0..i0 + n]` that share
/// one affine parameter; ranges are relative to `i0`. Used when `spec.inner > 1`.
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
        for_segments(spec, row, i0, x.len(), |p, r| {
            let (scale, shift) = (rstd * w[p], b[p]);
            for (y, &x) in y[r.clone()].iter_mut().zip(&x[r]) {
                *y = (x - mean) * scale + shift;
            }
        });
    }
}

/// Normalizes one block of elements (`i0..` of `row`) of x into y, through scratch
/// buffers only for dtypes that need converting.
#[allow(clippy::too_many_arguments)]
fn forward_block<T: Elem>(
    spec: &Spec,
    row: usize,
    i0: usize,
    x: &[T],
    y: &mut [T],
    stats: Option<(T::Acc, T::Acc)>,
    (w, b): (&[T::Acc], &[T::Acc]),
    (xbuf, ybuf): (&mut [T::Acc], &mut [T::Acc]),
) {
    let xa = match T::as_acc(x) {
        Some(xa) => xa,
        None => {
            T::load(x, &mut xbuf[..x.len()]);
            &xbuf[..x.len()]
        }
    };
    let stats = stats.unwrap_or_else(|| Moments::of(xa, spec.center()).stats(T::Acc::from_f64(spec.eps)));
    match T::as_acc_mut(y) {
        Some(ya) => apply_forward(spec, row, i0, xa, ya, stats, w, b),
        None => {
            let yb = &mut ybuf[..x.len()];
            apply_forward(spec, row, i0, xa, yb, stats, w, b);
            T::store(yb, y);
        }
    }
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

/// In place: `xb` becomes x̂ and `gb` turns from dy into g = dy·w; `acc`, when given,
/// gains dy·x̂ and dy per parameter. Returns (Σg, Σg·x̂).
#[allow(clippy::too_many_arguments)]
fn backward_partial<A: Acc>(
    spec: &Spec,
    row: usize,
    i0: usize,
    xb: &mut [A],
    gb: &mut [A],
    (mean, rstd): (A, A),
    w: &[A],
    acc: Option<&mut ParamGrads<A>>,
) -> (A, A) {
    for v in xb.iter_mut() {
        *v = (*v - mean) * rstd;
    }
    if spec.inner == 1 {
        let p = spec.param_offset(row) + i0;
        let n = xb.len();
        if let Some(acc) = acc {
            let o = p - acc.p_base;
            let (dg, db) = (&mut acc.dg[o..o + n], &mut acc.db[o..o + n]);
            for (((dg, db), &x), &g) in dg.iter_mut().zip(db.iter_mut()).zip(&*xb).zip(&*gb) {
                *dg += g * x;
                *db += g;
            }
        }
        for (g, &w) in gb.iter_mut().zip(&w[p..p + n]) {
            *g = *g * w;
        }
    } else {
        let mut acc = acc;
        for_segments(spec, row, i0, xb.len(), |p, r| {
            if let Some(acc) = acc.as_deref_mut() {
                acc.dg[p - acc.p_base] += lane_dot(&xb[r.clone()], &gb[r.clone()]);
                acc.db[p - acc.p_base] += lane_sum(&gb[r.clone()], |v| v);
            }
            for g in &mut gb[r] {
                *g = *g * w[p];
            }
        });
    }
    (lane_sum(gb, |v| v), lane_dot(gb, xb))
}

/// In place: `gb` (holding g) becomes dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)).
fn apply_backward<A: Acc>(xhat: &[A], gb: &mut [A], rstd: A, mean_g: A, mean_gx: A) {
    for (g, &x) in gb.iter_mut().zip(xhat) {
        *g = rstd * (*g - mean_g - x * mean_gx);
    }
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

/// Whether rows are cut into chunks: too long for one scratch buffer, or too few to
/// give every thread work.
fn split_rows(spec: &Spec) -> bool {
    spec.len > MAX_FUSED_LEN || (spec.len > CHUNK && spec.rows < 2 * rayon::current_num_threads())
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
        .map_init(
            || vec![T::Acc::ZERO; CHUNK],
            |buf, item| {
                let c = chunk_of(spec, x, item / nck, item % nck);
                let buf = &mut buf[..c.len()];
                T::load(c, buf);
                Moments::of(buf, spec.center())
            },
        )
        .collect();
    moments
        .chunks(nck)
        .map(|m| {
            m.iter()
                .copied()
                .reduce(Moments::merge)
                .expect("rows are not empty")
                .stats(eps)
        })
        .collect()
}

/// Forward: y for every element of `x`, laid out as `x`.
pub(crate) fn forward<T: Elem>(spec: &Spec, x: &[T], w: Option<&[T]>, b: Option<&[T]>) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    if x.is_empty() {
        return y;
    }
    let (w, b) = affine(spec, w, b);
    // Scratch only for dtypes that convert.
    let scratch = |n: usize| {
        let n = if T::as_acc(&x[..0]).is_some() { 0 } else { n };
        (vec![T::Acc::ZERO; n], vec![T::Acc::ZERO; n])
    };
    if split_rows(spec) {
        let stats = split_stats(spec, x);
        chunks_mut(spec, &mut y).for_each_init(
            || scratch(CHUNK),
            |(xb, yb), (r, k, yc)| {
                let xc = chunk_of(spec, x, r, k);
                forward_block(spec, r, k * CHUNK, xc, yc, Some(stats[r]), (&w, &b), (xb, yb));
            },
        );
        return y;
    }
    let rpt = rows_per_task(spec);
    y.par_chunks_mut(rpt * spec.len)
        .zip(x.par_chunks(rpt * spec.len))
        .enumerate()
        .for_each(|(t, (yt, xt))| {
            let (mut xb, mut yb) = scratch(spec.len);
            for (i, (yr, xr)) in yt.chunks_mut(spec.len).zip(xt.chunks(spec.len)).enumerate() {
                forward_block(spec, t * rpt + i, 0, xr, yr, None, (&w, &b), (&mut xb, &mut yb));
            }
        });
    y
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
    let mut dx = Vec::with_capacity(x.len() + 2 * np);
    dx.resize(x.len(), T::zero());
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

/// (mean(g), mean(g·x̂)) of a row from its sums; mean(g) is 0 for a norm that does not center.
fn grad_means<A: Acc>(spec: &Spec, (sg, sgx): (A, A)) -> (A, A) {
    let inv_n = A::ONE / A::from_f64(spec.len as f64);
    (if spec.center() { sg * inv_n } else { A::ZERO }, sgx * inv_n)
}

/// Backward for rows held whole: one task per block of rows, each with its own dγ/dβ
/// partial, summed in task order.
fn backward_rows<T: Elem>(spec: &Spec, x: &[T], w: &[T::Acc], dy: &[T], dx: &mut [T]) -> ParamGrads<T::Acc> {
    let (np, len) = (spec.params(), spec.len);
    let eps = T::Acc::from_f64(spec.eps);
    let rpt = rows_per_task(spec).max(spec.rows.div_ceil(MAX_PARTIALS));
    let partials: Vec<ParamGrads<T::Acc>> = dx
        .par_chunks_mut(rpt * len)
        .zip(x.par_chunks(rpt * len).zip(dy.par_chunks(rpt * len)))
        .enumerate()
        .map(|(t, (dxt, (xt, dyt)))| {
            let mut acc = ParamGrads::zeros(0, np);
            let (mut xb, mut gb) = (vec![T::Acc::ZERO; len], vec![T::Acc::ZERO; len]);
            for (i, (dxr, (xr, dyr))) in dxt.chunks_mut(len).zip(xt.chunks(len).zip(dyt.chunks(len))).enumerate() {
                T::load(xr, &mut xb);
                T::load(dyr, &mut gb);
                let stats = Moments::of(&xb, spec.center()).stats(eps);
                let sums = backward_partial(spec, t * rpt + i, 0, &mut xb, &mut gb, stats, w, Some(&mut acc));
                let (mean_g, mean_gx) = grad_means(spec, sums);
                apply_backward(&xb, &mut gb, stats.1, mean_g, mean_gx);
                T::store(&gb, dxr);
            }
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

/// What one chunk of a split row contributes to the backward: (Σg, Σg·x̂) and dγ/dβ.
type ChunkPart<A> = ((A, A), ParamGrads<A>);

/// Backward for split rows: statistics, then per-chunk sums (Σg, Σg·x̂ and local
/// dγ/dβ) reduced per row in chunk order, then dx per chunk.
fn backward_split<T: Elem>(spec: &Spec, x: &[T], w: &[T::Acc], dy: &[T], dx: &mut [T]) -> ParamGrads<T::Acc> {
    let nck = spec.len.div_ceil(CHUNK);
    let stats = split_stats(spec, x);
    let scratch = || (vec![T::Acc::ZERO; CHUNK], vec![T::Acc::ZERO; CHUNK]);
    let parts: Vec<ChunkPart<T::Acc>> = (0..spec.rows * nck)
        .into_par_iter()
        .map_init(scratch, |(xb, gb), item| {
            let (r, k) = (item / nck, item % nck);
            let (xc, dyc) = (chunk_of(spec, x, r, k), chunk_of(spec, dy, r, k));
            let (xb, gb) = (&mut xb[..xc.len()], &mut gb[..xc.len()]);
            T::load(xc, xb);
            T::load(dyc, gb);
            let i0 = k * CHUNK;
            let p_base = spec.param(r, i0);
            let mut acc = ParamGrads::zeros(p_base, spec.param(r, i0 + xc.len() - 1) - p_base + 1);
            let sums = backward_partial(spec, r, i0, xb, gb, stats[r], w, Some(&mut acc));
            (sums, acc)
        })
        .collect();
    let means: Vec<(T::Acc, T::Acc)> = parts
        .chunks(nck)
        .map(|ps| {
            let sums = ps.iter().fold((T::Acc::ZERO, T::Acc::ZERO), |(a, b), ((sg, sgx), _)| {
                (a + *sg, b + *sgx)
            });
            grad_means(spec, sums)
        })
        .collect();
    chunks_mut(spec, dx).for_each_init(scratch, |(xb, gb), (r, k, dxc)| {
        let (xb, gb) = (&mut xb[..dxc.len()], &mut gb[..dxc.len()]);
        T::load(chunk_of(spec, x, r, k), xb);
        T::load(chunk_of(spec, dy, r, k), gb);
        backward_partial(spec, r, k * CHUNK, xb, gb, stats[r], w, None);
        apply_backward(xb, gb, stats[r].1, means[r].0, means[r].1);
        T::store(gb, dxc);
    });
    let mut total = ParamGrads::zeros(0, spec.params());
    for (_, p) in &parts {
        total.add(p);
    }
    total
}
