/* Kernels that show each check of the CUDA emulator catching what it is for
 * (tests/emu/test_emulator.py builds this file against csrc/cuda/emu and runs
 * one case per process). Each case prints "ok ..." when the program itself
 * saw nothing wrong; the checks under test report through CUDA errors
 * ("error ..."), AddressSanitizer, or NaNs in the results. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "cuda/check.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

extern "C" {
#include "core/arena.h"
}

gnr_status cuda_fail(cudaError_t err, const char *call, const char *file, int line)
{
    printf("error in %s (%s:%d): %s: %s\n", call, file, line, cudaGetErrorName(err), cudaGetErrorString(err));
    return GNR_ERR_DEVICE;
}

#define BLOCK 256

/* out[b] = sum of x over block b, by a shared-memory tree */
__global__ void block_sum(const float *x, float *out)
{
    __shared__ float sh[BLOCK];
    sh[threadIdx.x] = x[blockIdx.x * BLOCK + threadIdx.x];
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

/* block_sum with the __syncthreads inside the loop removed */
__global__ void block_sum_missing_sync(const float *x, float *out)
{
    __shared__ float sh[BLOCK];
    sh[threadIdx.x] = x[blockIdx.x * BLOCK + threadIdx.x];
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

/* y[i] = x[i] + 1 for i < n, and one element past the end */
__global__ void write_past_end(const float *x, float *y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + 1.0f;
    if (i == n - 1) y[n] = 0.0f;
}

__global__ void add_one(const float *x, float *y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] + 1.0f;
}

/* the upper half of the block returns before a barrier the lower half waits at */
__global__ void barrier_skipped(float *y)
{
    if (threadIdx.x >= BLOCK / 2) return;
    y[threadIdx.x] = 1.0f;
    __syncthreads();
}

/* the two halves wait at different barriers */
__global__ void divergent_barrier(float *y)
{
    if (threadIdx.x < BLOCK / 2) {
        y[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        __syncthreads();
        y[threadIdx.x] = 2.0f;
    }
}

/* per warp: the sum by __shfl_down_sync, and the ballot of odd values */
__global__ void warp_sum(const int *x, int *sums, unsigned *ballots)
{
    int v = x[blockIdx.x * blockDim.x + threadIdx.x];
    unsigned odd = __ballot_sync(0xffffffffu, v & 1);
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
    int w = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (threadIdx.x % 32 == 0) {
        sums[w] = v;
        ballots[w] = odd;
    }
}

/* lane 31 leaves before a shuffle whose mask names it */
__global__ void warp_lane_exited(int *y)
{
    if (threadIdx.x == 31) return;
    y[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
}

/* reverses each block's slice through dynamic shared memory */
__global__ void reverse_block(const float *x, float *y)
{
    CUDA_DYNAMIC_SHARED(float, buf);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = buf[blockDim.x - 1 - threadIdx.x];
}

__global__ void count_odd(const int *x, int *count, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && (x[i] & 1)) atomicAdd(count, 1);
}

/* ------------------------------------------------------------- cases --- */

/* GNR_EMU_FAULT=add_one: the fault is reported by the next call that waits
 * for the device, not by the launch (as on a GPU) */
static gnr_status run_injected_fault()
{
    float *y;
    CUDA_CHECK(cudaMalloc((void **)&y, BLOCK * sizeof(float)));
    CUDA_LAUNCH(add_one, 1, BLOCK, 0, 0, y, y, BLOCK);
    printf("launched\n");
    CUDA_CHECK(cudaStreamSynchronize(0));
    printf("ok synchronised\n");
    return GNR_OK;
}

static gnr_status wrong(const char *what)
{
    printf("wrong: %s\n", what);
    return GNR_ERR_VALUE;
}

static gnr_status run_sum(bool missing_sync, int nblocks)
{
    std::vector<float> h(nblocks * BLOCK);
    for (size_t i = 0; i < h.size(); i++) h[i] = (float)((i * 37) % 101) - 50.0f; /* exact sums in float */
    float *x, *out;
    CUDA_CHECK(cudaMalloc((void **)&x, h.size() * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&out, nblocks * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(x, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    if (missing_sync) CUDA_LAUNCH(block_sum_missing_sync, nblocks, BLOCK, 0, 0, x, out);
    else CUDA_LAUNCH(block_sum, nblocks, BLOCK, 0, 0, x, out);
    std::vector<float> got(nblocks);
    CUDA_CHECK(cudaMemcpy(got.data(), out, nblocks * sizeof(float), cudaMemcpyDeviceToHost));
    for (int b = 0; b < nblocks; b++) {
        float want = 0.0f;
        for (int i = 0; i < BLOCK; i++) want += h[b * BLOCK + i];
        if (got[b] != want) {
            printf("wrong: block %d sums to %g, expected %g\n", b, got[b], want);
            return GNR_ERR_VALUE;
        }
    }
    printf("ok sums\n");
    return GNR_OK;
}

static gnr_status run_write_past_end()
{
    const int n = 1000;
    float *x, *y;
    CUDA_CHECK(cudaMalloc((void **)&x, n * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&y, n * sizeof(float)));
    CUDA_CHECK(cudaMemset(x, 0, n * sizeof(float)));
    CUDA_LAUNCH(write_past_end, (n + 127) / 128, 128, 0, 0, x, y, n);
    printf("ok launched\n");
    return GNR_OK;
}

static gnr_status run_block_kernel(int which)
{
    float *y;
    CUDA_CHECK(cudaMalloc((void **)&y, BLOCK * sizeof(float)));
    if (which == 0) CUDA_LAUNCH(barrier_skipped, 1, BLOCK, 0, 0, y);
    else CUDA_LAUNCH(divergent_barrier, 1, BLOCK, 0, 0, y);
    printf("launched\n"); /* a fault in a kernel is reported when the device is next waited for */
    CUDA_CHECK(cudaDeviceSynchronize());
    printf("ok synchronised\n");
    return GNR_OK;
}

static gnr_status run_overlap_copy()
{
    float *y;
    CUDA_CHECK(cudaMalloc((void **)&y, 1024 * sizeof(float)));
    CUDA_CHECK(cudaMemcpyAsync(y, y + 100, 512 * sizeof(float), cudaMemcpyDeviceToDevice, 0));
    printf("ok copied\n");
    return GNR_OK;
}

static gnr_status run_unwritten_read()
{
    const int n = 4096;
    float *x, *y;
    CUDA_CHECK(cudaMalloc((void **)&x, n * sizeof(float))); /* never written */
    CUDA_CHECK(cudaMalloc((void **)&y, n * sizeof(float)));
    CUDA_LAUNCH(add_one, n / BLOCK, BLOCK, 0, 0, x, y, n);
    std::vector<float> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost));
    int nans = 0;
    for (float v : h) nans += isnan(v) ? 1 : 0;
    printf("ok nans %d of %d\n", nans, n);
    return GNR_OK;
}

static void *dev_alloc(size_t bytes, void *) { void *p = nullptr; return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr; }
static void dev_release(void *p, void *) { cudaFree(p); }

/* a kernel reads an arena slice after the arena released it */
static gnr_status run_arena_after_release()
{
    gnr_allocator al = {dev_alloc, dev_release, nullptr, 256, nullptr};
    gnr_arena *arena;
    GNR_TRY(gnr_arena_create(&al, 0, &arena));
    gnr_arena_mark m = gnr_arena_get_mark(arena);
    float *x, *y;
    GNR_TRY(gnr_arena_alloc(arena, 1024 * sizeof(float), (void **)&x));
    CUDA_CHECK(cudaMemset(x, 0, 1024 * sizeof(float)));
    gnr_arena_release(arena, m);
    CUDA_CHECK(cudaMalloc((void **)&y, 1024 * sizeof(float)));
    CUDA_LAUNCH(add_one, 1024 / BLOCK, BLOCK, 0, 0, x, y, 1024);
    printf("ok launched\n");
    return GNR_OK;
}

static gnr_status run_warps()
{
    const int n = 4 * 64;
    std::vector<int> h(n);
    for (int i = 0; i < n; i++) h[i] = (i * 7919) % 1000;
    int *x, *sums;
    unsigned *ballots;
    CUDA_CHECK(cudaMalloc((void **)&x, n * sizeof(int)));
    CUDA_CHECK(cudaMalloc((void **)&sums, n / 32 * sizeof(int)));
    CUDA_CHECK(cudaMalloc((void **)&ballots, n / 32 * sizeof(unsigned)));
    CUDA_CHECK(cudaMemcpy(x, h.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CUDA_LAUNCH(warp_sum, n / 64, 64, 0, 0, x, sums, ballots);
    std::vector<int> s(n / 32);
    std::vector<unsigned> b(n / 32);
    CUDA_CHECK(cudaMemcpy(s.data(), sums, s.size() * sizeof(int), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(b.data(), ballots, b.size() * sizeof(unsigned), cudaMemcpyDeviceToHost));
    for (int w = 0; w < n / 32; w++) {
        int want = 0;
        unsigned odd = 0;
        for (int l = 0; l < 32; l++) {
            want += h[w * 32 + l];
            if (h[w * 32 + l] & 1) odd |= 1u << l;
        }
        if (s[w] != want || b[w] != odd) {
            printf("wrong: warp %d: sum %d (want %d), ballot %08x (want %08x)\n", w, s[w], want, b[w], odd);
            return GNR_ERR_VALUE;
        }
    }
    printf("ok warps\n");
    return GNR_OK;
}

static gnr_status run_warp_lane_exited()
{
    int *y;
    CUDA_CHECK(cudaMalloc((void **)&y, 32 * sizeof(int)));
    CUDA_LAUNCH(warp_lane_exited, 1, 32, 0, 0, y);
    CUDA_CHECK(cudaDeviceSynchronize());
    printf("ok synchronised\n");
    return GNR_OK;
}

static gnr_status run_dynamic_shared_and_atomics()
{
    const int n = 512;
    std::vector<float> h(n);
    std::vector<int> hi(n);
    for (int i = 0; i < n; i++) {
        h[i] = (float)i;
        hi[i] = i * 3;
    }
    float *x, *y;
    int *xi, *count;
    CUDA_CHECK(cudaMalloc((void **)&x, n * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&y, n * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&xi, n * sizeof(int)));
    CUDA_CHECK(cudaMalloc((void **)&count, sizeof(int)));
    CUDA_CHECK(cudaMemcpy(x, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(xi, hi.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(count, 0, sizeof(int)));
    CUDA_LAUNCH(reverse_block, n / 128, 128, 128 * sizeof(float), 0, x, y);
    CUDA_LAUNCH(count_odd, n / 128, 128, 0, 0, xi, count, n);
    std::vector<float> got(n);
    int c = 0;
    CUDA_CHECK(cudaMemcpy(got.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(&c, count, sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++)
        if (got[i] != (float)(i / 128 * 128 + 127 - i % 128)) return wrong("reverse_block");
    if (c != n / 2) return wrong("count_odd");
    printf("ok shared and atomics\n");
    return GNR_OK;
}

static gnr_status run_bad_launch()
{
    float *y;
    CUDA_CHECK(cudaMalloc((void **)&y, 4));
    CUDA_LAUNCH(add_one, 1, 2048, 0, 0, y, y, 1);
    printf("ok launched\n");
    return GNR_OK;
}

/* 16-bit conversions: round to nearest even, overflow, subnormals */
static gnr_status run_half()
{
    struct {
        float in, half, bf16;
    } cases[] = {
        {1.0f, 1.0f, 1.0f},
        {65504.0f, 65504.0f, 65536.0f},
        {65519.0f, 65504.0f, 65536.0f},
        {65520.0f, INFINITY, 65536.0f},
        {1.0f + 1.0f / 2048, 1.0f, 1.0f},                  /* half: a tie, to even (1) */
        {1.0f + 3.0f / 2048, 1.0f + 1.0f / 512, 1.0f},     /* half: a tie, up to even */
        {1.0f + 1.0f / 256, 1.0f + 1.0f / 256, 1.0f},      /* bf16: a tie, to even (1) */
        {1.0f + 3.0f / 256, 1.0f + 3.0f / 256, 1.0f + 1.0f / 64},
        {5.9604645e-8f, 5.9604645e-8f, 5.9604645e-8f},     /* 2^-24, the smallest half subnormal */
        {2.9802322e-8f, 0.0f, 2.9802322e-8f},              /* 2^-25: a tie, to even (0) */
        {-3.0f, -3.0f, -3.0f},
    };
    for (auto &c : cases) {
        float h = __half2float(__float2half(c.in)), b = __bfloat162float(__float2bfloat16(c.in));
        if (h != c.half || b != c.bf16) {
            printf("wrong: %.9g -> half %.9g (want %.9g), bf16 %.9g (want %.9g)\n", c.in, h, c.half, b, c.bf16);
            return GNR_ERR_VALUE;
        }
    }
    if (!isnan(__half2float(__float2half(NAN))) || !isnan(__bfloat162float(__float2bfloat16(NAN))))
        return GNR_ERR_VALUE;
    printf("ok half\n");
    return GNR_OK;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: selftest CASE\n");
        return 2;
    }
    const char *c = argv[1];
    gnr_status st;
    if (!strcmp(c, "sum")) st = run_sum(false, 8);
    else if (!strcmp(c, "sum_missing_sync")) st = run_sum(true, 8);
    else if (!strcmp(c, "write_past_end")) st = run_write_past_end();
    else if (!strcmp(c, "barrier_skipped")) st = run_block_kernel(0);
    else if (!strcmp(c, "divergent_barrier")) st = run_block_kernel(1);
    else if (!strcmp(c, "overlap_copy")) st = run_overlap_copy();
    else if (!strcmp(c, "unwritten_read")) st = run_unwritten_read();
    else if (!strcmp(c, "arena_after_release")) st = run_arena_after_release();
    else if (!strcmp(c, "warps")) st = run_warps();
    else if (!strcmp(c, "warp_lane_exited")) st = run_warp_lane_exited();
    else if (!strcmp(c, "shared_and_atomics")) st = run_dynamic_shared_and_atomics();
    else if (!strcmp(c, "bad_launch")) st = run_bad_launch();
    else if (!strcmp(c, "half")) st = run_half();
    else if (!strcmp(c, "injected_fault")) st = run_injected_fault();
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    fflush(stdout);
    return st == GNR_OK ? 0 : 1;
}
