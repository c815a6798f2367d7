/* 2-D convolution as im2col + cuBLAS, tiled over output pixels so the column
 * buffer (from the arena) never exceeds CUDA_TILE_BYTES; the backward is the
 * transposed product followed by col2im.
 *
 * For image n and a tile of output pixels [p0, p0 + np) (pixel = i*Wo + j):
 *   col[k, t] = x[n, c, i*s + p - pt, j*s + q - pl]   k = (c*KH + p)*KW + q, 0 outside
 *   y[n, o, p0 + t] = sum_k w[o, k] col[k, t]        (w is O x K row-major)
 * A 1x1, stride-1, unpadded conv uses x[n] (C x HW) as the column matrix. */
#include "cuda_ops.h"

typedef struct {
    int64_t C, H, W, KH, KW, Ho, Wo;
    int s, pt, pl;
} conv_geom;

/* col (K x np, row-major) for pixels [p0, p0 + np) of one image x (C x H x W) */
__global__ void im2col_kernel(const float *x, float *col, conv_geom g, int64_t p0, int64_t np)
{
    int64_t total = g.C * g.KH * g.KW * np;
    GRID_STRIDE(idx, total)
    {
        int64_t t = idx % np, k = idx / np;
        int64_t q = k % g.KW, p = (k / g.KW) % g.KH, c = k / (g.KW * g.KH);
        int64_t pix = p0 + t, i = pix / g.Wo, j = pix % g.Wo;
        int64_t u = i * g.s + p - g.pt, v = j * g.s + q - g.pl;
        col[idx] = (u >= 0 && u < g.H && v >= 0 && v < g.W) ? x[(c * g.H + u) * g.W + v] : 0.0f;
    }
}

/* dx[c,u,v] += sum over (p,q) with i*s + p - pt = u, j*s + q - pl = v and
 * pixel i*Wo + j in [p0, p0 + np) of dcol[k, pixel - p0]. One thread per dx
 * element, so the sum order is fixed and no atomics are needed. */
__global__ void col2im_kernel(const float *dcol, float *dx, conv_geom g, int64_t p0, int64_t np)
{
    int64_t total = g.C * g.H * g.W;
    GRID_STRIDE(idx, total)
    {
        int64_t v = idx % g.W, u = (idx / g.W) % g.H, c = idx / (g.W * g.H);
        float acc = 0.0f;
        for (int64_t p = 0; p < g.KH; p++) {
            int64_t iy = u + g.pt - p;
            if (iy < 0 || iy % g.s) continue;
            int64_t i = iy / g.s;
            if (i >= g.Ho) continue;
            for (int64_t q = 0; q < g.KW; q++) {
                int64_t jx = v + g.pl - q;
                if (jx < 0 || jx % g.s) continue;
                int64_t j = jx / g.s;
                if (j >= g.Wo) continue;
                int64_t t = i * g.Wo + j - p0;
                if (t < 0 || t >= np) continue;
                acc += dcol[((c * g.KH + p) * g.KW + q) * np + t];
            }
        }
        dx[idx] += acc;
    }
}

/* y[n,o,pix] += b[o] */
__global__ void add_bias_channels_kernel(float *y, const float *b, int64_t O, int64_t P, int64_t n)
{
    GRID_STRIDE(i, n) y[i] += b[(i / P) % O];
}

/* Shapes checked in op_checks.c; cuBLAS takes the product's dims as int. */
static gnr_status conv_geometry(const char *op, const gnr_tensor *x, const gnr_tensor *w, const gnr_conv_params *p,
                                conv_geom *g, int64_t *N, int64_t *O)
{
    g->C = x->shape[1];
    g->H = x->shape[2];
    g->W = x->shape[3];
    g->KH = w->shape[2];
    g->KW = w->shape[3];
    g->s = p->stride;
    g->pt = p->pad_top;
    g->pl = p->pad_left;
    g->Ho = (g->H + p->pad_top + p->pad_bottom - g->KH) / g->s + 1;
    g->Wo = (g->W + p->pad_left + p->pad_right - g->KW) / g->s + 1;
    *N = x->shape[0];
    *O = w->shape[0];
    GNR_TRY(cuda_check_int(op, "C*KH*KW", g->C * g->KH * g->KW));
    GNR_TRY(cuda_check_int(op, "Ho*Wo", g->Ho * g->Wo));
    GNR_TRY(cuda_check_int(op, "O", *O));
    return GNR_OK;
}

static int is_pointwise(const conv_geom *g, const gnr_conv_params *p)
{
    return g->KH == 1 && g->KW == 1 && p->stride == 1 && p->pad_top == 0 && p->pad_bottom == 0 &&
           p->pad_left == 0 && p->pad_right == 0;
}

/* Output pixels per tile: the column buffer K x np stays within CUDA_TILE_BYTES. */
static int64_t tile_pixels(int64_t K, int64_t P)
{
    int64_t np = (int64_t)(CUDA_TILE_BYTES / sizeof(float)) / (K > 0 ? K : 1);
    if (np < 1) np = 1;
    return np < P ? np : P;
}

gnr_status cuda_conv2d_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                               const gnr_conv_params *p, gnr_tensor *y)
{
    const char *op = "conv2d_forward";
    cuda_state *s = cuda_state_of(ctx);
    conv_geom g;
    int64_t N = 0, O = 0;
    GNR_TRY(conv_geometry(op, x, w, p, &g, &N, &O));
    int64_t K = g.C * g.KH * g.KW, P = g.Ho * g.Wo;
    if (N == 0 || O == 0 || P == 0) return GNR_OK;
    const float one = 1.0f, zero = 0.0f;
    const float *xd = gnr_f32(x), *wd = gnr_f32(w);
    float *yd = gnr_f32(y);
    if (K == 0) {
        CUDA_CHECK(cudaMemsetAsync(yd, 0, gnr_nbytes(y), s->stream));
    } else if (is_pointwise(&g, p)) {
        /* y[n]^T (P x O) = x[n]^T (P x C) * w^T (C x O), one batched product over n */
        CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, (int)O, (int)K, &one, xd, (int)P, g.C * g.H * g.W,
                               wd, (int)K, 0, &zero, yd, (int)P, O * P, (int)N));
    } else {
        int64_t np_max = tile_pixels(K, P);
        cuda_scratch sc(ctx->arena);
        float *col;
        GNR_TRY(sc.alloc((size_t)(K * np_max) * sizeof(float), (void **)&col));
        for (int64_t n = 0; n < N; n++) {
            for (int64_t p0 = 0; p0 < P; p0 += np_max) {
                int64_t np = P - p0 < np_max ? P - p0 : np_max;
                CUDA_LAUNCH(im2col_kernel, cuda_grid(K * np), CUDA_BLOCK, 0, s->stream, xd + n * g.C * g.H * g.W, col, g, p0, np);
                /* y[n][:, p0:p0+np]^T (np x O, ld P) = col^T (np x K, ld np) * w^T (K x O, ld K) */
                CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, (int)np, (int)O, (int)K, &one, col, (int)np, 0, wd,
                                       (int)K, 0, &zero, yd + n * O * P + p0, (int)P, 0, 1));
            }
        }
    }
    if (b) {
        int64_t n = N * O * P;
        CUDA_LAUNCH(add_bias_channels_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, yd, gnr_f32(b), O, P, n);
    }
    return GNR_OK;
}

gnr_status cuda_conv2d_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, const gnr_conv_params *p,
                                gnr_tensor *dx)
{
    const char *op = "conv2d_backward";
    cuda_state *s = cuda_state_of(ctx);
    conv_geom g;
    int64_t N = 0, O = 0;
    GNR_TRY(conv_geometry(op, dx, w, p, &g, &N, &O));
    int64_t K = g.C * g.KH * g.KW, P = g.Ho * g.Wo, HW = g.H * g.W;
    if (N == 0 || O == 0 || P == 0 || K == 0) return GNR_OK;
    const float one = 1.0f, zero = 0.0f;
    const float *dyd = gnr_f32(dy), *wd = gnr_f32(w);
    float *dxd = gnr_f32(dx);
    if (is_pointwise(&g, p)) {
        /* dx[n]^T (P x C) += dy[n]^T (P x O) * w (O x C), one batched product over n */
        CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, (int)P, (int)K, (int)O, &one, dyd, (int)P, O * P, wd, (int)K,
                               0, &one, dxd, (int)P, g.C * HW, (int)N));
        return GNR_OK;
    }
    int64_t np_max = tile_pixels(K, P);
    cuda_scratch sc(ctx->arena);
    float *dcol;
    GNR_TRY(sc.alloc((size_t)(K * np_max) * sizeof(float), (void **)&dcol));
    for (int64_t n = 0; n < N; n++) {
        for (int64_t p0 = 0; p0 < P; p0 += np_max) {
            int64_t np = P - p0 < np_max ? P - p0 : np_max;
            /* dcol^T (np x K, ld np) = dy[n][:, p0:p0+np]^T (np x O, ld P) * w (O x K) */
            CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, (int)np, (int)K, (int)O, &one, dyd + n * O * P + p0,
                                   (int)P, 0, wd, (int)K, 0, &zero, dcol, (int)np, 0, 1));
            CUDA_LAUNCH(col2im_kernel, cuda_grid(g.C * HW), CUDA_BLOCK, 0, s->stream, dcol, dxd + n * g.C * HW, g, p0, np);
        }
    }
    return GNR_OK;
}
