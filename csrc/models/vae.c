#include "vae.h"

#include <string.h>

static const char *C = "vae";
/* Every GroupNorm of the diffusers VAE uses eps 1e-6. */
#define VAE_EPS 1e-6f

static gnr_status declare_mid(gnr_weights *ws, const gnr_vae_config *cfg, const char *part, vae_coder_w *c)
{
    char name[GNR_MODULE_NAME_MAX];
    int top = cfg->block_out_channels[cfg->num_blocks - 1];
    for (int j = 0; j < 2; j++) {
        GNR_TRY(gnr_fmt(name, sizeof name, "%s.mid_block.resnets.%d", part, j));
        GNR_TRY(resnet_declare(ws, C, name, top, top, 0, cfg->norm_num_groups, VAE_EPS, &c->mid_res[j]));
    }
    c->has_mid_attn = cfg->mid_block_add_attention;
    if (c->has_mid_attn) {
        GNR_TRY(gnr_fmt(name, sizeof name, "%s.mid_block.attentions.0", part));
        GNR_TRY(spatial_attn_declare(ws, C, name, top, cfg->norm_num_groups, VAE_EPS, &c->mid_attn));
    }
    return GNR_OK;
}

gnr_status vae_declare(gnr_weights *ws, const gnr_vae_config *cfg, vae_w *v)
{
    memset(v, 0, sizeof *v);
    v->cfg = *cfg;
    int nb = cfg->num_blocks, lpb = cfg->layers_per_block;
    const int *boc = cfg->block_out_channels;
    int lc = cfg->latent_channels, groups = cfg->norm_num_groups;
    char name[GNR_MODULE_NAME_MAX];

    /* Encoder */
    vae_coder_w *e = &v->enc;
    GNR_TRY(declare_conv(ws, "vae.encoder.conv_in", cfg->in_channels, boc[0], 3, &e->conv_in));
    int out = boc[0];
    for (int i = 0; i < nb; i++) {
        int in = out;
        out = boc[i];
        vae_block_w *b = &e->blocks[i];
        b->nres = lpb;
        for (int j = 0; j < lpb; j++) {
            GNR_TRY(gnr_fmt(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j));
            GNR_TRY(resnet_declare(ws, C, name, j == 0 ? in : out, out, 0, groups, VAE_EPS, &b->res[j]));
        }
        b->has_resample = i < nb - 1;
        if (b->has_resample) {
            GNR_TRY(gnr_fmt(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0", i));
            GNR_TRY(resample_declare(ws, C, name, out, 1, &b->resample));
        }
    }
    GNR_TRY(declare_mid(ws, cfg, "encoder", e));
    GNR_TRY(declare_norm(ws, "vae.encoder.conv_norm_out", boc[nb - 1], &e->norm_out));
    GNR_TRY(declare_conv(ws, "vae.encoder.conv_out", boc[nb - 1], 2 * lc, 3, &e->conv_out));
    if (cfg->use_quant_conv) GNR_TRY(declare_conv(ws, "vae.quant_conv", 2 * lc, 2 * lc, 1, &v->quant));

    /* Decoder */
    if (cfg->use_post_quant_conv) GNR_TRY(declare_conv(ws, "vae.post_quant_conv", lc, lc, 1, &v->post_quant));
    vae_coder_w *d = &v->dec;
    GNR_TRY(declare_conv(ws, "vae.decoder.conv_in", lc, boc[nb - 1], 3, &d->conv_in));
    GNR_TRY(declare_mid(ws, cfg, "decoder", d));
    out = boc[nb - 1];
    for (int i = 0; i < nb; i++) {
        int prev = out;
        out = boc[nb - 1 - i];
        vae_block_w *b = &d->blocks[i];
        b->nres = lpb + 1;
        for (int j = 0; j < lpb + 1; j++) {
            GNR_TRY(gnr_fmt(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j));
            GNR_TRY(resnet_declare(ws, C, name, j == 0 ? prev : out, out, 0, groups, VAE_EPS, &b->res[j]));
        }
        b->has_resample = i < nb - 1;
        if (b->has_resample) {
            GNR_TRY(gnr_fmt(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0", i));
            GNR_TRY(resample_declare(ws, C, name, out, 0, &b->resample));
        }
    }
    GNR_TRY(declare_norm(ws, "vae.decoder.conv_norm_out", boc[0], &d->norm_out));
    return declare_conv(ws, "vae.decoder.conv_out", boc[0], cfg->out_channels, 3, &d->conv_out);
}

/* The coders are chains h -> f(h) of large feature maps (128 channels at
 * full image size). Each step's output replaces its input at the chain's
 * start in the arena (`chain` marks where h lives), so a pass holds two maps
 * at a time instead of all of them. */
#define step(ctx, h, call, o) advance(ctx, chain, h, call, o)

static gnr_status advance(gnr_ctx *ctx, nn_scope chain, gnr_tensor *h, gnr_status st, gnr_tensor *o)
{
    GNR_TRY(st);
    GNR_TRY(nn_scope_end(ctx, chain, o));
    *h = *o;
    return GNR_OK;
}

static gnr_status run_mid(gnr_ctx *ctx, nn_scope chain, const vae_coder_w *c, gnr_tensor *h)
{
    gnr_tensor o;
    GNR_TRY(step(ctx, h, resnet_forward(ctx, &c->mid_res[0], h, NULL, &o), &o));
    if (c->has_mid_attn) GNR_TRY(step(ctx, h, spatial_attn_forward(ctx, &c->mid_attn, h, &o), &o));
    return step(ctx, h, resnet_forward(ctx, &c->mid_res[1], h, NULL, &o), &o);
}

static gnr_status run_tail(gnr_ctx *ctx, const vae_coder_w *c, int groups, const gnr_tensor *h, gnr_tensor *out)
{
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor n;
    GNR_TRY(nn_group_norm(ctx, h, c->norm_out.g, c->norm_out.b, groups, VAE_EPS, &n));
    GNR_TRY(nn_act_in_place(ctx, GNR_ACT_SILU, &n));
    GNR_TRY(conv3x3(ctx, &c->conv_out, &n, out));
    return nn_scope_end(ctx, sc, out);
}

gnr_status vae_encode_mean(gnr_ctx *ctx, const vae_w *v, const gnr_tensor *image, gnr_tensor *mean)
{
    const gnr_vae_config *cfg = &v->cfg;
    const vae_coder_w *e = &v->enc;
    nn_scope chain = nn_scope_begin(ctx);
    gnr_tensor h, o, moments;
    GNR_TRY(conv3x3(ctx, &e->conv_in, image, &h));
    for (int i = 0; i < cfg->num_blocks; i++) {
        const vae_block_w *b = &e->blocks[i];
        for (int j = 0; j < b->nres; j++) GNR_TRY(step(ctx, &h, resnet_forward(ctx, &b->res[j], &h, NULL, &o), &o));
        if (b->has_resample) GNR_TRY(step(ctx, &h, downsample_forward(ctx, &b->resample, &h, &o), &o));
    }
    GNR_TRY(run_mid(ctx, chain, e, &h));
    GNR_TRY(step(ctx, &h, run_tail(ctx, e, cfg->norm_num_groups, &h, &moments), &moments));
    if (v->quant.w) {
        gnr_conv_params p = {1, 0, 0, 0, 0};
        GNR_TRY(step(ctx, &moments, nn_conv2d(ctx, &moments, v->quant.w, v->quant.b, &p, &o), &o));
    }
    /* The mean is the first latent_channels channels: with batch 1 that is
     * the first half of the moments, contiguous. */
    int64_t shape[4] = {1, cfg->latent_channels, moments.shape[2], moments.shape[3]};
    gnr_tensor m = gnr_reshape(moments, 4, shape);
    GNR_TRY(gnr_alloc_like(ctx, &m, mean));
    GNR_TRY(gnr_copy(ctx, &m, mean));
    return nn_scope_end(ctx, chain, mean);
}

gnr_status vae_decode(gnr_ctx *ctx, const vae_w *v, const gnr_tensor *z, gnr_tensor *image)
{
    const gnr_vae_config *cfg = &v->cfg;
    const vae_coder_w *d = &v->dec;
    nn_scope chain = nn_scope_begin(ctx);
    gnr_tensor h = *z, o;
    if (v->post_quant.w) {
        gnr_conv_params p = {1, 0, 0, 0, 0};
        GNR_TRY(step(ctx, &h, nn_conv2d(ctx, &h, v->post_quant.w, v->post_quant.b, &p, &o), &o));
    }
    GNR_TRY(step(ctx, &h, conv3x3(ctx, &d->conv_in, &h, &o), &o));
    GNR_TRY(run_mid(ctx, chain, d, &h));
    for (int i = 0; i < cfg->num_blocks; i++) {
        const vae_block_w *b = &d->blocks[i];
        for (int j = 0; j < b->nres; j++) GNR_TRY(step(ctx, &h, resnet_forward(ctx, &b->res[j], &h, NULL, &o), &o));
        if (b->has_resample) GNR_TRY(step(ctx, &h, upsample_forward(ctx, &b->resample, &h, &o), &o));
    }
    GNR_TRY(run_tail(ctx, d, cfg->norm_num_groups, &h, image));
    return nn_scope_end(ctx, chain, image);
}
