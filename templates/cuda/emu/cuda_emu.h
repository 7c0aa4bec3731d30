/*
 * cuda_emu.h -- convgen's CUDA emulation harness: run a generated CUDA kernel on the CPU.
 *
 * The generated .cu source is compiled by the host C++ compiler with -DCONVGEN_EMULATE and
 * this header in place of <cuda_runtime.h>. What it provides, and how:
 *
 *  - A launch (CG_LAUNCH in the kernel source) runs the grid's blocks one after another. The
 *    threads of a block are cooperative fibers (ucontext), each on a stack of its own with a
 *    guard page. A fiber runs until it reaches __syncthreads(), a warp collective, or its
 *    end; the block's scheduler then runs the next one. A barrier opens when every thread
 *    that has not exited waits at it (Volta+ semantics); threads waiting at different
 *    barriers are reported as a deadlock.
 *  - threadIdx, blockIdx, blockDim, gridDim, warpSize; __shared__ (static storage: blocks
 *    run one at a time, so one copy is the block's shared memory); dynamic shared memory
 *    (CG_DYNAMIC_SHARED), filled with NaN bytes at the start of every block so that a read
 *    of a tile element nobody wrote shows up in the result.
 *  - Global memory is reached only through gptr<T> (GPTR(T) in kernels): each access is
 *    checked against the buffers registered for the launch (CG_BUFFER). An access outside
 *    them ends the launch with cudaErrorIllegalAddress and a message naming the buffer, the
 *    element, the thread, the block and the kernel -- never a crash.
 *  - atomicAdd, __syncwarp and the __shfl_*_sync shuffles (through the same barrier
 *    mechanism, per warp); the cp.async pipeline primitives (__pipeline_memcpy_async /
 *    commit / wait_prior), whose copies are queued per thread and performed only when
 *    waited for, so reading a stage too early reads NaN; and nvcuda::wmma with TF32
 *    fragments: each thread holds the whole tile and computes the whole product, inputs
 *    truncated to TF32 as the tensor cores do, accumulation in float.
 *  - The sm_80 instructions of the GEMM main loop, exactly, for the kernels' inline-PTX
 *    wrappers (templates/cuda/_common.cuh.j2): cp.async.cg of 16 bytes with zero-fill,
 *    ldmatrix.x4 and mma.sync.m16n8k8 TF32 (warp collectives over the PTX ISA's fragment
 *    layouts), shared memory addressed by 32-bit offsets and bounds-checked.
 *  - The few runtime calls the launchers make: cudaMemsetAsync, cudaFuncSetAttribute,
 *    cudaMallocAsync / cudaFreeAsync (workspaces, registered and NaN-filled),
 *    cudaGetLastError, cudaGetErrorString.
 *
 * Not emulated: Hopper's TMA, mbarriers and wgmma (the wgmma_gemm kernel refuses to build
 * here; it is proven on a GPU only).
 *
 * Limits, checked at launch: 1024 threads per block, grid y/z <= 65535, dynamic shared
 * memory <= 48 KiB unless raised by cudaFuncSetAttribute, and never above
 * CG_EMU_SMEM_OPTIN (the emulated architecture's opt-in maximum).
 *
 * This is C++17 we own; it is kept small and is tested on its own (tests/test_cuda_emu.py).
 */
#pragma once

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#ifndef CG_EMU_SMEM_OPTIN
#define CG_EMU_SMEM_OPTIN (227 * 1024)
#endif

/* -- CUDA's spellings ------------------------------------------------------------------ */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define warpSize 32

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st *cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace cuda_emu {

enum class State { ready, block_barrier, warp_barrier, done };

struct Fiber {
    ucontext_t context;
    State state;
    dim3 thread;
    unsigned linear;              /* x + y * bx + z * bx * by: the lane is linear % 32 */
    unsigned long long exchange;  /* this thread's slot for warp shuffles */
    unsigned char slot[64];       /* this thread's part of a warp-wide operation (mma, ldmatrix) */
    /* cp.async: queued copies; each carries the number of the group it was committed in */
    struct Copy { void *dst; const void *src; size_t size, zfill; unsigned group; };
    Copy *copies;
    unsigned copy_count, copy_capacity, committed;
};

struct Buffer { const char *name; const char *begin; size_t bytes; };
enum { MAX_BUFFERS = 16, STACK_BYTES = 256 * 1024, MAX_THREADS = 1024 };

struct Launch {
    const char *kernel = "";
    dim3 grid, block, block_index;
    Fiber *current = nullptr;
    ucontext_t scheduler;
    void (*body)(void *) = nullptr;
    void *body_arg = nullptr;
    unsigned char *dynamic_shared = nullptr;
    size_t dynamic_bytes = 0;
    bool failed = false;
};

struct Runtime {
    Launch *launch = nullptr;
    Buffer buffers[MAX_BUFFERS];
    unsigned buffer_count = 0;
    Fiber fibers[MAX_THREADS];
    unsigned char *stacks[MAX_THREADS] = {};
    unsigned char *dynamic_shared = nullptr;
    size_t dynamic_capacity = 0;
    cudaError_t last_error = cudaSuccess;
    char message[2048] = "";
    /* cudaFuncSetAttribute(MaxDynamicSharedMemorySize): per kernel function */
    const void *raised_kernels[32] = {};
    int raised_bytes[32] = {};
    unsigned raised_count = 0;
};

inline Runtime &runtime() {
    static thread_local Runtime state;
    return state;
}

inline Launch &launch_state() { return *runtime().launch; }
inline Fiber &current_fiber() { return *runtime().launch->current; }

/* -- errors ----------------------------------------------------------------------------- */
inline void set_error(cudaError_t code, const char *fmt, va_list args) {
    Runtime &rt = runtime();
    rt.last_error = code;
    vsnprintf(rt.message, sizeof rt.message, fmt, args);
}

inline void record_error(cudaError_t code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    set_error(code, fmt, args);
    va_end(args);
}

/* A fault inside a kernel: record it with where it happened, end the launch. Never returns:
   the fiber is abandoned (its stack is unmapped when the launch ends). */
[[noreturn]] inline void fault(cudaError_t code, const char *fmt, ...) {
    Runtime &rt = runtime();
    Launch &l = *rt.launch;
    char what[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof what, fmt, args);
    va_end(args);
    const dim3 t = l.current->thread, b = l.block_index;
    record_error(code, "%s, by thread (%u,%u,%u) of block (%u,%u,%u) in kernel %s", what, t.x,
                 t.y, t.z, b.x, b.y, b.z, l.kernel);
    l.failed = true;
    swapcontext(&l.current->context, &l.scheduler);
    abort(); /* unreachable: a failed launch never resumes its fibers */
}

/* -- global memory: registered buffers and checked pointers ------------------------------- */
inline void register_buffer(const void *begin, size_t bytes, const char *name) {
    Runtime &rt = runtime();
    for (unsigned i = 0; i < rt.buffer_count; ++i)
        if (strcmp(rt.buffers[i].name, name) == 0) {
            rt.buffers[i] = Buffer{name, static_cast<const char *>(begin), bytes};
            return;
        }
    if (rt.buffer_count < MAX_BUFFERS)
        rt.buffers[rt.buffer_count++] = Buffer{name, static_cast<const char *>(begin), bytes};
}

inline const Buffer *find_buffer(const void *p) {
    Runtime &rt = runtime();
    const char *c = static_cast<const char *>(p);
    for (unsigned i = 0; i < rt.buffer_count; ++i) {
        const Buffer &b = rt.buffers[i];
        if (b.begin && c >= b.begin && c < b.begin + (b.bytes ? b.bytes : 1))
            return &b;
    }
    return nullptr;
}

template <class T>
struct gptr {
    T *p = nullptr;
    const Buffer *buffer = nullptr;

    gptr() = default;
    gptr(T *raw) : p(raw), buffer(raw ? find_buffer(raw) : nullptr) {}
    gptr(T *raw, const Buffer *b) : p(raw), buffer(b) {}
    template <class U>
    gptr(const gptr<U> &other) : p(other.p), buffer(other.buffer) {}

    /* Pointer arithmetic is unchecked (forming an address is harmless); using one is not. */
    gptr operator+(ptrdiff_t i) const { return gptr(shift(i), buffer); }
    gptr operator-(ptrdiff_t i) const { return gptr(shift(-i), buffer); }
    gptr &operator+=(ptrdiff_t i) { p = shift(i); return *this; }
    T &operator[](ptrdiff_t i) const { return *checked(shift(i)); }
    T &operator*() const { return *checked(p); }
    explicit operator bool() const { return p != nullptr; }

    T *shift(ptrdiff_t i) const {
        return reinterpret_cast<T *>(reinterpret_cast<uintptr_t>(p) + i * (ptrdiff_t)sizeof(T));
    }
    T *checked(T *q) const {
        const char *access = std::is_const<T>::value ? "read" : "read/write";
        if (!buffer)
            fault(cudaErrorIllegalAddress,
                  "global memory %s at %p through a pointer into no registered buffer (a null "
                  "or foreign pointer)", access, (const void *)q);
        const ptrdiff_t offset = reinterpret_cast<const char *>(q) - buffer->begin;
        if (offset < 0 || (size_t)offset + sizeof(T) > buffer->bytes) {
            const ptrdiff_t element = offset >= 0 ? offset / (ptrdiff_t)sizeof(T)
                                                  : -((-offset + (ptrdiff_t)sizeof(T) - 1) / (ptrdiff_t)sizeof(T));
            fault(cudaErrorIllegalAddress,
                  "out-of-bounds global memory %s: %s[%td] (the buffer holds %zu elements of "
                  "%zu bytes)", access, buffer->name, element, buffer->bytes / sizeof(T),
                  sizeof(T));
        }
        return q;
    }
};

/* -- barriers: a fiber waits, the scheduler releases ------------------------------------- */
inline void wait(State why) {
    Launch &l = launch_state();
    Fiber &f = *l.current;
    f.state = why;
    swapcontext(&f.context, &l.scheduler);
}

inline void fiber_entry() {
    Launch &l = launch_state();
    l.body(l.body_arg);
    l.current->state = State::done;   /* uc_link returns to the scheduler */
}

inline unsigned char *stack_of(unsigned i) {
    Runtime &rt = runtime();
    if (!rt.stacks[i]) {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return nullptr;
        mprotect(m, page, PROT_NONE);   /* guard page: an overflow faults, never corrupts */
        rt.stacks[i] = static_cast<unsigned char *>(m) + page;
    }
    return rt.stacks[i];
}

/* A launch's fiber stacks go back to the system when it ends. Every kernel is a library of
   its own with a runtime of its own, and a stack is two mappings (the guard page splits
   it): kept for the next launch, a process that loads a few hundred kernels reached the
   kernel's limit of 65530 mappings, and dlopen failed. */
inline void release_stacks(Runtime &rt) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (unsigned i = 0; i < MAX_THREADS; ++i)
        if (rt.stacks[i]) {
            munmap(rt.stacks[i] - page, STACK_BYTES + page);
            rt.stacks[i] = nullptr;
        }
}

inline const char *state_name(State s) {
    return s == State::block_barrier ? "__syncthreads()" : "a warp collective";
}

/* Release what can be released; false when nothing can (a deadlock). */
inline bool release(Fiber *fibers, unsigned n) {
    bool released = false;
    unsigned waiting_block = 0, alive = 0;
    for (unsigned i = 0; i < n; ++i) {
        if (fibers[i].state == State::done) continue;
        ++alive;
        waiting_block += fibers[i].state == State::block_barrier;
    }
    for (unsigned w = 0; w < n; w += 32) {   /* a warp collective opens per warp */
        unsigned end = w + 32 < n ? w + 32 : n, live = 0, at = 0;
        for (unsigned i = w; i < end; ++i) {
            live += fibers[i].state != State::done;
            at += fibers[i].state == State::warp_barrier;
        }
        if (at && at == live) {
            for (unsigned i = w; i < end; ++i)
                if (fibers[i].state == State::warp_barrier) fibers[i].state = State::ready;
            released = true;
        }
    }
    if (!released && waiting_block && waiting_block == alive) {
        for (unsigned i = 0; i < n; ++i)
            if (fibers[i].state == State::block_barrier) fibers[i].state = State::ready;
        released = true;
    }
    return released;
}

inline void deadlock(Fiber *fibers, unsigned n) {
    Launch &l = launch_state();
    unsigned a = 0, b = 0;
    for (unsigned i = 0; i < n; ++i)
        if (fibers[i].state != State::done) { a = i; break; }
    for (unsigned i = 0; i < n; ++i)
        if (fibers[i].state != State::done && fibers[i].state != fibers[a].state) { b = i; break; }
    const dim3 ta = fibers[a].thread, tb = fibers[b].thread, bi = l.block_index;
    record_error(cudaErrorLaunchFailure,
                 "deadlock: thread (%u,%u,%u) waits at %s while thread (%u,%u,%u) waits at %s "
                 "(divergent barrier) in block (%u,%u,%u) of kernel %s", ta.x, ta.y, ta.z,
                 state_name(fibers[a].state), tb.x, tb.y, tb.z, state_name(fibers[b].state),
                 bi.x, bi.y, bi.z, l.kernel);
    l.failed = true;
}

inline void free_copies(Fiber &f) {
    free(f.copies);
    f.copies = nullptr;
    f.copy_count = f.copy_capacity = f.committed = 0;
}

/* Run one block: every thread a fiber, round robin between barriers. */
inline bool run_block(size_t dynamic_bytes) {
    Runtime &rt = runtime();
    Launch &l = *rt.launch;
    const unsigned n = l.block.x * l.block.y * l.block.z;
    if (dynamic_bytes) memset(l.dynamic_shared, 0xff, dynamic_bytes);   /* NaN: unwritten */
    for (unsigned i = 0; i < n; ++i) {
        Fiber &f = rt.fibers[i];
        f.state = State::ready;
        f.linear = i;
        f.thread = dim3(i % l.block.x, (i / l.block.x) % l.block.y, i / (l.block.x * l.block.y));
        f.copy_count = f.committed = 0;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = stack_of(i);
        f.context.uc_stack.ss_size = STACK_BYTES;
        f.context.uc_link = &l.scheduler;
        if (!f.context.uc_stack.ss_sp) {
            record_error(cudaErrorMemoryAllocation, "cuda_emu: no memory for a fiber stack");
            return false;
        }
        makecontext(&f.context, fiber_entry, 0);
    }
    for (;;) {
        for (unsigned i = 0; i < n; ++i) {
            if (rt.fibers[i].state != State::ready) continue;
            l.current = &rt.fibers[i];
            swapcontext(&l.scheduler, &rt.fibers[i].context);
            if (l.failed) return false;
        }
        bool all_done = true;
        for (unsigned i = 0; i < n; ++i) all_done &= rt.fibers[i].state == State::done;
        if (all_done) return true;
        if (!release(rt.fibers, n)) {   /* nobody can run, nobody can be released */
            deadlock(rt.fibers, n);
            return false;
        }
    }
}

inline int raised_limit(const void *kernel) {
    Runtime &rt = runtime();
    for (unsigned i = 0; i < rt.raised_count; ++i)
        if (rt.raised_kernels[i] == kernel) return rt.raised_bytes[i];
    return 48 * 1024;
}

inline cudaError_t run(const char *name, const void *kernel, dim3 grid, dim3 block,
                       size_t dynamic_bytes, void (*body)(void *), void *arg) {
    Runtime &rt = runtime();
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > MAX_THREADS || block.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
        record_error(cudaErrorInvalidConfiguration,
                     "invalid launch configuration of kernel %s: grid (%u,%u,%u), block "
                     "(%u,%u,%u)", name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return rt.last_error;
    }
    if (dynamic_bytes > (size_t)raised_limit(kernel) || dynamic_bytes > CG_EMU_SMEM_OPTIN) {
        record_error(cudaErrorInvalidValue,
                     "kernel %s asks for %zu bytes of dynamic shared memory; the limit is %d "
                     "(raise it with cudaFuncSetAttribute, up to %d)", name, dynamic_bytes,
                     raised_limit(kernel), (int)CG_EMU_SMEM_OPTIN);
        return rt.last_error;
    }
    if (dynamic_bytes > rt.dynamic_capacity) {
        free(rt.dynamic_shared);
        rt.dynamic_shared = static_cast<unsigned char *>(aligned_alloc(128, (dynamic_bytes + 127) / 128 * 128));
        rt.dynamic_capacity = rt.dynamic_shared ? dynamic_bytes : 0;
        if (!rt.dynamic_shared) {
            record_error(cudaErrorMemoryAllocation, "cuda_emu: no memory for shared memory");
            return rt.last_error;
        }
    }
    Launch l;
    l.kernel = name;
    l.grid = grid;
    l.block = block;
    l.body = body;
    l.body_arg = arg;
    l.dynamic_shared = rt.dynamic_shared;
    l.dynamic_bytes = dynamic_bytes;
    rt.launch = &l;
    bool ok = true;
    for (unsigned z = 0; ok && z < grid.z; ++z)
        for (unsigned y = 0; ok && y < grid.y; ++y)
            for (unsigned x = 0; ok && x < grid.x; ++x) {
                l.block_index = dim3(x, y, z);
                ok = run_block(dynamic_bytes);
            }
    for (unsigned i = 0; i < threads; ++i) free_copies(rt.fibers[i]);
    release_stacks(rt);
    rt.launch = nullptr;
    if (ok) return cudaSuccess;
    return rt.last_error;
}

/* The launch macro's target: converts the arguments to the kernel's parameter types once
   (raw pointers become checked gptrs here), then runs the grid. */
template <class... Params, class... Args>
cudaError_t launch(const char *name, void (*kernel)(Params...), dim3 grid, dim3 block,
                   size_t dynamic_bytes, cudaStream_t, Args &&...args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
    std::tuple<Params...> params(static_cast<Params>(std::forward<Args>(args))...);
    struct Call { void (*kernel)(Params...); std::tuple<Params...> *params; } call{kernel, &params};
    auto body = [](void *p) {
        Call *c = static_cast<Call *>(p);
        std::apply(c->kernel, *c->params);
    };
    return run(name, reinterpret_cast<const void *>(kernel), grid, block, dynamic_bytes, body,
               &call);
}

inline unsigned char *dynamic_shared() { return launch_state().dynamic_shared; }

/* -- warp collectives -------------------------------------------------------------------- */
inline void syncwarp() { wait(State::warp_barrier); }

template <class T>
T shuffle(T value, unsigned source_lane) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a scalar");
    Runtime &rt = runtime();
    Fiber &f = current_fiber();
    memcpy(&f.exchange, &value, sizeof(T));
    syncwarp();                                   /* every lane has published its value */
    const unsigned warp0 = f.linear / 32 * 32;
    const unsigned n = launch_state().block.x * launch_state().block.y * launch_state().block.z;
    unsigned source = warp0 + source_lane % 32;
    if (source >= n) source = f.linear;           /* a lane past the block's end: own value */
    T result;
    memcpy(&result, &rt.fibers[source].exchange, sizeof(T));
    syncwarp();                                   /* every lane has read before a new round */
    return result;
}

/* -- cp.async ------------------------------------------------------------------------------ */
inline void queue_copy(void *dst, const void *src, size_t size, size_t zfill) {
    Fiber &f = current_fiber();
    if (f.copy_count == f.copy_capacity) {
        f.copy_capacity = f.copy_capacity ? 2 * f.copy_capacity : 16;
        f.copies = static_cast<Fiber::Copy *>(realloc(f.copies, f.copy_capacity * sizeof(Fiber::Copy)));
        if (!f.copies) fault(cudaErrorMemoryAllocation, "cuda_emu: no memory for cp.async");
    }
    f.copies[f.copy_count++] = Fiber::Copy{dst, src, size, zfill, f.committed};
}

inline void wait_prior(unsigned pending_allowed) {
    Fiber &f = current_fiber();
    /* groups committed so far: 0 .. committed-1; perform those older than the newest N */
    const unsigned limit = f.committed > pending_allowed ? f.committed - pending_allowed : 0;
    unsigned kept = 0;
    for (unsigned i = 0; i < f.copy_count; ++i) {
        Fiber::Copy &c = f.copies[i];
        if (c.group < limit) {
            memcpy(c.dst, c.src, c.size - c.zfill);
            memset(static_cast<char *>(c.dst) + (c.size - c.zfill), 0, c.zfill);
        } else {
            f.copies[kept++] = c;
        }
    }
    f.copy_count = kept;
}

}  // namespace cuda_emu

/* -- the CUDA names kernels use ------------------------------------------------------------ */
#define threadIdx (::cuda_emu::current_fiber().thread)
#define blockIdx (::cuda_emu::launch_state().block_index)
#define blockDim (::cuda_emu::launch_state().block)
#define gridDim (::cuda_emu::launch_state().grid)

inline void __syncthreads() { ::cuda_emu::wait(::cuda_emu::State::block_barrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::cuda_emu::syncwarp(); }

template <class T>
T __shfl_sync(unsigned, T v, int lane, int = 32) { return ::cuda_emu::shuffle(v, (unsigned)lane); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return ::cuda_emu::shuffle(v, (::cuda_emu::current_fiber().linear % 32) ^ (unsigned)mask);
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
    const unsigned lane = ::cuda_emu::current_fiber().linear % 32;
    return ::cuda_emu::shuffle(v, lane + delta < 32 ? lane + delta : lane);
}

/* Single OS thread, one fiber at a time: an atomic is a checked read-modify-write. */
template <class T, class U>
T atomicAdd(::cuda_emu::gptr<T> p, U value) {
    T &slot = *p;
    T old = slot;
    slot = old + (T)value;
    return old;
}

template <class T>
void __pipeline_memcpy_async(T *dst, ::cuda_emu::gptr<const T> src, size_t size,
                             size_t zfill = 0) {
    if (zfill < size) {   /* the bytes that will be read: first and last element checked */
        (void)*src;
        (void)src[(ptrdiff_t)((size - zfill) / sizeof(T)) - 1];
    }
    ::cuda_emu::queue_copy(dst, src.p, size, zfill);
}
inline void __pipeline_commit() { ++::cuda_emu::current_fiber().committed; }
inline void __pipeline_wait_prior(unsigned n) { ::cuda_emu::wait_prior(n); }

inline cudaError_t cudaGetLastError() {
    cudaError_t e = ::cuda_emu::runtime().last_error;
    ::cuda_emu::runtime().last_error = cudaSuccess;
    return e;
}

inline const char *cudaGetErrorString(cudaError_t code) {
    if (code == cudaSuccess) return "no error";
    return ::cuda_emu::runtime().message;   /* the detailed message of the last failure */
}

template <class T>
cudaError_t cudaMemsetAsync(T *p, int value, size_t bytes, cudaStream_t = nullptr) {
    const ::cuda_emu::Buffer *b = ::cuda_emu::find_buffer(p);
    if (bytes && (!b || (const char *)p + bytes > b->begin + b->bytes)) {
        ::cuda_emu::record_error(cudaErrorInvalidValue,
                                 "cudaMemsetAsync of %zu bytes at %p is outside every "
                                 "registered buffer", bytes, (const void *)p);
        return cudaErrorInvalidValue;
    }
    memset((void *)p, value, bytes);
    return cudaSuccess;
}

template <class K>
cudaError_t cudaFuncSetAttribute(K *kernel, cudaFuncAttribute attribute, int value) {
    ::cuda_emu::Runtime &rt = ::cuda_emu::runtime();
    if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        value > CG_EMU_SMEM_OPTIN) {
        ::cuda_emu::record_error(cudaErrorInvalidValue,
                                 "cudaFuncSetAttribute: %d bytes of dynamic shared memory "
                                 "exceed the architecture's %d", value, (int)CG_EMU_SMEM_OPTIN);
        return cudaErrorInvalidValue;
    }
    const void *key = reinterpret_cast<const void *>(kernel);
    for (unsigned i = 0; i < rt.raised_count; ++i)
        if (rt.raised_kernels[i] == key) { rt.raised_bytes[i] = value; return cudaSuccess; }
    if (rt.raised_count < 32) {
        rt.raised_kernels[rt.raised_count] = key;
        rt.raised_bytes[rt.raised_count++] = value;
    }
    return cudaSuccess;
}

/* -- nvcuda::wmma: whole tiles per thread, TF32 inputs ------------------------------------- */
inline float cg_emu_tf32_truncate(float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits &= 0xffffe000u;
    memcpy(&v, &bits, 4);
    return v;
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision { struct tf32 {}; }

template <class Use, int M, int N, int K> struct shape_of;
template <int M, int N, int K> struct shape_of<matrix_a, M, N, K> { enum { rows = M, cols = K }; };
template <int M, int N, int K> struct shape_of<matrix_b, M, N, K> { enum { rows = K, cols = N }; };
template <int M, int N, int K> struct shape_of<accumulator, M, N, K> { enum { rows = M, cols = N }; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(std::is_same<T, precision::tf32>::value || std::is_same<T, float>::value,
                  "cuda_emu emulates TF32 fragments with float accumulators");
    enum { rows = shape_of<Use, M, N, K>::rows, cols = shape_of<Use, M, N, K>::cols,
           num_elements = rows * cols };
    float x[num_elements];   /* the whole tile, row-major, in every thread */
};

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L> &f, float v) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

template <class Use, int M, int N, int K, class T, class L>
void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const float *p, unsigned ldm) {
    const bool row = std::is_same<L, row_major>::value;
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c)
            f.x[r * f.cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm,
                      layout_t layout) {
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c)
            f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                       layout_t layout) {
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c)
            (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
}

template <int M, int N, int K, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float> &d,
              const fragment<matrix_a, M, N, K, precision::tf32, LA> &a,
              const fragment<matrix_b, M, N, K, precision::tf32, LB> &b,
              const fragment<accumulator, M, N, K, float> &c) {
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float acc = c.x[i * N + j];
            for (int k = 0; k < K; ++k)   /* tensor cores read 19 bits of each input */
                acc += cg_emu_tf32_truncate(a.x[i * K + k]) * cg_emu_tf32_truncate(b.x[k * N + j]);
            out[i * N + j] = acc;
        }
    memcpy(d.x, out, sizeof out);
}

/* cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 mantissa bits */
inline float __float_to_tf32(float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    if ((bits & 0x7f800000u) != 0x7f800000u) {
        bits += 0x1000u;
        bits &= 0xffffe000u;
    }
    memcpy(&v, &bits, 4);
    return v;
}
}  // namespace wmma
}  // namespace nvcuda

/* CG_DYNAMIC_SHARED(T, name): the block's dynamic shared memory as T* */
#define CG_EMU_DYNAMIC_SHARED(T, name) T *name = reinterpret_cast<T *>(::cuda_emu::dynamic_shared())

/* -- sm_80 instructions, exactly: the kernels' inline-PTX wrappers call these when emulated --
 *
 * Shared memory is addressed as on the GPU by 32-bit offsets into the block's dynamic shared
 * memory (what __cvta_generic_to_shared gives for it). Every access is checked against its
 * size. Each warp-wide instruction (ldmatrix, mma.sync) is a warp collective: every lane
 * publishes its operands in its slot, the warp meets, each lane computes its own result
 * from the published operands with the fragment layouts of the PTX ISA, the warp meets
 * again (so no slot is overwritten before everyone has read it). */
namespace cuda_emu {

inline unsigned char *shared_at(uint32_t address, size_t bytes, const char *what) {
    Launch &l = launch_state();
    if ((size_t)address + bytes > l.dynamic_bytes || address % bytes)
        fault(cudaErrorIllegalAddress,
              "%s of %zu bytes at shared address %u: outside the %zu bytes of dynamic shared "
              "memory or misaligned", what, bytes, address, l.dynamic_bytes);
    return l.dynamic_shared + address;
}

inline uint32_t shared_address(const void *p) {
    return (uint32_t)(static_cast<const unsigned char *>(p) - launch_state().dynamic_shared);
}

inline unsigned lane() { return current_fiber().linear % 32; }

inline Fiber &lane_fiber(unsigned source_lane) {
    Runtime &rt = runtime();
    const unsigned warp0 = current_fiber().linear / 32 * 32;
    return rt.fibers[warp0 + source_lane];
}

/* ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j..8j+7 give the rows of matrix j (16
   bytes each); lane l receives, of every matrix j, the 32-bit word l % 4 of row l / 4. */
inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t row_address) {
    Fiber &f = current_fiber();
    memcpy(f.slot, &row_address, 4);
    syncwarp();
    const unsigned l = lane();
    for (unsigned j = 0; j < 4; ++j) {
        uint32_t row;
        memcpy(&row, lane_fiber(8 * j + l / 4).slot, 4);
        memcpy(&r[j], shared_at(row + 4 * (l % 4), 4, "ldmatrix"), 4);
    }
    syncwarp();
}

/* The tensor cores read 19 bits of a TF32 operand (sign, exponent, 10 mantissa bits). */
inline float tf32_bits(uint32_t v) {
    if ((v & 0x7f800000u) != 0x7f800000u) v &= 0xffffe000u;
    float x;
    memcpy(&x, &v, 4);
    return x;
}

/* mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, d = a * b + c in place. Fragments
   (g = lane / 4, t = lane % 4): a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
   of A (16 x 8); b0 (k t, n g), b1 (k t + 4, n g) of B (8 x 8); c0 (g, 2t), c1 (g, 2t + 1),
   c2 (g + 8, 2t), c3 (g + 8, 2t + 1) of C (16 x 8). Products are exact in float (11-bit
   significands) and summed in float, as the tensor cores do to within their rounding. */
inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    Fiber &f = current_fiber();
    memcpy(f.slot, a, 16);
    memcpy(f.slot + 16, b, 8);
    syncwarp();
    float A[16][8], B[8][8];
    for (unsigned l = 0; l < 32; ++l) {
        uint32_t fa[4], fb[2];
        memcpy(fa, lane_fiber(l).slot, 16);
        memcpy(fb, lane_fiber(l).slot + 16, 8);
        const unsigned g = l / 4, t = l % 4;
        A[g][t] = tf32_bits(fa[0]);
        A[g + 8][t] = tf32_bits(fa[1]);
        A[g][t + 4] = tf32_bits(fa[2]);
        A[g + 8][t + 4] = tf32_bits(fa[3]);
        B[t][g] = tf32_bits(fb[0]);
        B[t + 4][g] = tf32_bits(fb[1]);
    }
    syncwarp();
    const unsigned g = lane() / 4, t = lane() % 4;
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (unsigned e = 0; e < 4; ++e) {
        float acc = d[e];
        for (unsigned k = 0; k < 8; ++k) acc += A[rows[e]][k] * B[k][cols[e]];
        d[e] = acc;
    }
}

/* cp.async.cg.shared.global [dst], [src], 16, src_bytes: src_bytes 16 copies, 0 fills the
   16 bytes with zeros and reads nothing. Queued; performed when waited for. */
template <class T>
void cp_async16(uint32_t dst, gptr<const T> src, bool valid) {
    unsigned char *to = shared_at(dst, 16, "cp.async");
    if (valid) {
        (void)*src;
        (void)src[(ptrdiff_t)(16 / sizeof(T)) - 1];
    }
    queue_copy(to, valid ? (const void *)src.p : (const void *)to, 16, valid ? 0 : 16);
}

}  // namespace cuda_emu

/* cudaMallocAsync / cudaFreeAsync: the workspace of a launch, registered as a buffer (so
   its accesses are checked) and filled with NaN bytes (so a read of an unwritten element
   shows). The emulator runs synchronously: stream order is program order. */
template <class T>
cudaError_t cudaMallocAsync(T **p, size_t bytes, cudaStream_t = nullptr) {
    static const char *const names[4] = {"workspace 0", "workspace 1", "workspace 2",
                                         "workspace 3"};
    ::cuda_emu::Runtime &rt = ::cuda_emu::runtime();
    const char *name = nullptr;
    for (const char *candidate : names) {   /* a name no live workspace holds */
        bool taken = false;
        for (unsigned i = 0; i < rt.buffer_count; ++i)
            taken |= rt.buffers[i].begin && strcmp(rt.buffers[i].name, candidate) == 0;
        if (!taken) { name = candidate; break; }
    }
    void *m = name ? aligned_alloc(256, (bytes + 255) / 256 * 256 + 256) : nullptr;
    if (!m) return cudaErrorMemoryAllocation;
    memset(m, 0xff, bytes);
    *p = reinterpret_cast<T *>(m);
    ::cuda_emu::register_buffer(m, bytes, name);
    return cudaSuccess;
}

inline cudaError_t cudaFreeAsync(void *p, cudaStream_t = nullptr) {
    ::cuda_emu::Runtime &rt = ::cuda_emu::runtime();
    for (unsigned i = 0; i < rt.buffer_count; ++i)
        if (rt.buffers[i].begin == p) rt.buffers[i].begin = nullptr;
    free(p);
    return cudaSuccess;
}

/* The stream-ordered pool's settings: nothing to keep on the CPU. */
typedef void *cudaMemPool_t;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4 };
inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int) { *pool = nullptr; return cudaSuccess; }
inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void *) { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int *device) { *device = 0; return cudaSuccess; }
