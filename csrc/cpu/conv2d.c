/* 2-D convolution as im2col + a matrix product (sgemm, or on small maps the
 * backend's own kernels: narrow_gemm.c), tiled over output rows.
 *
 * The column matrix of a whole 512 x 512 feature map with 128 channels and a
 * 3x3 kernel would take 1.2 GB; each tile holds only as many output rows as
 * fit in CONV_TILE_BYTES of scratch. 1x1 stride-1 unpadded convolutions skip
 * im2col: the input already is the column matrix. 3x3 stride-1 pad-1
 * convolutions with at least WINO_MIN_TILES 2x2 output tiles go to
 * Winograd's method (winograd.c: 2.25 times fewer FLOPs), and those with at
 * least WINO_MIN_TILES_SMALL when the weight's Winograd form takes at most
 * WINO_SMALL_FORM_BYTES. Measured on SD 1.4's UNet at 256 x 256 and 512 x
 * 512, with the form kept (as a model keeps it): on 16 x 16 maps (64
 * tiles), Winograd for the 640-output convolutions took 11 % off the 256
 * pass (3 % of it from the up blocks' 960..1920-input ones, forms of 37 to
 * 75 MiB), while 1280 -> 1280, a 100 MiB form whose 16 thin products read
 * it all from memory for few tiles, ran at half the im2col rate; 8 x 8 maps
 * made the pass 15 % slower. The choice depends on shapes only, never on what
 * the cache holds, so a result does not depend on a model's history. */
#include <string.h>

#include "cpu/cpu_ops.h"

#define CONV_TILE_BYTES ((size_t)16 << 20)

typedef struct {
    int64_t n, c, h, w;      /* input */
    int64_t o, kh, kw;       /* weight */
    int64_t ho, wo;          /* output */
    int64_t s, pt, pb, pl, pr;
    int64_t ckk;             /* C * KH * KW, the rows of the column matrix */
} conv_geom;

/* x: N x C x H x W, w: O x C x KH x KW (shapes checked in op_checks.c) */
static void conv_setup(const gnr_tensor *x, const gnr_tensor *w, const gnr_conv_params *p, conv_geom *g)
{
    g->n = x->shape[0], g->c = x->shape[1], g->h = x->shape[2], g->w = x->shape[3];
    g->o = w->shape[0], g->kh = w->shape[2], g->kw = w->shape[3];
    g->s = p->stride, g->pt = p->pad_top, g->pb = p->pad_bottom, g->pl = p->pad_left, g->pr = p->pad_right;
    g->ho = (g->h + g->pt + g->pb - g->kh) / g->s + 1;
    g->wo = (g->w + g->pl + g->pr - g->kw) / g->s + 1;
    g->ckk = g->c * g->kh * g->kw;
}

static int is_pointwise(const conv_geom *g)
{
    return g->kh == 1 && g->kw == 1 && g->s == 1 && g->pt == 0 && g->pb == 0 && g->pl == 0 && g->pr == 0;
}

/* With few channels to sum over, the 16 products of Winograd's form are too thin
 * (k = C) to pay for its transforms: SD 1.4's UNet input convolution (4 ->
 * 320 channels on 64 x 64) took 5.3 ms that way, 2.7 by im2col (2 threads,
 * AVX-512). Only where the whole column matrix is small, though: on a VAE's
 * full-size image im2col's tiles would hold twice the memory of Winograd's
 * blocks. */
#define WINO_MIN_CHANNELS 16
#define SMALL_COLS_BYTES ((int64_t)4 << 20)
#define WINO_MIN_TILES 256
#define WINO_MIN_TILES_SMALL 64
#define WINO_SMALL_FORM_BYTES ((int64_t)96 << 20)

/* summed: the channels the products sum over (the forward's inputs, the
 * input gradient's outputs) */
static int use_winograd(const conv_geom *g, int64_t summed)
{
    if (!(g->kh == 3 && g->kw == 3 && g->s == 1 && g->pt == 1 && g->pb == 1 && g->pl == 1 && g->pr == 1))
        return 0;
    if (summed < WINO_MIN_CHANNELS && g->ckk * g->ho * g->wo * (int64_t)sizeof(float) <= SMALL_COLS_BYTES) return 0;
    int64_t tiles = ((g->ho + 1) / 2) * ((g->wo + 1) / 2);
    return tiles >= WINO_MIN_TILES ||
           (tiles >= WINO_MIN_TILES_SMALL && 16 * g->o * g->c * (int64_t)sizeof(float) <= WINO_SMALL_FORM_BYTES);
}

static int64_t tile_rows(const conv_geom *g)
{
    int64_t r = (int64_t)(CONV_TILE_BYTES / ((size_t)g->ckk * (size_t)g->wo * sizeof(float)));
    if (r < 1) r = 1;
    return r < g->ho ? r : g->ho;
}

/* The output columns j whose input column v = j*s + q - pl lies in [0, W). */
static void valid_cols(const conv_geom *g, int64_t q, int64_t *j0, int64_t *j1)
{
    int64_t lo = g->pl - q, hi = g->w - 1 + g->pl - q; /* j*s in [lo, hi] */
    *j0 = lo <= 0 ? 0 : (lo + g->s - 1) / g->s;
    *j1 = hi < 0 ? 0 : hi / g->s + 1;
    if (*j1 > g->wo) *j1 = g->wo;
    if (*j0 > *j1) *j0 = *j1;
}

/* col[(c*KH+p)*KW+q][r*Wo+j] = x[c, (i0+r)*s+p-pt, j*s+q-pl]  (0 outside), r < rows */
static void im2col(int nt, const conv_geom *g, const float *x, int64_t i0, int64_t rows, float *col)
{
    int64_t ncol = rows * g->wo;
#pragma omp parallel for collapse(2) num_threads(nt) if (g->ckk * ncol > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t kr = 0; kr < g->ckk; kr++) {
        for (int64_t r = 0; r < rows; r++) {
            int64_t c = kr / (g->kh * g->kw), p = (kr / g->kw) % g->kh, q = kr % g->kw;
            float *dst = col + kr * ncol + r * g->wo;
            int64_t iy = (i0 + r) * g->s + p - g->pt;
            if (iy < 0 || iy >= g->h) {
                memset(dst, 0, (size_t)g->wo * sizeof(float));
                continue;
            }
            int64_t j0, j1;
            valid_cols(g, q, &j0, &j1);
            for (int64_t j = 0; j < j0; j++) dst[j] = 0.0f;
            const float *src = x + (c * g->h + iy) * g->w + q - g->pl; /* src[j*s] = x[c, iy, j*s+q-pl] */
            if (g->s == 1)
                memcpy(dst + j0, src + j0, (size_t)(j1 - j0) * sizeof(float));
            else
                for (int64_t j = j0; j < j1; j++) dst[j] = src[j * g->s];
            for (int64_t j = j1; j < g->wo; j++) dst[j] = 0.0f;
        }
    }
}

/* dx[c, u, v] += col[(c*KH+p)*KW+q][r*Wo+j] for u = (i0+r)*s+p-pt, v = j*s+q-pl,
 * the column matrix's element (kr, pixel) at col[kr * ks + pixel * ps]: as
 * im2col writes it (ks = rows * Wo, ps = 1) or transposed (ks = 1, ps = CKK).
 * Each input row (c, u) is owned by one iteration: no races, fixed order. */
static void col2im_add(int nt, const conv_geom *g, const float *col, int64_t ks, int64_t ps, int64_t i0,
                       int64_t rows, float *dx)
{
    int64_t ncol = rows * g->wo;
#pragma omp parallel for collapse(2) num_threads(nt) if (g->ckk * ncol > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t c = 0; c < g->c; c++) {
        for (int64_t u = 0; u < g->h; u++) {
            float *drow = dx + (c * g->h + u) * g->w;
            for (int64_t p = 0; p < g->kh; p++) {
                int64_t t = u + g->pt - p; /* = (i0 + r) * s */
                if (t < 0 || t % g->s) continue;
                int64_t r = t / g->s - i0;
                if (r < 0 || r >= rows) continue;
                for (int64_t q = 0; q < g->kw; q++) {
                    const float *src = col + ((c * g->kh + p) * g->kw + q) * ks + r * g->wo * ps;
                    int64_t j0, j1;
                    valid_cols(g, q, &j0, &j1);
                    float *d = drow + q - g->pl; /* d[j*s] = dx[c, u, j*s+q-pl] */
                    if (g->s == 1 && ps == 1)
                        for (int64_t j = j0; j < j1; j++) d[j] += src[j];
                    else
                        for (int64_t j = j0; j < j1; j++) d[j * g->s] += src[j * ps];
                }
            }
        }
    }
}

/* y[n,o,i,j] = b[o] + sum_{c,p,q} w[o,c,p,q] x[n,c, i*s+p-pt, j*s+q-pl]
 * per image and tile of output rows: Y[:, tile] = W (O x CKK) * col (CKK x tile) */
gnr_status cpu_conv2d_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              const gnr_conv_params *p, gnr_tensor *y)
{
    conv_geom g;
    conv_setup(x, w, p, &g);
    int nt = gnr_cpu_threads(ctx);
    int64_t hw = g.ho * g.wo, nout = g.n * g.o;
    float *py = gnr_f32(y);
    int accumulate = 0;
    int wino = use_winograd(&g, g.c);
    if (b || wino) { /* Winograd adds its result into y */
        const float *pb = b ? gnr_f32(b) : NULL;
#pragma omp parallel for num_threads(nt) if (nout * hw > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t i = 0; i < nout; i++)
            for (int64_t j = 0; j < hw; j++) py[i * hw + j] = pb ? pb[i % g.o] : 0.0f;
        accumulate = 1;
    }
    const float *px = gnr_f32(x), *pw = gnr_f32(w);
    if (wino) return cpu_conv3x3_winograd(ctx, px, g.n, g.c, g.h, g.w, pw, g.o, 0, py);
    if (is_pointwise(&g)) {
        for (int64_t n = 0; n < g.n; n++)
            cpu_gemm_narrow(nt, 0, g.o, hw, g.c, pw, g.c, px + n * g.c * hw, hw, accumulate, py + n * g.o * hw, hw);
        return GNR_OK;
    }
    int64_t tr = tile_rows(&g);
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *col;
    GNR_TRY(gnr_arena_alloc(ctx->arena, (size_t)g.ckk * (size_t)(tr * g.wo) * sizeof(float), (void **)&col));
    for (int64_t n = 0; n < g.n; n++) {
        const float *xn = px + n * g.c * g.h * g.w;
        float *yn = py + n * g.o * hw;
        for (int64_t i0 = 0; i0 < g.ho; i0 += tr) {
            int64_t rows = g.ho - i0 < tr ? g.ho - i0 : tr;
            im2col(nt, &g, xn, i0, rows, col);
            cpu_gemm_narrow(nt, 0, g.o, rows * g.wo, g.ckk, pw, g.ckk, col, rows * g.wo, accumulate, yn + i0 * g.wo,
                            hw);
        }
    }
    gnr_arena_release(ctx->arena, m);
    return GNR_OK;
}

/* dx[n,c,u,v] += sum over (o,p,q,i,j) with i*s+p-pt = u, j*s+q-pl = v of w[o,c,p,q] dy[n,o,i,j]
 * per image and tile: dcol = W^T (CKK x O) * dY[:, tile], then col2im adds it into dx.
 * On maps of at most STREAM_MAX_PIXELS outputs the product is transposed,
 * dcol^T = dY^T W, so that W, read once from memory, is read along its rows
 * (cpu_gemm_stream): W^T read down its columns took 2 to 3 times as long
 * as the forward on SD 1.4's 8 x 8 and 4 x 4 levels. */
#define STREAM_MAX_PIXELS 64
gnr_status cpu_conv2d_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, const gnr_conv_params *p,
                               gnr_tensor *dx)
{
    conv_geom g;
    conv_setup(dx, w, p, &g);
    int nt = gnr_cpu_threads(ctx);
    int64_t hw = g.ho * g.wo;
    const float *pd = gnr_f32(dy), *pw = gnr_f32(w);
    float *px = gnr_f32(dx);
    if (use_winograd(&g, g.o)) /* dx += conv(dy, w transposed and flipped), itself 3x3 stride 1 pad 1 */
        return cpu_conv3x3_winograd(ctx, pd, g.n, g.o, g.h, g.w, pw, g.c, 1, px);
    if (is_pointwise(&g)) {
        for (int64_t n = 0; n < g.n; n++)
            cpu_gemm_narrow(nt, 1, g.c, hw, g.o, pw, g.c, pd + n * g.o * hw, hw, 1, px + n * g.c * hw, hw);
        return GNR_OK;
    }
    int64_t tr = tile_rows(&g);
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *col;
    GNR_TRY(gnr_arena_alloc(ctx->arena, (size_t)g.ckk * (size_t)(tr * g.wo) * sizeof(float), (void **)&col));
    for (int64_t n = 0; n < g.n; n++) {
        const float *dyn = pd + n * g.o * hw;
        float *dxn = px + n * g.c * g.h * g.w;
        if (hw <= STREAM_MAX_PIXELS && tr == g.ho) { /* dcol^T (HoWo x CKK) = dY^T W, W read once in order */
            cpu_gemm_stream(nt, 1, hw, g.ckk, g.o, dyn, hw, pw, g.ckk, 0, col, g.ckk);
            col2im_add(nt, &g, col, 1, g.ckk, 0, g.ho, dxn);
            continue;
        }
        for (int64_t i0 = 0; i0 < g.ho; i0 += tr) {
            int64_t rows = g.ho - i0 < tr ? g.ho - i0 : tr;
            cpu_gemm_narrow(nt, 1, g.ckk, rows * g.wo, g.o, pw, g.ckk, dyn + i0 * g.wo, hw, 0, col, rows * g.wo);
            col2im_add(nt, &g, col, rows * g.wo, 1, i0, rows, dxn);
        }
    }
    gnr_arena_release(ctx->arena, m);
    return GNR_OK;
}
