//! Runs this crate's CUDA kernels on the CPU (feature `cuda-emulator`), for its tests
//! and for kernel work on a machine without a GPU.
//!
//! Within [`run`], this crate's ops on CPU tensors (`Device::Cpu`) run the CUDA
//! kernels, compiled from the same source by the host C++ compiler, with the same
//! launches (paths, grids, scratch and reduction orders) the launch code chooses for
//! the [`Gpu`] given. Every memory access of a kernel is checked, as
//! compute-sanitizer's memcheck, racecheck, initcheck and synccheck would: an access
//! out of a buffer's bounds, a read of memory never written, a write to an input, a
//! shared-memory race between two barriers, a barrier some threads of a block (or
//! lanes of a warp) do not reach, a misaligned 16-byte vector access, and a block that
//! reads or writes what another block of the same launch wrote. Such an error, and an
//! output a kernel left partly unwritten, is the op's error, naming the kernel, the
//! launch, the block, the thread and the memory.
//!
//! The results are the kernels' arithmetic in f32 on the host: `rsqrtf` is computed
//! exactly rather than approximated, and multiply-adds are not fused, so they may
//! differ from a GPU's in the last bits, never in the paths taken. What the emulator
//! cannot show (timing, occupancy, bank conflicts, ordering between blocks beyond the
//! check above) is in docs/gpu.md.
//!
//! ```no_run
//! use candle_core::{Device, Tensor};
//! use candle_norm::emulator::{self, Gpu};
//!
//! let x = Tensor::randn(0f32, 1., (8, 4096), &Device::Cpu)?;
//! // The H100's kernels and launches, on the CPU.
//! let y = emulator::run(Gpu::H100, || candle_norm::layer_norm(&x, None, None, 1e-5))?;
//! # Ok::<(), candle_core::Error>(())
//! ```

use super::plan::{Executor, Launch, Profile};
pub use super::profile::Gpu;
use super::{run_backward, run_forward, Bwd, Dtypes, Fwd};
use crate::backend::{Arg, Backend, Slots};
use crate::check;
use crate::spec::{Affine, Spec};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Result};
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// Runs `f` with this crate's ops on CPU tensors executing the CUDA kernels on the
/// emulated `gpu` (on this thread; nested calls take the innermost GPU). Other ops,
/// and ops on other devices, are unchanged. The CUDA kernels exist for f32, f16 and
/// bf16, so an f64 tensor fails as it would on a GPU.
pub fn run<R>(gpu: Gpu, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Gpu>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.replace(Some(gpu))));
    f()
}

thread_local! {
    static ACTIVE: Cell<Option<Gpu>> = const { Cell::new(None) };
}

/// The emulated GPU of the innermost [`run`] on this thread.
pub(crate) fn active() -> Option<Gpu> {
    ACTIVE.with(Cell::get)
}

/// An entry point, as the emulator's registry lists it (emulator/registry.h).
#[repr(C)]
struct RawEntry {
    name: *const c_char,
    function: *const c_void,
    invoke: *const c_void,
    nargs: usize,
    arg_sizes: *const usize,
    max_threads: u32,
}

/// The emulator's device: its buffers (emulator/runtime.cpp).
#[repr(C)]
struct RawDevice {
    _opaque: [u8; 0],
}

extern "C" {
    fn cn_emu_device_new() -> *mut RawDevice;
    fn cn_emu_device_free(d: *mut RawDevice);
    fn cn_emu_alloc(
        d: *mut RawDevice,
        bytes: usize,
        offset: usize,
        zeroed: c_int,
        read_only: c_int,
        name: *const c_char,
    ) -> u64;
    fn cn_emu_write(d: *mut RawDevice, addr: u64, src: *const c_void, bytes: usize) -> c_int;
    fn cn_emu_read(
        d: *mut RawDevice,
        addr: u64,
        dst: *mut c_void,
        bytes: usize,
        written: c_int,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn cn_emu_find(name: *const c_char) -> *const RawEntry;
    fn cn_emu_launch(
        d: *mut RawDevice,
        entry: *const RawEntry,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        args: *const *const c_void,
        nargs: usize,
        arg_sizes: *const usize,
        workers: u32,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// OS threads a launch runs its blocks on: `CANDLE_NORM_EMULATOR_THREADS`, else one a
/// core.
fn workers() -> u32 {
    std::env::var("CANDLE_NORM_EMULATOR_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        .max(1)
}

/// An error text the emulator wrote.
fn message(err: &[u8]) -> String {
    CStr::from_bytes_until_nul(err).map_or_else(
        |_| "unknown emulator error".into(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// An emulated device: buffers with guard zones and a tag on every byte, freed when
/// it is dropped.
pub(crate) struct Device {
    raw: *mut RawDevice,
    /// OS threads each launch runs its blocks on, when set; else [`workers`].
    workers: Option<u32>,
}

impl Device {
    pub(crate) fn new() -> Self {
        // SAFETY: cn_emu_device_new has no preconditions; the device is freed once, on
        // drop.
        Self {
            raw: unsafe { cn_emu_device_new() },
            workers: None,
        }
    }

    /// This device's launches run their blocks on one OS thread, one after another in
    /// order of their index: for a test whose seeded bug is found only when block 0
    /// runs before block 1, which the workers of a launch do not otherwise promise.
    #[cfg(test)]
    pub(crate) fn blocks_in_order(mut self) -> Self {
        self.workers = Some(1);
        self
    }

    /// `bytes` of device memory starting `offset` bytes past the device's allocation
    /// alignment, zeroed (and so written) or not (never written, NaN-filled), and
    /// read-only to the kernels or not.
    pub(crate) fn alloc(
        &mut self,
        bytes: usize,
        offset: usize,
        zeroed: bool,
        read_only: bool,
        name: &str,
    ) -> Result<u64> {
        let name = CString::new(name).unwrap_or_default();
        // SAFETY: the device is live and `name` a NUL-terminated string the emulator
        // copies.
        let addr = unsafe { cn_emu_alloc(self.raw, bytes, offset, zeroed.into(), read_only.into(), name.as_ptr()) };
        if addr == 0 {
            bail!("emulator: could not map {bytes} bytes for `{}`", name.to_string_lossy())
        }
        Ok(addr)
    }

    /// Copies `src` into the buffer at `addr`, which holds at least as many bytes.
    pub(crate) fn write(&mut self, addr: u64, src: &[u8]) -> Result<()> {
        // SAFETY: `src` is valid for its length; the emulator checks that a buffer of
        // this device holds [addr, addr + len).
        if unsafe { cn_emu_write(self.raw, addr, src.as_ptr().cast(), src.len()) } != 0 {
            bail!("emulator: no buffer holds {} bytes at {addr:#x}", src.len())
        }
        Ok(())
    }

    /// Reads `n` elements of `T` from `addr`; with `written`, each must have been
    /// written by the host or a kernel.
    pub(crate) fn read<T: Copy>(&mut self, addr: u64, n: usize, written: bool) -> Result<Vec<T>> {
        let mut out = Vec::<T>::with_capacity(n);
        let mut err = [0u8; 512];
        // SAFETY: `out` has capacity for n elements, n·size_of::<T>() bytes the
        // emulator fills in full on success (its buffers hold plain values of T, as
        // the host wrote them or a kernel stored them).
        let rc = unsafe {
            cn_emu_read(
                self.raw,
                addr,
                out.as_mut_ptr().cast(),
                n * std::mem::size_of::<T>(),
                written.into(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            bail!("emulator: {}", message(&err))
        }
        // SAFETY: every byte of the n elements was written by cn_emu_read.
        unsafe { out.set_len(n) };
        Ok(out)
    }

    /// Runs a launch on this device's buffers.
    pub(crate) fn launch(&mut self, l: &Launch) -> Result<()> {
        let (grid, block) = ([l.grid.0, l.grid.1, 1], [l.block, 1, 1]);
        self.launch_raw(&l.entry, grid, block, l.smem, &l.args.fields())
    }

    /// Runs `entry` with arguments given as (address, size) of each parameter's value.
    pub(crate) fn launch_raw(
        &mut self,
        entry: &str,
        grid: [u32; 3],
        block: [u32; 3],
        smem: u32,
        args: &[(*const c_void, usize)],
    ) -> Result<()> {
        let name = CString::new(entry).unwrap_or_default();
        // SAFETY: `name` is NUL-terminated; the registry's entries live as long as the
        // program.
        let found = unsafe { cn_emu_find(name.as_ptr()) };
        if found.is_null() {
            bail!("emulator: no kernel has the entry point {entry}")
        }
        let (ptrs, sizes): (Vec<*const c_void>, Vec<usize>) = args.iter().copied().unzip();
        let mut err = vec![0u8; 4096];
        // SAFETY: the device and entry are live; `ptrs` holds one pointer per argument
        // to a value of its size, alive until the call returns, and the emulator checks
        // the count and sizes against the entry's parameters before it runs anything.
        let rc = unsafe {
            cn_emu_launch(
                self.raw,
                found,
                grid.as_ptr(),
                block.as_ptr(),
                smem as usize,
                ptrs.as_ptr(),
                ptrs.len(),
                sizes.as_ptr(),
                self.workers.unwrap_or_else(workers),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            bail!("emulator: {}", message(&err))
        }
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the device was made by cn_emu_device_new and is freed only here.
        unsafe { cn_emu_device_free(self.raw) }
    }
}

/// The emulated GPU as an executor of the launch code's launches.
struct Emulator {
    gpu: Gpu,
    dev: Device,
}

impl Executor for Emulator {
    fn profile(&self) -> &dyn Profile {
        &self.gpu
    }

    fn scratch(&mut self, bytes: usize, zeroed: bool, name: &'static str) -> Result<u64> {
        self.dev.alloc(bytes, 0, zeroed, false, name)
    }

    fn launch(&mut self, launch: &Launch) -> Result<()> {
        self.dev.launch(launch)
    }
}

/// The bytes of a contiguous input and the byte offset of its first element in its
/// storage.
fn input_bytes<'a>(spec: &Spec, (s, l): Arg<'a, CpuStorage>) -> Result<(&'a [u8], usize)> {
    fn raw<T>(v: &[T]) -> &[u8] {
        // SAFETY: the elements of a CPU storage of f32, f16 or bf16 are plain bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
    }
    let range = check::contiguous_range(spec.name(), l)?;
    let size = s.dtype().size_in_bytes();
    let bytes = match s {
        CpuStorage::F32(v) => raw(&v[range.clone()]),
        CpuStorage::F16(v) => raw(&v[range.clone()]),
        CpuStorage::BF16(v) => raw(&v[range.clone()]),
        s => {
            return Err(check::unsupported_dtype(
                spec.name(),
                s.dtype(),
                "CUDA",
                "f32, f16, bf16",
            ))
        }
    };
    Ok((bytes, range.start * size))
}

impl Emulator {
    fn new(gpu: Gpu) -> Self {
        Self {
            gpu,
            dev: Device::new(),
        }
    }

    /// An input copied to the device, read-only, at its storage offset's alignment.
    fn upload(&mut self, spec: &Spec, name: &str, a: Arg<CpuStorage>) -> Result<u64> {
        let (bytes, offset) = input_bytes(spec, a)?;
        let addr = self.dev.alloc(bytes.len(), offset, false, true, name)?;
        self.dev.write(addr, bytes)?;
        Ok(addr)
    }

    fn upload_opt(&mut self, spec: &Spec, name: &str, a: Option<Arg<CpuStorage>>) -> Result<Option<u64>> {
        a.map(|a| self.upload(spec, name, a)).transpose()
    }

    /// `n` elements of `dtype` read back as CPU storage, every one written.
    fn download(&mut self, addr: u64, n: usize, dtype: DType) -> Result<CpuStorage> {
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(self.dev.read(addr, n, true)?),
            DType::F16 => CpuStorage::F16(self.dev.read(addr, n, true)?),
            DType::BF16 => CpuStorage::BF16(self.dev.read(addr, n, true)?),
            dt => bail!("emulator: no {dt:?} output"),
        })
    }
}

/// The op's name before the emulator's error.
fn named<T>(spec: &Spec, r: Result<T>) -> Result<T> {
    r.map_err(|e| candle_core::Error::Msg(format!("{}: {e}", spec.name())))
}

/// The CUDA kernels on the emulated GPU, over CPU storage: the [`Backend`] of CPU
/// tensors within [`run`].
pub(crate) struct Emulated(pub Gpu);

impl Emulated {
    /// An emulated device holding the inputs, their addresses, and the kernels' dtypes.
    fn inputs(&self, spec: &Spec, ins: &Slots<Arg<'_, CpuStorage>>) -> Result<(Emulator, Slots<u64>, Dtypes)> {
        let (x, params) = ins.dtypes();
        let d = Dtypes::new(spec, x, params)?;
        let mut e = Emulator::new(self.0);
        let x = if spec.residual && ins.dy.is_some() { "h" } else { "x" };
        let p = Slots {
            x: e.upload(spec, x, ins.x)?,
            residual: e.upload_opt(spec, "residual", ins.residual)?,
            weight: e.upload_opt(spec, "weight", ins.weight)?,
            bias: e.upload_opt(spec, "bias", ins.bias)?,
            dy: e.upload_opt(spec, "dy", ins.dy)?,
            dh: e.upload_opt(spec, "dh", ins.dh)?,
            running: match ins.running {
                Some([m, v]) => Some([e.upload(spec, "running_mean", m)?, e.upload(spec, "running_var", v)?]),
                None => None,
            },
        };
        Ok((e, p, d))
    }
}

impl Backend for Emulated {
    type Storage = CpuStorage;

    fn forward(&self, spec: &Spec, ins: &Slots<Arg<'_, CpuStorage>>) -> Result<(CpuStorage, Option<CpuStorage>)> {
        let (mut e, p, d) = self.inputs(spec, ins)?;
        let (n, size) = (spec.rows * spec.len, d.x.size_in_bytes());
        let out = e.dev.alloc(spec.outputs() * size, 0, false, false, "y")?;
        // Training BatchNorm's statistics; an empty x (eval only: training needs two
        // values a channel) writes nothing.
        let stats = match (spec.kind, p.running) {
            (crate::spec::Kind::Batch, None) => Some(e.dev.alloc(
                2 * spec.param_blocks * d.params.size_in_bytes(),
                0,
                n == 0,
                false,
                "batch statistics",
            )?),
            _ => None,
        };
        let f = Fwd {
            x: p.x,
            residual: p.residual,
            w: p.weight,
            b: p.bias,
            running: p.running,
            y: out,
            h: p.residual.map(|_| out + (n * size) as u64),
            stats,
        };
        named(spec, run_forward(&mut e, spec, d, &f))?;
        let y = named(spec, e.download(out, spec.outputs(), d.x))?;
        let stats = stats
            .map(|s| named(spec, e.download(s, 2 * spec.param_blocks, d.params)))
            .transpose()?;
        Ok((y, stats))
    }

    fn backward(
        &self,
        spec: &Spec,
        affine: Affine,
        ins: &Slots<Arg<'_, CpuStorage>>,
    ) -> Result<(CpuStorage, Option<CpuStorage>)> {
        let (mut e, p, d) = self.inputs(spec, ins)?;
        let Some(dy) = p.dy else {
            bail!("{}: internal error: a backward without dy", spec.name())
        };
        let (len, np, size) = (spec.rows * spec.len, spec.param_grads(affine), d.x.size_in_bytes());
        // dγ/dβ of an empty input are zeros; otherwise the kernels write every element.
        let out = e.dev.alloc(len * size, 0, false, false, "dx")?;
        let params = (np > 0)
            .then(|| {
                e.dev
                    .alloc(np * d.params.size_in_bytes(), 0, len == 0, false, "dweight and dbias")
            })
            .transpose()?;
        let b = Bwd {
            x: p.x,
            w: p.weight,
            b: p.bias,
            dy,
            dh: p.dh,
            running: p.running,
            dx: out,
        };
        named(spec, run_backward(&mut e, spec, d, affine, &b, params.unwrap_or(0)))?;
        let dx = named(spec, e.download(out, len, d.x))?;
        let params = params.map(|p| named(spec, e.download(p, np, d.params))).transpose()?;
        Ok((dx, params))
    }
}

#[cfg(test)]
mod tests;
