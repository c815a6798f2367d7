/* Winograd's minimal filtering F(2x2, 3x3) for the stride-1, pad-1 3 x 3
 * convolutions that carry most of a UNet's convolution work (conv2d.c picks
 * it for them when the output is large enough).
 *
 * Each 2 x 2 block of outputs comes from a 4 x 4 patch of input: with
 * V = B^T d B (the patch transformed), U = G g G^T (the kernel), the block
 * is A^T (U .* V) A. Summed over input channels, the 16 elementwise products
 * become 16 independent matrix products M_e = U_e (O x C) V_e (C x tiles),
 * 16 multiplications per block where the direct method needs 36: 2.25 times
 * fewer FLOPs. The transforms are additions (and halvings for G), so the
 * result is within a few float roundings of the direct sum (tests hold it to
 * 1e-4 against torch like every conv).
 *
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
 *   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 *
 * Tiles go in blocks sized so V and M of a block fit in WINO_BLOCK_BYTES;
 * the 16 products of a block run in parallel, one thread each, so the
 * result does not depend on the thread count. */
#include <string.h>

#include "cpu/cpu_ops.h"

#define WINO_BLOCK_BYTES ((size_t)8 << 20)

/* U[e][o][c] for e = 4 xi + nu: G g G^T of the kernel that maps input
 * channel c to output o. flip: the kernel is w[c][o] rotated by 180 degrees
 * (the input gradient's convolution: dx = conv(dy, w^T flipped)). */
static void transform_weights(int nt, const float *w, int64_t o_n, int64_t c_n, int flip, float *u)
{
    int64_t plane = o_n * c_n;
#pragma omp parallel for num_threads(nt) if (plane > 4096) schedule(static)
    for (int64_t oc = 0; oc < plane; oc++) {
        int64_t o = oc / c_n, c = oc % c_n;
        float g[3][3];
        const float *src = flip ? w + (c * o_n + o) * 9 : w + (o * c_n + c) * 9;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) g[i][j] = flip ? src[(2 - i) * 3 + (2 - j)] : src[i * 3 + j];
        float t[4][3]; /* G g */
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[0][j];
            t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
            t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
            t[3][j] = g[2][j];
        }
        for (int i = 0; i < 4; i++) { /* (G g) G^T */
            float *dst = u + (int64_t)(4 * i) * plane + oc;
            dst[0] = t[i][0];
            dst[plane] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            dst[2 * plane] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            dst[3 * plane] = t[i][2];
        }
    }
}

typedef struct {
    int64_t c, h, w, o;  /* input channels and size, output channels */
    int64_t ty, tx;      /* tiles down and across */
} wino_geom;

/* V[e][c][t - t0] = B^T d B for tiles t0 .. t0 + tb - 1, d the 4 x 4 patch
 * of channel c at rows 2 ty - 1 .., columns 2 tx - 1 .. (0 outside). */
static void transform_input(int nt, const wino_geom *g, const float *x, int64_t t0, int64_t tb, float *v)
{
    int64_t plane = g->c * tb;
#pragma omp parallel for num_threads(nt) if (plane > 256) schedule(static)
    for (int64_t ct = 0; ct < plane; ct++) {
        int64_t c = ct / tb, t = t0 + ct % tb;
        int64_t y0 = 2 * (t / g->tx) - 1, x0 = 2 * (t % g->tx) - 1;
        const float *xc = x + c * g->h * g->w;
        float d[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                int64_t yy = y0 + i, xx = x0 + j;
                d[i][j] = yy >= 0 && yy < g->h && xx >= 0 && xx < g->w ? xc[yy * g->w + xx] : 0.0f;
            }
        float r[4][4]; /* B^T d */
        for (int j = 0; j < 4; j++) {
            r[0][j] = d[0][j] - d[2][j];
            r[1][j] = d[1][j] + d[2][j];
            r[2][j] = d[2][j] - d[1][j];
            r[3][j] = d[1][j] - d[3][j];
        }
        for (int i = 0; i < 4; i++) { /* (B^T d) B */
            float *dst = v + (int64_t)(4 * i) * plane + ct;
            dst[0] = r[i][0] - r[i][2];
            dst[plane] = r[i][1] + r[i][2];
            dst[2 * plane] = r[i][2] - r[i][1];
            dst[3 * plane] = r[i][1] - r[i][3];
        }
    }
}

/* y[o][2 ty + i][2 tx + j] += (A^T M A)[i][j] for the block's tiles, where
 * the output exists (odd sizes end in half tiles). */
static void transform_output(int nt, const wino_geom *g, const float *mm, int64_t t0, int64_t tb, float *y)
{
    int64_t plane = g->o * tb;
#pragma omp parallel for num_threads(nt) if (plane > 256) schedule(static)
    for (int64_t ot = 0; ot < plane; ot++) {
        int64_t o = ot / tb, t = t0 + ot % tb;
        float m[4][4];
        for (int e = 0; e < 16; e++) m[e / 4][e % 4] = mm[(int64_t)e * plane + ot];
        float r[2][4]; /* A^T M */
        for (int j = 0; j < 4; j++) {
            r[0][j] = m[0][j] + m[1][j] + m[2][j];
            r[1][j] = m[1][j] - m[2][j] - m[3][j];
        }
        int64_t y0 = 2 * (t / g->tx), x0 = 2 * (t % g->tx);
        float *yo = y + o * g->h * g->w;
        for (int i = 0; i < 2 && y0 + i < g->h; i++) {
            float out[2] = {r[i][0] + r[i][1] + r[i][2], r[i][1] - r[i][2] - r[i][3]};
            for (int j = 0; j < 2 && x0 + j < g->w; j++) yo[(y0 + i) * g->w + x0 + j] += out[j];
        }
    }
}

gnr_status cpu_conv3x3_winograd(gnr_ctx *ctx, const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                                const float *weight, int64_t o, int flip, float *y)
{
    int nt = gnr_cpu_threads(ctx);
    wino_geom g = {c, h, w, o, (h + 1) / 2, (w + 1) / 2};
    int64_t tiles = g.ty * g.tx;
    int64_t tb = (int64_t)(WINO_BLOCK_BYTES / (16 * (size_t)(c + o) * sizeof(float)));
    tb = tb < 16 ? 16 : tb > tiles ? tiles : tb;
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    float *u, *v, *mm;
    gnr_status st = GNR_OK;
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(o * c) * sizeof(float), (void **)&u));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(c * tb) * sizeof(float), (void **)&v));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(o * tb) * sizeof(float), (void **)&mm));
    transform_weights(nt, weight, o, c, flip, u);
    for (int64_t img = 0; img < n; img++) {
        const float *xn = x + img * c * h * w;
        float *yn = y + img * o * h * w;
        for (int64_t t0 = 0; t0 < tiles; t0 += tb) {
            int64_t cnt = tiles - t0 < tb ? tiles - t0 : tb;
            transform_input(nt, &g, xn, t0, cnt, v);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int e = 0; e < 16; e++)
                cpu_gemm(1, 0, 0, o, cnt, c, 1.0f, u + (int64_t)e * o * c, c, v + (int64_t)e * c * cnt, cnt, 0.0f,
                         mm + (int64_t)e * o * cnt, cnt);
            transform_output(nt, &g, mm, t0, cnt, yn);
        }
    }
done:
    gnr_arena_release(ctx->arena, mark);
    return st;
}
