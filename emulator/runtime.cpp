// The runtime of candle-norm's CPU emulator of its CUDA kernels.
//
// A launch runs its blocks on a few OS threads (workers), one block at a time each;
// a block's CUDA threads are fibers on its worker, switched by hand (x86-64) or by
// ucontext elsewhere. A fiber runs until it reaches a barrier: `__syncthreads` waits
// for every thread of the block, a warp collective for the lanes of its mask, and the
// last to arrive releases the others. A block whose threads wait at different
// barriers, or one that exits while others wait, is an error (barrier divergence).
//
// Memory: a device's buffers (`cn_emu_alloc`) are mappings with inaccessible guard
// zones around them, each byte with a tag: never written, written by the host, or
// written by the block with that serial number. The kernels are compiled with
// -fsanitize=kernel-address, whose instrumentation calls `__asan_{load,store}*` before
// every memory access; this runtime implements those hooks and checks the access:
//
// - global memory: in bounds of a buffer of the launch, not a write to an input, not a
//   read of bytes never written, not a read or write of bytes another block of the
//   same launch wrote (blocks of one launch cannot order their accesses);
// - shared memory (`__shared__` variables, which are thread_local, and the dynamic
//   arena): not a read of bytes this block has not written, and no race: between two
//   barriers, a byte written by one thread is read or written by no other, and a byte
//   read by one thread is written by no other;
// - vectors (uint4 and uint2 copies): aligned to their 16 or 8 bytes.
//
// The first error stops the launch (the access that found it is not made) and is
// returned as text naming the kernel, the block, the thread and the memory. The stack
// of each fiber, and memory that is none of these, are not checked or are errors as
// described at `check`.

#include "registry.h"
#include "include/cn_emu.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cn_emu {

// Stack of one CUDA thread; an inaccessible page below it catches an overflow.
constexpr size_t STACK_BYTES = 64 * 1024;
// Inaccessible bytes on each side of a global buffer and of the dynamic arena.
constexpr size_t GUARD_BYTES = 1 << 20;
// Dynamic shared memory a launch may ask for: the device's limit without opting in.
constexpr size_t MAX_DYNAMIC_SMEM = 48 * 1024;
// The device's alignment of an allocation.
constexpr size_t ALLOC_ALIGN = 256;
// Tags of global memory bytes below the first block serial.
constexpr uint32_t TAG_UNWRITTEN = 0, TAG_HOST = 1, FIRST_SERIAL = 2;

size_t page() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

// ---- fibers ----

#if defined(__x86_64__)
extern "C" void cn_emu_switch(void** save, void* to);
extern "C" void cn_emu_fiber_entry();
// cn_emu_switch saves the callee-saved registers, MXCSR and the x87 control word on
// the current stack, stores the stack pointer in *save, and resumes the stack `to`.
// A fresh stack resumes in cn_emu_fiber_entry, which calls r13(r12) and never returns.
asm(R"(
.text
.p2align 4
.globl cn_emu_switch
.hidden cn_emu_switch
.type cn_emu_switch,@function
cn_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size cn_emu_switch,.-cn_emu_switch
.p2align 4
.globl cn_emu_fiber_entry
.hidden cn_emu_fiber_entry
.type cn_emu_fiber_entry,@function
cn_emu_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
.size cn_emu_fiber_entry,.-cn_emu_fiber_entry
)");

struct Ctx {
    void* sp = nullptr;
};

void start(Ctx& c, char* lo, size_t bytes, void (*fn)(void*), void* arg) {
    // The frame cn_emu_switch pops: MXCSR and x87 control word, r15, r14, r13 (fn),
    // r12 (arg), rbx, rbp, and the return address; the stack is 16-byte aligned at
    // the call in cn_emu_fiber_entry.
    uint64_t* sp = reinterpret_cast<uint64_t*>(((uintptr_t)(lo + bytes) & ~(uintptr_t)15) - 64);
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    sp[1] = sp[2] = 0;
    sp[3] = (uint64_t)fn;
    sp[4] = (uint64_t)arg;
    sp[5] = sp[6] = 0;
    sp[7] = (uint64_t)&cn_emu_fiber_entry;
    c.sp = sp;
}

void jump(Ctx& from, Ctx& to) { cn_emu_switch(&from.sp, to.sp); }
#else
struct Ctx {
    ucontext_t uc;
};

thread_local void (*start_fn)(void*);
thread_local void* start_arg;

void trampoline() { start_fn(start_arg); }

void start(Ctx& c, char* lo, size_t bytes, void (*fn)(void*), void* arg) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    // Each fiber starts right after being prepared (run_block), so one pair of
    // thread-local slots carries its function and argument.
    start_fn = fn;
    start_arg = arg;
    makecontext(&c.uc, trampoline, 0);
}

void jump(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---- memory ----

struct Buffer {
    uintptr_t lo = 0, hi = 0;          // the bytes a kernel may access
    uintptr_t map_lo = 0, map_hi = 0;  // the mapping, guards included
    std::unique_ptr<std::atomic<uint32_t>[]> tags;
    bool read_only = false;
    std::string name;

    ~Buffer() {
        if (map_lo) munmap(reinterpret_cast<void*>(map_lo), map_hi - map_lo);
    }
};

}  // namespace cn_emu

struct cn_emu_device {
    std::mutex m;
    std::vector<std::unique_ptr<cn_emu::Buffer>> buffers;
};

namespace cn_emu {

// ---- launches, blocks, threads ----

enum class State : uint8_t { Ready, AtBarrier, AtCollective, Done };

struct Block;

struct Lane {
    Ctx ctx;
    char* stack_lo = nullptr;
    char* stack_hi = nullptr;
    Block* blk = nullptr;
    int tid = 0;
    uint3 idx{};
    State state = State::Ready;
    // The warp collective this lane is in.
    int operand = 0, width = 32;
    uint64_t value = 0, result = 0;
};

struct Collective {
    unsigned arrived = 0, mask = 0;
    int kind = 0;
    const char* file = nullptr;
    int line = 0;
};

// A byte of shared memory: the block (serial) and barrier interval (epoch) of its last
// access, the thread that wrote it and the one that read it in that interval
// (-1 none, -2 several readers), and whether this block has written it.
struct SharedByte {
    uint32_t block, epoch;
    int16_t writer, reader;
    uint32_t written;
};

struct Launch {
    const cn_emu_entry* entry = nullptr;
    dim3 grid{}, block{};
    size_t smem = 0;
    void* const* args = nullptr;
    std::vector<const Buffer*> buffers;  // sorted by address
    uint32_t first_serial = 0;
    uint64_t nblocks = 0;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_lock;
    std::string error;

    void fail(const std::string& e) {
        std::lock_guard<std::mutex> g(error_lock);
        if (error.empty()) error = e;
        failed = true;
    }
};

// What an OS thread keeps across the blocks it runs: fiber stacks, the dynamic shared
// memory arena, and the shadows of shared memory.
struct Worker {
    std::vector<char*> stacks;  // each with an inaccessible page below it
    std::vector<Lane> lanes;
    char* arena_map = nullptr;  // guard, MAX_DYNAMIC_SMEM, guard
    char* arena = nullptr;
    std::vector<SharedByte> arena_shadow;
    uintptr_t tls_lo = 0, tls_hi = 0;  // this OS thread's __shared__ variables
    std::vector<SharedByte> tls_shadow;

    Worker() {
        const size_t len = 2 * GUARD_BYTES + MAX_DYNAMIC_SMEM;
        void* m = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) abort();
        arena_map = static_cast<char*>(m);
        arena = arena_map + GUARD_BYTES;
        if (mprotect(arena, MAX_DYNAMIC_SMEM, PROT_READ | PROT_WRITE) != 0) abort();
        arena_shadow.assign(MAX_DYNAMIC_SMEM, SharedByte{0, 0, -1, -1, 0});
    }

    ~Worker() {
        munmap(arena_map, 2 * GUARD_BYTES + MAX_DYNAMIC_SMEM);
        for (char* s : stacks) munmap(s - page(), STACK_BYTES + page());
    }

    void reserve(size_t n) {
        while (stacks.size() < n) {
            void* m = mmap(nullptr, STACK_BYTES + page(), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) abort();
            mprotect(m, page(), PROT_NONE);
            stacks.push_back(static_cast<char*>(m) + page());
        }
        if (lanes.size() < n) lanes.resize(n);
    }

    // The static TLS block of the module holding the kernels, for this OS thread: the
    // kernels' `__shared__` variables are its thread_local variables.
    void find_tls();
};

thread_local char tls_probe;

void Worker::find_tls() {
    struct Found {
        uintptr_t probe, lo, hi;
    } f{(uintptr_t)&tls_probe, 0, 0};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
            auto* f = static_cast<Found*>(data);
            if (!info->dlpi_tls_data) return 0;
            for (int i = 0; i < info->dlpi_phnum; i++) {
                const ElfW(Phdr)& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_TLS) continue;
                const uintptr_t lo = (uintptr_t)info->dlpi_tls_data, hi = lo + ph.p_memsz;
                if (f->probe >= lo && f->probe < hi) {
                    f->lo = lo;
                    f->hi = hi;
                    return 1;
                }
            }
            return 0;
        },
        &f);
    if (!f.lo) abort();
    tls_lo = f.lo;
    tls_hi = f.hi;
    if (tls_shadow.size() < tls_hi - tls_lo) tls_shadow.assign(tls_hi - tls_lo, SharedByte{0, 0, -1, -1, 0});
}

struct Block {
    Launch* L = nullptr;
    Worker* W = nullptr;
    uint3 idx{};
    uint32_t serial = 0, epoch = 0;
    int n = 0, done = 0, at_barrier = 0;
    const char* barrier_file = nullptr;
    int barrier_line = 0;
    Collective warps[32];
    Ctx scheduler;
    bool aborted = false;
    std::string error;
};

thread_local Lane* current = nullptr;

std::atomic<uint32_t> next_serial{FIRST_SERIAL};

std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string where(const Block& b, const Lane* l) {
    const Launch& L = *b.L;
    std::string s = format("%s<<<(%u, %u, %u), (%u, %u, %u), %zu>>>: block (%u, %u, %u)", L.entry->name, L.grid.x,
                           L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z, L.smem, b.idx.x, b.idx.y, b.idx.z);
    if (l) s += format(" thread (%u, %u, %u)", l->idx.x, l->idx.y, l->idx.z);
    return s;
}

// Where in the emulator's build of a kernel the access was made, for addr2line.
std::string code_at(const void* pc) {
    if (!pc) return "";
    Dl_info info;
    if (!dladdr(pc, &info) || !info.dli_fname) return "";
    const uintptr_t off = (uintptr_t)pc - (uintptr_t)info.dli_fbase - 1;
    return format("\n  made by the code at %s+0x%zx (addr2line -Cfie %s 0x%zx)", info.dli_fname, (size_t)off,
                  info.dli_fname, (size_t)off);
}

// Stops the running thread's block with an error: the fiber never resumes.
[[noreturn]] void fail(Lane* l, const std::string& what, const void* pc = nullptr) {
    Block& b = *l->blk;
    if (!b.aborted) {
        b.aborted = true;
        b.error = where(b, l) + ": " + what + code_at(pc);
    }
    jump(l->ctx, b.scheduler);
    abort();
}

std::string thread_name(const Block& b, int tid) {
    const dim3 d = b.L->block;
    return format("thread (%u, %u, %u)", tid % d.x, tid / d.x % d.y, tid / (d.x * d.y));
}

std::string block_name(const Launch& L, uint64_t i) {
    return format("block (%u, %u, %u)", (unsigned)(i % L.grid.x), (unsigned)(i / L.grid.x % L.grid.y),
                  (unsigned)(i / ((uint64_t)L.grid.x * L.grid.y)));
}

const char* verb(bool write) { return write ? "write" : "read"; }

// ---- the memory checks ----

void shared_access(Lane* l, SharedByte* s, uintptr_t off, const char* space, size_t n, bool write, const void* pc) {
    Block& b = *l->blk;
    const int16_t t = (int16_t)l->tid;
    for (size_t i = 0; i < n; i++) {
        SharedByte& e = s[i];
        if (e.block != b.serial) e = SharedByte{b.serial, b.epoch, -1, -1, 0};
        if (e.epoch != b.epoch) {
            e.epoch = b.epoch;
            e.writer = e.reader = -1;
        }
        const char* what = nullptr;
        int other = -1;
        if (write) {
            if (e.writer >= 0 && e.writer != t) {
                what = "written";
                other = e.writer;
            } else if (e.reader == -2 || (e.reader >= 0 && e.reader != t)) {
                what = "read";
                other = e.reader;
            }
        } else {
            if (!e.written) {
                fail(l,
                     format("%zu-byte read of %s at offset %zu: byte %zu was not written by this block (uninitialized)",
                            n, space, (size_t)off, (size_t)(off + i)),
                     pc);
            }
            if (e.writer >= 0 && e.writer != t) {
                what = "written";
                other = e.writer;
            }
        }
        if (what) {
            const std::string by = other == -2 ? std::string("other threads") : thread_name(b, other);
            fail(l,
                 format("race on %s: %zu-byte %s at offset %zu, whose byte %zu %s %s since the last __syncthreads "
                        "(%s:%d)",
                        space, n, verb(write), (size_t)off, (size_t)(off + i), by.c_str(), what,
                        b.barrier_file ? b.barrier_file : "the start of the block", b.barrier_line),
                 pc);
        }
        if (write) {
            e.writer = t;
            e.written = 1;
        } else {
            e.reader = (e.reader == -1 || e.reader == t) ? t : -2;
        }
    }
}

void global_access(Lane* l, const Buffer& buf, uintptr_t a, size_t n, bool write, const void* pc) {
    Block& b = *l->blk;
    const Launch& L = *b.L;
    const size_t off = a - buf.lo, size = buf.hi - buf.lo;
    if (write && buf.read_only) {
        fail(l, format("%zu-byte write at offset %zu of `%s`, an input of the launch", n, off, buf.name.c_str()), pc);
    }
    for (size_t i = 0; i < n; i++) {
        std::atomic<uint32_t>& tag = buf.tags[off + i];
        const uint32_t t = tag.load(std::memory_order_relaxed);
        if (!write && t == TAG_UNWRITTEN) {
            fail(l,
                 format("%zu-byte read at offset %zu of `%s` (%zu bytes): byte %zu was never written "
                        "(uninitialized)",
                        n, off, buf.name.c_str(), size, off + i),
                 pc);
        }
        if (t >= L.first_serial && t != b.serial) {
            fail(l,
                 format("%zu-byte %s at offset %zu of `%s`, whose byte %zu %s wrote in this launch: blocks of one "
                        "launch cannot order their accesses",
                        n, verb(write), off, buf.name.c_str(), off + i,
                        block_name(L, t - L.first_serial).c_str()),
                 pc);
        }
        if (write) tag.store(b.serial, std::memory_order_relaxed);
    }
}

// Checks an access of n bytes at a by the running thread. Its own stack is not
// checked; shared memory and the buffers of the launch are; any other address (a
// wild or null pointer, a buffer of another device) is an error.
__attribute__((noinline)) void check_slow(Lane* l, uintptr_t a, size_t n, bool write, const void* pc) {
    Block& b = *l->blk;
    Worker& w = *b.W;
    const Launch& L = *b.L;
    if (a >= w.tls_lo && a < w.tls_hi) {
        const uintptr_t off = a - w.tls_lo;
        if (a + n > w.tls_hi) fail(l, format("%zu-byte %s past the end of static shared memory", n, verb(write)), pc);
        shared_access(l, &w.tls_shadow[off], off, "static shared memory", n, write, pc);
        return;
    }
    const uintptr_t arena = (uintptr_t)w.arena;
    if (a + n > arena - GUARD_BYTES && a < arena + MAX_DYNAMIC_SMEM + GUARD_BYTES) {
        if (a < arena || a + n > arena + L.smem) {
            fail(l,
                 format("%zu-byte %s at offset %lld of dynamic shared memory, of which the launch has %zu bytes", n,
                        verb(write), (long long)(a - arena), L.smem),
                 pc);
        }
        shared_access(l, &w.arena_shadow[a - arena], a - arena, "dynamic shared memory", n, write, pc);
        return;
    }
    auto it = std::upper_bound(L.buffers.begin(), L.buffers.end(), a,
                               [](uintptr_t v, const Buffer* buf) { return v < buf->map_lo; });
    if (it != L.buffers.begin()) {
        const Buffer& buf = **(it - 1);
        if (a < buf.map_hi) {
            if (a < buf.lo || a + n > buf.hi) {
                fail(l,
                     format("%zu-byte %s at offset %lld of `%s` (%zu bytes): out of bounds", n, verb(write),
                            (long long)(a - buf.lo), buf.name.c_str(), (size_t)(buf.hi - buf.lo)),
                     pc);
            }
            global_access(l, buf, a, n, write, pc);
            return;
        }
    }
    fail(l,
         format("%zu-byte %s at address %#zx, in no buffer of the launch, not shared memory and not the thread's "
                "stack",
                n, verb(write), (size_t)a),
         pc);
}

inline void check(uintptr_t a, size_t n, bool write, const void* pc) {
    Lane* l = current;
    if (!l) return;
    if (a >= (uintptr_t)l->stack_lo && a < (uintptr_t)l->stack_hi) return;
    check_slow(l, a, n, write, pc);
}

// ---- barriers ----

Lane* running(const char* what) {
    Lane* l = current;
    if (!l) {
        fprintf(stderr, "candle-norm emulator: %s called outside a kernel\n", what);
        abort();
    }
    return l;
}

bool same_site(const char* f1, int l1, const char* f2, int l2) { return l1 == l2 && f1 && f2 && !strcmp(f1, f2); }

// The lanes of lane `l`'s warp that wait at a collective.
unsigned warp_waiting(const Block& b, const Lane* l) { return b.warps[l->tid >> 5].arrived; }

void syncthreads(const char* file, int line) {
    Lane* l = running("__syncthreads");
    Block& b = *l->blk;
    if (b.done > 0) {
        fail(l, format("barrier divergence: __syncthreads (%s:%d) after %d thread(s) of the block exited", file, line,
                       b.done));
    }
    if (b.at_barrier > 0 && !same_site(b.barrier_file, b.barrier_line, file, line)) {
        fail(l, format("barrier divergence: __syncthreads at %s:%d while %d thread(s) wait at %s:%d", file, line,
                       b.at_barrier, b.barrier_file, b.barrier_line));
    }
    if (warp_waiting(b, l)) {
        const Collective& c = b.warps[l->tid >> 5];
        fail(l, format("barrier divergence: __syncthreads at %s:%d while lanes %#x of its warp wait at a warp "
                       "collective (%s:%d)",
                       file, line, c.arrived, c.file, c.line));
    }
    b.barrier_file = file;
    b.barrier_line = line;
    l->state = State::AtBarrier;
    if (++b.at_barrier == b.n) {
        Lane* lanes = b.W->lanes.data();
        for (int t = 0; t < b.n; t++) lanes[t].state = State::Ready;
        b.at_barrier = 0;
        b.epoch++;
        return;
    }
    jump(l->ctx, b.scheduler);
}

uint64_t collective(unsigned mask, int kind, uint64_t value, int operand, int width, const char* file, int line) {
    Lane* l = running("a warp collective");
    Block& b = *l->blk;
    const int lane = l->tid & 31, wi = l->tid >> 5;
    const int in_warp = std::min(32, b.n - wi * 32);
    const unsigned exist = in_warp == 32 ? ~0u : (1u << in_warp) - 1u;
    if (!(mask & (1u << lane))) fail(l, format("warp collective at %s:%d: mask %#x leaves out its own lane %d", file, line, mask, lane));
    if (mask & ~exist) {
        fail(l, format("warp collective at %s:%d: mask %#x names lanes the block does not have (%d threads)", file,
                       line, mask, b.n));
    }
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail(l, format("warp collective at %s:%d: width %d is not a power of two up to 32", file, line, width));
    }
    Lane* lanes = b.W->lanes.data() + wi * 32;
    for (int i = 0; i < in_warp; i++) {
        if (!(mask & (1u << i))) continue;
        if (lanes[i].state == State::Done) {
            fail(l, format("barrier divergence: warp collective at %s:%d with lane %d of the mask exited", file, line, i));
        }
        if (lanes[i].state == State::AtBarrier) {
            fail(l, format("barrier divergence: warp collective at %s:%d while lane %d waits at __syncthreads (%s:%d)",
                           file, line, i, b.barrier_file, b.barrier_line));
        }
    }
    Collective& c = b.warps[wi];
    if (c.arrived) {
        if (!same_site(c.file, c.line, file, line) || c.mask != mask || c.kind != kind) {
            fail(l, format("barrier divergence: lane %d at a warp collective at %s:%d (mask %#x) while lanes %#x wait "
                           "at %s:%d (mask %#x)",
                           lane, file, line, mask, c.arrived, c.file, c.line, c.mask));
        }
    } else {
        c.mask = mask;
        c.kind = kind;
        c.file = file;
        c.line = line;
    }
    l->value = value;
    l->operand = operand;
    l->width = width;
    l->state = State::AtCollective;
    c.arrived |= 1u << lane;
    if (c.arrived == mask) {
        unsigned ballot = 0;
        for (int i = 0; i < 32; i++) {
            if ((mask & (1u << i)) && lanes[i].value) ballot |= 1u << i;
        }
        for (int i = 0; i < 32; i++) {
            if (!(mask & (1u << i))) continue;
            Lane& me = lanes[i];
            const int w = me.width, base = i & ~(w - 1);
            int src = i;
            switch (kind) {
                case CN_EMU_SHFL_IDX: src = base + (me.operand & (w - 1)); break;
                case CN_EMU_SHFL_UP: src = i - me.operand >= base ? i - me.operand : i; break;
                case CN_EMU_SHFL_DOWN: src = i + me.operand < base + w ? i + me.operand : i; break;
                case CN_EMU_SHFL_XOR: src = ((i ^ me.operand) & ~(w - 1)) == base ? i ^ me.operand : i; break;
                default: break;
            }
            if (src < 0 || src > 31 || !(mask & (1u << src))) {
                fail(l, format("warp collective at %s:%d: lane %d reads lane %d, which is not in the mask %#x", file,
                               line, i, src, mask));
            }
            me.result = kind == CN_EMU_BALLOT ? ballot : kind == CN_EMU_SYNCWARP ? 0 : lanes[src].value;
            me.state = State::Ready;
        }
        c.arrived = 0;
        return l->result;
    }
    jump(l->ctx, b.scheduler);
    return l->result;
}

// ---- running a launch ----

void lane_main(void* arg) {
    Lane* l = static_cast<Lane*>(arg);
    Block& b = *l->blk;
    b.L->entry->invoke(b.L->entry->fn, b.L->args);
    if (b.at_barrier > 0) {
        fail(l, format("barrier divergence: thread exited while %d thread(s) wait at __syncthreads (%s:%d)",
                       b.at_barrier, b.barrier_file, b.barrier_line));
    }
    const Collective& c = b.warps[l->tid >> 5];
    if (c.arrived && (c.mask & (1u << (l->tid & 31)))) {
        fail(l, format("barrier divergence: lane exited while lanes %#x of its warp wait at a collective (%s:%d)",
                       c.arrived, c.file, c.line));
    }
    l->state = State::Done;
    b.done++;
    jump(l->ctx, b.scheduler);
    abort();
}

std::string deadlock(const Block& b) {
    std::string s = "barrier divergence: no thread can go on:";
    if (b.at_barrier) s += format(" %d thread(s) wait at __syncthreads (%s:%d);", b.at_barrier, b.barrier_file, b.barrier_line);
    for (int w = 0; w < (b.n + 31) / 32; w++) {
        const Collective& c = b.warps[w];
        if (c.arrived) s += format(" lanes %#x of warp %d wait at a warp collective (%s:%d);", c.arrived, w, c.file, c.line);
    }
    if (b.done) s += format(" %d thread(s) exited", b.done);
    return s;
}

void run_block(Worker& w, Launch& L, uint64_t i) {
    Block b;
    b.L = &L;
    b.W = &w;
    b.idx = {(unsigned)(i % L.grid.x), (unsigned)(i / L.grid.x % L.grid.y), (unsigned)(i / ((uint64_t)L.grid.x * L.grid.y))};
    b.serial = L.first_serial + (uint32_t)i;
    b.n = (int)(L.block.x * L.block.y * L.block.z);
    // Shared memory starts with whatever the last block left: fill it with NaNs, so
    // that a read the checks miss still shows.
    if (L.smem) memset(w.arena, 0xff, L.smem);
    for (int t = 0; t < b.n; t++) {
        Lane& l = w.lanes[t];
        l.blk = &b;
        l.tid = t;
        l.idx = {t % L.block.x, t / L.block.x % L.block.y, t / (L.block.x * L.block.y)};
        l.state = State::Ready;
        l.stack_lo = w.stacks[t];
        l.stack_hi = w.stacks[t] + STACK_BYTES;
        start(l.ctx, l.stack_lo, STACK_BYTES, lane_main, &l);
    }
    while (b.done < b.n && !b.aborted) {
        bool ran = false;
        for (int t = 0; t < b.n && !b.aborted; t++) {
            Lane& l = w.lanes[t];
            if (l.state != State::Ready) continue;
            ran = true;
            current = &l;
            jump(b.scheduler, l.ctx);
            current = nullptr;
        }
        if (!ran && !b.aborted) {
            b.aborted = true;
            b.error = where(b, nullptr) + ": " + deadlock(b);
        }
    }
    if (b.aborted) L.fail(b.error);
}

std::mutex pool_lock;
std::vector<std::unique_ptr<Worker>> pool;

std::unique_ptr<Worker> take_worker() {
    {
        std::lock_guard<std::mutex> g(pool_lock);
        if (!pool.empty()) {
            auto w = std::move(pool.back());
            pool.pop_back();
            return w;
        }
    }
    return std::make_unique<Worker>();
}

void give_worker(std::unique_ptr<Worker> w) {
    std::lock_guard<std::mutex> g(pool_lock);
    pool.push_back(std::move(w));
}

void work(Launch& L) {
    auto w = take_worker();
    w->reserve(L.block.x * L.block.y * L.block.z);
    w->find_tls();
    for (;;) {
        const uint64_t i = L.next.fetch_add(1);
        if (i >= L.nblocks || L.failed) break;
        run_block(*w, L, i);
    }
    give_worker(std::move(w));
}

}  // namespace cn_emu

using namespace cn_emu;

extern "C" {

uint3 cn_emu_thread_idx(void) { return current->idx; }
uint3 cn_emu_block_idx(void) { return current->blk->idx; }
dim3 cn_emu_block_dim(void) { return current->blk->L->block; }
dim3 cn_emu_grid_dim(void) { return current->blk->L->grid; }
void* cn_emu_dynamic_shared(void) { return current->blk->W->arena; }
void cn_emu_syncthreads(const char* file, int line) { syncthreads(file, line); }
uint64_t cn_emu_warp(unsigned mask, int kind, uint64_t value, int operand, int width, const char* file, int line) {
    return collective(mask, kind, value, operand, width, file, line);
}

void cn_emu_vector_access(const void* p, int write, int bytes) {
    Lane* l = current;
    if (!l || ((uintptr_t)p >= (uintptr_t)l->stack_lo && (uintptr_t)p < (uintptr_t)l->stack_hi)) return;
    if ((uintptr_t)p % bytes) {
        fail(l,
             format("%d-byte vector %s at %p, which is not %d-byte aligned (the device faults: misaligned address)",
                    bytes, verb(write), p, bytes),
             __builtin_return_address(0));
    }
}

// The hooks of -fsanitize=kernel-address (outlined checks, recovery on).
#define CN_EMU_HOOKS(N)                                                                                  \
    void __asan_load##N##_noabort(uintptr_t a) { check(a, N, false, __builtin_return_address(0)); }   \
    void __asan_store##N##_noabort(uintptr_t a) { check(a, N, true, __builtin_return_address(0)); }   \
    void __asan_load##N(uintptr_t a) { check(a, N, false, __builtin_return_address(0)); }             \
    void __asan_store##N(uintptr_t a) { check(a, N, true, __builtin_return_address(0)); }
CN_EMU_HOOKS(1)
CN_EMU_HOOKS(2)
CN_EMU_HOOKS(4)
CN_EMU_HOOKS(8)
CN_EMU_HOOKS(16)
void __asan_loadN_noabort(uintptr_t a, size_t n) { check(a, n, false, __builtin_return_address(0)); }
void __asan_storeN_noabort(uintptr_t a, size_t n) { check(a, n, true, __builtin_return_address(0)); }
void __asan_loadN(uintptr_t a, size_t n) { check(a, n, false, __builtin_return_address(0)); }
void __asan_storeN(uintptr_t a, size_t n) { check(a, n, true, __builtin_return_address(0)); }
void __asan_handle_no_return(void) {}

// ---- the interface to Rust (src/cuda/emulator.rs) ----

cn_emu_device* cn_emu_device_new(void) { return new cn_emu_device(); }

void cn_emu_device_free(cn_emu_device* d) { delete d; }

// A buffer of `bytes`, starting `offset` bytes past the device's allocation alignment
// (a view's offset into its storage), its bytes unwritten (NaN-filled) or zeroed.
uint64_t cn_emu_alloc(cn_emu_device* d, size_t bytes, size_t offset, int zeroed, int read_only, const char* name) {
    auto buf = std::make_unique<Buffer>();
    const size_t body = round_up(offset % ALLOC_ALIGN + bytes, page());
    const size_t len = 2 * GUARD_BYTES + body;
    void* m = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return 0;
    buf->map_lo = (uintptr_t)m;
    buf->map_hi = buf->map_lo + len;
    char* start = static_cast<char*>(m) + GUARD_BYTES;
    if (body && mprotect(start, body, PROT_READ | PROT_WRITE) != 0) return 0;
    buf->lo = (uintptr_t)start + offset % ALLOC_ALIGN;
    buf->hi = buf->lo + bytes;
    buf->tags.reset(new std::atomic<uint32_t>[bytes ? bytes : 1]);
    const uint32_t tag = zeroed ? TAG_HOST : TAG_UNWRITTEN;
    for (size_t i = 0; i < bytes; i++) buf->tags[i].store(tag, std::memory_order_relaxed);
    memset(reinterpret_cast<void*>(buf->lo), zeroed ? 0 : 0xff, bytes);
    buf->read_only = read_only != 0;
    buf->name = name;
    const uint64_t addr = buf->lo;
    std::lock_guard<std::mutex> g(d->m);
    d->buffers.push_back(std::move(buf));
    return addr;
}

static Buffer* find(cn_emu_device* d, uint64_t addr, size_t bytes) {
    std::lock_guard<std::mutex> g(d->m);
    for (auto& b : d->buffers) {
        if (addr >= b->lo && addr + bytes <= b->hi) return b.get();
    }
    return nullptr;
}

// Copies host bytes into a buffer: they count as written.
int cn_emu_write(cn_emu_device* d, uint64_t addr, const void* src, size_t bytes) {
    Buffer* b = find(d, addr, bytes);
    if (!b) return 1;
    memcpy(reinterpret_cast<void*>(addr), src, bytes);
    for (size_t i = 0; i < bytes; i++) b->tags[addr - b->lo + i].store(TAG_HOST, std::memory_order_relaxed);
    return 0;
}

// Copies a buffer's bytes to the host; with `written`, every byte must have been
// written (by the host or a kernel), else the error names the first that was not.
int cn_emu_read(cn_emu_device* d, uint64_t addr, void* dst, size_t bytes, int written, char* err, size_t errlen) {
    Buffer* b = find(d, addr, bytes);
    if (!b) {
        snprintf(err, errlen, "no buffer holds %zu bytes at %#zx", bytes, (size_t)addr);
        return 1;
    }
    if (written) {
        const size_t off = addr - b->lo;
        for (size_t i = 0; i < bytes; i++) {
            if (b->tags[off + i].load(std::memory_order_relaxed) == TAG_UNWRITTEN) {
                size_t n = 0;
                for (size_t j = i; j < bytes; j++) n += b->tags[off + j].load(std::memory_order_relaxed) == TAG_UNWRITTEN;
                snprintf(err, errlen, "%zu of the %zu bytes of `%s` were never written by the kernels, the first at offset %zu",
                         n, bytes, b->name.c_str(), off + i);
                return 1;
            }
        }
    }
    memcpy(dst, reinterpret_cast<const void*>(addr), bytes);
    return 0;
}

// Runs `entry` on the buffers of `d`, with `workers` OS threads; 0 on success, else
// the error is in `err`.
int cn_emu_launch(cn_emu_device* d, const cn_emu_entry* entry, const unsigned grid[3], const unsigned block[3],
                  size_t smem, void* const* args, size_t nargs, const size_t* arg_sizes, unsigned workers, char* err,
                  size_t errlen) {
    Launch L;
    L.entry = entry;
    L.grid = {grid[0], grid[1], grid[2]};
    L.block = {block[0], block[1], block[2]};
    L.smem = smem;
    L.args = args;
    const std::string at = format("%s<<<(%u, %u, %u), (%u, %u, %u), %zu>>>", entry->name, grid[0], grid[1], grid[2],
                                  block[0], block[1], block[2], smem);
    auto refuse = [&](const std::string& why) {
        snprintf(err, errlen, "%s: %s", at.c_str(), why.c_str());
        return 1;
    };
    if (nargs != entry->nargs) return refuse(format("%zu arguments given, the kernel takes %zu", nargs, entry->nargs));
    for (size_t i = 0; i < nargs; i++) {
        if (arg_sizes[i] != entry->arg_sizes[i]) {
            return refuse(format("argument %zu has %zu bytes, the kernel's parameter %zu", i, arg_sizes[i],
                                 entry->arg_sizes[i]));
        }
    }
    const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64) return refuse("the block shape is not one a device can launch");
    if (threads > entry->max_threads) {
        return refuse(format("%llu threads a block, past the kernel's __launch_bounds__ of %u", (unsigned long long)threads,
                             entry->max_threads));
    }
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535) {
        return refuse("the grid shape is not one a device can launch");
    }
    if (smem > MAX_DYNAMIC_SMEM) {
        return refuse(format("%zu bytes of dynamic shared memory, past the %zu a launch may ask for", smem,
                             MAX_DYNAMIC_SMEM));
    }
    L.nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    if (L.nblocks > 0x40000000ull) return refuse("more blocks than the emulator numbers");
    {
        std::lock_guard<std::mutex> g(d->m);
        for (auto& b : d->buffers) L.buffers.push_back(b.get());
    }
    std::sort(L.buffers.begin(), L.buffers.end(), [](const Buffer* a, const Buffer* b) { return a->map_lo < b->map_lo; });
    // Serial numbers of this launch's blocks: above every tag written before it.
    uint32_t first = next_serial.fetch_add((uint32_t)L.nblocks);
    if (first > 0xffffffffu - L.nblocks) return refuse("the emulator ran out of block serial numbers");
    L.first_serial = first;
    const unsigned n = (unsigned)std::min<uint64_t>(std::max(workers, 1u), L.nblocks);
    std::vector<std::thread> others;
    for (unsigned i = 1; i < n; i++) others.emplace_back([&L] { work(L); });
    work(L);
    for (auto& t : others) t.join();
    if (L.failed) {
        snprintf(err, errlen, "%s", L.error.c_str());
        return 1;
    }
    return 0;
}

// The shim's conversions, for the tests that hold them against the `half` crate.
uint16_t cn_emu_f32_to_f16(float f) { return __float2half_rn(f).__x; }
float cn_emu_f16_to_f32(uint16_t h) { return __half2float(__half{h}); }
uint16_t cn_emu_f32_to_bf16(float f) { return __float2bfloat16_rn(f).__x; }
float cn_emu_bf16_to_f32(uint16_t h) { return __bfloat162float(__nv_bfloat16{h}); }

}  // extern "C"
