//! Launches as data. A kernel launch is a [`Launch`] value (entry point, grid, block,
//! dynamic shared memory, arguments) that the launch code computes from the shape,
//! the dtype, the pointers' alignment and a device [`Profile`] alone, and an
//! [`Executor`] runs: the CUDA driver on a GPU (`driver`), or the CPU emulator
//! (`emulator`), which so takes the very paths, grids and reduction orders the
//! profiled GPU would. Its arguments are its kernel's struct (`params`), passed
//! field by field.

use crate::spec::Spec;
use candle_core::{bail, DType, Result};
use std::ffi::c_void;

/// A kernel's argument struct (`params.rs`), whose fields are its entry's parameters.
pub(crate) trait KernelArgs: std::fmt::Debug {
    /// The address and size of each field, in order.
    fn fields(&self) -> Vec<(*const c_void, usize)>;
}

/// One kernel launch.
#[derive(Debug)]
pub(crate) struct Launch {
    /// The entry point's name, dtype suffix included.
    pub entry: String,
    pub grid: (u32, u32),
    pub block: u32,
    /// Bytes of dynamic shared memory.
    pub smem: u32,
    pub args: Box<dyn KernelArgs>,
}

impl Launch {
    /// A launch of `entry` over a grid and block given as sizes, each checked to fit
    /// a launch.
    pub(crate) fn new(
        spec: &Spec,
        entry: String,
        grid: (usize, usize),
        block: usize,
        smem: usize,
        args: impl KernelArgs + 'static,
    ) -> Result<Self> {
        let fits = |v: usize, max: usize| v >= 1 && v <= max;
        if !(fits(grid.0, i32::MAX as usize) && fits(grid.1, 65535) && fits(block, 1024) && smem <= 48 * 1024) {
            bail!(
                "{}: internal error: {entry} cannot be launched on grid {grid:?}, block {block}, {smem} bytes of shared memory",
                spec.name()
            )
        }
        Ok(Self {
            entry,
            grid: (grid.0 as u32, grid.1 as u32),
            block: block as u32,
            smem: smem as u32,
            args: Box::new(args),
        })
    }
}

/// What the launch code needs to know of a device: its SM count, the size of its L2,
/// and how many blocks of an entry fit on one SM at once.
pub(crate) trait Profile {
    /// Streaming multiprocessors.
    fn sm_count(&self) -> Result<usize>;

    /// Bytes of L2 cache.
    fn l2_bytes(&self) -> Result<usize>;

    /// Blocks of `entry` resident on one SM at once, launched with `block` threads
    /// and `smem` bytes of dynamic shared memory.
    fn resident_blocks(&self, entry: &str, block: u32, smem: u32) -> Result<usize>;
}

/// Runs launches on a device: allocates scratch memory that lives until the executor
/// is dropped, and launches kernels in order.
pub(crate) trait Executor {
    /// The device's profile.
    fn profile(&self) -> &dyn Profile;

    /// `bytes` of device memory, zeroed or not, named for the emulator's errors.
    fn scratch(&mut self, bytes: usize, zeroed: bool, name: &'static str) -> Result<u64>;

    /// Launches a kernel; the launches of one executor run in order.
    fn launch(&mut self, launch: &Launch) -> Result<()>;
}

/// The element types of an op's launches: x's (every tensor laid out as x has it), and
/// the parameters' (γ, β, BatchNorm's running and batch statistics, dγ and dβ): x's,
/// or f32 beside f16 and bf16 x (mixed precision); with the suffixes of their entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dtypes {
    pub x: DType,
    pub params: DType,
    /// The entry suffix of a kernel that reads no parameters: x's dtype.
    pub x_suffix: &'static str,
    /// The entry suffix of a kernel that reads or writes parameters (its struct has
    /// `Param` fields): x's dtype, then `_f32` for f32 parameters beside f16 or bf16 x.
    pub params_suffix: &'static str,
    /// The entry suffix of the `*_dparams` kernels, whose elements are dγ and dβ: the
    /// parameters' dtype.
    pub dparams_suffix: &'static str,
}

impl Dtypes {
    /// The dtypes of x and of the parameters, or an error naming the op and the dtypes
    /// unless the kernels take them (`backend::cuda_kernels_take`).
    pub(crate) fn new(spec: &Spec, x: DType, params: DType) -> Result<Self> {
        let x_suffix = suffix(spec, x)?;
        let params_suffix = match (x, params) {
            (_, p) if p == x => x_suffix,
            (DType::F16, DType::F32) => "f16_f32",
            (DType::BF16, DType::F32) => "bf16_f32",
            _ => bail!(
                "{}: the CUDA kernels take parameters of x's dtype, or f32 beside f16 and bf16 x, not {params:?} beside {x:?}",
                spec.name()
            ),
        };
        Ok(Self {
            x,
            params,
            x_suffix,
            params_suffix,
            dparams_suffix: suffix(spec, params)?,
        })
    }
}

/// The suffix of the kernels of `dtype` (f32, f16, bf16); others have none.
fn suffix(spec: &Spec, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        dt => Err(crate::check::unsupported_dtype(
            spec.name(),
            dt,
            "CUDA",
            "f32, f16, bf16",
        )),
    }
}

/// The entry point `{kind}_{stage}_{suffix}`.
pub(crate) fn entry(spec: &Spec, stage: &str, suffix: &str) -> String {
    format!("{}_{stage}_{suffix}", spec.kind.name())
}

/// A size as the kernels' `int`, or an error naming the op.
pub(crate) fn int(spec: &Spec, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).or_else(|_| bail!("{}: {what} = {v} is too large for the CUDA kernels", spec.name()))
}
