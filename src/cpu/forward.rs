//! The forward of every norm: two passes over a row (moments, then y), y written piece
//! by piece into memory that is never zeroed first.

use super::alloc::collect;
use super::blocks::write_blocks;
use super::elem::{Acc, Elem};
use super::reduce::{moments, Moments};
use super::rows::{affine_params, chunk_of, for_segments, split_rows, CHUNK};
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

/// A row and its (mean, rstd), kept by a forward job for the pieces that follow.
type CachedStats<A> = (usize, (A, A));

/// Forward: y for every element of `x`, laid out as `x`.
pub(super) fn forward<T: Elem>(spec: &Spec, x: &[T], w: Option<&[T]>, b: Option<&[T]>) -> Vec<T> {
    if x.is_empty() {
        return Vec::new();
    }
    let (w, b) = affine_params(spec, w, b);
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
            run(
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
