/* fill, copy, upload, download. */
#include "cuda_ops.h"

/* y[i] = value */
__global__ void fill_kernel(float *y, float value, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = value;
}

gnr_status cuda_fill(gnr_ctx *ctx, gnr_tensor *y, float value)
{
    cuda_state *s = NULL;
    GNR_TRY(cuda_get_state(ctx, &s));
    GNR_TRY(cuda_check_tensor("fill", "y", y));
    int64_t n = gnr_numel(y);
    if (n == 0) return GNR_OK;
    fill_kernel<<<cuda_grid(n), CUDA_BLOCK, 0, s->stream>>>(gnr_f32(y), value, n);
    CUDA_CHECK_LAUNCH("fill_kernel");
    return GNR_OK;
}

/* y = x. Overlapping regions go through arena scratch (cudaMemcpy does not
 * allow overlap). */
gnr_status cuda_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    cuda_state *s = NULL;
    GNR_TRY(cuda_get_state(ctx, &s));
    GNR_TRY(cuda_check_tensor("copy", "x", x));
    GNR_TRY(cuda_check_tensor("copy", "y", y));
    GNR_TRY(cuda_check_numel("copy", "x", x, "y", y));
    size_t bytes = gnr_nbytes(x);
    const char *xs = (const char *)x->data;
    char *yd = (char *)y->data;
    if (bytes == 0 || xs == yd) return GNR_OK;
    if (yd < xs + bytes && xs < yd + bytes) {
        cuda_scratch sc(ctx->arena);
        void *tmp;
        GNR_TRY(sc.alloc(bytes, &tmp));
        CUDA_CHECK(cudaMemcpyAsync(tmp, xs, bytes, cudaMemcpyDeviceToDevice, s->stream));
        CUDA_CHECK(cudaMemcpyAsync(yd, tmp, bytes, cudaMemcpyDeviceToDevice, s->stream));
        return GNR_OK;
    }
    CUDA_CHECK(cudaMemcpyAsync(yd, xs, bytes, cudaMemcpyDeviceToDevice, s->stream));
    return GNR_OK;
}

/* Host -> device. Synchronises, so the caller may free `host` on return. */
gnr_status cuda_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t)
{
    cuda_state *s = NULL;
    GNR_TRY(cuda_get_state(ctx, &s));
    GNR_TRY(cuda_check_tensor("upload", "t", t));
    size_t bytes = gnr_nbytes(t);
    if (bytes == 0) return GNR_OK;
    if (!host) return gnr_error(GNR_ERR_VALUE, "upload: host pointer is NULL");
    CUDA_CHECK(cudaMemcpyAsync(t->data, host, bytes, cudaMemcpyHostToDevice, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}

/* Device -> host, after every earlier op of the context. */
gnr_status cuda_download(gnr_ctx *ctx, const gnr_tensor *t, float *host)
{
    cuda_state *s = NULL;
    GNR_TRY(cuda_get_state(ctx, &s));
    GNR_TRY(cuda_check_tensor("download", "t", t));
    size_t bytes = gnr_nbytes(t);
    if (bytes == 0) return GNR_OK;
    if (!host) return gnr_error(GNR_ERR_VALUE, "download: host pointer is NULL");
    CUDA_CHECK(cudaMemcpyAsync(host, t->data, bytes, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}
