/* Activations (SiLU, exact GELU, QuickGELU) and the GEGLU gate. */
#include "cuda_ops.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* gelu(x) = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2 */
__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * INV_SQRT2)); }
/* gelu'(x) = Phi(x) + x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi) */
__device__ __forceinline__ float gelu_df(float x)
{
    return 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}

__device__ __forceinline__ float act_f(int act, float x)
{
    switch (act) {
    case GNR_ACT_SILU: return x * sigmoidf_(x);                 /* x s(x) */
    case GNR_ACT_GELU: return gelu_f(x);
    default: return x * sigmoidf_(1.702f * x);                  /* x s(1.702 x) */
    }
}

__device__ __forceinline__ float act_df(int act, float x)
{
    switch (act) {
    case GNR_ACT_SILU: {                                        /* s (1 + x (1 - s)) */
        float s = sigmoidf_(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case GNR_ACT_GELU: return gelu_df(x);
    default: {                                                  /* s + 1.702 x s (1 - s) */
        float s = sigmoidf_(1.702f * x);
        return s + 1.702f * x * s * (1.0f - s);
    }
    }
}

/* y = f(x) */
__global__ void act_forward_kernel(int act, const float *x, float *y, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = act_f(act, x[i]);
}

/* dx += dy * f'(x) */
__global__ void act_backward_kernel(int act, const float *dy, const float *x, float *dx, int64_t n)
{
    GRID_STRIDE(i, n) dx[i] += dy[i] * act_df(act, x[i]);
}

gnr_status cuda_act_forward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(x);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(act_forward_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, (int)act, gnr_f32(x), gnr_f32(y), n);
    return GNR_OK;
}

gnr_status cuda_act_backward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(x);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(act_backward_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, (int)act, gnr_f32(dy), gnr_f32(x), gnr_f32(dx), n);
    return GNR_OK;
}

/* x: rows x 2F = [a | g]; y[r,f] = a[r,f] * gelu(g[r,f]) */
__global__ void geglu_forward_kernel(const float *x, float *y, int64_t F, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        int64_t r = i / F, f = i % F;
        const float *xr = x + r * 2 * F;
        y[i] = xr[f] * gelu_f(xr[F + f]);
    }
}

/* da += dy * gelu(g); dg += dy * a * gelu'(g) */
__global__ void geglu_backward_kernel(const float *dy, const float *x, float *dx, int64_t F, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        int64_t r = i / F, f = i % F;
        const float *xr = x + r * 2 * F;
        float *dxr = dx + r * 2 * F;
        float a = xr[f], g = xr[F + f];
        dxr[f] += dy[i] * gelu_f(g);
        dxr[F + f] += dy[i] * a * gelu_df(g);
    }
}

/* x: rows x 2F (checked in op_checks.c); n = rows x F outputs */
static void geglu_dims(const gnr_tensor *x, int64_t *F, int64_t *n)
{
    *F = x->shape[x->ndim - 1] / 2;
    *n = gnr_numel(x) / 2;
}

gnr_status cuda_geglu_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t F = 0, n = 0;
    geglu_dims(x, &F, &n);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(geglu_forward_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(x), gnr_f32(y), F, n);
    return GNR_OK;
}

gnr_status cuda_geglu_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t F = 0, n = 0;
    geglu_dims(x, &F, &n);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(geglu_backward_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(dy), gnr_f32(x), gnr_f32(dx), F, n);
    return GNR_OK;
}
