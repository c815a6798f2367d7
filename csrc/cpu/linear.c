/* Fully connected layer on the last dim, with the PyTorch weight layout:
 * the backend's own kernels (narrow_gemm.c) where the CPU has them, in one
 * of two orientations by the number of rows, and sgemm otherwise. */
#include <math.h>

#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

/* Out and In of w: Out x In, or a 1x1 conv weight Out x In x 1 x 1 (checked in op_checks.c). */
static void weight_dims(const gnr_tensor *w, int64_t *out, int64_t *in)
{
    *out = w->shape[0];
    *in = w->shape[1];
}

/* Few rows (the low-resolution levels' tokens) make a narrow product: out
 * (rows x ncols; with bias, + bias on each row) = x (rows x k) W^T
 * computed as W (ncols x k) x^T, W read in place (narrow_gemm.c), through
 * two small transposes, the second adding the bias. Returns 0 (nothing
 * done) when the product is not narrow. */
static int narrow_rows(gnr_ctx *ctx, int64_t rows, int64_t ncols, int64_t k, const float *x, const float *w,
                       const float *bias, float *out, gnr_status *st)
{
    if (!cpu_gemm_narrow_takes(rows)) return 0;
    int nt = gnr_cpu_threads(ctx);
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    float *xt, *ot;
    *st = gnr_arena_alloc(ctx->arena, (size_t)(k * rows) * sizeof(float), (void **)&xt);
    if (*st == GNR_OK) *st = gnr_arena_alloc(ctx->arena, (size_t)(ncols * rows) * sizeof(float), (void **)&ot);
    if (*st == GNR_OK) {
        cpu_transpose(nt, x, xt, rows, k, 0);
        cpu_gemm_narrow(nt, 0, ncols, rows, k, w, k, xt, rows, 0, ot, rows);
        if (bias)
            cpu_transpose_bias(nt, ot, out, ncols, rows, bias);
        else
            cpu_transpose(nt, ot, out, ncols, rows, 0);
    }
    gnr_arena_release(ctx->arena, mark);
    return 1;
}

/* Many rows (the high-resolution levels' tokens) make a product whose
 * columns are the layer's features: out (rows x ncols, +=) = x (rows x k) B
 * with B (k x ncols, row stride ldb) a weight's rows, in pieces of at most
 * NARROW_MAX_N columns, x read in place (narrow_gemm.c). OpenBLAS's
 * products here ran on its AVX2 kernels at 180-250 GFLOP/s; these reach
 * 360-430 on AVX-512 (SD 1.4's 1024-token linear layers, 2 threads; with
 * up to 256 rows narrow_rows is as fast or faster). */
static int wide_takes(int64_t rows) { return rows > NARROW_MAX_N && cpu_gemm_narrow_takes(NARROW_MAX_N); }

/* bias: NULL, or the ncols floats each row of out starts from (add is 0) */
static void wide_rows(gnr_ctx *ctx, int64_t rows, int64_t ncols, int64_t k, const float *x, const float *b,
                      int64_t ldb, int add, const float *bias, float *out)
{
    int64_t pieces = (ncols + NARROW_MAX_N - 1) / NARROW_MAX_N;
    int64_t per = ((ncols + pieces - 1) / pieces + 15) / 16 * 16; /* even pieces, whole vectors */
    for (int64_t j = 0; j < ncols; j += per) {
        int64_t n = ncols - j < per ? ncols - j : per;
        if (bias)
            cpu_gemm_narrow_bias(gnr_cpu_threads(ctx), rows, n, k, x, k, b + j, ldb, bias + j, out + j, ncols);
        else
            cpu_gemm_narrow(gnr_cpu_threads(ctx), 0, rows, n, k, x, k, b + j, ldb, add, out + j, ncols);
    }
}

/* One row (a time embedding's projections): y[o] = W[o,:] x + b[o], W read
 * once from memory in its own order, each output one chain of fused
 * multiply-adds over i in order from 0, then + b[o]: the same sums, to the
 * bit, as the narrow product gives the same row in a batch of several
 * (which an editor's batched passes rely on). Eight outputs at a time, W's
 * 8 x 8 blocks turned in registers so that each step of i is one vector
 * multiply-add. The narrow product read 8 rows of W at a time against a
 * one-column B (one lane of each vector used) at about 9 GB/s: SD 1.4's
 * UNet's 26 time-embedding products (100 MiB of weights) took 12.9 ms a
 * pass, 5.2 this way (1280 -> 1280: 0.74 -> 0.31 ms; 2 threads, AVX-512).
 * Dot products along W's rows in 16 partial sums were a little faster
 * (0.27 ms) but gave other bits than the batched product. Each block of
 * outputs on one thread. */
#if GNR_VEC_X86
GNR_TARGET_AVX2 static void one_row_outputs(const float *w, const float *x, const float *b, int64_t o0, int64_t o1,
                                            int64_t in, float *y)
{
    int64_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        const float *wo = w + o * in;
        __m256 acc = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= in; i += 8) {
            __m256 r[8];
            for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(wo + k * in + i);
            cpu_vec_transpose8(r); /* r[c]: W[o .. o+7][i + c] */
            for (int c = 0; c < 8; c++) acc = _mm256_fmadd_ps(r[c], _mm256_set1_ps(x[i + c]), acc);
        }
        for (; i < in; i++) {
            float col[8];
            for (int k = 0; k < 8; k++) col[k] = wo[k * in + i];
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(col), _mm256_set1_ps(x[i]), acc);
        }
        float out[8];
        _mm256_storeu_ps(out, acc);
        for (int k = 0; k < 8; k++) y[o + k] = b ? out[k] + b[o + k] : out[k];
    }
    for (; o < o1; o++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < in; i++) acc = fmaf(w[o * in + i], x[i], acc);
        y[o] = b ? acc + b[o] : acc;
    }
}
#endif

#define ONE_ROW_BLOCK 64 /* outputs per task */
/* Returns 0 (nothing done) without the vector kernels. */
static int one_row(int nt, const float *x, const float *w, const float *b, int64_t out, int64_t in, float *y)
{
#if GNR_VEC_X86
    if (cpu_vec_level() == CPU_VEC_BASELINE) return 0;
    int64_t blocks = (out + ONE_ROW_BLOCK - 1) / ONE_ROW_BLOCK;
#pragma omp parallel for num_threads(nt) if (out * in > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t k = 0; k < blocks; k++)
        one_row_outputs(w, x, b, k * ONE_ROW_BLOCK, (k + 1) * ONE_ROW_BLOCK < out ? (k + 1) * ONE_ROW_BLOCK : out,
                        in, y);
    return 1;
#else
    (void)nt, (void)x, (void)w, (void)b, (void)out, (void)in, (void)y;
    return 0;
#endif
}

/* y[r,o] = b[o] + sum_i x[r,i] w[o,i]     y = x W^T + b */
gnr_status cpu_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              gnr_tensor *y)
{
    int64_t out = 0, in = 0;
    weight_dims(w, &out, &in);
    int64_t rows = in ? gnr_numel(x) / in : 0;
    float *py = gnr_f32(y);
    gnr_status st = GNR_OK;
    if (rows == 1 && one_row(gnr_cpu_threads(ctx), gnr_f32(x), gnr_f32(w), b ? gnr_f32(b) : NULL, out, in, py))
        return GNR_OK;
    if (wide_takes(rows)) {
        /* W^T (in x out), transposed per call: with this many rows, about 2 %
         * of the product's time (kept instead, the whole pass gained 1 %).
         * The bias is where the product's sums start: written into y first,
         * it took a pass over y of its own, and the product then read y back
         * from memory at each tile's start; SD 1.4's 4096 x 320 -> 320 and
         * 1024 x 640 -> 640 layers ran 5 and 8 % faster without (2 threads,
         * AVX-512, in a UNet pass at 512 x 512). */
        gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
        float *wt;
        st = gnr_arena_alloc(ctx->arena, (size_t)(out * in) * sizeof(float), (void **)&wt);
        if (st == GNR_OK) {
            cpu_transpose(gnr_cpu_threads(ctx), gnr_f32(w), wt, out, in, 0);
            wide_rows(ctx, rows, out, in, gnr_f32(x), wt, out, 0, b ? gnr_f32(b) : NULL, py);
        }
        gnr_arena_release(ctx->arena, mark);
        return st;
    }
    if (narrow_rows(ctx, rows, out, in, gnr_f32(x), gnr_f32(w), b ? gnr_f32(b) : NULL, py, &st)) return st;
    float beta = 0.0f;
    if (b) { /* sgemm's C starts as the bias */
        const float *pb = gnr_f32(b);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * out > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < out; o++) py[r * out + o] = pb[o];
        beta = 1.0f;
    }
    cpu_gemm(gnr_cpu_threads(ctx), 0, 1, rows, out, in, 1.0f, gnr_f32(x), in, gnr_f32(w), in, beta, py, out);
    return GNR_OK;
}

/* dx[r,i] += sum_o dy[r,o] w[o,i]     dx += dY W
 * With few rows, W is read along its rows by cpu_gemm_stream, once from
 * memory. The narrow kernel read W^T down its columns, a row of W apart
 * at each step (from 1280 inputs, 5 KiB and more, the rows fell into 4 or
 * fewer sets of the L1 cache), between transposes of dY and dX. Measured
 * per shape in a gradient pass at 256 x 256 (SD 1.4, 2 threads, AVX-512),
 * narrow against stream: 64 rows x 1280 -> 1280 63.5 against 52.7 ms, 64 x
 * 5120 -> 1280 40.5 against 21.8, 64 x 2560 -> 640 29.7 against 23.1, 16
 * rows about half; with 640 or 320 inputs narrow was faster until the
 * stream product's panels (narrow_gemm.c): 256 x 640 -> 640 39.6 against
 * 33.3 ms, 128 x 320 -> 2560 39.0 against 32.4, 64 x 640 -> 5120 44.0
 * against 39.8. */
gnr_status cpu_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx)
{
    int64_t out = 0, in = 0;
    weight_dims(w, &out, &in);
    int64_t rows = out ? gnr_numel(dy) / out : 0;
    if (cpu_gemm_narrow_takes(rows)) {
        cpu_gemm_stream(gnr_cpu_threads(ctx), 0, rows, in, out, gnr_f32(dy), out, gnr_f32(w), in, 1, gnr_f32(dx), in);
        return GNR_OK;
    }
    if (wide_takes(rows)) { /* W's rows as they lie */
        wide_rows(ctx, rows, in, out, gnr_f32(dy), gnr_f32(w), in, 1, NULL, gnr_f32(dx));
        return GNR_OK;
    }
    cpu_gemm(gnr_cpu_threads(ctx), 0, 0, rows, in, out, 1.0f, gnr_f32(dy), out, gnr_f32(w), in, 1.0f,
             gnr_f32(dx), in);
    return GNR_OK;
}
