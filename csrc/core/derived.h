/* Derived weights: a frozen weight in the form a kernel wants (a 3 x 3
 * convolution's weights in Winograd's domain), computed on first use and
 * kept with the context.
 *
 * Weights are frozen, so a transform of them is too: a UNet pass runs the
 * same convolution thousands of times over an edit, and re-deriving its
 * weights each time costs as much as a third of the convolution (measured
 * on the Winograd path). Only memory inside the context's frozen range (the
 * model's weight block) is ever a key, so an activation that happens to
 * reuse an address is never mistaken for a cached weight, and changing a
 * weight (gnr_weights_set) drops the cache.
 *
 * Host memory, bounded: GNR_WEIGHT_CACHE_MIB (default 1024; 0 turns the
 * cache off). Past the budget a kernel derives into scratch as if there
 * were no cache; the result is the same either way. */
#ifndef GNR_CORE_DERIVED_H
#define GNR_CORE_DERIVED_H

#include <stddef.h>

#include "context.h"

/* What a buffer holds, so one weight can have several derived forms. */
enum { GNR_DERIVED_WINOGRAD = 1, GNR_DERIVED_WINOGRAD_FLIPPED = 2 };

/* Whether `p` lies in the context's frozen weights. */
int gnr_is_frozen(const gnr_ctx *ctx, const void *p);

/* The buffer of `bytes` kept for (key, kind), or NULL. */
float *gnr_derived_find(const gnr_ctx *ctx, const void *key, int kind, size_t bytes);

/* A new buffer of `bytes` for (key, kind), kept until the context goes; NULL
 * when the key is not a frozen weight, the budget is spent or memory is
 * short (the caller then derives into scratch). The caller fills it before
 * the next lookup. */
float *gnr_derived_add(gnr_ctx *ctx, const void *key, int kind, size_t bytes);

/* Frees every kept buffer (the context goes, or its weights changed). */
void gnr_derived_clear(gnr_ctx *ctx);

/* Bytes held now. */
size_t gnr_derived_bytes(const gnr_ctx *ctx);

#endif
