//! The CUDA driver as the executor of the launches, on the stream of the tensors'
//! candle device, and the ops' entry points for CUDA storages: each takes the device
//! addresses of its inputs and of a fresh output, runs the op's launches, and returns
//! the output as candle storage.

use super::module::{function, sm_count};
use super::plan::{Executor, Launch, Profile};
use super::{run_backward, run_batch_forward, run_forward, Bwd, Fwd};
use crate::check::{self, dispatch_dtype};
use crate::custom_op::Arg;
use crate::spec::{Affine, Spec};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop, ValidAsZeroBits,
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

/// The view of a contiguous input.
fn view<'a, T: CudaElem>(spec: &Spec, (s, l): Arg<'a, CudaStorage>) -> Result<CudaView<'a, T>> {
    let range = check::contiguous_range(spec.name(), l)?;
    Ok(s.as_cuda_slice::<T>()?.slice(range))
}

/// The views of optional inputs.
fn views<'a, T: CudaElem, const K: usize>(
    spec: &Spec,
    args: [Option<Arg<'a, CudaStorage>>; K],
) -> Result<[Option<CudaView<'a, T>>; K]> {
    let mut out = [const { None }; K];
    for (o, a) in out.iter_mut().zip(args) {
        *o = a.map(|a| view::<T>(spec, a)).transpose()?;
    }
    Ok(out)
}

/// Device addresses of views, with the guards that order the stream's later work
/// after the reads (kept until the launches are on the stream).
fn addrs<'a, T, const K: usize>(
    views: &'a [Option<CudaView<'_, T>>; K],
    stream: &'a candle_core::cuda_backend::cudarc::driver::CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> [Option<u64>; K] {
    views.each_ref().map(|v| {
        v.as_ref().map(|v| {
            let (p, g) = v.device_ptr(stream);
            guards.push(g);
            p
        })
    })
}

/// The forward: y, laid out as x, then h with a `residual` (the fused residual add).
pub(crate) fn forward(
    spec: &Spec,
    x: Arg<CudaStorage>,
    residual: Option<Arg<CudaStorage>>,
    w: Option<Arg<CudaStorage>>,
    b: Option<Arg<CudaStorage>>,
) -> Result<CudaStorage> {
    fn run<T: CudaElem>(
        spec: &Spec,
        x: Arg<CudaStorage>,
        [r, w, b]: [Option<Arg<CudaStorage>>; 3],
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let stream = dev.cuda_stream();
        let [xv, rv, wv, bv] = views::<T, 4>(spec, [Some(x), r, w, b])?;
        let n = xv.as_ref().map_or(0, |v| v.len());
        // SAFETY: every element of y (and h) is written by the kernels, which the
        // emulator's test of every path checks.
        let mut out = unsafe { dev.alloc::<T>(spec.outputs()) }?;
        {
            let views = [xv, rv, wv, bv];
            let mut guards = Vec::new();
            let [xp, rp, wp, bp] = addrs(&views, &stream, &mut guards);
            let (yp, _out) = out.device_ptr_mut(&stream);
            let p = Fwd {
                x: xp.unwrap_or(0),
                residual: rp,
                w: wp,
                b: bp,
                running: None,
                y: yp,
                h: rp.map(|_| yp + (n * std::mem::size_of::<T>()) as u64),
            };
            run_forward(&mut Driver::new(dev), spec, T::DTYPE, &p)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], run(spec, x, [residual, w, b]))
}

/// BatchNorm's forward: y, and in training (`running` is `None`) each channel's batch
/// mean, then its biased variance (2·C elements of x's dtype); in eval, y normalized
/// with the running mean and variance, and no statistics.
pub(crate) fn batch_forward(
    spec: &Spec,
    x: Arg<CudaStorage>,
    [w, b]: [Option<Arg<CudaStorage>>; 2],
    running: Option<[Arg<CudaStorage>; 2]>,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    fn run<T: CudaElem>(
        spec: &Spec,
        x: Arg<CudaStorage>,
        [w, b]: [Option<Arg<CudaStorage>>; 2],
        running: Option<[Arg<CudaStorage>; 2]>,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        let dev = &x.0.device;
        let stream = dev.cuda_stream();
        let [m, v] = running.map_or([None, None], |[m, v]| [Some(m), Some(v)]);
        let views = views::<T, 5>(spec, [Some(x), w, b, m, v])?;
        let n = spec.rows * spec.len;
        // SAFETY: every element of y is written by the kernels.
        let mut y = unsafe { dev.alloc::<T>(n) }?;
        // The statistics are written by the kernels, which an empty x (eval only:
        // training needs two values a channel) does not run.
        let mut stats = match running {
            None => Some(dev.alloc_zeros::<T>(2 * spec.groups)?),
            Some(_) => None,
        };
        {
            let mut guards = Vec::new();
            let [xp, wp, bp, mp, vp] = addrs(&views, &stream, &mut guards);
            let (yp, _y) = y.device_ptr_mut(&stream);
            let sp = stats.as_mut().map(|s| s.device_ptr_mut(&stream));
            let p = Fwd {
                x: xp.unwrap_or(0),
                residual: None,
                w: wp,
                b: bp,
                running: mp.zip(vp).map(|(m, v)| [m, v]),
                y: yp,
                h: None,
            };
            run_batch_forward(&mut Driver::new(dev), spec, T::DTYPE, &p, sp.as_ref().map(|s| s.0))?;
        }
        let wrap = |s| CudaStorage::wrap_cuda_slice(s, dev.clone());
        Ok((wrap(y), stats.map(wrap)))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], run(spec, x, [w, b], running))
}

/// The backward: one flat storage holding dx, then dγ when `want.weight`, then dβ when
/// `want.bias`, as the CPU path returns it. With `dh` (the fused residual add), `x` is
/// h and dh is added to dx.
pub(crate) fn backward(
    spec: &Spec,
    want: Affine,
    x: Arg<CudaStorage>,
    w: Option<Arg<CudaStorage>>,
    dy: Arg<CudaStorage>,
    dh: Option<Arg<CudaStorage>>,
) -> Result<CudaStorage> {
    grads(spec, want, [x, dy], [w, dh], None)
}

/// BatchNorm's backward, laid out as [`backward`]'s, with the batch's statistics
/// (training, `running` is `None`) or the running mean and variance (eval).
pub(crate) fn batch_backward(
    spec: &Spec,
    want: Affine,
    [x, dy]: [Arg<CudaStorage>; 2],
    w: Option<Arg<CudaStorage>>,
    running: Option<[Arg<CudaStorage>; 2]>,
) -> Result<CudaStorage> {
    grads(spec, want, [x, dy], [w, None], running)
}

/// [`backward`] and [`batch_backward`].
fn grads(
    spec: &Spec,
    want: Affine,
    [x, dy]: [Arg<CudaStorage>; 2],
    [w, dh]: [Option<Arg<CudaStorage>>; 2],
    running: Option<[Arg<CudaStorage>; 2]>,
) -> Result<CudaStorage> {
    fn run<T: CudaElem>(
        spec: &Spec,
        want: Affine,
        [x, dy]: [Arg<CudaStorage>; 2],
        [w, dh]: [Option<Arg<CudaStorage>>; 2],
        running: Option<[Arg<CudaStorage>; 2]>,
    ) -> Result<CudaStorage> {
        let dev = &x.0.device;
        let stream = dev.cuda_stream();
        let [m, v] = running.map_or([None, None], |[m, v]| [Some(m), Some(v)]);
        let views = views::<T, 6>(spec, [Some(x), Some(dy), w, dh, m, v])?;
        let (len, total) = (spec.rows * spec.len, spec.packed_grads(want));
        if len == 0 {
            // dγ/dβ of an empty input are zeros.
            return Ok(CudaStorage::wrap_cuda_slice(dev.alloc_zeros::<T>(total)?, dev.clone()));
        }
        // SAFETY: dx is written by the backward kernels, and dγ/dβ, present only when
        // wanted, by the dparams kernel, launched whenever one of them is.
        let mut out = unsafe { dev.alloc::<T>(total) }?;
        {
            let mut guards = Vec::new();
            let [xp, dyp, wp, dhp, mp, vp] = addrs(&views, &stream, &mut guards);
            let (op, _out) = out.device_ptr_mut(&stream);
            let p = Bwd {
                x: xp.unwrap_or(0),
                w: wp,
                dy: dyp.unwrap_or(0),
                dh: dhp,
                running: mp.zip(vp).map(|(m, v)| [m, v]),
                dx: op,
            };
            let params = op + (len * std::mem::size_of::<T>()) as u64;
            run_backward(&mut Driver::new(dev), spec, T::DTYPE, want, &p, params)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    dispatch_dtype!(spec.name(), x.0.dtype(), "CUDA", [F32 => f32, F16 => f16, BF16 => bf16], run(spec, want, [x, dy], [w, dh], running))
}
