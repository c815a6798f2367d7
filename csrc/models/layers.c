#include "layers.h"

#include <math.h>
#include <string.h>

static const char *const DIFFUSERS_ATTN[4] = {"to_q", "to_k", "to_v", "to_out.0"};

/* --------------------------------------------------------------- convs --- */

gnr_status conv3x3(gnr_ctx *ctx, const linear_w *c, const gnr_tensor *x, gnr_tensor *out)
{
    gnr_conv_params p = {1, 1, 1, 1, 1};
    return nn_conv2d(ctx, x, c->w, c->b, &p, out);
}

gnr_status resample_declare(gnr_weights *ws, const char *component, const char *name, int channels, int asymmetric,
                            resample_w *s)
{
    char prefix[2 * GNR_MODULE_NAME_MAX];
    GNR_TRY(gnr_fmt(prefix, sizeof prefix, "%s.%s.conv", component, name));
    s->asymmetric = asymmetric;
    return declare_conv(ws, prefix, channels, channels, 3, &s->conv);
}

gnr_status downsample_forward(gnr_ctx *ctx, const resample_w *s, const gnr_tensor *x, gnr_tensor *out)
{
    gnr_conv_params p = {2, 1, 1, 1, 1};
    if (s->asymmetric) p = (gnr_conv_params){2, 0, 1, 0, 1};
    return nn_conv2d(ctx, x, s->conv.w, s->conv.b, &p, out);
}

gnr_status upsample_forward(gnr_ctx *ctx, const resample_w *s, const gnr_tensor *x, gnr_tensor *out)
{
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor up;
    GNR_TRY(nn_upsample2x(ctx, x, &up));
    GNR_TRY(conv3x3(ctx, &s->conv, &up, out));
    return nn_scope_end(ctx, sc, out);
}

/* -------------------------------------------------------------- resnet --- */

gnr_status resnet_declare(gnr_weights *ws, const char *component, const char *name, int in, int out, int temb_dim,
                          int groups, float eps, resnet_w *r)
{
    char p[2 * GNR_MODULE_NAME_MAX + 32];
    memset(r, 0, sizeof *r);
    GNR_TRY(gnr_fmt(r->name, sizeof r->name, "%s", name));
    r->groups = groups;
    r->eps = eps;
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.norm1", component, name));
    GNR_TRY(declare_norm(ws, p, in, &r->norm1));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.conv1", component, name));
    GNR_TRY(declare_conv(ws, p, in, out, 3, &r->conv1));
    if (temb_dim > 0) {
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.time_emb_proj", component, name));
        GNR_TRY(declare_linear(ws, p, temb_dim, out, 1, &r->temb));
    }
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.norm2", component, name));
    GNR_TRY(declare_norm(ws, p, out, &r->norm2));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.conv2", component, name));
    GNR_TRY(declare_conv(ws, p, out, out, 3, &r->conv2));
    if (in != out) {
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.conv_shortcut", component, name));
        GNR_TRY(declare_conv(ws, p, in, out, 1, &r->shortcut));
    }
    return GNR_OK;
}

typedef struct {
    const resnet_w *r;
} resnet_args;

static gnr_status resnet_segment(gnr_ctx *ctx, const void *args, const gnr_tensor *in, int n, gnr_tensor *out)
{
    const resnet_w *r = ((const resnet_args *)args)->r;
    const gnr_tensor *x = &in[0];
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor h, a, t, sk;
    /* Each half's norm (its activation in place) goes once its convolution
     * has read it, and the second half's end frees the first half's result
     * too: the block holds x and at most three maps beside it, not all
     * eight (the VAE's full-size blocks: 416 -> 173 MiB decoding at 256 x
     * 256). */
    nn_scope half = nn_scope_begin(ctx);
    GNR_TRY(nn_group_norm(ctx, x, r->norm1.g, r->norm1.b, r->groups, r->eps, &t));
    GNR_TRY(nn_act_in_place(ctx, GNR_ACT_SILU, &t));
    GNR_TRY(conv3x3(ctx, &r->conv1, &t, &h));
    if (r->temb.w && n > 1) {
        GNR_TRY(nn_linear(ctx, &in[1], r->temb.w, r->temb.b, &t));
        GNR_TRY(nn_add_channel(ctx, &h, &t, &a));
        h = a;
    }
    GNR_TRY(nn_scope_end(ctx, half, &h));
    GNR_TRY(nn_group_norm(ctx, &h, r->norm2.g, r->norm2.b, r->groups, r->eps, &t));
    GNR_TRY(nn_act_in_place(ctx, GNR_ACT_SILU, &t));
    GNR_TRY(conv3x3(ctx, &r->conv2, &t, &a));
    GNR_TRY(nn_scope_end(ctx, half, &a));
    if (r->shortcut.w) {
        gnr_conv_params p = {1, 0, 0, 0, 0};
        GNR_TRY(nn_conv2d(ctx, x, r->shortcut.w, r->shortcut.b, &p, &sk));
        GNR_TRY(nn_add(ctx, &sk, &a, out));
    } else {
        GNR_TRY(nn_add(ctx, x, &a, out));
    }
    return nn_scope_end(ctx, sc, out);
}

gnr_status resnet_forward(gnr_ctx *ctx, const resnet_w *r, const gnr_tensor *x, const gnr_tensor *temb_act,
                          gnr_tensor *out)
{
    resnet_args args = {r};
    gnr_tensor in[2];
    in[0] = *x;
    int n = 1;
    if (temb_act && r->temb.w) in[n++] = *temb_act;
    return nn_checkpoint(ctx, resnet_segment, &args, sizeof args, in, n, out);
}

/* ----------------------------------------------------------- attention --- */

gnr_status attn_declare(gnr_weights *ws, const char *prefix, const char *const names[4], int query_dim, int kv_dim,
                        int heads, int qkv_bias, attn_w *a)
{
    char p[2 * GNR_MODULE_NAME_MAX + 64];
    a->heads = heads;
    a->dim_head = query_dim / heads;
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s", prefix, names[0]));
    GNR_TRY(declare_linear(ws, p, query_dim, query_dim, qkv_bias, &a->q));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s", prefix, names[1]));
    GNR_TRY(declare_linear(ws, p, kv_dim, query_dim, qkv_bias, &a->k));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s", prefix, names[2]));
    GNR_TRY(declare_linear(ws, p, kv_dim, query_dim, qkv_bias, &a->v));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s", prefix, names[3]));
    return declare_linear(ws, p, query_dim, query_dim, 1, &a->out);
}

gnr_status attn_forward(gnr_ctx *ctx, const attn_w *a, const gnr_tensor *x, const gnr_tensor *kv, int causal,
                        gnr_capture *cap, const char *probs_name, gnr_tensor *out)
{
    if (!kv) kv = x;
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor q, k, v, o;
    GNR_TRY(nn_linear(ctx, x, a->q.w, a->q.b, &q));
    GNR_TRY(nn_linear(ctx, kv, a->k.w, a->k.b, &k));
    GNR_TRY(nn_linear(ctx, kv, a->v.w, a->v.b, &v));
    /* The reference passes the Python float dim_head ** -0.5 to torch, which
     * rounds it to float32. */
    float scale = (float)(1.0 / sqrt((double)a->dim_head));
    GNR_TRY(nn_attention(ctx, &q, &k, &v, a->heads, causal, scale, cap, probs_name, &o));
    GNR_TRY(nn_linear(ctx, &o, a->out.w, a->out.b, out));
    return nn_scope_end(ctx, sc, out);
}

/* --------------------------------------------------------- transformer --- */

/* proj_in / proj_out: a Linear layer or a 1x1 convolution, both applied
 * to the tokens by nn_linear (which reads the weight as C_out x C). */
static gnr_status declare_projection(gnr_weights *ws, const char *prefix, int channels, int linear, linear_w *l)
{
    if (linear) return declare_linear(ws, prefix, channels, channels, 1, l);
    return declare_conv(ws, prefix, channels, channels, 1, l);
}

gnr_status transformer_declare(gnr_weights *ws, const char *component, const char *name, const transformer_shape *s,
                               transformer_w *t)
{
    char p[2 * GNR_MODULE_NAME_MAX + 64];
    int channels = s->channels, heads = s->heads, nblocks = s->nblocks, context_dim = s->context_dim;
    memset(t, 0, sizeof *t);
    GNR_TRY(gnr_fmt(t->name, sizeof t->name, "%s", name));
    t->groups = s->groups;
    t->nblocks = nblocks;
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.norm", component, name));
    GNR_TRY(declare_norm(ws, p, channels, &t->norm));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.proj_in", component, name));
    GNR_TRY(declare_projection(ws, p, channels, s->linear_projection, &t->proj_in));
    for (int i = 0; i < nblocks; i++) {
        basic_block_w *b = &t->blocks[i];
        char bp[2 * GNR_MODULE_NAME_MAX + 32];
        GNR_TRY(gnr_fmt(bp, sizeof bp, "%s.%s.transformer_blocks.%d", component, name, i));
        GNR_TRY(gnr_fmt(b->probs_name, sizeof b->probs_name, "%s.transformer_blocks.%d.attn1.probs", name, i));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.norm1", bp));
        GNR_TRY(declare_norm(ws, p, channels, &b->norm1));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.attn1", bp));
        GNR_TRY(attn_declare(ws, p, DIFFUSERS_ATTN, channels, channels, heads, 0, &b->attn1));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.norm2", bp));
        GNR_TRY(declare_norm(ws, p, channels, &b->norm2));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.attn2", bp));
        GNR_TRY(attn_declare(ws, p, DIFFUSERS_ATTN, channels, context_dim, heads, 0, &b->attn2));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.norm3", bp));
        GNR_TRY(declare_norm(ws, p, channels, &b->norm3));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.ff.net.0.proj", bp));
        GNR_TRY(declare_linear(ws, p, channels, 8 * (int64_t)channels, 1, &b->ff_proj));
        GNR_TRY(gnr_fmt(p, sizeof p, "%s.ff.net.2", bp));
        GNR_TRY(declare_linear(ws, p, 4 * (int64_t)channels, channels, 1, &b->ff_out));
    }
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.proj_out", component, name));
    return declare_projection(ws, p, channels, s->linear_projection, &t->proj_out);
}

/* LayerNorm eps of BasicTransformerBlock (diffusers' norm_eps default). */
#define BLOCK_LN_EPS 1e-5f
/* GroupNorm eps of Transformer2DModel. */
#define TRANSFORMER_GN_EPS 1e-6f

/* Each of the block's three residual steps ends its scope once its sum
 * exists: the sum moves down over the step's norm and sublayer outputs and
 * the previous sum (a recording tape has copied what it keeps), so at most
 * two token maps of the block's width outlive a step (at 256 x 256, SD 1.4
 * shapes: 6 MiB less at the widest level). */
static gnr_status basic_block_forward(gnr_ctx *ctx, const basic_block_w *b, const gnr_tensor *x,
                                      const gnr_tensor *context, gnr_capture *cap, gnr_tensor *out)
{
    gnr_tensor n, a, h1, h2, f;
    nn_scope two = nn_scope_begin(ctx);
    nn_scope one = nn_scope_begin(ctx);
    GNR_TRY(nn_layer_norm(ctx, x, b->norm1.g, b->norm1.b, BLOCK_LN_EPS, &n));
    GNR_TRY(attn_forward(ctx, &b->attn1, &n, NULL, 0, cap, b->probs_name, &a));
    GNR_TRY(nn_add(ctx, &a, x, &h1));
    GNR_TRY(nn_scope_end(ctx, one, &h1));
    GNR_TRY(nn_layer_norm(ctx, &h1, b->norm2.g, b->norm2.b, BLOCK_LN_EPS, &n));
    GNR_TRY(attn_forward(ctx, &b->attn2, &n, context, 0, NULL, NULL, &a));
    GNR_TRY(nn_add(ctx, &a, &h1, &h2));
    GNR_TRY(nn_scope_end(ctx, two, &h2));
    nn_scope three = nn_scope_begin(ctx);
    GNR_TRY(nn_layer_norm(ctx, &h2, b->norm3.g, b->norm3.b, BLOCK_LN_EPS, &n));
    gnr_feed_forward_w ff = {b->ff_proj.w, b->ff_proj.b, b->ff_out.w, b->ff_out.b};
    GNR_TRY(nn_feed_forward(ctx, &ff, &n, &f));
    GNR_TRY(nn_add(ctx, &f, &h2, out));
    return nn_scope_end(ctx, three, out);
}

typedef struct {
    const transformer_w *t;
    gnr_capture *cap;
} transformer_args;

static gnr_status transformer_segment(gnr_ctx *ctx, const void *args_, const gnr_tensor *in, int n,
                                      gnr_tensor *out)
{
    (void)n;
    const transformer_args *args = args_;
    const transformer_w *t = args->t;
    const gnr_tensor *x = &in[0], *context = &in[1];
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor h, tok, y, p;
    nn_scope proj = nn_scope_begin(ctx);
    GNR_TRY(nn_group_norm(ctx, x, t->norm.g, t->norm.b, t->groups, TRANSFORMER_GN_EPS, &h));
    GNR_TRY(nn_nchw_to_nlc(ctx, &h, &tok));
    GNR_TRY(nn_linear(ctx, &tok, t->proj_in.w, t->proj_in.b, &y));
    GNR_TRY(nn_scope_end(ctx, proj, &y));
    for (int i = 0; i < t->nblocks; i++) {
        GNR_TRY(basic_block_forward(ctx, &t->blocks[i], &y, context, args->cap, &tok));
        y = tok;
    }
    GNR_TRY(nn_linear(ctx, &y, t->proj_out.w, t->proj_out.b, &tok));
    GNR_TRY(nn_nlc_to_nchw(ctx, &tok, x->shape[2], x->shape[3], &p));
    GNR_TRY(nn_add(ctx, &p, x, out));
    return nn_scope_end(ctx, sc, out);
}

gnr_status transformer_forward(gnr_ctx *ctx, const transformer_w *t, const gnr_tensor *x,
                               const gnr_tensor *context, gnr_capture *cap, gnr_tensor *out)
{
    transformer_args args = {t, cap};
    gnr_tensor in[2] = {*x, *context};
    return nn_checkpoint(ctx, transformer_segment, &args, sizeof args, in, 2, out);
}

/* ------------------------------------------------- VAE spatial attention --- */

gnr_status spatial_attn_declare(gnr_weights *ws, const char *component, const char *name, int channels, int groups,
                                float eps, spatial_attn_w *a)
{
    char p[2 * GNR_MODULE_NAME_MAX + 32];
    memset(a, 0, sizeof *a);
    GNR_TRY(gnr_fmt(a->name, sizeof a->name, "%s", name));
    a->groups = groups;
    a->eps = eps;
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s.group_norm", component, name));
    GNR_TRY(declare_norm(ws, p, channels, &a->norm));
    GNR_TRY(gnr_fmt(p, sizeof p, "%s.%s", component, name));
    return attn_declare(ws, p, DIFFUSERS_ATTN, channels, channels, 1, 1, &a->attn);
}

gnr_status spatial_attn_forward(gnr_ctx *ctx, const spatial_attn_w *a, const gnr_tensor *x, gnr_tensor *out)
{
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor h, tok, o, p;
    GNR_TRY(nn_group_norm(ctx, x, a->norm.g, a->norm.b, a->groups, a->eps, &h));
    GNR_TRY(nn_nchw_to_nlc(ctx, &h, &tok));
    GNR_TRY(attn_forward(ctx, &a->attn, &tok, NULL, 0, NULL, NULL, &o));
    GNR_TRY(nn_nlc_to_nchw(ctx, &o, x->shape[2], x->shape[3], &p));
    GNR_TRY(nn_add(ctx, &p, x, out));
    return nn_scope_end(ctx, sc, out);
}
