//! BatchNorm: a channel's statistics are those of all its (sample, channel) rows. They
//! are taken over pieces of the channel, each a run of its rows of consecutive samples
//! gathered into one buffer (or a [`CHUNK`] of a row longer than that), and the pieces'
//! sums are combined per channel in a fixed order. The forward then normalizes every
//! row with its channel's statistics; the backward's dγ and dβ are the channel's sums,
//! and dx an element-wise pass. Row r of the [`Spec`] is channel r mod C.

use super::backward::GradSums;
use super::blocks::{lanes, BLOCK};
use super::elem::{Acc, Elem, Lane, Slot};
use super::reduce::{lane_sum, lane_sum3, Moments};
use super::rows::{affine_params, param_grads_out, CHUNK, TASK_ELEMS};
use super::runs::{each, map_rows, Rows, Run, RunOp};
use super::simd::run;
use crate::spec::{Affine, Spec};
use rayon::prelude::*;
use std::ops::Range;

/// Where the statistics come from: the batch (training), or the running mean and
/// variance (eval), as elements of the parameters' type.
#[derive(Clone, Copy)]
pub(super) enum Source<'a, P> {
    Batch,
    Running(&'a [P], &'a [P]),
}

/// Elements a piece of a channel holds at most when its rows are gathered: a few
/// thousand, so that a job's pieces stay in L2.
const PIECE_ELEMS: usize = 2048;

/// Bytes of x a job reads in one run before it moves to the next sample: a page, so
/// that the hardware prefetcher follows.
const RUN_BYTES: usize = 4096;

/// How x is cut into pieces for the channels' statistics. Piece q of channel c holds
/// the channel's rows of samples `q·samples..`, gathered into one buffer, when rows
/// have at most [`CHUNK`] elements (a 7 × 7 feature map's rows are 49 elements long,
/// and a row's own sums would cost more than its elements), or else chunk q of the
/// channel's rows. Pieces are numbered q·C + c, and a job takes consecutive ones: the
/// same q of adjacent channels, gathered sample by sample, the sample's rows of the
/// job's channels one contiguous run of memory (a channel's rows alone are C rows
/// apart).
struct Pieces {
    /// x's samples (B) and channels (C), and the row length (prod(spatial)).
    b: usize,
    c: usize,
    len: usize,
    /// Whole rows per piece, or 0 when rows are cut into chunks.
    samples: usize,
    /// Pieces per channel.
    per_channel: usize,
    /// Pieces per job.
    per_job: usize,
}

impl Pieces {
    /// The pieces of non-empty x of element type `T`.
    fn of<T>(spec: &Spec) -> Self {
        let (c, len) = (spec.param_blocks, spec.len);
        let b = spec.rows / c;
        let (samples, per_channel, elems) = if len <= CHUNK {
            let k = (PIECE_ELEMS / len).clamp(1, b);
            (k, b.div_ceil(k), k * len)
        } else {
            (0, b * len.div_ceil(CHUNK), CHUNK)
        };
        let adjacent = RUN_BYTES.div_ceil(len * std::mem::size_of::<T>());
        Self {
            b,
            c,
            len,
            samples,
            per_channel,
            per_job: adjacent.max(TASK_ELEMS.div_ceil(elems)),
        }
    }

    /// The element ranges of x that piece `q` of channel 0 covers, in order; channel
    /// c's are `c·len` further.
    fn runs(&self, q: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let row = move |n: usize| n * self.c * self.len;
        let (first, last, part) = if self.samples > 0 {
            let n0 = q * self.samples;
            (n0, (n0 + self.samples).min(self.b), None)
        } else {
            let nck = self.len.div_ceil(CHUNK);
            (q / nck, q / nck + 1, Some(q % nck))
        };
        (first..last).map(move |n| match part {
            None => row(n)..row(n) + self.len,
            Some(k) => row(n) + k * CHUNK..row(n) + ((k + 1) * CHUNK).min(self.len),
        })
    }

    /// The [`GradSums`] of every piece ([`piece_sums`]), in the order q·C + c, of the
    /// piece's elements of each input: read in place when they are one run of elements
    /// with lanes (f32, f64, bf16), else gathered (and widened) into buffers the job
    /// keeps.
    fn map<T: Elem, const K: usize>(&self, ins: [&[T]; K]) -> Vec<GradSums<T::Acc>> {
        let mut out = vec![GradSums::EMPTY; self.c * self.per_channel];
        let bufs = || std::array::from_fn::<Vec<T::Acc>, K, _>(|_| Vec::new());
        out.par_chunks_mut(self.per_job)
            .enumerate()
            .for_each_init(bufs, |bufs, (j, mut part)| {
                run(
                    #[inline(always)]
                    || {
                        let mut i = j * self.per_job;
                        while !part.is_empty() {
                            let (q, c0) = (i / self.c, i % self.c);
                            let (seg, rest) = part.split_at_mut((self.c - c0).min(part.len()));
                            self.segment(ins, bufs, (q, c0), seg);
                            (i, part) = (i + seg.len(), rest);
                        }
                    },
                )
            });
        out
    }

    /// [`Self::map`] over piece q of channels `c0..c0 + out.len()`.
    #[inline(always)]
    fn segment<T: Elem, const K: usize>(
        &self,
        ins: [&[T]; K],
        bufs: &mut [Vec<T::Acc>; K],
        (q, c0): (usize, usize),
        out: &mut [GradSums<T::Acc>],
    ) {
        let at = |r: &Range<usize>, c: usize| r.start + c * self.len..r.end + c * self.len;
        let one_run = self.samples <= 1;
        if let (true, Some(xs)) = (one_run, lanes(ins)) {
            let r = self.runs(q).next().unwrap_or_default();
            for (k, o) in out.iter_mut().enumerate() {
                let c = c0 + k;
                *o = piece_sums(&xs[0][at(&r, c)], &xs[K - 1][at(&r, c)], K == 2);
            }
            return;
        }
        let seg: usize = self.runs(q).map(|r| r.len()).sum();
        for (buf, x) in bufs.iter_mut().zip(ins) {
            buf.resize(seg * out.len(), T::Acc::ZERO);
            let mut o = 0;
            for r in self.runs(q) {
                for k in 0..out.len() {
                    let dst = k * seg + o;
                    T::load(&x[at(&r, c0 + k)], &mut buf[dst..dst + r.len()]);
                }
                o += r.len();
            }
        }
        for (k, o) in out.iter_mut().enumerate() {
            let piece = k * seg..(k + 1) * seg;
            *o = piece_sums(&bufs[0][piece.clone()], &bufs[K - 1][piece], K == 2);
        }
    }

    /// `f(c, its pieces in order)` for every channel c, in parallel.
    fn per_channel<V: Sync, R: Send>(
        &self,
        pieces: &[V],
        f: impl Fn(usize, std::iter::StepBy<std::slice::Iter<'_, V>>) -> R + Sync + Send,
    ) -> Vec<R> {
        (0..self.c)
            .into_par_iter()
            .map(|ch| f(ch, pieces[ch..].iter().step_by(self.c)))
            .collect()
    }
}

/// The raw sums of a block of x and dy (no γ): x's moments, Σdy and Σdy·(x − mean);
/// x's moments alone without `grads` (the forward's).
#[inline(always)]
fn block_sums<A: Acc, I: Lane<A>>(x: &[I], dy: &[I], grads: bool) -> GradSums<A> {
    if !grads {
        return GradSums {
            x: Moments::of(x, true),
            ..GradSums::EMPTY
        };
    }
    let n = A::from_f64(x.len() as f64);
    let mean = lane_sum(x, |v| v) / n;
    let [m2, sg, cgx] = lane_sum3(x, dy, |x, d| {
        let c = x - mean;
        [c * c, d, d * c]
    });
    GradSums {
        x: Moments { n, mean, m2 },
        sg,
        cgx,
    }
}

/// [`block_sums`] of a piece, block by block as every backward takes them.
#[inline(always)]
fn piece_sums<A: Acc, I: Lane<A>>(x: &[I], dy: &[I], grads: bool) -> GradSums<A> {
    let mut blocks = x.chunks(BLOCK).zip(dy.chunks(BLOCK));
    let mut sums = match blocks.next() {
        Some((xb, db)) => block_sums(xb, db, grads),
        None => GradSums::EMPTY,
    };
    for (xb, db) in blocks {
        sums = sums.merge(block_sums(xb, db, grads));
    }
    sums
}

/// One channel's [`GradSums`] from its pieces, in order, about `mean` when given (the
/// running mean in eval), else about the channel's own: by the two-pass form of Chan's
/// merge, the mean from the pieces' counts and means, then `M2 = Σ m2ₖ + Σ nₖ·(meanₖ −
/// mean)²` and `Σ g·(x − mean) = Σ cgxₖ + Σ sgₖ·(meanₖ − mean)`. The same sums as
/// merging the pieces pairwise, without two divisions per piece.
fn channel<'a, A: Acc + 'a>(pieces: impl Iterator<Item = &'a GradSums<A>> + Clone, mean: Option<A>) -> GradSums<A> {
    let n = pieces.clone().fold(A::ZERO, |n, p| n + p.x.n);
    let mean = mean.unwrap_or_else(|| pieces.clone().fold(A::ZERO, |s, p| s + p.x.n * p.x.mean) / n);
    pieces.fold(
        GradSums {
            x: Moments { n, mean, m2: A::ZERO },
            ..GradSums::EMPTY
        },
        |mut acc, p| {
            let d = p.x.mean - mean;
            acc.x.m2 += p.x.m2 + p.x.n * d * d;
            acc.sg += p.sg;
            acc.cgx += p.cgx + p.sg * d;
            acc
        },
    )
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
    let (w, b) = affine_params(spec, w, b);
    let (stats, moments) = match source {
        Source::Batch if x.is_empty() => (Vec::new(), Vec::new()),
        Source::Batch => {
            let p = Pieces::of::<T>(spec);
            let pieces = p.map([x]);
            let ch: Vec<Moments<T::Acc>> = p.per_channel(&pieces, |_, s| channel(s, None).x);
            let eps = T::Acc::from_f64(spec.eps);
            (ch.iter().map(|m| m.stats(eps)).collect(), ch)
        }
        Source::Running(mean, var) => (running(spec, mean, var), Vec::new()),
    };
    let channels: Vec<ChannelAffine<T::Acc>> = (0..c)
        .map(|ch| {
            let (mean, rstd) = stats[ch];
            ChannelAffine {
                mean,
                scale: rstd * w[ch],
                shift: b[ch],
            }
        })
        .collect();
    let out = map_rows(rows(spec), [x], &Normalize { channels: &channels });
    let mut stats = vec![P::zero(); if matches!(source, Source::Batch) { 2 * c } else { 0 }];
    if !moments.is_empty() {
        let (mean, var): (Vec<_>, Vec<_>) = moments.iter().map(|m| (m.mean, m.m2 / m.n)).unzip();
        P::store(&mean, &mut stats[..c]);
        P::store(&var, &mut stats[c..]);
    }
    (out, stats)
}

/// The rows of a BatchNorm spec: channel r mod C for row r.
fn rows(spec: &Spec) -> Rows {
    Rows {
        len: spec.len,
        period: spec.param_blocks,
    }
}

/// A channel's normalize step, y = (x − mean)·scale + shift with scale = rstd·γ and
/// shift = β: the row norms' step (`super::forward`), with the same rounding.
#[derive(Clone, Copy)]
struct ChannelAffine<A> {
    mean: A,
    scale: A,
    shift: A,
}

/// y from x, run by run, with the run's channel's [`ChannelAffine`]: no division per
/// run, which for rows of 49 elements cost as much as the run.
struct Normalize<'a, A> {
    channels: &'a [ChannelAffine<A>],
}

impl<A: Acc> RunOp<A, 1> for Normalize<'_, A> {
    type State = ();

    fn state(&self) {}

    #[inline(always)]
    fn run<I: Lane<A>, O: Slot<A>>(&self, _: &mut (), at: Run, [x]: [&[I]; 1], y: &mut [O]) {
        let p = self.channels[at.cycle];
        each(
            x,
            x,
            y,
            #[inline(always)]
            |x, _| (x - p.mean) * p.scale + p.shift,
        );
    }
}

/// What the dx pass needs of a channel: dx = rstd·(γ·dy − mean_g − x̂·mean_gx) with
/// x̂ = (x − mean)·rstd, mean_g = mean(γ·dy) and mean_gx = mean(γ·dy·x̂) in training,
/// both 0 in eval (the statistics are constants).
#[derive(Clone, Copy)]
struct ChannelGrad<A> {
    mean: A,
    rstd: A,
    gamma: A,
    mean_g: A,
    mean_gx: A,
}

/// dx from x and dy, run by run, with the run's channel's [`ChannelGrad`].
struct Dx<'a, A> {
    grads: &'a [ChannelGrad<A>],
}

impl<A: Acc> RunOp<A, 2> for Dx<'_, A> {
    type State = ();

    fn state(&self) {}

    #[inline(always)]
    fn run<I: Lane<A>, O: Slot<A>>(&self, _: &mut (), at: Run, [x, dy]: [&[I]; 2], dx: &mut [O]) {
        let g = self.grads[at.cycle];
        each(
            x,
            dy,
            dx,
            #[inline(always)]
            |x, dy| {
                let xh = (x - g.mean) * g.rstd;
                g.rstd * (g.gamma * dy - g.mean_g - xh * g.mean_gx)
            },
        );
    }
}

/// Backward: dx, and dγ then dβ as `affine` asks, as every norm's backward returns them.
/// One pass over x and dy gathers each channel's Σdy and Σdy·(x − mean) (about the
/// batch mean in training, the running mean in eval), which are dβ and dγ/rstd; a
/// second, element-wise, writes dx.
pub(super) fn backward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    affine: Affine,
    (x, w, dy): (&[T], Option<&[P]>, &[T]),
    source: Source<P>,
) -> (Vec<T>, Vec<P>) {
    let c = spec.param_blocks;
    if x.is_empty() {
        let zeros = vec![T::Acc::ZERO; c];
        return (Vec::new(), param_grads_out::<P>(affine, &zeros, &zeros));
    }
    let (gamma, _): (Vec<T::Acc>, _) = affine_params(spec, w, None);
    let running = match source {
        Source::Batch => None,
        Source::Running(mean, var) => Some(running(spec, mean, var)),
    };
    let p = Pieces::of::<T>(spec);
    let pieces = p.map([x, dy]);
    let eps = T::Acc::from_f64(spec.eps);
    let sums = p.per_channel(&pieces, |ch, s| channel(s, running.as_ref().map(|r| r[ch].0)));
    let (mut dg, mut db) = (vec![T::Acc::ZERO; c], vec![T::Acc::ZERO; c]);
    let grads: Vec<ChannelGrad<T::Acc>> = (0..c)
        .map(|ch| {
            let (s, gamma) = (sums[ch], gamma[ch]);
            let (mean, rstd) = match &running {
                None => s.x.stats(eps),
                Some(r) => r[ch],
            };
            (dg[ch], db[ch]) = (rstd * s.cgx, s.sg);
            let inv_n = T::Acc::ONE / s.x.n;
            let (mean_g, mean_gx) = match running {
                None => (gamma * s.sg * inv_n, rstd * gamma * s.cgx * inv_n),
                Some(_) => (T::Acc::ZERO, T::Acc::ZERO),
            };
            ChannelGrad {
                mean,
                rstd,
                gamma,
                mean_g,
                mean_gx,
            }
        })
        .collect();
    let dx = map_rows(rows(spec), [x, dy], &Dx { grads: &grads });
    (dx, param_grads_out::<P>(affine, &dg, &db))
}
