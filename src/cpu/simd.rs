//! The vector instruction set the CPU path runs with, chosen at run time.
//!
//! A library cannot count on its users building with `target-cpu=native`, so the hot
//! loops are compiled several times (through [`run`]: the closure it is given, inlined
//! into functions built with wider target features) and the widest level the CPU has
//! is picked when they run. The f16/bf16 conversions pick their instructions from the
//! same level (`super::convert`). A limit set with [`set_cpu_level_limit`] caps the level,
//! so tests and benchmarks can run every level the machine has; every level computes
//! the same bits (the sums are written in a fixed order and Rust never contracts
//! `a * b + c` into a fused multiply-add), except that [`CpuLevel::Avx512Bf16`]'s
//! conversion flushes subnormal bf16 results to zero, as the instruction does.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The levels of vector instructions the CPU path is compiled for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CpuLevel {
    /// The target's baseline instructions (SSE2 on x86-64): portable code, except that
    /// f16 goes through the `half` crate, which uses F16C itself where the CPU has it.
    Baseline,
    /// x86-64 AVX2 with FMA and F16C (`vcvtps2ph`/`vcvtph2ps` for f16; bf16 rounded
    /// to nearest even with integer vector instructions).
    Avx2,
    /// x86-64 AVX-512 (F, BW, DQ, VL): 16 f32 lanes a register.
    Avx512,
    /// AVX-512 with the BF16 extension: `vcvtneps2bf16` rounds f32 to bf16 in one
    /// instruction (subnormal results become zero).
    Avx512Bf16,
}

impl CpuLevel {
    const ALL: [CpuLevel; 4] = [Self::Baseline, Self::Avx2, Self::Avx512, Self::Avx512Bf16];
}

/// The widest level this CPU supports, detected once.
pub fn detected_cpu_level() -> CpuLevel {
    static DETECTED: OnceLock<CpuLevel> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuLevel {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma") && has!("f16c")) {
        CpuLevel::Baseline
    } else if !(has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl")) {
        CpuLevel::Avx2
    } else if !has!("avx512bf16") {
        CpuLevel::Avx512
    } else {
        CpuLevel::Avx512Bf16
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuLevel {
    CpuLevel::Baseline
}

/// The cap set by [`set_cpu_level_limit`], as an index into [`CpuLevel::ALL`].
static LIMIT: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the level the CPU path uses at `limit` (`None`: no cap), for the whole process,
/// from the next op on. For benchmarking one level against another and for testing
/// every level on one machine; results are the same at every level (see
/// [`CpuLevel::Avx512Bf16`] for the one exception). A cap above what the CPU has
/// changes nothing.
pub fn set_cpu_level_limit(limit: Option<CpuLevel>) {
    let i = limit.map_or(u8::MAX, |l| {
        CpuLevel::ALL.iter().position(|&a| a == l).unwrap_or(0) as u8
    });
    LIMIT.store(i, Ordering::Relaxed);
}

/// The level the CPU path runs with: the detected one, capped by
/// [`set_cpu_level_limit`].
pub fn cpu_level() -> CpuLevel {
    let limit = LIMIT.load(Ordering::Relaxed);
    let detected = detected_cpu_level();
    CpuLevel::ALL.get(limit as usize).map_or(detected, |&l| l.min(detected))
}

/// Runs `f` compiled for the level in use. Only code inlined into `f` gets the wider
/// instructions, hence the `#[inline(always)]` on the CPU path's hot functions.
#[inline]
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match cpu_level() {
        // SAFETY: cpu_level() never exceeds detected_cpu_level(), which checked that
        // the CPU has every feature the called function is compiled with.
        CpuLevel::Avx512 | CpuLevel::Avx512Bf16 => return unsafe { x86::avx512(f) },
        // SAFETY: as above, AVX2, FMA and F16C were detected.
        CpuLevel::Avx2 => return unsafe { x86::avx2(f) },
        CpuLevel::Baseline => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")]
    pub(super) fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}
