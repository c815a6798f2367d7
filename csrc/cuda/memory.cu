/* fill, copy, upload, download. */
#include <string.h>

#include "cuda_ops.h"

/* y[i] = value */
__global__ void fill_kernel(float *y, float value, int64_t n)
{
    GRID_STRIDE(i, n) y[i] = value;
}

gnr_status cuda_fill(gnr_ctx *ctx, gnr_tensor *y, float value)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(y);
    if (n == 0) return GNR_OK;
    CUDA_LAUNCH(fill_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(y), value, n);
    return GNR_OK;
}

/* y = x, where the two may overlap (cudaMemcpy's ranges may not): when the
 * distance between them is at least 1/16 of the size, by copies of that
 * distance in the order that reads every byte before it is overwritten;
 * otherwise through arena scratch, which lies past both ranges as long as
 * both are allocated (the caller's duty: released memory is never read). */
gnr_status cuda_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    size_t bytes = gnr_nbytes(x);
    const char *xs = (const char *)x->data;
    char *yd = (char *)y->data;
    if (bytes == 0 || xs == yd) return GNR_OK;
    if (yd < xs + bytes && xs < yd + bytes) {
        size_t gap = yd < xs ? (size_t)(xs - yd) : (size_t)(yd - xs);
        if (gap * 16 >= bytes) {
            for (size_t done = 0; done < bytes; done += gap) {
                size_t n = bytes - done < gap ? bytes - done : gap;
                size_t at = yd < xs ? done : bytes - done - n; /* front first moving down, back first moving up */
                CUDA_CHECK(cudaMemcpyAsync(yd + at, xs + at, n, cudaMemcpyDeviceToDevice, s->stream));
            }
            return GNR_OK;
        }
        cuda_scratch sc(ctx->arena);
        char *tmp;
        GNR_TRY(sc.alloc(bytes, (void **)&tmp));
        if ((tmp < xs + bytes && xs < tmp + bytes) || (tmp < yd + bytes && yd < tmp + bytes))
            return gnr_error(GNR_ERR_INTERNAL, "copy: arena scratch overlaps the copy's own ranges: the source or "
                                               "destination lies in released arena memory");
        CUDA_CHECK(cudaMemcpyAsync(tmp, xs, bytes, cudaMemcpyDeviceToDevice, s->stream));
        CUDA_CHECK(cudaMemcpyAsync(yd, tmp, bytes, cudaMemcpyDeviceToDevice, s->stream));
        return GNR_OK;
    }
    CUDA_CHECK(cudaMemcpyAsync(yd, xs, bytes, cudaMemcpyDeviceToDevice, s->stream));
    return GNR_OK;
}

/* GNR_NANFILL: arena slices start as signalling NaNs (the allocator's
 * fill_nan). On the legacy default stream, which every context's stream
 * waits for, so the fill lands before the slice's first use. */
static gnr_status fill_nan(void *p, size_t bytes)
{
    int64_t n = (int64_t)(bytes / sizeof(float));
    uint32_t bits = GNR_NAN_FILL_BITS;
    float value;
    memcpy(&value, &bits, sizeof value);
    if (n > 0) CUDA_LAUNCH(fill_kernel, cuda_grid(n), CUDA_BLOCK, 0, (cudaStream_t)0, (float *)p, value, n);
    return GNR_OK;
}

void cuda_fill_nan(void *p, size_t bytes, void *user)
{
    (void)user;
    if (fill_nan(p, bytes) != GNR_OK) cudaGetLastError(); /* a debugging aid: the slice's users report errors */
}

/* Host -> device. Synchronises, so the caller may free `host` on return. */
gnr_status cuda_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t)
{
    cuda_state *s = cuda_state_of(ctx);
    size_t bytes = gnr_nbytes(t);
    if (bytes == 0) return GNR_OK;
    CUDA_CHECK(cudaMemcpyAsync(t->data, host, bytes, cudaMemcpyHostToDevice, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}

/* Device -> host, after every earlier op of the context. */
gnr_status cuda_download(gnr_ctx *ctx, const gnr_tensor *t, float *host)
{
    cuda_state *s = cuda_state_of(ctx);
    size_t bytes = gnr_nbytes(t);
    if (bytes == 0) return GNR_OK;
    CUDA_CHECK(cudaMemcpyAsync(host, t->data, bytes, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}
