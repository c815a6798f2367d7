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
 * The input gradient is the same method with U of the forward weight read
 * transposed and its 16 planes permuted: rotating g by 180 degrees reverses
 * G's columns, which swaps G's rows 0 and 3 (G R = P G), so
 * G rot(g) G^T = P U P^T: plane (xi, nu) of the rotated kernel is plane
 * (p(xi), p(nu)) of U, p swapping 0 and 3. One U per weight serves both.
 *
 * A UNet weight's U is kept with the context from its first use on
 * (core/derived.h), within the cache's budget: deriving it costs a third of
 * the convolution at 256 tiles. A kept U and one derived into scratch are
 * the same numbers.
 *
 * Tiles go in blocks of whole tile rows sized so V and M of a block fit in
 * WINO_BLOCK_BYTES; the 16 products of a block run in parallel, one thread
 * each, so the result does not depend on the thread count. */
#include <string.h>

#include "core/derived.h"
#include "cpu/cpu_ops.h"

#define WINO_BLOCK_BYTES ((size_t)8 << 20)

/* U[e][o][c] for e = 4 xi + nu: G g G^T of the kernel w[o][c] that maps
 * input channel c to output o. */
static void transform_weights(int nt, const float *w, int64_t o_n, int64_t c_n, float *u)
{
    int64_t plane = o_n * c_n;
#pragma omp parallel for num_threads(nt) if (plane > 4096) schedule(static)
    for (int64_t oc = 0; oc < plane; oc++) {
        const float *g = w + oc * 9;
        float t[4][3]; /* G g */
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[j];
            t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
            t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
            t[3][j] = g[6 + j];
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

/* The 16 values B^T d B of one 4 x 4 patch d, to dst[e * plane]. */
static inline void input_tile(const float d[4][4], float *dst, int64_t plane)
{
    float r[4][4]; /* B^T d */
    for (int j = 0; j < 4; j++) {
        r[0][j] = d[0][j] - d[2][j];
        r[1][j] = d[1][j] + d[2][j];
        r[2][j] = d[2][j] - d[1][j];
        r[3][j] = d[1][j] - d[3][j];
    }
    for (int i = 0; i < 4; i++) { /* (B^T d) B */
        float *o = dst + (int64_t)(4 * i) * plane;
        o[0] = r[i][0] - r[i][2];
        o[plane] = r[i][1] + r[i][2];
        o[2 * plane] = r[i][2] - r[i][1];
        o[3 * plane] = r[i][1] - r[i][3];
    }
}

/* V[e][c][t - t0] = B^T d B for the tiles of rows ty0 .. ty0 + rows - 1
 * (t0 = ty0 * tx), d the 4 x 4 patch of channel c at rows 2 ty - 1 ..,
 * columns 2 tx - 1 .. (0 outside). One (channel, tile row) per task: the
 * patch rows are four input rows (a zero row above and below the map), and
 * the tiles whose columns all exist run in a loop without bounds checks,
 * which the compiler vectorises across tiles. */
static void transform_input(int nt, const wino_geom *g, const float *x, const float *zero_row, int64_t ty0,
                            int64_t rows, float *v)
{
    int64_t tb = rows * g->tx, plane = g->c * tb;
    /* interior tiles: columns 2 tx - 1 .. 2 tx + 2 inside 0 .. w - 1 */
    int64_t in0 = 1, in1 = (g->w - 3) / 2 + 1;
    if (in1 < in0) in1 = in0;
    if (in1 > g->tx) in1 = g->tx;
#pragma omp parallel for num_threads(nt) if (plane > 256) schedule(static)
    for (int64_t cr = 0; cr < g->c * rows; cr++) {
        int64_t c = cr / rows, ty = ty0 + cr % rows;
        const float *xc = x + c * g->h * g->w, *row[4];
        for (int i = 0; i < 4; i++) {
            int64_t yy = 2 * ty - 1 + i;
            row[i] = yy >= 0 && yy < g->h ? xc + yy * g->w : zero_row;
        }
        float *dst = v + c * tb + (ty - ty0) * g->tx;
        const float *r0 = row[0], *r1 = row[1], *r2 = row[2], *r3 = row[3];
        for (int64_t tx = in0; tx < in1; tx++) {
            int64_t x0 = 2 * tx - 1;
            float d[4][4];
            for (int j = 0; j < 4; j++) {
                d[0][j] = r0[x0 + j];
                d[1][j] = r1[x0 + j];
                d[2][j] = r2[x0 + j];
                d[3][j] = r3[x0 + j];
            }
            input_tile(d, dst + tx, plane);
        }
        for (int64_t tx = 0; tx < g->tx; tx++) { /* the edge tiles */
            if (tx >= in0 && tx < in1) continue;
            float d[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    int64_t xx = 2 * tx - 1 + j;
                    d[i][j] = xx >= 0 && xx < g->w ? row[i][xx] : 0.0f;
                }
            input_tile(d, dst + tx, plane);
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

/* U of the weight w (o_n x c_n x 3 x 3, as stored): the kept copy, or one
 * derived into scratch from ctx->arena. */
static gnr_status weights_in_domain(gnr_ctx *ctx, const float *w, int64_t o_n, int64_t c_n, const float **u)
{
    size_t bytes = 16 * (size_t)(o_n * c_n) * sizeof(float);
    int fill;
    float *dst = gnr_derived_get(ctx, w, GNR_DERIVED_WINOGRAD, bytes, &fill);
    if (dst && !fill) {
        *u = dst;
        return GNR_OK;
    }
    if (!dst) GNR_TRY(gnr_arena_alloc(ctx->arena, bytes, (void **)&dst));
    transform_weights(gnr_cpu_threads(ctx), w, o_n, c_n, dst);
    *u = dst;
    return GNR_OK;
}

gnr_status cpu_conv3x3_winograd(gnr_ctx *ctx, const float *x, int64_t n, int64_t c, int64_t h, int64_t w,
                                const float *weight, int64_t o, int flip, float *y)
{
    static const int swap03[4] = {3, 1, 2, 0};
    int nt = gnr_cpu_threads(ctx);
    wino_geom g = {c, h, w, o, (h + 1) / 2, (w + 1) / 2};
    /* blocks of whole tile rows, V and M of a block within WINO_BLOCK_BYTES */
    int64_t tb = (int64_t)(WINO_BLOCK_BYTES / (16 * (size_t)(c + o) * sizeof(float)));
    int64_t rb = tb / g.tx < 1 ? 1 : tb / g.tx > g.ty ? g.ty : tb / g.tx;
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    const float *u;
    float *v, *mm, *zero_row;
    gnr_status st = GNR_OK;
    /* the stored weight is o x c, or for flip c x o */
    GNR_CHECK(st, weights_in_domain(ctx, weight, flip ? c : o, flip ? o : c, &u));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(c * rb * g.tx) * sizeof(float), (void **)&v));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(o * rb * g.tx) * sizeof(float), (void **)&mm));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)w * sizeof(float), (void **)&zero_row));
    memset(zero_row, 0, (size_t)w * sizeof(float));
    for (int64_t img = 0; img < n; img++) {
        const float *xn = x + img * c * h * w;
        float *yn = y + img * o * h * w;
        for (int64_t ty0 = 0; ty0 < g.ty; ty0 += rb) {
            int64_t rows = g.ty - ty0 < rb ? g.ty - ty0 : rb, cnt = rows * g.tx;
            transform_input(nt, &g, xn, zero_row, ty0, rows, v);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int e = 0; e < 16; e++) {
                int ue = flip ? 4 * swap03[e / 4] + swap03[e % 4] : e;
                cpu_gemm_narrow(1, flip, o, cnt, c, u + (int64_t)ue * o * c, flip ? o : c, v + (int64_t)e * c * cnt,
                                cnt, 0, mm + (int64_t)e * o * cnt, cnt);
            }
            transform_output(nt, &g, mm, ty0 * g.tx, cnt, yn);
        }
    }
done:
    gnr_arena_release(ctx->arena, mark);
    return st;
}
