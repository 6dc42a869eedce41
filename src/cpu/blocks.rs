//! Walking rows in blocks of [`BLOCK`] elements, with f32 and f64 read and written in
//! place. For f16/bf16, either each block is converted into an f32 stack buffer as it
//! is read and back as it is written ([`read_blocks`], [`write_blocks`]), or a pass
//! that reads its input twice widens it once into a buffer its task keeps
//! ([`as_acc`], [`as_acc_all`]) and rounds its output block by block
//! ([`store_blocks`]).

use super::elem::{Acc, Elem};

/// Elements per block of a pass (a multiple of [`LANES`]); f16/bf16 blocks are
/// converted through stack buffers of this many f32.
pub(super) const BLOCK: usize = 512;

/// The `K` inputs as accumulators, when their element type already is one.
#[inline(always)]
pub(super) fn direct<T: Elem, const K: usize>(ins: [&[T]; K]) -> Option<[&[T::Acc]; K]> {
    let d = ins.map(T::as_acc);
    d.iter().all(Option::is_some).then(|| d.map(Option::unwrap_or_default))
}

/// Calls `f(offset, blocks)` for consecutive blocks of at most [`BLOCK`] elements of
/// the `K` equally long inputs, seen as accumulators: slices of the inputs themselves
/// for f32 and f64, stack buffers converted from them otherwise.
#[inline(always)]
pub(super) fn read_blocks<T: Elem, const K: usize>(ins: [&[T]; K], mut f: impl FnMut(usize, [&[T::Acc]; K])) {
    let n = ins.first().map_or(0, |s| s.len());
    if let Some(d) = direct(ins) {
        for o in (0..n).step_by(BLOCK) {
            f(o, d.map(|s| &s[o..n.min(o + BLOCK)]));
        }
        return;
    }
    let mut bufs = [[T::Acc::ZERO; BLOCK]; K];
    for o in (0..n).step_by(BLOCK) {
        let m = BLOCK.min(n - o);
        for (b, s) in bufs.iter_mut().zip(ins) {
            T::load(&s[o..o + m], &mut b[..m]);
        }
        f(o, std::array::from_fn(|k| &bufs[k][..m]));
    }
}

/// As [`read_blocks`], with an output block that `f` fills and that is then stored
/// into `out` (written in place for f32 and f64).
#[inline(always)]
pub(super) fn write_blocks<T: Elem, const K: usize>(
    ins: [&[T]; K],
    out: &mut [T],
    mut f: impl FnMut(usize, [&[T::Acc]; K], &mut [T::Acc]),
) {
    let n = out.len();
    if let (Some(d), Some(o_acc)) = (direct(ins), T::as_acc_mut(out)) {
        for (o, ob) in (0..n).step_by(BLOCK).zip(o_acc.chunks_mut(BLOCK)) {
            f(o, d.map(|s| &s[o..o + ob.len()]), ob);
        }
        return;
    }
    let mut ybuf = [T::Acc::ZERO; BLOCK];
    read_blocks(
        ins,
        #[inline(always)]
        |o, blocks| {
            let yb = &mut ybuf[..blocks[0].len()];
            f(o, blocks, yb);
            T::store(yb, &mut out[o..o + yb.len()]);
        },
    );
}

/// `x` as accumulators: `x` itself for f32 and f64, else converted into `buf`.
#[inline(always)]
pub(super) fn as_acc<'a, T: Elem>(x: &'a [T], buf: &'a mut Vec<T::Acc>) -> &'a [T::Acc] {
    if let Some(a) = T::as_acc(x) {
        return a;
    }
    buf.resize(x.len(), T::Acc::ZERO);
    T::load(x, buf);
    buf
}

/// The `K` inputs as accumulators, each as [`as_acc`] gives it, into its own buffer.
#[inline(always)]
pub(super) fn as_acc_all<'a, T: Elem, const K: usize>(
    ins: [&'a [T]; K],
    bufs: &'a mut [Vec<T::Acc>; K],
) -> [&'a [T::Acc]; K] {
    let mut k = 0;
    bufs.each_mut().map(|buf| {
        let x = ins[k];
        k += 1;
        as_acc(x, buf)
    })
}

/// Fills `out` block by block: `f(offset, block)` computes a block of accumulators,
/// in `out` itself for f32 and f64, else in `buf`, which is then rounded into `out`.
#[inline(always)]
pub(super) fn store_blocks<T: Elem>(out: &mut [T], buf: &mut [T::Acc; BLOCK], mut f: impl FnMut(usize, &mut [T::Acc])) {
    if let Some(acc) = T::as_acc_mut(out) {
        for (k, ob) in acc.chunks_mut(BLOCK).enumerate() {
            f(k * BLOCK, ob);
        }
        return;
    }
    for (k, ob) in out.chunks_mut(BLOCK).enumerate() {
        let b = &mut buf[..ob.len()];
        f(k * BLOCK, b);
        T::store(b, ob);
    }
}
