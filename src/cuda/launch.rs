//! Launch constants shared by the CUDA kernels and their launch code, written once. The
//! crate reads this file as `cuda::launch`; build.rs reads it too and writes it out as
//! the header `launch.h` (namespace `cn`, `constexpr int`) that the kernels include,
//! so the two sides cannot drift apart.

launch_constants! {
    /// Largest block any kernel is launched with: the kernels' `__launch_bounds__`,
    /// which caps registers at 128 a thread so that such a block always fits on an SM.
    MAX_THREADS: usize = 512;
    /// Block of the kernels that split their work by warps or slices: the row kernels'
    /// warp path, GroupNorm and BatchNorm.
    BLOCK: usize = 256;
    /// Row elements each thread keeps in registers in the row forward.
    ROW_REG: usize = 32;
    /// Row elements each thread keeps in registers in the row backward.
    ROW_REG_BWD: usize = 16;
    /// Row elements each thread keeps in registers in the row forward's scalar paths
    /// (misaligned rows, or N not a multiple of the vector width): each element there
    /// is a load of its own, with its own address and bounds check.
    ROW_REG_SCALAR: usize = 12;
    /// The same for the row backward's scalar paths.
    ROW_REG_BWD_SCALAR: usize = 8;
    /// GroupNorm flag: 16-byte vector accesses (aligned pointers, the runs of a
    /// channel or of a group's channels a multiple of the width).
    GVEC: i32 = 1;
    /// GroupNorm flag, the channels-last group path only: 8-byte vector accesses where
    /// C/G is a multiple of that width but not of 16 bytes (f16/bf16 at C/G = 4).
    GVEC8: i32 = 2;
    /// BatchNorm flag: 16-byte vector accesses (aligned pointers, S a multiple of the width).
    BVEC: i32 = 1;
    /// Threads of the dγ/dβ reduction's block: 8 warps over 32 columns.
    DPARAMS_THREADS: usize = 256;
}

/// The kernel files, `kernels/{name}.cu`, each compiled by build.rs into one module
/// (a fatbin for the driver, an object for the emulator): the only list of them.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) const KERNEL_FILES: [&str; 4] = ["layer_norm", "rms_norm", "group_norm", "batch_norm"];
