// Kernels for the emulator's own tests (src/cuda/emulator/tests.rs), built into the emulator
// only: each `seeded_*` kernel holds one bug of a kind compute-sanitizer finds, and
// `good_*` kernels use the same patterns correctly, so that the tests show each bug
// caught and no correct kernel flagged. Every kernel is launched with 1-D blocks.
#include "common.cuh"

namespace {

// Σ x over a block through cn::team_sum (shuffles, shared memory, barriers).
__device__ void block_sum(const float* x, float* out, int n) {
    __shared__ float smem[32];
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = cn::team_sum<false>(s, smem);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) good_block_sum(const float* x, float* out, int n) {
    block_sum(x + (size_t)blockIdx.x * n, out, n);
}

// Copies n floats, 4 at a time through 16-byte vectors.
extern "C" __global__ void good_copy_vec(const float* x, float* y, int n) {
    for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * 4; i < n; i += gridDim.x * blockDim.x * 4) {
        float v[4];
        cn::load<float, 4>(x + i, v);
        cn::store<float, 4>(y + i, v);
    }
}

// Warp shuffles of every kind, each lane writing what it received.
extern "C" __global__ void good_shuffles(int* out) {
    const int lane = threadIdx.x & 31;
    int* o = out + threadIdx.x * 6;
    o[0] = __shfl_xor_sync(0xffffffffu, lane, 1);
    o[1] = __shfl_down_sync(0xffffffffu, lane, 4);
    o[2] = __shfl_up_sync(0xffffffffu, lane, 4);
    o[3] = __shfl_sync(0xffffffffu, lane, 7);
    o[4] = (int)__ballot_sync(0xffffffffu, lane & 1);
    o[5] = __shfl_xor_sync(0xffffffffu, lane, 2, 8);
}

// Dynamic shared memory: each thread writes its slot, and after a barrier reads its
// neighbour's.
extern "C" __global__ void good_dynamic_shared(float* out) {
    CN_DYNAMIC_SHARED(float, part);
    part[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = part[(threadIdx.x + 1) % blockDim.x];
}

// Off by one: the row bound `i <= n` reads one element past x.
extern "C" __global__ void seeded_row_bound(const float* x, float* y, int n) {
    for (int i = threadIdx.x; i <= n; i += blockDim.x) y[i % n] = x[i];
}

// team_sum without the barrier between writing the warp sums and reading them.
extern "C" __global__ void seeded_missing_sync(const float* x, float* out) {
    __shared__ float smem[32];
    float v = cn::warp_sum(x[threadIdx.x]);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) smem[warp] = v;
    v = lane < (int)(blockDim.x >> 5) ? smem[lane] : 0.f;
    v = cn::warp_sum(v);
    if (threadIdx.x == 0) out[0] = v;
}

// Each thread writes its slot, then, with no barrier, reads the slot before it.
extern "C" __global__ void seeded_missing_sync_neighbour(float* out) {
    __shared__ float smem[64];
    smem[threadIdx.x] = (float)threadIdx.x;
    out[threadIdx.x] = threadIdx.x ? smem[threadIdx.x - 1] : 0.f;
}

// Every thread of a warp writes the warp's shared slot.
extern "C" __global__ void seeded_racy_write(const float* x, float* out) {
    __shared__ float smem[32];
    smem[threadIdx.x >> 5] = x[threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) out[0] = smem[0];
}

// Half the block waits at a barrier the other half never reaches.
extern "C" __global__ void seeded_divergent_barrier(float* out) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    out[threadIdx.x] = 1.f;
}

// One thread returns before the block's barrier.
extern "C" __global__ void seeded_exit_before_barrier(float* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1.f;
}

// Half a warp shuffles.
extern "C" __global__ void seeded_divergent_shuffle(float* out) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// Reads a shared slot no thread wrote.
extern "C" __global__ void seeded_uninit_shared(float* out) {
    __shared__ float smem[64];
    smem[threadIdx.x] = 1.f;
    __syncthreads();
    out[threadIdx.x] = smem[threadIdx.x + 32];
}

// Reads scratch memory no kernel wrote.
extern "C" __global__ void seeded_uninit_global(const float* scratch, float* out) {
    out[threadIdx.x] = scratch[threadIdx.x];
}

// A 16-byte vector load one float past an aligned address.
extern "C" __global__ void seeded_misaligned_vector(const float* x, float* y) {
    float v[4];
    cn::load<float, 4>(x + 1 + threadIdx.x * 4, v);
    y[threadIdx.x] = v[0];
}

// An 8-byte vector load one float past an aligned address.
extern "C" __global__ void seeded_misaligned_vector8(const float* x, float* y) {
    float v[2];
    cn::load<float, 2>(x + 1 + threadIdx.x * 2, v);
    y[threadIdx.x] = v[0];
}

// Block 1 reads what block 0 wrote in the same launch.
extern "C" __global__ void seeded_cross_block(float* buf) {
    if (blockIdx.x == 0) buf[threadIdx.x] = 1.f;
    else buf[blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// Writes through a pointer to an input.
extern "C" __global__ void seeded_write_input(const float* x) {
    const_cast<float*>(x)[threadIdx.x] = 0.f;
}

// Writes past the dynamic shared memory the launch asked for.
extern "C" __global__ void seeded_dynamic_shared_bound(float* out) {
    CN_DYNAMIC_SHARED(float, part);
    part[threadIdx.x + 1] = 1.f;
    __syncthreads();
    out[threadIdx.x] = part[threadIdx.x];
}

// Writes only the first half of its output.
extern "C" __global__ void seeded_partial_output(float* y, int n) {
    for (int i = threadIdx.x; i < n / 2; i += blockDim.x) y[i] = 1.f;
}

// Write back the arguments they received, field by field, as 64-bit words into their
// output: the launch code's structs arrive as the kernels read them.
extern "C" __global__ void probe_row_bwd_args(CN_PARAMS_RowBwdArgs(float, float)) {
    const cn::RowBwdArgs a = CN_ARGS_RowBwdArgs;
    if (threadIdx.x) return;
    uint64_t* o = static_cast<uint64_t*>(a.dx);
    o[0] = (uint64_t)a.x;
    o[1] = (uint64_t)a.weight;
    o[2] = (uint64_t)a.dy;
    o[3] = (uint64_t)a.partial_dw;
    o[4] = (uint64_t)a.partial_db;
    o[5] = (uint64_t)(int64_t)a.rows;
    o[6] = (uint64_t)(int64_t)a.len;
    o[7] = __float_as_uint(a.eps);
}

extern "C" __global__ void probe_group_last_dx_args(CN_PARAMS_GroupLastDxArgs(__half, float)) {
    const cn::GroupLastDxArgs a = CN_ARGS_GroupLastDxArgs;
    if (threadIdx.x) return;
    uint64_t* o = static_cast<uint64_t*>(a.dx);
    const cn::GroupShape& s = a.shape;
    const int64_t ints[] = {s.rows, s.len, s.spatial, s.per_group, s.groups, s.channels, s.splits, s.chunk, a.flags,
                            a.slices};
    o[0] = (uint64_t)a.x;
    o[1] = (uint64_t)a.weight;
    o[2] = (uint64_t)a.bias;
    o[3] = (uint64_t)a.dy;
    o[4] = (uint64_t)a.moments;
    o[5] = (uint64_t)a.partial_dw;
    o[6] = (uint64_t)a.partial_db;
    for (int i = 0; i < 10; i++) o[7 + i] = (uint64_t)ints[i];
    o[17] = __float_as_uint(a.eps);
}

