#include "nn.h"

#include <stdlib.h>

#include "grad/tape.h"

#include <stdio.h>
#include <string.h>

gnr_status gnr_capture_add(gnr_capture *cap, const char *name)
{
    if (cap->n >= GNR_MAX_CAPTURES)
        return gnr_error(GNR_ERR_VALUE, "too many capture points requested (at most %d)", GNR_MAX_CAPTURES);
    if (strlen(name) >= sizeof cap->names[0])
        return gnr_error(GNR_ERR_VALUE, "capture name too long: '%s'", name);
    strcpy(cap->names[cap->n], name);
    cap->found[cap->n] = 0;
    cap->as_qk[cap->n] = 0;
    cap->n++;
    return GNR_OK;
}

gnr_status gnr_capture_want(gnr_capture *cap, const char *name, int as_qk)
{
    int i = gnr_capture_index(cap, name);
    if (i < 0) {
        GNR_TRY(gnr_capture_add(cap, name));
        i = cap->n - 1;
        cap->as_qk[i] = (unsigned char)(as_qk != 0);
    }
    if (cap->as_qk[i] != (as_qk != 0))
        return gnr_error(GNR_ERR_VALUE, "capture '%s' is asked for both as an attention-map energy and as a value",
                         name);
    return GNR_OK;
}

int gnr_capture_index(const gnr_capture *cap, const char *name)
{
    if (!cap) return -1;
    for (int i = 0; i < cap->n; i++)
        if (strcmp(cap->names[i], name) == 0) return i;
    return -1;
}

gnr_status gnr_capture_check_found(const gnr_capture *cap)
{
    for (int i = 0; i < cap->n; i++)
        if (!cap->found[i])
            return gnr_error(GNR_ERR_VALUE, "capture point '%s' does not exist in this UNet", cap->names[i]);
    return GNR_OK;
}

nn_scope nn_scope_begin(gnr_ctx *ctx)
{
    nn_scope s = {gnr_arena_get_mark(ctx->arena)};
    return s;
}

gnr_status nn_scope_end(gnr_ctx *ctx, nn_scope s, gnr_tensor *keep)
{
    if (!keep) {
        gnr_arena_release(ctx->arena, s.mark);
        return GNR_OK;
    }
    /* Move the kept tensor down to the scope's start, then free the rest.
     * The copy runs while both ranges are still allocated (they may
     * overlap, which gnr_copy allows): released memory is never read, and
     * scratch a device copy takes from the arena lies past both. */
    void *slot = gnr_arena_move_down_slot(ctx->arena, s.mark, gnr_nbytes(keep));
    if (!slot) return GNR_OK; /* cannot happen (keep's own block fits it); keeping the scope is still correct */
    gnr_tensor moved = *keep;
    moved.data = slot;
    if (slot != keep->data) GNR_TRY(gnr_copy(ctx, keep, &moved));
    GNR_TRY(gnr_arena_release_keeping(ctx->arena, s.mark, gnr_nbytes(keep), &moved.data));
    if (moved.data != slot) return gnr_error(GNR_ERR_INTERNAL, "nn_scope_end: the arena moved the kept tensor");
    moved.gid = keep->gid;
    *keep = moved;
    return GNR_OK;
}

static gnr_status alloc_keep(gnr_ctx *ctx, const gnr_tensor *like_shape_of, gnr_tensor *out)
{
    gnr_tensor t = gnr_tensor_view(NULL, like_shape_of->dtype, ctx->device, like_shape_of->ndim,
                                   like_shape_of->shape);
    GNR_TRY(gnr_arena_alloc(ctx->keep, gnr_nbytes(&t), &t.data));
    *out = t;
    return GNR_OK;
}

gnr_status nn_upload_repeated(gnr_ctx *ctx, const float *host, int64_t items, gnr_tensor *t)
{
    int64_t per = items > 0 ? gnr_numel(t) / items : 0;
    if (per == 0) return GNR_OK;
    int64_t shape[1] = {per};
    float *base = (float *)t->data;
    gnr_tensor first = gnr_tensor_view(base, GNR_F32, t->device, 1, shape);
    GNR_TRY(gnr_upload(ctx, host, &first));
    for (int64_t i = 1; i < items; i++) {
        gnr_tensor item = gnr_tensor_view(base + i * per, GNR_F32, t->device, 1, shape);
        GNR_TRY(gnr_copy(ctx, &first, &item));
    }
    return GNR_OK;
}

gnr_status nn_capture(gnr_ctx *ctx, gnr_capture *cap, const char *name, const gnr_tensor *t)
{
    int i = gnr_capture_index(cap, name);
    if (i < 0) return GNR_OK;
    if (cap->as_qk[i])
        return gnr_error(GNR_ERR_VALUE, "capture '%s' is not an attention map: it has no queries and keys", name);
    if (!(ctx->tape && ctx->tape->rerun)) { /* a re-run block was captured on its first run */
        gnr_tensor kept;
        GNR_TRY(alloc_keep(ctx, t, &kept));
        GNR_TRY(gnr_copy(ctx, t, &kept));
        kept.gid = t->gid;
        cap->tensors[i] = kept;
        cap->found[i] = 1;
        if (ctx->tape) gnr_tape_saved_as(ctx->tape, t, &kept); /* the energy's backward reads the same values */
    }
    if (!ctx->tape) return GNR_OK;
    /* The energy's gradient enters the backward here. */
    tape_entry e = {.op = TAPE_CAPTURE, .in = {*t}, .nin = 1, .capture = i};
    return gnr_tape_record(ctx, &e, NULL);
}

/* ------------------------------------------------------------------------ */

/* Each function: allocate the output, run the op, record it when taping. */

gnr_status nn_linear(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b, gnr_tensor *y)
{
    int64_t shape[GNR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = w->shape[0];
    GNR_TRY(gnr_alloc(ctx, GNR_F32, x->ndim, shape, y));
    GNR_TRY(gnr_linear_forward(ctx, x, w, b, y));
    tape_entry e = {.op = TAPE_LINEAR, .in = {*x}, .nin = 1, .w = w, .w2 = b, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_conv2d(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                     const gnr_conv_params *p, gnr_tensor *y)
{
    int64_t ho = (x->shape[2] + p->pad_top + p->pad_bottom - w->shape[2]) / p->stride + 1;
    int64_t wo = (x->shape[3] + p->pad_left + p->pad_right - w->shape[3]) / p->stride + 1;
    GNR_TRY(gnr_alloc4(ctx, x->shape[0], w->shape[0], ho, wo, y));
    GNR_TRY(gnr_conv2d_forward(ctx, x, w, b, p, y));
    tape_entry e = {.op = TAPE_CONV2D, .in = {*x}, .nin = 1, .w = w, .conv = *p, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_group_norm(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta,
                         int groups, float eps, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc_like(ctx, x, y));
    GNR_TRY(gnr_group_norm_forward(ctx, x, gamma, beta, groups, eps, y));
    tape_entry e = {.op = TAPE_GROUP_NORM, .in = {*x}, .nin = 1, .w = gamma, .w2 = beta, .groups = groups,
                    .eps = eps, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_layer_norm(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta,
                         float eps, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc_like(ctx, x, y));
    GNR_TRY(gnr_layer_norm_forward(ctx, x, gamma, beta, eps, y));
    tape_entry e = {.op = TAPE_LAYER_NORM, .in = {*x}, .nin = 1, .w = gamma, .w2 = beta, .eps = eps,
                    .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_act(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc_like(ctx, x, y));
    GNR_TRY(gnr_act_forward(ctx, act, x, y));
    tape_entry e = {.op = TAPE_ACT, .in = {*x}, .nin = 1, .iparam = (int)act, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_act_in_place(gnr_ctx *ctx, gnr_act act, gnr_tensor *x)
{
    if (ctx->tape && x->gid >= 0) {
        gnr_tensor y;
        GNR_TRY(nn_act(ctx, act, x, &y));
        *x = y;
        return GNR_OK;
    }
    return gnr_act_forward(ctx, act, x, x);
}

gnr_status nn_feed_forward(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x, gnr_tensor *y)
{
    GNR_TRY(gnr_feed_forward(ctx, w, x, y));
    tape_entry e = {.op = TAPE_FEED_FORWARD, .in = {*x}, .nin = 1, .ff = *w, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc_like(ctx, a, y));
    GNR_TRY(gnr_add(ctx, a, b, y));
    tape_entry e = {.op = TAPE_ADD, .in = {*a, *b}, .nin = 2, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc_like(ctx, x, y));
    GNR_TRY(gnr_scale(ctx, x, alpha, y));
    tape_entry e = {.op = TAPE_SCALE, .in = {*x}, .nin = 1, .alpha = alpha, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_add_channel(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc_like(ctx, x, y));
    GNR_TRY(gnr_add_channel_forward(ctx, x, v, y));
    tape_entry e = {.op = TAPE_ADD_CHANNEL, .in = {*x, *v}, .nin = 2, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc3(ctx, x->shape[0], x->shape[2] * x->shape[3], x->shape[1], y));
    GNR_TRY(gnr_nchw_to_nlc(ctx, x, y));
    tape_entry e = {.op = TAPE_NCHW_TO_NLC, .in = {*x}, .nin = 1, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, int64_t h, int64_t w, gnr_tensor *y)
{
    if (x->shape[1] != h * w)
        return gnr_error(GNR_ERR_INTERNAL, "nlc_to_nchw: %lld tokens is not %lld x %lld", (long long)x->shape[1],
                         (long long)h, (long long)w);
    GNR_TRY(gnr_alloc4(ctx, x->shape[0], x->shape[2], h, w, y));
    GNR_TRY(gnr_nlc_to_nchw(ctx, x, y));
    tape_entry e = {.op = TAPE_NLC_TO_NCHW, .in = {*x}, .nin = 1, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_concat_channels(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc4(ctx, a->shape[0], a->shape[1] + b->shape[1], a->shape[2], a->shape[3], y));
    GNR_TRY(gnr_concat_channels_forward(ctx, a, b, y));
    tape_entry e = {.op = TAPE_CONCAT, .in = {*a, *b}, .nin = 2, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

gnr_status nn_upsample2x(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    GNR_TRY(gnr_alloc4(ctx, x->shape[0], x->shape[1], x->shape[2] * 2, x->shape[3] * 2, y));
    GNR_TRY(gnr_upsample2x_forward(ctx, x, y));
    tape_entry e = {.op = TAPE_UPSAMPLE, .in = {*x}, .nin = 1, .capture = -1};
    return gnr_tape_record(ctx, &e, y);
}

/* An energy's attention capture: the layer's queries and keys, copied into
 * ctx->keep (they outlive the pass; a checkpointed block's temporaries do
 * not), once: a re-run block finds them there. When only the backward reads
 * them, none: a recorded layer's (`tracked`) backward computes them again
 * and the energy with them, a checkpointed segment's first run (ctx->tape
 * NULL) is re-run, and the re-run of a layer no gradient reaches computes
 * its energy there. */
static gnr_status capture_qk(gnr_ctx *ctx, gnr_capture *cap, int ci, const gnr_tensor *q, const gnr_tensor *k,
                             int heads, float scale, int tracked)
{
    int rerun = ctx->tape && ctx->tape->rerun;
    if (cap->qk_for_backward_only) {
        if (ctx->tape ? tracked : ctx->checkpointing) return GNR_OK;
        if (rerun) return gnr_tape_map_energies(ctx, ctx->tape, ci, q, k, heads, scale);
    } else if (rerun) {
        return GNR_OK;
    }
    gnr_tensor kq, kk;
    GNR_TRY(alloc_keep(ctx, q, &kq));
    GNR_TRY(gnr_copy(ctx, q, &kq));
    GNR_TRY(alloc_keep(ctx, k, &kk));
    GNR_TRY(gnr_copy(ctx, k, &kk));
    if (ctx->tape) {
        /* the attention entry's backward reads the same q and k */
        gnr_tape_saved_as(ctx->tape, q, &kq);
        gnr_tape_saved_as(ctx->tape, k, &kk);
    }
    cap->tensors[ci] = kq;
    cap->keys[ci] = kk;
    cap->heads[ci] = heads;
    cap->scale[ci] = scale;
    cap->found[ci] = 1;
    return GNR_OK;
}

gnr_status nn_attention(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v, int heads,
                        int causal, float scale, gnr_capture *cap, const char *probs_name, gnr_tensor *out)
{
    GNR_TRY(gnr_alloc_like(ctx, q, out));
    int ci = probs_name ? gnr_capture_index(cap, probs_name) : -1;
    int tracked = ctx->tape && (q->gid >= 0 || k->gid >= 0 || v->gid >= 0);
    if (ci < 0 && !tracked) return gnr_attention_forward(ctx, q, k, v, heads, causal, scale, NULL, out);

    /* P is materialised only for a capture of the map itself, which keeps it
     * past the pass (ctx->keep) and whose energy, if any, seeds its gradient
     * (the stack arena while re-running a checkpointed block). An energy's
     * capture keeps queries and keys instead, and an uncaptured layer's
     * backward recomputes P chunk by chunk, bit-identical, so neither holds
     * the Lq x Lk matrix. Both forward paths run the probs-free kernels. */
    int64_t pshape[4] = {q->shape[0], heads, q->shape[1], k->shape[1]};
    gnr_tensor probs = gnr_tensor_view(NULL, GNR_F32, ctx->device, 4, pshape);
    if (ci >= 0 && cap->as_qk[ci]) {
        GNR_TRY(capture_qk(ctx, cap, ci, q, k, heads, scale, tracked));
    } else if (ci >= 0) {
        /* ctx->keep: the map outlives its scope, for the capture and for the
         * backward of a seeded map (a re-run block's copy goes with the
         * re-run, grad/tape.c). */
        GNR_TRY(gnr_arena_alloc(ctx->keep, gnr_nbytes(&probs), &probs.data));
        if (!(ctx->tape && ctx->tape->rerun)) {
            cap->tensors[ci] = probs;
            cap->found[ci] = 1;
        }
    }
    GNR_TRY(gnr_attention_forward(ctx, q, k, v, heads, causal, scale, probs.data ? &probs : NULL, out));
    if (!tracked) return GNR_OK;
    tape_entry e = {.op = TAPE_ATTENTION, .in = {*q, *k, *v}, .nin = 3, .probs = probs, .heads = heads,
                    .scale = scale, .iparam = causal, .capture = ci};
    return gnr_tape_record(ctx, &e, out);
}

gnr_status nn_checkpoint(gnr_ctx *ctx, nn_segment_fn fn, const void *args, size_t args_size,
                         const gnr_tensor *inputs, int n_inputs, gnr_tensor *out)
{
    if (!ctx->tape || !ctx->checkpointing) return fn(ctx, args, inputs, n_inputs, out);
    if (n_inputs > 4) return gnr_error(GNR_ERR_INTERNAL, "checkpointed segment with %d inputs (at most 4)", n_inputs);
    tape_entry e = {.op = TAPE_SEGMENT, .nin = n_inputs, .segment = fn, .capture = -1};
    for (int i = 0; i < n_inputs; i++) e.in[i] = inputs[i];
    /* Forward without recording: the segment's temporaries are released as in
     * inference; only its output stays. */
    gnr_tape *tape = ctx->tape;
    ctx->tape = NULL;
    gnr_status st = fn(ctx, args, inputs, n_inputs, out);
    ctx->tape = tape;
    GNR_TRY(st);
    out->gid = -1;
    e.segment_args = malloc(args_size ? args_size : 1);
    if (!e.segment_args) return gnr_error(GNR_ERR_NOMEM, "out of host memory for the gradient tape");
    memcpy(e.segment_args, args, args_size);
    st = gnr_tape_record(ctx, &e, out);
    if (st != GNR_OK || out->gid < 0) free(e.segment_args); /* not recorded: nothing tracked */
    return st;
}
