#include "unet.h"

#include <math.h>
#include <string.h>

static const char *C = "unet";

static gnr_status declare_block(gnr_weights *ws, const gnr_unet_config *cfg, unet_block_w *b, const char *kind,
                                int index, int nres, const int *res_in, int out, int attn, int heads, int tlayers,
                                int resample)
{
    char name[GNR_MODULE_NAME_MAX];
    int temb_dim = 4 * cfg->block_out_channels[0];
    GNR_TRY(gnr_fmt(b->name, sizeof b->name, "%s.%d", kind, index));
    b->nres = nres;
    b->has_attn = attn;
    for (int j = 0; j < nres; j++) {
        GNR_TRY(gnr_fmt(name, sizeof name, "%s.%d.resnets.%d", kind, index, j));
        GNR_TRY(resnet_declare(ws, C, name, res_in[j], out, temb_dim, cfg->norm_num_groups, cfg->norm_eps,
                               &b->res[j]));
        if (attn) {
            GNR_TRY(gnr_fmt(name, sizeof name, "%s.%d.attentions.%d", kind, index, j));
            transformer_shape ts = {out, heads, tlayers, cfg->cross_attention_dim, cfg->norm_num_groups,
                                    cfg->linear_projection};
            GNR_TRY(transformer_declare(ws, C, name, &ts, &b->attn[j]));
        }
    }
    b->has_resample = resample;
    if (resample) {
        GNR_TRY(gnr_fmt(name, sizeof name, "%s.%d.%s.0", kind, index, kind[0] == 'd' ? "downsamplers" : "upsamplers"));
        GNR_TRY(resample_declare(ws, C, name, out, 0, &b->resample));
    }
    return GNR_OK;
}

gnr_status unet_declare(gnr_weights *ws, const gnr_unet_config *cfg, unet_w *u)
{
    memset(u, 0, sizeof *u);
    u->cfg = *cfg;
    int nb = cfg->num_blocks, lpb = cfg->layers_per_block;
    const int *boc = cfg->block_out_channels;
    int temb_dim = 4 * boc[0];
    GNR_TRY(declare_linear(ws, "unet.time_embedding.linear_1", boc[0], temb_dim, 1, &u->time_1));
    GNR_TRY(declare_linear(ws, "unet.time_embedding.linear_2", temb_dim, temb_dim, 1, &u->time_2));
    GNR_TRY(declare_conv(ws, "unet.conv_in", cfg->in_channels, boc[0], 3, &u->conv_in));

    int res_in[GNR_MAX_LAYERS];
    int out = boc[0];
    for (int i = 0; i < nb; i++) {
        int in = out;
        out = boc[i];
        for (int j = 0; j < lpb; j++) res_in[j] = j == 0 ? in : out;
        GNR_TRY(declare_block(ws, cfg, &u->down[i], "down_blocks", i, lpb, res_in, out, cfg->down_has_attn[i],
                              cfg->heads[i], cfg->transformer_layers[i], i < nb - 1));
    }
    int top = boc[nb - 1];
    GNR_TRY(resnet_declare(ws, C, "mid_block.resnets.0", top, top, temb_dim, cfg->norm_num_groups, cfg->norm_eps,
                           &u->mid_res[0]));
    transformer_shape mid = {top, cfg->mid_heads, cfg->mid_transformer_layers, cfg->cross_attention_dim,
                             cfg->norm_num_groups, cfg->linear_projection};
    GNR_TRY(transformer_declare(ws, C, "mid_block.attentions.0", &mid, &u->mid_attn));
    GNR_TRY(resnet_declare(ws, C, "mid_block.resnets.1", top, top, temb_dim, cfg->norm_num_groups, cfg->norm_eps,
                           &u->mid_res[1]));

    /* Up block i mirrors down block nb-1-i; its resnet j takes the previous
     * output concatenated with a skip connection (diffusers' channel rule). */
    out = boc[nb - 1];
    for (int i = 0; i < nb; i++) {
        int prev = out;
        out = boc[nb - 1 - i];
        int in = boc[nb - 1 - (i + 1 < nb ? i + 1 : nb - 1)];
        int r = nb - 1 - i; /* mirrored down block: heads and layers reversed */
        for (int j = 0; j < lpb + 1; j++) {
            int skip = j == lpb ? in : out;
            res_in[j] = (j == 0 ? prev : out) + skip;
        }
        GNR_TRY(declare_block(ws, cfg, &u->up[i], "up_blocks", i, lpb + 1, res_in, out, cfg->up_has_attn[i],
                              cfg->heads[r], cfg->transformer_layers[r], i < nb - 1));
    }
    GNR_TRY(declare_norm(ws, "unet.conv_norm_out", boc[0], &u->norm_out));
    return declare_conv(ws, "unet.conv_out", boc[0], cfg->out_channels, 3, &u->conv_out);
}

/* Sinusoidal timestep embedding as diffusers' get_timestep_embedding, in
 * float32: freq_i = exp(-ln(10000) * i / (half - shift)), emb = [sin, cos]
 * of t * freq (flipped to [cos, sin] with flip_sin_to_cos). */
static void timestep_embedding(int t, int dim, int flip, float shift, float *out)
{
    int half = dim / 2;
    const float neg_log = -(float)log(10000.0);
    for (int i = 0; i < half; i++) {
        float e = neg_log * (float)i;
        e = e / ((float)half - shift);
        float arg = (float)t * expf(e);
        float s = sinf(arg), c = cosf(arg);
        out[i] = flip ? c : s;
        out[half + i] = flip ? s : c;
    }
    if (dim % 2) out[dim - 1] = 0.0f;
}

static gnr_status run_resnet(gnr_ctx *ctx, const resnet_w *r, gnr_tensor *h, const gnr_tensor *temb,
                             gnr_capture *cap)
{
    gnr_tensor o;
    GNR_TRY(resnet_forward(ctx, r, h, temb, &o));
    GNR_TRY(nn_capture(ctx, cap, r->name, &o));
    *h = o;
    return GNR_OK;
}

static gnr_status run_attn(gnr_ctx *ctx, const transformer_w *t, gnr_tensor *h, const gnr_tensor *context,
                           gnr_capture *cap)
{
    gnr_tensor o;
    GNR_TRY(transformer_forward(ctx, t, h, context, cap, &o));
    *h = o;
    return GNR_OK;
}

gnr_status unet_forward(gnr_ctx *ctx, const unet_w *u, const gnr_tensor *latent, int timestep,
                        const gnr_tensor *context, gnr_capture *cap, gnr_tensor *out)
{
    const gnr_unet_config *cfg = &u->cfg;
    int nb = cfg->num_blocks;
    int c0 = cfg->block_out_channels[0];

    /* Time embedding: the sinusoid is a constant computed on the host. The
     * model's config check bounds c0; this guard keeps the stack buffer,
     * written on every pass, safe on its own. */
    float host_emb[GNR_UNET_MAX_BASE_CHANNELS];
    if (c0 > GNR_UNET_MAX_BASE_CHANNELS)
        return gnr_error(GNR_ERR_INTERNAL, "a bug in gnr: unet block_out_channels[0] = %d exceeds the time "
                         "embedding's %d", c0, GNR_UNET_MAX_BASE_CHANNELS);
    timestep_embedding(timestep, c0, cfg->flip_sin_to_cos, cfg->freq_shift, host_emb);
    gnr_tensor sin_emb, t1, t1a, temb, temb_act, h, sk;
    /* one row per batch item (a batch shares its timestep) */
    int64_t batch = latent->shape[0];
    GNR_TRY(gnr_alloc2(ctx, batch, c0, &sin_emb));
    GNR_TRY(nn_upload_repeated(ctx, host_emb, batch, &sin_emb));
    GNR_TRY(nn_linear(ctx, &sin_emb, u->time_1.w, u->time_1.b, &t1));
    GNR_TRY(nn_act(ctx, GNR_ACT_SILU, &t1, &t1a));
    GNR_TRY(nn_linear(ctx, &t1a, u->time_2.w, u->time_2.b, &temb));
    /* Every resnet applies SiLU to the same embedding: do it once. */
    GNR_TRY(nn_act(ctx, GNR_ACT_SILU, &temb, &temb_act));

    /* The arena as a stack: each skip connection is the only thing its
     * down step leaves (its scope starts where the skip then lies), and the
     * up step that consumes it ends that same scope, keeping only its
     * output. So the skips still waiting and one step's temporaries are all
     * a pass holds, never the outputs of finished steps. */
    gnr_tensor skips[GNR_MAX_BLOCKS * (GNR_MAX_LAYERS + 1) + 1];
    nn_scope skip_scopes[GNR_MAX_BLOCKS * (GNR_MAX_LAYERS + 1) + 1];
    int nskip = 0;
    skip_scopes[nskip] = nn_scope_begin(ctx);
    GNR_TRY(conv3x3(ctx, &u->conv_in, latent, &h));
    skips[nskip++] = h;

    for (int i = 0; i < nb; i++) {
        const unet_block_w *b = &u->down[i];
        for (int j = 0; j < b->nres; j++) {
            skip_scopes[nskip] = nn_scope_begin(ctx);
            GNR_TRY(run_resnet(ctx, &b->res[j], &h, &temb_act, cap));
            if (b->has_attn) GNR_TRY(run_attn(ctx, &b->attn[j], &h, context, cap));
            GNR_TRY(nn_scope_end(ctx, skip_scopes[nskip], &h));
            skips[nskip++] = h;
        }
        if (b->has_resample) {
            gnr_tensor o;
            skip_scopes[nskip] = nn_scope_begin(ctx);
            GNR_TRY(downsample_forward(ctx, &b->resample, &h, &o));
            h = o;
            skips[nskip++] = h;
        }
    }

    GNR_TRY(run_resnet(ctx, &u->mid_res[0], &h, &temb_act, NULL));
    GNR_TRY(run_attn(ctx, &u->mid_attn, &h, context, cap));
    GNR_TRY(run_resnet(ctx, &u->mid_res[1], &h, &temb_act, NULL));
    GNR_TRY(nn_capture(ctx, cap, "mid_block", &h));

    for (int i = 0; i < nb; i++) {
        const unet_block_w *b = &u->up[i];
        for (int j = 0; j < b->nres; j++) {
            if (nskip == 0) return gnr_error(GNR_ERR_INTERNAL, "unet: skip connections exhausted");
            GNR_TRY(nn_concat_channels(ctx, &h, &skips[--nskip], &sk));
            h = sk;
            GNR_TRY(run_resnet(ctx, &b->res[j], &h, &temb_act, cap));
            if (b->has_attn) GNR_TRY(run_attn(ctx, &b->attn[j], &h, context, cap));
            GNR_TRY(nn_scope_end(ctx, skip_scopes[nskip], &h)); /* the skip and all above it go */
        }
        if (b->has_resample) {
            gnr_tensor o;
            GNR_TRY(upsample_forward(ctx, &b->resample, &h, &o));
            h = o;
        }
        GNR_TRY(nn_capture(ctx, cap, b->name, &h));
    }

    gnr_tensor n;
    GNR_TRY(nn_group_norm(ctx, &h, u->norm_out.g, u->norm_out.b, cfg->norm_num_groups, cfg->norm_eps, &n));
    GNR_TRY(nn_capture(ctx, cap, "conv_norm_out", &n)); /* a copy: the activation may overwrite n */
    GNR_TRY(nn_act_in_place(ctx, GNR_ACT_SILU, &n));
    return conv3x3(ctx, &u->conv_out, &n, out);
}

static int block_maps(const unet_block_w *b, const char **names, int k, int max)
{
    if (!b->has_attn) return k;
    for (int j = 0; j < b->nres; j++)
        for (int t = 0; t < b->attn[j].nblocks; t++) {
            if (k < max) names[k] = b->attn[j].blocks[t].probs_name;
            k++;
        }
    return k;
}

int unet_self_attention_names(const unet_w *u, int part, const char **names, int max)
{
    int k = 0;
    if (part == 0)
        for (int i = 0; i < u->cfg.num_blocks; i++) k = block_maps(&u->down[i], names, k, max);
    else if (part == 1)
        for (int t = 0; t < u->mid_attn.nblocks; t++) {
            if (k < max) names[k] = u->mid_attn.blocks[t].probs_name;
            k++;
        }
    else
        for (int i = 0; i < u->cfg.num_blocks; i++) k = block_maps(&u->up[i], names, k, max);
    return k;
}

int unet_feature_names(const unet_w *u, const char **names, int max)
{
    int k = 0;
#define PUT(s)                     \
    do {                           \
        if (k < max) names[k] = s; \
        k++;                       \
    } while (0)
    for (int i = 0; i < u->cfg.num_blocks; i++)
        for (int j = 0; j < u->down[i].nres; j++) PUT(u->down[i].res[j].name);
    PUT("mid_block");
    for (int i = 0; i < u->cfg.num_blocks; i++) {
        for (int j = 0; j < u->up[i].nres; j++) PUT(u->up[i].res[j].name);
        PUT(u->up[i].name);
    }
    PUT("conv_norm_out");
#undef PUT
    return k;
}
