//! The seam every backend shares: an op's inputs by name ([`Slots`]), and what a
//! device's fused kernels compute for a [`Spec`] ([`Backend`]). The CPU path
//! (`crate::cpu`), the CUDA kernels (`crate::cuda`, on a GPU or on the emulator)
//! implement [`Backend`] over their storage type; the custom-op bridge
//! (`crate::bridge`) packs a call's slots into candle's inputs and hands them to the
//! backend of the device; devices with no implementation run the generic backend
//! (`crate::generic`), composed candle ops. Adding a device's kernels is one more
//! implementation of [`Backend`]. This module depends on nothing but `spec`.

use crate::spec::{Affine, Spec};
use candle_core::{DType, Layout, Result, Tensor};

/// Whether the CUDA kernels (on a GPU or on the emulator) take a call of `spec` on x
/// of dtype `x` with parameters of dtype `params`: a norm they implement
/// (`Kind::has_cuda_kernels`), f32, f16 and bf16, with parameters of x's dtype or f32
/// (mixed precision), as `cuda::plan::Dtypes` names their entries. The CPU's fused path takes
/// every call; the others run the generic backend on a GPU, the CPU path on the
/// emulator.
#[cfg_attr(not(any(feature = "cuda", feature = "cuda-emulator")), allow(dead_code))]
pub(crate) fn cuda_kernels_take(spec: &Spec, x: DType, params: DType) -> bool {
    spec.kind.has_cuda_kernels()
        && matches!(x, DType::F32 | DType::F16 | DType::BF16)
        && (params == x || params == DType::F32)
}

/// A storage and its layout, as candle hands them to a custom op.
pub(crate) type Arg<'a, S> = (&'a S, &'a Layout);

/// The inputs of a norm's forward or backward, by name. Every op has x (h for the
/// fused residual add's backward); the others are present as the op takes them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots<T> {
    pub x: T,
    /// The fused residual add's second input (forward).
    pub residual: Option<T>,
    pub weight: Option<T>,
    pub bias: Option<T>,
    /// The gradient of y (backward).
    pub dy: Option<T>,
    /// The gradient reaching h directly (the fused residual add's backward).
    pub dh: Option<T>,
    /// BatchNorm's running mean and variance (eval).
    pub running: Option<[T; 2]>,
}

impl<T> Slots<T> {
    /// Slots with x alone.
    pub(crate) fn new(x: T) -> Self {
        Self {
            x,
            residual: None,
            weight: None,
            bias: None,
            dy: None,
            dh: None,
            running: None,
        }
    }

    /// The first parameter present (weight, bias, running mean), whose dtype is the
    /// parameters'.
    pub(crate) fn first_param(&self) -> Option<&T> {
        [
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.running.as_ref().map(|[m, _]| m),
        ]
        .into_iter()
        .flatten()
        .next()
    }

    /// The same slots, each mapped by `f`.
    pub(crate) fn try_map<U>(self, mut f: impl FnMut(T) -> Result<U>) -> Result<Slots<U>> {
        let mut opt = |v: Option<T>| v.map(&mut f).transpose();
        Ok(Slots {
            residual: opt(self.residual)?,
            weight: opt(self.weight)?,
            bias: opt(self.bias)?,
            dy: opt(self.dy)?,
            dh: opt(self.dh)?,
            running: match self.running {
                Some([m, v]) => Some([f(m)?, f(v)?]),
                None => None,
            },
            x: f(self.x)?,
        })
    }
}

impl<S: candle_core::backend::BackendStorage> Slots<Arg<'_, S>> {
    /// The dtypes of x and of the parameters (x's when there are none).
    pub(crate) fn dtypes(&self) -> (DType, DType) {
        let x = self.x.0.dtype();
        (x, self.first_param().map_or(x, |(s, _)| s.dtype()))
    }
}

/// A forward's results: y, h with a residual, and in BatchNorm's training each
/// channel's batch mean and biased variance (detached).
pub(crate) struct Outputs {
    pub y: Tensor,
    pub h: Option<Tensor>,
    pub stats: Option<[Tensor; 2]>,
}

/// A backward's results: dx, and dγ and dβ as asked.
pub(crate) struct Grads {
    pub dx: Tensor,
    pub dweight: Option<Tensor>,
    pub dbias: Option<Tensor>,
}

/// A device's fused kernels, one implementation per storage type. Every input is
/// contiguous; parameter slots hold `spec.params()` elements, all of one dtype: x's,
/// or f32 for f16 and bf16 x (mixed precision; `ops::fused` sends the calls a backend
/// cannot take to the generic backend).
pub(crate) trait Backend {
    type Storage;

    /// The forward: y, laid out as x, then h with a residual, as one storage; and in
    /// BatchNorm's training (no running statistics), each channel's batch mean then
    /// biased variance (2·C elements of the parameters' dtype).
    fn forward(
        &self,
        spec: &Spec,
        ins: &Slots<Arg<'_, Self::Storage>>,
    ) -> Result<(Self::Storage, Option<Self::Storage>)>;

    /// The backward from `ins.dy` (and `ins.dh`): dx, laid out as x; and when `affine`
    /// asks for any, dγ then dβ as one storage of the parameters' dtype
    /// (`spec.param_grads`). With a residual, x is h and dh is added to dx. Only
    /// GroupNorm + SiLU reads β (to recompute the pre-activation); otherwise a bias
    /// slot only gives the parameters' dtype.
    fn backward(
        &self,
        spec: &Spec,
        affine: Affine,
        ins: &Slots<Arg<'_, Self::Storage>>,
    ) -> Result<(Self::Storage, Option<Self::Storage>)>;
}
