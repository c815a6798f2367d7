/* The functional layer model code is written in.
 *
 * Each nn_* function allocates its output from the context's arena and runs
 * the op's forward (ops.h). It is the single place where a pass that records
 * for reverse mode (ctx->tape) records what the backward needs, so the models
 * are written once for inference, gradients and every device.
 *
 * Memory: model functions bracket their temporaries with nn_scope_begin /
 * nn_scope_end, which releases everything allocated inside the scope except
 * the one tensor the function returns (moved down to the scope's start). A
 * recording tape has already copied what its backward reads (grad/tape.h).
 *
 * Captures: a pass may be asked to keep internals by name (diffusers module
 * paths such as "up_blocks.1.resnets.1", "mid_block", "conv_norm_out", or
 * "down_blocks.1.attentions.0.transformer_blocks.0.attn1.probs"). Model code
 * offers every capture point with nn_capture / nn_capture_wanted; only
 * requested names are copied, into ctx->keep, which outlives the pass. */
#ifndef GNR_NN_H
#define GNR_NN_H

#include "feed_forward.h"
#include "ops.h"

#define GNR_MAX_CAPTURES 64

/* A request for captures and what the pass filled in. An attention map
 * wanted only for an energy is kept as the layer's queries (tensors[i]) and
 * keys (keys[i]) with its heads and scale, not as the Lq x Lk map: the
 * energy and its gradient are computed from those chunk by chunk
 * (attention_map_energy, attention_backward's seed, ops.def). */
typedef struct {
    int n;
    char names[GNR_MAX_CAPTURES][96];
    gnr_tensor tensors[GNR_MAX_CAPTURES]; /* filled by the pass: the value, or the queries */
    int found[GNR_MAX_CAPTURES];
    unsigned char as_qk[GNR_MAX_CAPTURES]; /* an attention map kept as queries and keys */
    gnr_tensor keys[GNR_MAX_CAPTURES];
    int heads[GNR_MAX_CAPTURES];
    float scale[GNR_MAX_CAPTURES];
    /* Queries and keys read by nothing but their layer's backward, which
     * computes them again (grad/tape.h), as does a checkpointed segment's
     * re-run: a recorded layer keeps none, and those captures stay unfound. */
    int qk_for_backward_only;
} gnr_capture;

/* Adds a name to a request; GNR_ERR_VALUE when full or too long. */
gnr_status gnr_capture_add(gnr_capture *cap, const char *name);
/* Requests `name` (once) in the form given: as_qk for an attention map that
 * only an energy reads. GNR_ERR_VALUE when it was requested in the other form. */
gnr_status gnr_capture_want(gnr_capture *cap, const char *name, int as_qk);
/* Index of `name` in the request, or -1 (cap may be NULL). */
int gnr_capture_index(const gnr_capture *cap, const char *name);
/* After a pass: GNR_ERR_VALUE naming the first requested name the pass did
 * not offer (it is not a capture point of this UNet). */
gnr_status gnr_capture_check_found(const gnr_capture *cap);

typedef struct {
    gnr_arena_mark mark;
} nn_scope;

nn_scope nn_scope_begin(gnr_ctx *ctx);
/* Releases the scope; `keep` (may be NULL) survives and is updated in place. */
gnr_status nn_scope_end(gnr_ctx *ctx, nn_scope s, gnr_tensor *keep);

/* If `name` is requested in cap, copies t into ctx->keep and stores it there. */
gnr_status nn_capture(gnr_ctx *ctx, gnr_capture *cap, const char *name, const gnr_tensor *t);

/* t (allocated, contiguous) = `items` copies of the numel(t) / items floats
 * at host: one transfer to the device, then device copies (a batch whose
 * items share a constant, such as a timestep's embedding or one context). */
gnr_status nn_upload_repeated(gnr_ctx *ctx, const float *host, int64_t items, gnr_tensor *t);

/* A checkpointable segment (a block): computes *out from inputs[0..n). `args`
 * points to a copy the caller no longer needs to keep. It must allocate its
 * output with nn_* calls and may capture. */
typedef gnr_status (*nn_segment_fn)(gnr_ctx *ctx, const void *args, const gnr_tensor *inputs, int n_inputs,
                                    gnr_tensor *out);

/* Runs fn. While a tape records with ctx->checkpointing set, the segment runs
 * unrecorded (its temporaries are released) and the backward re-runs it; in
 * every other case this is a plain call. args_size bytes of args are copied. */
gnr_status nn_checkpoint(gnr_ctx *ctx, nn_segment_fn fn, const void *args, size_t args_size,
                         const gnr_tensor *inputs, int n_inputs, gnr_tensor *out);

gnr_status nn_linear(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b, gnr_tensor *y);
gnr_status nn_conv2d(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                     const gnr_conv_params *p, gnr_tensor *y);
gnr_status nn_group_norm(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta,
                         int groups, float eps, gnr_tensor *y);
gnr_status nn_layer_norm(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma, const gnr_tensor *beta,
                         float eps, gnr_tensor *y);
gnr_status nn_act(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y);
/* *x = act(*x) for an x nothing else reads: in place unless a tape records
 * x (a recorded activation has an output of its own). */
gnr_status nn_act_in_place(gnr_ctx *ctx, gnr_act act, gnr_tensor *x);
/* The transformer block's GEGLU feed-forward (feed_forward.h), recorded as one op. */
gnr_status nn_feed_forward(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x, gnr_tensor *y);
gnr_status nn_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
gnr_status nn_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y);
gnr_status nn_add_channel(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y);
gnr_status nn_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status nn_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, int64_t h, int64_t w, gnr_tensor *y);
gnr_status nn_concat_channels(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
gnr_status nn_upsample2x(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
/* Attention (ops.h). `probs_name` (may be NULL) is the capture name of this
 * layer's probabilities; when requested in cap, P is written straight into
 * ctx->keep and recorded there. */
gnr_status nn_attention(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v, int heads,
                        int causal, float scale, gnr_capture *cap, const char *probs_name, gnr_tensor *out);

#endif
