/* gnr_ctx: what every op and model function runs against.
 *
 * One context per model and device: the arena its activations come from, the
 * backend state (cuBLAS handle and stream on CUDA), the reverse-mode tape while
 * a pass records, and the cancellation flag the host sets between passes.
 * A context is used by one thread at a time (the model enforces this). */
#ifndef GNR_CONTEXT_H
#define GNR_CONTEXT_H

#include "arena.h"
#include "status.h"
#include "tensor.h"

struct gnr_tape;
struct gnr_derived;

typedef struct gnr_ctx {
    gnr_device device;
    gnr_arena *arena;        /* stack of activations, released block by block */
    gnr_arena *keep;         /* captures that outlive a pass; reset by the pass's owner */
    int nthreads;            /* CPU threads of this context's ops (OpenMP regions and the sgemm
                                split); 0: the process default (gnr_get_num_threads) */
    gnr_dtype matmul_dtype;  /* inputs of matrix products: GNR_F32 (parity), or rounded to
                                GNR_F16 / GNR_BF16 with fp32 accumulation (CUDA speed mode) */
    void *backend;           /* device state, NULL on the CPU */
    struct gnr_tape *tape;   /* non-NULL while a pass records for reverse mode */
    int checkpointing;       /* while recording: re-run blocks in the backward instead of keeping them */
    volatile int *cancel;    /* non-zero: stop at the next check (between passes) */
    const void *hot_lo, *hot_hi;       /* weights run every pass (the UNet's): derived forms may be kept */
    struct gnr_derived *derived;       /* those kept forms (derived.h), host memory */
} gnr_ctx;

/* A new activation tensor from the arena (contents undefined). */
gnr_status gnr_alloc(gnr_ctx *ctx, gnr_dtype dt, int ndim, const int64_t *shape, gnr_tensor *out);
/* Shorthands for float32 activations of 2, 3 and 4 dims. */
gnr_status gnr_alloc2(gnr_ctx *ctx, int64_t a, int64_t b, gnr_tensor *out);
gnr_status gnr_alloc3(gnr_ctx *ctx, int64_t a, int64_t b, int64_t c, gnr_tensor *out);
gnr_status gnr_alloc4(gnr_ctx *ctx, int64_t a, int64_t b, int64_t c, int64_t d, gnr_tensor *out);
/* Same shape and dtype as `like`. */
gnr_status gnr_alloc_like(gnr_ctx *ctx, const gnr_tensor *like, gnr_tensor *out);

gnr_status gnr_check_cancel(const gnr_ctx *ctx);

#endif
