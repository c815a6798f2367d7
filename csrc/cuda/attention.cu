/* Multi-head attention on packed heads, by batched cuBLAS products per head
 * and a row softmax kernel.
 *
 * Queries are processed in chunks of cq rows so the score buffer (all heads
 * of one chunk, H x cq x Lk, from the arena) stays within CUDA_TILE_BYTES. The
 * chunk size depends only on the shapes, and the scores are always computed in
 * that scratch buffer and copied to `probs` when asked: the same kernels with
 * the same arguments run with and without probs, so `out` is bit-identical.
 *
 * Row-major / column-major: head h of q is the row-major Lq x D matrix at
 * q + h*D with ld = H*D, i.e. the column-major D x Lq matrix Q_h^T. */
#include <math.h>
#include <string.h>

#include "cuda_backend.h"
#include "cuda_ops.h"

/* Row softmax in place over S (rows of Lk), with the causal mask j > i
 * (i = i0 + row % cq is the query index). One block per row. */
__global__ void softmax_rows_kernel(float *S, int64_t Lk, int64_t cq, int64_t i0, int causal)
{
    __shared__ double sh[CUDA_BLOCK];
    float *row = S + (int64_t)blockIdx.x * Lk;
    int64_t qi = i0 + (int64_t)blockIdx.x % cq;
    int64_t valid = causal ? (qi + 1 < Lk ? qi + 1 : Lk) : Lk;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < valid; j += CUDA_BLOCK) m = fmaxf(m, row[j]);
    m = block_max(m, (float *)sh);
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < valid; j += CUDA_BLOCK) acc += expf(row[j] - m);
    float inv = (float)(1.0 / block_sum(acc, sh));
    for (int64_t j = threadIdx.x; j < Lk; j += CUDA_BLOCK) row[j] = j < valid ? expf(row[j] - m) * inv : 0.0f;
}

/* dS = P * (dP + dprobs + coef (P - R) - rowsum((dP + dprobs + coef (P - R)) * P)),
 * in place over dP. Row r of the chunk (head h = r / cq, row r % cq of the
 * chunk) of P is at P + h * p_head + (r % cq) * Lk, and likewise of dprobs
 * (dp_head) and of R, the reference pass's P (r_head). dprobs and R may each
 * be NULL. */
__global__ void softmax_backward_rows_kernel(float *dP, const float *P, int64_t p_head, const float *dprobs,
                                             int64_t dp_head, const float *R, int64_t r_head, float coef,
                                             int64_t Lk, int64_t cq)
{
    __shared__ double sh[CUDA_BLOCK];
    int64_t r = blockIdx.x;
    float *g = dP + r * Lk;
    const float *p = P + (r / cq) * p_head + (r % cq) * Lk;
    const float *gp = dprobs ? dprobs + (r / cq) * dp_head + (r % cq) * Lk : NULL;
    const float *pr = R ? R + (r / cq) * r_head + (r % cq) * Lk : NULL;
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < Lk; j += CUDA_BLOCK) {
        float v = g[j] + (gp ? gp[j] : 0.0f);
        if (pr) v += coef * (p[j] - pr[j]);
        g[j] = v;
        acc += (double)v * p[j];
    }
    float dot = (float)block_sum(acc, sh);
    for (int64_t j = threadIdx.x; j < Lk; j += CUDA_BLOCK) g[j] = p[j] * (g[j] - dot);
}

/* The sum over each row of (P - R)^2 in double, one block per chunk row
 * (laid out as in softmax_rows_kernel), into row_sum[(r / cq) * Lq + i0 + r % cq]:
 * one slot per (head, query), so the final sum's order is fixed. */
__global__ void sq_diff_rows_kernel(const float *P, const float *R, int64_t Lk, int64_t cq, int64_t Lq, int64_t i0,
                                    double *row_sum)
{
    __shared__ double sh[CUDA_BLOCK];
    const float *p = P + (int64_t)blockIdx.x * Lk, *pr = R + (int64_t)blockIdx.x * Lk;
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < Lk; j += CUDA_BLOCK) {
        double d = (double)p[j] - (double)pr[j];
        acc += d * d;
    }
    double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) row_sum[((int64_t)blockIdx.x / cq) * Lq + i0 + (int64_t)blockIdx.x % cq] = sum;
}

/* *out = the sum of x[0 .. n), in one block over a fixed stride. */
__global__ void sum_rows_kernel(const double *x, int64_t n, double *out)
{
    __shared__ double sh[CUDA_BLOCK];
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += CUDA_BLOCK) acc += x[i];
    double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) *out = sum;
}

typedef struct {
    int64_t N, Lq, Lk, H, D, HD;
} attn_dims;

/* P of query rows i0 .. i0 + cq - 1, all heads, into S (head h's rows at
 * h * cq * Lk): S_h^T (Lk x cq) = scale * K_h (op T of the D x Lk view) *
 * Q_h^T (D x cq), then the row softmax. The forward and the backward's
 * recompute both make P here, so they agree bit for bit. qn, kn: batch n's q, k. */
static gnr_status probs_chunk(const cuda_state *s, const attn_dims *a, const float *qn, const float *kn, int64_t i0,
                              int64_t cq, int causal, float scale, float *S)
{
    const float zero = 0.0f;
    int D = (int)a->D, HD = (int)a->HD, Lk = (int)a->Lk;
    CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, Lk, (int)cq, D, &scale, kn, HD, a->D, qn + i0 * a->HD, HD,
                           a->D, &zero, S, Lk, cq * a->Lk, (int)a->H));
    CUDA_LAUNCH(softmax_rows_kernel, (unsigned)(a->H * cq), CUDA_BLOCK, 0, s->stream, S, a->Lk, cq, i0, causal);
    return GNR_OK;
}

/* Shapes checked in op_checks.c; cuBLAS takes the dims as int. */
static gnr_status attention_dims(const char *op, const gnr_tensor *q, const gnr_tensor *k, int heads, attn_dims *a)
{
    a->N = q->shape[0];
    a->Lq = q->shape[1];
    a->Lk = k->shape[1];
    a->HD = q->shape[2];
    a->H = heads;
    a->D = a->HD / heads;
    GNR_TRY(cuda_check_int(op, "Lq", a->Lq));
    GNR_TRY(cuda_check_int(op, "Lk", a->Lk));
    GNR_TRY(cuda_check_int(op, "H*D", a->HD));
    return GNR_OK;
}

/* Query rows per chunk: H x cq x Lk floats within CUDA_TILE_BYTES. */
static int64_t chunk_rows(const attn_dims *a)
{
    int64_t per_row = a->H * (a->Lk > 0 ? a->Lk : 1);
    int64_t cq = (int64_t)(CUDA_TILE_BYTES / sizeof(float)) / per_row;
    if (cq < 1) cq = 1;
    return cq < a->Lq ? cq : a->Lq;
}

/* ---------------------------------------------------- flash forward --- */

/* The forward without probs as one kernel (flash attention, fp32): a block
 * takes FLASH_ROWS queries of one head, FLASH_LANES threads per query, and
 * walks the keys in tiles of bk held in shared memory with an online
 * softmax (running max m and sum l; the output sums shrink by exp(m_old -
 * m_new) when m grows), so no score leaves the block. Each lane of a row
 * scores keys lane, lane + FLASH_LANES, ... of the tile, then every lane
 * reads the row's scores in the same order, so all lanes of a row keep the
 * same m and l, and each accumulates its own output dimensions (c = lane,
 * lane + FLASH_LANES, ...). Deterministic: no atomics, fixed orders.
 *
 * It stands beside the cuBLAS path (products per chunk of rows, a softmax
 * kernel) until a GPU measurement decides between them; the tests run both
 * (cuda_attention_kernel). Heads wider than FLASH_MAX_D (the VAE's single
 * 512-wide head) always take the cuBLAS path. */
#define FLASH_ROWS 16
#define FLASH_LANES 8
#define FLASH_MAX_D 256
#define FLASH_SHARED_FLOATS (40 * 1024 / 4) /* within the 48 KB every GPU gives a block without asking */

__global__ void flash_forward_kernel(const float *q, const float *k, const float *v, float *out, int64_t Lq,
                                     int64_t Lk, int64_t HD, int D, int bk, int causal, float scale)
{
    CUDA_DYNAMIC_SHARED(float, sm);
    float *qs = sm, *ks = qs + FLASH_ROWS * D, *vs = ks + bk * D, *ss = vs + bk * D;
    int64_t n = blockIdx.z, h = blockIdx.y, i0 = (int64_t)blockIdx.x * FLASH_ROWS;
    int row = threadIdx.x / FLASH_LANES, lane = threadIdx.x % FLASH_LANES;
    int64_t i = i0 + row;
    const float *qn = q + n * Lq * HD + h * D, *kn = k + n * Lk * HD + h * D, *vn = v + n * Lk * HD + h * D;
    for (int idx = threadIdx.x; idx < FLASH_ROWS * D; idx += blockDim.x) {
        int64_t r = i0 + idx / D;
        qs[idx] = r < Lq ? qn[r * HD + idx % D] : 0.0f;
    }
    float acc[FLASH_MAX_D / FLASH_LANES];
    for (int a = 0; a < FLASH_MAX_D / FLASH_LANES; a++) acc[a] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int64_t limit = causal && i0 + FLASH_ROWS < Lk ? i0 + FLASH_ROWS : Lk;
    const float *qr = qs + row * D;
    float *sr = ss + row * bk;
    for (int64_t j0 = 0; j0 < limit; j0 += bk) {
        int kt = limit - j0 < bk ? (int)(limit - j0) : bk;
        __syncthreads(); /* the previous tile is read by every row */
        for (int idx = threadIdx.x; idx < kt * D; idx += blockDim.x) {
            int64_t j = j0 + idx / D;
            ks[idx] = kn[j * HD + idx % D];
            vs[idx] = vn[j * HD + idx % D];
        }
        __syncthreads();
        for (int jj = lane; jj < kt; jj += FLASH_LANES) {
            const float *kr = ks + jj * D;
            float dot = 0.0f;
            for (int c = 0; c < D; c++) dot += qr[c] * kr[c];
            sr[jj] = causal && j0 + jj > i ? -INFINITY : scale * dot;
        }
        __syncwarp(0xffffffffu); /* a row's lanes are one warp's: each reads the scores the others wrote */
        float mt = -INFINITY;
        for (int jj = 0; jj < kt; jj++) mt = fmaxf(mt, sr[jj]);
        float mn = fmaxf(m, mt);
        if (mn != -INFINITY) {
            float shrink = m == -INFINITY ? 0.0f : expf(m - mn);
            l *= shrink;
            for (int a = 0; a * FLASH_LANES + lane < D; a++) acc[a] *= shrink;
            for (int jj = 0; jj < kt; jj++) {
                float p = expf(sr[jj] - mn);
                l += p;
                const float *vr = vs + jj * D;
                for (int a = 0; a * FLASH_LANES + lane < D; a++) acc[a] += p * vr[a * FLASH_LANES + lane];
            }
            m = mn;
        }
        __syncwarp(0xffffffffu); /* scores read before the next tile's overwrite them */
    }
    if (i >= Lq) return;
    float *o = out + (n * Lq + i) * HD + h * D;
    for (int a = 0; a * FLASH_LANES + lane < D; a++) o[a * FLASH_LANES + lane] = l > 0.0f ? acc[a] / l : 0.0f;
}

/* Keys per shared tile for head size D, or 0 when the flash kernel cannot take it. */
static int flash_key_tile(int64_t D)
{
    if (D > FLASH_MAX_D) return 0;
    for (int bk = 64; bk >= 8; bk /= 2)
        if (FLASH_ROWS * D + 2 * bk * D + FLASH_ROWS * bk <= FLASH_SHARED_FLOATS) return bk;
    return 0;
}

static int attention_kernel_choice = 0; /* 0: cuBLAS path, 1: flash (cuda_attention_kernel) */

const char *cuda_attention_kernel(const char *name)
{
    if (name && !strcmp(name, "flash")) attention_kernel_choice = 1;
    else if (name && !strcmp(name, "cublas")) attention_kernel_choice = 0;
    else if (name) return NULL;
    return attention_kernel_choice ? "flash" : "cublas";
}

gnr_status cuda_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                  int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out)
{
    const char *op = "attention_forward";
    cuda_state *s = cuda_state_of(ctx);
    attn_dims a;
    GNR_TRY(attention_dims(op, q, k, heads, &a));
    if (a.N == 0 || a.Lq == 0 || a.HD == 0) return GNR_OK;
    if (a.Lk == 0) {
        CUDA_CHECK(cudaMemsetAsync(out->data, 0, gnr_nbytes(out), s->stream));
        return GNR_OK;
    }
    int bk = flash_key_tile(a.D);
    if (!probs && attention_kernel_choice == 1 && bk && s->matmul == GNR_F32) {
        dim3 grid((unsigned)((a.Lq + FLASH_ROWS - 1) / FLASH_ROWS), (unsigned)a.H, (unsigned)a.N);
        size_t shared = (size_t)(FLASH_ROWS * a.D + 2 * bk * a.D + FLASH_ROWS * bk) * sizeof(float);
        CUDA_LAUNCH(flash_forward_kernel, grid, FLASH_ROWS * FLASH_LANES, shared, s->stream, gnr_f32(q), gnr_f32(k),
                    gnr_f32(v), gnr_f32(out), a.Lq, a.Lk, a.HD, (int)a.D, bk, causal, scale);
        return GNR_OK;
    }
    int64_t cq_max = chunk_rows(&a);
    cuda_scratch sc(ctx->arena);
    float *S;
    GNR_TRY(sc.alloc((size_t)(a.H * cq_max * a.Lk) * sizeof(float), (void **)&S));
    const float zero = 0.0f, one = 1.0f;
    int D = (int)a.D, HD = (int)a.HD, Lk = (int)a.Lk, H = (int)a.H;
    for (int64_t n = 0; n < a.N; n++) {
        const float *qn = gnr_f32(q) + n * a.Lq * a.HD;
        const float *kn = gnr_f32(k) + n * a.Lk * a.HD;
        const float *vn = gnr_f32(v) + n * a.Lk * a.HD;
        float *on = gnr_f32(out) + n * a.Lq * a.HD;
        for (int64_t i0 = 0; i0 < a.Lq; i0 += cq_max) {
            int64_t cq = a.Lq - i0 < cq_max ? a.Lq - i0 : cq_max;
            int64_t sstride = cq * a.Lk; /* between heads in S */
            GNR_TRY(probs_chunk(s, &a, qn, kn, i0, cq, causal, scale, S));
            if (probs) {
                /* head h's chunk rows are contiguous in probs[n, h]: one copy per head (a 2-D copy's
                 * pitch, Lq x Lk floats, passes cudaMemcpy2D's 2^31-byte limit at large images) */
                float *pn = gnr_f32(probs) + (n * a.H * a.Lq + i0) * a.Lk;
                for (int64_t h = 0; h < a.H; h++)
                    CUDA_CHECK(cudaMemcpyAsync(pn + h * a.Lq * a.Lk, S + h * sstride, (size_t)sstride * sizeof(float),
                                               cudaMemcpyDeviceToDevice, s->stream));
            }
            /* O_h^T (D x cq) = V_h^T (D x Lk) * P_h^T (Lk x cq) */
            CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, D, (int)cq, Lk, &one, vn, HD, a.D, S, Lk, sstride,
                                   &zero, on + i0 * a.HD, HD, a.D, H));
        }
    }
    return GNR_OK;
}

/* The map energy from its rows' sums of squared differences (row_sum[0 ..
 * rows), filled by sq_diff_rows_kernel; row_sum[rows] is scratch): one
 * fixed-order sum on the device, divided by the map's size. */
static gnr_status map_energy_from_rows(cuda_state *s, double *row_sum, int64_t rows, int64_t Lk, double *out)
{
    CUDA_LAUNCH(sum_rows_kernel, 1, CUDA_BLOCK, 0, s->stream, (const double *)row_sum, rows, row_sum + rows);
    double sum;
    CUDA_CHECK(cudaMemcpyAsync(&sum, row_sum + rows, sizeof(double), cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    *out = sum / ((double)rows * (double)Lk);
    return GNR_OK;
}

/* Given P (probs):
 *   dV_h += P^T dO_h;  dP = dO_h V_h^T (+ dprobs) (+ coef (P - P_ref));  dS = P * (dP - rowsum(dP * P));
 *   dQ_h += scale * dS K_h;  dK_h += scale * dS^T Q_h
 * The causal mask needs no care here: masked entries of P are 0, so dS is 0 there.
 * Without probs, each chunk of P is recomputed into scratch by the forward's
 * own products and kernel on the same chunks (bit-identical to what the
 * forward stores), so the Lq x Lk matrix is never held. A seed's P_ref is
 * recomputed the same way from its queries and keys. */
gnr_status cuda_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                   const gnr_tensor *probs, int heads, int causal, float scale,
                                   const gnr_tensor *dout, const gnr_tensor *dprobs, const gnr_attention_seed *seed,
                                   gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv)
{
    const char *op = "attention_backward";
    cuda_state *s = cuda_state_of(ctx);
    attn_dims a;
    GNR_TRY(attention_dims(op, q, k, heads, &a));
    if (!dout) dv = NULL; /* no output gradient: V gets none */
    if (a.N == 0 || a.Lq == 0 || a.Lk == 0 || a.HD == 0 || (!dq && !dk && !dv)) return GNR_OK;
    int64_t cq_max = chunk_rows(&a);
    size_t chunk_bytes = (size_t)(a.H * cq_max * a.Lk) * sizeof(float);
    cuda_scratch sc(ctx->arena);
    float *dS = NULL, *Pc = NULL, *Rc = NULL;
    double *row_sum = NULL; /* the map energy's rows, as attention_map_energy sums them */
    int64_t rows_total = a.N * a.H * a.Lq;
    if (dq || dk) GNR_TRY(sc.alloc(chunk_bytes, (void **)&dS));
    if (!probs) GNR_TRY(sc.alloc(chunk_bytes, (void **)&Pc));
    if (seed && dS) GNR_TRY(sc.alloc(chunk_bytes, (void **)&Rc));
    if (Rc && Pc && seed->energy) GNR_TRY(sc.alloc((size_t)(rows_total + 1) * sizeof(double), (void **)&row_sum));
    const float zero = 0.0f, one = 1.0f;
    int D = (int)a.D, HD = (int)a.HD, Lk = (int)a.Lk, H = (int)a.H;
    long long pstride = a.Lq * a.Lk; /* between heads in probs */
    for (int64_t n = 0; n < a.N; n++) {
        const float *qn = gnr_f32(q) + n * a.Lq * a.HD;
        const float *kn = gnr_f32(k) + n * a.Lk * a.HD;
        const float *vn = gnr_f32(v) + n * a.Lk * a.HD;
        const float *don = dout ? gnr_f32(dout) + n * a.Lq * a.HD : NULL;
        const float *pn = probs ? gnr_f32(probs) + n * a.H * a.Lq * a.Lk : NULL;
        const float *gpn = dprobs ? gnr_f32(dprobs) + n * a.H * a.Lq * a.Lk : NULL;
        for (int64_t i0 = 0; i0 < a.Lq; i0 += cq_max) {
            int64_t cq = a.Lq - i0 < cq_max ? a.Lq - i0 : cq_max;
            int64_t sstride = cq * a.Lk;
            const float *pc = pn ? pn + i0 * a.Lk : Pc; /* chunk rows of head 0 */
            long long pcs = pn ? pstride : sstride;      /* between heads in pc */
            if (!pn) GNR_TRY(probs_chunk(s, &a, qn, kn, i0, cq, causal, scale, Pc));
            if (dv) {
                /* dV_h^T (D x Lk) += dO_h^T (D x cq) * P_h (op T of the Lk x cq view) */
                CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, D, Lk, (int)cq, &one, don + i0 * a.HD, HD, a.D, pc,
                                       Lk, pcs, &one, gnr_f32(dv) + n * a.Lk * a.HD, HD, a.D, H));
            }
            if (!dS) continue;
            /* dP_h^T (Lk x cq) = V_h (op T of the D x Lk view) * dO_h^T (D x cq) */
            if (don)
                CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, Lk, (int)cq, D, &one, vn, HD, a.D,
                                       don + i0 * a.HD, HD, a.D, &zero, dS, Lk, sstride, H));
            else
                CUDA_CHECK(cudaMemsetAsync(dS, 0, (size_t)(a.H * sstride) * sizeof(float), s->stream));
            if (Rc)
                GNR_TRY(probs_chunk(s, &a, gnr_f32(seed->q) + n * a.Lq * a.HD, gnr_f32(seed->k) + n * a.Lk * a.HD,
                                    i0, cq, 0, scale, Rc));
            if (row_sum)
                CUDA_LAUNCH(sq_diff_rows_kernel, (unsigned)(a.H * cq), CUDA_BLOCK, 0, s->stream, (const float *)Pc,
                            (const float *)Rc, a.Lk, cq, a.Lq, i0, row_sum + n * a.H * a.Lq);
            CUDA_LAUNCH(softmax_backward_rows_kernel, (unsigned)(a.H * cq), CUDA_BLOCK, 0, s->stream, dS, pc, pcs,
                        gpn ? gpn + i0 * a.Lk : NULL, pstride, (const float *)Rc, sstride, seed ? seed->coef : 0.0f,
                        a.Lk, cq);
            if (dq) {
                /* dQ_h^T (D x cq) += scale * K_h^T (D x Lk) * dS_h^T (Lk x cq) */
                CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, D, (int)cq, Lk, &scale, kn, HD, a.D, dS, Lk,
                                       sstride, &one, gnr_f32(dq) + n * a.Lq * a.HD + i0 * a.HD, HD, a.D, H));
            }
            if (dk) {
                /* dK_h^T (D x Lk) += scale * Q_h^T (D x cq) * dS_h (op T of the Lk x cq view) */
                CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_T, D, Lk, (int)cq, &scale, qn + i0 * a.HD, HD, a.D, dS,
                                       Lk, sstride, &one, gnr_f32(dk) + n * a.Lk * a.HD, HD, a.D, H));
            }
        }
    }
    if (row_sum) /* the seed's energy, bit for bit attention_map_energy's */
        return map_energy_from_rows(s, row_sum, rows_total, a.Lk, seed->energy);
    return GNR_OK;
}

/* Per batch and chunk of query rows: both chunks of P (all heads) made by the
 * forward's products and kernel, each row's sum of squared differences into
 * its own slot, then one fixed-order sum of the slots. */
gnr_status cuda_attention_map_energy(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *q_ref,
                                     const gnr_tensor *k_ref, int heads, float scale, double *out)
{
    const char *op = "attention_map_energy";
    cuda_state *s = cuda_state_of(ctx);
    attn_dims a;
    GNR_TRY(attention_dims(op, q, k, heads, &a));
    int64_t rows_total = a.N * a.H * a.Lq;
    if (rows_total == 0 || a.Lk == 0) {
        *out = 0.0; /* the mean of nothing, as on the CPU */
        return GNR_OK;
    }
    int64_t cq_max = chunk_rows(&a);
    size_t chunk_bytes = (size_t)(a.H * cq_max * a.Lk) * sizeof(float);
    cuda_scratch sc(ctx->arena);
    float *P, *R;
    double *row_sum;
    GNR_TRY(sc.alloc(chunk_bytes, (void **)&P));
    GNR_TRY(sc.alloc(chunk_bytes, (void **)&R));
    GNR_TRY(sc.alloc((size_t)(rows_total + 1) * sizeof(double), (void **)&row_sum));
    for (int64_t n = 0; n < a.N; n++) {
        int64_t qo = n * a.Lq * a.HD, ko = n * a.Lk * a.HD;
        for (int64_t i0 = 0; i0 < a.Lq; i0 += cq_max) {
            int64_t cq = a.Lq - i0 < cq_max ? a.Lq - i0 : cq_max;
            GNR_TRY(probs_chunk(s, &a, gnr_f32(q) + qo, gnr_f32(k) + ko, i0, cq, 0, scale, P));
            GNR_TRY(probs_chunk(s, &a, gnr_f32(q_ref) + qo, gnr_f32(k_ref) + ko, i0, cq, 0, scale, R));
            CUDA_LAUNCH(sq_diff_rows_kernel, (unsigned)(a.H * cq), CUDA_BLOCK, 0, s->stream, (const float *)P,
                        (const float *)R, a.Lk, cq, a.Lq, i0, row_sum + n * a.H * a.Lq);
        }
    }
    return map_energy_from_rows(s, row_sum, rows_total, a.Lk, out);
}
