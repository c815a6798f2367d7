/* Fully connected layer on the last dim: sgemm with the PyTorch weight layout. */
#include "cpu/cpu_ops.h"

/* Out and In of w: Out x In, or a 1x1 conv weight Out x In x 1 x 1. */
static gnr_status weight_dims(const char *op, const gnr_tensor *w, int64_t *out, int64_t *in)
{
    if (w->ndim == 2 || (w->ndim == 4 && w->shape[2] == 1 && w->shape[3] == 1)) {
        *out = w->shape[0];
        *in = w->shape[1];
        return GNR_OK;
    }
    return gnr_error(GNR_ERR_VALUE, "%s: w %s must be Out x In (or Out x In x 1 x 1)", op, gnr_cpu_shape(w));
}

/* y[r,o] = b[o] + sum_i x[r,i] w[o,i]     y = x W^T + b */
gnr_status cpu_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              gnr_tensor *y)
{
    const char *op = "linear_forward";
    GNR_TRY(gnr_cpu_check_f32(op, "x", x));
    GNR_TRY(gnr_cpu_check_f32(op, "w", w));
    GNR_TRY(gnr_cpu_check_f32(op, "y", y));
    int64_t out = 0, in = 0;
    GNR_TRY(weight_dims(op, w, &out, &in));
    int64_t rows = x->shape[x->ndim - 1] == in ? gnr_numel(x) / in : -1;
    if (rows < 0)
        return gnr_error(GNR_ERR_VALUE, "%s: x %s must end in In = %lld, the second dim of w %s", op,
                         gnr_cpu_shape(x), (long long)in, gnr_cpu_shape(w));
    if (y->shape[y->ndim - 1] != out || gnr_numel(y) != rows * out)
        return gnr_error(GNR_ERR_VALUE, "%s: y %s must be rows x Out = %lld x %lld (x %s, w %s)", op,
                         gnr_cpu_shape(y), (long long)rows, (long long)out, gnr_cpu_shape(x), gnr_cpu_shape(w));
    if (b) {
        GNR_TRY(gnr_cpu_check_f32(op, "b", b));
        if (gnr_numel(b) != out)
            return gnr_error(GNR_ERR_VALUE, "%s: b %s must have Out = %lld elements (w %s)", op, gnr_cpu_shape(b),
                             (long long)out, gnr_cpu_shape(w));
    }
    float *py = gnr_f32(y);
    float beta = 0.0f;
    if (b) {
        const float *pb = gnr_f32(b);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (rows * out > GNR_CPU_PAR_MIN) schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t o = 0; o < out; o++) py[r * out + o] = pb[o];
        beta = 1.0f;
    }
    gnr_cpu_sgemm(0, 1, rows, out, in, 1.0f, gnr_f32(x), in, gnr_f32(w), in, beta, py, out);
    return GNR_OK;
}

/* dx[r,i] += sum_o dy[r,o] w[o,i]     dx += dY W */
gnr_status cpu_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx)
{
    (void)ctx;
    const char *op = "linear_backward";
    GNR_TRY(gnr_cpu_check_f32(op, "dy", dy));
    GNR_TRY(gnr_cpu_check_f32(op, "w", w));
    GNR_TRY(gnr_cpu_check_f32(op, "dx", dx));
    int64_t out = 0, in = 0;
    GNR_TRY(weight_dims(op, w, &out, &in));
    int64_t rows = dy->shape[dy->ndim - 1] == out ? gnr_numel(dy) / out : -1;
    if (rows < 0)
        return gnr_error(GNR_ERR_VALUE, "%s: dy %s must end in Out = %lld, the first dim of w %s", op,
                         gnr_cpu_shape(dy), (long long)out, gnr_cpu_shape(w));
    if (dx->shape[dx->ndim - 1] != in || gnr_numel(dx) != rows * in)
        return gnr_error(GNR_ERR_VALUE, "%s: dx %s must be rows x In = %lld x %lld (dy %s, w %s)", op,
                         gnr_cpu_shape(dx), (long long)rows, (long long)in, gnr_cpu_shape(dy), gnr_cpu_shape(w));
    gnr_cpu_sgemm(0, 0, rows, in, out, 1.0f, gnr_f32(dy), out, gnr_f32(w), in, 1.0f, gnr_f32(dx), in);
    return GNR_OK;
}
