/* Activations: SiLU, exact GELU, CLIP's quick GELU, and the GEGLU gate. */
#include <math.h>

#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) */
static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * INV_SQRT2)); }
/* gelu'(x) = Phi(x) + x phi(x) */
static inline float gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}

static inline float act_value(gnr_act act, float x)
{
    switch (act) {
    case GNR_ACT_SILU: return x * sigmoidf(x);
    case GNR_ACT_GELU: return gelu(x);
    default: return x * sigmoidf(1.702f * x);
    }
}

/* silu' = s (1 + x (1 - s)); quick_gelu' = s + 1.702 x s (1 - s) with s = sigmoid(1.702 x) */
static inline float act_grad(gnr_act act, float x)
{
    float s;
    switch (act) {
    case GNR_ACT_SILU: s = sigmoidf(x); return s * (1.0f + x * (1.0f - s));
    case GNR_ACT_GELU: return gelu_grad(x);
    default: s = sigmoidf(1.702f * x); return s + 1.702f * x * s * (1.0f - s);
    }
}

/* SiLU, the UNet's and the VAE's activation, runs on the vector kernels
 * (simd.h), in pieces of ACT_PIECE elements spread over the threads. */
#define ACT_PIECE 4096

static int64_t pieces(int64_t n) { return (n + ACT_PIECE - 1) / ACT_PIECE; }
static int64_t piece_len(int64_t n, int64_t i) { return n - i * ACT_PIECE < ACT_PIECE ? n - i * ACT_PIECE : ACT_PIECE; }

/* y = f(x) */
gnr_status cpu_act_forward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y)
{
    const float *px = gnr_f32(x);
    float *py = gnr_f32(y);
    int64_t n = gnr_numel(x);
    if (act == GNR_ACT_SILU) {
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t i = 0; i < pieces(n); i++)
            cpu_vec_silu(px + i * ACT_PIECE, py + i * ACT_PIECE, piece_len(n, i));
        return GNR_OK;
    }
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) py[i] = act_value(act, px[i]);
    return GNR_OK;
}

/* dx += dy * f'(x) */
gnr_status cpu_act_backward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    const float *pd = gnr_f32(dy), *px = gnr_f32(x);
    float *pdx = gnr_f32(dx);
    int64_t n = gnr_numel(x);
    if (act == GNR_ACT_SILU) {
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t i = 0; i < pieces(n); i++)
            cpu_vec_silu_backward(px + i * ACT_PIECE, pd + i * ACT_PIECE, pdx + i * ACT_PIECE, piece_len(n, i));
        return GNR_OK;
    }
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) pdx[i] += pd[i] * act_grad(act, px[i]);
    return GNR_OK;
}

/* x: rows x 2F (checked in op_checks.c) */
static void geglu_dims(const gnr_tensor *x, int64_t *rows, int64_t *f)
{
    int64_t two_f = x->shape[x->ndim - 1];
    *f = two_f / 2;
    *rows = two_f ? gnr_numel(x) / two_f : 0;
}

/* x = [a | g] along the last dim: y = a * gelu(g), with simd.h's vector erf
 * (the elementwise GELU above calls libm's erff: the two agree within a few
 * ulp) */
gnr_status cpu_geglu_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    int64_t rows, f;
    geglu_dims(x, &rows, &f);
    const float *px = gnr_f32(x);
    float *py = gnr_f32(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * f > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t r = 0; r < rows; r++) cpu_vec_geglu(px + r * 2 * f, px + r * 2 * f + f, py + r * f, f);
    return GNR_OK;
}

/* da += dy * gelu(g);  dg += dy * a * gelu'(g) */
gnr_status cpu_geglu_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    int64_t rows, f;
    geglu_dims(x, &rows, &f);
    const float *px = gnr_f32(x), *pd = gnr_f32(dy);
    float *pdx = gnr_f32(dx);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * f > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        cpu_vec_geglu_backward(px + r * 2 * f, px + r * 2 * f + f, pd + r * f, pdx + r * 2 * f, pdx + r * 2 * f + f,
                               f);
    return GNR_OK;
}
