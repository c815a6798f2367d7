/* Memory ops: fill, copy, upload, download, and the CPU allocator. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu/cpu_ops.h"

#define HUGE_PAGE_BYTES ((size_t)2 << 20)
#define HUGE_MIN_BYTES ((size_t)4 << 20)

void *gnr_cpu_alloc(size_t bytes, void *user)
{
    (void)user;
    void *p = NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= HUGE_MIN_BYTES) {
        if (posix_memalign(&p, HUGE_PAGE_BYTES, bytes) != 0) return NULL;
        madvise(p, bytes / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES, MADV_HUGEPAGE);
        return p;
    }
#endif
    if (posix_memalign(&p, 64, bytes ? bytes : 1) != 0) return NULL;
    return p;
}

void gnr_cpu_free(void *ptr, void *user)
{
    (void)user;
    free(ptr);
}

void gnr_cpu_fill_nan(void *ptr, size_t bytes, void *user)
{
    (void)user;
    uint32_t bits = GNR_NAN_FILL_BITS;
    unsigned char *p = ptr;
    size_t i = 0;
    for (; i + sizeof bits <= bytes; i += sizeof bits) memcpy(p + i, &bits, sizeof bits);
}

gnr_status cpu_synchronize(gnr_ctx *ctx)
{
    (void)ctx;
    return GNR_OK;
}

/* y[i] = value */
gnr_status cpu_fill(gnr_ctx *ctx, gnr_tensor *y, float value)
{
    float *p = gnr_f32(y);
    int64_t n = gnr_numel(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) p[i] = value;
    return GNR_OK;
}

/* y = x; overlapping regions (y at or before x) are moved in one sequential pass. */
gnr_status cpu_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    const char *src = x->data;
    char *dst = y->data;
    size_t bytes = gnr_nbytes(x);
    if (src == dst || bytes == 0) return GNR_OK;
    if (dst < src + bytes && src < dst + bytes) {
        memmove(dst, src, bytes);
        return GNR_OK;
    }
    const size_t chunk = (size_t)1 << 20;
    int64_t nchunks = (int64_t)((bytes + chunk - 1) / chunk);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (nchunks > 1) schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        size_t off = (size_t)c * chunk;
        size_t len = bytes - off < chunk ? bytes - off : chunk;
        memcpy(dst + off, src + off, len);
    }
    return GNR_OK;
}

gnr_status cpu_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t)
{
    (void)ctx;
    if ((const void *)host != t->data) memcpy(t->data, host, gnr_nbytes(t));
    return GNR_OK;
}

gnr_status cpu_download(gnr_ctx *ctx, const gnr_tensor *t, float *host)
{
    (void)ctx;
    if ((void *)host != t->data) memcpy(host, t->data, gnr_nbytes(t));
    return GNR_OK;
}
