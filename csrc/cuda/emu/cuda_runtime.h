/* The emulated CUDA runtime for .cu sources compiled as C++ (see
 * cuda_runtime_api.h for what the emulator is).
 *
 * Kernels: qualifiers expand to nothing (or to static for __shared__: the
 * emulated device runs one block at a time, its threads as fibers, so a
 * static is exactly the running block's shared copy), the built-in indices
 * are globals the scheduler sets before resuming each thread,
 * and a launch is CUDA_LAUNCH (csrc/cuda/check.h), which hands a closure of
 * the kernel call to launch_kernel below. __syncthreads, warp votes and
 * shuffles suspend the calling thread's fiber until every thread they name
 * has arrived (launch.cpp). */
#ifndef GNR_EMU_CUDA_RUNTIME_H
#define GNR_EMU_CUDA_RUNTIME_H

#include "cuda_runtime_api.h"

#ifdef __cplusplus
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static
#define __restrict__ __restrict

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

namespace gnr_emu {

/* A kernel call with its arguments bound: run() executes it for the thread
 * whose indices are set. */
struct kernel_body {
    void (*run)(const void *closure);
    const void *closure;
};

/* Runs every block and thread of a launch (launch.cpp); errors become the
 * launch's cudaGetLastError. */
void launch(const char *name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, kernel_body body);

template <class F>
void launch_kernel(const char *name, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, const F &call)
{
    launch(name, grid, block, shared_bytes, stream,
           kernel_body{[](const void *c) { (*static_cast<const F *>(c))(); }, &call});
}

/* Barrier of the whole block, named by its call site in reports. */
void syncthreads(const char *file, int line);

/* Warp-level operations: every lane of `mask` must call the same operation
 * with the same mask; the value exchanged is carried as 64 raw bits. */
enum warp_op { WARP_SYNC, WARP_SHFL, WARP_SHFL_UP, WARP_SHFL_DOWN, WARP_SHFL_XOR, WARP_BALLOT, WARP_ANY, WARP_ALL };
uint64_t warp_exchange(warp_op op, unsigned mask, uint64_t bits, int arg, int width, const char *file, int line);

/* Dynamic shared memory of the running block (the launch's third argument). */
void *dynamic_shared();

template <class T>
inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles carry up to 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}

template <class T>
inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

} // namespace gnr_emu

#define __syncthreads() gnr_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) gnr_emu::syncwarp_(__FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_sync(mask, v, lane, ...) gnr_emu::shfl_(gnr_emu::WARP_SHFL, __FILE__, __LINE__, mask, v, lane, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) gnr_emu::shfl_(gnr_emu::WARP_SHFL_UP, __FILE__, __LINE__, mask, v, d, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) \
    gnr_emu::shfl_(gnr_emu::WARP_SHFL_DOWN, __FILE__, __LINE__, mask, v, d, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) gnr_emu::shfl_(gnr_emu::WARP_SHFL_XOR, __FILE__, __LINE__, mask, v, m, ##__VA_ARGS__)
#define __ballot_sync(mask, p) \
    ((unsigned)gnr_emu::warp_exchange(gnr_emu::WARP_BALLOT, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) \
    ((int)gnr_emu::warp_exchange(gnr_emu::WARP_ANY, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) \
    ((int)gnr_emu::warp_exchange(gnr_emu::WARP_ALL, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))

namespace gnr_emu {
template <class T>
inline T shfl_(warp_op op, const char *file, int line, unsigned mask, T v, int arg, int width = 32)
{
    return from_bits<T>(warp_exchange(op, mask, to_bits(v), arg, width, file, line));
}
inline void syncwarp_(const char *file, int line, unsigned mask = 0xffffffffu)
{
    warp_exchange(WARP_SYNC, mask, 0, 0, 32, file, line);
}
} // namespace gnr_emu

/* ---- atomics: blocks run one at a time, but use real atomics anyway so a
 * kernel stays correct if blocks are ever spread over host threads. */
template <class T>
inline T atomicAdd(T *p, T v)
{
    if constexpr (std::is_integral<T>::value) {
        return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
    } else {
        T old, want;
        __atomic_load(p, &old, __ATOMIC_RELAXED);
        do {
            want = old + v;
        } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
        return old;
    }
}
template <class T>
inline T atomicSub(T *p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T>
inline T atomicExch(T *p, T v)
{
    T old;
    __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);
    return old;
}
template <class T>
inline T atomicCAS(T *p, T expected, T desired)
{
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected; /* the old value either way */
}
template <class T>
inline T atomicMax(T *p, T v)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T *p, T v)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ---- math and bit intrinsics (CUDA's fast variants are the exact ones here) */
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __int_as_float(int v) { return gnr_emu::from_bits<float>((uint32_t)v); }
inline int __float_as_int(float v) { return (int)(uint32_t)gnr_emu::to_bits(v); }
inline unsigned __float_as_uint(float v) { return (uint32_t)gnr_emu::to_bits(v); }
inline float __uint_as_float(unsigned v) { return gnr_emu::from_bits<float>(v); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v ? __builtin_clz((unsigned)v) : 32; }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline unsigned __brev(unsigned v)
{
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((v >> i) & 1u) << (31 - i);
    return r;
}
template <class T>
inline T __ldg(const T *p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif /* __cplusplus */
#endif
