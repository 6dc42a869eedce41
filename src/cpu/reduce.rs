//! Sums in a fixed order over lanes the compiler keeps in vector registers, and the
//! (count, mean, M2) moments of a block, merged with Chan et al.'s formula.

use super::blocks::{read_blocks, BLOCK};
use super::elem::{Acc, Elem, Lane};

/// f32 lanes of an AVX-512 register: the width of one of the four accumulator groups
/// of a reduction (four, so that the adds of a pass do not wait on each other).
const LANES: usize = 16;

/// `a[l] += f(x[l], y[l])` for one group of lanes.
#[inline(always)]
fn add_lanes<A: Acc, I: Lane<A>, J: Lane<A>>(a: &mut [A; LANES], x: &[I], y: &[J], f: &impl Fn(A, A) -> A) {
    for l in 0..LANES {
        a[l] += f(x[l].get(), y[l].get());
    }
}

/// Sum of `f(x[i], y[i])` (elements converted in the loop, [`Lane`]) in a fixed order: over four groups of [`LANES`]
/// accumulators, then over the first group for what is left, then the last few
/// elements one by one; the groups are added lane by lane and the lanes halved. The
/// groups are four separate arrays updated by straight-line calls, which the compiler
/// keeps in vector registers (a loop over groups makes it spill or gather them).
#[inline(always)]
pub(super) fn lane_sum2<A: Acc, I: Lane<A>, J: Lane<A>>(x: &[I], y: &[J], f: impl Fn(A, A) -> A) -> A {
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
    a0[0] + xt.iter().zip(yt).fold(A::ZERO, |s, (&a, &b)| s + f(a.get(), b.get()))
}

/// `a[k][l] += f(x[l], y[l])[k]` for one group of lanes of three sums.
#[inline(always)]
fn add_lanes3<A: Acc, I: Lane<A>, J: Lane<A>>(a: &mut [[A; LANES]; 3], x: &[I], y: &[J], f: &impl Fn(A, A) -> [A; 3]) {
    for l in 0..LANES {
        let v = f(x[l].get(), y[l].get());
        a[0][l] += v[0];
        a[1][l] += v[1];
        a[2][l] += v[2];
    }
}

/// The three sums of `f(x[i], y[i])` in one pass, each in a fixed order: over two
/// groups of [`LANES`] accumulators per sum (four, as [`lane_sum2`] keeps, would not
/// fit AVX2's sixteen registers three times over), then the first group for what is
/// left, then the last few elements one by one; the groups are added lane by lane and
/// the lanes halved.
#[inline(always)]
pub(super) fn lane_sum3<A: Acc, I: Lane<A>, J: Lane<A>>(x: &[I], y: &[J], f: impl Fn(A, A) -> [A; 3]) -> [A; 3] {
    let (mut a0, mut a1) = ([[A::ZERO; LANES]; 3], [[A::ZERO; LANES]; 3]);
    let (xw, yw) = (x.chunks_exact(2 * LANES), y.chunks_exact(2 * LANES));
    let (xr, yr) = (xw.remainder().chunks_exact(LANES), yw.remainder().chunks_exact(LANES));
    let (xt, yt) = (xr.remainder(), yr.remainder());
    for (a, b) in xw.zip(yw) {
        add_lanes3(&mut a0, a, b, &f);
        add_lanes3(&mut a1, &a[LANES..], &b[LANES..], &f);
    }
    for (a, b) in xr.zip(yr) {
        add_lanes3(&mut a0, a, b, &f);
    }
    let mut out = [A::ZERO; 3];
    for k in 0..3 {
        let s = &mut a0[k];
        for l in 0..LANES {
            s[l] += a1[k][l];
        }
        let mut width = LANES;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                s[l] += s[l + width];
            }
        }
        out[k] = s[0];
    }
    for (&a, &b) in xt.iter().zip(yt) {
        let v = f(a.get(), b.get());
        for k in 0..3 {
            out[k] += v[k];
        }
    }
    out
}

/// Sum of `f(x[i])`, accumulated as in [`lane_sum2`].
#[inline(always)]
pub(super) fn lane_sum<A: Acc, I: Lane<A>>(x: &[I], f: impl Fn(A) -> A) -> A {
    lane_sum2(x, x, |v, _| f(v))
}

/// Count, mean and sum of squared deviations of a block (mean 0 and plain sum of
/// squares when the norm does not center).
#[derive(Clone, Copy)]
pub(super) struct Moments<A> {
    pub n: A,
    pub mean: A,
    pub m2: A,
}

impl<A: Acc> Moments<A> {
    /// No elements: merging it into anything changes nothing.
    pub(super) const EMPTY: Self = Self {
        n: A::ZERO,
        mean: A::ZERO,
        m2: A::ZERO,
    };

    /// Two passes over a block held in L1: never E[x²] − mean².
    #[inline(always)]
    pub(super) fn of<I: Lane<A>>(x: &[I], center: bool) -> Self {
        let n = A::from_f64(x.len() as f64);
        let mean = if center { lane_sum(x, |v| v) / n } else { A::ZERO };
        let m2 = lane_sum(x, |v| (v - mean) * (v - mean));
        Self { n, mean, m2 }
    }

    /// Moments of a row of accumulators (or of [`Lane`]s), block by block as
    /// [`moments`] takes them.
    #[inline(always)]
    pub(super) fn of_blocks<I: Lane<A>>(x: &[I], center: bool) -> Self {
        // The first block's moments as they are: a merge into nothing would cost two
        // divisions, a row's worth of work when the row is short. (A loop, not
        // `Iterator::fold`, which stays a call compiled for the baseline.)
        let mut blocks = x.chunks(BLOCK);
        let mut m = match blocks.next() {
            Some(b) => Self::of(b, center),
            None => Self::EMPTY,
        };
        for b in blocks {
            m = m.merge(Self::of(b, center));
        }
        m
    }

    /// Chan et al.'s pairwise merge of two non-empty blocks, or of [`Self::EMPTY`] and
    /// a non-empty block; exact for the non-centered case (delta is 0).
    #[inline(always)]
    pub(super) fn merge(self, o: Self) -> Self {
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        Self {
            n,
            mean: self.mean + delta * (o.n / n),
            m2: self.m2 + o.m2 + delta * delta * (self.n * o.n / n),
        }
    }

    /// (mean, rstd) with eps inside the square root.
    pub(super) fn stats(self, eps: A) -> (A, A) {
        (self.mean, A::ONE / (self.m2 / self.n + eps).sqrt())
    }
}

/// Moments of a non-empty part of a row, block by block.
#[inline(always)]
pub(super) fn moments<T: Elem>(x: &[T], center: bool) -> Moments<T::Acc> {
    let mut m = Moments::EMPTY;
    read_blocks(
        [x],
        #[inline(always)]
        |_, [b]| m = m.merge(Moments::of(b, center)),
    );
    m
}
