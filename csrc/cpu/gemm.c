/* Row-major sgemm through OpenBLAS: every matrix product but those against
 * few columns that narrow_gemm.c computes itself. */
#include <cblas.h>

#include "cpu/cpu_ops.h"

/* OpenMP is the engine's only thread pool: OpenBLAS runs single-threaded
 * (gnr_set_num_threads sets it so), and a large product is split into one
 * slice per thread of the calling context (nt) along the larger of C's
 * dimensions, each slice one sgemm.
 * Two pools on one machine oversubscribe it: OpenBLAS's workers spin after a
 * product and starve the OpenMP workers of the next elementwise op (measured
 * on 2 cores under load: a tiny-model UNet pass took 160 ms with both pools
 * threaded, 2.6 ms with one). Every element of C is still one sgemm's dot
 * product over the whole of k, so the result does not depend on the split. */
#define GNR_BLAS_SLICE_ALIGN 16

static void sgemm1(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                   int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                      (blasint)m, (blasint)n, (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, c,
                      (blasint)ldc);
}

void cpu_gemm(int nt, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
              int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return;
    int split_rows = m >= n;
    int64_t len = split_rows ? m : n;
    int64_t per = (len + nt - 1) / nt;
    per = (per + GNR_BLAS_SLICE_ALIGN - 1) / GNR_BLAS_SLICE_ALIGN * GNR_BLAS_SLICE_ALIGN;
    int chunks = (int)((len + per - 1) / per);
    if (nt <= 1 || chunks <= 1 || m * n * k < GNR_CPU_GEMM_PAR_MIN_MACS) {
        sgemm1(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
    for (int i = 0; i < chunks; i++) {
        int64_t lo = i * per, cnt = lo + per <= len ? per : len - lo;
        if (split_rows) /* rows lo.. of C and of op(A) */
            sgemm1(trans_a, trans_b, cnt, n, k, alpha, trans_a ? a + lo : a + lo * lda, lda, b, ldb, beta,
                   c + lo * ldc, ldc);
        else /* columns lo.. of C and of op(B) */
            sgemm1(trans_a, trans_b, m, cnt, k, alpha, a, lda, trans_b ? b + lo * ldb : b + lo, ldb, beta, c + lo,
                   ldc);
    }
}
