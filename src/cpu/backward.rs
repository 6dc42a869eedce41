//! The fused backward of every norm: dx, dγ and dβ in two passes over a row. The
//! first reads x and dy from memory and gathers the moments together with Σg and the
//! co-moment Σg·(x − mean) ([`GradSums`]); the second, from cache, accumulates dγ/dβ
//! and writes dx. f32, f64 and bf16 rows are read in place by both passes (bf16
//! converted in their loops; with SiLU after the norm, dy·silu' is computed from them
//! into a buffer); an f16 row (or chunk), or the fused add's inputs, are widened to f32
//! once, for both passes. f32 and f64 dx is written straight into the output, f16/bf16
//! rounded into it block by block. Where a parameter covers runs of a row (GroupNorm,
//! InstanceNorm), the first pass also keeps each run's sums ([`SegmentSums`]), from
//! which its dγ and dβ follow, and the second pass computes dx alone.
//! dγ/dβ partials are per task (or chunk) and summed in task order.
//! The fused residual add's backward is the same over h, with the gradient reaching h
//! directly added to dx.

use super::alloc::{refilled, written};
use super::blocks::{as_acc_all, lanes, BLOCK};
use super::elem::{Acc, Elem, Lane, Slot};
use super::forward::split_stats;
use super::reduce::{lane_sum, lane_sum2, lane_sum3, Moments};
use super::rows::{
    affine_params, chunk_of, chunks_mut, for_segments, param_grads_out, rows_per_task, split_rows, CHUNK, MAX_PARTIALS,
    TASK_ELEMS,
};
use super::simd::run;
use crate::spec::{Activation, Affine, Spec};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// dγ/dβ accumulators of one task or chunk, indexed by parameter − `p_base`. A
/// gradient nobody asked for (no weight, no bias) has an empty vector and is never
/// computed.
struct ParamGrads<A> {
    p_base: usize,
    dg: Vec<A>,
    db: Vec<A>,
}

impl<A: Acc> ParamGrads<A> {
    /// Accumulators for no gradient: a pass given them computes dx alone.
    fn none(p_base: usize) -> Self {
        Self {
            p_base,
            dg: Vec::new(),
            db: Vec::new(),
        }
    }

    fn zeros(p_base: usize, n: usize, affine: Affine) -> Self {
        let zeros = |wanted: bool| vec![A::ZERO; if wanted { n } else { 0 }];
        Self {
            p_base,
            dg: zeros(affine.weight),
            db: zeros(affine.bias),
        }
    }

    /// Adds `o` into `self`, which covers every parameter of `o`.
    fn add(&mut self, o: &Self) {
        let off = o.p_base - self.p_base;
        for (mine, theirs) in [(&mut self.dg, &o.dg), (&mut self.db, &o.db)] {
            if !theirs.is_empty() {
                for (d, &v) in mine[off..].iter_mut().zip(theirs) {
                    *d += v;
                }
            }
        }
    }
}

/// `total += partials[0] + partials[1] + ...`, in that order for every element, with
/// the elements spread over threads.
fn sum_partials<A: Acc>(total: &mut [A], partials: &[&[A]]) {
    total.par_chunks_mut(TASK_ELEMS).enumerate().for_each(|(k, out)| {
        let o = k * TASK_ELEMS;
        for p in partials {
            for (d, &v) in out.iter_mut().zip(&p[o..]) {
                *d += v;
            }
        }
    });
}

/// g = dy·w for a block whose parameters change every element (`inner == 1`), from
/// parameter `p` on, into `g`.
#[inline(always)]
fn dy_times_w<A: Acc, J: Lane<A>>(p: usize, dy: &[J], w: &[A], g: &mut [A]) {
    for ((g, &d), &w) in g.iter_mut().zip(dy).zip(&w[p..p + dy.len()]) {
        *g = d.get() * w;
    }
}

/// What the first backward pass learns about a run of elements of a row: the moments
/// of x, Σg and the co-moment Σg·(x − mean) (g = dy·w, mean the run's own), merged
/// like [`Moments`]. The co-moment is summed over deviations from each block's mean,
/// as the variance is, rather than as Σg·x − mean·Σg, whose terms are |mean|/std times
/// larger than what is left of them.
#[derive(Clone, Copy)]
pub(super) struct GradSums<A> {
    pub x: Moments<A>,
    pub sg: A,
    pub cgx: A,
}

impl<A: Acc> GradSums<A> {
    pub(super) const EMPTY: Self = Self {
        x: Moments::EMPTY,
        sg: A::ZERO,
        cgx: A::ZERO,
    };

    #[inline(always)]
    pub(super) fn merge(self, o: Self) -> Self {
        let x = self.x.merge(o.x);
        Self {
            x,
            sg: self.sg + o.sg,
            cgx: self.cgx + o.cgx + self.sg * (self.x.mean - x.mean) + o.sg * (o.x.mean - x.mean),
        }
    }

    /// What the second pass needs, once the sums cover the whole row.
    pub(super) fn finish(self, spec: &Spec) -> RowGrad<A> {
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
pub(super) struct RowGrad<A> {
    pub mean: A,
    pub rstd: A,
    pub mean_g: A,
    pub mean_gx: A,
}

/// Block-sized buffers of the two backward passes (g = dy·w, and a block of dx
/// before it is stored), made once per task rather than once per row: zeroing them
/// for every call would cost more than a short row's arithmetic.
struct Blocks<A> {
    g: [A; BLOCK],
    dx: [A; BLOCK],
}

/// What a backward task keeps across its rows: the block buffers, and the `K` inputs
/// of the current row (or chunk) widened to accumulators once, when they are not read
/// in place, for both passes to read.
struct Scratch<A, const K: usize> {
    blocks: Blocks<A>,
    wide: [Vec<A>; K],
    /// GroupNorm + SiLU: the gradient reaching z = x̂·γ + β, dy·silu'(z), of the row.
    dz: Vec<A>,
    /// The row's [`SegmentSums`], when its first pass records them.
    segments: Vec<SegmentSums<A>>,
}

/// Σdy and Σdy·(x − mean) over the part of a block that one parameter covers (norms
/// whose parameter changes every `inner` elements), about the block's mean, as the
/// first pass sums them anyway: once the row's mean is known they give the
/// parameter's dβ and dγ (`Σdy·x̂ = rstd·(Σdy·(x − mean_b) + Σdy·(mean_b − mean))`),
/// so that the second pass reads x and dy once, for dx, instead of three times.
#[derive(Clone, Copy)]
struct SegmentSums<A> {
    p: usize,
    mean: A,
    sd: A,
    cdx: A,
}

/// A row's inputs to the backward passes: x (or h), the gradient the norm takes (dy,
/// or dy·silu'), and for the fused add dh, the gradient reaching h directly.
type RowIns<'a, A, I, J> = (&'a [I], &'a [J], Option<&'a [A]>);

/// The weight and the bias as accumulators (ones and zeros where absent).
type Wb<'a, A> = (&'a [A], &'a [A]);

/// What is known of a row before its first backward pass: all its statistics (rows
/// split over tasks, whose chunks' sums were merged first), or its mean (GroupNorm +
/// SiLU, which took it for z).
type Known<A> = (Option<RowGrad<A>>, Option<A>);

impl<A: Acc, const K: usize> Scratch<A, K> {
    fn new() -> Self {
        Self {
            blocks: Blocks {
                g: [A::ZERO; BLOCK],
                dx: [A::ZERO; BLOCK],
            },
            wide: std::array::from_fn(|_| Vec::new()),
            dz: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// The first backward pass over x and dy, elements `at = (row, i0)` on of a row:
    /// their [`GradSums`]. With an activation, `stats` are the row's (mean, rstd).
    #[inline(always)]
    fn sums<T: Elem<Acc = A>>(
        &mut self,
        spec: &Spec,
        at: (usize, usize),
        ins: [&[T]; K],
        wb: Wb<A>,
        stats: Option<(A, A)>,
    ) -> GradSums<A> {
        let Self { blocks, wide, dz, .. } = self;
        let wide = as_acc_all(ins, wide);
        let (x, dy) = (wide[0], wide[1]);
        match stats {
            None => backward_sums(spec, at, (x, dy), (wb.0, None), &mut blocks.g, None),
            Some(st) => {
                let g = silu_grads(spec, at, (x, dy), wb, st, dz);
                backward_sums(spec, at, (x, g), (wb.0, Some(st.0)), &mut blocks.g, None)
            }
        }
    }

    /// Both backward passes over a row, or the second alone when the row's
    /// statistics are given: dx into `dx`, dγ/dβ into `acc`.
    #[inline(always)]
    fn row<T: Elem<Acc = A>>(
        &mut self,
        spec: &Spec,
        at: (usize, usize),
        (ins, dx): ([&[T]; K], &mut [MaybeUninit<T>]),
        (given, wb): (Option<RowGrad<A>>, Wb<A>),
        acc: &mut ParamGrads<A>,
    ) {
        let Self {
            blocks,
            wide,
            dz,
            segments,
        } = self;
        // Without dh, elements with lanes are read in place by every pass, converted in
        // their loops; f16, and the fused add's h, dy and dh, are widened once.
        if let (2, Some(l)) = (K, lanes(ins)) {
            let (x, dy) = (l[0], l[1]);
            let Some(st) = silu_stats(spec, x, given) else {
                return passes(spec, at, (x, dy, None), dx, ((given, None), wb), acc, blocks, segments);
            };
            let g = silu_grads(spec, at, (x, dy), wb, st, dz);
            return passes(
                spec,
                at,
                (x, g, None),
                dx,
                ((given, Some(st.0)), wb),
                acc,
                blocks,
                segments,
            );
        }
        let wide = as_acc_all(ins, wide);
        let x = wide[0];
        let (g, mean) = match silu_stats(spec, x, given) {
            None => (wide[1], None),
            Some(st) => (silu_grads(spec, at, (x, wide[1]), wb, st, dz), Some(st.0)),
        };
        passes(
            spec,
            at,
            (x, g, wide.get(2).copied()),
            dx,
            ((given, mean), wb),
            acc,
            blocks,
            segments,
        );
    }
}

/// With SiLU after the norm, the row's (mean, rstd), for dy·silu'(z): given, or from x.
#[inline(always)]
fn silu_stats<A: Acc, I: Lane<A>>(spec: &Spec, x: &[I], given: Option<RowGrad<A>>) -> Option<(A, A)> {
    match (spec.act, given) {
        (Activation::Identity, _) => None,
        (Activation::Silu, Some(g)) => Some((g.mean, g.rstd)),
        (Activation::Silu, None) => Some(Moments::of_blocks(x, spec.center()).stats(A::from_f64(spec.eps))),
    }
}

/// Both passes over a row of x and g (dy, or dy·silu'), the first skipped when the
/// row's statistics are `given`, and taking its sums about the row's `mean` when that is
/// known (GroupNorm + SiLU took it for z); dx (plus `dh` for the fused add) into `dx`,
/// dγ/dβ into `acc`. f32 and f64 dx go straight into the output, unless dh is still to
/// be added.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn passes<T: Elem, I: Lane<T::Acc>, J: Lane<T::Acc>>(
    spec: &Spec,
    at: (usize, usize),
    (x, g, dh): RowIns<T::Acc, I, J>,
    dx: &mut [MaybeUninit<T>],
    ((given, mean), wb): (Known<T::Acc>, Wb<T::Acc>),
    acc: &mut ParamGrads<T::Acc>,
    blocks: &mut Blocks<T::Acc>,
    segments: &mut Vec<SegmentSums<T::Acc>>,
) {
    let (stats, recorded) = first_pass(spec, at, (x, g), (given, mean), wb.0, &mut blocks.g, segments);
    second_pass(
        acc,
        segments,
        recorded,
        stats,
        #[inline(always)]
        |acc| match (dh, T::as_acc_uninit(dx)) {
            (None, Some(d)) => dx_direct(spec, at, (x, g), d, (stats, wb.0), acc),
            _ => backward_dx(spec, at, (x, g, dh), dx, (stats, wb.0), acc, blocks),
        },
    );
}

/// With SiLU after the norm, the gradient the norm's backward takes, dy·silu'(z) at
/// z = (x − mean)·rstd·γ + β (the row's `stats`), recomputed as the forward computes
/// it, into `dz`.
#[inline(always)]
fn silu_grads<'a, A: Acc, I: Lane<A>, J: Lane<A>>(
    spec: &Spec,
    (row, i0): (usize, usize),
    (x, dy): (&[I], &[J]),
    (w, b): Wb<A>,
    (mean, rstd): (A, A),
    dz: &'a mut Vec<A>,
) -> &'a [A] {
    refilled(
        dz,
        x.len(),
        #[inline(always)]
        |out| {
            // The segments cover every element of the row's part once.
            for_segments(
                spec,
                row,
                i0,
                x.len(),
                #[inline(always)]
                |p, r| {
                    let (scale, shift) = (rstd * w[p], b[p]);
                    for ((d, &x), &g) in out[r.clone()].iter_mut().zip(&x[r.clone()]).zip(&dy[r]) {
                        d.write(g.get() * ((x.get() - mean) * scale + shift).silu_grad());
                    }
                },
            )
        },
    )
}

/// The first pass over a row (about the row's `mean` where known, see
/// [`backward_sums`]), or its `given` statistics: the row's [`RowGrad`], and whether
/// the pass recorded each parameter's [`SegmentSums`] into `segments`, as it does for
/// whole rows whose parameter changes every `inner` elements.
#[inline(always)]
fn first_pass<A: Acc, I: Lane<A>, J: Lane<A>>(
    spec: &Spec,
    at: (usize, usize),
    ins: (&[I], &[J]),
    (given, mean): Known<A>,
    w: &[A],
    g: &mut [A; BLOCK],
    segments: &mut Vec<SegmentSums<A>>,
) -> (RowGrad<A>, bool) {
    segments.clear();
    match given {
        Some(stats) => (stats, false),
        None => {
            let record = spec.inner > 1;
            let sums = backward_sums(spec, at, ins, (w, mean), g, record.then_some(segments));
            (sums.finish(spec), record)
        }
    }
}

/// The second pass, `pass(acc)`: given `acc` itself, or, where the first pass
/// `recorded` the segment sums, accumulators for no gradient (dx alone), the segments'
/// dγ/dβ then added to `acc`.
#[inline(always)]
fn second_pass<A: Acc>(
    acc: &mut ParamGrads<A>,
    segments: &[SegmentSums<A>],
    recorded: bool,
    stats: RowGrad<A>,
    pass: impl FnOnce(&mut ParamGrads<A>),
) {
    if !recorded {
        return pass(acc);
    }
    pass(&mut ParamGrads::none(acc.p_base));
    for s in segments {
        let o = s.p - acc.p_base;
        if !acc.dg.is_empty() {
            acc.dg[o] += stats.rstd * (s.cdx + s.sd * (s.mean - stats.mean));
        }
        if !acc.db.is_empty() {
            acc.db[o] += s.sd;
        }
    }
}

/// First backward pass over the elements of a row from `at = (row, i0)` on, the one
/// that reads x and dy from memory: their [`GradSums`], block by block, each about its
/// own mean, or about the row's `mean` when it is known: then every block's sums are
/// taken about the same value, which the merges keep, and no pass over x finds a
/// block's mean.
#[inline(always)]
fn backward_sums<A: Acc, I: Lane<A>, J: Lane<A>>(
    spec: &Spec,
    at: (usize, usize),
    (x, dy): (&[I], &[J]),
    (w, mean): (&[A], Option<A>),
    g: &mut [A; BLOCK],
    mut segments: Option<&mut Vec<SegmentSums<A>>>,
) -> GradSums<A> {
    // The first block's sums as they are: a merge into nothing would cost two divisions,
    // a row's worth of work when the row is short. (A loop, not `Iterator::fold`, which
    // stays a call compiled for the baseline.)
    let mut blocks = x.chunks(BLOCK).zip(dy.chunks(BLOCK)).enumerate();
    let mut sums = match blocks.next() {
        Some((k, b)) => block_sums(spec, at, k, b, (w, mean), g, segments.as_deref_mut()),
        None => GradSums::EMPTY,
    };
    for (k, b) in blocks {
        sums = sums.merge(block_sums(spec, at, k, b, (w, mean), g, segments.as_deref_mut()));
    }
    sums
}

/// The [`GradSums`] of block `k` of [`backward_sums`]'s elements (about the row's
/// mean when given), and, with `segments`, each parameter's [`SegmentSums`] in it.
#[inline(always)]
fn block_sums<A: Acc, I: Lane<A>, J: Lane<A>>(
    spec: &Spec,
    at: (usize, usize),
    k: usize,
    (xa, da): (&[I], &[J]),
    (w, row_mean): (&[A], Option<A>),
    g: &mut [A; BLOCK],
    mut segments: Option<&mut Vec<SegmentSums<A>>>,
) -> GradSums<A> {
    let (row, i0) = (at.0, at.1 + k * BLOCK);
    let n = A::from_f64(xa.len() as f64);
    let mean = match row_mean {
        Some(m) => m,
        None if spec.center() => lane_sum(xa, |v| v) / n,
        None => A::ZERO,
    };
    let terms = |x: A, g: A| {
        let c = x - mean;
        [c * c, g, g * c]
    };
    let [m2, sg, cgx] = if spec.inner == 1 {
        let g = &mut g[..xa.len()];
        dy_times_w(spec.param_offset(row) + i0, da, w, g);
        lane_sum3(xa, g, terms)
    } else {
        // One weight per run: Σg and Σg·(x − mean) are w times the run's sums of dy.
        let mut s = [A::ZERO; 3];
        for_segments(
            spec,
            row,
            i0,
            xa.len(),
            #[inline(always)]
            |p, r| {
                let [m2, sd, cdx] = lane_sum3(&xa[r.clone()], &da[r], terms);
                s = [s[0] + m2, s[1] + w[p] * sd, s[2] + w[p] * cdx];
                if let Some(segs) = segments.as_deref_mut() {
                    segs.push(SegmentSums { p, mean, sd, cdx });
                }
            },
        );
        s
    };
    GradSums {
        x: Moments { n, mean, m2 },
        sg,
        cgx,
    }
}

/// Second backward pass over the same elements, from cache: adds dy·x̂ and dy
/// to `acc` and writes dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)) into memory not yet
/// written, block by block. `ins` is `[x, dy]`, or `[h, dy, dh]` for the fused residual
/// add, whose dh (the gradient reaching h directly) is added to dx before it is
/// rounded.
#[inline(always)]
fn backward_dx<T: Elem, I: Lane<T::Acc>, J: Lane<T::Acc>>(
    spec: &Spec,
    at: (usize, usize),
    (x, dy, dh): RowIns<T::Acc, I, J>,
    dx: &mut [MaybeUninit<T>],
    (r, w): (RowGrad<T::Acc>, &[T::Acc]),
    acc: &mut ParamGrads<T::Acc>,
    blocks: &mut Blocks<T::Acc>,
) {
    let dxb = &mut blocks.dx;
    for (k, dst) in dx.chunks_mut(BLOCK).enumerate() {
        let (o, n) = (k * BLOCK, dst.len());
        let (xa, da) = (&x[o..o + n], &dy[o..o + n]);
        let at = (at.0, at.1 + o);
        let out = &mut dxb[..n];
        dx_block(spec, at, (xa, da, w), out, r, acc);
        if let Some(dh) = dh {
            for (d, &e) in out.iter_mut().zip(&dh[o..o + n]) {
                *d += e;
            }
        }
        T::store_uninit(out, dst);
    }
}

/// [`backward_dx`] for f32 and f64 dx without dh (inputs read in place or widened):
/// each block of dx written straight into the output.
#[inline(always)]
fn dx_direct<A: Acc, I: Lane<A>, J: Lane<A>>(
    spec: &Spec,
    at: (usize, usize),
    (x, dy): (&[I], &[J]),
    dx: &mut [MaybeUninit<A>],
    (r, w): (RowGrad<A>, &[A]),
    acc: &mut ParamGrads<A>,
) {
    for (k, dst) in dx.chunks_mut(BLOCK).enumerate() {
        let (o, n) = (k * BLOCK, dst.len());
        dx_block(spec, (at.0, at.1 + o), (&x[o..o + n], &dy[o..o + n], w), dst, r, acc);
    }
}

/// The second pass over one block of elements from `at`: dx into `dx` (each element
/// written once), dγ/dβ into `acc`.
#[inline(always)]
fn dx_block<A: Acc, I: Lane<A>, J: Lane<A>, O: Slot<A>>(
    spec: &Spec,
    at: (usize, usize),
    (x, dy, w): (&[I], &[J], &[A]),
    dx: &mut [O],
    r: RowGrad<A>,
    acc: &mut ParamGrads<A>,
) {
    if spec.inner == 1 {
        let p = spec.param_offset(at.0) + at.1;
        dx_rows_block(p, (x, dy, &w[p..p + dx.len()]), dx, r, acc);
    } else {
        dx_segments(spec, at, (x, dy, w), dx, r, acc);
    }
}

/// The second pass over one block of a norm whose parameters change every element
/// (`inner == 1`: LayerNorm, RMSNorm), in one loop: x̂, the dγ/dβ partials (those
/// asked for) and dx, with `w` and the partials the block's own, from parameter `p`.
#[inline(always)]
fn dx_rows_block<A: Acc, I: Lane<A>, J: Lane<A>, O: Slot<A>>(
    p: usize,
    (x, dy, w): (&[I], &[J], &[A]),
    dx: &mut [O],
    r: RowGrad<A>,
    acc: &mut ParamGrads<A>,
) {
    let o = p - acc.p_base;
    let n = dx.len();
    let (x, dy, w) = (&x[..n], &dy[..n], &w[..n]);
    let (dg, db) = (&mut acc.dg, &mut acc.db);
    let dx_of = |xh: A, d: A, w: A| r.rstd * (d * w - r.mean_g - xh * r.mean_gx);
    match (dg.is_empty(), db.is_empty()) {
        (false, false) => {
            let (dg, db) = (&mut dg[o..o + n], &mut db[o..o + n]);
            for i in 0..n {
                let xh = (x[i].get() - r.mean) * r.rstd;
                dg[i] += dy[i].get() * xh;
                db[i] += dy[i].get();
                dx[i].set(dx_of(xh, dy[i].get(), w[i]));
            }
        }
        (false, true) => {
            let dg = &mut dg[o..o + n];
            for i in 0..n {
                let xh = (x[i].get() - r.mean) * r.rstd;
                dg[i] += dy[i].get() * xh;
                dx[i].set(dx_of(xh, dy[i].get(), w[i]));
            }
        }
        (true, false) => {
            let db = &mut db[o..o + n];
            for i in 0..n {
                db[i] += dy[i].get();
                dx[i].set(dx_of((x[i].get() - r.mean) * r.rstd, dy[i].get(), w[i]));
            }
        }
        (true, true) => {
            for i in 0..n {
                dx[i].set(dx_of((x[i].get() - r.mean) * r.rstd, dy[i].get(), w[i]));
            }
        }
    }
}

/// The second pass over one block of a norm whose parameter changes every `inner`
/// elements (GroupNorm, BatchNorm), one run of a parameter at a time: dx, then the
/// run's Σdy·x̂ and Σdy added to its parameter's dγ/dβ partials (those asked for).
#[inline(always)]
fn dx_segments<A: Acc, I: Lane<A>, J: Lane<A>, O: Slot<A>>(
    spec: &Spec,
    (row, i0): (usize, usize),
    (x, dy, w): (&[I], &[J], &[A]),
    dx: &mut [O],
    r: RowGrad<A>,
    acc: &mut ParamGrads<A>,
) {
    let (dg, db, base) = (&mut acc.dg, &mut acc.db, acc.p_base);
    for_segments(
        spec,
        row,
        i0,
        dx.len(),
        #[inline(always)]
        |p, at| {
            let (x, dy) = (&x[at.clone()], &dy[at.clone()]);
            let wp = w[p];
            for ((d, &x), &g) in dx[at].iter_mut().zip(x).zip(dy) {
                let xh = (x.get() - r.mean) * r.rstd;
                d.set(r.rstd * (g.get() * wp - r.mean_g - xh * r.mean_gx));
            }
            if !dg.is_empty() {
                dg[p - base] += lane_sum2(x, dy, |x, d| d * ((x - r.mean) * r.rstd));
            }
            if !db.is_empty() {
                db[p - base] += lane_sum(dy, |v| v);
            }
        },
    );
}

/// The backward's inputs: x (or h), the weight (of the parameters' type `P`), dy, and
/// dh for the fused residual add.
pub(super) type BwdIns<'a, T, P> = (&'a [T], Wp<'a, P>, &'a [T], Option<&'a [T]>);

/// The weight and the bias, when given, of the parameters' type.
pub(super) type Wp<'a, P> = (Option<&'a [P]>, Option<&'a [P]>);

/// Backward: dx, and dγ then dβ as `affine` asks (of the parameters' type), from x,
/// the weight and dy, recomputing the row statistics. With `dh` (the fused residual
/// add: `x` is then h), dx is dh plus the norm's gradient.
pub(super) fn backward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    affine: Affine,
    (x, (w, b), dy, dh): BwdIns<T, P>,
) -> (Vec<T>, Vec<P>) {
    let np = spec.params();
    let (w, b) = affine_params(spec, w, b);
    let wb = (&w[..], &b[..]);
    let (out, acc) = written(x.len(), |dx| match dh {
        _ if x.is_empty() => ParamGrads::zeros(0, np, affine),
        Some(dh) => backward_any(spec, affine, [x, dy, dh], wb, dx),
        None => backward_any(spec, affine, [x, dy], wb, dx),
    });
    let params = param_grads_out::<P>(affine, &acc.dg, &acc.db);
    (out, params)
}

/// The backward of non-empty inputs `ins` (see [`backward_dx`]), by whole rows or by
/// split rows.
fn backward_any<T: Elem, const K: usize>(
    spec: &Spec,
    affine: Affine,
    ins: [&[T]; K],
    wb: Wb<T::Acc>,
    dx: &mut [MaybeUninit<T>],
) -> ParamGrads<T::Acc> {
    if split_rows(spec) {
        backward_split(spec, affine, ins, wb, dx)
    } else {
        backward_rows(spec, affine, ins, wb, dx)
    }
}

/// Backward for rows held whole: one task per block of rows, each with its own dγ/dβ
/// partial, summed in task order.
fn backward_rows<T: Elem, const K: usize>(
    spec: &Spec,
    affine: Affine,
    ins: [&[T]; K],
    wb: Wb<T::Acc>,
    dx: &mut [MaybeUninit<T>],
) -> ParamGrads<T::Acc> {
    let (np, len) = (spec.params(), spec.len);
    let rpt = rows_per_task(spec).max(spec.rows.div_ceil(MAX_PARTIALS));
    let step = rpt * len;
    let partials: Vec<ParamGrads<T::Acc>> = dx
        .par_chunks_mut(step)
        .enumerate()
        .map(|(t, dxt)| {
            let ins = ins.map(|s| &s[t * step..t * step + dxt.len()]);
            let mut acc = ParamGrads::zeros(0, np, affine);
            let mut scratch = Scratch::new();
            run(
                #[inline(always)]
                || {
                    for (i, dxr) in dxt.chunks_mut(len).enumerate() {
                        let ins = ins.map(|s| &s[i * len..(i + 1) * len]);
                        let row = t * rpt + i;
                        scratch.row(spec, (row, 0), (ins, dxr), (None, wb), &mut acc);
                    }
                },
            );
            acc
        })
        .collect();
    let mut total = ParamGrads::zeros(0, np, affine);
    sum_partials(&mut total.dg, &partials.iter().map(|p| &p.dg[..]).collect::<Vec<_>>());
    sum_partials(&mut total.db, &partials.iter().map(|p| &p.db[..]).collect::<Vec<_>>());
    total
}

/// Backward for split rows: each row's statistics (merged from its chunks),
/// then dx and a dγ/dβ partial per chunk, the partials summed in chunk order.
fn backward_split<T: Elem, const K: usize>(
    spec: &Spec,
    affine: Affine,
    ins: [&[T]; K],
    wb: Wb<T::Acc>,
    dx: &mut [MaybeUninit<T>],
) -> ParamGrads<T::Acc> {
    let rows = split_grads(spec, ins, wb);
    let parts: Vec<ParamGrads<T::Acc>> = chunks_mut(spec, dx)
        .map_init(Scratch::new, |scratch, (r, k, dxc)| {
            let ins = ins.map(|s| chunk_of(spec, s, r, k));
            let i0 = k * CHUNK;
            let p_base = spec.param(r, i0);
            let mut acc = ParamGrads::zeros(p_base, spec.param(r, i0 + dxc.len() - 1) - p_base + 1, affine);
            run(
                #[inline(always)]
                || scratch.row(spec, (r, i0), (ins, dxc), (Some(rows[r]), wb), &mut acc),
            );
            acc
        })
        .collect();
    let mut total = ParamGrads::zeros(0, spec.params(), affine);
    for p in &parts {
        total.add(p);
    }
    total
}

/// Per-row [`RowGrad`]s of split rows: per-chunk [`GradSums`] merged per row in chunk
/// order. With an activation, the rows' statistics are gathered first (the forward's
/// pass), for each chunk to recompute z.
fn split_grads<T: Elem, const K: usize>(spec: &Spec, ins: [&[T]; K], wb: Wb<T::Acc>) -> Vec<RowGrad<T::Acc>> {
    let nck = spec.len.div_ceil(CHUNK);
    let stats = (spec.act != Activation::Identity).then(|| split_stats(spec, ins[0], None));
    let sums: Vec<GradSums<T::Acc>> = (0..spec.rows * nck)
        .into_par_iter()
        .map_init(Scratch::new, |scratch, item| {
            let (r, k) = (item / nck, item % nck);
            let (xc, dyc) = (chunk_of(spec, ins[0], r, k), chunk_of(spec, ins[1], r, k));
            run(
                #[inline(always)]
                || scratch.sums(spec, (r, k * CHUNK), [xc, dyc], wb, stats.as_ref().map(|s| s[r])),
            )
        })
        .collect();
    sums.chunks(nck)
        .map(|s| s.iter().fold(GradSums::EMPTY, |a, &b| a.merge(b)).finish(spec))
        .collect()
}
