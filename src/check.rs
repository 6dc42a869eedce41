//! Input validation and the crate's error texts. Every error names the op (its public
//! function's name) and the shapes, dtypes or devices involved, so that a bad call is a
//! `candle_core::Error` a user can act on, never a panic inside a kernel.

use candle_core::{bail, DType, Layout, Result, Tensor};

/// The dtypes the CPU path supports; CUDA supports the first three.
const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

/// Checks the input tensor: a supported dtype and at least `min_rank` dimensions
/// (`what` says why, e.g. "[B, C, *spatial]").
pub(crate) fn input(op: &str, x: &Tensor, min_rank: usize, what: &str) -> Result<()> {
    if !DTYPES.contains(&x.dtype()) {
        bail!(
            "{op}: x has dtype {:?}; supported dtypes are f32, f16, bf16 and f64",
            x.dtype()
        )
    }
    if x.rank() < min_rank {
        bail!(
            "{op}: x must have rank >= {min_rank} ({what}), got shape {:?}",
            x.dims()
        )
    }
    Ok(())
}

/// Checks eps: finite and not negative (0 is allowed, as in PyTorch; a constant row
/// then has an infinite rstd).
pub(crate) fn eps(op: &str, eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("{op}: eps must be finite and >= 0, got {eps}")
    }
    Ok(())
}

/// Checks that `num_groups` is positive and divides the `c` channels of `x`.
pub(crate) fn groups(op: &str, x: &Tensor, num_groups: usize, c: usize) -> Result<()> {
    if num_groups == 0 || !c.is_multiple_of(num_groups) {
        bail!(
            "{op}: num_groups ({num_groups}) must be > 0 and divide the {c} channels of x, whose shape is {:?}",
            x.dims()
        )
    }
    Ok(())
}

/// Checks that a module built for `expected` channels gets an `x` with that many, in
/// dimension 1 (channels-first) or in the last (`channels_last`). An `x` of rank < 2
/// is left to the op's own error.
pub(crate) fn channels(module: &str, x: &Tensor, expected: usize, channels_last: bool) -> Result<()> {
    let dim = if channels_last { x.rank().saturating_sub(1) } else { 1 };
    if x.rank() >= 2 && x.dims()[dim] != expected {
        bail!(
            "{module}: x has {} channels in dimension {dim} (shape {:?}), expected {expected}",
            x.dims()[dim],
            x.dims()
        )
    }
    Ok(())
}

/// Checks an optional affine parameter: shape `[len]`, x's device, and x's dtype or,
/// for f16 and bf16 x, f32 (mixed precision; [`one_param_dtype`] then checks that the
/// call's parameters agree). `of` names the dimension of x that `len` is ("the last
/// dimension").
pub(crate) fn param(op: &str, x: &Tensor, p: Option<&Tensor>, name: &str, len: usize, of: &str) -> Result<()> {
    let Some(p) = p else { return Ok(()) };
    if p.dims() != [len] {
        bail!(
            "{op}: {name} has shape {:?}, expected [{len}] ({of} of x, whose shape is {:?})",
            p.dims(),
            x.dims()
        )
    }
    param_dtype(op, x, p, name)
}

/// Checks the dtype and device of a parameter `p` of x (`name` names it): x's dtype, or
/// f32 for f16 and bf16 x (mixed precision), and x's device.
pub(crate) fn param_dtype(op: &str, x: &Tensor, p: &Tensor, name: &str) -> Result<()> {
    let mixed = p.dtype() == DType::F32 && matches!(x.dtype(), DType::F16 | DType::BF16);
    if p.dtype() != x.dtype() && !mixed {
        bail!(
            "{op}: {name} has dtype {:?} but x has dtype {:?}; parameters have x's dtype, or f32 for f16 and bf16 x",
            p.dtype(),
            x.dtype()
        )
    }
    like_device(op, p, name, x, "x")
}

/// Checks an optional weight and bias of length `len` (`of` names the dimension of x
/// they follow), as [`param`] checks each, and that they share one dtype.
pub(crate) fn affine(
    op: &str,
    x: &Tensor,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    len: usize,
    of: &str,
) -> Result<()> {
    param(op, x, weight, "weight", len, of)?;
    param(op, x, bias, "bias", len, of)?;
    one_param_dtype(op, &[("weight", weight), ("bias", bias)])
}

/// Checks that a call's parameters (`(name, tensor)`, those given) share one dtype.
pub(crate) fn one_param_dtype(op: &str, params: &[(&str, Option<&Tensor>)]) -> Result<()> {
    let mut given = params.iter().filter_map(|(n, p)| p.map(|p| (n, p.dtype())));
    if let Some((first, dtype)) = given.next() {
        if let Some((name, other)) = given.find(|(_, d)| *d != dtype) {
            bail!("{op}: {first} has dtype {dtype:?} but {name} has dtype {other:?}; the parameters share one dtype")
        }
    }
    Ok(())
}

/// Checks that a tensor `p` given with `x` has `x`'s dtype and device (`name` and
/// `x_name` name them in the error).
pub(crate) fn like(op: &str, p: &Tensor, name: &str, x: &Tensor, x_name: &str) -> Result<()> {
    if p.dtype() != x.dtype() {
        bail!(
            "{op}: {name} has dtype {:?} but {x_name} has dtype {:?}; they must match",
            p.dtype(),
            x.dtype()
        )
    }
    like_device(op, p, name, x, x_name)
}

/// Checks that a tensor `p` given with `x` is on `x`'s device.
fn like_device(op: &str, p: &Tensor, name: &str, x: &Tensor, x_name: &str) -> Result<()> {
    if !p.device().same_device(x.device()) {
        bail!(
            "{op}: {name} is on {:?} but {x_name} is on {:?}",
            p.device().location(),
            x.device().location()
        )
    }
    Ok(())
}

/// Checks that a tensor given beside `x` (an upstream gradient, a residual) has the
/// shape, dtype and device of `x`; `name` and `x_name` name them in the error.
pub(crate) fn same(op: &str, t: &Tensor, name: &str, x: &Tensor, x_name: &str) -> Result<()> {
    if t.dims() != x.dims() || t.dtype() != x.dtype() || !t.device().same_device(x.device()) {
        bail!(
            "{op}: {name} must have the shape, dtype and device of {x_name}: {name} is {:?} {:?} on {:?}, {x_name} is {:?} {:?} on {:?}",
            t.dims(),
            t.dtype(),
            t.device().location(),
            x.dims(),
            x.dtype(),
            x.device().location()
        )
    }
    Ok(())
}

/// The element range of a storage that a contiguous layout covers. The public ops make
/// every input contiguous first, so anything else is a bug of this crate.
pub(crate) fn contiguous_range(op: &str, l: &Layout) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => bail!("{op}: internal error: a non-contiguous input reached the kernel"),
    }
}

/// The error for a dtype a backend has no kernel for.
#[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
pub(crate) fn unsupported_dtype(op: &str, dtype: DType, device: &str, supported: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{op}: {dtype:?} is not supported on {device} ({supported} are)"
    ))
    .bt()
}

/// The one `match` on the dtype of each backend: calls `$run::<T>(args)` with `T` the
/// element type listed for `$dtype`, or returns [`unsupported_dtype`]. (The CUDA
/// driver's; the emulator dispatches on the dtypes of x and the parameters.)
#[cfg(feature = "cuda")]
macro_rules! dispatch_dtype {
    ($op:expr, $dtype:expr, $device:literal, [$($variant:ident => $t:ty),+], $run:ident $args:tt) => {
        match $dtype {
            $(candle_core::DType::$variant => $run::<$t> $args,)+
            dt => Err($crate::check::unsupported_dtype($op, dt, $device, stringify!($($t),+))),
        }
    };
}
#[cfg(feature = "cuda")]
pub(crate) use dispatch_dtype;

/// The same over the dtypes of x and of the parameters: calls `$run::<T, P>(args)` for
/// the pair listed, or returns an error naming both dtypes.
macro_rules! dispatch_dtypes {
    ($op:expr, $dtypes:expr, $device:literal, [$(($x:ident, $p:ident) => ($t:ty, $pt:ty)),+], $run:ident $args:tt) => {
        match $dtypes {
            $((candle_core::DType::$x, candle_core::DType::$p) => $run::<$t, $pt> $args,)+
            (x, p) => Err(candle_core::Error::Msg(format!(
                "{}: x of dtype {x:?} with parameters of dtype {p:?} is not supported on {}",
                $op, $device
            ))
            .bt()),
        }
    };
}
pub(crate) use dispatch_dtypes;
