//! Channels-first LayerNorm (ConvNeXt's and SAM's `LayerNorm2d`): each sample of x is a
//! C × S matrix (S = prod(spatial)), and each of its S columns is normalized over its C
//! elements, S apart, with the parameter of each row (channel).
//!
//! Statistics come from tiles of adjacent columns of one sample, one rayon task each:
//! the tile's C rows of up to 1024 columns are read once (f16/bf16 widened once into
//! the job's buffer) and its column sums taken from cache in two passes (the mean, of
//! each element's difference to its column's first, then squared deviations), whole
//! rows added at a time, so that the adds vectorize across columns however few
//! channels there are. Rows are summed in runs of [`RUN`], the
//! runs' sums then added in order: no running sum has more than [`RUN`] addends. The
//! backward's tile pass goes on to the column means of g = dy·γ and g·x̂, reading dy once.
//!
//! The output is then written once, row by row ((sample, channel) rows of S contiguous
//! elements), from x (read a second time) and the per-column statistics. The backward's
//! row pass also takes each row's Σdy·x̂ and Σdy, which dγ and dβ add over the samples in
//! order: results are the same from run to run, on any number of threads.

use super::alloc::written;
use super::backward::Wp;
use super::blocks::{read_blocks, BLOCK};
use super::elem::{Acc, Elem};
use super::reduce::lane_sum2;
use super::rows::{affine_params, param_grads_out, TASK_ELEMS};
use super::simd::run;
use crate::spec::{Affine, Spec};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Most rows in one running column sum; longer columns add the sums of such runs.
const RUN: usize = 256;

/// How a channels-first LayerNorm's [`Spec`] is walked: B samples of C rows of S
/// columns, each sample cut into tiles of `tile` columns.
#[derive(Clone, Copy)]
struct Tiles {
    c: usize,
    s: usize,
    tile: usize,
    /// Tiles per sample.
    per_sample: usize,
    /// Tiles of all samples.
    count: usize,
}

/// Elements of a forward tile: its rows are runs of up to 1024 contiguous columns,
/// which the hardware prefetcher follows, and the tile (1 MiB of f32) stays in about a
/// core's L2 for the second statistics pass. (The backward reads x and dy and makes
/// four passes over a tile: its tiles are of [`TASK_ELEMS`].)
const FORWARD_TILE: usize = 1 << 18;

impl Tiles {
    /// The tiles of `spec`, of about `elems` elements each.
    fn of(spec: &Spec, elems: usize) -> Self {
        let (c, s) = (spec.len, spec.inner);
        // Whole 64-byte lines of f32 columns.
        let tile = (elems / c.max(1) / 16 * 16).clamp(16, 1024).min(s).max(1);
        let per_sample = s.div_ceil(tile);
        Self {
            c,
            s,
            tile,
            per_sample,
            count: spec.rows / s.max(1) * per_sample,
        }
    }

    /// Tile `k`'s first element in x and its number of columns.
    fn start(&self, k: usize) -> (usize, usize) {
        let (b, t) = (k / self.per_sample, k % self.per_sample);
        let s0 = t * self.tile;
        (b * self.c * self.s + s0, self.tile.min(self.s - s0))
    }
}

/// The C rows of a tile as accumulators: rows `stride` apart from `start` in `data`,
/// of `width` columns each.
struct TileRows<'a, A> {
    data: &'a [A],
    start: usize,
    stride: usize,
    width: usize,
}

impl<A: Acc> TileRows<'_, A> {
    #[inline(always)]
    fn row(&self, r: usize) -> &[A] {
        &self.data[self.start + r * self.stride..][..self.width]
    }
}

/// Tile `k` of `v` as accumulators: read in place from f32 and f64, else widened into
/// `buf`, row after row.
#[inline(always)]
fn tile_of<'a, T: Elem>(t: &Tiles, v: &'a [T], k: usize, buf: &'a mut Vec<T::Acc>) -> TileRows<'a, T::Acc> {
    let (start, width) = t.start(k);
    if let Some(data) = T::as_acc(v) {
        return TileRows {
            data,
            start,
            stride: t.s,
            width,
        };
    }
    buf.resize(t.c * width, T::Acc::ZERO);
    for (r, dst) in buf.chunks_mut(width).enumerate() {
        T::load(&v[start + r * t.s..][..width], dst);
    }
    TileRows {
        data: buf,
        start: 0,
        stride: width,
        width,
    }
}

/// A rayon job's buffers for the tile passes: the widened tiles of x and dy and the
/// per-column sums.
struct Bufs<A> {
    x: Vec<A>,
    dy: Vec<A>,
    run: Vec<A>,
}

impl<A: Acc> Bufs<A> {
    fn new() -> Self {
        Self {
            x: Vec::new(),
            dy: Vec::new(),
            run: Vec::new(),
        }
    }
}

/// `out[j] = Σ_r f(r, j)` over the `c` rows, in runs of [`RUN`] rows whose sums are
/// added in order; `f(r, a)` adds row r's terms into the run's sums `a`.
#[inline(always)]
fn column_sums<A: Acc>(c: usize, out: &mut [A], run_sums: &mut Vec<A>, mut f: impl FnMut(usize, &mut [A])) {
    out.fill(A::ZERO);
    run_sums.resize(out.len(), A::ZERO);
    for r0 in (0..c).step_by(RUN) {
        run_sums.fill(A::ZERO);
        for r in r0..c.min(r0 + RUN) {
            f(r, run_sums);
        }
        for (o, &s) in out.iter_mut().zip(run_sums.iter()) {
            *o += s;
        }
    }
}

/// The mean and rstd of each column of a tile, from two passes over its rows.
#[inline(always)]
fn column_stats<A: Acc>(c: usize, x: &TileRows<A>, eps: A, run_sums: &mut Vec<A>) -> (Vec<A>, Vec<A>) {
    let n = A::from_f64(c as f64);
    // The mean of x − x₀ (x₀: the column's first element), then x₀ added back: with a
    // large offset and a small spread the sums are of the small differences, which
    // lose nothing to rounding, where plain running sums of the offset would.
    let first = x.row(0);
    let mut mean = vec![A::ZERO; x.width];
    column_sums(
        c,
        &mut mean,
        run_sums,
        #[inline(always)]
        |r, a| {
            for ((a, &v), &k) in a.iter_mut().zip(x.row(r)).zip(first) {
                *a += v - k;
            }
        },
    );
    for (m, &k) in mean.iter_mut().zip(first) {
        *m = k + *m / n;
    }
    let mut rstd = vec![A::ZERO; x.width];
    column_sums(
        c,
        &mut rstd,
        run_sums,
        #[inline(always)]
        |r, a| {
            for ((a, &v), &m) in a.iter_mut().zip(x.row(r)).zip(&mean) {
                *a += (v - m) * (v - m);
            }
        },
    );
    for v in &mut rstd {
        *v = A::ONE / (*v / n + eps).sqrt();
    }
    (mean, rstd)
}

/// Per-column values of every tile, in order: the `K` vectors `f` gives for each tile,
/// each concatenated over the tiles (B·S values).
fn per_column<T: Elem, const K: usize>(
    t: &Tiles,
    f: impl Fn(&mut Bufs<T::Acc>, usize) -> [Vec<T::Acc>; K] + Sync + Send,
) -> [Vec<T::Acc>; K] {
    let tiles: Vec<[Vec<T::Acc>; K]> = (0..t.count)
        .into_par_iter()
        .with_min_len((TASK_ELEMS / (t.tile * t.c).max(1)).max(1))
        .map_init(Bufs::new, |bufs, k| f(bufs, k))
        .collect();
    std::array::from_fn(|i| tiles.iter().flat_map(|v| v[i].iter().copied()).collect())
}

/// An output laid out as x, written once, row by row: `f(row, x row, out row)` writes
/// every element of row `row` ((sample, channel) = (row / C, row % C)) and returns
/// what it computed beside it, collected in row order.
fn by_rows<T: Elem, R: Send>(
    t: &Tiles,
    x: &[T],
    f: impl Fn(usize, &[T], &mut [MaybeUninit<T>]) -> R + Sync + Send,
) -> (Vec<T>, Vec<R>) {
    written(x.len(), |out| {
        out.par_chunks_mut(t.s)
            .zip(x.par_chunks(t.s))
            .enumerate()
            .with_min_len(TASK_ELEMS.div_ceil(t.s))
            .map(|(r, (o, xr))| f(r, xr, o))
            .collect()
    })
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
    let t = Tiles::of(spec, FORWARD_TILE);
    let eps = T::Acc::from_f64(spec.eps);
    let [mean, rstd] = per_column::<T, 2>(&t, |bufs, k| {
        run(
            #[inline(always)]
            || {
                let xt = tile_of(&t, x, k, &mut bufs.x);
                let (m, r) = column_stats(t.c, &xt, eps, &mut bufs.run);
                [m, r]
            },
        )
    });
    let (w, b) = affine_params(spec, w, b);
    by_rows(&t, x, |r, xr, yr| {
        let (at, ch) = (r / t.c * t.s, r % t.c);
        let (m, rs, g, sh) = (&mean[at..at + t.s], &rstd[at..at + t.s], w[ch], b[ch]);
        run(
            #[inline(always)]
            || {
                let mut buf = [T::Acc::ZERO; BLOCK];
                read_blocks(
                    [xr],
                    #[inline(always)]
                    |o, [xb]| {
                        let yb = &mut buf[..xb.len()];
                        for (((y, &v), &m), &rs) in yb.iter_mut().zip(xb).zip(&m[o..]).zip(&rs[o..]) {
                            *y = (v - m) * (rs * g) + sh;
                        }
                        T::store_uninit(yb, &mut yr[o..o + xb.len()]);
                    },
                )
            },
        )
    })
    .0
}

/// Backward: dx, and dγ then dβ as `affine` asks. The tile pass gives each column's
/// mean, rstd, mean(g) and mean(g·x̂) (g = dy·γ); the row pass writes dx and each row's
/// Σdy·x̂ and Σdy.
pub(super) fn backward<T: Elem, P: Elem<Acc = T::Acc>>(
    spec: &Spec,
    affine: Affine,
    (x, (w, _), dy): (&[T], Wp<P>, &[T]),
) -> (Vec<T>, Vec<P>) {
    let t = Tiles::of(spec, TASK_ELEMS);
    let (gamma, _) = affine_params(spec, w, None);
    let (mut dg, mut db) = (vec![T::Acc::ZERO; t.c], vec![T::Acc::ZERO; t.c]);
    if x.is_empty() {
        return (Vec::new(), param_grads_out::<P>(affine, &dg, &db));
    }
    let eps = T::Acc::from_f64(spec.eps);
    let n = T::Acc::from_f64(t.c as f64);
    let [mean, rstd, mean_g, mean_gx] = per_column::<T, 4>(&t, |bufs, k| {
        run(
            #[inline(always)]
            || {
                let Bufs {
                    x: xbuf,
                    dy: dybuf,
                    run,
                } = bufs;
                let xt = tile_of(&t, x, k, xbuf);
                let dyt = tile_of(&t, dy, k, dybuf);
                let (m, rs) = column_stats(t.c, &xt, eps, run);
                let mut sg = vec![T::Acc::ZERO; xt.width];
                column_sums(
                    t.c,
                    &mut sg,
                    run,
                    #[inline(always)]
                    |r, a| {
                        // γ of the row read once: indexed inside the loop, its bounds
                        // check kept the loop scalar.
                        let g = gamma[r];
                        for (a, &d) in a.iter_mut().zip(dyt.row(r)) {
                            *a += d * g;
                        }
                    },
                );
                let mut sgx = vec![T::Acc::ZERO; xt.width];
                column_sums(
                    t.c,
                    &mut sgx,
                    run,
                    #[inline(always)]
                    |r, a| {
                        let g = gamma[r];
                        for (((a, &d), &v), &m) in a.iter_mut().zip(dyt.row(r)).zip(xt.row(r)).zip(&m) {
                            *a += d * g * (v - m);
                        }
                    },
                );
                for (s, &r) in sgx.iter_mut().zip(&rs) {
                    *s = *s * r / n;
                }
                for s in &mut sg {
                    *s = *s / n;
                }
                [m, rs, sg, sgx]
            },
        )
    });
    let (dx, sums) = by_rows(&t, x, |r, xr, dxr| {
        let (at, ch) = (r / t.c * t.s, r % t.c);
        let cols = [&mean, &rstd, &mean_g, &mean_gx].map(|v| &v[at..at + t.s]);
        let dyr = &dy[r * t.s..(r + 1) * t.s];
        let g = gamma[ch];
        run(
            #[inline(always)]
            || {
                let (mut buf, mut xh) = ([T::Acc::ZERO; BLOCK], [T::Acc::ZERO; BLOCK]);
                let (mut sdyx, mut sdy) = (T::Acc::ZERO, T::Acc::ZERO);
                read_blocks(
                    [xr, dyr],
                    #[inline(always)]
                    |o, [xb, db]| {
                        let len = xb.len();
                        let [m, rs, mg, mgx] = cols.map(|v| &v[o..o + len]);
                        let (dxb, xhb) = (&mut buf[..len], &mut xh[..len]);
                        for i in 0..len {
                            xhb[i] = (xb[i] - m[i]) * rs[i];
                            dxb[i] = rs[i] * (db[i] * g - mg[i] - xhb[i] * mgx[i]);
                        }
                        sdyx += lane_sum2(db, xhb, |d, h| d * h);
                        sdy += lane_sum2(db, db, |d, _| d);
                        T::store_uninit(dxb, &mut dxr[o..o + len]);
                    },
                );
                [sdyx, sdy]
            },
        )
    });
    for (r, [sdyx, sdy]) in sums.into_iter().enumerate() {
        dg[r % t.c] += sdyx;
        db[r % t.c] += sdy;
    }
    (dx, param_grads_out::<P>(affine, &dg, &db))
}
