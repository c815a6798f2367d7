/* Building blocks shared by the UNet and the VAE (diffusers modules):
 * ResnetBlock2D, Transformer2DModel with its BasicTransformerBlocks, the VAE's
 * single-head spatial attention, Downsample2D and Upsample2D.
 *
 * Each block is declared once (its weights registered under its diffusers
 * name) and run through nn_checkpoint, so gradient checkpointing re-runs a
 * block as a unit. `name` is the module path inside its component
 * ("down_blocks.1.resnets.0"), which is also the capture name of its output. */
#ifndef GNR_MODELS_LAYERS_H
#define GNR_MODELS_LAYERS_H

#include "nn.h"
#include "weights.h"

#define GNR_MODULE_NAME_MAX 96
#define GNR_MAX_TBLOCKS 4 /* BasicTransformerBlocks per Transformer2DModel */

/* ResnetBlock2D:
 *   h = conv1(silu(norm1(x))) [+ time_emb_proj(silu(temb)) per channel]
 *   h = conv2(silu(norm2(h)));  out = shortcut(x) + h  (shortcut: 1x1 conv when channels change) */
typedef struct {
    char name[GNR_MODULE_NAME_MAX];
    norm_w norm1, norm2;
    linear_w conv1, conv2;
    linear_w temb;     /* w NULL: no time embedding (VAE) */
    linear_w shortcut; /* w NULL: identity */
    int groups;
    float eps;
} resnet_w;

gnr_status resnet_declare(gnr_weights *ws, const char *component, const char *name, int in, int out, int temb_dim,
                          int groups, float eps, resnet_w *r);
/* temb_act: silu(temb), 1 x temb_dim, or NULL when the block has none. */
gnr_status resnet_forward(gnr_ctx *ctx, const resnet_w *r, const gnr_tensor *x, const gnr_tensor *temb_act,
                          gnr_tensor *out);

/* Attention projections: q/k/v (bias optional) and the output projection. */
typedef struct {
    linear_w q, k, v, out;
    int heads;
    int dim_head;
} attn_w;

/* BasicTransformerBlock: x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x) */
typedef struct {
    char probs_name[GNR_MODULE_NAME_MAX + 48]; /* "<transformer>.transformer_blocks.k.attn1.probs" */
    norm_w norm1, norm2, norm3;
    attn_w attn1, attn2;
    linear_w ff_proj, ff_out; /* GEGLU projection (to 2 x inner) and output */
} basic_block_w;

/* Transformer2DModel:
 *   out = x + proj_out(blocks(proj_in(groupnorm(x)) as tokens))
 * proj_in and proj_out are 1x1 convolutions (SD 1.x) or Linear layers
 * (use_linear_projection, SD 2.x). On the tokens both are the same product;
 * only the stored weight's shape differs (C_out x C x 1 x 1 or C_out x C). */
typedef struct {
    char name[GNR_MODULE_NAME_MAX];
    norm_w norm;
    linear_w proj_in, proj_out;
    int groups;
    int nblocks;
    basic_block_w blocks[GNR_MAX_TBLOCKS];
} transformer_w;

/* The shape of one Transformer2DModel. */
typedef struct {
    int channels, heads, nblocks, context_dim, groups;
    int linear_projection; /* proj_in / proj_out stored as Linear weights */
} transformer_shape;

/* 1 <= nblocks <= GNR_MAX_TBLOCKS and heads divides channels (the model's
 * config check, csrc/model.c, ensures both). */
gnr_status transformer_declare(gnr_weights *ws, const char *component, const char *name, const transformer_shape *s,
                               transformer_w *t);
gnr_status transformer_forward(gnr_ctx *ctx, const transformer_w *t, const gnr_tensor *x,
                               const gnr_tensor *context, gnr_capture *cap, gnr_tensor *out);

/* The VAE mid block's attention (diffusers Attention with group_norm and a
 * residual connection, one head of all channels). */
typedef struct {
    char name[GNR_MODULE_NAME_MAX];
    norm_w norm;
    attn_w attn;
    int groups;
    float eps;
} spatial_attn_w;

gnr_status spatial_attn_declare(gnr_weights *ws, const char *component, const char *name, int channels, int groups,
                                float eps, spatial_attn_w *a);
gnr_status spatial_attn_forward(gnr_ctx *ctx, const spatial_attn_w *a, const gnr_tensor *x, gnr_tensor *out);

/* Downsample2D / Upsample2D with their conv ("<name>.conv"). The downsampler
 * pads 1 on every side, or (0, 1, 0, 1) when `asymmetric` (the VAE's). */
typedef struct {
    linear_w conv;
    int asymmetric;
} resample_w;

gnr_status resample_declare(gnr_weights *ws, const char *component, const char *name, int channels, int asymmetric,
                            resample_w *s);
gnr_status downsample_forward(gnr_ctx *ctx, const resample_w *s, const gnr_tensor *x, gnr_tensor *out);
gnr_status upsample_forward(gnr_ctx *ctx, const resample_w *s, const gnr_tensor *x, gnr_tensor *out);

/* conv with 3x3 kernel, stride 1, padding 1 (the most common conv here). */
gnr_status conv3x3(gnr_ctx *ctx, const linear_w *c, const gnr_tensor *x, gnr_tensor *out);

/* Multi-head attention with projections: q from x, k/v from kv (x when NULL). */
gnr_status attn_forward(gnr_ctx *ctx, const attn_w *a, const gnr_tensor *x, const gnr_tensor *kv, int causal,
                        gnr_capture *cap, const char *probs_name, gnr_tensor *out);
/* names[4]: the q, k, v and output projection names under prefix
 * ({"to_q", "to_k", "to_v", "to_out.0"} in diffusers, "q_proj"... in CLIP). */
gnr_status attn_declare(gnr_weights *ws, const char *prefix, const char *const names[4], int query_dim, int kv_dim,
                        int heads, int qkv_bias, attn_w *a);

#endif
