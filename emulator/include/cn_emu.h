// The CUDA shim of candle-norm's CPU emulator: what a kernel source needs from CUDA,
// for a host C++17 compiler. The kernels compile unchanged against it; each CUDA
// thread runs as a fiber of the runtime (runtime.cpp), each block on one OS thread.
//
// - `__global__`, `__device__`, `__host__`, `__launch_bounds__` are erased (the entry
//   registry reads the launch bounds before they are); `__shared__` variables are
//   `thread_local`, so one block's fibers share them; `CN_DYNAMIC_SHARED` is the
//   block's dynamic shared memory, an arena of the runtime.
// - `threadIdx`, `blockIdx`, `blockDim`, `gridDim` are the running fiber's.
// - `__syncthreads`, `__syncwarp` and the warp collectives (`__shfl*_sync`,
//   `__ballot_sync`, `__any_sync`, `__all_sync`) are barriers between the fibers of the
//   block or warp, each knowing its call site, so that divergence is an error.
// - `__half` and `__nv_bfloat16` convert bit for bit as the device does (round to
//   nearest even, subnormals kept, NaN to the canonical 0x7fff).
// - `uint4` and `uint2` copies are 16- and 8-byte accesses, checked for alignment as
//   the device checks vector loads and stores.
//
// Every global and shared memory access of a kernel compiled for the emulator is
// checked by the runtime (compiled with -fsanitize=kernel-address, whose hooks the
// runtime implements): bounds, uninitialized reads, shared-memory races between
// barriers, and writes of one block read or written by another in the same launch.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#ifndef CN_EMU_KEEP_LAUNCH_BOUNDS
#define __launch_bounds__(...)
#endif
#define __shared__ thread_local
// The block's dynamic shared memory (nvcc: an `extern __shared__` array).
#define CN_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(cn_emu_dynamic_shared())

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct int2 {
    int x, y;
};

typedef unsigned int cn_emu_v4u __attribute__((vector_size(16), may_alias));
typedef unsigned int cn_emu_v2u __attribute__((vector_size(8), may_alias));

extern "C" {
// The running fiber's built-in variables: constant for the life of a CUDA thread.
uint3 cn_emu_thread_idx(void) __attribute__((const));
uint3 cn_emu_block_idx(void) __attribute__((const));
dim3 cn_emu_block_dim(void) __attribute__((const));
dim3 cn_emu_grid_dim(void) __attribute__((const));
void* cn_emu_dynamic_shared(void) __attribute__((const));
void cn_emu_syncthreads(const char* file, int line);
// A warp collective: kind (CN_EMU_SHFL_*), the lane's value and operand; returns what
// the lane receives.
uint64_t cn_emu_warp(unsigned mask, int kind, uint64_t value, int operand, int width, const char* file, int line);
// A vector access of `bytes` (8 or 16) at p (checked for that alignment).
void cn_emu_vector_access(const void* p, int write, int bytes);
}

enum { CN_EMU_SHFL_IDX, CN_EMU_SHFL_UP, CN_EMU_SHFL_DOWN, CN_EMU_SHFL_XOR, CN_EMU_BALLOT, CN_EMU_SYNCWARP };

#define threadIdx (cn_emu_thread_idx())
#define blockIdx (cn_emu_block_idx())
#define blockDim (cn_emu_block_dim())
#define gridDim (cn_emu_grid_dim())
#define warpSize 32

// Copies the vector `from` into `to` as one access of the raw vector type R (its size:
// 8 or 16 bytes), the read checked for that alignment, and the write too when `to` is
// an existing vector (assignment) rather than one being made (a copy into a register).
template <typename R, typename V>
inline void cn_emu_vector_copy(V* to, const V* from, bool store) noexcept {
    static_assert(sizeof(R) == sizeof(V), "a vector copied as one raw access of its size");
    cn_emu_vector_access(from, 0, sizeof(V));
    if (store) cn_emu_vector_access(to, 1, sizeof(V));
    *reinterpret_cast<R*>(to) = *reinterpret_cast<const R*>(from);
}

// A 16-byte vector: copying one is a single checked 16-byte load and store.
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
    uint4() = default;
    uint4(const uint4& o) noexcept { cn_emu_vector_copy<cn_emu_v4u>(this, &o, false); }
    uint4& operator=(const uint4& o) noexcept {
        cn_emu_vector_copy<cn_emu_v4u>(this, &o, true);
        return *this;
    }
};

// An 8-byte vector, checked as uint4 is.
struct alignas(8) uint2 {
    unsigned int x, y;
    uint2() = default;
    uint2(const uint2& o) noexcept { cn_emu_vector_copy<cn_emu_v2u>(this, &o, false); }
    uint2& operator=(const uint2& o) noexcept {
        cn_emu_vector_copy<cn_emu_v2u>(this, &o, true);
        return *this;
    }
};

inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
    uint4 r;
    r.x = x;
    r.y = y;
    r.z = z;
    r.w = w;
    return r;
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }

// Math: the device's approximate intrinsics are computed exactly here (rsqrtf,
// __expf, __fdividef); results may differ from a GPU's in the last bits.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) {
    int i;
    memcpy(&i, &x, 4);
    return i;
}
inline float __int_as_float(int i) {
    float x;
    memcpy(&x, &i, 4);
    return x;
}
inline unsigned __float_as_uint(float x) {
    unsigned i;
    memcpy(&i, &x, 4);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float x;
    memcpy(&x, &i, 4);
    return x;
}
template <typename T> inline T __ldg(const T* p) { return *p; }

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    cn_emu_syncthreads(file, line);
}

template <typename T> inline uint64_t cn_emu_bits(T v) {
    static_assert(sizeof(T) <= 8, "a warp collective moves at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> inline T cn_emu_from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    cn_emu_warp(mask, CN_EMU_SYNCWARP, 0, 0, 32, file, line);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    return cn_emu_from_bits<T>(cn_emu_warp(mask, CN_EMU_SHFL_IDX, cn_emu_bits(v), src, width, file, line));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    return cn_emu_from_bits<T>(cn_emu_warp(mask, CN_EMU_SHFL_UP, cn_emu_bits(v), (int)delta, width, file, line));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
    return cn_emu_from_bits<T>(cn_emu_warp(mask, CN_EMU_SHFL_DOWN, cn_emu_bits(v), (int)delta, width, file, line));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    return cn_emu_from_bits<T>(cn_emu_warp(mask, CN_EMU_SHFL_XOR, cn_emu_bits(v), lane_mask, width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return (unsigned)cn_emu_warp(mask, CN_EMU_BALLOT, pred != 0, 0, 32, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return __ballot_sync(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (__ballot_sync(mask, pred, file, line) & mask) == mask;
}

// ---- half precision, bit for bit as the device converts ----

struct __half {
    unsigned short __x;
};
struct __nv_bfloat16 {
    unsigned short __x;
};

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16;
    const uint32_t exp = (h.__x >> 10) & 0x1fu, man = h.__x & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        // A subnormal: normalize the mantissa.
        int e = 113;
        uint32_t m = man;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        bits = sign | ((uint32_t)e << 23) | ((m & 0x3ffu) << 13);
    }
    return __uint_as_float(bits);
}

inline __half __float2half_rn(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    __half h;
    if (ax > 0x7f800000u) {
        h.__x = 0x7fff;  // NaN
    } else if (ax >= 0x477ff000u) {
        h.__x = (unsigned short)(sign | 0x7c00u);  // rounds to infinity (or is)
    } else if (ax >= 0x38800000u) {
        // Normal: rebias the exponent, round the 13 dropped bits to nearest even.
        const uint32_t r = ax - 0x38000000u;
        h.__x = (unsigned short)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
    } else if (ax <= 0x33000000u) {
        h.__x = (unsigned short)sign;  // at most half the smallest subnormal: zero
    } else {
        // Subnormal: the value in units of 2^-24, rounded to nearest even.
        const uint32_t exp = ax >> 23, man = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - exp;  // 14..25
        const uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        const uint32_t up = rem > half || (rem == half && (q & 1u));
        h.__x = (unsigned short)(sign | (q + up));
    }
    return h;
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((uint32_t)b.__x << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const uint32_t x = __float_as_uint(f);
    __nv_bfloat16 b;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        b.__x = 0x7fff;  // NaN
    } else {
        b.__x = (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    return b;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
