//! BatchNorm: a channel's statistics are those of all its (sample, channel) rows,
//! merged in a fixed order (sample, then chunk); the rows are then normalized, and
//! differentiated, by the passes every other norm uses, each with its channel's
//! statistics. Row r of the [`Spec`] is channel r mod C.

use super::backward::{GradSums, RowGrad, RowGrads, Scratch};
use super::elem::{Acc, Elem};
use super::forward::normalized;
use super::reduce::{moments, Moments};
use super::rows::{affine_params, chunk_of, CHUNK, TASK_ELEMS};
use super::simd::run;
use crate::spec::{Affine, Spec};
use rayon::prelude::*;

/// Where the statistics come from: the batch (training), or the running mean and
/// variance (eval), as elements of the parameters' type.
#[derive(Clone, Copy)]
pub(super) enum Source<'a, P> {
    Batch,
    Running(&'a [P], &'a [P]),
}

/// `f(state, row, chunk)` for every piece of every row (the row, or a [`CHUNK`] of a
/// longer one), in parallel, in the order row·chunks + chunk, with a `state` made by
/// `init` once per rayon job.
fn per_piece<S, R: Send>(
    spec: &Spec,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, usize) -> R + Sync + Send,
) -> Vec<R> {
    let nck = spec.len.div_ceil(CHUNK);
    let min_len = (TASK_ELEMS / spec.len.clamp(1, CHUNK)).max(1);
    (0..spec.rows * nck)
        .into_par_iter()
        .with_min_len(min_len)
        .map_init(init, |s, i| f(s, i / nck, i % nck))
        .collect()
}

/// For each channel, its rows' pieces merged in (sample, chunk) order.
fn per_channel<V: Copy>(spec: &Spec, pieces: &[V], empty: V, merge: impl Fn(V, V) -> V) -> Vec<V> {
    let (c, nck) = (spec.param_blocks, spec.len.div_ceil(CHUNK));
    (0..c)
        .map(|ch| {
            (ch..spec.rows)
                .step_by(c)
                .flat_map(|r| &pieces[r * nck..(r + 1) * nck])
                .fold(empty, |a, &b| merge(a, b))
        })
        .collect()
}

/// (mean, rstd) of each channel from running statistics.
fn running<P: Elem>(spec: &Spec, mean: &[P], var: &[P]) -> Vec<(P::Acc, P::Acc)> {
    let (mut m, mut v) = (vec![P::Acc::ZERO; mean.len()], vec![P::Acc::ZERO; var.len()]);
    P::load(mean, &mut m);
    P::load(var, &mut v);
    let eps = P::Acc::from_f64(spec.eps);
    m.into_iter()
        .zip(v)
        .map(|(m, v)| (m, P::Acc::ONE / (v + eps).sqrt()))
        .collect()
}

/// Forward: y, laid out as x, and (training) each channel's batch mean, then its biased
/// variance, C elements each of the parameters' type, from the same moments that
/// normalized it (empty in eval). x has more than one element per channel in training.
pub(super) fn forward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    x: &[T],
    w: Option<&[P]>,
    b: Option<&[P]>,
    source: Source<P>,
) -> (Vec<T>, Vec<P>) {
    let c = spec.param_blocks;
    let batch = matches!(source, Source::Batch);
    let (w, b) = affine_params(spec, w, b);
    let (stats, moments) = match source {
        Source::Batch => {
            let pieces = per_piece(
                spec,
                || (),
                |_, r, k| {
                    let xc = chunk_of(spec, x, r, k);
                    run(
                        #[inline(always)]
                        || moments(xc, true),
                    )
                },
            );
            let ch = per_channel(spec, &pieces, Moments::EMPTY, Moments::merge);
            let eps = T::Acc::from_f64(spec.eps);
            (ch.iter().map(|m| m.stats(eps)).collect::<Vec<_>>(), ch)
        }
        Source::Running(mean, var) => (running(spec, mean, var), Vec::new()),
    };
    let out = normalized(spec, x, || (), |_, r| stats[r % c], (&w, &b));
    let mut stats = vec![P::zero(); if batch { 2 * c } else { 0 }];
    if batch {
        let (mean, var): (Vec<_>, Vec<_>) = moments.iter().map(|m| (m.mean, m.m2 / m.n)).unzip();
        P::store(&mean, &mut stats[..c]);
        P::store(&var, &mut stats[c..]);
    }
    (out, stats)
}

/// Backward: dx, and dγ then dβ as `affine` asks, as every norm's backward returns them. In
/// training each channel's sums of g = γ·dy and g·(x − mean) come first (a pass over x
/// and dy), then dx = rstd·(γ·dy − mean(γ·dy) − x̂·mean(γ·dy·x̂)); in eval the statistics are
/// constants and dx = γ·rstd·dy.
pub(super) fn backward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    affine: Affine,
    (x, w, dy): (&[T], Option<&[P]>, &[T]),
    source: Source<P>,
) -> (Vec<T>, Vec<P>) {
    let grads: Vec<RowGrad<T::Acc>> = match source {
        Source::Batch if x.is_empty() => Vec::new(),
        Source::Batch => {
            let (gamma, beta) = affine_params(spec, w, None);
            let pieces = per_piece(spec, Scratch::new, |scratch, r, k| {
                let (xc, dyc) = (chunk_of(spec, x, r, k), chunk_of(spec, dy, r, k));
                run(
                    #[inline(always)]
                    || scratch.sums(spec, (r, k * CHUNK), [xc, dyc], (&gamma, &beta), None),
                )
            });
            per_channel(spec, &pieces, GradSums::EMPTY, GradSums::merge)
                .iter()
                .map(|s| s.finish(spec))
                .collect()
        }
        Source::Running(mean, var) => running(spec, mean, var)
            .into_iter()
            .map(|(mean, rstd)| RowGrad {
                mean,
                rstd,
                mean_g: T::Acc::ZERO,
                mean_gx: T::Acc::ZERO,
            })
            .collect(),
    };
    super::backward::backward(spec, affine, (x, (w, None), dy, None), RowGrads::PerChannel(&grads))
}
