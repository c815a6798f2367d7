/* The emulated cuBLAS (see cublas_v2.h): column-major products on OpenBLAS,
 * with cuBLAS's argument checks, and every matrix checked to lie in device
 * memory. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <cblas.h>

#include "cublas_v2.h"
#include "emu.h"
#include "half_bits.h"

using namespace gnr_emu;

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
};

static std::set<const void *> &live_handles()
{
    static std::set<const void *> s;
    return s;
}

static cublasStatus_t bad(cublasStatus_t st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static cublasStatus_t bad(cublasStatus_t st, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    set_cublas_detail(st, buf);
    return st;
}

#define CHECK_HANDLE(h)                                                                              \
    do {                                                                                             \
        if (!(h) || !live_handles().count(h))                                                        \
            return bad(CUBLAS_STATUS_NOT_INITIALIZED, "%s: not a live cuBLAS handle", __func__);      \
    } while (0)

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    EMU_LOCK;
    if (!handle) return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate: handle is NULL");
    *handle = new cublasContext{nullptr, CUBLAS_DEFAULT_MATH};
    live_handles().insert(*handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    live_handles().erase(handle);
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    if (!stream) return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasGetStream: stream is NULL");
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    if (!mode) return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasGetMathMode: mode is NULL");
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    std::string why;
    if (bytes && !device_range(workspace, bytes, &why))
        return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasSetWorkspace: %s", why.c_str());
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    const char *d = detail_for(status, true);
    if (d) return d;
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
    }
}

} /* extern "C" */

namespace {

/* One strided-batched product, column-major: C = alpha op(A) op(B) + beta C.
 * round: 0 (fp32 inputs), 16 (inputs rounded to fp16), 'b' (to bf16). */
struct gemm_args {
    const char *call;
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha, beta;
    const float *A, *B;
    float *C;
    int lda, ldb, ldc;
    long long sa, sb, sc;
    int batch;
    int round;
};

/* The bytes a column-major rows x cols matrix with leading dimension ld spans. */
size_t span(int rows, int cols, int ld)
{
    if (rows == 0 || cols == 0) return 0;
    return ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * sizeof(float);
}

bool in_memory(const char *call, const char *name, const float *p, int rows, int cols, int ld, long long stride,
               int batch, std::string *why)
{
    for (int b = 0; b < batch; b++) {
        const float *q = p + (long long)b * stride;
        std::string w;
        if (!device_range(q, span(rows, cols, ld), &w)) {
            char buf[160];
            snprintf(buf, sizeof buf, "%s: %s of batch %d (%d x %d, ld %d): ", call, name, b, rows, cols, ld);
            *why = buf + w;
            return false;
        }
        if (stride == 0) break;
    }
    return true;
}

void round_copy(const float *src, int rows, int cols, int ld, int round, std::vector<float> *dst)
{
    dst->assign((size_t)ld * (cols - 1) + rows, 0.0f);
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < rows; i++) {
            float v = src[(size_t)j * ld + i];
            (*dst)[(size_t)j * ld + i] = round == 16 ? half_bits_to_float(float_to_half_bits(v))
                                                     : bf16_bits_to_float(float_to_bf16_bits(v));
        }
}

cublasStatus_t gemm(cublasHandle_t h, const gemm_args &g)
{
    if (g.ta > CUBLAS_OP_C || g.tb > CUBLAS_OP_C || g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0)
        return bad(CUBLAS_STATUS_INVALID_VALUE, "%s: m %d, n %d, k %d, batch %d (none may be negative)", g.call, g.m,
                   g.n, g.k, g.batch);
    int ar = g.ta == CUBLAS_OP_N ? g.m : g.k, ac = g.ta == CUBLAS_OP_N ? g.k : g.m;
    int br = g.tb == CUBLAS_OP_N ? g.k : g.n, bc = g.tb == CUBLAS_OP_N ? g.n : g.k;
    if (g.lda < std::max(1, ar) || g.ldb < std::max(1, br) || g.ldc < std::max(1, g.m))
        return bad(CUBLAS_STATUS_INVALID_VALUE,
                   "%s: leading dimensions lda %d, ldb %d, ldc %d are below the rows of A (%d), B (%d), C (%d)", g.call,
                   g.lda, g.ldb, g.ldc, ar, br, g.m);
    if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
    std::string why;
    bool use_ab = g.k > 0 && g.alpha != 0.0f;
    if ((use_ab && (!in_memory(g.call, "A", g.A, ar, ac, g.lda, g.sa, g.batch, &why) ||
                    !in_memory(g.call, "B", g.B, br, bc, g.ldb, g.sb, g.batch, &why))) ||
        !in_memory(g.call, "C", g.C, g.m, g.n, g.ldc, g.sc, g.batch, &why))
        return bad(CUBLAS_STATUS_EXECUTION_FAILED, "%s", why.c_str());
    (void)h;
    std::vector<float> ra, rb;
    for (int b = 0; b < g.batch; b++) {
        const float *A = g.A + (long long)b * g.sa, *B = g.B + (long long)b * g.sb;
        float *C = g.C + (long long)b * g.sc;
        if (g.beta == 0.0f) /* cuBLAS never reads C when beta is 0: NaN there must not leak */
            for (int j = 0; j < g.n; j++) memset(C + (size_t)j * g.ldc, 0, (size_t)g.m * sizeof(float));
        if (!use_ab) {
            if (g.beta != 0.0f && g.beta != 1.0f)
                for (int j = 0; j < g.n; j++)
                    for (int i = 0; i < g.m; i++) C[(size_t)j * g.ldc + i] *= g.beta;
            continue;
        }
        if (g.round) {
            round_copy(A, ar, ac, g.lda, g.round, &ra);
            round_copy(B, br, bc, g.ldb, g.round, &rb);
            A = ra.data();
            B = rb.data();
        }
        scipy_cblas_sgemm(CblasColMajor, g.ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                          g.tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, g.m, g.n, g.k, g.alpha, A, g.lda, B, g.ldb,
                          g.beta, C, g.ldc);
    }
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

extern "C" {

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m,
                                         int n, int k, const float *alpha, const float *A, int lda,
                                         long long stride_a, const float *B, int ldb, long long stride_b,
                                         const float *beta, float *C, int ldc, long long stride_c, int batch)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    if (!alpha || !beta) return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasSgemmStridedBatched: alpha or beta is NULL");
    return gemm(handle, gemm_args{"cublasSgemmStridedBatched", ta, tb, m, n, k, *alpha, *beta, A, B, C, lda, ldb, ldc,
                                  stride_a, stride_b, stride_c, batch, 0});
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    if (!alpha || !beta) return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasSgemm: alpha or beta is NULL");
    return gemm(handle, gemm_args{"cublasSgemm", ta, tb, m, n, k, *alpha, *beta, A, B, C, lda, ldb, ldc, 0, 0, 0, 1, 0});
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m,
                                          int n, int k, const void *alpha, const void *A, cudaDataType a_type,
                                          int lda, long long stride_a, const void *B, cudaDataType b_type, int ldb,
                                          long long stride_b, const void *beta, void *C, cudaDataType c_type,
                                          int ldc, long long stride_c, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t algo)
{
    EMU_LOCK;
    CHECK_HANDLE(handle);
    (void)algo;
    if (a_type != CUDA_R_32F || b_type != CUDA_R_32F || c_type != CUDA_R_32F)
        return bad(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmStridedBatchedEx: the emulator takes float32 A, B and C only");
    int round;
    switch (compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC: round = 0; break;
    case CUBLAS_COMPUTE_32F_FAST_16F: round = 16; break;
    case CUBLAS_COMPUTE_32F_FAST_16BF: round = 'b'; break;
    default:
        return bad(CUBLAS_STATUS_NOT_SUPPORTED, "cublasGemmStridedBatchedEx: compute type %d is not emulated",
                   (int)compute);
    }
    if (!alpha || !beta) return bad(CUBLAS_STATUS_INVALID_VALUE, "cublasGemmStridedBatchedEx: alpha or beta is NULL");
    return gemm(handle, gemm_args{"cublasGemmStridedBatchedEx", ta, tb, m, n, k, *(const float *)alpha,
                                  *(const float *)beta, (const float *)A, (const float *)B, (float *)C, lda, ldb, ldc,
                                  stride_a, stride_b, stride_c, batch, round});
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType a_type, int lda, const void *B,
                            cudaDataType b_type, int ldb, const void *beta, void *C, cudaDataType c_type, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo)
{
    return cublasGemmStridedBatchedEx(handle, ta, tb, m, n, k, alpha, A, a_type, lda, 0, B, b_type, ldb, 0, beta, C,
                                      c_type, ldc, 0, 1, compute, algo);
}

} /* extern "C" */
