/* Fully connected layer, products by cuBLAS.
 *
 * Row-major matrices are handed to column-major cuBLAS as their transposes:
 * a row-major R x C matrix is a column-major C x R matrix with ld = C. */
#include "cuda_ops.h"

/* y[r,o] += b[o] */
__global__ void add_bias_rows_kernel(float *y, const float *b, int64_t out, int64_t n)
{
    GRID_STRIDE(i, n) y[i] += b[i % out];
}

/* The product's dims (shapes checked in op_checks.c); cuBLAS takes them as int. */
static gnr_status linear_dims(const char *op, const gnr_tensor *x, const gnr_tensor *w, int64_t *rows, int64_t *in,
                              int64_t *out)
{
    *out = w->shape[0];
    *in = w->shape[1];
    *rows = *in ? gnr_numel(x) / *in : 0;
    GNR_TRY(cuda_check_int(op, "rows", *rows));
    GNR_TRY(cuda_check_int(op, "In", *in));
    GNR_TRY(cuda_check_int(op, "Out", *out));
    return GNR_OK;
}

/* y[r,o] = b[o] + sum_i x[r,i] w[o,i]
 * column-major: y^T (Out x R) = op_T(w^T as In x Out) * x^T (In x R) */
gnr_status cuda_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                               gnr_tensor *y)
{
    const char *op = "linear_forward";
    cuda_state *s = cuda_state_of(ctx);
    int64_t rows = 0, in = 0, out = 0;
    GNR_TRY(linear_dims(op, x, w, &rows, &in, &out));
    if (rows == 0 || out == 0) return GNR_OK;
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_T, CUBLAS_OP_N, (int)out, (int)rows, (int)in, &one, gnr_f32(w), (int)in, 0,
                           gnr_f32(x), (int)in, 0, &zero, gnr_f32(y), (int)out, 0, 1));
    if (b) {
        int64_t n = rows * out;
        CUDA_LAUNCH(add_bias_rows_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(y), gnr_f32(b), out, n);
    }
    return GNR_OK;
}

/* dx[r,i] += sum_o dy[r,o] w[o,i]
 * column-major: dx^T (In x R) += (w^T as In x Out) * dy^T (Out x R) */
gnr_status cuda_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx)
{
    const char *op = "linear_backward";
    cuda_state *s = cuda_state_of(ctx);
    int64_t rows = 0, in = 0, out = 0;
    GNR_TRY(linear_dims(op, dx, w, &rows, &in, &out));
    if (rows == 0 || in == 0) return GNR_OK;
    const float one = 1.0f;
    CUBLAS_CHECK(cuda_gemm(s, CUBLAS_OP_N, CUBLAS_OP_N, (int)in, (int)rows, (int)out, &one, gnr_f32(w), (int)in, 0,
                           gnr_f32(dy), (int)out, 0, &one, gnr_f32(dx), (int)in, 0, 1));
    return GNR_OK;
}
