/* Reductions for the guidance energies: mean squared and mean absolute
 * difference (and their backwards), and the sum of squares.
 *
 * Fixed chunks of RED_CHUNK elements, each summed in double in index order
 * into its own slot; the slots are added in chunk order. The result does not
 * depend on the number of threads or on scheduling. */
#include <math.h>

#include "cpu/cpu_ops.h"

#define RED_CHUNK 8192

typedef enum { RED_SQ_DIFF, RED_ABS_DIFF, RED_SQ } red_kind;

static gnr_status reduce(gnr_ctx *ctx, red_kind kind, const float *a, const float *b, int64_t n, double *out)
{
    int64_t nchunks = (n + RED_CHUNK - 1) / RED_CHUNK;
    if (nchunks == 0) {
        *out = 0.0;
        return GNR_OK;
    }
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    double *part;
    GNR_TRY(gnr_arena_alloc(ctx->arena, (size_t)nchunks * sizeof(double), (void **)&part));
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (nchunks > 1) schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t i0 = c * RED_CHUNK, i1 = i0 + RED_CHUNK < n ? i0 + RED_CHUNK : n;
        double s = 0.0;
        if (kind == RED_SQ_DIFF)
            for (int64_t i = i0; i < i1; i++) {
                double d = (double)a[i] - (double)b[i];
                s += d * d;
            }
        else if (kind == RED_ABS_DIFF)
            for (int64_t i = i0; i < i1; i++) s += fabs((double)a[i] - (double)b[i]);
        else
            for (int64_t i = i0; i < i1; i++) s += (double)a[i] * (double)a[i];
        part[c] = s;
    }
    double total = 0.0;
    for (int64_t c = 0; c < nchunks; c++) total += part[c];
    gnr_arena_release(ctx->arena, m);
    *out = total;
    return GNR_OK;
}

/* *out = sum (a - b)^2 / n */
gnr_status cpu_sq_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    int64_t n = gnr_numel(a);
    GNR_TRY(reduce(ctx, RED_SQ_DIFF, gnr_f32(a), gnr_f32(b), n, out));
    if (n > 0) *out /= (double)n;
    return GNR_OK;
}

/* da += scale * 2 (a - b) / n */
gnr_status cpu_sq_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                     gnr_tensor *da)
{
    int64_t n = gnr_numel(a);
    if (n == 0) return GNR_OK;
    float f = (float)(2.0 * (double)scale / (double)n);
    const float *pa = gnr_f32(a), *pb = gnr_f32(b);
    float *pd = gnr_f32(da);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) pd[i] += f * (pa[i] - pb[i]);
    return GNR_OK;
}

/* *out = sum |a - b| / n */
gnr_status cpu_abs_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    int64_t n = gnr_numel(a);
    GNR_TRY(reduce(ctx, RED_ABS_DIFF, gnr_f32(a), gnr_f32(b), n, out));
    if (n > 0) *out /= (double)n;
    return GNR_OK;
}

/* da += scale * sign(a - b) / n   (sign(0) = 0) */
gnr_status cpu_abs_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                      gnr_tensor *da)
{
    int64_t n = gnr_numel(a);
    if (n == 0) return GNR_OK;
    float f = (float)((double)scale / (double)n);
    const float *pa = gnr_f32(a), *pb = gnr_f32(b);
    float *pd = gnr_f32(da);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float d = pa[i] - pb[i];
        pd[i] += d > 0.0f ? f : (d < 0.0f ? -f : 0.0f);
    }
    return GNR_OK;
}

/* *out = sum x^2 */
gnr_status cpu_sum_sq(gnr_ctx *ctx, const gnr_tensor *x, double *out)
{
    return reduce(ctx, RED_SQ, gnr_f32(x), NULL, gnr_numel(x), out);
}
