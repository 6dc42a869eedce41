//! The compiled kernels: fatbins built by build.rs and embedded in the crate (so no JIT
//! on the targeted GPUs), each loaded once per device.

use super::launch::KERNEL_FILES;
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));

/// The entry point `entry` of this device, looked up by name once per device and kept:
/// a module holds hundreds of entries, and the lookup would otherwise come before
/// every launch, on the path that bounds small launches' latency.
pub(super) fn function(dev: &CudaDevice, entry: &str) -> Result<CudaFunction> {
    type Cache = Mutex<HashMap<usize, HashMap<String, CudaFunction>>>;
    static FUNCTIONS: OnceLock<Cache> = OnceLock::new();
    let ordinal = dev.cuda_stream().context().ordinal();
    let functions = FUNCTIONS.get_or_init(Default::default);
    let cached = functions
        .lock()
        .expect("function cache poisoned")
        .get(&ordinal)
        .and_then(|device| device.get(entry))
        .cloned();
    if let Some(f) = cached {
        return Ok(f);
    }
    let f = module(dev, entry)?.load_function(entry).w()?;
    functions
        .lock()
        .expect("function cache poisoned")
        .entry(ordinal)
        .or_default()
        .insert(entry.to_string(), f.clone());
    Ok(f)
}

/// The module of `entry`'s kernel file on this device, loaded once per device. Every
/// entry's name starts with its file's.
fn module(dev: &CudaDevice, entry: &str) -> Result<Arc<CudaModule>> {
    type Cache = Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>;
    static MODULES: OnceLock<Cache> = OnceLock::new();
    let ctx = dev.cuda_stream().context().clone();
    let Some(file) = KERNEL_FILES.into_iter().find(|f| entry.starts_with(f)) else {
        candle_core::bail!("{entry}: no kernel file holds this entry point")
    };
    let mut cache = MODULES
        .get_or_init(Default::default)
        .lock()
        .expect("module cache poisoned");
    if let Some(m) = cache.get(&(ctx.ordinal(), file)) {
        return Ok(m.clone());
    }
    let Some(&(_, bytes)) = FATBINS.iter().find(|(n, _)| *n == file) else {
        candle_core::bail!("{file}: no CUDA kernels are built for this op");
    };
    let m = ctx.load_module(Ptx::from_binary(bytes.to_vec())).w()?;
    cache.insert((ctx.ordinal(), file), m.clone());
    Ok(m)
}

/// One of the device's attributes, as the driver reports it.
fn attribute(dev: &CudaDevice, attr: sys::CUdevice_attribute) -> Result<i32> {
    dev.cuda_stream().context().attribute(attr).w()
}

/// The number of streaming multiprocessors of the device.
pub(super) fn sm_count(dev: &CudaDevice) -> Result<usize> {
    let n = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    Ok(n.max(1) as usize)
}

/// Bytes of the device's L2 cache.
pub(super) fn l2_bytes(dev: &CudaDevice) -> Result<usize> {
    let n = attribute(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?;
    Ok(n.max(0) as usize)
}
