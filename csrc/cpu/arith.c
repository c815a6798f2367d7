/* Elementwise arithmetic: add, scale, axpy, and the per-channel broadcast add. */
#include "cpu/cpu_ops.h"

/* y = a + b  (y may alias a or b) */
gnr_status cpu_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    const float *pa = gnr_f32(a), *pb = gnr_f32(b);
    float *py = gnr_f32(y);
    int64_t n = gnr_numel(a);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) py[i] = pa[i] + pb[i];
    return GNR_OK;
}

/* y = alpha * x  (y may alias x) */
gnr_status cpu_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y)
{
    const float *px = gnr_f32(x);
    float *py = gnr_f32(y);
    int64_t n = gnr_numel(x);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) py[i] = alpha * px[i];
    return GNR_OK;
}

/* y += alpha * x */
gnr_status cpu_axpy(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y)
{
    const float *px = gnr_f32(x);
    float *py = gnr_f32(y);
    int64_t n = gnr_numel(x);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) py[i] += alpha * px[i];
    return GNR_OK;
}

/* y[n,c,h,w] = x[n,c,h,w] + v[n,c] */
gnr_status cpu_add_channel_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y)
{
    int64_t nc = x->shape[0] * x->shape[1], hw = x->shape[2] * x->shape[3];
    const float *px = gnr_f32(x), *pv = gnr_f32(v);
    float *py = gnr_f32(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (nc * hw > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < nc; i++) {
        float add = pv[i];
        for (int64_t j = 0; j < hw; j++) py[i * hw + j] = px[i * hw + j] + add;
    }
    return GNR_OK;
}

/* dv[n,c] += sum_{h,w} dy[n,c,h,w]   (each sum in double, in index order) */
gnr_status cpu_add_channel_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv)
{
    int64_t nc = dy->shape[0] * dy->shape[1], hw = dy->shape[2] * dy->shape[3];
    const float *pd = gnr_f32(dy);
    float *pv = gnr_f32(dv);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (nc * hw > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < nc; i++) {
        double s = 0.0;
        for (int64_t j = 0; j < hw; j++) s += pd[i * hw + j];
        pv[i] += (float)s;
    }
    return GNR_OK;
}
