/* Matrix products with a narrow right-hand side, C (m x n) = A (m x k) B (k x n)
 * (or A^T B) for n up to NARROW_MAX_N, reading A (a weight) where it lies.
 *
 * Why not sgemm: OpenBLAS packs both operands on every call. When B has few
 * columns (a convolution on a 16 x 16 map or smaller, Winograd's products,
 * the tokens of the low-resolution levels) the packing of A, a whole weight
 * read and written once more, costs a quarter to a half of the product
 * (measured single-threaded on 1280 x 11520 weights: 91 GFLOP/s at 64
 * columns and 57 at 16, against 115-120 for wide products). With at most
 * 256 columns, a block of rows of B (256 KiB) stays in L2, so A needs no
 * packing: a block of MR rows of A is read in place (MR sequential streams),
 * each element broadcast against one or two vectors of a row of B, and the
 * block stays in L1 while the kernel walks across B's columns. On 2 threads,
 * a 1280 -> 1280 convolution on an 8 x 8 map (64 columns against a 1280 x
 * 11520 weight) took 10.3 ms with sgemm (OpenBLAS's AVX2 kernels), 9.2 ms
 * here with AVX2 and 7.9 ms with AVX-512; on a 4 x 4 map 4.6, 3.1 and 3.0 ms.
 * In a UNet pass at 256 x 256 (SD 1.4 shapes), with 64, 128, 256 and 1024
 * columns as the limit, 256 was best on both levels; at 1024 B's block no
 * longer fits. Tried and not kept (no faster, or slower): tiles of 12 x 32,
 * 6 x 64 and 16 x 16 (A's elements as broadcast operands of the multiply-
 * adds: 16 streams of A, half the speed) on AVX-512, shorter blocks of k,
 * prefetching the same rows' next block of k (the next rows' block is
 * fetched instead: PREFETCH_A), and wide products cut into 256-column
 * pieces.
 *
 * Each C element is one chain of fused multiply-adds over k in order (blocks
 * of kc, C reloaded between blocks), so the result does not depend on the
 * thread count or on how rows are split; it differs from sgemm's sum only in
 * rounding. There is an AVX-512 and an AVX2 + FMA version, picked with the
 * other vector kernels (simd.h); on other CPUs the products go to sgemm. */
#include <omp.h>

#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

/* k in blocks whose rows of B (kc x n floats, at most B_BLOCK_FLOATS) stay
 * in L2 while every row block of A passes; the fewer B's columns, the longer
 * the runs in which A's rows are read (measured: a 4 x 4 map's product 12 %
 * faster with blocks of 1024 than of 256; 256 columns want 256) */
#define KC_MIN 256
#define KC_MAX 1024
#define B_BLOCK_FLOATS 65536

static int64_t k_block(int64_t n)
{
    int64_t kc = B_BLOCK_FLOATS / n;
    return kc < KC_MIN ? KC_MIN : kc > KC_MAX ? KC_MAX : kc;
}

#if GNR_VEC_X86
#include <immintrin.h>
#define INLINE inline __attribute__((always_inline))
#endif

/* The order in which a thread's rows run a block of k (rows512, rows256):
 * each block of MR rows across all of B's columns (B's block comes from L2
 * for each), the same while fetching B's next block of k into L2 (B in
 * place, a weight: cpu_gemm_stream's panels), or each column tile down all
 * the rows (its columns of B's block stay in L1). */
enum { ROWS_FIRST, ROWS_FIRST_FETCH_B, COLS_FIRST };

#if GNR_VEC_X86
/* A tile of each row count a block's last rows may leave, each compiled
 * with its count fixed (the accumulators stay in registers) */
#define CASES_1_TO_6(CASE) CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)

/* A in place (a weight) comes from memory at a k block's first column tile:
 * MR short row segments, too short for the hardware prefetchers to run
 * ahead of. That tile fetches the next row block's segments into L2 as it
 * goes, one cache line a row every 16 steps of k, the rate it reads its own
 * (next_a: that block, or NULL). At 256 x 256 (SD 1.4, 2 threads, passes
 * alternating in one process) the gradient pass took 4-5 % less, the UNet
 * pass 3-7 % on AVX-512 and 6 % on AVX2; fetching into L1, or two blocks
 * ahead, gained a little less. (B's next block of k is fetched only by
 * cpu_gemm_stream's panels, fetch_b_share: in its wide order it gained
 * nothing.) */
#define PREFETCH_A(next_a, lda, mr, p)                                                                               \
    do {                                                                                                             \
        if ((next_a) && ((p) & 15) == 0)                                                                             \
            for (int r_ = 0; r_ < (mr); r_++)                                                                        \
                _mm_prefetch((const char *)((next_a) + r_ * (lda) + (p)), _MM_HINT_T1);                              \
    } while (0)

/* The next row block's A at k block p0, to fetch while the tile at rows i
 * reads its own (A in place, the first column tile), or NULL */
static INLINE const float *next_rows(int64_t i, int64_t i1, int64_t mr, int64_t j, int64_t p0, int trans,
                                     const float *pa, int64_t lda)
{
    return !trans && j == 0 && i + 2 * mr <= i1 ? pa + (i + mr) * lda + p0 : NULL;
}

/* Part share of shares of B's block of k at rows p1 .. p1 + kc - 1 (n
 * columns, rows ldb apart) fetched into L2: a block of rows runs while
 * the share it fetches comes in, so the block of k that follows finds B
 * there. */
static INLINE void fetch_b_share(const float *pb, int64_t ldb, int64_t n, int64_t p1, int64_t kc, int64_t share,
                                 int64_t shares)
{
    int64_t lines = (n + 15) / 16, total = kc * lines;
    for (int64_t x = total * share / shares; x < total * (share + 1) / shares; x++)
        _mm_prefetch((const char *)(pb + (p1 + x / lines) * ldb + x % lines * 16), _MM_HINT_T1);
}

/* ------------------------------------------------------------ AVX-512 --- */
/* Tiles of up to 8 rows x 32 columns: 16 accumulators, 2 loads of B and 8
 * broadcasts of A per 16 fused multiply-adds. */
#define AVX512 GNR_TARGET_AVX512
#define MR512 8

/* A^T's rows are A's columns: a step of k moves a whole row of A (lda
 * floats), so the hardware prefetchers miss them and each tile waited on
 * memory at its first multiply-add. Fetching the row TRANS_PREFETCH steps
 * ahead took 2 % off a gradient pass at 256 (8 and 32 did no better). */
#define TRANS_PREFETCH 16

/* A's element (r, p) of a tile: A in place, or A^T's (p, r) */
#define A_AT(a, lda, trans, r, p) ((trans) ? (a)[(p) * (lda) + (r)] : (a)[(r) * (lda) + (p)])

/* full: two whole vectors (last is all ones), loaded and stored without
 * masks, which keeps the mask out of the k loop (measured: 3-5 % of a
 * gradient pass at 256, where most tiles are whole) */
AVX512 static INLINE void tile512(int mr, int nv, int full, int trans, const float *a, int64_t lda, const float *b,
                                  int64_t ldb, float *c, int64_t ldc, int64_t kc, __mmask16 last, int load_c,
                                  const float *bias, const float *next_a)
{
    __m512 acc[MR512][2];
    if (full) last = (__mmask16)0xffff;
    __mmask16 m0 = nv > 1 ? (__mmask16)0xffff : last;
    __m512 init0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 init1 = bias && nv > 1 ? _mm512_maskz_loadu_ps(last, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < mr; r++) {
        acc[r][0] = load_c ? _mm512_maskz_loadu_ps(m0, c + r * ldc) : init0;
        if (nv > 1) acc[r][1] = load_c ? _mm512_maskz_loadu_ps(last, c + r * ldc + 16) : init1;
    }
    for (int64_t p = 0; p < kc; p++) {
        const float *bp = b + p * ldb;
        if (trans) _mm_prefetch((const char *)(a + (p + TRANS_PREFETCH) * lda), _MM_HINT_T0);
        PREFETCH_A(next_a, lda, MR512, p);
        __m512 b0 = full ? _mm512_loadu_ps(bp) : _mm512_maskz_loadu_ps(m0, bp);
        __m512 b1 = full ? _mm512_loadu_ps(bp + 16) : nv > 1 ? _mm512_maskz_loadu_ps(last, bp + 16) : b0;
        for (int r = 0; r < mr; r++) {
            __m512 ar = _mm512_set1_ps(A_AT(a, lda, trans, r, p));
            acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
            if (nv > 1) acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);
        if (nv > 1) _mm512_mask_storeu_ps(c + r * ldc + 16, last, acc[r][1]);
    }
}

#define TILE512_CASE(R)                                                                                              \
    case R:                                                                                                          \
        if (trans)                                                                                                   \
            full ? tile512(R, 2, 1, 1, a, lda, b, ldb, c, ldc, kc, last, load_c, bz, next_a)                         \
            : nv > 1 ? tile512(R, 2, 0, 1, a, lda, b, ldb, c, ldc, kc, last, load_c, bz, next_a)                     \
                     : tile512(R, 1, 0, 1, a, lda, b, ldb, c, ldc, kc, last, load_c, bz, next_a);                    \
        else                                                                                                         \
            full ? tile512(R, 2, 1, 0, a, lda, b, ldb, c, ldc, kc, last, load_c, bz, next_a)                         \
            : nv > 1 ? tile512(R, 2, 0, 0, a, lda, b, ldb, c, ldc, kc, last, load_c, bz, next_a)                     \
                     : tile512(R, 1, 0, 0, a, lda, b, ldb, c, ldc, kc, last, load_c, bz, next_a);                    \
        break;

/* The tile of C at rows i.. (at most MR512 up to i1) and columns j.. (at most
 * 32 up to n) over k's block p0.. of kc */
AVX512 static INLINE void tile512_at(int64_t i, int64_t i1, int64_t j, int64_t n, int64_t p0, int64_t kc, int trans,
                                     const float *pa, int64_t lda, const float *pb, int64_t ldb, int load_c,
                                     const float *bias, float *pc, int64_t ldc)
{
    int mr = i1 - i < MR512 ? (int)(i1 - i) : MR512;
    const float *a = trans ? pa + p0 * lda + i : pa + i * lda + p0;
    const float *next_a = next_rows(i, i1, MR512, j, p0, trans, pa, lda);
    int64_t rest = n - j;
    int nv = rest > 16 ? 2 : 1;
    int64_t tail = nv > 1 ? rest - 16 : rest;
    __mmask16 last = tail >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << tail) - 1u);
    int full = nv > 1 && tail >= 16;
    const float *b = pb + p0 * ldb + j;
    float *c = pc + i * ldc + j;
    const float *bz = bias && !load_c ? bias + j : NULL; /* C starts as the bias */
    switch (mr) {
        CASES_1_TO_6(TILE512_CASE)
        TILE512_CASE(7)
        TILE512_CASE(8)
    }
}

/* C rows [i0, i1): every block of k, and in it every tile, in the given
 * order (ROWS_FIRST ...) */
AVX512 static void rows512(int64_t i0, int64_t i1, int64_t n, int64_t k, int64_t kb, int trans, const float *pa,
                           int64_t lda, const float *pb, int64_t ldb, int accumulate, const float *bias, float *pc,
                           int64_t ldc, int order)
{
    int64_t blocks = (i1 - i0 + MR512 - 1) / MR512;
    for (int64_t p0 = 0; p0 < k; p0 += kb) {
        int64_t kc = k - p0 < kb ? k - p0 : kb, p1 = p0 + kc, kc1 = k - p1 < kb ? k - p1 : kb;
        int load_c = accumulate || p0 > 0;
        if (order == COLS_FIRST)
            for (int64_t j = 0; j < n; j += 32)
                for (int64_t i = i0; i < i1; i += MR512)
                    tile512_at(i, i1, j, n, p0, kc, trans, pa, lda, pb, ldb, load_c, bias, pc, ldc);
        else
            for (int64_t i = i0; i < i1; i += MR512) {
                if (order == ROWS_FIRST_FETCH_B && kc1 > 0)
                    fetch_b_share(pb, ldb, n, p1, kc1, (i - i0) / MR512, blocks);
                for (int64_t j = 0; j < n; j += 32)
                    tile512_at(i, i1, j, n, p0, kc, trans, pa, lda, pb, ldb, load_c, bias, pc, ldc);
            }
    }
}

/* --------------------------------------------------------------- AVX2 --- */
/* Tiles of up to 6 rows x 16 columns: 12 accumulators, 2 loads of B and 6
 * broadcasts of A per 12 fused multiply-adds. Column tails are copied
 * through a zero-padded row, since AVX2's masked loads are slow. */
#define AVX2 GNR_TARGET_AVX2
#define MR256 6

AVX2 static INLINE void tile256(int mr, int full, int trans, const float *a, int64_t lda, const float *b, int64_t ldb,
                                float *c, int64_t ldc, int64_t kc, int64_t cols, float *pad, int load_c,
                                const float *bias, const float *next_a)
{
    __m256 acc[MR256][2];
    float bt[16] = {0}; /* the tile's bias, zero-padded */
    if (bias)
        for (int64_t j = 0; j < cols; j++) bt[j] = bias[j];
    for (int r = 0; r < mr; r++) {
        if (load_c && full) {
            acc[r][0] = _mm256_loadu_ps(c + r * ldc);
            acc[r][1] = _mm256_loadu_ps(c + r * ldc + 8);
        } else if (load_c) {
            float t[16] = {0};
            for (int64_t j = 0; j < cols; j++) t[j] = c[r * ldc + j];
            acc[r][0] = _mm256_loadu_ps(t);
            acc[r][1] = _mm256_loadu_ps(t + 8);
        } else {
            acc[r][0] = _mm256_loadu_ps(bt);
            acc[r][1] = _mm256_loadu_ps(bt + 8);
        }
    }
    for (int64_t p = 0; p < kc; p++) {
        PREFETCH_A(next_a, lda, MR256, p);
        const float *bp = full ? b + p * ldb : pad + p * 16;
        __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        for (int r = 0; r < mr; r++) {
            __m256 ar = _mm256_set1_ps(A_AT(a, lda, trans, r, p));
            acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++) {
        if (full) {
            _mm256_storeu_ps(c + r * ldc, acc[r][0]);
            _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
        } else {
            float t[16];
            _mm256_storeu_ps(t, acc[r][0]);
            _mm256_storeu_ps(t + 8, acc[r][1]);
            for (int64_t j = 0; j < cols; j++) c[r * ldc + j] = t[j];
        }
    }
}

#define TILE256_CASE(R)                                                                                              \
    case R:                                                                                                          \
        if (trans)                                                                                                   \
            full ? tile256(R, 1, 1, a, lda, b, ldb, c, ldc, kc, 16, pad, load_c, bz, next_a)                         \
                 : tile256(R, 0, 1, a, lda, b, ldb, c, ldc, kc, cols, pad, load_c, bz, next_a);                      \
        else                                                                                                         \
            full ? tile256(R, 1, 0, a, lda, b, ldb, c, ldc, kc, 16, pad, load_c, bz, next_a)                         \
                 : tile256(R, 0, 0, a, lda, b, ldb, c, ldc, kc, cols, pad, load_c, bz, next_a);                      \
        break;

/* The tile of C at rows i.. (at most MR256 up to i1) and columns j.. (at most
 * 16 up to n) over k's block p0.. of kc; pad: the block's last columns
 * zero-padded (rows256) */
AVX2 static INLINE void tile256_at(int64_t i, int64_t i1, int64_t j, int64_t n, int64_t p0, int64_t kc, int trans,
                                   const float *pa, int64_t lda, const float *pb, int64_t ldb, int load_c,
                                   const float *bias, float *pc, int64_t ldc, float *pad)
{
    int mr = i1 - i < MR256 ? (int)(i1 - i) : MR256;
    const float *a = trans ? pa + p0 * lda + i : pa + i * lda + p0;
    const float *next_a = next_rows(i, i1, MR256, j, p0, trans, pa, lda);
    int full = j + 16 <= n;
    int64_t cols = full ? 16 : n - j;
    const float *b = pb + p0 * ldb + j;
    float *c = pc + i * ldc + j;
    const float *bz = bias && !load_c ? bias + j : NULL;
    switch (mr) {
        CASES_1_TO_6(TILE256_CASE)
    }
}

/* as rows512, in tiles of MR256 x 16 */
AVX2 static void rows256(int64_t i0, int64_t i1, int64_t n, int64_t k, int64_t kb, int trans, const float *pa,
                         int64_t lda, const float *pb, int64_t ldb, int accumulate, const float *bias, float *pc,
                         int64_t ldc, int order)
{
    float pad[KC_MAX * 16]; /* the last columns' block of B, zero-padded to 16 (kb <= KC_MAX) */
    int64_t blocks = (i1 - i0 + MR256 - 1) / MR256;
    for (int64_t p0 = 0; p0 < k; p0 += kb) {
        int64_t kc = k - p0 < kb ? k - p0 : kb, p1 = p0 + kc, kc1 = k - p1 < kb ? k - p1 : kb;
        int load_c = accumulate || p0 > 0;
        int64_t jt = n / 16 * 16; /* the padded block's first column */
        if (jt < n)
            for (int64_t p = 0; p < kc; p++)
                for (int64_t j = 0; j < 16; j++) pad[p * 16 + j] = jt + j < n ? pb[(p0 + p) * ldb + jt + j] : 0.0f;
        if (order == COLS_FIRST)
            for (int64_t j = 0; j < n; j += 16)
                for (int64_t i = i0; i < i1; i += MR256)
                    tile256_at(i, i1, j, n, p0, kc, trans, pa, lda, pb, ldb, load_c, bias, pc, ldc, pad);
        else
            for (int64_t i = i0; i < i1; i += MR256) {
                if (order == ROWS_FIRST_FETCH_B && kc1 > 0)
                    fetch_b_share(pb, ldb, n, p1, kc1, (i - i0) / MR256, blocks);
                for (int64_t j = 0; j < n; j += 16)
                    tile256_at(i, i1, j, n, p0, kc, trans, pa, lda, pb, ldb, load_c, bias, pc, ldc, pad);
            }
    }
}
#endif /* GNR_VEC_X86 */

int cpu_gemm_narrow_takes(int64_t n) { return n > 0 && n <= NARROW_MAX_N && cpu_vec_level() != CPU_VEC_BASELINE; }

/* C = op(A) B, + C (accumulate) or + the bias row (bias) or neither */
static void narrow_run(int nt, int trans_a, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                       const float *b, int64_t ldb, int accumulate, const float *bias, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return;
    if (!cpu_gemm_narrow_takes(n) || k <= 0) {
        if (bias && !accumulate) {
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) c[i * ldc + j] = bias[j];
            accumulate = 1;
        }
        cpu_gemm(nt, trans_a, 0, m, n, k, 1.0f, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c, ldc);
        return;
    }
#if GNR_VEC_X86
    int level = cpu_vec_level();
    int64_t mr = level == CPU_VEC_AVX512 ? MR512 : MR256;
    /* whole blocks of rows per thread; small products on one */
    int64_t blocks = (m + mr - 1) / mr;
    if (m * n * k < GNR_CPU_GEMM_PAR_MIN_MACS) nt = 1;
    if (nt > blocks) nt = (int)blocks;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = nt > 1 ? omp_get_thread_num() : 0;
        int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
        int64_t i0 = b0 * mr, i1 = b1 * mr < m ? b1 * mr : m;
        if (level == CPU_VEC_AVX512)
            rows512(i0, i1, n, k, k_block(n), trans_a, a, lda, b, ldb, accumulate, bias, c, ldc, ROWS_FIRST);
        else
            rows256(i0, i1, n, k, k_block(n), trans_a, a, lda, b, ldb, accumulate, bias, c, ldc, ROWS_FIRST);
    }
#endif
}

void cpu_gemm_narrow(int nt, int trans_a, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                     const float *b, int64_t ldb, int accumulate, float *c, int64_t ldc)
{
    narrow_run(nt, trans_a, m, n, k, a, lda, b, ldb, accumulate, NULL, c, ldc);
}

void cpu_gemm_narrow_bias(int nt, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                          int64_t ldb, const float *bias, float *c, int64_t ldc)
{
    narrow_run(nt, 0, m, n, k, a, lda, b, ldb, 0, bias, c, ldc);
}

/* Few rows against a B that no cache holds (a weight), read once from
 * memory in its own order, every thread on its own range of whole 32-column
 * tiles, so the threads share the weight's reading instead of each reading
 * all of it. Two ways, by the shape of a thread's block of C:
 *
 * Wide (more than STREAM_PANEL_MAX_COLS columns a thread, or fewer than
 * STREAM_PANEL_MIN_ROWS rows: a convolution's input gradient on a small
 * map): B's rows in blocks of STREAM_KC, each block crossed along its rows
 * by the column tiles (STREAM_KC sequential streams). The input gradient of
 * a 1280-channel 3 x 3 convolution on a 4 x 4 map (16 rows against the 1280
 * x 11520 weight) took 10.1 ms as W^T dY with sgemm and 9.8 with
 * cpu_gemm_narrow (W^T read down its columns: a new cache line and page at
 * each step of k), 4.3 ms here; on an 8 x 8 map (64 rows) 11.8, 18.0 and
 * 11.4 ms (2 threads, AVX-512, the weight not in cache; blocks of 32 and 64
 * rows were slower).
 *
 * Panels (a linear layer's input gradient, dX = dY W): the thread's columns
 * in panels whose block of C (m x panel) stays in L1 (STREAM_PANEL_C_BYTES),
 * each panel's k in blocks of STREAM_PANEL_KC, B's next block fetched into
 * L2 while the row blocks run over the current one (ROWS_FIRST_FETCH_B).
 * Wide, C (64 rows of 640 columns a thread) went back to L2 every 16 steps
 * of k. In a gradient pass at 256 x 256 (SD 1.4, 2 threads, AVX-512),
 * linear layers' input gradients (rows x in -> out), wide against panels:
 * 64 x 1280 -> 1280 1.32 against 1.11 ms, 64 x 1280 -> 10240 10.6 against
 * 8.9, 128 x 1280 -> 320 0.59 against 0.47, 64 x 2560 -> 640 1.13 against
 * 1.06; and those that had taken the narrow kernel with W^T down its
 * columns (linear.c): 256 x 640 -> 640 0.99 against 0.83, 128 x 320 ->
 * 2560 0.98 against 0.81, 64 x 640 -> 5120 2.20 against 1.99. The pass's
 * linear input gradients took 339 ms before, 295 after. With 16 rows, or
 * 2560 columns a thread (a convolution's input gradient), wide was faster
 * (alone, each weight one of four in turn).
 *
 * Both make the same sums in the same order as cpu_gemm_narrow: C is
 * reloaded exactly between blocks of k. */
#define STREAM_KC 16
#define STREAM_PANEL_MIN_ROWS 32
#define STREAM_PANEL_MAX_COLS 2048
#define STREAM_PANEL_C_BYTES ((int64_t)32 << 10)
#define STREAM_PANEL_KC 128
/* Wide, a thread's columns in panels whose block of C (m x panel) stays in
 * L2 across the k blocks that reload it: without, the input gradient of a
 * 2560 -> 1280 convolution on an 8 x 8 map (64 x 23040 floats of C, 2.9
 * MiB a thread) took 28.6 ms, in panels of 2048 columns 21.5 (2 threads,
 * AVX-512); with 16 rows C fits whole. */
#define STREAM_C_BYTES ((int64_t)512 << 10)
/* Wide, from this many columns a thread, each tile (32 columns, 16 on AVX2)
 * goes down all the rows before the next (COLS_FIRST): the tile's columns
 * of B's block, read once from memory, serve every row block from L1, where
 * a thread's block (16 rows of up to 11520 columns) no longer fits L1 and
 * rows-first read it again from L2 for each block of rows. In a gradient
 * pass at 256 x 256 (SD 1.4, 2 threads), the input gradients' products from
 * a 1280-channel output, AVX-512: 2560 channels on 4 x 4 14.1 -> 9.7 ms,
 * 1280 on 4 x 4 5.7 -> 4.8, 2560 on 8 x 8 24.8 -> 20.1, 1280 on 8 x 8
 * 11.2 -> 10.0; AVX2: 10.2 -> 8.1, 5.9 -> 3.7, 26.0 -> 24.7, 12.8 -> 11.9. */
#define STREAM_COLS_OUTER_MIN 4096

#if GNR_VEC_X86
/* The panel width, block of k and order for a thread's j1 - j0 columns */
static void stream_plan(int64_t m, int64_t cols, int64_t *panel, int64_t *kb, int *order)
{
    if (m >= STREAM_PANEL_MIN_ROWS && cols <= STREAM_PANEL_MAX_COLS) {
        int64_t p = STREAM_PANEL_C_BYTES / (m * (int64_t)sizeof(float)) / 32 * 32;
        *panel = p < 64 ? 64 : p > 256 ? 256 : p;
        *kb = STREAM_PANEL_KC;
        *order = ROWS_FIRST_FETCH_B;
        return;
    }
    int64_t p = STREAM_C_BYTES / (m * (int64_t)sizeof(float)) / 32 * 32;
    *panel = p < 32 ? 32 : p;
    *kb = STREAM_KC;
    *order = cols >= STREAM_COLS_OUTER_MIN ? COLS_FIRST : ROWS_FIRST;
}
#endif

void cpu_gemm_stream(int nt, int trans_a, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                     const float *b, int64_t ldb, int accumulate, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return;
    if (cpu_vec_level() == CPU_VEC_BASELINE || k <= 0) {
        cpu_gemm(nt, trans_a, 0, m, n, k, 1.0f, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c, ldc);
        return;
    }
#if GNR_VEC_X86
    int level = cpu_vec_level();
    int64_t tiles = (n + 31) / 32;
    if (m * n * k < GNR_CPU_GEMM_PAR_MIN_MACS) nt = 1;
    if (nt > tiles) nt = (int)tiles;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = nt > 1 ? omp_get_thread_num() : 0;
        int64_t j0 = tiles * t / nt * 32, j1 = tiles * (t + 1) / nt * 32 < n ? tiles * (t + 1) / nt * 32 : n;
        int64_t panel, kb;
        int order;
        stream_plan(m, j1 - j0, &panel, &kb, &order);
        for (int64_t jp = j0; jp < j1; jp += panel) {
            int64_t np = j1 - jp < panel ? j1 - jp : panel;
            if (level == CPU_VEC_AVX512)
                rows512(0, m, np, k, kb, trans_a, a, lda, b + jp, ldb, accumulate, NULL, c + jp, ldc, order);
            else
                rows256(0, m, np, k, kb, trans_a, a, lda, b + jp, ldb, accumulate, NULL, c + jp, ldc, order);
        }
    }
#endif
}
