//! Walking rows in blocks of [`BLOCK`] elements, with f32 and f64 read and written in
//! place. bf16 is read in place too where a pass converts it in its own loop
//! ([`lanes`], `super::elem::Lane`); otherwise, and for f16, either each block is
//! converted into an f32 stack buffer as it is read ([`read_blocks`]), or a pass that
//! reads its input twice widens it once into a buffer its task keeps ([`as_acc`],
//! [`as_acc_all`]). Outputs are memory not yet written, each element written once: f32
//! and f64 blocks straight into it, f16/bf16 blocks through a stack buffer rounded into
//! it ([`write_blocks`], [`store_blocks`]).

use super::alloc::{assume_written, refilled};
use super::elem::{Acc, Elem};
use std::mem::MaybeUninit;

/// Elements per block of a pass (a multiple of [`LANES`]); f16/bf16 blocks are
/// converted through stack buffers of this many f32.
pub(super) const BLOCK: usize = 512;

/// The `K` inputs as accumulators, when their element type already is one.
#[inline(always)]
pub(super) fn direct<T: Elem, const K: usize>(ins: [&[T]; K]) -> Option<[&[T::Acc]; K]> {
    let d = ins.map(T::as_acc);
    d.iter().all(Option::is_some).then(|| d.map(Option::unwrap_or_default))
}

/// The `K` inputs as [`Lane`]s, when their element type has them.
#[inline(always)]
pub(super) fn lanes<T: Elem, const K: usize>(ins: [&[T]; K]) -> Option<[&[T::Lane]; K]> {
    let mut out = [&[][..]; K];
    for (o, x) in out.iter_mut().zip(ins) {
        *o = T::lanes(x)?;
    }
    Some(out)
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

/// As [`read_blocks`], with an output block that `f` fills, for inputs without lanes
/// (f16; the others are read in place and written through [`store_blocks`]): a stack
/// buffer then rounded into `out`. `f` must write every element of its block, so
/// that each element of `out` is written once.
#[inline(always)]
pub(super) fn write_blocks<T: Elem, const K: usize>(
    ins: [&[T]; K],
    out: &mut [MaybeUninit<T>],
    mut f: impl FnMut(usize, [&[T::Acc]; K], &mut [MaybeUninit<T::Acc>]),
) {
    let mut ybuf = [MaybeUninit::uninit(); BLOCK];
    read_blocks(
        ins,
        #[inline(always)]
        |o, blocks| {
            let n = blocks[0].len();
            f(o, blocks, &mut ybuf[..n]);
            // SAFETY: `f` wrote every element of its block (its contract, which the
            // forward tests check: an element left out would be garbage in y).
            T::store_uninit(unsafe { assume_written(&ybuf[..n]) }, &mut out[o..o + n]);
        },
    );
}

/// `x` as accumulators: `x` itself for f32 and f64, else converted into `buf`.
#[inline(always)]
pub(super) fn as_acc<'a, T: Elem>(x: &'a [T], buf: &'a mut Vec<T::Acc>) -> &'a [T::Acc] {
    if let Some(a) = T::as_acc(x) {
        return a;
    }
    widen(x, buf)
}

/// `x` widened into `buf`, which it replaces ([`refilled`]).
#[inline(always)]
fn widen<'a, T: Elem>(x: &[T], buf: &'a mut Vec<T::Acc>) -> &'a [T::Acc] {
    refilled(
        buf,
        x.len(),
        #[inline(always)]
        |dst| T::load_uninit(x, dst),
    )
}

/// The `K` inputs as accumulators, each as [`as_acc`] gives it, into its own buffer.
#[inline(always)]
pub(super) fn as_acc_all<'a, T: Elem, const K: usize>(
    ins: [&'a [T]; K],
    bufs: &'a mut [Vec<T::Acc>; K],
) -> [&'a [T::Acc]; K] {
    if let Some(d) = direct(ins) {
        return d;
    }
    // A loop rather than `array::map`, whose closure is a call compiled for the
    // baseline level: the widening belongs in the caller's vector code.
    for (buf, x) in bufs.iter_mut().zip(ins) {
        widen(x, buf);
    }
    bufs.each_ref().map(|b| &b[..])
}

/// Fills `out`, memory not yet written, block by block: `f(offset, block)` computes
/// a block of accumulators: in `out` itself for f32 and f64, else in `buf`, which is
/// then rounded into `out`. `f` must write every element of its block, so that each
/// element of `out` is written once.
#[inline(always)]
pub(super) fn store_blocks<T: Elem>(
    out: &mut [MaybeUninit<T>],
    buf: &mut [MaybeUninit<T::Acc>; BLOCK],
    mut f: impl FnMut(usize, &mut [MaybeUninit<T::Acc>]),
) {
    if let Some(acc) = T::as_acc_uninit(out) {
        for (k, ob) in acc.chunks_mut(BLOCK).enumerate() {
            f(k * BLOCK, ob);
        }
        return;
    }
    for (k, ob) in out.chunks_mut(BLOCK).enumerate() {
        let b = &mut buf[..ob.len()];
        f(k * BLOCK, b);
        // SAFETY: `f` wrote every element of its block (its contract, which the
        // forward tests check: an element left out would be garbage in y).
        T::store_uninit(unsafe { assume_written(b) }, ob);
    }
}
