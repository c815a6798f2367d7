/* Derived weights: a frozen weight in the form a kernel wants (a 3 x 3
 * convolution's weights in Winograd's domain), computed on first use and
 * kept with the context.
 *
 * Weights are frozen, so a transform of them is too: a UNet pass runs the
 * same convolution thousands of times over an edit, and re-deriving its
 * weights each time costs as much as a third of the convolution (measured
 * on the Winograd path). Only weights in the context's hot range are kept:
 * the UNet's, which run in every pass (the VAE's and the text encoder's run
 * once or twice an edit and derive into scratch). The range is the model's
 * weight block, so an activation that happens to reuse an address is never
 * mistaken for a cached weight; changing a weight (gnr_weights_set) drops
 * the cache.
 *
 * Host memory, bounded: GNR_WEIGHT_CACHE_MIB (default 1024; 0 turns the
 * cache off). A kernel that gets no buffer derives into scratch: whether a
 * form is kept never changes a result, only its time. */
#ifndef GNR_CORE_DERIVED_H
#define GNR_CORE_DERIVED_H

#include <stddef.h>

#include "context.h"

/* What a buffer holds, so one weight can have several derived forms. */
enum { GNR_DERIVED_WINOGRAD = 1 };

/* The buffer of `bytes` kept for (key, kind), or NULL: not in the hot
 * range, over the budget or out of memory. *fill is set when the buffer is
 * new: the caller fills it before the next lookup. */
float *gnr_derived_get(gnr_ctx *ctx, const void *key, int kind, size_t bytes, int *fill);

/* Frees every kept buffer (the context goes, or its weights changed). */
void gnr_derived_clear(gnr_ctx *ctx);

/* Bytes held now. */
size_t gnr_derived_bytes(const gnr_ctx *ctx);

#endif
