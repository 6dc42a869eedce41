//! Launch constants shared by the CUDA kernels and their launch code, written once. The
//! crate reads this file as `cuda::launch`; build.rs reads it too and writes it out as
//! the header `launch.h` (namespace `cn`, `constexpr int`) that the kernels include,
//! so the two sides cannot drift apart.

launch_constants! {
    /// Largest block any kernel is launched with: the kernels' `__launch_bounds__`,
    /// which caps registers at 128 a thread so that such a block always fits on an SM.
    MAX_THREADS: usize = 512;
    /// Row elements each thread keeps in registers in the row forward.
    ROW_REG: usize = 32;
    /// Row elements each thread keeps in registers in the row backward.
    ROW_REG_BWD: usize = 16;
    /// Row-kernel flag: 16-byte vector accesses (aligned pointers, N a multiple of the width).
    VEC: i32 = 1;
    /// Row-kernel flag: a warp owns a row (short rows); else the whole block does.
    WARP_TEAM: i32 = 2;
    /// Row-kernel flag: the row is too long for registers and is read several times.
    MULTI: i32 = 4;
    /// GroupNorm flag: 16-byte vector accesses (aligned pointers, S a multiple of the width).
    GVEC: i32 = 1;
    /// BatchNorm flag: 16-byte vector accesses (aligned pointers, S a multiple of the width).
    BVEC: i32 = 1;
    /// Threads of the dγ/dβ reduction's block: 8 warps over 32 columns.
    DPARAMS_THREADS: usize = 256;
}
