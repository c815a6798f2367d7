/* Elementwise arithmetic and the per-channel broadcast add. */
#include "cuda_ops.h"

/* y = a + b */
__global__ void add_kernel(const float *a, const float *b, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

/* y = alpha * x */
__global__ void scale_kernel(const float *x, float alpha, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = alpha * x[i];
}

/* y += alpha * x */
__global__ void axpy_kernel(float alpha, const float *x, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

gnr_status cuda_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(y);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(add_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(a), gnr_f32(b), gnr_f32(y), n);
    return GNR_OK;
}

gnr_status cuda_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(y);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(scale_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(x), alpha, gnr_f32(y), n);
    return GNR_OK;
}

gnr_status cuda_axpy(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(y);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(axpy_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, alpha, gnr_f32(x), gnr_f32(y), n);
    return GNR_OK;
}

/* y[n,c,s] = x[n,c,s] + v[n,c]      (s runs over the HW spatial positions) */
__global__ void add_channel_kernel(const float *x, const float *v, float *y, int64_t hw, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = x[i] + v[i / hw];
}

/* dv[n,c] += sum_s dy[n,c,s]: one block per (n,c), fixed-order tree in double. */
__global__ void add_channel_backward_kernel(const float *dy, float *dv, int64_t hw)
{
    __shared__ double sh[CUDA_BLOCK];
    const float *row = dy + (int64_t)blockIdx.x * hw;
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < hw; i += CUDA_BLOCK) acc += row[i];
    double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) dv[blockIdx.x] += (float)sum;
}

/* x: N x C x H x W, v: N x C (checked in op_checks.c) */
static void channel_dims(const gnr_tensor *x, int64_t *nc, int64_t *hw)
{
    *nc = x->shape[0] * x->shape[1];
    *hw = *nc ? gnr_numel(x) / *nc : 0;
}

gnr_status cuda_add_channel_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t nc = 0, hw = 0;
    channel_dims(x, &nc, &hw);
    int64_t n = gnr_numel(x);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(add_channel_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(x), gnr_f32(v), gnr_f32(y), hw, n);
    return GNR_OK;
}

gnr_status cuda_add_channel_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t nc = 0, hw = 0;
    channel_dims(dy, &nc, &hw);
    if (nc == 0) return GNR_OK;
    if (nc > 0x7fffffff) return gnr_error(GNR_ERR_VALUE, "add_channel_backward: N x C too large");
    CUDA_LAUNCH(add_channel_backward_kernel, (unsigned)nc, CUDA_BLOCK, 0, s->stream, gnr_f32(dy), gnr_f32(dv), hw);
    return GNR_OK;
}
