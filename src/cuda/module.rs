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

/// The entry point `entry` of this device, its kernel file's module loaded once per
/// device. Every entry's name starts with its file's.
pub(super) fn function(dev: &CudaDevice, entry: &str) -> Result<CudaFunction> {
    type Cache = Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>;
    static MODULES: OnceLock<Cache> = OnceLock::new();
    let ctx = dev.cuda_stream().context().clone();
    let Some(file) = KERNEL_FILES.into_iter().find(|f| entry.starts_with(f)) else {
        candle_core::bail!("{entry}: no kernel file holds this entry point")
    };
    let module = {
        let mut cache = MODULES
            .get_or_init(Default::default)
            .lock()
            .expect("module cache poisoned");
        match cache.get(&(ctx.ordinal(), file)) {
            Some(m) => m.clone(),
            None => {
                let Some(&(_, bytes)) = FATBINS.iter().find(|(n, _)| *n == file) else {
                    candle_core::bail!("{file}: no CUDA kernels are built for this op");
                };
                let m = ctx.load_module(Ptx::from_binary(bytes.to_vec())).w()?;
                cache.insert((ctx.ordinal(), file), m.clone());
                m
            }
        }
    };
    module.load_function(entry).w()
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
