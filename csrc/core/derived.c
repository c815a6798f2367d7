#include "derived.h"

#include <stdint.h>
#include <stdlib.h>

typedef struct gnr_derived {
    const void *key;
    int kind;
    size_t bytes;
    float *data; /* NULL: seen once, or refused (no room) */
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

static int is_frozen(const gnr_ctx *ctx, const void *p)
{
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)ctx->frozen_lo, hi = (uintptr_t)ctx->frozen_hi;
    return lo && a >= lo && a < hi;
}

float *gnr_derived_get(gnr_ctx *ctx, const void *key, int kind, size_t bytes, int *fill)
{
    *fill = 0;
    if (!is_frozen(ctx, key)) return NULL;
    gnr_derived *d = ctx->derived;
    while (d && !(d->key == key && d->kind == kind && d->bytes == bytes)) d = d->next;
    if (!d) { /* first use: mark it */
        if ((d = malloc(sizeof *d))) {
            *d = (gnr_derived){key, kind, bytes, NULL, ctx->derived};
            ctx->derived = d;
        }
        return NULL;
    }
    if (d->data || gnr_derived_bytes(ctx) + bytes > budget_bytes()) return d->data;
    if ((d->data = malloc(bytes))) *fill = 1;
    return d->data;
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
    for (const gnr_derived *d = ctx->derived; d; d = d->next)
        if (d->data) n += d->bytes;
    return n;
}
