//! The forward of every norm: two passes over a row (moments, then y), y written in
//! place by the task that owns the row (or the chunk of a split row).

use super::alloc::output;
use super::blocks::write_blocks;
use super::elem::{Acc, Elem};
use super::reduce::{moments, Moments};
use super::rows::{affine_params, chunk_of, chunks_mut, for_segments, rows_per_task, split_rows, CHUNK};
use super::simd::run;
use crate::spec::Spec;
use rayon::prelude::*;

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

/// Per-row (mean, rstd) for split rows, from chunk moments merged in chunk order.
fn split_stats<T: Elem>(spec: &Spec, x: &[T]) -> Vec<(T::Acc, T::Acc)> {
    let eps = T::Acc::from_f64(spec.eps);
    let nck = spec.len.div_ceil(CHUNK);
    let moments: Vec<Moments<T::Acc>> = (0..spec.rows * nck)
        .into_par_iter()
        .map(|item| {
            let c = chunk_of(spec, x, item / nck, item % nck);
            run(
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

/// Forward: y for every element of `x`, laid out as `x`, written in place by tasks of
/// whole rows, or of chunks of rows too long for one task (whose statistics are then
/// gathered first, across tasks).
pub(super) fn forward<T: Elem>(spec: &Spec, x: &[T], w: Option<&[T]>, b: Option<&[T]>) -> Vec<T> {
    if x.is_empty() {
        return Vec::new();
    }
    let (w, b) = affine_params(spec, w, b);
    let wb = (&w[..], &b[..]);
    let len = spec.len;
    let mut y = output(x.len(), x.len());
    if split_rows(spec) {
        let stats = split_stats(spec, x);
        chunks_mut(spec, &mut y).for_each(|(r, k, yc)| {
            let xc = chunk_of(spec, x, r, k);
            run(
                #[inline(always)]
                || forward_part(spec, (r, k * CHUNK), xc, yc, stats[r], wb),
            )
        });
    } else {
        let eps = T::Acc::from_f64(spec.eps);
        let rpt = rows_per_task(spec);
        y.par_chunks_mut(rpt * len)
            .zip(x.par_chunks(rpt * len))
            .enumerate()
            .for_each(|(t, (yt, xt))| {
                run(
                    #[inline(always)]
                    || {
                        for (i, (yr, xr)) in yt.chunks_mut(len).zip(xt.chunks(len)).enumerate() {
                            let stats = moments(xr, spec.center()).stats(eps);
                            forward_part(spec, (t * rpt + i, 0), xr, yr, stats, wb);
                        }
                    },
                )
            });
    }
    y
}
