#include "derived.h"

#include <stdint.h>
#include <stdlib.h>

typedef struct gnr_derived {
    const void *key;
    int kind;
    size_t bytes;
    float *data;
    struct gnr_derived *next;
} gnr_derived;

static size_t budget_bytes(void)
{
    static long long mib = -1;
    if (mib < 0) {
        const char *e = getenv("GNR_WEIGHT_CACHE_MIB");
        char *end = NULL;
        long long v = e && *e ? strtoll(e, &end, 10) : 1024;
        mib = (e && *e && (*end || v < 0)) ? 1024 : v; /* a malformed value keeps the default */
    }
    return (size_t)mib << 20;
}

static int is_hot(const gnr_ctx *ctx, const void *p)
{
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)ctx->hot_lo, hi = (uintptr_t)ctx->hot_hi;
    return lo && a >= lo && a < hi;
}

float *gnr_derived_get(gnr_ctx *ctx, const void *key, int kind, size_t bytes, int *fill)
{
    *fill = 0;
    if (!is_hot(ctx, key)) return NULL;
    for (gnr_derived *d = ctx->derived; d; d = d->next)
        if (d->key == key && d->kind == kind && d->bytes == bytes) return d->data;
    if (gnr_derived_bytes(ctx) + bytes > budget_bytes()) return NULL;
    gnr_derived *d = malloc(sizeof *d);
    float *data = malloc(bytes);
    if (!d || !data) {
        free(d);
        free(data);
        return NULL;
    }
    *d = (gnr_derived){key, kind, bytes, data, ctx->derived};
    ctx->derived = d;
    *fill = 1;
    return data;
}

void gnr_derived_clear(gnr_ctx *ctx)
{
    gnr_derived *d = ctx->derived;
    while (d) {
        gnr_derived *next = d->next;
        free(d->data);
        free(d);
        d = next;
    }
    ctx->derived = NULL;
}

size_t gnr_derived_bytes(const gnr_ctx *ctx)
{
    size_t n = 0;
    for (const gnr_derived *d = ctx->derived; d; d = d->next) n += d->bytes;
    return n;
}
