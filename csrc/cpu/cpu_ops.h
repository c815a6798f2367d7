/* The CPU backend: every op of ops.def as cpu_*, plus the helpers its files share.
 *
 * float32, contiguous, row-major. Elementwise work and reductions run on
 * OpenMP threads (gnr_cpu_threads); matrix products go to OpenBLAS sgemm
 * (cpu_gemm), or against few columns to the backend's own kernels
 * (cpu_gemm_narrow). Reductions are split into fixed chunks whose partial results
 * are combined in a fixed order, so a result never depends on scheduling
 * (DECISIONS.md section 5). Scratch comes from ctx->arena and is
 * released before an op returns. */
#ifndef GNR_CPU_OPS_H
#define GNR_CPU_OPS_H

#include <stdint.h>

#include "ops.h"

/* ------------------------------------------------------------- helpers --- */

/* OpenMP threads for a parallel region of this context. */
int gnr_cpu_threads(const gnr_ctx *ctx);

/* This thread's number inside an OpenMP parallel region (0 outside one):
 * the index of its slice of per-thread scratch. */
int gnr_cpu_thread_num(void);

/* Row-major C = alpha op(A) op(B) + beta C through OpenBLAS, split over nt
 * threads (the context's gnr_cpu_threads). Inside an OpenMP parallel region
 * only with nt = 1: each thread then runs its own single-threaded product
 * (OpenBLAS is reentrant on one thread). */
void cpu_gemm(int nt, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
              int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* Row-major C = op(A) B (+ C with accumulate), A a weight: for B of at most
 * NARROW_MAX_N columns the backend's own kernels read A in place
 * (narrow_gemm.c); wider B, or a CPU without AVX2, goes to cpu_gemm. Split
 * over nt threads as cpu_gemm is. cpu_gemm_narrow_takes(n): whether n
 * columns run the own kernels (for callers that rearrange operands first). */
#define NARROW_MAX_N 256
void cpu_gemm_narrow(int nt, int trans_a, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                     const float *b, int64_t ldb, int accumulate, float *c, int64_t ldc);
int cpu_gemm_narrow_takes(int64_t n);
/* C = A B + bias (bias: n floats, added to every row), in the same sums
 * with C starting from the bias instead of 0: a linear layer's product
 * without a pass of its own that writes the bias into C first. */
void cpu_gemm_narrow_bias(int nt, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                          int64_t ldb, const float *bias, float *c, int64_t ldc);

/* Row-major C = op(A) B (+ C with accumulate) for few rows of op(A) and a
 * B read once from memory (narrow_gemm.c): a weight in an input gradient.
 * Any n; the same sums as cpu_gemm_narrow; split over nt threads by
 * columns, the result independent of nt. */
void cpu_gemm_stream(int nt, int trans_a, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                     const float *b, int64_t ldb, int accumulate, float *c, int64_t ldc);

/* dst = src^T (add: dst += src^T) for a rows x cols matrix src (layout.c);
 * cpu_transpose_bias: dst = src^T + row_bias[i] on what was src's row i */
void cpu_transpose(int nt, const float *src, float *dst, int64_t rows, int64_t cols, int add);
void cpu_transpose_bias(int nt, const float *src, float *dst, int64_t rows, int64_t cols, const float *row_bias);

/* y[n] += conv3x3(x[n], weight), stride 1, pad 1, by Winograd's F(2x2, 3x3)
 * (winograd.c). x: N x C x H x W, y: N x O x H x W; weight: O x C x 3 x 3,
 * or with flip, C x O x 3 x 3 used transposed and rotated by 180 degrees
 * (the input gradient of a convolution with that weight). */
gnr_status cpu_conv3x3_winograd(gnr_ctx *ctx, const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                                const float *weight, int64_t o, int flip, float *y);

/* Elements below which a loop stays on one thread. */
#define GNR_CPU_PAR_MIN 32768

/* Multiply-adds below which a matrix product stays on one thread. */
#define GNR_CPU_GEMM_PAR_MIN_MACS ((int64_t)1 << 21)

/* The memory the CPU tensors and arenas use (64-byte aligned). */
void *gnr_cpu_alloc(size_t bytes, void *user);
void gnr_cpu_free(void *ptr, void *user);
void gnr_cpu_fill_nan(void *ptr, size_t bytes, void *user); /* GNR_NANFILL: signalling NaNs */

/* ----------------------------------------------------------------- ops --- */

gnr_status cpu_synchronize(gnr_ctx *ctx);
#define GNR_OP(name, params, args) gnr_status cpu_##name params;
#include "ops.def"
#undef GNR_OP

#endif
