/* Fully connected layer on the last dim: sgemm with the PyTorch weight layout. */
#include "cpu/cpu_ops.h"

/* Out and In of w: Out x In, or a 1x1 conv weight Out x In x 1 x 1 (checked in op_checks.c). */
static void weight_dims(const gnr_tensor *w, int64_t *out, int64_t *in)
{
    *out = w->shape[0];
    *in = w->shape[1];
}

/* Few rows (the low-resolution levels' tokens, the time embedding) make a
 * narrow product: out (rows x ncols; with add, +=) = x (rows x k) op(W)^T
 * computed as op(W) (ncols x k) x^T, W read in place (narrow_gemm.c),
 * through two small transposes. Returns 0 (nothing done) when the product
 * is not narrow. */
static int narrow_rows(gnr_ctx *ctx, int64_t rows, int64_t ncols, int64_t k, const float *x, const float *w,
                       int trans_w, int add, float *out, gnr_status *st)
{
    if (!cpu_gemm_narrow_takes(rows)) return 0;
    int nt = gnr_cpu_threads(ctx);
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    float *xt, *ot;
    *st = gnr_arena_alloc(ctx->arena, (size_t)(k * rows) * sizeof(float), (void **)&xt);
    if (*st == GNR_OK) *st = gnr_arena_alloc(ctx->arena, (size_t)(ncols * rows) * sizeof(float), (void **)&ot);
    if (*st == GNR_OK) {
        cpu_transpose(nt, x, xt, rows, k, 0);
        cpu_gemm_narrow(nt, trans_w, ncols, rows, k, w, trans_w ? ncols : k, xt, rows, 0, ot, rows);
        cpu_transpose(nt, ot, out, ncols, rows, add);
    }
    gnr_arena_release(ctx->arena, mark);
    return 1;
}

/* y[r,o] = b[o] + sum_i x[r,i] w[o,i]     y = x W^T + b */
gnr_status cpu_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              gnr_tensor *y)
{
    int64_t out = 0, in = 0;
    weight_dims(w, &out, &in);
    int64_t rows = in ? gnr_numel(x) / in : 0;
    float *py = gnr_f32(y);
    float beta = 0.0f;
    if (b) {
        const float *pb = gnr_f32(b);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * out > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < out; o++) py[r * out + o] = pb[o];
        beta = 1.0f;
    }
    gnr_status st = GNR_OK;
    if (narrow_rows(ctx, rows, out, in, gnr_f32(x), gnr_f32(w), 0, b != NULL, py, &st)) return st;
    cpu_gemm(gnr_cpu_threads(ctx), 0, 1, rows, out, in, 1.0f, gnr_f32(x), in, gnr_f32(w), in, beta, py, out);
    return GNR_OK;
}

/* dx[r,i] += sum_o dy[r,o] w[o,i]     dx += dY W */
gnr_status cpu_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx)
{
    int64_t out = 0, in = 0;
    weight_dims(w, &out, &in);
    int64_t rows = out ? gnr_numel(dy) / out : 0;
    gnr_status st = GNR_OK;
    if (narrow_rows(ctx, rows, in, out, gnr_f32(dy), gnr_f32(w), 1, 1, gnr_f32(dx), &st)) return st;
    cpu_gemm(gnr_cpu_threads(ctx), 0, 0, rows, in, out, 1.0f, gnr_f32(dy), out, gnr_f32(w), in, 1.0f,
             gnr_f32(dx), in);
    return GNR_OK;
}
