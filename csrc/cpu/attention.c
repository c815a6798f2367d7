/* Multi-head attention on packed heads.
 *
 * The forward is flash attention: per (batch, head, block of ATT_QBLOCK
 * queries), one thread walks the keys in tiles of ATT_KTILE with an online
 * softmax (running max m and sum l per query; the output block rescaled
 * when m grows), so it holds one tile of scores and one block of output per
 * thread, never a row of P, and each tile stays in the core's cache. The
 * blocks are independent, so they run in parallel, each product on one
 * thread. Without a causal mask the tile is laid out with the keys down its
 * rows (flash_block_keys_down, the fast one); with one (the text encoder),
 * with the queries down its rows (flash_block).
 *
 * P is defined by probs_block: P[i,j] = exp(S[i,j] - m_i) / l_i with
 * S = scale Q K^T as scores_tile makes it, m_i the row's max and l_i its
 * sum (probs_row). The forward writes it when probs is asked (the output
 * does not depend on probs), and the backward and the map energy recompute
 * rows of it by chunks of query rows (whole forward blocks, up to
 * ATT_CHUNK_FLOATS of P) with the same function, bit-identical to what the
 * forward stores. Within a chunk, each thread makes whole blocks of rows
 * (their scores, then their probabilities, and what the op does with those
 * rows) in one parallel region: with few cores a region costs a wake-up of
 * the others, and there are many chunks. */
#include <math.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

#define ATT_CHUNK_FLOATS ((int64_t)1 << 19) /* most floats of one chunk of recomputed P (backward, energy) */
#define ATT_QBLOCK 64  /* query rows per block of the flash forward */
#define ATT_KTILE 512  /* keys per tile of the online softmax */


typedef struct {
    int64_t n, lq, lk, hd, d;
    int heads;
    int64_t chunk; /* query rows per chunk */
    int64_t ldp;   /* the row stride of chunks of P (and dS) in scratch */
    int64_t ldt;   /* the row stride of a head's keys or values transposed (d x lk) */
} att_geom;

/* Rows of P in scratch are 16 floats longer when lk floats are a multiple
 * of 1 KiB: the backward reads P and dS down their columns (P^T dO,
 * dS^T Q), a row apart at each step, and at a 4 KiB stride (1024 keys)
 * every row fell into the same few sets of the L1 cache; those two
 * products ran 25-38 % faster with the padding (one thread, AVX-512), the
 * whole attention backward of a gradient pass at 256 x 256 3-7 % (2
 * threads). Chunks are still sized by lk: the padding comes on top. */
static int64_t scratch_row_stride(int64_t lk) { return lk % 256 == 0 ? lk + 16 : lk; }

/* Shapes checked in op_checks.c. chunk: query rows per chunk, or 0 for
 * recomputed P's chunks: whole ATT_QBLOCK blocks (so a recomputed block's
 * products have the forward's shapes), as many as fit in ATT_CHUNK_FLOATS
 * of P and in ATT_CHUNK_PER_INPUT times the queries' own size (so that the
 * scratch of a narrow model's long attention never outweighs its
 * activations). */
#define ATT_CHUNK_PER_INPUT 4
static void att_setup(const gnr_tensor *q, const gnr_tensor *k, int heads, int64_t chunk, att_geom *g)
{
    g->n = q->shape[0], g->lq = q->shape[1], g->lk = k->shape[1], g->hd = q->shape[2], g->d = q->shape[2] / heads;
    g->heads = heads;
    g->ldp = g->ldt = scratch_row_stride(g->lk);
    if (chunk == 0) {
        int64_t floats = ATT_CHUNK_PER_INPUT * g->lq * g->hd;
        if (floats > ATT_CHUNK_FLOATS) floats = ATT_CHUNK_FLOATS;
        chunk = g->lk > 0 ? floats / g->lk / ATT_QBLOCK * ATT_QBLOCK : ATT_QBLOCK;
        if (chunk < ATT_QBLOCK) chunk = ATT_QBLOCK;
    }
    g->chunk = g->lq < chunk ? g->lq : chunk;
}

/* The chunks every op here walks, batch by batch, head by head, then query
 * rows i0 .. i0 + rows - 1 (the order fixes the order of accumulations into
 * dk and dv). qoff: the chunk's first query in the packed N x Lq x (H*D)
 * tensors; koff: the head's first key (and value); poff: the chunk's first
 * row of P in N x H x Lq x Lk. */
typedef struct {
    int64_t i0, rows, qoff, koff, poff;
    int64_t head; /* n * heads + h: the index of the head's transposed keys (keys_transposed) */
} att_chunk;

static int64_t att_chunks(const att_geom *g)
{
    return g->chunk ? g->n * g->heads * ((g->lq + g->chunk - 1) / g->chunk) : 0;
}

static att_chunk att_chunk_at(const att_geom *g, int64_t index)
{
    int64_t per_head = (g->lq + g->chunk - 1) / g->chunk;
    int64_t n = index / (g->heads * per_head), h = index / per_head % g->heads;
    att_chunk c;
    c.i0 = index % per_head * g->chunk;
    c.rows = g->lq - c.i0 < g->chunk ? g->lq - c.i0 : g->chunk;
    c.qoff = (n * g->lq + c.i0) * g->hd + h * g->d;
    c.koff = n * g->lk * g->hd + h * g->d;
    c.poff = ((n * g->heads + h) * g->lq + c.i0) * g->lk;
    c.head = n * g->heads + h;
    return c;
}

/* Keys query i may see: all, or j <= i when causal. */
static int64_t att_valid(int64_t lk, int64_t i, int causal) { return causal ? (i + 1 < lk ? i + 1 : lk) : lk; }

/* The rows' elementwise passes, each a plain loop compiled once per vector
 * level (CPU_VEC_VERSIONS, simd.h): this file is otherwise built for the
 * baseline, where they ran on 128-bit vectors. */
static ALWAYS_INLINE void row_scale_body(float *x, int64_t n, float a) /* x *= a */
{
    for (int64_t j = 0; j < n; j++) x[j] *= a;
}
CPU_VEC_VERSIONS(row_scale, (float *x, int64_t n, float a), (x, n, a))

static ALWAYS_INLINE void seed_diff_body(float *ds, const float *p, const float *pr, float coef, int64_t n)
{ /* dP += coef (P - P_ref) */
    for (int64_t j = 0; j < n; j++) ds[j] += coef * (p[j] - pr[j]);
}
CPU_VEC_VERSIONS(seed_diff, (float *ds, const float *p, const float *pr, float coef, int64_t n),
                 (ds, p, pr, coef, n))

static ALWAYS_INLINE void softmax_grad_body(float *ds, const float *p, float dot, float scale, int64_t n)
{ /* scale dS = scale P (dP - rowsum(dP P)), in place of dP */
    for (int64_t j = 0; j < n; j++) ds[j] = scale * p[j] * (ds[j] - dot);
}
CPU_VEC_VERSIONS(softmax_grad, (float *ds, const float *p, float dot, float scale, int64_t n), (ds, p, dot, scale, n))

/* The online softmax of one row: m, the max so far, and l, the sum so far
 * of exp(s - m). */
typedef struct {
    float m, l;
} row_stats;

/* Folds the next tile of a row (s[0 .. kn), all valid) into st; writes
 * exp(s - m_new) to e (e may be s). Returns the factor exp(m_old - m_new)
 * by which the terms summed so far shrink (0 on the first tile). */
static float row_stats_add(row_stats *st, const float *s, float *e, int64_t kn)
{
    float mt = cpu_vec_max(s, kn);
    float m = mt > st->m ? mt : st->m;
    float shrink = st->m == -INFINITY ? 0.0f : expf(st->m - m);
    float sum = cpu_vec_exp_sum(s, e, kn, m);
    st->l = st->l * shrink + sum;
    st->m = m;
    return shrink;
}

/* A row of P from its scores s[0 .. lk), in place: the whole row's max m
 * first, then exp(s - m) and their sum l in one pass, then / l on the
 * valid keys, 0 past them. Each exponential once: gathering the statistics
 * tile by tile as a flash forward does computed them twice on rows longer
 * than a tile (the map energy of a 1024-token layer, d = 40, 8 heads:
 * 20.6 ms that way, 18.9 ms this way, 2 threads, AVX-512). */
static void probs_row(float *s, int64_t lk, int64_t valid)
{
    row_stats st = {-INFINITY, 0.0f};
    row_stats_add(&st, s, s, valid);
    CPU_VEC_PICK(row_scale)(s, valid, 1.0f / st.l);
    if (valid < lk) memset(s + valid, 0, (size_t)(lk - valid) * sizeof(float));
}

/* n rows of one head (d floats each, ld apart in the packed heads) packed
 * d floats apart. Read in place (rows hd floats apart, 2.5 of every 20
 * cache lines used at SD's d = 40 and 8 heads), the flash forward's
 * products ran at 60-70 % of the multiply-adds' peak; packed, at over 90 %.
 * A 4096-token layer's attention forward (d = 40, 8 heads, 2 threads,
 * AVX-512) took 158 ms with the queries down the rows (flash_block), 129 ms
 * with the keys down and K and V in place, 105 ms packed (and 96-101 ms
 * with the exponential's 2^n by scalef). The backward packs its operands
 * too. */
static void rows_packed(const float *src, int64_t ld, int64_t n, int64_t d, float *dst)
{
    for (int64_t j = 0; j < n; j++) memcpy(dst + j * d, src + j * ld, (size_t)d * sizeof(float));
}

/* One head's keys (or values) transposed, K_h^T (d x lk, rows ldt apart):
 * kt[c * ldt + j] = the c-th value of key j, kh the head's first key (keys
 * hd floats apart), TRANSPOSE_KEYS keys at a time so that each row of kt
 * is written in runs. The scores (and the backward's dP against V^T) are
 * then a product with both operands read in place by the narrow kernels
 * (narrow_gemm.c); sgemm packed both operands of every 64 x 512 x d tile
 * again and ran them at about 75 GFLOP/s a thread at 512 x 512 (d = 40;
 * the narrow kernel: about 150 on one thread in isolation). */
#define TRANSPOSE_KEYS 16
static void keys_transposed(const att_geom *g, const float *kh, float *kt)
{
    for (int64_t j0 = 0; j0 < g->lk; j0 += TRANSPOSE_KEYS) {
        int64_t j1 = j0 + TRANSPOSE_KEYS < g->lk ? j0 + TRANSPOSE_KEYS : g->lk;
        for (int64_t c = 0; c < g->d; c++)
            for (int64_t j = j0; j < j1; j++) kt[c * g->ldt + j] = kh[j * g->hd + c];
    }
}

/* The scores of one block of queries (rows of them, from i0) against one
 * tile of keys (kn of them, from j0): s = scale Q_b K_t^T, ld ldc, kt the
 * head's K^T, ldq the queries' row stride. The forward and every recompute
 * of P make each score by exactly this call (one thread, the same shape;
 * the kernel's sums do not depend on where the operands lie), so every P
 * is the same bits. */
static void scores_tile(const att_geom *g, const float *qb, int64_t ldq, const float *kt, int64_t rows, int64_t j0,
                        int64_t kn, float scale, float *s, int64_t ldc)
{
    for (int64_t jj = 0; jj < kn; jj += NARROW_MAX_N)
        cpu_gemm_narrow(1, 0, rows, kn - jj < NARROW_MAX_N ? kn - jj : NARROW_MAX_N, g->d, qb, ldq,
                        kt + j0 + jj, g->ldt, 0, s + jj, ldc);
    for (int64_t r = 0; r < rows; r++) CPU_VEC_PICK(row_scale)(s + r * ldc, kn, scale);
}

/* Keys a block of queries i0 .. i0 + rows - 1 sees at all. */
static int64_t block_keys(const att_geom *g, int64_t i0, int64_t rows, int causal)
{
    return causal && i0 + rows < g->lk ? i0 + rows : g->lk;
}

/* Rows r0 .. r0 + rows - 1 (at most ATT_QBLOCK; i0 + r0 a multiple of it)
 * of a chunk of one head's P, the chunk's first query being i0, into s (row
 * stride ldp): the scores tile by tile, then each row by probs_row. qc: the
 * chunk's first query, ldq floats from the next. Every P (the forward's, when asked, and every
 * recompute) is made by this function on whole blocks, so all are the
 * same bits. */
static void probs_block(const att_geom *g, const float *qc, int64_t ldq, const float *kt, int64_t r0, int64_t rows,
                        int64_t i0, int causal, float scale, float *s)
{
    int64_t limit = block_keys(g, i0 + r0, rows, causal);
    for (int64_t j0 = 0; j0 < limit; j0 += ATT_KTILE)
        scores_tile(g, qc + r0 * ldq, ldq, kt, rows, j0, limit - j0 < ATT_KTILE ? limit - j0 : ATT_KTILE, scale,
                    s + r0 * g->ldp + j0, g->ldp);
    for (int64_t r = r0; r < r0 + rows; r++) probs_row(s + r * g->ldp, g->lk, att_valid(g->lk, i0 + r, causal));
}

/* The blocks of a chunk of `rows` query rows, and the rows of block b. */
static int64_t chunk_blocks(int64_t rows) { return (rows + ATT_QBLOCK - 1) / ATT_QBLOCK; }
static int64_t block_rows(int64_t rows, int64_t b) { return rows - b * ATT_QBLOCK < ATT_QBLOCK ? rows - b * ATT_QBLOCK : ATT_QBLOCK; }

/* Is a chunk worth more than one thread? */
static int chunk_parallel(const att_geom *g, int64_t rows) { return chunk_blocks(rows) > 1 && rows * g->lk > GNR_CPU_PAR_MIN; }

/* sum_j a[j] b[j] (sq_diff 0) or sum_j (a[j] - b[j])^2 (sq_diff 1) in
 * double, over independent partial sums combined in a fixed order: the
 * same result on every run and thread count, without one long chain of
 * dependent additions. sq_diff is a constant at every call, so each
 * inlined copy is one straight loop. */
#define SUM_LANES 8
static inline double pair_term(float a, float b, int sq_diff)
{
    double x = a, y = b;
    return sq_diff ? (x - y) * (x - y) : x * y;
}

static inline double lane_sum(const float *a, const float *b, int64_t n, int sq_diff)
{
    double acc[SUM_LANES] = {0};
    int64_t j = 0;
    for (; j + SUM_LANES <= n; j += SUM_LANES)
        for (int u = 0; u < SUM_LANES; u++) acc[u] += pair_term(a[j + u], b[j + u], sq_diff);
    for (; j < n; j++) acc[j % SUM_LANES] += pair_term(a[j], b[j], sq_diff);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* One block of the flash forward: queries i0 .. i0 + rows - 1 of one head.
 * s: ATT_QBLOCK x ATT_KTILE scores, o: ATT_QBLOCK x D output sums, st:
 * ATT_QBLOCK rows' statistics (the thread's scratch). */
static void flash_block(const att_geom *g, const float *qb, const float *kt, const float *vh, float *ob,
                        int64_t rows, int64_t i0, int causal, float scale, float *s, float *o, row_stats *st)
{
    int64_t d = g->d, limit = block_keys(g, i0, rows, causal);
    memset(o, 0, (size_t)(rows * d) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) st[r] = (row_stats){-INFINITY, 0.0f};
    for (int64_t j0 = 0; j0 < limit; j0 += ATT_KTILE) {
        int64_t kn = limit - j0 < ATT_KTILE ? limit - j0 : ATT_KTILE;
        scores_tile(g, qb, g->hd, kt, rows, j0, kn, scale, s, kn);
        for (int64_t r = 0; r < rows; r++) {
            float *sr = s + r * kn;
            int64_t valid = att_valid(g->lk, i0 + r, causal) - j0;
            valid = valid < 0 ? 0 : valid < kn ? valid : kn;
            if (valid > 0) {
                float shrink = row_stats_add(&st[r], sr, sr, valid);
                if (shrink != 1.0f)
                    for (int64_t c = 0; c < d; c++) o[r * d + c] *= shrink;
            }
            for (int64_t j = valid; j < kn; j++) sr[j] = 0.0f;
        }
        cpu_gemm_narrow(1, 0, rows, d, kn, s, kn, vh + j0 * g->hd, g->hd, 1, o, d);
    }
    for (int64_t r = 0; r < rows; r++) {
        float l = st[r].l;
        for (int64_t c = 0; c < d; c++) ob[r * g->hd + c] = l > 0.0f ? o[r * d + c] / l : 0.0f;
    }
}

/* One block of the flash forward without a causal mask, with the keys down
 * the rows: S^T = K_t (scale Q_b)^T per tile (kn x rows), the online
 * softmax down its columns (cpu_vec_max_cols, cpu_vec_exp_cols), and
 * O^T += V_t^T P^T. Both products then have the block's queries (64) as
 * their columns, whole vectors, where P V had the head's d as its columns
 * (40 in SD: one whole 32-column tile and one of 8 columns in 16 lanes);
 * the scale is folded into the block's queries, and no K^T is made. kh and
 * vh: the head's keys and values packed, d floats apart (rows_packed).
 * qt: d x ATT_QBLOCK, st: ATT_KTILE x ATT_QBLOCK, ot: d x ATT_QBLOCK,
 * cm, cl, shrink: ATT_QBLOCK floats each. Its scores round differently
 * from scores_tile's, so a P asked for is made by probs_block, as every
 * recompute makes it. */
static void flash_block_keys_down(const att_geom *g, const float *qb, const float *kh, const float *vh, float *ob,
                                  int64_t rows, float scale, float *qt, float *st, float *ot, float *cm, float *cl,
                                  float *shrink)
{
    const int64_t ld = ATT_QBLOCK, d = g->d, lk = g->lk;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < d; c++) qt[c * ld + r] = scale * qb[r * g->hd + c];
    memset(ot, 0, (size_t)(d * ld) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) cm[r] = -INFINITY, cl[r] = 0.0f;
    for (int64_t j0 = 0; j0 < lk; j0 += ATT_KTILE) {
        int64_t kn = lk - j0 < ATT_KTILE ? lk - j0 : ATT_KTILE;
        cpu_gemm_narrow(1, 0, kn, rows, d, kh + j0 * d, d, qt, ld, 0, st, ld);
        memcpy(shrink, cm, (size_t)rows * sizeof(float));
        cpu_vec_max_cols(st, kn, rows, ld, cm);
        if (j0 > 0) { /* the sums so far shrink by exp(m_old - m_new) */
            for (int64_t r = 0; r < rows; r++) shrink[r] = expf(shrink[r] - cm[r]), cl[r] *= shrink[r];
            for (int64_t c = 0; c < d; c++)
                for (int64_t r = 0; r < rows; r++) ot[c * ld + r] *= shrink[r];
        }
        cpu_vec_exp_cols(st, kn, rows, ld, cm, cl);
        cpu_gemm_narrow(1, 1, d, rows, kn, vh + j0 * d, d, st, ld, 1, ot, ld);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < d; c++) ob[r * g->hd + c] = cl[r] > 0.0f ? ot[c * ld + r] / cl[r] : 0.0f;
}

/* S = scale Q_h K_h^T (+ causal mask);  P = softmax(S);  out_h = P V_h.
 * The output by flash_block_keys_down (no causal mask) or flash_block; a P
 * asked for by probs_block. */
gnr_status cpu_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                 int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out)
{
    att_geom g;
    att_setup(q, k, heads, ATT_QBLOCK, &g);
    int64_t blocks = att_chunks(&g);
    if (blocks == 0) return GNR_OK;
    att_geom gp = g; /* the forward's P: rows lk apart */
    gp.ldp = g.lk;
    int nt = gnr_cpu_threads(ctx);
    size_t s_floats = (size_t)ATT_QBLOCK * ATT_KTILE, o_floats = (size_t)ATT_QBLOCK * (size_t)g.d;
    size_t kt_floats = causal || probs ? (size_t)(g.d * g.ldt) : 0; /* the thread's current head's K^T */
    /* the keys-down forward's packed keys and values (one head: they are packed already) */
    int pack = !causal && g.hd != g.d;
    size_t pack_floats = pack ? (size_t)(g.lk * g.d) : 0;
    size_t per_thread = (s_floats + 2 * o_floats + kt_floats + 3 * ATT_QBLOCK + 2 * pack_floats) * sizeof(float) +
                        ATT_QBLOCK * sizeof(row_stats);
    per_thread = (per_thread + 63) / 64 * 64;
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    char *scratch;
    GNR_TRY(gnr_arena_alloc(ctx->arena, per_thread * (size_t)nt, (void **)&scratch));
    const float *pq = gnr_f32(q), *pk = gnr_f32(k), *pv = gnr_f32(v);
    float *po = gnr_f32(out), *pp = probs ? gnr_f32(probs) : NULL;
#pragma omp parallel num_threads(nt) if (blocks > 1 && g.lq * g.lk * g.heads > GNR_CPU_PAR_MIN)
    {
        char *mine = scratch + (size_t)gnr_cpu_thread_num() * per_thread;
        float *s = (float *)mine, *o = s + s_floats, *qt = o + o_floats, *kt = qt + o_floats;
        float *cm = kt + kt_floats, *cl = cm + ATT_QBLOCK, *shrink = cl + ATT_QBLOCK;
        row_stats *stats = (row_stats *)(shrink + ATT_QBLOCK);
        float *kh = (float *)(stats + ATT_QBLOCK), *vh = kh + pack_floats; /* the current head's, packed */
        int64_t head = -1; /* whose keys kt, kh and vh hold */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < blocks; i++) {
            att_chunk c = att_chunk_at(&g, i);
            if (kt_floats && c.head != head) keys_transposed(&g, pk + c.koff, kt);
            if (pack && c.head != head)
                rows_packed(pk + c.koff, g.hd, g.lk, g.d, kh), rows_packed(pv + c.koff, g.hd, g.lk, g.d, vh);
            head = c.head;
            if (causal)
                flash_block(&g, pq + c.qoff, kt, pv + c.koff, po + c.qoff, c.rows, c.i0, causal, scale, s, o, stats);
            else
                flash_block_keys_down(&g, pq + c.qoff, pack ? kh : pk + c.koff, pack ? vh : pv + c.koff, po + c.qoff,
                                      c.rows, scale, qt, s, o, cm, cl, shrink);
            if (pp) probs_block(&gp, pq + c.qoff, g.hd, kt, 0, c.rows, c.i0, causal, scale, pp + c.poff);
        }
    }
    gnr_arena_release(ctx->arena, m);
    return GNR_OK;
}

/* A sum over every entry of the maps (all batches and heads) -> its mean */
static double map_mean(const att_geom *g, double total)
{
    return total / ((double)g->n * g->heads * (double)g->lq * (double)g->lk);
}

/* Given P:  dV_h += P^T dO_h;  dP = dO_h V_h^T (+ dprobs) (+ coef (P - P_ref));
 *           dS = P * (dP - rowsum(dP * P));
 *           dQ_h += scale dS K_h;  dK_h += scale dS^T Q_h        (by chunks of query rows)
 * Without probs, each chunk of P is recomputed from q and k by probs_block,
 * so it is bit-identical to the P the forward would have stored, and the
 * whole Lq x Lk matrix is never held. A seed's P_ref is recomputed the same
 * way from its queries and keys. Each block of rows makes its P, P_ref, dP
 * (the narrow kernel against V^T, as the scores against K^T) and dS on one
 * thread while they are in its cache; the products read their operands
 * packed (rows_packed). With a map seed, a 1024-token layer (d = 40, 8
 * heads, 2 threads, AVX-512) took 50.9 ms before these (P chunk by chunk,
 * dP by sgemm, the operands in place, the rows' elementwise passes on
 * 128-bit vectors), 39.6 ms after; a 4096-token layer 760 and 542 ms. */
gnr_status cpu_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                  const gnr_tensor *probs, int heads, int causal, float scale,
                                  const gnr_tensor *dout, const gnr_tensor *dprobs, const gnr_attention_seed *seed,
                                  gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv)
{
    att_geom g;
    att_setup(q, k, heads, 0, &g);
    if (!dout) dv = NULL; /* no output gradient: V gets none */
    if (!dq && !dk && !dv) return GNR_OK;
    int nt = gnr_cpu_threads(ctx);
    int need_ds = dq || dk;
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *ds = NULL, *pbuf = NULL, *rbuf = NULL, *kt = NULL, *skt = NULL, *vt = NULL, *kp = NULL;
    float *qp = NULL, *sqp = NULL, *dop = NULL; /* the chunk's queries, the seed's and dO, packed */
    double *row_sum = NULL, total = 0.0;
    gnr_status st = GNR_OK;
    size_t chunk_bytes = (size_t)g.chunk * (size_t)g.ldp * sizeof(float);
    if (need_ds) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&ds));
    if (!probs) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&pbuf));
    if (seed && need_ds) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&rbuf));
    if (rbuf && !probs && seed->energy) /* the energy's rows, summed as attention_map_energy sums them */
        GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)g.chunk * sizeof(double), (void **)&row_sum));
    /* the current head's K^T (and the seed's), made when the head changes */
    size_t head_bytes = (size_t)(g.d * g.ldt) * sizeof(float);
    if (!probs) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, head_bytes, (void **)&kt));
    if (rbuf) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, head_bytes, (void **)&skt));
    if (need_ds && dout) /* V^T for dP = dO V^T */
        GNR_CHECK(st, gnr_arena_alloc(ctx->arena, head_bytes, (void **)&vt));
    if (dq) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(g.d * g.lk) * sizeof(float), (void **)&kp));
    size_t chunk_rows_bytes = (size_t)(g.chunk * g.d) * sizeof(float);
    if (!probs || dk) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_rows_bytes, (void **)&qp));
    if (rbuf) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_rows_bytes, (void **)&sqp));
    if (dout) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_rows_bytes, (void **)&dop));
    const float *pq = gnr_f32(q), *pk = gnr_f32(k), *pv = gnr_f32(v), *pdo = dout ? gnr_f32(dout) : NULL;
    const float *pp = probs ? gnr_f32(probs) : NULL;
    const float *pdp = dprobs ? gnr_f32(dprobs) : NULL;
    float coef = seed ? seed->coef : 0.0f;
    for (int64_t i = 0; i < att_chunks(&g); i++) {
        att_chunk c = att_chunk_at(&g, i);
        int64_t rows = c.rows;
        const float *pc = pp ? pp + c.poff : pbuf;
        int64_t ldpc = pp ? g.lk : g.ldp;
        if (c.i0 == 0 && kt) keys_transposed(&g, pk + c.koff, kt);
        if (c.i0 == 0 && skt) keys_transposed(&g, gnr_f32(seed->k) + c.koff, skt);
        if (c.i0 == 0 && vt) keys_transposed(&g, pv + c.koff, vt);
        if (c.i0 == 0 && kp) rows_packed(pk + c.koff, g.hd, g.lk, g.d, kp);
        if (qp) rows_packed(pq + c.qoff, g.hd, rows, g.d, qp);
        if (sqp) rows_packed(gnr_f32(seed->q) + c.qoff, g.hd, rows, g.d, sqp);
        if (dop) rows_packed(pdo + c.qoff, g.hd, rows, g.d, dop);
        const float *dpc = pdp ? pdp + c.poff : NULL;
        /* Each block of rows, on one thread: its P (and the seed's), dP,
         * then dS in place of dP, while the block's rows are in its cache */
#pragma omp parallel for num_threads(nt) if (chunk_parallel(&g, rows)) schedule(static)
        for (int64_t b = 0; b < chunk_blocks(rows); b++) {
            int64_t r0 = b * ATT_QBLOCK, r1 = r0 + block_rows(rows, b);
            if (!pp) probs_block(&g, qp, g.d, kt, r0, r1 - r0, c.i0, causal, scale, pbuf);
            if (!need_ds) continue;
            if (rbuf) probs_block(&g, sqp, g.d, skt, r0, r1 - r0, c.i0, 0, scale, rbuf);
            if (vt)
                for (int64_t jj = 0; jj < g.lk; jj += NARROW_MAX_N)
                    cpu_gemm_narrow(1, 0, r1 - r0, g.lk - jj < NARROW_MAX_N ? g.lk - jj : NARROW_MAX_N, g.d,
                                    dop + r0 * g.d, g.d, vt + jj, g.ldt, 0, ds + r0 * g.ldp + jj, g.ldp);
            else
                memset(ds + r0 * g.ldp, 0, (size_t)((r1 - r0) * g.ldp) * sizeof(float));
            for (int64_t r = r0; r < r1; r++) {
                float *dsr = ds + r * g.ldp;
                const float *pr = pc + r * ldpc;
                if (dpc)
                    for (int64_t j = 0; j < g.lk; j++) dsr[j] += dpc[r * g.lk + j];
                if (rbuf) {
                    const float *rr = rbuf + r * g.ldp;
                    if (row_sum) row_sum[r] = lane_sum(pr, rr, g.lk, 1);
                    CPU_VEC_PICK(seed_diff)(dsr, pr, rr, coef, g.lk);
                }
                CPU_VEC_PICK(softmax_grad)(dsr, pr, (float)lane_sum(dsr, pr, g.lk, 0), scale, g.lk);
            }
        }
        if (dv) cpu_gemm_narrow(nt, 1, g.lk, g.d, rows, pc, ldpc, dop, g.d, 1, gnr_f32(dv) + c.koff, g.hd);
        if (!need_ds) continue;
        if (row_sum)
            for (int64_t r = 0; r < rows; r++) total += row_sum[r];
        if (dq) /* ds holds scale dS */
            cpu_gemm_narrow(nt, 0, rows, g.d, g.lk, ds, g.ldp, kp, g.d, 1, gnr_f32(dq) + c.qoff, g.hd);
        if (dk) cpu_gemm_narrow(nt, 1, g.lk, g.d, rows, ds, g.ldp, qp, g.d, 1, gnr_f32(dk) + c.koff, g.hd);
    }
    if (row_sum && g.n && g.lq && g.lk) *seed->energy = map_mean(&g, total);
done:
    gnr_arena_release(ctx->arena, m);
    return st;
}

/* Per (batch, head, chunk of query rows): both chunks of P made by the
 * forward's kernels, then the squared differences summed in double, one
 * partial sum per row so the order does not depend on the thread count. */
gnr_status cpu_attention_map_energy(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *q_ref,
                                    const gnr_tensor *k_ref, int heads, float scale, double *out)
{
    att_geom g;
    att_setup(q, k, heads, 0, &g);
    *out = 0.0; /* the mean of nothing */
    if (g.n == 0 || g.lq == 0 || g.lk == 0) return GNR_OK;
    int nt = gnr_cpu_threads(ctx);
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *s, *sr, *kt, *rkt;
    double *row_sum;
    gnr_status st = GNR_OK;
    size_t chunk_bytes = (size_t)g.chunk * (size_t)g.ldp * sizeof(float);
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&s));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&sr));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)g.chunk * sizeof(double), (void **)&row_sum));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(g.d * g.ldt) * sizeof(float), (void **)&kt));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(g.d * g.ldt) * sizeof(float), (void **)&rkt));
    const float *pq = gnr_f32(q), *pk = gnr_f32(k), *prq = gnr_f32(q_ref), *prk = gnr_f32(k_ref);
    double total = 0.0;
    for (int64_t i = 0; i < att_chunks(&g); i++) {
        att_chunk c = att_chunk_at(&g, i);
        int64_t rows = c.rows;
        if (c.i0 == 0) {
            keys_transposed(&g, pk + c.koff, kt);
            keys_transposed(&g, prk + c.koff, rkt);
        }
#pragma omp parallel for num_threads(nt) if (chunk_parallel(&g, rows)) schedule(static)
        for (int64_t b = 0; b < chunk_blocks(rows); b++) {
            int64_t r0 = b * ATT_QBLOCK, r1 = r0 + block_rows(rows, b);
            probs_block(&g, pq + c.qoff, g.hd, kt, r0, r1 - r0, c.i0, 0, scale, s);
            probs_block(&g, prq + c.qoff, g.hd, rkt, r0, r1 - r0, c.i0, 0, scale, sr);
            for (int64_t r = r0; r < r1; r++) row_sum[r] = lane_sum(s + r * g.ldp, sr + r * g.ldp, g.lk, 1);
        }
        for (int64_t r = 0; r < rows; r++) total += row_sum[r];
    }
    *out = map_mean(&g, total);
done:
    gnr_arena_release(ctx->arena, m);
    return st;
}
