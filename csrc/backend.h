/* The backend table: one function pointer per op of ops.def, same signature.
 *
 * ops.c forwards each gnr_* op to the table of ctx->device. The CPU table is
 * built in (cpu/cpu_backend.c); the CUDA table comes from the separately
 * loaded module gnr._C_cuda (cuda/cuda_backend.cu) and is registered at run
 * time with gnr_register_backend, so the engine never links CUDA itself. */
#ifndef GNR_BACKEND_H
#define GNR_BACKEND_H

#include "ops.h"

/* 4: arguments are checked before dispatch (op_checks.c); a table built
 * against 3 still checked its own. 5: geglu_ffn_forward added after the
 * other ops (last_error moved). */
#define GNR_BACKEND_ABI 5

typedef struct gnr_backend {
    int abi;           /* GNR_BACKEND_ABI of the code that built the table */
    const char *name;  /* "cpu", "cuda" */
    /* device memory for arenas and weights */
    gnr_allocator allocator;
    /* per-context state (cuBLAS handle, stream); may be NULL functions */
    gnr_status (*context_init)(gnr_ctx *ctx);
    void (*context_free)(gnr_ctx *ctx);
    gnr_status (*synchronize)(gnr_ctx *ctx);
    /* one entry per op of ops.def, in its order */
#define GNR_OP(name, params, args) gnr_status(*name) params;
#include "ops.def"
#undef GNR_OP
    /* The message of the last failure on the calling thread, for a backend
     * built as a separate module (its gnr_error state is not the engine's):
     * ops.c copies it into the engine's message when an op fails. NULL for
     * the built-in CPU backend. */
    const char *(*last_error)(void);
} gnr_backend;

/* The table for a device, or NULL when that backend is not available. */
const gnr_backend *gnr_backend_for(gnr_device dev);
/* Installs the CUDA table (from gnr._C_cuda). GNR_ERR_VALUE on an ABI mismatch. */
gnr_status gnr_register_backend(gnr_device dev, const gnr_backend *table);

/* The CPU table (cpu/cpu_backend.c). */
extern const gnr_backend gnr_cpu_backend;

#endif
