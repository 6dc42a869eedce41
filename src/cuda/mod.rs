//! The CUDA kernels' host side. Each op's launches are chosen from the shape, the
//! dtype, the pointers' alignment and a device profile alone (`plan`), and run by an
//! executor: the CUDA driver on candle's stream (`driver`, feature `cuda`) or the CPU
//! emulator (`emulator`, feature `cuda-emulator`), which runs the same kernel source
//! with the same launches on host memory.
//!
//! `row` launches LayerNorm/RMSNorm, `group` GroupNorm (both layouts), `batch`
//! BatchNorm; their backwards all end in the shared dγ/dβ reduction below. `launch`
//! holds the constants the kernels share with this code, `profile` the recorded
//! profiles of GPUs for the emulator.

/// Declares the constants of `launch.rs` for the launch code (build.rs declares the same
/// list as the kernels' header).
macro_rules! launch_constants {
    ($($(#[doc = $doc:literal])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[doc = $doc])* pub(super) const $name: $ty = $value;)*
    };
}

/// Declares the argument structs of `params.rs` for the launch code (build.rs declares
/// the same list as the kernels' header), each a [`plan::KernelArgs`].
macro_rules! kernel_params {
    ($($(#[doc = $doc:literal])* struct $name:ident { $($(#[doc = $fdoc:literal])* $field:ident: $ty:ident,)* })*) => {
        $(
            $(#[doc = $doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq)]
            pub(crate) struct $name { $($(#[doc = $fdoc])* pub $field: $ty,)* }

            impl super::plan::KernelArgs for $name {
                fn fields(&self) -> Vec<(*const std::ffi::c_void, usize)> {
                    vec![$(((&self.$field as *const $ty).cast(), std::mem::size_of::<$ty>())),*]
                }
            }
        )*
    };
}

mod batch;
#[cfg(feature = "cuda")]
mod driver;
#[cfg(feature = "cuda-emulator")]
pub mod emulator;
mod group;
mod launch;
#[cfg(feature = "cuda")]
mod module;
mod params;
mod plan;
mod profile;
mod row;

#[cfg(feature = "cuda")]
pub(crate) use driver::Cuda;

use crate::spec::{Affine, Kind, Spec};
use candle_core::{bail, Result};
use launch::DPARAMS_THREADS;
use params::PartialsArgs;
use plan::{entry, int, Dtypes, Executor, Launch};

/// Whether every present pointer is 16-byte aligned, as the vector paths need.
fn aligned(ptrs: &[Option<u64>]) -> bool {
    ptrs.iter().flatten().all(|p| p.is_multiple_of(16))
}

/// Device addresses of a forward's tensors: x, the optional inputs (the residual of
/// the fused add, the weight and bias, BatchNorm's running mean and variance in eval),
/// y, h with a residual, and BatchNorm's batch statistics in training (2·C elements).
pub(crate) struct Fwd {
    pub x: u64,
    pub residual: Option<u64>,
    pub w: Option<u64>,
    pub b: Option<u64>,
    pub running: Option<[u64; 2]>,
    pub y: u64,
    pub h: Option<u64>,
    pub stats: Option<u64>,
}

impl Fwd {
    /// Every pointer the vector paths read or write through is aligned.
    fn aligned(&self) -> bool {
        aligned(&[Some(self.x), self.residual, self.w, self.b, Some(self.y), self.h])
    }
}

/// Device addresses of a backward's tensors: x (h for the fused add), the weight, the
/// bias (read by GroupNorm + SiLU only), dy, dh (the gradient reaching h directly),
/// BatchNorm's running statistics in eval, and dx.
pub(crate) struct Bwd {
    pub x: u64,
    pub w: Option<u64>,
    pub b: Option<u64>,
    pub dy: u64,
    pub dh: Option<u64>,
    pub running: Option<[u64; 2]>,
    pub dx: u64,
}

impl Bwd {
    fn aligned(&self) -> bool {
        aligned(&[Some(self.x), self.w, self.b, Some(self.dy), self.dh, Some(self.dx)])
    }
}

/// Per-block (rows), per-sample (groups) or per-slice (BatchNorm) f32 partials of dγ
/// and dβ, `[count, N]` each.
struct Partials {
    dw: u64,
    db: u64,
    count: usize,
}

/// The forward of `spec`: y (and h with a residual, BatchNorm's batch statistics in
/// training, of the parameters' dtype) at the addresses of `p`.
pub(crate) fn run_forward(ex: &mut impl Executor, spec: &Spec, d: Dtypes, p: &Fwd) -> Result<()> {
    if spec.rows * spec.len == 0 {
        return Ok(());
    }
    match (spec.kind, p.residual) {
        (Kind::Group | Kind::GroupLast, None) => group::forward(ex, spec, d, p),
        (Kind::Layer | Kind::Rms, _) => row::forward(ex, spec, d, p),
        (Kind::Batch, None) => batch::forward(ex, spec, d, p),
        _ => bail!("{}: internal error: no CUDA kernel for this input", spec.name()),
    }
}

/// The backward of `spec`: dx at `p.dx`, and the parameter gradients `affine` asks for
/// at `params`, dγ (N elements of the parameters' dtype) then dβ. An empty x writes
/// nothing: its gradients are zeros, which the caller allocates.
pub(crate) fn run_backward(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    affine: Affine,
    p: &Bwd,
    params: u64,
) -> Result<()> {
    if spec.rows * spec.len == 0 {
        return Ok(());
    }
    let partials = match (spec.kind, p.dh) {
        (Kind::Group | Kind::GroupLast, None) => group::backward(ex, spec, d, p)?,
        (Kind::Layer | Kind::Rms, _) => row::backward(ex, spec, d, p)?,
        (Kind::Batch, None) => batch::backward(ex, spec, d, p, affine.weight || affine.bias)?,
        _ => bail!("{}: internal error: no CUDA kernel for this input", spec.name()),
    };
    if affine.weight || affine.bias {
        let np = spec.params();
        let dw = affine.weight.then_some(params);
        let db = affine
            .bias
            .then(|| params + (usize::from(affine.weight) * np * d.params.size_in_bytes()) as u64);
        reduce_params(ex, spec, d, &partials, dw, db)?;
    }
    Ok(())
}

/// Sums the partials in a fixed order into dγ at `dw` and dβ at `db`, those given.
fn reduce_params(
    ex: &mut impl Executor,
    spec: &Spec,
    d: Dtypes,
    p: &Partials,
    dw: Option<u64>,
    db: Option<u64>,
) -> Result<()> {
    let np = spec.params();
    let args = PartialsArgs {
        partial_dw: p.dw,
        partial_db: p.db,
        dweight: dw.unwrap_or(0),
        dbias: db.unwrap_or(0),
        count: int(spec, "partials", p.count)?,
        len: int(spec, "parameters", np)?,
    };
    let grid = (np.div_ceil(32), 1);
    ex.launch(&Launch::new(
        spec,
        entry(spec, "dparams", d.dparams_suffix),
        grid,
        DPARAMS_THREADS,
        0,
        args,
    )?)
}
