//! The element types of the CPU path and the type they are accumulated in.

use super::convert;
use half::{bf16, f16};
use std::mem::MaybeUninit;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// The accumulation type: f32 for f32/f16/bf16 inputs, f64 for f64.
pub(super) trait Acc:
    Copy
    + Send
    + Sync
    + Lane<Self>
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn sqrt(self) -> Self;
    /// e^self, in plain multiplies and adds for f32 ([`exp_f32`]), so that loops over
    /// it vectorize.
    fn exp(self) -> Self;

    /// σ(z) = 1 / (1 + e^−z).
    #[inline(always)]
    fn sigmoid(self) -> Self {
        Self::ONE / (Self::ONE + (Self::ZERO - self).exp())
    }

    /// SiLU, z·σ(z).
    #[inline(always)]
    fn silu(self) -> Self {
        self * self.sigmoid()
    }

    /// SiLU's derivative, σ(z)·(1 + z·(1 − σ(z))).
    #[inline(always)]
    fn silu_grad(self) -> Self {
        let s = self.sigmoid();
        s * (Self::ONE + self * (Self::ONE - s))
    }
}

/// e^x in f32 from multiplies, adds and bit moves, which vectorize at every level where
/// libm's `expf` is a call per element: x = n·ln 2 + r with |r| <= ln 2 / 2 (n rounded by
/// adding and subtracting 1.5·2^23; ln 2 split in two so that n·ln 2 is nearly exact),
/// e^r by Cephes' degree-7 polynomial, 2^n written into the exponent bits. About 2 ulp
/// of relative error. x is clamped to [−87.3, 88], where e^x stays a normal f32
/// (about 1.2e−38 to 1.7e38, for 0 and inf further out); a NaN stays NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // t's low mantissa bits hold n: n + 127, shifted into the exponent field, is 2^n
    // (the bits above shift out). No float-to-int conversion, which Rust saturates
    // element by element.
    e * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

macro_rules! impl_acc {
    ($($t:ty => $exp:path),*) => {$(
        impl Acc for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
        }
    )*};
}
impl_acc!(f32 => exp_f32, f64 => f64::exp);

/// Where a pass writes an output value: an element of a buffer, or of an output
/// vector's uninitialized capacity (`super::alloc::filled`), written once.
pub(super) trait Slot<A> {
    fn set(&mut self, v: A);
}

impl<A> Slot<A> for A {
    #[inline(always)]
    fn set(&mut self, v: A) {
        *self = v;
    }
}

impl<A> Slot<A> for MaybeUninit<A> {
    #[inline(always)]
    fn set(&mut self, v: A) {
        self.write(v);
    }
}

/// An input element that a pass reads in place and converts in its own loop: f32 and
/// f64 as they are, bf16 by moving its bits up, an integer step that vectorizes at
/// every level, so that a pass reads each element where it lies instead of widening
/// blocks into buffers first. (f16's conversion is an instruction LLVM does not
/// generate from scalar code, so f16 keeps the buffers: [`Elem::lanes`].) Outputs are
/// rounded to bf16 through buffers, by the block conversion: with AVX-512 BF16 one
/// instruction per vector, where rounding in the pass's loop takes eight
/// (docs/perf-notes.md, c23).
pub(super) trait Lane<A>: Copy + Send + Sync {
    /// The element as an accumulator.
    fn get(self) -> A;
}

macro_rules! impl_identity_lane {
    ($($t:ty),*) => {$(
        impl Lane<$t> for $t {
            #[inline(always)]
            fn get(self) -> $t {
                self
            }
        }
    )*};
}
impl_identity_lane!(f32, f64);

impl Lane<f32> for bf16 {
    #[inline(always)]
    fn get(self) -> f32 {
        convert::bf16_widened(self)
    }
}

/// An element type the CPU path accepts, with block conversion to and from its
/// accumulator type.
pub(super) trait Elem: candle_core::WithDType {
    type Acc: Acc;
    /// What [`Self::lanes`] gives: the element type itself, where it has lanes.
    type Lane: Lane<Self::Acc>;
    fn load(src: &[Self], dst: &mut [Self::Acc]);
    /// [`Self::load`] into memory not yet written (a buffer's spare capacity): every
    /// element of `dst` is written.
    fn load_uninit(src: &[Self], dst: &mut [MaybeUninit<Self::Acc>]);
    fn store(src: &[Self::Acc], dst: &mut [Self]);
    /// [`Self::store`] into memory not yet written (an output's uninitialized
    /// capacity): every element of `dst` is written.
    fn store_uninit(src: &[Self::Acc], dst: &mut [MaybeUninit<Self>]);
    /// The elements as accumulators when they already are (f32, f64): no conversion.
    fn as_acc(v: &[Self]) -> Option<&[Self::Acc]>;
    /// Memory not yet written for elements, as memory for accumulators, when they are
    /// the same type (f32, f64).
    fn as_acc_uninit(v: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<Self::Acc>]>;
    /// The elements as [`Lane`]s a pass converts in its own loop, where that is the
    /// faster way (f32, f64, bf16; not f16).
    fn lanes(v: &[Self]) -> Option<&[Self::Lane]>;
}

macro_rules! impl_full_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            type Acc = $t;
            type Lane = $t;
            #[inline(always)]
            fn load(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
            }
            #[inline(always)]
            fn load_uninit(src: &[$t], dst: &mut [MaybeUninit<$t>]) {
                Self::store_uninit(src, dst)
            }
            #[inline(always)]
            fn store(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
            }
            #[inline(always)]
            fn store_uninit(src: &[$t], dst: &mut [MaybeUninit<$t>]) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    d.write(s);
                }
            }
            #[inline(always)]
            fn as_acc(v: &[$t]) -> Option<&[$t]> {
                Some(v)
            }
            #[inline(always)]
            fn as_acc_uninit(v: &mut [MaybeUninit<$t>]) -> Option<&mut [MaybeUninit<$t>]> {
                Some(v)
            }
            #[inline(always)]
            fn lanes(v: &[$t]) -> Option<&[$t]> {
                Some(v)
            }
        }
    )*};
}
impl_full_elem!(f32, f64);

/// Initialized elements as a destination of the conversions, which write every
/// element once, with an initialized value, and read none.
#[inline(always)]
fn overwritten<T>(dst: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout. The two callers hand the slice to a
    // `convert` function alone, which only writes initialized values into it (never
    // `MaybeUninit::uninit()`), so `dst` is still initialized when the borrow ends.
    unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<T>]) }
}

macro_rules! impl_half_elem {
    ($($t:ty => $load:path, $store:path, $lane:ty, $lanes:expr);*) => {$(
        impl Elem for $t {
            type Acc = f32;
            type Lane = $lane;
            #[inline(always)]
            fn load(src: &[$t], dst: &mut [f32]) {
                $load(src, overwritten(dst))
            }
            #[inline(always)]
            fn load_uninit(src: &[$t], dst: &mut [MaybeUninit<f32>]) {
                $load(src, dst)
            }
            #[inline(always)]
            fn store(src: &[f32], dst: &mut [$t]) {
                $store(src, overwritten(dst))
            }
            #[inline(always)]
            fn store_uninit(src: &[f32], dst: &mut [MaybeUninit<$t>]) {
                $store(src, dst)
            }
            #[inline(always)]
            fn as_acc(_: &[$t]) -> Option<&[f32]> {
                None
            }
            #[inline(always)]
            fn as_acc_uninit(_: &mut [MaybeUninit<$t>]) -> Option<&mut [MaybeUninit<f32>]> {
                None
            }
            #[inline(always)]
            fn lanes(v: &[$t]) -> Option<&[$lane]> {
                $lanes(v)
            }
        }
    )*};
}
// f16 has no lanes: its `Lane` type is f32, never given.
impl_half_elem!(
    f16 => convert::f16_to_f32, convert::f32_to_f16, f32, |_| None;
    bf16 => convert::bf16_to_f32, convert::f32_to_bf16, bf16, Some
);
