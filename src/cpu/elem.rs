//! The element types of the CPU path and the type they are accumulated in.

use super::convert;
use half::{bf16, f16};
use std::mem::MaybeUninit;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

/// The accumulation type: f32 for f32/f16/bf16 inputs, f64 for f64.
pub(super) trait Acc:
    Copy + Send + Sync + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn sqrt(self) -> Self;
}

macro_rules! impl_acc {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    )*};
}
impl_acc!(f32, f64);

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

/// An element type the CPU path accepts, with block conversion to and from its
/// accumulator type.
pub(super) trait Elem: candle_core::WithDType {
    type Acc: Acc;
    fn load(src: &[Self], dst: &mut [Self::Acc]);
    fn store(src: &[Self::Acc], dst: &mut [Self]);
    /// [`Self::store`] into memory not yet written (an output's uninitialized
    /// capacity): every element of `dst` is written.
    fn store_uninit(src: &[Self::Acc], dst: &mut [MaybeUninit<Self>]);
    /// The elements as accumulators when they already are (f32, f64): no conversion.
    fn as_acc(v: &[Self]) -> Option<&[Self::Acc]>;
    /// A vector of accumulators as one of elements, when they are the same type.
    fn from_acc_vec(v: Vec<Self::Acc>) -> Option<Vec<Self>>;
    fn as_acc_mut(v: &mut [Self]) -> Option<&mut [Self::Acc]>;
}

macro_rules! impl_full_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            type Acc = $t;
            #[inline(always)]
            fn load(src: &[$t], dst: &mut [$t]) {
                dst.copy_from_slice(src)
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
            fn as_acc_mut(v: &mut [$t]) -> Option<&mut [$t]> {
                Some(v)
            }
            fn from_acc_vec(v: Vec<$t>) -> Option<Vec<$t>> {
                Some(v)
            }
        }
    )*};
}
impl_full_elem!(f32, f64);

macro_rules! impl_half_elem {
    ($($t:ty => $load:path, $store:path);*) => {$(
        impl Elem for $t {
            type Acc = f32;
            #[inline(always)]
            fn load(src: &[$t], dst: &mut [f32]) {
                $load(src, dst)
            }
            #[inline(always)]
            fn store(src: &[f32], dst: &mut [$t]) {
                $store(src, dst)
            }
            /// Rounded through a stack buffer of a block (the passes that call it
            /// store one block at a time).
            #[inline(always)]
            fn store_uninit(src: &[f32], dst: &mut [MaybeUninit<$t>]) {
                const STEP: usize = super::blocks::BLOCK;
                let mut buf = [<$t>::ZERO; STEP];
                for (s, d) in src.chunks(STEP).zip(dst.chunks_mut(STEP)) {
                    let b = &mut buf[..s.len()];
                    $store(s, b);
                    for (d, &v) in d.iter_mut().zip(&*b) {
                        d.write(v);
                    }
                }
            }
            #[inline(always)]
            fn as_acc(_: &[$t]) -> Option<&[f32]> {
                None
            }
            #[inline(always)]
            fn as_acc_mut(_: &mut [$t]) -> Option<&mut [f32]> {
                None
            }
            fn from_acc_vec(_: Vec<f32>) -> Option<Vec<$t>> {
                None
            }
        }
    )*};
}
impl_half_elem!(
    f16 => convert::f16_to_f32, convert::f32_to_f16;
    bf16 => convert::bf16_to_f32, convert::f32_to_bf16
);
