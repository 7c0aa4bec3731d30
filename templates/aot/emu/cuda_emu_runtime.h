/*
 * cuda_emu_runtime.h -- the CUDA runtime calls an ahead-of-time build's glue and example
 * make, on the host, for running a whole CUDA build on the CPU under convgen's emulator
 * (templates/cuda/emu/cuda_emu.h, which runs the kernels): "device" memory is host memory,
 * copies are memcpy, a stream is the calling thread. For tests; never part of a build.
 *
 * Compile every source with the host C++ compiler, -DCONVGEN_EMULATE and both directories on
 * the include path.
 */
#pragma once

#include "cuda_emu.h"

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
};

inline cudaError_t cudaMalloc(void **p, size_t bytes) {
    /* NaN bytes: a read of memory nobody wrote shows in the result */
    *p = malloc(bytes ? bytes : 1);
    if (*p == nullptr) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes);
    return cudaSuccess;
}

template <class T>
cudaError_t cudaMalloc(T **p, size_t bytes) {
    void *q = nullptr;
    const cudaError_t status = cudaMalloc(&q, bytes);
    *p = static_cast<T *>(q);
    return status;
}

inline cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind) {
    memmove(dst, src, bytes);
    return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
    return cudaMemcpy(dst, src, bytes, kind);
}

inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
