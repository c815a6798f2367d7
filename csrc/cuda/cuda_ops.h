/* The CUDA implementation of every op of ops.def (named cuda_*), and what the
 * .cu files share: the per-context state, the cuBLAS dimension check, launch helpers,
 * deterministic block reductions and arena scratch.
 *
 * All kernels are float32 and simple: one thread per output element with
 * grid-stride loops, one block per row/group for reductions. Matrix products
 * go to cuBLAS through cuda_gemm (gemm.cu): fp32 in parity mode (TF32 off),
 * 16-bit tensor-core inputs in speed mode. Reductions use fixed launch shapes
 * and fixed-order shared-memory trees (no atomics), so results are
 * bit-identical run to run. */
#ifndef GNR_CUDA_OPS_H
#define GNR_CUDA_OPS_H

#include <stdint.h>

#include "check.h"

extern "C" {
#include "backend.h"
}

/* ctx->backend of a CUDA context (context_init / context_free). */
typedef struct {
    cudaStream_t stream;    /* every kernel, copy and cuBLAS call of the context */
    cublasHandle_t blas;
    void *workspace;        /* cuBLAS workspace, so cuBLAS never allocates inside ops */
    size_t workspace_bytes;
    gnr_dtype matmul;       /* ctx->matmul_dtype when the context was set up */
} cuda_state;

/* The state of a CUDA context. Never NULL inside an op: a context reaches the
 * CUDA table only after its context_init succeeded (model.c, the op binding). */
static inline cuda_state *cuda_state_of(const gnr_ctx *ctx) { return (cuda_state *)ctx->backend; }

/* C = alpha op(A) op(B) + beta C, column-major as cuBLAS, `batch` products
 * at the given element strides (batch 1: one product, strides unused), at
 * the context's matrix-product precision (gemm.cu). Returns cuBLAS's status,
 * for CUBLAS_CHECK. */
cublasStatus_t cuda_gemm(const cuda_state *s, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const float *alpha, const float *A, int lda, long long stride_a, const float *B, int ldb,
                         long long stride_b, const float *beta, float *C, int ldc, long long stride_c, int batch);

/* Matrix dimensions handed to cuBLAS must fit an int. */
gnr_status cuda_check_int(const char *op, const char *what, int64_t v);

#define CUDA_BLOCK 256

static inline unsigned cuda_grid(int64_t n)
{
    int64_t g = (n + CUDA_BLOCK - 1) / CUDA_BLOCK;
    if (g < 1) g = 1;
    if (g > (1 << 20)) g = 1 << 20; /* grid-stride loops cover the rest */
    return (unsigned)g;
}

#define GRID_STRIDE(i, n)                                                      \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (int64_t)blockDim.x * gridDim.x)

/* Sum of v over a block of CUDA_BLOCK threads in a fixed tree order; every
 * thread gets the result. sh: CUDA_BLOCK doubles of shared memory. */
__device__ __forceinline__ double block_sum(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = CUDA_BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

/* Maximum of v over the block (same shape as block_sum). */
__device__ __forceinline__ float block_max(float v, float *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = CUDA_BLOCK / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

/* Arena scratch released when the scope ends (stream order keeps reuse safe:
 * every kernel of a context runs on its one stream). */
struct cuda_scratch {
    gnr_arena *arena;
    gnr_arena_mark mark;
    explicit cuda_scratch(gnr_arena *a) : arena(a), mark(gnr_arena_get_mark(a)) {}
    ~cuda_scratch() { gnr_arena_release(arena, mark); }
    gnr_status alloc(size_t bytes, void **out) { return gnr_arena_alloc(arena, bytes, out); }
};

/* Bytes of scratch one tiled op (conv2d, attention) may hold at once. */
#define CUDA_TILE_BYTES ((size_t)64 << 20)

/* ---- backend entry points (same signatures as the gnr_* ops) ---- */
gnr_status cuda_context_init(gnr_ctx *ctx);
void cuda_context_free(gnr_ctx *ctx);
gnr_status cuda_synchronize(gnr_ctx *ctx);

void cuda_fill_nan(void *p, size_t bytes, void *user); /* the allocator's fill_nan */
#define GNR_OP(name, params, args) gnr_status cuda_##name params;
#include "ops.def"
#undef GNR_OP

#endif
