/* Multi-head attention on packed heads, by fixed-size chunks of queries.
 *
 * Per (batch, head, chunk of ATT_CHUNK query rows): S = scale Q K^T by sgemm
 * into scratch, optional causal mask, row softmax as torch does it (subtract
 * the row max, expf, divide by the sum), out = P V by sgemm. The chunking and
 * every kernel are the same whether or not `probs` is asked for: P is only
 * copied out of the scratch, so `out` is bit-identical either way, and the
 * whole Lq x Lk matrix is never held without probs. */
#include <math.h>
#include <string.h>

#include "cpu/cpu_ops.h"

#define ATT_CHUNK 256

typedef struct {
    int64_t n, lq, lk, hd, d;
    int heads;
    int64_t chunk; /* query rows per chunk */
} att_geom;

/* Shapes checked in op_checks.c. */
static void att_setup(const gnr_tensor *q, const gnr_tensor *k, int heads, att_geom *g)
{
    g->n = q->shape[0], g->lq = q->shape[1], g->lk = k->shape[1], g->hd = q->shape[2], g->d = q->shape[2] / heads;
    g->heads = heads;
    g->chunk = g->lq < ATT_CHUNK ? g->lq : ATT_CHUNK;
}

/* The chunks every op here walks, batch by batch, head by head, then query
 * rows i0 .. i0 + rows - 1 (the order fixes the order of accumulations into
 * dk and dv). qoff: the chunk's first query in the packed N x Lq x (H*D)
 * tensors; koff: the head's first key (and value); poff: the chunk's first
 * row of P in N x H x Lq x Lk. */
typedef struct {
    int64_t i0, rows, qoff, koff, poff;
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
    return c;
}

/* exp(x) for the softmax, written so the compiler vectorises it (a libm expf
 * call would not be): x = n ln2 + r, exp(r) by Cephes' polynomial on
 * |r| <= ln2 / 2, times 2^n from the exponent bits. Within 1 ulp of glibc expf
 * on [-87, 10] (checked on every float there); clamped to [-87.3, 88]. */
__attribute__((optimize("no-trapping-math"))) static inline float exp_poly(float x)
{
    x = x > -87.3f ? x : -87.3f;
    x = x < 88.0f ? x : 88.0f;
    float fx = x * 1.44269504088896341f + 0.5f;
    float fn = (float)(int32_t)fx;
    fn = fn > fx ? fn - 1.0f : fn; /* floor */
    int32_t n = (int32_t)fn;
    float r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* row[j] = exp(row[j] - mx) for j < n; returns their sum (in a fixed vector order).
 * Kept out of line and compiled without -ftrapping-math (the default), which
 * otherwise stops GCC vectorising the float-to-int conversion; no FP
 * exception flags are read anywhere, so the results are the same. */
__attribute__((noinline, optimize("no-trapping-math"))) static float exp_sum(float *row, int64_t n, float mx)
{
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        float e = exp_poly(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    return sum;
}

/* s (rows x lk) <- softmax of each row, with j > i0 + r masked when causal:
 * subtract the row max, exponentiate, divide by the sum (as torch) */
static void softmax_rows(int nt, float *s, int64_t rows, int64_t lk, int64_t i0, int causal)
{
#pragma omp parallel for num_threads(nt) if (rows * lk > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * lk;
        int64_t valid = causal ? (i0 + r + 1 < lk ? i0 + r + 1 : lk) : lk;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < valid; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = exp_sum(row, valid, mx);
#pragma omp simd
        for (int64_t j = 0; j < valid; j++) row[j] /= sum;
        for (int64_t j = valid; j < lk; j++) row[j] = 0.0f;
    }
}

/* Rows i0 .. i0 + rows - 1 of one head's P into s (rows x lk): s = scale
 * Q_c K_h^T, then the row softmax. The forward and the backward's recompute
 * both make P here, so they agree bit for bit. */
static void probs_chunk(int nt, const att_geom *g, const float *qc, const float *kh, int64_t rows, int64_t i0,
                        int causal, float scale, float *s)
{
    cpu_gemm(nt, 0, 1, rows, g->lk, g->d, scale, qc, g->hd, kh, g->hd, 0.0f, s, g->lk);
    softmax_rows(nt, s, rows, g->lk, i0, causal);
}

/* S = scale Q_h K_h^T (+ causal mask);  P = softmax(S);  out_h = P V_h */
gnr_status cpu_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                 int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out)
{
    att_geom g;
    att_setup(q, k, heads, &g);
    int nt = gnr_cpu_threads(ctx);
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *s;
    GNR_TRY(gnr_arena_alloc(ctx->arena, (size_t)g.chunk * (size_t)g.lk * sizeof(float), (void **)&s));
    const float *pq = gnr_f32(q), *pk = gnr_f32(k), *pv = gnr_f32(v);
    float *po = gnr_f32(out), *pp = probs ? gnr_f32(probs) : NULL;
    for (int64_t i = 0; i < att_chunks(&g); i++) {
        att_chunk c = att_chunk_at(&g, i);
        probs_chunk(nt, &g, pq + c.qoff, pk + c.koff, c.rows, c.i0, causal, scale, s);
        if (pp) memcpy(pp + c.poff, s, (size_t)(c.rows * g.lk) * sizeof(float));
        cpu_gemm(nt, 0, 0, c.rows, g.d, g.lk, 1.0f, s, g.lk, pv + c.koff, g.hd, 0.0f, po + c.qoff, g.hd);
    }
    gnr_arena_release(ctx->arena, m);
    return GNR_OK;
}

/* Given P:  dV_h += P^T dO_h;  dP = dO_h V_h^T (+ dprobs) (+ coef (P - P_ref));
 *           dS = P * (dP - rowsum(dP * P));
 *           dQ_h += scale dS K_h;  dK_h += scale dS^T Q_h        (by chunks of query rows)
 * Without probs, each chunk of P is recomputed from q and k by the forward's
 * own kernels on the same chunks, so it is bit-identical to the P the forward
 * would have stored, and the whole Lq x Lk matrix is never held. A seed's
 * P_ref is recomputed the same way from its queries and keys. */
gnr_status cpu_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                  const gnr_tensor *probs, int heads, int causal, float scale,
                                  const gnr_tensor *dout, const gnr_tensor *dprobs, const gnr_attention_seed *seed,
                                  gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv)
{
    att_geom g;
    att_setup(q, k, heads, &g);
    if (!dout) dv = NULL; /* no output gradient: V gets none */
    if (!dq && !dk && !dv) return GNR_OK;
    int nt = gnr_cpu_threads(ctx);
    int need_ds = dq || dk;
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *ds = NULL, *pbuf = NULL, *rbuf = NULL;
    gnr_status st = GNR_OK;
    size_t chunk_bytes = (size_t)g.chunk * (size_t)g.lk * sizeof(float);
    if (need_ds) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&ds));
    if (!probs) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&pbuf));
    if (seed && need_ds) GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&rbuf));
    const float *pq = gnr_f32(q), *pk = gnr_f32(k), *pv = gnr_f32(v), *pdo = dout ? gnr_f32(dout) : NULL;
    const float *pp = probs ? gnr_f32(probs) : NULL;
    const float *pdp = dprobs ? gnr_f32(dprobs) : NULL;
    float coef = seed ? seed->coef : 0.0f;
    for (int64_t i = 0; i < att_chunks(&g); i++) {
        att_chunk c = att_chunk_at(&g, i);
        int64_t rows = c.rows;
        const float *pc = pp ? pp + c.poff : pbuf;
        if (!pp) probs_chunk(nt, &g, pq + c.qoff, pk + c.koff, rows, c.i0, causal, scale, pbuf);
        if (dv)
            cpu_gemm(nt, 1, 0, g.lk, g.d, rows, 1.0f, pc, g.lk, pdo + c.qoff, g.hd, 1.0f, gnr_f32(dv) + c.koff, g.hd);
        if (!need_ds) continue;
        if (pdo)
            cpu_gemm(nt, 0, 1, rows, g.lk, g.d, 1.0f, pdo + c.qoff, g.hd, pv + c.koff, g.hd, 0.0f, ds, g.lk);
        else
            memset(ds, 0, (size_t)(rows * g.lk) * sizeof(float));
        if (rbuf) probs_chunk(nt, &g, gnr_f32(seed->q) + c.qoff, gnr_f32(seed->k) + c.koff, rows, c.i0, 0, scale, rbuf);
        const float *dpc = pdp ? pdp + c.poff : NULL;
#pragma omp parallel for num_threads(nt) if (rows * g.lk > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            float *dsr = ds + r * g.lk;
            const float *pr = pc + r * g.lk;
            if (dpc)
                for (int64_t j = 0; j < g.lk; j++) dsr[j] += dpc[r * g.lk + j];
            if (rbuf) {
                const float *rr = rbuf + r * g.lk;
                for (int64_t j = 0; j < g.lk; j++) dsr[j] += coef * (pr[j] - rr[j]);
            }
            double dot = 0.0;
            for (int64_t j = 0; j < g.lk; j++) dot += (double)dsr[j] * pr[j];
            float fdot = (float)dot;
            for (int64_t j = 0; j < g.lk; j++) dsr[j] = pr[j] * (dsr[j] - fdot);
        }
        if (dq)
            cpu_gemm(nt, 0, 0, rows, g.d, g.lk, scale, ds, g.lk, pk + c.koff, g.hd, 1.0f, gnr_f32(dq) + c.qoff, g.hd);
        if (dk)
            cpu_gemm(nt, 1, 0, g.lk, g.d, rows, scale, ds, g.lk, pq + c.qoff, g.hd, 1.0f, gnr_f32(dk) + c.koff, g.hd);
    }
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
    att_setup(q, k, heads, &g);
    *out = 0.0; /* the mean of nothing */
    if (g.n == 0 || g.lq == 0 || g.lk == 0) return GNR_OK;
    int nt = gnr_cpu_threads(ctx);
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    float *s, *sr;
    double *row_sum;
    gnr_status st = GNR_OK;
    size_t chunk_bytes = (size_t)g.chunk * (size_t)g.lk * sizeof(float);
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&s));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, chunk_bytes, (void **)&sr));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)g.chunk * sizeof(double), (void **)&row_sum));
    const float *pq = gnr_f32(q), *pk = gnr_f32(k), *prq = gnr_f32(q_ref), *prk = gnr_f32(k_ref);
    double total = 0.0;
    for (int64_t i = 0; i < att_chunks(&g); i++) {
        att_chunk c = att_chunk_at(&g, i);
        int64_t rows = c.rows;
        probs_chunk(nt, &g, pq + c.qoff, pk + c.koff, rows, c.i0, 0, scale, s);
        probs_chunk(nt, &g, prq + c.qoff, prk + c.koff, rows, c.i0, 0, scale, sr);
#pragma omp parallel for num_threads(nt) if (rows * g.lk > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *a = s + r * g.lk, *b = sr + r * g.lk;
            double acc = 0.0;
            for (int64_t j = 0; j < g.lk; j++) {
                double d = (double)a[j] - (double)b[j];
                acc += d * d;
            }
            row_sum[r] = acc;
        }
        for (int64_t r = 0; r < rows; r++) total += row_sum[r];
    }
    *out = total / ((double)g.n * g.heads * (double)g.lq * (double)g.lk);
done:
    gnr_arena_release(ctx->arena, m);
    return st;
}
