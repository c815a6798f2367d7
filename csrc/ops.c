/* Dispatch of every op to the backend of the context's device (backend.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

static const gnr_backend *cuda_table = NULL;

const gnr_backend *gnr_backend_for(gnr_device dev)
{
    return dev == GNR_CPU ? &gnr_cpu_backend : cuda_table;
}

gnr_status gnr_register_backend(gnr_device dev, const gnr_backend *table)
{
    if (dev != GNR_CUDA) return gnr_error(GNR_ERR_VALUE, "only the CUDA backend can be registered");
    if (!table || table->abi != GNR_BACKEND_ABI)
        return gnr_error(GNR_ERR_VALUE, "CUDA backend ABI %d does not match the engine's %d: rebuild gnr",
                         table ? table->abi : -1, GNR_BACKEND_ABI);
    cuda_table = table;
    return GNR_OK;
}

int gnr_has_cuda(void) { return cuda_table != NULL; }

static gnr_status no_backend(const gnr_ctx *ctx, const char *op)
{
    return gnr_error(GNR_ERR_UNSUPPORTED, "%s: no %s backend is loaded", op, gnr_device_name(ctx->device));
}

/* A backend loaded as its own module records failures in its own error
 * state: copy the message into the engine's so callers see it. */
static gnr_status backend_status(const gnr_backend *b, gnr_status st)
{
    if (st != GNR_OK && b->last_error && b->last_error != gnr_last_error) {
        const char *msg = b->last_error();
        gnr_error(st, "%s", msg && msg[0] ? msg : "CUDA backend error (no message)");
    }
    return st;
}

/* GNR_CUDA_SYNC=1 (a debugging mode): every op on a device is followed by
 * a synchronisation, so a failure that surfaces asynchronously (a fault in
 * a kernel, found at the next synchronisation) is reported by the op that
 * caused it. */
static int sync_after_each_op(void)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("GNR_CUDA_SYNC");
        on = e && *e && strcmp(e, "0") != 0;
    }
    return on;
}

static gnr_status op_done(const gnr_backend *b, gnr_ctx *ctx, const char *op, gnr_status st)
{
    st = backend_status(b, st);
    if (st != GNR_OK || ctx->device == GNR_CPU || !b->synchronize || !sync_after_each_op()) return st;
    st = backend_status(b, b->synchronize(ctx));
    if (st != GNR_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gnr_last_error());
        gnr_error(st, "op %s failed on %s (GNR_CUDA_SYNC): %s", op, gnr_device_name(ctx->device), msg);
    }
    return st;
}

#define DISPATCH(op, ...)                                        \
    do {                                                         \
        const gnr_backend *b_ = gnr_backend_for(ctx->device);    \
        if (!b_ || !b_->op) return no_backend(ctx, #op);         \
        return op_done(b_, ctx, #op, b_->op(__VA_ARGS__));       \
    } while (0)

gnr_status gnr_fill(gnr_ctx *ctx, gnr_tensor *y, float value)
{
    DISPATCH(fill, ctx, y, value);
}

gnr_status gnr_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(copy, ctx, x, y);
}

gnr_status gnr_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t)
{
    DISPATCH(upload, ctx, host, t);
}

gnr_status gnr_download(gnr_ctx *ctx, const gnr_tensor *t, float *host)
{
    DISPATCH(download, ctx, t, host);
}

gnr_status gnr_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    DISPATCH(add, ctx, a, b, y);
}

gnr_status gnr_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y)
{
    DISPATCH(scale, ctx, x, alpha, y);
}

gnr_status gnr_axpy(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(axpy, ctx, alpha, x, y);
}

gnr_status gnr_add_channel_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y)
{
    DISPATCH(add_channel_forward, ctx, x, v, y);
}

gnr_status gnr_add_channel_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv)
{
    DISPATCH(add_channel_backward, ctx, dy, dv);
}

gnr_status gnr_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b, gnr_tensor *y)
{
    DISPATCH(linear_forward, ctx, x, w, b, y);
}

gnr_status gnr_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx)
{
    DISPATCH(linear_backward, ctx, dy, w, dx);
}

gnr_status gnr_conv2d_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b, const gnr_conv_params *p, gnr_tensor *y)
{
    DISPATCH(conv2d_forward, ctx, x, w, b, p, y);
}

gnr_status gnr_conv2d_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, const gnr_conv_params *p, gnr_tensor *dx)
{
    DISPATCH(conv2d_backward, ctx, dy, w, p, dx);
}

gnr_status gnr_group_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta, int groups, float eps, gnr_tensor *y)
{
    DISPATCH(group_norm_forward, ctx, x, gamma, beta, groups, eps, y);
}

gnr_status gnr_group_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx)
{
    DISPATCH(group_norm_backward, ctx, dy, x, gamma, groups, eps, dx);
}

gnr_status gnr_layer_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta, float eps, gnr_tensor *y)
{
    DISPATCH(layer_norm_forward, ctx, x, gamma, beta, eps, y);
}

gnr_status gnr_layer_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, const gnr_tensor *gamma, float eps, gnr_tensor *dx)
{
    DISPATCH(layer_norm_backward, ctx, dy, x, gamma, eps, dx);
}

gnr_status gnr_act_forward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(act_forward, ctx, act, x, y);
}

gnr_status gnr_act_backward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    DISPATCH(act_backward, ctx, act, dy, x, dx);
}

gnr_status gnr_geglu_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(geglu_forward, ctx, x, y);
}

gnr_status gnr_geglu_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    DISPATCH(geglu_backward, ctx, dy, x, dx);
}

gnr_status gnr_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(nchw_to_nlc, ctx, x, y);
}

gnr_status gnr_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(nlc_to_nchw, ctx, x, y);
}

gnr_status gnr_nchw_to_nlc_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    DISPATCH(nchw_to_nlc_backward, ctx, dy, dx);
}

gnr_status gnr_nlc_to_nchw_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    DISPATCH(nlc_to_nchw_backward, ctx, dy, dx);
}

gnr_status gnr_concat_channels_forward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    DISPATCH(concat_channels_forward, ctx, a, b, y);
}

gnr_status gnr_concat_channels_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db)
{
    DISPATCH(concat_channels_backward, ctx, dy, da, db);
}

gnr_status gnr_upsample2x_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    DISPATCH(upsample2x_forward, ctx, x, y);
}

gnr_status gnr_upsample2x_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    DISPATCH(upsample2x_backward, ctx, dy, dx);
}

gnr_status gnr_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v, int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out)
{
    DISPATCH(attention_forward, ctx, q, k, v, heads, causal, scale, probs, out);
}

gnr_status gnr_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v, const gnr_tensor *probs, int heads, int causal, float scale, const gnr_tensor *dout, const gnr_tensor *dprobs, gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv)
{
    DISPATCH(attention_backward, ctx, q, k, v, probs, heads, causal, scale, dout, dprobs, dq, dk, dv);
}

gnr_status gnr_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n, gnr_tensor *y)
{
    DISPATCH(embedding_forward, ctx, table, ids, n, y);
}

gnr_status gnr_sq_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    DISPATCH(sq_diff_mean, ctx, a, b, out);
}

gnr_status gnr_sq_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale, gnr_tensor *da)
{
    DISPATCH(sq_diff_mean_backward, ctx, a, b, scale, da);
}

gnr_status gnr_abs_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    DISPATCH(abs_diff_mean, ctx, a, b, out);
}

gnr_status gnr_abs_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale, gnr_tensor *da)
{
    DISPATCH(abs_diff_mean_backward, ctx, a, b, scale, da);
}

gnr_status gnr_sum_sq(gnr_ctx *ctx, const gnr_tensor *x, double *out)
{
    DISPATCH(sum_sq, ctx, x, out);
}
