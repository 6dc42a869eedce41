//! Channels-last GroupNorm: each sample of x is an S × C matrix (S = prod(spatial)),
//! and group g is the block of columns `g·C/G..(g+1)·C/G` of every row. The passes walk
//! tiles of whole rows of a sample: column sums across a tile's rows are adds of whole
//! rows, which vectorize across channels however few channels a group has. A tile's
//! group moments come from two passes over it (group mean, then squared deviations),
//! from cache; tiles are merged in order with Chan's formula, so results are the same
//! from run to run. The normalize and dx passes then apply per-channel values to each
//! row.

use super::alloc::{assume_written, assume_written_mut, written};
use super::backward::{GradSums, RowGrad, Wp};
use super::blocks::{as_acc, as_acc_all};
use super::elem::{Acc, Elem, Lane, Slot};
use super::reduce::Moments;
use super::rows::{affine_params, param_grads_out, TASK_ELEMS};
use super::simd::run;
use crate::spec::{Activation, Affine, Spec};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Most rows in a tile: a column's sum over a tile is a plain sequential sum, so its
/// length is kept short (longer runs merge through Chan's formula).
const MAX_TILE_ROWS: usize = 256;

/// How a channels-last [`Spec`] is walked: B samples of S rows of C channels, in G
/// groups of `cpg`, each sample cut into tiles of `tile` rows.
#[derive(Clone, Copy)]
struct Tiles {
    s: usize,
    c: usize,
    g: usize,
    cpg: usize,
    tile: usize,
    /// Tiles per sample.
    per_sample: usize,
    /// Tiles of all samples.
    count: usize,
}

impl Tiles {
    fn of(spec: &Spec) -> Self {
        let (g, cpg, s) = (spec.param_blocks, spec.params_per_row, spec.inner);
        let c = g * cpg;
        let tile = (TASK_ELEMS / c.max(1)).clamp(1, MAX_TILE_ROWS);
        let per_sample = s.div_ceil(tile);
        Self {
            s,
            c,
            g,
            cpg,
            tile,
            per_sample,
            count: spec.rows / g * per_sample,
        }
    }

    /// Tile `k` (sample `k / per_sample`) of `v`, whole rows.
    fn tile_of<'a, T>(&self, v: &'a [T], k: usize) -> &'a [T] {
        let (b, t) = (k / self.per_sample, k % self.per_sample);
        let sample = &v[b * self.s * self.c..(b + 1) * self.s * self.c];
        &sample[t * self.tile * self.c..((t + 1) * self.tile).min(self.s) * self.c]
    }

    /// Rayon's minimum number of tiles per job, so that a job has [`TASK_ELEMS`].
    fn min_len(&self) -> usize {
        (TASK_ELEMS / (self.tile * self.c).max(1)).max(1)
    }

    /// (tile, mutable tile) for every tile of `out` (shaped as x), in parallel.
    fn tiles_mut<'a, T: Send>(&self, out: &'a mut [T]) -> impl ParallelIterator<Item = (usize, &'a mut [T])> {
        let t = *self;
        out.par_chunks_mut(t.s * t.c).enumerate().flat_map(move |(b, y)| {
            y.par_chunks_mut(t.tile * t.c)
                .with_min_len(t.min_len())
                .enumerate()
                .map(move |(k, tile)| (b * t.per_sample + k, tile))
        })
    }
}

/// Calls `f(rows)` for every row of the `K` equally shaped tiles (rows of `c`
/// elements).
#[inline(always)]
fn for_rows<A, const K: usize>(c: usize, tiles: [&[A]; K], mut f: impl FnMut([&[A]; K])) {
    for r in 0..tiles[0].len() / c {
        f(tiles.map(|t| &t[r * c..(r + 1) * c]));
    }
}

/// `acc[c] += f(v[c], m[c])` over a block.
#[inline(always)]
fn add_cols<A: Acc, I: Lane<A>>(acc: &mut [A], v: &[I], m: &[A], f: impl Fn(A, A) -> A) {
    for ((a, &v), &m) in acc.iter_mut().zip(v).zip(m) {
        *a += f(v.get(), m);
    }
}

/// `acc[c] += Σ_r f(x[r][c], m[c])` over the rows of `c` channels of a tile (elements
/// converted in the loop, [`Lane`]), four rows at a time, added pairwise before they
/// reach `acc`: one load and one store of each accumulator per four rows rather than
/// per row, which bound the pass.
#[inline(always)]
fn col_sums<A: Acc, I: Lane<A>>(c: usize, x: &[I], m: &[A], acc: &mut [A], f: impl Fn(A, A) -> A) {
    let (acc, m) = (&mut acc[..c], &m[..c]);
    let mut quads = x.chunks_exact(4 * c);
    for q in &mut quads {
        let (r0, r1, r2, r3) = (&q[..c], &q[c..2 * c], &q[2 * c..3 * c], &q[3 * c..4 * c]);
        for i in 0..c {
            let m = m[i];
            acc[i] += (f(r0[i].get(), m) + f(r1[i].get(), m)) + (f(r2[i].get(), m) + f(r3[i].get(), m));
        }
    }
    for r in quads.remainder().chunks_exact(c) {
        add_cols(acc, r, m, &f);
    }
}

/// Per-channel buffers of a tile's passes, and the converted tiles of x and dy, made
/// once per rayon job.
struct Cols<A> {
    sum: Vec<A>,
    mean: Vec<A>,
    m2: Vec<A>,
    x: Vec<A>,
    dy: Vec<A>,
    dz: Vec<A>,
}

impl<A: Acc> Cols<A> {
    fn new(c: usize) -> Self {
        Self {
            sum: vec![A::ZERO; c],
            mean: vec![A::ZERO; c],
            m2: vec![A::ZERO; c],
            x: Vec::new(),
            dy: Vec::new(),
            dz: Vec::new(),
        }
    }

    /// First pass over a tile: each group's mean over the tile from column sums, then
    /// broadcast to its channels in `self.mean`; `self.m2` is zeroed for the second
    /// pass.
    #[inline(always)]
    fn group_means<I: Lane<A>>(&mut self, t: &Tiles, x: &[I]) -> Vec<A> {
        self.sum.fill(A::ZERO);
        self.m2.fill(A::ZERO);
        col_sums(t.c, x, &self.mean, &mut self.sum, |v, _| v);
        let n = group_count(t, x.len());
        let means: Vec<A> = self.sum.chunks(t.cpg).map(|s| sum(s) / n).collect();
        for (m, &gm) in self.mean.chunks_mut(t.cpg).zip(&means) {
            m.fill(gm);
        }
        means
    }

    /// Each group's moments over the tile `x`, from its `means` and the squared
    /// deviations the second pass left in `self.m2`.
    #[inline(always)]
    fn group_moments(&self, t: &Tiles, len: usize, means: &[A]) -> Vec<Moments<A>> {
        let n = group_count(t, len);
        means
            .iter()
            .zip(self.m2.chunks(t.cpg))
            .map(|(&mean, m2)| Moments { n, mean, m2: sum(m2) })
            .collect()
    }
}

/// The elements of a group in a tile of `len` elements: its rows times the group's
/// channels.
#[inline(always)]
fn group_count<A: Acc>(t: &Tiles, len: usize) -> A {
    A::from_f64((len / t.c * t.cpg) as f64)
}

/// Sum of a few values, in order.
#[inline(always)]
fn sum<A: Acc>(v: &[A]) -> A {
    v.iter().fold(A::ZERO, |a, &b| a + b)
}

/// The moments of each group of a tile: its means from column sums, then its squared
/// deviations from them, both passes from cache; elements with lanes read in place,
/// f16 widened once into the job's buffer.
#[inline(always)]
fn tile_moments<T: Elem>(t: &Tiles, x: &[T], cols: &mut Cols<T::Acc>) -> Vec<Moments<T::Acc>> {
    if let Some(xl) = T::lanes(x) {
        return lane_moments(t, xl, cols);
    }
    let mut buf = std::mem::take(&mut cols.x);
    let moments = lane_moments(t, as_acc(x, &mut buf), cols);
    cols.x = buf;
    moments
}

/// [`tile_moments`] of a tile of elements converted in the passes' loops.
#[inline(always)]
fn lane_moments<A: Acc, I: Lane<A>>(t: &Tiles, x: &[I], cols: &mut Cols<A>) -> Vec<Moments<A>> {
    let means = cols.group_means(t, x);
    col_sums(t.c, x, &cols.mean, &mut cols.m2, |v, m| (v - m) * (v - m));
    cols.group_moments(t, x.len(), &means)
}

/// Each (sample, group)'s value, merged over the sample's tiles in order from the G
/// values `groups` gives for each of `per_tile`.
fn per_group<P, V: Copy>(
    t: &Tiles,
    per_tile: &[P],
    groups: impl Fn(&P) -> &[V],
    empty: V,
    merge: impl Fn(V, V) -> V,
) -> Vec<V> {
    per_tile
        .chunks(t.per_sample)
        .flat_map(|sample| {
            (0..t.g)
                .map(|g| sample.iter().fold(empty, |a, p| merge(a, groups(p)[g])))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Per (sample, channel) values: `f(group value)` of its group, for each channel of
/// each sample (B·C values).
fn per_channel<V: Copy, R>(t: &Tiles, groups: &[V], f: impl Fn(V, usize) -> R) -> Vec<R> {
    (0..groups.len() * t.cpg)
        .map(|i| f(groups[i / t.cpg], i % t.c))
        .collect()
}

/// Forward: y, laid out as x.
pub(super) fn forward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    x: &[T],
    w: Option<&[P]>,
    b: Option<&[P]>,
) -> Vec<T> {
    if x.is_empty() {
        return Vec::new();
    }
    let t = Tiles::of(spec);
    let stats = group_stats(spec, &t, x);
    let (w, b) = affine_params(spec, w, b);
    // y = x·scale + shift for each (sample, channel): scale = rstd·γ, shift =
    // β − mean·scale, one multiply and one add an element and two loads of parameters
    // (docs/perf-notes.md, c25).
    let (scale, shift): (Vec<_>, Vec<_>) = per_channel(&t, &stats, |(mean, rstd), c| {
        let scale = rstd * w[c];
        (scale, b[c] - mean * scale)
    })
    .into_iter()
    .unzip();
    let (out, ()) = written(x.len(), |out| {
        t.tiles_mut(out).for_each_init(TileBufs::new, |bufs, (k, yt)| {
            let at = k / t.per_sample * t.c;
            let p = (&scale[at..at + t.c], &shift[at..at + t.c]);
            let xt = t.tile_of(x, k);
            run(
                #[inline(always)]
                || match T::lanes(xt) {
                    Some(xl) => bufs.fill_lanes(
                        t.c,
                        xl,
                        yt,
                        #[inline(always)]
                        |xa, ya| normalize(spec.act, t.c, xa, ya, p),
                    ),
                    None => bufs.fill(
                        t.c,
                        [xt],
                        yt,
                        #[inline(always)]
                        |[xa], ya| normalize(spec.act, t.c, xa, ya, p),
                    ),
                },
            )
        })
    });
    out
}

/// Each (sample, group)'s (mean, rstd): the moments of each tile, merged over the
/// sample's tiles in order.
fn group_stats<T: Elem>(spec: &Spec, t: &Tiles, x: &[T]) -> Vec<(T::Acc, T::Acc)> {
    let per_tile: Vec<Vec<Moments<T::Acc>>> = (0..t.count)
        .into_par_iter()
        .with_min_len(t.min_len())
        .map_init(
            || Cols::new(t.c),
            |cols, k| {
                run(
                    #[inline(always)]
                    || tile_moments(t, t.tile_of(x, k), cols),
                )
            },
        )
        .collect();
    let eps = T::Acc::from_f64(spec.eps);
    per_group(t, &per_tile, |m| m, Moments::EMPTY, Moments::merge)
        .into_iter()
        .map(|m| m.stats(eps))
        .collect()
}

/// [`normalize_rows`] with the spec's activation, `act`.
#[inline(always)]
fn normalize<A: Acc, I: Lane<A>>(act: Activation, c: usize, x: &[I], y: &mut [MaybeUninit<A>], p: (&[A], &[A])) {
    match act {
        Activation::Identity => normalize_rows::<_, _, false>(c, x, y, p),
        Activation::Silu => normalize_rows::<_, _, true>(c, x, y, p),
    }
}

/// y of a tile's rows of `c` channels: `x·scale + shift` per channel, then SiLU when
/// `SILU`. (With shift = β − mean·scale, y carries roundings of about
/// u·|mean|·rstd·|γ| each, of mean·scale, of the shift and of x·scale, on top of the
/// mean's own: a few times, and the same order as, the error that rounding the mean to
/// the accumulator type puts into x − mean, which the tests allow on data far from
/// zero.)
#[inline(always)]
fn normalize_rows<A: Acc, I: Lane<A>, const SILU: bool>(
    c: usize,
    x: &[I],
    y: &mut [MaybeUninit<A>],
    (scale, shift): (&[A], &[A]),
) {
    for (yr, xr) in y.chunks_mut(c).zip(x.chunks(c)) {
        for (((y, &x), &s), &b) in yr.iter_mut().zip(xr).zip(scale).zip(shift) {
            let z = x.get() * s + b;
            y.write(if SILU { z.silu() } else { z });
        }
    }
}

/// Elements (whole rows, at least one) that the passes writing a tile of f16/bf16
/// compute and round at a time (widening the inputs first where they are not read in
/// place): small enough for the inputs and the output to stay in L1 between the steps.
const ROUNDED_ELEMS: usize = 1024;

/// A rayon job's buffers for the passes that write a tile of f16/bf16: a few rows of
/// each input widened at a time (f16, and the backward's inputs), and of the output
/// before it is rounded, so that no row of C elements pays for converting, or for
/// initializing block buffers, on its own.
struct TileBufs<A, const K: usize> {
    ins: [Vec<A>; K],
    out: Vec<MaybeUninit<A>>,
}

impl<A: Acc, const K: usize> TileBufs<A, K> {
    fn new() -> Self {
        Self {
            ins: std::array::from_fn(|_| Vec::new()),
            out: Vec::new(),
        }
    }

    /// Calls `f(inputs, output)` on whole rows of `c` elements of the `K` input tiles
    /// and of the output tile, memory not yet written, as accumulators: on the tiles
    /// themselves for f32 and f64, else on [`ROUNDED_ELEMS`] at a time widened into
    /// this job's buffers, the output then rounded into `out`. `f` must write every
    /// element of its output.
    #[inline(always)]
    fn fill<T: Elem<Acc = A>>(
        &mut self,
        c: usize,
        ins: [&[T]; K],
        out: &mut [MaybeUninit<T>],
        mut f: impl FnMut([&[A]; K], &mut [MaybeUninit<A>]),
    ) {
        let Self {
            ins: bufs,
            out: rounding,
        } = self;
        rounded(
            c,
            out,
            rounding,
            #[inline(always)]
            |r, o| f(as_acc_all(ins.map(|x| &x[r.clone()]), bufs), o),
        );
    }

    /// As [`Self::fill`] for one input tile of elements with lanes, read in place by
    /// `f`.
    #[inline(always)]
    fn fill_lanes<T: Elem<Acc = A>>(
        &mut self,
        c: usize,
        x: &[T::Lane],
        out: &mut [MaybeUninit<T>],
        mut f: impl FnMut(&[T::Lane], &mut [MaybeUninit<A>]),
    ) {
        rounded(
            c,
            out,
            &mut self.out,
            #[inline(always)]
            |r, o| f(&x[r], o),
        );
    }
}

/// Calls `f(range, output)` on whole rows of `c` elements of `out`, memory not yet
/// written, as accumulators: `out` itself in one call for f32 and f64, else
/// [`ROUNDED_ELEMS`] at a time in `buf`, then rounded into `out`. `f` must write every
/// element of its output.
#[inline(always)]
fn rounded<T: Elem>(
    c: usize,
    out: &mut [MaybeUninit<T>],
    buf: &mut Vec<MaybeUninit<T::Acc>>,
    mut f: impl FnMut(std::ops::Range<usize>, &mut [MaybeUninit<T::Acc>]),
) {
    let len = out.len();
    if let Some(o) = T::as_acc_uninit(out) {
        return f(0..len, o);
    }
    let step = (ROUNDED_ELEMS / c).max(1) * c;
    for (k, o) in out.chunks_mut(step).enumerate() {
        let n = o.len();
        buf.resize(n, MaybeUninit::uninit());
        f(k * step..k * step + n, &mut buf[..n]);
        // SAFETY: `f` wrote every element of its output (its contract, which the
        // forward and backward tests check: an element left out would be garbage).
        T::store_uninit(unsafe { assume_written(&buf[..n]) }, o);
    }
}

/// What the first backward pass learns from a tile: each group's [`GradSums`], and per
/// channel Σdy and Σdy·(x − tile group mean), from which dγ and dβ follow once the
/// group's statistics are known.
struct TileGrads<A> {
    sums: Vec<GradSums<A>>,
    dy: Vec<A>,
    dyx: Vec<A>,
}

/// The first backward pass over a tile of x and dy; with `z` (GroupNorm + SiLU), over
/// x and dy·silu'(z), which it writes into `keep` when given (the tile of dx, for the
/// second pass to read back), else into a buffer of its own.
#[inline(always)]
fn tile_grads<T: Elem>(
    t: &Tiles,
    (x, dy): (&[T], &[T]),
    w: &[T::Acc],
    z: Option<Z<T::Acc>>,
    keep: Option<&mut [MaybeUninit<T::Acc>]>,
    cols: &mut Cols<T::Acc>,
) -> TileGrads<T::Acc> {
    let (mut xbuf, mut dybuf) = (std::mem::take(&mut cols.x), std::mem::take(&mut cols.dy));
    let (xa, mut da) = (as_acc(x, &mut xbuf), as_acc(dy, &mut dybuf));
    let mut dzbuf = std::mem::take(&mut cols.dz);
    if let Some(z) = z {
        match keep {
            Some(out) => {
                silu_dz_rows(t.c, xa, da, z, out);
                // SAFETY: silu_dz_rows wrote every element of `out`, which is as long
                // as the tile.
                da = unsafe { assume_written(out) };
            }
            None => {
                dzbuf.resize(da.len(), T::Acc::ZERO);
                silu_dz_rows(t.c, xa, da, z, &mut dzbuf);
                da = &dzbuf;
            }
        }
    }
    let means = cols.group_means(t, xa);
    let (mut sdy, mut sdyx) = (vec![T::Acc::ZERO; t.c], vec![T::Acc::ZERO; t.c]);
    let Cols { mean, m2, .. } = cols;
    for_rows(
        t.c,
        [xa, da],
        #[inline(always)]
        |[xr, dr]| {
            add_cols(m2, xr, mean, |v, m| (v - m) * (v - m));
            add_cols(&mut sdy, dr, dr, |d, _| d);
            for (((a, &d), &v), &m) in sdyx.iter_mut().zip(dr).zip(xr).zip(mean.iter()) {
                *a += d * (v - m);
            }
        },
    );
    let dot = |v: &[T::Acc], c0: usize| v.iter().zip(&w[c0..]).fold(T::Acc::ZERO, |a, (&v, &w)| a + v * w);
    let sums = cols
        .group_moments(t, xa.len(), &means)
        .into_iter()
        .enumerate()
        .map(|(g, x)| {
            let (c0, r) = (g * t.cpg, g * t.cpg..(g + 1) * t.cpg);
            GradSums {
                x,
                sg: dot(&sdy[r.clone()], c0),
                cgx: dot(&sdyx[r], c0),
            }
        })
        .collect();
    (cols.x, cols.dy, cols.dz) = (xbuf, dybuf, dzbuf);
    TileGrads {
        sums,
        dy: sdy,
        dyx: sdyx,
    }
}

/// Backward: dx, and dγ then dβ as `affine` asks, as every norm's backward returns
/// them. The first pass gives each group's statistics and sums; dγ and dβ are the
/// tiles' per-channel sums, added in tile order; the second pass writes dx.
pub(super) fn backward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    affine: Affine,
    (x, (w, b), dy): (&[T], Wp<P>, &[T]),
) -> (Vec<T>, Vec<P>) {
    let t = Tiles::of(spec);
    let (gamma, beta) = affine_params(spec, w, b);
    let (mut dg, mut db) = (vec![T::Acc::ZERO; t.c], vec![T::Acc::ZERO; t.c]);
    let (out, ()) = written(x.len(), |dx| {
        if x.is_empty() {
            return;
        }
        // GroupNorm + SiLU: each (sample, channel)'s mean and rstd·γ first, for both
        // passes to recompute z from.
        let zs = (spec.act == Activation::Silu).then(|| {
            let stats = group_stats(spec, &t, x);
            let mean = per_channel(&t, &stats, |(mean, _), _| mean);
            (mean, per_channel(&t, &stats, |(_, rstd), c| rstd * gamma[c]))
        });
        let z_of = |k: usize| {
            let at = k / t.per_sample * t.c;
            zs.as_ref().map(|(m, s)| Z {
                mean: &m[at..at + t.c],
                scale: &s[at..at + t.c],
                shift: &beta[..t.c],
            })
        };
        // GroupNorm + SiLU with dx of the accumulators' type (f32, f64): the first pass
        // leaves dy·silu'(z) in dx, where the second reads it back instead of
        // computing it again (an exponential and a division an element).
        let keep = zs.is_some() && T::as_acc_uninit(&mut dx[..0]).is_some();
        let tiles: Vec<TileGrads<T::Acc>> = t
            .tiles_mut(dx)
            .map_init(
                || Cols::new(t.c),
                |cols, (k, dxt)| {
                    let ins = (t.tile_of(x, k), t.tile_of(dy, k));
                    let kept = if keep { T::as_acc_uninit(dxt) } else { None };
                    run(
                        #[inline(always)]
                        || tile_grads(&t, ins, &gamma, z_of(k), kept, cols),
                    )
                },
            )
            .collect();
        let grads: Vec<RowGrad<T::Acc>> = per_group(&t, &tiles, |g| &g.sums, GradSums::EMPTY, GradSums::merge)
            .into_iter()
            .map(|s| s.finish(spec))
            .collect();
        param_grads(&t, &tiles, &grads, (&mut dg, &mut db));
        // Per (sample, channel), as separate vectors so the dx loop vectorizes.
        let field = |f: fn(&RowGrad<T::Acc>) -> T::Acc| per_channel(&t, &grads, |r, _| f(&r));
        let [mean, rstd, mean_g, mean_gx] = [
            field(|r| r.mean),
            field(|r| r.rstd),
            field(|r| r.mean_g),
            field(|r| r.mean_gx),
        ];
        t.tiles_mut(dx).for_each_init(TileBufs::new, |bufs, (k, dxt)| {
            let at = k / t.per_sample * t.c;
            let [m, r, mg, mgx] = [&mean, &rstd, &mean_g, &mean_gx].map(|v| &v[at..at + t.c]);
            let g = &gamma[..t.c];
            let (xt, dyt) = (t.tile_of(x, k), t.tile_of(dy, k));
            if keep {
                let (Some(xa), Some(dz)) = (T::as_acc(xt), T::as_acc_uninit(dxt)) else {
                    unreachable!("keep is set for f32 and f64 only")
                };
                // SAFETY: the first pass wrote dy·silu'(z) into every element of this
                // tile of dx (the same tiles, `keep` set).
                let dz = unsafe { assume_written_mut(dz) };
                return run(
                    #[inline(always)]
                    || dx_rows_kept(t.c, xa, dz, [m, r, mg, mgx, g]),
                );
            }
            run(
                #[inline(always)]
                || {
                    bufs.fill(
                        t.c,
                        [xt, dyt],
                        dxt,
                        #[inline(always)]
                        |[xa, da], dxa| dx_rows(t.c, (xa, da), dxa, [m, r, mg, mgx, g], z_of(k), &mut Vec::new()),
                    )
                },
            )
        });
    });
    let params = param_grads_out::<P>(affine, &dg, &db);
    (out, params)
}

/// Where z = x̂·γ + β of a (sample, channel) comes from, for GroupNorm + SiLU: the
/// channel's mean, rstd·γ and β.
#[derive(Clone, Copy)]
struct Z<'a, A> {
    mean: &'a [A],
    scale: &'a [A],
    shift: &'a [A],
}

/// dx of a tile's rows of `c` channels, from x, dy and each channel's (mean, rstd,
/// mean(g), mean(g·x̂), γ); with SiLU (`z` given), dy·silu'(z) in dy's place, taken a
/// row at a time into `dz`.
#[inline(always)]
fn dx_rows<A: Acc>(
    c: usize,
    (x, dy): (&[A], &[A]),
    dx: &mut [MaybeUninit<A>],
    stats: [&[A]; 5],
    z: Option<Z<A>>,
    dz: &mut Vec<A>,
) {
    for ((dxr, xr), dr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
        let n = dxr.len();
        let (xr, mut dr) = (&xr[..n], &dr[..n]);
        if let Some(z) = z {
            dz.resize(n, A::ZERO);
            silu_dz(xr, dr, z, dz);
            dr = dz;
        }
        let [m, r, mg, mgx, g] = stats.map(|v| &v[..n]);
        for i in 0..n {
            dxr[i].write(dx_of(xr[i], dr[i], [m[i], r[i], mg[i], mgx[i], g[i]]));
        }
    }
}

/// dx of a tile's rows of `c` channels, as [`dx_rows`] with SiLU, from dy·silu'(z) that
/// the first pass left in `dx`, overwritten in place.
#[inline(always)]
fn dx_rows_kept<A: Acc>(c: usize, x: &[A], dx: &mut [A], stats: [&[A]; 5]) {
    for (dxr, xr) in dx.chunks_mut(c).zip(x.chunks(c)) {
        let n = dxr.len();
        let xr = &xr[..n];
        let [m, r, mg, mgx, g] = stats.map(|v| &v[..n]);
        for i in 0..n {
            dxr[i] = dx_of(xr[i], dxr[i], [m[i], r[i], mg[i], mgx[i], g[i]]);
        }
    }
}

/// dx of one element from x, the gradient g reaching z, and its channel's (mean, rstd,
/// mean(g), mean(g·x̂), γ): rstd · (g·γ − mean(g) − x̂ · mean(g·x̂)).
#[inline(always)]
fn dx_of<A: Acc>(x: A, g: A, [m, r, mg, mgx, w]: [A; 5]) -> A {
    let xh = (x - m) * r;
    r * (g * w - mg - xh * mgx)
}

/// dz = dy·silu'(z) over a tile's rows of `c` channels.
#[inline(always)]
fn silu_dz_rows<A: Acc, S: Slot<A>>(c: usize, x: &[A], dy: &[A], z: Z<A>, dz: &mut [S]) {
    for ((dzr, xr), dr) in dz.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
        silu_dz(xr, dr, z, dzr);
    }
}

/// dz = dy·silu'(z) over one row of channels, into a buffer or into memory not yet
/// written.
#[inline(always)]
fn silu_dz<A: Acc, S: Slot<A>>(x: &[A], dy: &[A], z: Z<A>, dz: &mut [S]) {
    let params = z.mean.iter().zip(z.scale).zip(z.shift);
    for ((d, (&x, &g)), ((&m, &s), &b)) in dz.iter_mut().zip(x.iter().zip(dy)).zip(params) {
        d.set(g * ((x - m) * s + b).silu_grad());
    }
}

/// dγ_c = Σ dy·x̂ and dβ_c = Σ dy over every row of every sample, from the tiles'
/// per-channel sums: Σ dy·(x − mean) = Σ dy·(x − tile mean) + (tile mean − mean)·Σ dy.
/// Channels are spread over threads; each adds its tiles in order.
fn param_grads<A: Acc>(t: &Tiles, tiles: &[TileGrads<A>], grads: &[RowGrad<A>], (dg, db): (&mut [A], &mut [A])) {
    const CHANNELS: usize = 64;
    dg.par_chunks_mut(CHANNELS)
        .zip(db.par_chunks_mut(CHANNELS))
        .enumerate()
        .for_each(|(j, (dg, db))| {
            let c0 = j * CHANNELS;
            for (k, tg) in tiles.iter().enumerate() {
                let b = k / t.per_sample;
                for (i, (dg, db)) in dg.iter_mut().zip(db.iter_mut()).enumerate() {
                    let c = c0 + i;
                    let g = c / t.cpg;
                    let r = grads[b * t.g + g];
                    *dg += r.rstd * (tg.dyx[c] + (tg.sums[g].x.mean - r.mean) * tg.dy[c]);
                    *db += tg.dy[c];
                }
            }
        });
}
