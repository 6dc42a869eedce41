//! The CUDA driver as the executor of the launches, on the stream of the tensors'
//! candle device, and the [`Backend`] of CUDA storage: each op takes the device
//! addresses of its inputs and of a fresh output, runs its launches, and returns the
//! output as candle storage.

use super::module::{function, l2_bytes, sm_count};
use super::plan::{Executor, Launch, Profile};
use super::Dtypes;
use super::{run_backward, run_forward, Bwd, Fwd};
use crate::backend::{Arg, Backend, Slots};
use crate::check::{self, dispatch_dtype, dispatch_dtypes};
use crate::spec::{Affine, Kind, Spec};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, Result, WithDType};
use half::{bf16, f16};

/// A dtype with CUDA kernels.
trait CudaElem: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType {}
impl CudaElem for f32 {}
impl CudaElem for f16 {}
impl CudaElem for bf16 {}

/// A device's profile, asked of the driver.
struct DeviceProfile<'a>(&'a CudaDevice);

impl Profile for DeviceProfile<'_> {
    fn sm_count(&self) -> Result<usize> {
        sm_count(self.0)
    }

    fn l2_bytes(&self) -> Result<usize> {
        l2_bytes(self.0)
    }

    fn resident_blocks(&self, entry: &str, block: u32, smem: u32) -> Result<usize> {
        let f = function(self.0, entry)?;
        let n = f
            .occupancy_max_active_blocks_per_multiprocessor(block, smem as usize, None)
            .w()?;
        Ok(n as usize)
    }
}

/// Launches on one device's stream; scratch memory lives until the executor is
/// dropped, after the launches that use it are on the stream (its frees are ordered
/// after them).
struct Driver<'a> {
    dev: &'a CudaDevice,
    profile: DeviceProfile<'a>,
    scratch: Vec<CudaSlice<u8>>,
}

impl<'a> Driver<'a> {
    fn new(dev: &'a CudaDevice) -> Self {
        Self {
            dev,
            profile: DeviceProfile(dev),
            scratch: Vec::new(),
        }
    }
}

impl Executor for Driver<'_> {
    fn profile(&self) -> &dyn Profile {
        &self.profile
    }

    fn scratch(&mut self, bytes: usize, zeroed: bool, _name: &'static str) -> Result<u64> {
        if bytes == 0 {
            return Ok(0);
        }
        let s = if zeroed {
            self.dev.alloc_zeros::<u8>(bytes)?
        } else {
            // SAFETY: the launch code writes scratch that is not zeroed before any
            // kernel reads it (the emulator checks every read of it).
            unsafe { self.dev.alloc::<u8>(bytes) }?
        };
        let stream = self.dev.cuda_stream();
        let (ptr, _) = s.device_ptr(&stream);
        self.scratch.push(s);
        Ok(ptr)
    }

    fn launch(&mut self, l: &Launch) -> Result<()> {
        let f = function(self.dev, &l.entry)?;
        let stream = self.dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        let fields = l.args.fields();
        for &(p, _) in &fields {
            // SAFETY: p is the address of a field of `l.args`, which outlives the
            // launch; the builder passes the driver that address, and the driver reads
            // the field's bytes at the size of the entry's parameter.
            lb.arg(unsafe { &*p.cast::<u8>() });
        }
        let cfg = LaunchConfig {
            grid_dim: (l.grid.0, l.grid.1, 1),
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: l.smem,
        };
        // SAFETY: the parameters are the fields of the entry's family's struct in order,
        // as params.h declares the entry (the emulator checks their count and sizes
        // against the kernel's); every address among them is an input view, the output
        // or scratch of this op, all alive until the launches are on the stream, and the
        // grid, block and shared memory are within the entry's limits.
        unsafe { lb.launch(cfg) }.w()?;
        Ok(())
    }
}

/// The CUDA kernels on a GPU, on the stream of the tensors' candle device.
pub(crate) struct Cuda;

/// The device address of a contiguous input (of any dtype with kernels), with the
/// guard that orders the stream's later work after its reads, kept in `guards` until
/// the launches are on the stream.
fn addr<'a>(
    spec: &Spec,
    (s, l): Arg<'a, CudaStorage>,
    stream: &'a CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> Result<u64> {
    fn at<'a, T: CudaElem>(s: &'a CudaStorage, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>)> {
        Ok(s.as_cuda_slice::<T>()?.device_ptr(stream))
    }
    let range = check::contiguous_range(spec.name(), l)?;
    let (p, g) =
        dispatch_dtype!(spec.name(), s.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], at(s, stream))?;
    guards.push(g);
    Ok(p + (range.start * s.dtype().size_in_bytes()) as u64)
}

/// A kernel's output as candle storage on `dev`.
fn wrap<E: CudaElem>(s: CudaSlice<E>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(s, dev.clone())
}

/// Calls `$run::<T, W>(args)` for the kernels' pairs of x's and the parameters' dtypes.
macro_rules! with_dtypes {
    ($spec:expr, $d:expr, $run:ident $args:tt) => {
        dispatch_dtypes!(
            $spec.name(),
            ($d.x, $d.params),
            "CUDA",
            [(F32, F32) => (f32, f32), (F16, F16) => (f16, f16), (BF16, BF16) => (bf16, bf16), (F16, F32) => (f16, f32), (BF16, F32) => (bf16, f32)],
            $run $args
        )
    };
}

impl Backend for Cuda {
    type Storage = CudaStorage;

    fn forward(&self, spec: &Spec, ins: &Slots<Arg<'_, CudaStorage>>) -> Result<(CudaStorage, Option<CudaStorage>)> {
        fn run<T: CudaElem, W: CudaElem>(
            spec: &Spec,
            d: Dtypes,
            ins: &Slots<Arg<CudaStorage>>,
        ) -> Result<(CudaStorage, Option<CudaStorage>)> {
            let dev = &ins.x.0.device;
            let stream = dev.cuda_stream();
            let n = spec.rows * spec.len;
            // SAFETY: every element of y (and h) is written by the kernels, which the
            // emulator's test of every path checks.
            let mut out = unsafe { dev.alloc::<T>(spec.outputs()) }?;
            // Training BatchNorm's statistics, written by the kernels, which an empty x
            // (eval only: training needs two values a channel) does not run.
            let mut stats = match (spec.kind, ins.running) {
                (Kind::Batch, None) => Some(dev.alloc_zeros::<W>(2 * spec.param_blocks)?),
                _ => None,
            };
            {
                let mut guards = Vec::new();
                let p = ins.try_map(|a| addr(spec, a, &stream, &mut guards))?;
                let (y, _out) = out.device_ptr_mut(&stream);
                let stats = stats.as_mut().map(|s| s.device_ptr_mut(&stream));
                let f = Fwd {
                    x: p.x,
                    residual: p.residual,
                    w: p.weight,
                    b: p.bias,
                    running: p.running,
                    y,
                    h: p.residual.map(|_| y + (n * std::mem::size_of::<T>()) as u64),
                    stats: stats.as_ref().map(|s| s.0),
                };
                run_forward(&mut Driver::new(dev), spec, d, &f)?;
            }
            Ok((wrap(out, dev), stats.map(|s| wrap(s, dev))))
        }
        let (x, params) = ins.dtypes();
        let d = Dtypes::new(spec, x, params)?;
        with_dtypes!(spec, d, run(spec, d, ins))
    }

    fn backward(
        &self,
        spec: &Spec,
        affine: Affine,
        ins: &Slots<Arg<'_, CudaStorage>>,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        fn run<T: CudaElem, W: CudaElem>(
            spec: &Spec,
            d: Dtypes,
            affine: Affine,
            ins: &Slots<Arg<CudaStorage>>,
        ) -> Result<(CudaStorage, Option<CudaStorage>)> {
            let dev = &ins.x.0.device;
            let stream = dev.cuda_stream();
            let (len, np) = (spec.rows * spec.len, spec.param_grads(affine));
            if len == 0 {
                // dγ/dβ of an empty input are zeros.
                let params = (np > 0).then(|| dev.alloc_zeros::<W>(np)).transpose()?;
                return Ok((wrap(dev.alloc_zeros::<T>(0)?, dev), params.map(|p| wrap(p, dev))));
            }
            // SAFETY: dx is written by the backward kernels, and dγ/dβ, allocated only when
            // wanted, by the dparams kernel, launched whenever one of them is.
            let (mut out, mut params) =
                unsafe { (dev.alloc::<T>(len)?, (np > 0).then(|| dev.alloc::<W>(np)).transpose()?) };
            {
                let mut guards = Vec::new();
                let p = ins.try_map(|a| addr(spec, a, &stream, &mut guards))?;
                let Some(dy) = p.dy else {
                    candle_core::bail!("{}: internal error: a backward without dy", spec.name())
                };
                let (dx, _out) = out.device_ptr_mut(&stream);
                let b = Bwd {
                    x: p.x,
                    w: p.weight,
                    b: p.bias,
                    dy,
                    dh: p.dh,
                    running: p.running,
                    dx,
                };
                let at = params.as_mut().map_or(0, |p| p.device_ptr_mut(&stream).0);
                run_backward(&mut Driver::new(dev), spec, d, affine, &b, at)?;
            }
            Ok((wrap(out, dev), params.map(|p| wrap(p, dev))))
        }
        let (x, params) = ins.dtypes();
        let d = Dtypes::new(spec, x, params)?;
        with_dtypes!(spec, d, run(spec, d, affine, ins))
    }
}
