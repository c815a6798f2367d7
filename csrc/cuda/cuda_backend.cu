/* The CUDA backend: device memory, per-context state (stream, cuBLAS handle
 * and workspace), error recording, the cuBLAS dimension check, and the table of
 * every op that gnr._C_cuda hands to the engine. */
#include <stdio.h>

#include "cuda_backend.h"
#include "cuda_ops.h"

/* ------------------------------------------------------------- errors --- */

static gnr_status nomem(const char *call, const char *file, int line)
{
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess) free_b = total_b = 0;
    cudaGetLastError(); /* an out-of-memory error must not stick to the next launch check */
    return gnr_error(GNR_ERR_NOMEM, "CUDA out of memory in %s (%s:%d): %zu bytes free of %zu on the device", call,
                     file, line, free_b, total_b);
}

gnr_status cuda_fail(cudaError_t err, const char *call, const char *file, int line)
{
    if (err == cudaErrorMemoryAllocation) return nomem(call, file, line);
    cudaGetLastError(); /* clear non-sticky errors */
    return gnr_error(GNR_ERR_DEVICE, "CUDA error in %s (%s:%d): %s (%s)", call, file, line, cudaGetErrorName(err),
                     cudaGetErrorString(err));
}

gnr_status cublas_fail(cublasStatus_t st, const char *call, const char *file, int line)
{
    if (st == CUBLAS_STATUS_ALLOC_FAILED) return nomem(call, file, line);
    return gnr_error(GNR_ERR_DEVICE, "cuBLAS error in %s (%s:%d): %s (%s)", call, file, line,
                     cublasGetStatusName(st), cublasGetStatusString(st));
}

/* The message of the last failure on this thread; the engine copies it into
 * its own error state (its gnr_error lives in another module). */
static const char *cuda_last_error(void) { return gnr_last_error(); }

/* ------------------------------------------------ cuBLAS dimensions --- */

gnr_status cuda_check_int(const char *op, const char *what, int64_t v)
{
    if (v < 0 || v > 0x7fffffff)
        return gnr_error(GNR_ERR_VALUE, "%s: %s = %lld is outside what cuBLAS accepts (0 .. 2^31-1)", op, what,
                         (long long)v);
    return GNR_OK;
}

/* ------------------------------------------------------ device memory --- */

static void *device_alloc(size_t bytes, void *user)
{
    (void)user;
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* the caller reports the failure; keep later checks clean */
        return NULL;
    }
    return p;
}

static void device_release(void *p, void *user)
{
    (void)user;
    if (p) cudaFree(p);
}

/* -------------------------------------------------- per-context state --- */

#define WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLAS's recommendation for Hopper */

void cuda_context_free(gnr_ctx *ctx)
{
    if (!ctx || !ctx->backend) return;
    cuda_state *s = (cuda_state *)ctx->backend;
    if (s->stream) cudaStreamSynchronize(s->stream);
    if (s->blas) cublasDestroy(s->blas);
    if (s->workspace) cudaFree(s->workspace);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
    ctx->backend = NULL;
    cudaGetLastError();
}

static gnr_status context_setup(cuda_state *s, gnr_dtype matmul)
{
    s->matmul = matmul;
    CUDA_CHECK(cudaStreamCreate(&s->stream));
    CUBLAS_CHECK(cublasCreate(&s->blas));
    CUBLAS_CHECK(cublasSetStream(s->blas, s->stream));
    /* Plain fp32 products, never TF32; speed mode asks for 16-bit tensor-core
     * math per call (gemm.cu). */
    CUBLAS_CHECK(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH));
    CUDA_CHECK(cudaMalloc(&s->workspace, WORKSPACE_BYTES));
    s->workspace_bytes = WORKSPACE_BYTES;
    CUBLAS_CHECK(cublasSetWorkspace(s->blas, s->workspace, s->workspace_bytes));
    return GNR_OK;
}

gnr_status cuda_context_init(gnr_ctx *ctx)
{
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) return gnr_error(GNR_ERR_NOMEM, "out of host memory for the CUDA context state");
    ctx->backend = s;
    gnr_status st = context_setup(s, ctx->matmul_dtype);
    if (st != GNR_OK) cuda_context_free(ctx);
    return st;
}

gnr_status cuda_synchronize(gnr_ctx *ctx)
{
    cuda_state *s = cuda_state_of(ctx);
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}

/* -------------------------------------------------------------- table --- */

extern "C" const gnr_backend gnr_cuda_backend = {
    .abi = GNR_BACKEND_ABI,
    .name = "cuda",
    .allocator = {device_alloc, device_release, NULL, 256, cuda_fill_nan},
    .context_init = cuda_context_init,
    .context_free = cuda_context_free,
    .synchronize = cuda_synchronize,
#define GNR_OP(name, params, args) .name = cuda_##name,
#include "ops.def"
#undef GNR_OP
    .last_error = cuda_last_error,
};
