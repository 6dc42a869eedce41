//! Recorded GPUs for the emulator: SM count, L2 size, the per-SM resources of the
//! architecture, and the registers and static shared memory of the entries whose grid
//! depends on how many of their blocks an SM holds (`resources.tsv`, as ptxas of CUDA 13.0
//! reports them; a test of the `cuda` build checks it against the build's own report).
//! With them the emulator sizes a persistent grid as the driver's occupancy query
//! does on that GPU.

use super::plan::Profile;
use candle_core::{bail, Result};
use std::collections::HashMap;
use std::sync::OnceLock;

/// What bounds the blocks an SM of an architecture holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arch {
    /// `sm_80`, `sm_90`: as ptxas names the target.
    pub name: &'static str,
    pub max_threads: u32,
    pub max_blocks: u32,
    pub registers: u32,
    /// Bytes of shared memory an SM can give its blocks.
    pub shared: u32,
    /// Bytes of shared memory the system keeps for each resident block.
    pub reserved_shared: u32,
}

/// Ampere's A100 (compute capability 8.0).
const SM_80: Arch = Arch {
    name: "sm_80",
    max_threads: 2048,
    max_blocks: 32,
    registers: 65536,
    shared: 164 * 1024,
    reserved_shared: 1024,
};

/// Hopper (compute capability 9.0).
const SM_90: Arch = Arch {
    name: "sm_90",
    max_threads: 2048,
    max_blocks: 32,
    registers: 65536,
    shared: 228 * 1024,
    reserved_shared: 1024,
};

/// A GPU the emulator can stand for: the launch code sees its SM count and its
/// occupancy, so the emulated run takes the paths, grids and reduction orders that GPU
/// would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpu {
    name: &'static str,
    arch: Arch,
    sm_count: usize,
    l2_bytes: usize,
}

impl Gpu {
    /// NVIDIA H100 SXM: 132 SMs, 50 MiB of L2, compute capability 9.0 (the default).
    pub const H100: Gpu = Gpu {
        name: "H100 SXM",
        arch: SM_90,
        sm_count: 132,
        l2_bytes: 50 << 20,
    };
    /// NVIDIA A100: 108 SMs, 40 MiB of L2, compute capability 8.0.
    pub const A100: Gpu = Gpu {
        name: "A100",
        arch: SM_80,
        sm_count: 108,
        l2_bytes: 40 << 20,
    };

    /// The same GPU with `sm_count` SMs (at least one): a small one makes the
    /// persistent grids loop over many rows with few of them.
    pub fn with_sm_count(self, sm_count: usize) -> Self {
        Self {
            sm_count: sm_count.max(1),
            ..self
        }
    }

    /// The same GPU with `bytes` of L2 (at least one): a small one makes the row norms'
    /// split path run in many row batches.
    pub fn with_l2_bytes(self, bytes: usize) -> Self {
        Self {
            l2_bytes: bytes.max(1),
            ..self
        }
    }

    /// The GPU's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Default for Gpu {
    fn default() -> Self {
        Gpu::H100
    }
}

/// Registers and static shared memory of an entry on an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resources {
    pub registers: u32,
    pub shared: u32,
}

/// The recorded table, `(architecture, entry)` to resources.
pub(crate) fn recorded() -> &'static HashMap<(String, String), Resources> {
    static TABLE: OnceLock<HashMap<(String, String), Resources>> = OnceLock::new();
    TABLE.get_or_init(|| parse(include_str!("resources.tsv")))
}

/// Lines of `arch entry registers shared`; `#` starts a comment.
pub(crate) fn parse(text: &str) -> HashMap<(String, String), Resources> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("bad line {l:?}"))
            };
            (
                (f[0].to_owned(), f[1].to_owned()),
                Resources {
                    registers: num(2),
                    shared: num(3),
                },
            )
        })
        .collect()
}

/// Blocks of `block` threads using `r` and `smem` bytes of dynamic shared memory that
/// one SM of `arch` holds at once, as CUDA's occupancy calculator counts them:
/// registers are given out per warp in units of 256, shared memory in units of 128.
pub(crate) fn occupancy(arch: &Arch, r: Resources, block: u32, smem: u32) -> u32 {
    let warps = block.div_ceil(32);
    let by_threads = arch.max_threads / 32 / warps;
    let per_warp = (r.registers.max(1) * 32).next_multiple_of(256);
    let by_registers = arch.registers / per_warp / warps;
    let shared = (r.shared + smem + arch.reserved_shared).next_multiple_of(128);
    let by_shared = arch.shared / shared;
    by_threads.min(by_registers).min(by_shared).min(arch.max_blocks)
}

impl Profile for Gpu {
    fn sm_count(&self) -> Result<usize> {
        Ok(self.sm_count)
    }

    fn l2_bytes(&self) -> Result<usize> {
        Ok(self.l2_bytes)
    }

    fn resident_blocks(&self, entry: &str, block: u32, smem: u32) -> Result<usize> {
        let key = (self.arch.name.to_owned(), entry.to_owned());
        let Some(&r) = recorded().get(&key) else {
            bail!(
                "emulator: {entry} has no recorded registers for {} (src/cuda/resources.tsv; the cuda build's test \
                 `recorded_resources_match_ptxas` prints them)",
                self.arch.name
            )
        };
        Ok(occupancy(&self.arch, r, block, smem) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from CUDA's occupancy calculator for compute capability 9.0.
    #[test]
    fn occupancy_counts_registers_threads_and_shared_memory() {
        let r = |registers, shared| Resources { registers, shared };
        // 94 registers: 3072 a warp, 21 warps an SM, 2 blocks of 8 warps.
        assert_eq!(occupancy(&SM_90, r(94, 0), 256, 4096), 2);
        // 32 registers, 256 threads: 8 blocks by threads and registers.
        assert_eq!(occupancy(&SM_90, r(32, 2048), 256, 0), 8);
        // Small blocks stop at 32 a SM.
        assert_eq!(occupancy(&SM_90, r(16, 0), 32, 0), 32);
        // 40 KiB of shared memory a block: 5 fit in 228 KiB.
        assert_eq!(occupancy(&SM_90, r(32, 0), 64, 40 * 1024), 5);
    }

    #[test]
    fn the_table_has_every_row_backward_entry() {
        for arch in [SM_80, SM_90] {
            for norm in ["layer_norm", "rms_norm"] {
                for stage in ["bwd", "add_bwd"] {
                    for path in ["warp", "block", "split"] {
                        for width in ["vec", "scalar"] {
                            for dtype in ["f32", "f16", "bf16", "f16_f32", "bf16_f32"] {
                                let entry = format!("{norm}_{stage}_{path}_{width}_{dtype}");
                                let key = (arch.name.to_owned(), entry);
                                assert!(recorded().contains_key(&key), "{key:?} is not recorded");
                            }
                        }
                    }
                }
            }
        }
    }

    /// ptxas's report of this build's kernels (build.rs), for every architecture it
    /// compiled (CI: sm_80, 86, 89 and 90): `arch entry registers shared stack
    /// spill_stores spill_loads`.
    #[cfg(feature = "cuda")]
    fn report() -> Vec<Vec<String>> {
        include_str!(concat!(env!("OUT_DIR"), "/kernel-resources.tsv"))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn no_kernel_entry_spills() {
        let report = report();
        assert!(report.len() > 100, "ptxas reported {} entries", report.len());
        let spills: Vec<String> = report
            .iter()
            .filter(|f| f[5] != "0" || f[6] != "0")
            .map(|f| format!("{} {}: {} bytes spilled, {} reloaded", f[0], f[1], f[5], f[6]))
            .collect();
        assert!(spills.is_empty(), "entries that spill:\n{}", spills.join("\n"));
    }

    /// The recorded registers and shared memory of every architecture this build
    /// compiled are ptxas's; on a mismatch the lines to record are printed.
    #[cfg(feature = "cuda")]
    #[test]
    fn recorded_resources_match_ptxas() {
        let report = report();
        let built: std::collections::HashSet<&str> = report.iter().map(|f| f[0].as_str()).collect();
        let mut stale = Vec::new();
        for ((arch, entry), r) in recorded() {
            if !built.contains(arch.as_str()) {
                continue;
            }
            let now = report.iter().find(|f| f[0] == *arch && f[1] == *entry);
            let line = now.map(|f| format!("{} {} {} {}", f[0], f[1], f[2], f[3]));
            if line.as_deref() != Some(&format!("{arch} {entry} {} {}", r.registers, r.shared)) {
                stale.push(line.unwrap_or_else(|| format!("{arch} {entry}: not built")));
            }
        }
        stale.sort();
        assert!(
            stale.is_empty(),
            "src/cuda/resources.tsv is stale; ptxas now reports:\n{}",
            stale.join("\n")
        );
    }
}
