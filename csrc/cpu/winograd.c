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
#include <omp.h>
#include <string.h>

#include "core/derived.h"
#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

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

/* The transforms' row kernels: plain-C bodies built for each vector level
 * (CPU_VEC_VERSIONS, simd.h). */

/* V's values for one tile row of one channel: row[0..3] the patch rows
 * (input rows 2 ty - 1 .. 2 ty + 2, a zero row outside the map), tiles
 * t = 0 .. tx - 1 to dst[e * plane + t]. The rows are copied with a zero
 * column on each side (columns -1 .. 2 tx), B^T d is taken for every
 * column, and (B^T d) B for every tile from its four columns 2 t - 1 ..
 * 2 t + 2: plain loops over columns and tiles that the compiler vectorises
 * (the per-tile version, 16 scalar loads and 16 scattered stores a tile,
 * took a third of the 3 x 3 convolutions' time at 256 x 256). Additions
 * and subtractions only, in the same order at every vector width: every
 * version gives the same bits. scratch: 8 (2 tx + 2) floats. */
static ALWAYS_INLINE void input_tile_row_body(const float *const row[4], int64_t w, int64_t tx, float *scratch,
                                              float *dst, int64_t plane)
{
    int64_t pw = 2 * tx + 2;
    float *restrict p0 = scratch, *restrict p1 = p0 + pw, *restrict p2 = p1 + pw, *restrict p3 = p2 + pw;
    float *restrict q0 = p3 + pw, *restrict q1 = q0 + pw, *restrict q2 = q1 + pw, *restrict q3 = q2 + pw;
    float *p[4] = {p0, p1, p2, p3};
    for (int k = 0; k < 4; k++) {
        p[k][0] = 0.0f;
        memcpy(p[k] + 1, row[k], (size_t)w * sizeof(float));
        for (int64_t x = w + 1; x < pw; x++) p[k][x] = 0.0f;
    }
    for (int64_t x = 0; x < pw; x++) { /* B^T d */
        q0[x] = p0[x] - p2[x];
        q1[x] = p1[x] + p2[x];
        q2[x] = p2[x] - p1[x];
        q3[x] = p1[x] - p3[x];
    }
    const float *q[4] = {q0, q1, q2, q3};
    for (int i = 0; i < 4; i++) { /* (B^T d) B */
        const float *restrict qi = q[i];
        float *restrict o0 = dst + (int64_t)(4 * i) * plane, *restrict o1 = o0 + plane;
        float *restrict o2 = o1 + plane, *restrict o3 = o2 + plane;
        for (int64_t t = 0; t < tx; t++) {
            float a = qi[2 * t], b = qi[2 * t + 1], c = qi[2 * t + 2], d = qi[2 * t + 3];
            o0[t] = a - c;
            o1[t] = b + c;
            o2[t] = c - b;
            o3[t] = b - d;
        }
    }
}

#define INPUT_ROW_PARAMS \
    (const float *const row[4], int64_t w, int64_t tx, float *scratch, float *dst, int64_t plane)
CPU_VEC_VERSIONS(input_tile_row, INPUT_ROW_PARAMS, (row, w, tx, scratch, dst, plane))

/* Each thread's scratch for the row kernels: 8 (2 tx + 2) floats */
static int64_t scratch_floats(const wino_geom *g) { return 8 * (2 * g->tx + 2); }
static float *thread_scratch(const wino_geom *g, float *scratch)
{
    return scratch + (int64_t)omp_get_thread_num() * scratch_floats(g);
}

/* V[e][c][t - t0] = B^T d B for the tiles of rows ty0 .. ty0 + rows - 1
 * (t0 = ty0 * tx), d the 4 x 4 patch of channel c at rows 2 ty - 1 ..,
 * columns 2 tx - 1 .. (0 outside). One (channel, tile row) per task, each
 * thread with its own scratch. */
static void transform_input(int nt, const wino_geom *g, const float *x, const float *zero_row, int64_t ty0,
                            int64_t rows, float *scratch, float *v)
{
    int64_t tb = rows * g->tx, plane = g->c * tb;
    void(*tile_row) INPUT_ROW_PARAMS = CPU_VEC_PICK(input_tile_row);
#pragma omp parallel num_threads(nt) if (plane > 256)
    {
        float *mine = thread_scratch(g, scratch);
#pragma omp for schedule(static)
        for (int64_t cr = 0; cr < g->c * rows; cr++) {
            int64_t c = cr / rows, ty = ty0 + cr % rows;
            const float *xc = x + c * g->h * g->w, *row[4];
            for (int i = 0; i < 4; i++) {
                int64_t yy = 2 * ty - 1 + i;
                row[i] = yy >= 0 && yy < g->h ? xc + yy * g->w : zero_row;
            }
            tile_row(row, g->w, g->tx, mine, v + c * tb + (ty - ty0) * g->tx, plane);
        }
    }
}

/* One tile row of one output channel: y0[2 t + j] (and y1[2 t + j] when
 * the row has a second output row) += (A^T M A)[i][j] of tile t, M's 16
 * planes at m + e * plane; an odd width ends in half tiles. The tiles'
 * values go through scratch (4 tx floats) so that the loop over tiles is
 * vectorised apart from the interleaving stores. Same operations in the
 * same order at every vector width. */
static ALWAYS_INLINE void output_tile_row_body(const float *m, int64_t plane, int64_t tx, int64_t w, float *y0,
                                               float *y1, float *scratch)
{
    float *restrict o00 = scratch, *restrict o01 = o00 + tx, *restrict o10 = o01 + tx, *restrict o11 = o10 + tx;
    const float *restrict mp[16];
    for (int e = 0; e < 16; e++) mp[e] = m + (int64_t)e * plane;
    for (int64_t t = 0; t < tx; t++) {
        float r0[4], r1[4]; /* A^T M */
        for (int j = 0; j < 4; j++) {
            r0[j] = mp[j][t] + mp[4 + j][t] + mp[8 + j][t];
            r1[j] = mp[4 + j][t] - mp[8 + j][t] - mp[12 + j][t];
        }
        o00[t] = r0[0] + r0[1] + r0[2]; /* (A^T M) A */
        o01[t] = r0[1] - r0[2] - r0[3];
        o10[t] = r1[0] + r1[1] + r1[2];
        o11[t] = r1[1] - r1[2] - r1[3];
    }
    int64_t pairs = w / 2;
    for (int64_t t = 0; t < pairs; t++) {
        y0[2 * t] += o00[t];
        y0[2 * t + 1] += o01[t];
    }
    if (w % 2) y0[w - 1] += o00[tx - 1];
    if (!y1) return;
    for (int64_t t = 0; t < pairs; t++) {
        y1[2 * t] += o10[t];
        y1[2 * t + 1] += o11[t];
    }
    if (w % 2) y1[w - 1] += o10[tx - 1];
}

#define OUTPUT_ROW_PARAMS (const float *m, int64_t plane, int64_t tx, int64_t w, float *y0, float *y1, float *scratch)
CPU_VEC_VERSIONS(output_tile_row, OUTPUT_ROW_PARAMS, (m, plane, tx, w, y0, y1, scratch))

/* y[o][2 ty + i][2 tx + j] += (A^T M A)[i][j] for the tiles of rows ty0 ..
 * ty0 + rows - 1, where the output exists (odd sizes end in half tiles).
 * One (output channel, tile row) per task, scratch as for transform_input. */
static void transform_output(int nt, const wino_geom *g, const float *mm, int64_t ty0, int64_t rows, float *scratch,
                             float *y)
{
    int64_t tb = rows * g->tx, plane = g->o * tb;
    void(*tile_row) OUTPUT_ROW_PARAMS = CPU_VEC_PICK(output_tile_row);
#pragma omp parallel num_threads(nt) if (plane > 256)
    {
        float *mine = thread_scratch(g, scratch);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < g->o * rows; task++) {
            int64_t o = task / rows, ty = ty0 + task % rows;
            float *y0 = y + (o * g->h + 2 * ty) * g->w;
            tile_row(mm + o * tb + (ty - ty0) * g->tx, plane, g->tx, g->w, y0, 2 * ty + 1 < g->h ? y0 + g->w : NULL,
                     mine);
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

/* The input gradient's products read U transposed (A^T: a step of k moves
 * a whole row of U). With more than this many rows (the input gradient's
 * channels) sgemm, which packs U's blocks, was faster: in a gradient pass at
 * 256 x 256 (SD 1.4, 2 threads, AVX-512), 1920 channels from 640 on a 16 x
 * 16 map 23.0 against 28.7 ms, 960 from 320 on 32 x 32 14.6 against 19.8,
 * 640 from 640 on 16 x 16 5.8 against 6.8; 320 from 320 on 32 x 32 was
 * faster narrow (4.8 against 5.2). */
#define FLIP_NARROW_MAX_ROWS 512

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
    float *v, *mm, *zero_row, *scratch;
    gnr_status st = GNR_OK;
    /* the stored weight is o x c, or for flip c x o */
    GNR_CHECK(st, weights_in_domain(ctx, weight, flip ? c : o, flip ? o : c, &u));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(c * rb * g.tx) * sizeof(float), (void **)&v));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, 16 * (size_t)(o * rb * g.tx) * sizeof(float), (void **)&mm));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)w * sizeof(float), (void **)&zero_row));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(nt * scratch_floats(&g)) * sizeof(float), (void **)&scratch));
    memset(zero_row, 0, (size_t)w * sizeof(float));
    for (int64_t img = 0; img < n; img++) {
        const float *xn = x + img * c * h * w;
        float *yn = y + img * o * h * w;
        for (int64_t ty0 = 0; ty0 < g.ty; ty0 += rb) {
            int64_t rows = g.ty - ty0 < rb ? g.ty - ty0 : rb, cnt = rows * g.tx;
            transform_input(nt, &g, xn, zero_row, ty0, rows, scratch, v);
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int e = 0; e < 16; e++) {
                int ue = flip ? 4 * swap03[e / 4] + swap03[e % 4] : e;
                const float *ua = u + (int64_t)ue * o * c, *ve = v + (int64_t)e * c * cnt;
                float *me = mm + (int64_t)e * o * cnt;
                if (flip && o > FLIP_NARROW_MAX_ROWS)
                    cpu_gemm(1, 1, 0, o, cnt, c, 1.0f, ua, o, ve, cnt, 0.0f, me, cnt);
                else
                    cpu_gemm_narrow(1, flip, o, cnt, c, ua, flip ? o : c, ve, cnt, 0, me, cnt);
            }
            transform_output(nt, &g, mm, ty0, rows, scratch, yn);
        }
    }
done:
    gnr_arena_release(ctx->arena, mark);
    return st;
}
