//! The kernels' arguments: one struct per kernel, shared by all its entry points (every
//! path, width and dtype). Declared once, here: the crate reads this file as
//! `cuda::params`; build.rs reads it too and writes the same structs out as the
//! kernels' header `params.h`, with a `static_assert` on the size of each struct and
//! the offset of each field as Rust lays them out (nvcc and the emulator's host
//! compiler check them at every build), and for each struct the parameter list of its
//! entries (the fields in order, typed) and the struct made of those parameters
//! (`CN_ARGS_RowFwdArgs`). A launch passes the fields as the entry's parameters, the
//! driver one pointer a field; the emulator checks their count and sizes against the
//! kernel's. (Typed parameters, not one struct parameter nor `void*` ones: with
//! either, nvcc keeps more values in registers, up to 21 more in the row kernels.)
//!
//! `In` and `Out` fields are device addresses of tensors of the kernel's element type
//! T that it reads or writes (`const void*` and `void*` in the structs, `const T*` and
//! `T*` as parameters); `Param` and `OutParam` fields, of the affine parameters and
//! per-channel statistics it reads or writes, of their type W (`const W*` and `W*`: T,
//! or f32 with f16 and bf16 T for mixed precision); `InF32` and `OutF32`, of its f32
//! scratch. 0 is an absent optional tensor. A struct's parameter list is
//! `CN_PARAMS_RowFwdArgs(T, W)` when it has `Param` or `OutParam` fields, else
//! `CN_PARAMS_GroupStatsArgs(T)`.
//! `partial_dw` and `partial_db` are always f32 partial sums of dγ (Σ dy·x̂) and dβ
//! (Σ dy), summed in a fixed order by the `*_dparams` kernels.

/// The device address of elements of the kernel's dtype that it reads.
pub(crate) type In = u64;
/// The device address of elements of the kernel's dtype that it writes (and may read).
pub(crate) type Out = u64;
/// The device address of affine parameters (or running statistics) that the kernel
/// reads, of the parameters' dtype.
pub(crate) type Param = u64;
/// The device address of per-channel statistics that the kernel writes, of the
/// parameters' dtype.
pub(crate) type OutParam = u64;
/// The device address of f32 scratch the kernel reads.
pub(crate) type InF32 = u64;
/// The device address of f32 scratch the kernel writes (and may read).
pub(crate) type OutF32 = u64;

kernel_params! {
    /// LayerNorm's and RMSNorm's forward (kernels/row_norm.cuh): rows of `len`
    /// contiguous elements.
    struct RowFwdArgs {
        /// [rows, len].
        x: In,
        /// [len]: γ, or null for ones.
        weight: Param,
        /// [len]: β, or null for zeros (always null for RMSNorm).
        bias: Param,
        /// [rows, len].
        y: Out,
        rows: i32,
        len: i32,
        eps: f32,
    }

    /// Their backward: dx, and each block's partial sums over the rows it visits.
    struct RowBwdArgs {
        x: In,
        weight: Param,
        dy: In,
        dx: Out,
        /// [blocks, len] f32.
        partial_dw: OutF32,
        partial_db: OutF32,
        rows: i32,
        len: i32,
        eps: f32,
    }

    /// The fused residual add's forward: h = x + residual, rounded, and y of h.
    struct AddFwdArgs {
        x: In,
        residual: In,
        weight: Param,
        bias: Param,
        h: Out,
        y: Out,
        rows: i32,
        len: i32,
        eps: f32,
    }

    /// The fused residual add's backward from h: dx = dh + the norm's backward.
    struct AddBwdArgs {
        h: In,
        weight: Param,
        dy: In,
        /// The gradient reaching h directly.
        dh: In,
        dx: Out,
        partial_dw: OutF32,
        partial_db: OutF32,
        rows: i32,
        len: i32,
        eps: f32,
    }

    /// How the split path cuts rows too long for one block's registers
    /// (kernels/row_norm.cuh): `chunks` chunks of `span` elements a row (the last may
    /// hold fewer), a block a chunk, over the rows `first` to `first + rows` of one
    /// launch.
    struct RowSplit {
        first: i32,
        rows: i32,
        len: i32,
        chunks: i32,
        span: i32,
        /// 0 when the backward's blocks write their dγ/dβ partial rows, 1 when they add
        /// to them (every row batch after the first).
        accumulate: i32,
    }

    /// The split forward's statistics: (count, mean, M2) of each block's chunk; with a
    /// residual, h = x + residual is written and its chunk reduced.
    struct SplitStatsArgs {
        x: In,
        /// The fused add's residual, or null.
        residual: In,
        /// The fused add's h, or null.
        h: Out,
        /// [rows, chunks, 3] f32.
        moments: OutF32,
        split: RowSplit,
    }

    /// The split forward's output: each block merges its row's moments and writes its
    /// chunk of y (from h with a residual).
    struct SplitFwdArgs {
        x: In,
        weight: Param,
        bias: Param,
        moments: InF32,
        y: Out,
        split: RowSplit,
        eps: f32,
    }

    /// The split backward's sums: (count, mean, M2, Σg, Σg·(x − mean)) of each block's
    /// chunk, g = dy·γ and the chunk's own mean.
    struct SplitSumsArgs {
        x: In,
        weight: Param,
        dy: In,
        /// [rows, chunks, 5] f32.
        sums: OutF32,
        split: RowSplit,
    }

    /// The split backward's dx (plus dh with a residual), each block over the rows of
    /// its chunk column that it visits, with its [blocks / chunks, len] partials.
    struct SplitBwdArgs {
        x: In,
        weight: Param,
        dy: In,
        /// The gradient reaching the fused add's h directly, or null.
        dh: In,
        sums: InF32,
        dx: Out,
        partial_dw: OutF32,
        partial_db: OutF32,
        split: RowSplit,
        eps: f32,
    }

    /// The reduction of `count` partial rows of `len` columns into dγ and dβ, every
    /// family's `*_dparams` entry.
    struct PartialsArgs {
        partial_dw: InF32,
        partial_db: InF32,
        /// [len]: dγ, or null when not wanted.
        dweight: Out,
        /// [len]: dβ, or null when not wanted.
        dbias: Out,
        count: i32,
        len: i32,
    }

    /// How GroupNorm's groups are split over blocks (kernels/group_norm.cu).
    struct GroupShape {
        /// (sample, group) pairs of a launch (B·G, or a batch's), each of `len` =
        /// (C/G)·spatial elements.
        rows: i32,
        len: i32,
        /// The product of the spatial dimensions.
        spatial: i32,
        /// Channels a group, C/G.
        per_group: i32,
        groups: i32,
        channels: i32,
        /// Blocks a group, each of `chunk` elements (the last may hold fewer).
        splits: i32,
        chunk: i32,
    }

    /// GroupNorm's statistics, both layouts: (count, mean, M2) of each block's slice.
    struct GroupStatsArgs {
        x: In,
        /// [rows, splits, 3] f32.
        moments: OutF32,
        shape: GroupShape,
        /// GVEC: 16-byte vector accesses.
        flags: i32,
    }

    /// GroupNorm's forward, both layouts.
    struct GroupFwdArgs {
        x: In,
        /// [C]: γ, or null for ones.
        weight: Param,
        /// [C]: β, or null for zeros.
        bias: Param,
        moments: InF32,
        y: Out,
        shape: GroupShape,
        eps: f32,
        flags: i32,
    }

    /// GroupNorm's backward sums, channels-first: one block per (sample, channel).
    struct GroupSumsArgs {
        x: In,
        /// γ and β (or null), read by GroupNorm + SiLU's entries only, to recompute z.
        weight: Param,
        bias: Param,
        dy: In,
        moments: InF32,
        /// [B, C] f32.
        partial_dw: OutF32,
        partial_db: OutF32,
        shape: GroupShape,
        eps: f32,
        flags: i32,
    }

    /// GroupNorm's backward sums, channels-last: one block per (sample, slice of
    /// `slice_rows` of its spatial rows).
    struct GroupLastSumsArgs {
        x: In,
        /// γ and β (or null), read by GroupNorm + SiLU's entries only, to recompute z.
        weight: Param,
        bias: Param,
        dy: In,
        moments: InF32,
        /// [B, slices, C] f32.
        partial_dw: OutF32,
        partial_db: OutF32,
        shape: GroupShape,
        eps: f32,
        slices: i32,
        slice_rows: i32,
    }

    /// GroupNorm's dx, channels-first.
    struct GroupDxArgs {
        x: In,
        weight: Param,
        /// β (or null), read by GroupNorm + SiLU's entries only.
        bias: Param,
        dy: In,
        moments: InF32,
        partial_dw: InF32,
        partial_db: InF32,
        dx: Out,
        shape: GroupShape,
        eps: f32,
        flags: i32,
    }

    /// GroupNorm's dx, channels-last, from sums in `slices` slices a sample.
    struct GroupLastDxArgs {
        x: In,
        weight: Param,
        /// β (or null), read by GroupNorm + SiLU's entries only.
        bias: Param,
        dy: In,
        moments: InF32,
        partial_dw: InF32,
        partial_db: InF32,
        dx: Out,
        shape: GroupShape,
        eps: f32,
        flags: i32,
        slices: i32,
    }

    /// GroupNorm's forward on the group path (one block a group), both layouts.
    struct GroupRegFwdArgs {
        x: In,
        /// [C]: γ, or null for ones.
        weight: Param,
        /// [C]: β, or null for zeros.
        bias: Param,
        y: Out,
        /// One split a group.
        shape: GroupShape,
        eps: f32,
        /// GVEC, or GVEC8 channels-last.
        flags: i32,
    }

    /// GroupNorm's backward on the group path, both layouts: dx, and the dγ/dβ partials
    /// of each sample.
    struct GroupRegBwdArgs {
        x: In,
        weight: Param,
        /// β (or null), read by GroupNorm + SiLU's entries only.
        bias: Param,
        dy: In,
        dx: Out,
        /// [B, C] f32.
        partial_dw: OutF32,
        partial_db: OutF32,
        /// One split a group.
        shape: GroupShape,
        eps: f32,
        /// GVEC, or GVEC8 channels-last.
        flags: i32,
    }

    /// How BatchNorm's channels are split over blocks (kernels/batch_norm.cu).
    struct BatchShape {
        channels: i32,
        /// The product of the spatial dimensions.
        spatial: i32,
        /// Values a channel: B·spatial.
        len: i32,
        /// Blocks a channel, each of `chunk` values (the last may hold fewer).
        splits: i32,
        chunk: i32,
    }

    /// BatchNorm's statistics (training): (count, mean, M2) of each block's slice.
    struct BatchStatsArgs {
        x: In,
        /// [channels of the launch (a batch's), splits, 3] f32.
        moments: OutF32,
        shape: BatchShape,
        /// BVEC: 16-byte vector accesses.
        flags: i32,
    }

    /// BatchNorm's forward: training's with the moments (and the batch mean and
    /// variance written out), eval's with the running statistics; the others null.
    struct BatchFwdArgs {
        x: In,
        /// [C]: γ, or null for ones.
        weight: Param,
        /// [C]: β, or null for zeros.
        bias: Param,
        moments: InF32,
        /// [C] (eval).
        running_mean: Param,
        running_var: Param,
        y: Out,
        /// [C]: the batch mean and biased variance, rounded to the parameters'
        /// dtype (training).
        mean: OutParam,
        var: OutParam,
        shape: BatchShape,
        eps: f32,
        flags: i32,
    }

    /// BatchNorm's backward sums: Σ dy·x̂ and Σ dy of each block's slice.
    struct BatchSumsArgs {
        x: In,
        dy: In,
        moments: InF32,
        running_mean: Param,
        running_var: Param,
        /// [splits, C] f32.
        partial_dw: OutF32,
        partial_db: OutF32,
        shape: BatchShape,
        eps: f32,
        flags: i32,
    }

    /// BatchNorm's dx (training reads the sums, eval neither them nor x).
    struct BatchDxArgs {
        x: In,
        weight: Param,
        dy: In,
        moments: InF32,
        running_mean: Param,
        running_var: Param,
        partial_dw: InF32,
        partial_db: InF32,
        dx: Out,
        shape: BatchShape,
        eps: f32,
        flags: i32,
    }
}
