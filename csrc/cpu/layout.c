/* Layout changes: NCHW <-> NLC transposes, channel concatenation, nearest x2
 * upsampling. Pure data movement (backwards add), parallel over independent
 * output blocks. */
#include <string.h>

#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

#define TB 32 /* transpose block */

/* dst[j * ldd + i] = src[i * lds + j] (+ dst[j * ldd + i] with add, or
 * + row_bias[i] with row_bias) for i < ni, j < nj, element by element */
static void block_scalar(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t ni, int64_t nj, int add,
                         const float *row_bias)
{
    for (int64_t j = 0; j < nj; j++) {
        if (add)
            for (int64_t i = 0; i < ni; i++) dst[j * ldd + i] += src[i * lds + j];
        else if (row_bias)
            for (int64_t i = 0; i < ni; i++) dst[j * ldd + i] = src[i * lds + j] + row_bias[i];
        else
            for (int64_t i = 0; i < ni; i++) dst[j * ldd + i] = src[i * lds + j];
    }
}

#if GNR_VEC_X86
/* The same for an 8 x 8 tile in registers (cpu_vec_transpose8): the same
 * values, added in the same single additions, as block_scalar. Element by
 * element, the transposes around a linear layer's narrow product
 * (linear.c) and the layout changes moved about 10 GB/s; with these the
 * UNet pass at 256 x 256 took 2 % less and the gradient pass 1 % (SD 1.4,
 * 2 threads, AVX-512, passes alternating in one process). */
GNR_TARGET_AVX2 static void tile8_avx2(const float *src, int64_t lds, float *dst, int64_t ldd, int add,
                                       const float *row_bias)
{
    __m256 r[8];
    for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(src + k * lds);
    cpu_vec_transpose8(r);
    __m256 bias = row_bias ? _mm256_loadu_ps(row_bias) : _mm256_setzero_ps();
    for (int c = 0; c < 8; c++) {
        __m256 col = r[c];
        if (add) col = _mm256_add_ps(_mm256_loadu_ps(dst + c * ldd), col);
        else if (row_bias) col = _mm256_add_ps(col, bias);
        _mm256_storeu_ps(dst + c * ldd, col);
    }
}
#endif

/* One ni x nj block: its whole 8 x 8 tiles in registers where the CPU has
 * AVX2, the rest element by element */
static void transpose_block(const float *src, int64_t lds, float *dst, int64_t ldd, int64_t ni, int64_t nj, int add,
                            const float *row_bias)
{
    int64_t ni8 = 0, nj8 = 0;
#if GNR_VEC_X86
    if (cpu_vec_level() != CPU_VEC_BASELINE) {
        ni8 = ni / 8 * 8, nj8 = nj / 8 * 8;
        for (int64_t i = 0; i < ni8; i += 8)
            for (int64_t j = 0; j < nj8; j += 8)
                tile8_avx2(src + i * lds + j, lds, dst + j * ldd + i, ldd, add, row_bias ? row_bias + i : NULL);
    }
#endif
    block_scalar(src + nj8, lds, dst + nj8 * ldd, ldd, ni8, nj - nj8, add, row_bias); /* right of the tiles */
    block_scalar(src + ni8 * lds, lds, dst + ni8, ldd, ni - ni8, nj, add, row_bias ? row_bias + ni8 : NULL);
}

/* dst[j * ldd + i] = src[i * lds + j] (+ dst[j * ldd + i] with add, or
 * + row_bias[i] with row_bias) for a rows x cols matrix, by blocks */
static void transpose_blocks(int nt, const float *src, int64_t lds, float *dst, int64_t ldd, int64_t rows,
                             int64_t cols, int add, const float *row_bias)
{
    int64_t bi = (rows + TB - 1) / TB, bj = (cols + TB - 1) / TB;
#pragma omp parallel for collapse(2) num_threads(nt) if (rows * cols > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t ib = 0; ib < bi; ib++) {
        for (int64_t jb = 0; jb < bj; jb++) {
            int64_t i0 = ib * TB, j0 = jb * TB;
            transpose_block(src + i0 * lds + j0, lds, dst + j0 * ldd + i0, ldd, rows - i0 < TB ? rows - i0 : TB,
                            cols - j0 < TB ? cols - j0 : TB, add, row_bias ? row_bias + i0 : NULL);
        }
    }
}

void cpu_transpose(int nt, const float *src, float *dst, int64_t rows, int64_t cols, int add)
{
    transpose_blocks(nt, src, cols, dst, rows, rows, cols, add, NULL);
}

void cpu_transpose_bias(int nt, const float *src, float *dst, int64_t rows, int64_t cols, const float *row_bias)
{
    transpose_blocks(nt, src, cols, dst, rows, rows, cols, 0, row_bias);
}

static void nchw_nlc(gnr_ctx *ctx, const gnr_tensor *nchw, const float *src, float *dst, int to_nlc, int add)
{
    int64_t n = nchw->shape[0], c = nchw->shape[1], hw = nchw->shape[2] * nchw->shape[3];
    int nt = gnr_cpu_threads(ctx);
    for (int64_t i = 0; i < n; i++) {
        if (to_nlc)
            cpu_transpose(nt, src + i * c * hw, dst + i * c * hw, c, hw, add);
        else
            cpu_transpose(nt, src + i * c * hw, dst + i * c * hw, hw, c, add);
    }
}

/* y[n, h*W+w, c] = x[n, c, h, w] */
gnr_status cpu_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    nchw_nlc(ctx, x, gnr_f32(x), gnr_f32(y), 1, 0);
    return GNR_OK;
}

/* y[n, c, h, w] = x[n, h*W+w, c] */
gnr_status cpu_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    nchw_nlc(ctx, y, gnr_f32(x), gnr_f32(y), 0, 0);
    return GNR_OK;
}

/* dx[n,c,h,w] += dy[n,hw,c] */
gnr_status cpu_nchw_to_nlc_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    nchw_nlc(ctx, dx, gnr_f32(dy), gnr_f32(dx), 0, 1);
    return GNR_OK;
}

/* dx[n,hw,c] += dy[n,c,h,w] */
gnr_status cpu_nlc_to_nchw_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    nchw_nlc(ctx, dy, gnr_f32(dy), gnr_f32(dx), 1, 1);
    return GNR_OK;
}

/* y = [a, b] along dim 1 */
gnr_status cpu_concat_channels_forward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    int64_t n = y->shape[0], hw = y->shape[2] * y->shape[3];
    int64_t sa = a->shape[1] * hw, sb = b->shape[1] * hw;
    const float *pa = gnr_f32(a), *pb = gnr_f32(b);
    float *py = gnr_f32(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n * (sa + sb) > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < 2 * n; i++) {
        int64_t img = i / 2;
        if (i % 2 == 0) memcpy(py + img * (sa + sb), pa + img * sa, (size_t)sa * sizeof(float));
        else memcpy(py + img * (sa + sb) + sa, pb + img * sb, (size_t)sb * sizeof(float));
    }
    return GNR_OK;
}

/* da += dy[:, :Ca];  db += dy[:, Ca:]   (either may be NULL; Ca = C - Cb when a is NULL) */
gnr_status cpu_concat_channels_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db)
{
    if (!da && !db) return GNR_OK;
    int64_t n = dy->shape[0], c = dy->shape[1], hw = dy->shape[2] * dy->shape[3];
    int64_t ca = da ? da->shape[1] : c - db->shape[1];
    int64_t sy = c * hw, sa = ca * hw, sb = (c - ca) * hw;
    const float *pd = gnr_f32(dy);
    float *pa = da ? gnr_f32(da) : NULL, *pb = db ? gnr_f32(db) : NULL;
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n * sy > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t img = 0; img < n; img++) {
        const float *d = pd + img * sy;
        if (pa)
            for (int64_t j = 0; j < sa; j++) pa[img * sa + j] += d[j];
        if (pb)
            for (int64_t j = 0; j < sb; j++) pb[img * sb + j] += d[sa + j];
    }
    return GNR_OK;
}

/* y[n,c,i,j] = x[n,c,i/2,j/2] */
gnr_status cpu_upsample2x_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    int64_t rows = x->shape[0] * x->shape[1] * x->shape[2], w = x->shape[3];
    const float *px = gnr_f32(x);
    float *py = gnr_f32(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * w > GNR_CPU_PAR_MIN / 4) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *src = px + r * w;
        float *d0 = py + r * 4 * w, *d1 = d0 + 2 * w;
        for (int64_t j = 0; j < w; j++) d0[2 * j] = d0[2 * j + 1] = src[j];
        memcpy(d1, d0, (size_t)(2 * w) * sizeof(float));
    }
    return GNR_OK;
}

/* dx[n,c,u,v] += dy[2u,2v] + dy[2u,2v+1] + dy[2u+1,2v] + dy[2u+1,2v+1] */
gnr_status cpu_upsample2x_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    int64_t rows = dx->shape[0] * dx->shape[1] * dx->shape[2], w = dx->shape[3];
    const float *pd = gnr_f32(dy);
    float *px = gnr_f32(dx);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * w > GNR_CPU_PAR_MIN / 4) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *s0 = pd + r * 4 * w, *s1 = s0 + 2 * w;
        float *d = px + r * w;
        for (int64_t j = 0; j < w; j++) d[j] += (s0[2 * j] + s0[2 * j + 1]) + (s1[2 * j] + s1[2 * j + 1]);
    }
    return GNR_OK;
}
