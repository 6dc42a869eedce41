//! The compiled kernels: fatbins built by build.rs and embedded in the crate (so no JIT
//! on the targeted GPUs), each loaded once per device, and the dtypes they exist for.

use crate::spec::Kind;
use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaModule, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{Result, WithDType};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const FATBINS: [(&str, &[u8]); 4] = [
    (
        "layer_norm",
        include_bytes!(concat!(env!("OUT_DIR"), "/layer_norm.fatbin")),
    ),
    ("rms_norm", include_bytes!(concat!(env!("OUT_DIR"), "/rms_norm.fatbin"))),
    (
        "group_norm",
        include_bytes!(concat!(env!("OUT_DIR"), "/group_norm.fatbin")),
    ),
    (
        "batch_norm",
        include_bytes!(concat!(env!("OUT_DIR"), "/batch_norm.fatbin")),
    ),
];

/// A dtype with CUDA kernels; `SUFFIX` ends the kernels' extern "C" names.
pub(super) trait CudaElem: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType {
    const SUFFIX: &'static str;
}

impl CudaElem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl CudaElem for f16 {
    const SUFFIX: &'static str = "f16";
}
impl CudaElem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// The kernel `{kind}_{stage}_{suffix}` of this device, its module loaded once per device.
pub(super) fn function<T: CudaElem>(dev: &CudaDevice, kind: Kind, stage: &str) -> Result<CudaFunction> {
    type Cache = Mutex<HashMap<(usize, &'static str), Arc<CudaModule>>>;
    static MODULES: OnceLock<Cache> = OnceLock::new();
    let ctx = dev.cuda_stream().context().clone();
    // Both GroupNorm layouts are compiled from group_norm.cu.
    let file = match kind {
        Kind::GroupLast => Kind::Group.name(),
        k => k.name(),
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
    module
        .load_function(&format!("{}_{stage}_{}", kind.name(), T::SUFFIX))
        .w()
}

/// The number of streaming multiprocessors of the device.
pub(super) fn sm_count(dev: &CudaDevice) -> Result<usize> {
    let ctx = dev.cuda_stream().context().clone();
    let n = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .w()?;
    Ok(n.max(1) as usize)
}
