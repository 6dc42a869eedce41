//! The forward of every norm: two passes over a row (moments, then y), y written once
//! into the output's uninitialized capacity, either by rayon's jobs piece by piece or
//! by the task that owns the row (or the chunk of a split row). The fused residual add
//! writes h = x + residual first, in the same task, and normalizes it from cache.

use super::alloc::{assume_written, written};
use super::blocks::{as_acc, store_blocks, write_blocks, BLOCK};
use super::elem::{Acc, Elem, Lane, Slot};
use super::reduce::{moments, Moments};
use super::rows::{affine_params, chunk_of, chunks_mut, for_segments, rows_per_task, split_rows, CHUNK};
use super::runs::{map_rows, Rows, Run, RunOp};
use super::simd::run;
use crate::spec::{Activation, Spec};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `y = (x - mean) * rstd * w + b`, then the spec's activation, for elements `i0..` of
/// `row`, each element of `y` written once.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn apply_forward<A: Acc, I: Lane<A>, O: Slot<A>>(
    spec: &Spec,
    row: usize,
    i0: usize,
    x: &[I],
    y: &mut [O],
    stats: (A, A),
    w: &[A],
    b: &[A],
) {
    match spec.act {
        Activation::Identity => affine::<A, I, O, false>(spec, row, i0, x, y, stats, w, b),
        Activation::Silu => affine::<A, I, O, true>(spec, row, i0, x, y, stats, w, b),
    }
}

/// [`apply_forward`] with SiLU after the affine step when `SILU`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn affine<A: Acc, I: Lane<A>, O: Slot<A>, const SILU: bool>(
    spec: &Spec,
    row: usize,
    i0: usize,
    x: &[I],
    y: &mut [O],
    (mean, rstd): (A, A),
    w: &[A],
    b: &[A],
) {
    let act = |z: A| if SILU { z.silu() } else { z };
    if spec.inner == 1 {
        let p = spec.param_offset(row) + i0;
        let (w, b) = (&w[p..p + x.len()], &b[p..p + x.len()]);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            y.set(act((x.get() - mean) * rstd * w + b));
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
                    y.set(act((x.get() - mean) * scale + shift));
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
    y: &mut [MaybeUninit<T>],
    stats: (T::Acc, T::Acc),
    (w, b): (&[T::Acc], &[T::Acc]),
) {
    match T::lanes(x) {
        Some(x) => store_blocks(
            y,
            &mut [MaybeUninit::uninit(); BLOCK],
            #[inline(always)]
            |o, yb| apply_forward(spec, row, i0 + o, &x[o..o + yb.len()], yb, stats, w, b),
        ),
        None => write_blocks(
            [x],
            y,
            #[inline(always)]
            |o, [xa], ya| apply_forward(spec, row, i0 + o, xa, ya, stats, w, b),
        ),
    }
}

/// `h = x + residual` into memory not yet written, each sum rounded once to the
/// element type: what candle's `add` gives, since the f32 (f64) sum of two elements of
/// a narrower type rounds to the same value as the exact sum. Returns h, now written.
#[inline(always)]
fn add<'a, T: Elem>(x: &[T], r: &[T], h: &'a mut [MaybeUninit<T>]) -> &'a [T] {
    match (T::lanes(x), T::lanes(r)) {
        (Some(x), Some(r)) => store_blocks(
            h,
            &mut [MaybeUninit::uninit(); BLOCK],
            #[inline(always)]
            |o, hb| sum_into(&x[o..o + hb.len()], &r[o..o + hb.len()], hb),
        ),
        _ => write_blocks(
            [x, r],
            h,
            #[inline(always)]
            |_, [xa, ra], hb| sum_into(xa, ra, hb),
        ),
    }
    // SAFETY: store_blocks and write_blocks write every element of h.
    unsafe { assume_written(h) }
}

/// `h = x + r`, element by element.
#[inline(always)]
fn sum_into<A: Acc, I: Lane<A>, O: Slot<A>>(x: &[I], r: &[I], h: &mut [O]) {
    for ((h, &x), &r) in h.iter_mut().zip(x).zip(r) {
        h.set(x.get() + r.get());
    }
}

/// What a task keeps across its rows, so that no buffer is made per row: an f16 row
/// converted to accumulators once, and a block of y before it is rounded.
struct Scratch<A> {
    x: Vec<A>,
    y: [MaybeUninit<A>; BLOCK],
}

impl<A: Acc> Scratch<A> {
    fn new() -> Self {
        Self {
            x: Vec::new(),
            y: [MaybeUninit::uninit(); BLOCK],
        }
    }
}

/// Normalizes whole rows: `src` holds the task's rows, starting at row `first`.
#[inline(always)]
fn forward_rows<T: Elem>(
    spec: &Spec,
    first: usize,
    src: &[T],
    y: &mut [MaybeUninit<T>],
    (w, b): (&[T::Acc], &[T::Acc]),
    scratch: &mut Scratch<T::Acc>,
) {
    let Scratch { x: xbuf, y: ybuf } = scratch;
    for (i, (yr, xr)) in y.chunks_mut(spec.len).zip(src.chunks(spec.len)).enumerate() {
        // Elements with lanes read in place by both passes, f16 widened once.
        match T::lanes(xr) {
            Some(x) => forward_row(spec, first + i, x, yr, (w, b), ybuf),
            None => forward_row(spec, first + i, as_acc(xr, xbuf), yr, (w, b), ybuf),
        }
    }
}

/// Normalizes one whole row `x` into `y`: its moments, then y block by block.
#[inline(always)]
fn forward_row<T: Elem, I: Lane<T::Acc>>(
    spec: &Spec,
    row: usize,
    x: &[I],
    y: &mut [MaybeUninit<T>],
    (w, b): (&[T::Acc], &[T::Acc]),
    ybuf: &mut [MaybeUninit<T::Acc>; BLOCK],
) {
    let stats = Moments::of_blocks(x, spec.center()).stats(T::Acc::from_f64(spec.eps));
    store_blocks(
        y,
        ybuf,
        #[inline(always)]
        |o, yb| apply_forward(spec, row, o, &x[o..o + yb.len()], yb, stats, w, b),
    );
}

/// Per-row (mean, rstd) for split rows, from chunk moments merged in chunk order. With
/// `add = (residual, h)`, the chunks of `h = x + residual` are written first and their
/// moments taken from cache.
pub(super) fn split_stats<T: Elem>(
    spec: &Spec,
    x: &[T],
    add: Option<(&[T], &mut [MaybeUninit<T>])>,
) -> Vec<(T::Acc, T::Acc)> {
    let eps = T::Acc::from_f64(spec.eps);
    let nck = spec.len.div_ceil(CHUNK);
    let center = spec.center();
    let moments: Vec<Moments<T::Acc>> = match add {
        None => (0..spec.rows * nck)
            .into_par_iter()
            .map(|item| {
                let c = chunk_of(spec, x, item / nck, item % nck);
                run(
                    #[inline(always)]
                    || moments(c, center),
                )
            })
            .collect(),
        Some((r, h)) => chunks_mut(spec, h)
            .map(|(row, k, hc)| {
                let (xc, rc) = (chunk_of(spec, x, row, k), chunk_of(spec, r, row, k));
                run(
                    #[inline(always)]
                    || moments(self::add(xc, rc, hc), center),
                )
            })
            .collect(),
    };
    moments
        .chunks(nck)
        .map(|m| m.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)).stats(eps))
        .collect()
}

/// Forward: y for every element of `x`, laid out as `x`; with a `residual`, the norm is
/// of `h = x + residual` and the output holds y, then h.
///
/// f32 and f64 are bound by memory, so their plain forward writes y once, straight into
/// the output's uninitialized capacity (see [`normalized`]): each rayon job takes a
/// row's moments at the first of its elements the job reaches and normalizes the rest
/// of the row from cache. f16/bf16 are bound by their conversions: they, and the
/// fused residual add, run [`by_rows`], whose tasks read a bf16 row in place for both
/// passes (converted in their loops) or widen an f16 row once, and round y block by
/// block (docs/perf-notes.md, c10, c15, c21 and c23).
pub(super) fn forward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    x: &[T],
    residual: Option<&[T]>,
    w: Option<&[P]>,
    b: Option<&[P]>,
) -> Vec<T> {
    let (w, b) = affine_params(spec, w, b);
    let wb = (&w[..], &b[..]);
    match residual {
        None if T::as_acc(x).is_some() => written_once(spec, x, wb),
        _ => by_rows(spec, x, residual, wb),
    }
}

/// The plain forward into memory written once; rows too long for one task have their
/// statistics gathered first, across tasks.
fn written_once<T: Elem>(spec: &Spec, x: &[T], wb: (&[T::Acc], &[T::Acc])) -> Vec<T> {
    if split_rows(spec) {
        let stats = split_stats(spec, x, None);
        return normalized(
            spec,
            x,
            || (),
            #[inline(always)]
            |_, r| stats[r],
            wb,
        );
    }
    let (eps, center) = (T::Acc::from_f64(spec.eps), spec.center());
    normalized(
        spec,
        x,
        || (usize::MAX, (T::Acc::ZERO, T::Acc::ZERO)),
        #[inline(always)]
        |(row, stats), r| {
            if *row != r {
                let xr = &x[r * spec.len..(r + 1) * spec.len];
                (*row, *stats) = (r, moments(xr, center).stats(eps));
            }
            *stats
        },
        wb,
    )
}

/// The forward written once into the output's uninitialized capacity by tasks of
/// whole rows, or of chunks of rows too long for one task (whose statistics are then
/// gathered first, across tasks). With a `residual`, each task writes its part of h
/// and normalizes it while it is in cache.
fn by_rows<T: Elem>(spec: &Spec, x: &[T], residual: Option<&[T]>, wb: (&[T::Acc], &[T::Acc])) -> Vec<T> {
    let (out, ()) = written(spec.outputs(), |out| {
        if x.is_empty() {
            return;
        }
        let (y, h) = out.split_at_mut(x.len());
        if split_rows(spec) {
            let stats = split_stats(spec, x, residual.map(|r| (r, &mut *h)));
            let src = match residual {
                // SAFETY: with a residual, split_stats's tasks wrote every chunk of h.
                Some(_) => unsafe { assume_written(h) },
                None => x,
            };
            chunks_mut(spec, y).for_each(|(r, k, yc)| {
                let xc = chunk_of(spec, src, r, k);
                run(
                    #[inline(always)]
                    || forward_part(spec, (r, k * CHUNK), xc, yc, stats[r], wb),
                )
            });
            return;
        }
        let rpt = rows_per_task(spec);
        let step = rpt * spec.len;
        match residual {
            None => y
                .par_chunks_mut(step)
                .zip(x.par_chunks(step))
                .enumerate()
                .for_each_init(Scratch::new, |s, (t, (yt, xt))| {
                    run(
                        #[inline(always)]
                        || forward_rows(spec, t * rpt, xt, yt, wb, s),
                    )
                }),
            Some(r) => y
                .par_chunks_mut(step)
                .zip(h.par_chunks_mut(step))
                .zip(x.par_chunks(step).zip(r.par_chunks(step)))
                .enumerate()
                .for_each_init(Scratch::new, |s, (t, ((yt, ht), (xt, rt)))| {
                    run(
                        #[inline(always)]
                        || forward_rows(spec, t * rpt, add(xt, rt, ht), yt, wb, s),
                    )
                }),
        }
    });
    out
}

/// The normalize pass as an element-wise op: each run of a row normalized with the
/// row's (mean, rstd), which `stats(state, row)` gives, with a `state` that `init`
/// makes once per job.
struct Normalize<'a, A, I, F> {
    spec: &'a Spec,
    init: I,
    stats: F,
    wb: (&'a [A], &'a [A]),
}

impl<A: Acc, S, I: Fn() -> S + Sync, F: Fn(&mut S, usize) -> (A, A) + Sync> RunOp<A, 1> for Normalize<'_, A, I, F> {
    type State = S;

    fn state(&self) -> S {
        (self.init)()
    }

    #[inline(always)]
    fn run<L: Lane<A>, O: Slot<A>>(&self, state: &mut S, at: Run, [x]: [&[L]; 1], y: &mut [O]) {
        let st = (self.stats)(state, at.row);
        let (w, b) = self.wb;
        apply_forward(self.spec, at.row, at.i0, x, y, st, w, b);
    }
}

/// Every row of `src` normalized with the (mean, rstd) that `stats(state, row)` gives,
/// in a new vector written once (`super::runs::map_rows`): a job asks for a row's
/// statistics once per run of its elements, with the `state` that `init` made for the
/// job.
fn normalized<T: Elem, S>(
    spec: &Spec,
    src: &[T],
    init: impl Fn() -> S + Sync,
    stats: impl Fn(&mut S, usize) -> (T::Acc, T::Acc) + Sync,
    wb: (&[T::Acc], &[T::Acc]),
) -> Vec<T> {
    let rows = Rows {
        len: spec.len,
        period: 1,
    };
    map_rows(rows, [src], &Normalize { spec, init, stats, wb })
}
