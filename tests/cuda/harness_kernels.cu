// Small kernels that exercise the emulation harness on its own (tests/test_cuda_emu.py).
// Written as ordinary CUDA: the same file compiles with nvcc (tests/test_cuda_nvcc.py).
#ifdef CONVGEN_EMULATE
#include "cuda_emu.h"
#define GPTR(T) ::cuda_emu::gptr<T>
#define CG_BUFFER(ptr, bytes, name) ::cuda_emu::register_buffer((ptr), (bytes), (name))
#define CG_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ::cuda_emu::launch(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__)
#else
#include <cuda_runtime.h>
#include <cuda_pipeline_primitives.h>
#include <mma.h>
#define GPTR(T) T *__restrict__
#define CG_BUFFER(ptr, bytes, name) ((void)0)
#define CG_LAUNCH(kernel, grid, block, smem, stream, ...) \
    kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

#define CG_EXPORT extern "C" __attribute__((visibility("default")))
#define N_THREADS 64

// Each block reverses its slice through shared memory: right only if __syncthreads waits.
__global__ void reverse_block(GPTR(const float) x, GPTR(float) y, int shift) {
    __shared__ float tile[N_THREADS];
    const int t = threadIdx.x;
    const int base = blockIdx.x * N_THREADS;
    tile[t] = x[base + t + shift];
    __syncthreads();
    y[base + t] = tile[N_THREADS - 1 - t];
}

CG_EXPORT int reverse(const float *x, float *y, int blocks, int shift) {
    CG_BUFFER(x, sizeof(float) * blocks * N_THREADS, "x");
    CG_BUFFER(y, sizeof(float) * blocks * N_THREADS, "y");
    CG_LAUNCH(reverse_block, dim3(blocks), dim3(N_THREADS), 0, (cudaStream_t)0, x, y, shift);
    return (int)cudaGetLastError();
}

// A 2-d block with a 2-d grid: every index variable reaches the result.
__global__ void coordinates_kernel(GPTR(int) out) {
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    out[b * threads + t] = 1000 * b + t;
}

CG_EXPORT int coordinates(int *out, int gx, int gy, int gz, int bx, int by, int bz) {
    CG_BUFFER(out, sizeof(int) * gx * gy * gz * bx * by * bz, "out");
    CG_LAUNCH(coordinates_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, (cudaStream_t)0, out);
    return (int)cudaGetLastError();
}

// Warp sum by xor shuffles; block sum of the warp sums through shared memory.
__global__ void sum_kernel(GPTR(const float) x, GPTR(float) y) {
    __shared__ float partial[32];
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (int w = 0; w < (int)(blockDim.x / 32); ++w) s += partial[w];
        y[blockIdx.x] = s;
    }
}

CG_EXPORT int block_sums(const float *x, float *y, int blocks, int threads) {
    CG_BUFFER(x, sizeof(float) * blocks * threads, "x");
    CG_BUFFER(y, sizeof(float) * blocks, "y");
    CG_LAUNCH(sum_kernel, dim3(blocks), dim3(threads), 0, (cudaStream_t)0, x, y);
    return (int)cudaGetLastError();
}

// Threads 0..15 wait at __syncthreads, the others exit: fine (Volta+ barriers count only
// threads that have not exited). With `stuck`, lanes 16..31 of the same warp wait at a warp
// collective instead: neither barrier can open, a deadlock.
__global__ void divergent_kernel(GPTR(float) y, int stuck) {
    if (threadIdx.x < 16) {
        __syncthreads();
        y[threadIdx.x] = 1;
    } else if (stuck && threadIdx.x < 32) {
        __syncwarp();
        y[threadIdx.x] = 2;
    }
}

CG_EXPORT int divergent(float *y, int stuck) {
    CG_BUFFER(y, sizeof(float) * 64, "y");
    CG_LAUNCH(divergent_kernel, dim3(1), dim3(64), 0, (cudaStream_t)0, y, stuck);
    return (int)cudaGetLastError();
}

// atomicAdd from every thread of every block into one element.
__global__ void count_kernel(GPTR(float) y) { atomicAdd(y + 0, 1.0f); }

CG_EXPORT int count(float *y, int blocks, int threads) {
    CG_BUFFER(y, sizeof(float), "y");
    CG_LAUNCH(count_kernel, dim3(blocks), dim3(threads), 0, (cudaStream_t)0, y);
    return (int)cudaGetLastError();
}

// A two-stage cp.async pipeline through dynamic shared memory: y = x shifted by one stage.
// With `early`, the block reads a stage before waiting for it.
__global__ void pipeline_kernel(GPTR(const float) x, GPTR(float) y, int stages, int early) {
#ifdef CONVGEN_EMULATE
    CG_EMU_DYNAMIC_SHARED(float, buffer);
#else
    extern __shared__ __align__(16) float buffer[];
#endif
    const int t = threadIdx.x, n = blockDim.x;
    __pipeline_memcpy_async(&buffer[t], x + t, sizeof(float));
    // a zero-filled copy: no byte of the source is read
    __pipeline_memcpy_async(&buffer[2 * n + t], x + 0, sizeof(float), sizeof(float));
    __pipeline_commit();
    for (int s = 0; s < stages; ++s) {
        const int next = (s + 1) % 2, cur = s % 2;
        if (s + 1 < stages)
            __pipeline_memcpy_async(&buffer[next * n + t], x + (s + 1) * n + t, sizeof(float));
        __pipeline_commit();
        if (!early) __pipeline_wait_prior(1);
        __syncthreads();
        y[s * n + t] = buffer[cur * n + (n - 1 - t)] + buffer[2 * n + t];
        __syncthreads();
    }
    __pipeline_wait_prior(0);
}

CG_EXPORT int pipeline(const float *x, float *y, int stages, int threads, int early) {
    CG_BUFFER(x, sizeof(float) * stages * threads, "x");
    CG_BUFFER(y, sizeof(float) * stages * threads, "y");
    const int bytes = 3 * threads * sizeof(float);
    CG_LAUNCH(pipeline_kernel, dim3(1), dim3(threads), bytes, (cudaStream_t)0, x, y, stages,
              early);
    return (int)cudaGetLastError();
}

// Dynamic shared memory beyond 48 KiB needs the attribute first.
__global__ void big_shared_kernel(GPTR(float) y) {
#ifdef CONVGEN_EMULATE
    CG_EMU_DYNAMIC_SHARED(float, buffer);
#else
    extern __shared__ __align__(16) float buffer[];
#endif
    buffer[threadIdx.x] = 1;
    __syncthreads();
    y[threadIdx.x] = buffer[threadIdx.x];
}

CG_EXPORT int big_shared(float *y, int bytes, int raise) {
    CG_BUFFER(y, sizeof(float) * 32, "y");
    if (raise) {
        cudaError_t status = cudaFuncSetAttribute(
            big_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (status != cudaSuccess) {
            (void)cudaGetLastError();   // as in CUDA: the failure is also the last error
            return (int)status;
        }
    }
    CG_LAUNCH(big_shared_kernel, dim3(1), dim3(32), bytes, (cudaStream_t)0, y);
    return (int)cudaGetLastError();
}

// One warp: C (16x16) = A (16x8, row-major) * B (8x16, row-major) on TF32 tensor cores.
__global__ void wmma_kernel(GPTR(const float) a, GPTR(const float) b, GPTR(float) c, int round) {
    using namespace nvcuda;
    __shared__ __align__(32) float sa[16 * 8], sb[8 * 16], sc[16 * 16];
    for (int i = threadIdx.x; i < 128; i += 32) { sa[i] = a[i]; sb[i] = b[i]; }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, sa, 8);
    wmma::load_matrix_sync(fb, sb, 16);
    if (round) {
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    }
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(sc, fc, 16, wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += 32) c[i] = sc[i];
}

CG_EXPORT int wmma_tf32(const float *a, const float *b, float *c, int round) {
    CG_BUFFER(a, sizeof(float) * 128, "a");
    CG_BUFFER(b, sizeof(float) * 128, "b");
    CG_BUFFER(c, sizeof(float) * 256, "c");
    CG_LAUNCH(wmma_kernel, dim3(1), dim3(32), 0, (cudaStream_t)0, a, b, c, round);
    return (int)cudaGetLastError();
}

CG_EXPORT const char *error_message(int code) { return cudaGetErrorString((cudaError_t)code); }
