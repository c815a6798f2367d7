/* Every matrix product of the CUDA backend, at the context's precision.
 *
 * Parity mode (matmul dtype float32): cublasSgemm / cublasSgemmStridedBatched,
 * plain fp32 (TF32 off, see context_setup).
 *
 * Speed mode (float16 / bfloat16): the same float32 matrices go to
 * cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F_FAST_16F / _16BF: cuBLAS
 * rounds the inputs to 16 bits for the tensor cores and accumulates in fp32;
 * C stays float32. Everything outside the products (softmax statistics,
 * norms, activations, energies) is float32 in both modes. */
#include "cuda_ops.h"

cublasStatus_t cuda_gemm(const cuda_state *s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const float *alpha, const float *A, int lda, long long stride_a, const float *B, int ldb,
                         long long stride_b, const float *beta, float *C, int ldc, long long stride_c, int batch)
{
    if (s->matmul == GNR_F32) {
        if (batch == 1) return cublasSgemm(s->blas, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
        return cublasSgemmStridedBatched(s->blas, ta, tb, m, n, k, alpha, A, lda, stride_a, B, ldb, stride_b, beta,
                                         C, ldc, stride_c, batch);
    }
    cublasComputeType_t compute = s->matmul == GNR_F16 ? CUBLAS_COMPUTE_32F_FAST_16F : CUBLAS_COMPUTE_32F_FAST_16BF;
    return cublasGemmStridedBatchedEx(s->blas, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, stride_a, B, CUDA_R_32F,
                                      ldb, stride_b, beta, C, CUDA_R_32F, ldc, stride_c, batch, compute,
                                      CUBLAS_GEMM_DEFAULT);
}
