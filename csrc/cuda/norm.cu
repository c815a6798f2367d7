/* GroupNorm and LayerNorm, forward and backward.
 *
 * Both normalise contiguous groups of M elements: GroupNorm's group g of
 * image n is channels [g*Cg, (g+1)*Cg) times S spatial positions; LayerNorm's
 * group is one row (G = 1, Cg = C, S = 1). The channel of element i of group b
 * is (b % G)*Cg + i/S. One block per group; sums in double over fixed-order
 * trees, so forward and backward are deterministic and agree on mu, rstd. */
#include "cuda_ops.h"

typedef struct {
    int64_t M;  /* elements per group */
    int64_t S;  /* spatial positions per channel */
    int64_t Cg; /* channels per group */
    int64_t G;  /* groups per image (1 for LayerNorm) */
    float eps;
} norm_geom;

/* mu, rstd = 1/sqrt(var + eps) of x[0..M), biased variance, two passes. */
__device__ void group_stats(const float *x, int64_t M, float eps, double *sh, float *mu, float *rstd)
{
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < M; i += CUDA_BLOCK) acc += x[i];
    double mean = block_sum(acc, sh) / (double)M;
    acc = 0.0;
    for (int64_t i = threadIdx.x; i < M; i += CUDA_BLOCK) {
        double d = (double)x[i] - mean;
        acc += d * d;
    }
    double var = block_sum(acc, sh) / (double)M;
    *mu = (float)mean;
    *rstd = (float)(1.0 / sqrt(var + (double)eps));
}

/* y = (x - mu) * rstd * gamma[c] + beta[c] */
__global__ void norm_forward_kernel(const float *x, const float *gamma, const float *beta, float *y, norm_geom g)
{
    __shared__ double sh[CUDA_BLOCK];
    int64_t b = blockIdx.x;
    const float *xg = x + b * g.M;
    float *yg = y + b * g.M;
    float mu, rstd;
    group_stats(xg, g.M, g.eps, sh, &mu, &rstd);
    int64_t c0 = (b % g.G) * g.Cg;
    for (int64_t i = threadIdx.x; i < g.M; i += CUDA_BLOCK) {
        int64_t c = c0 + i / g.S;
        float v = (xg[i] - mu) * rstd;
        if (gamma) v *= gamma[c];
        if (beta) v += beta[c];
        yg[i] = v;
    }
}

/* xhat = (x - mu) * rstd, gh = dy * gamma[c]:
 * dx += rstd * (gh - mean(gh) - xhat * mean(gh * xhat)) */
__global__ void norm_backward_kernel(const float *dy, const float *x, const float *gamma, float *dx, norm_geom g)
{
    __shared__ double sh[CUDA_BLOCK];
    int64_t b = blockIdx.x;
    const float *xg = x + b * g.M, *dyg = dy + b * g.M;
    float *dxg = dx + b * g.M;
    float mu, rstd;
    group_stats(xg, g.M, g.eps, sh, &mu, &rstd);
    int64_t c0 = (b % g.G) * g.Cg;
    double a1 = 0.0, a2 = 0.0;
    for (int64_t i = threadIdx.x; i < g.M; i += CUDA_BLOCK) {
        float gh = gamma ? dyg[i] * gamma[c0 + i / g.S] : dyg[i];
        float xh = (xg[i] - mu) * rstd;
        a1 += gh;
        a2 += (double)gh * xh;
    }
    float m1 = (float)(block_sum(a1, sh) / (double)g.M);
    float m2 = (float)(block_sum(a2, sh) / (double)g.M);
    for (int64_t i = threadIdx.x; i < g.M; i += CUDA_BLOCK) {
        float gh = gamma ? dyg[i] * gamma[c0 + i / g.S] : dyg[i];
        float xh = (xg[i] - mu) * rstd;
        dxg[i] += rstd * (gh - m1 - xh * m2);
    }
}

/* x: N x C x (spatial...), groups dividing C (checked in op_checks.c) */
static void group_geom(const gnr_tensor *x, int groups, float eps, norm_geom *g, int64_t *nblocks)
{
    int64_t C = x->shape[1];
    g->S = 1;
    for (int i = 2; i < x->ndim; i++) g->S *= x->shape[i];
    g->Cg = C / groups;
    g->G = groups;
    g->M = g->Cg * g->S;
    g->eps = eps;
    *nblocks = x->shape[0] * groups;
}

static void layer_geom(const gnr_tensor *x, float eps, norm_geom *g, int64_t *nblocks)
{
    int64_t C = x->shape[x->ndim - 1];
    g->S = 1;
    g->Cg = C;
    g->G = 1;
    g->M = C;
    g->eps = eps;
    *nblocks = C ? gnr_numel(x) / C : 0;
}

static gnr_status launch_forward(cuda_state *s, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta,
                                 gnr_tensor *y, norm_geom g, int64_t nblocks)
{
    if (nblocks == 0 || g.M == 0) return GNR_OK;
    if (nblocks > 0x7fffffff) return gnr_error(GNR_ERR_VALUE, "normalisation: too many groups (%lld)", (long long)nblocks);
    CUDA_LAUNCH(norm_forward_kernel, (unsigned)nblocks, CUDA_BLOCK, 0, s->stream, gnr_f32(x), gamma ? gnr_f32(gamma) : NULL, beta ? gnr_f32(beta) : NULL, gnr_f32(y), g);
    return GNR_OK;
}

static gnr_status launch_backward(cuda_state *s, const gnr_tensor *dy, const gnr_tensor *x, const gnr_tensor *gamma,
                                  gnr_tensor *dx, norm_geom g, int64_t nblocks)
{
    if (nblocks == 0 || g.M == 0) return GNR_OK;
    if (nblocks > 0x7fffffff) return gnr_error(GNR_ERR_VALUE, "normalisation: too many groups (%lld)", (long long)nblocks);
    CUDA_LAUNCH(norm_backward_kernel, (unsigned)nblocks, CUDA_BLOCK, 0, s->stream, gnr_f32(dy), gnr_f32(x), gamma ? gnr_f32(gamma) : NULL, gnr_f32(dx), g);
    return GNR_OK;
}

gnr_status cuda_group_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                   const gnr_tensor *beta, int groups, float eps, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    norm_geom g;
    int64_t nb = 0;
    group_geom(x, groups, eps, &g, &nb);
    return launch_forward(s, x, gamma, beta, y, g, nb);
}

gnr_status cuda_group_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                    const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx)
{
    cuda_state *s = cuda_state_of(ctx);
    norm_geom g;
    int64_t nb = 0;
    group_geom(x, groups, eps, &g, &nb);
    return launch_backward(s, dy, x, gamma, dx, g, nb);
}

gnr_status cuda_layer_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                   const gnr_tensor *beta, float eps, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    norm_geom g;
    int64_t nb = 0;
    layer_geom(x, eps, &g, &nb);
    return launch_forward(s, x, gamma, beta, y, g, nb);
}

gnr_status cuda_layer_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                    const gnr_tensor *gamma, float eps, gnr_tensor *dx)
{
    cuda_state *s = cuda_state_of(ctx);
    norm_geom g;
    int64_t nb = 0;
    layer_geom(x, eps, &g, &nb);
    return launch_backward(s, dy, x, gamma, dx, g, nb);
}
