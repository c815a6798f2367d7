/* The backend table: one function pointer per op of ops.h, same signature.
 *
 * ops.c forwards each gnr_* op to the table of ctx->device. The CPU table is
 * built in (cpu/cpu_backend.c); the CUDA table comes from the separately
 * loaded module gnr._C_cuda (cuda/cuda_backend.cu) and is registered at run
 * time with gnr_register_backend, so the engine never links CUDA itself. */
#ifndef GNR_BACKEND_H
#define GNR_BACKEND_H

#include "ops.h"

#define GNR_BACKEND_ABI 3

typedef struct gnr_backend {
    int abi;           /* GNR_BACKEND_ABI of the code that built the table */
    const char *name;  /* "cpu", "cuda" */
    /* device memory for arenas and weights */
    gnr_allocator allocator;
    /* per-context state (cuBLAS handle, stream); may be NULL functions */
    gnr_status (*context_init)(gnr_ctx *ctx);
    void (*context_free)(gnr_ctx *ctx);
    gnr_status (*synchronize)(gnr_ctx *ctx);
    gnr_status (*fill)(gnr_ctx *ctx, gnr_tensor *y, float value);
    gnr_status (*copy)(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*upload)(gnr_ctx *ctx, const float *host, gnr_tensor *t);
    gnr_status (*download)(gnr_ctx *ctx, const gnr_tensor *t, float *host);
    gnr_status (*add)(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
    gnr_status (*scale)(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y);
    gnr_status (*axpy)(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*add_channel_forward)(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y);
    gnr_status (*add_channel_backward)(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv);
    gnr_status (*linear_forward)(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b, gnr_tensor *y);
    gnr_status (*linear_backward)(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx);
    gnr_status (*conv2d_forward)(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b, const gnr_conv_params *p, gnr_tensor *y);
    gnr_status (*conv2d_backward)(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, const gnr_conv_params *p, gnr_tensor *dx);
    gnr_status (*group_norm_forward)(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta, int groups, float eps, gnr_tensor *y);
    gnr_status (*group_norm_backward)(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx);
    gnr_status (*layer_norm_forward)(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta, float eps, gnr_tensor *y);
    gnr_status (*layer_norm_backward)(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, const gnr_tensor *gamma, float eps, gnr_tensor *dx);
    gnr_status (*act_forward)(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*act_backward)(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx);
    gnr_status (*geglu_forward)(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*geglu_backward)(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx);
    gnr_status (*nchw_to_nlc)(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*nlc_to_nchw)(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*nchw_to_nlc_backward)(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);
    gnr_status (*nlc_to_nchw_backward)(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);
    gnr_status (*concat_channels_forward)(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
    gnr_status (*concat_channels_backward)(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db);
    gnr_status (*upsample2x_forward)(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
    gnr_status (*upsample2x_backward)(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);
    gnr_status (*attention_forward)(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v, int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out);
    gnr_status (*attention_backward)(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v, const gnr_tensor *probs, int heads, int causal, float scale, const gnr_tensor *dout, const gnr_tensor *dprobs, gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv);
    gnr_status (*embedding_forward)(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n, gnr_tensor *y);
    gnr_status (*sq_diff_mean)(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out);
    gnr_status (*sq_diff_mean_backward)(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale, gnr_tensor *da);
    gnr_status (*abs_diff_mean)(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out);
    gnr_status (*abs_diff_mean_backward)(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale, gnr_tensor *da);
    gnr_status (*sum_sq)(gnr_ctx *ctx, const gnr_tensor *x, double *out);
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
