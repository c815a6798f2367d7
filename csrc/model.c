/* gnr_model: one Stable Diffusion 1.x or 2.x model on one device (gnr.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grad/energy.h"
#include "grad/tape.h"
#include "core/derived.h"
#include "model_internal.h"


/* ---------------------------------------------------------- lifecycle --- */

/* A config the engine cannot build. gnr/model.py validates every rule below
 * and names the file and key at fault; a config that reaches the engine
 * breaking one is a bug in gnr, so it is an internal error here, reported
 * before any fixed-size array of the model code is indexed by it. */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static gnr_status config_bug(const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return gnr_error(GNR_ERR_INTERNAL, "a bug in gnr: the model config reached the engine unvalidated: %s", what);
}

#define RULE(ok, ...)                              \
    do {                                           \
        if (!(ok)) return config_bug(__VA_ARGS__); \
    } while (0)

/* The one place the engine checks a model config: every limit of the model
 * code's arrays and every rule the layer shapes rely on. The model code
 * (csrc/models) builds from a config that passed it. */
static gnr_status check_config(const gnr_model_config *c)
{
    const gnr_unet_config *u = &c->unet;
    int nb = u->num_blocks, groups = u->norm_num_groups;
    RULE(nb >= 1 && nb <= GNR_MAX_BLOCKS, "unet: %d blocks (1 to %d)", nb, GNR_MAX_BLOCKS);
    RULE(u->layers_per_block >= 1 && u->layers_per_block < GNR_MAX_LAYERS, "unet: layers_per_block %d (1 to %d)",
         u->layers_per_block, GNR_MAX_LAYERS - 1);
    RULE(groups >= 1, "unet: norm_num_groups %d", groups);
    for (int i = 0; i < nb; i++) {
        int ch = u->block_out_channels[i], mirror = nb - 1 - i;
        RULE(ch >= 1 && ch % groups == 0, "unet: block_out_channels[%d] = %d is not a positive multiple of "
             "norm_num_groups %d", i, ch, groups);
        RULE(u->up_has_attn[i] == u->down_has_attn[mirror], "unet: up block %d %s cross-attention but its mirrored "
             "down block %d %s (only the symmetric SD 1.x and 2.x layouts)", i, u->up_has_attn[i] ? "has" : "has no", mirror,
             u->down_has_attn[mirror] ? "does" : "does not");
        /* Up block nb-1-i mirrors down block i, so checking the down blocks'
         * transformers checks the up blocks' too. */
        if (u->down_has_attn[i]) {
            RULE(u->heads[i] >= 1 && ch % u->heads[i] == 0, "unet: down block %d: %d channels cannot be split into "
                 "%d attention heads", i, ch, u->heads[i]);
            RULE(u->transformer_layers[i] >= 1 && u->transformer_layers[i] <= GNR_MAX_TBLOCKS,
                 "unet: down block %d: %d transformer layers (1 to %d)", i, u->transformer_layers[i], GNR_MAX_TBLOCKS);
        }
    }
    int top = u->block_out_channels[nb - 1];
    RULE(u->mid_heads >= 1 && top % u->mid_heads == 0, "unet: mid block: %d channels cannot be split into %d "
         "attention heads", top, u->mid_heads);
    RULE(u->mid_transformer_layers >= 1 && u->mid_transformer_layers <= GNR_MAX_TBLOCKS,
         "unet: mid block: %d transformer layers (1 to %d)", u->mid_transformer_layers, GNR_MAX_TBLOCKS);
    RULE(u->linear_projection == 0 || u->linear_projection == 1, "unet: linear_projection %d (0 or 1)",
         u->linear_projection);
    RULE(u->upcast_attention == 0 || u->upcast_attention == 1, "unet: upcast_attention %d (0 or 1)",
         u->upcast_attention);
    RULE(u->prediction == GNR_PREDICT_EPSILON || u->prediction == GNR_PREDICT_V,
         "unet: prediction type %d (epsilon %d or v %d)", (int)u->prediction, GNR_PREDICT_EPSILON, GNR_PREDICT_V);
    RULE(u->block_out_channels[0] <= GNR_UNET_MAX_BASE_CHANNELS, "unet: block_out_channels[0] = %d (at most %d)",
         u->block_out_channels[0], GNR_UNET_MAX_BASE_CHANNELS);

    const gnr_vae_config *v = &c->vae;
    RULE(v->num_blocks >= 1 && v->num_blocks <= GNR_MAX_BLOCKS, "vae: %d blocks (1 to %d)", v->num_blocks,
         GNR_MAX_BLOCKS);
    RULE(v->layers_per_block >= 1 && v->layers_per_block < GNR_VAE_MAX_LAYERS, "vae: layers_per_block %d (1 to %d)",
         v->layers_per_block, GNR_VAE_MAX_LAYERS - 1);
    RULE(v->norm_num_groups >= 1, "vae: norm_num_groups %d", v->norm_num_groups);
    for (int i = 0; i < v->num_blocks; i++)
        RULE(v->block_out_channels[i] >= 1 && v->block_out_channels[i] % v->norm_num_groups == 0,
             "vae: block_out_channels[%d] = %d is not a positive multiple of norm_num_groups %d", i,
             v->block_out_channels[i], v->norm_num_groups);
    RULE(v->latent_channels == u->in_channels, "vae latent_channels %d differs from unet in_channels %d",
         v->latent_channels, u->in_channels);

    const gnr_text_config *t = &c->text;
    RULE(t->num_layers >= 1 && t->num_layers <= GNR_MAX_TEXT_LAYERS, "text_encoder: %d layers (1 to %d)",
         t->num_layers, GNR_MAX_TEXT_LAYERS);
    RULE(t->num_heads >= 1 && t->hidden_size % t->num_heads == 0, "text_encoder: hidden_size %d cannot be split "
         "into %d heads", t->hidden_size, t->num_heads);
    RULE(t->hidden_size == u->cross_attention_dim, "text_encoder hidden_size %d differs from unet "
         "cross_attention_dim %d", t->hidden_size, u->cross_attention_dim);
    return GNR_OK;
}

#undef RULE

gnr_status gnr_model_create(const gnr_model_config *cfg, gnr_device device, gnr_dtype matmul_dtype, int nthreads,
                            size_t max_memory, gnr_model **out)
{
    *out = NULL;
    const gnr_backend *be = gnr_backend_for(device);
    if (!be)
        return gnr_error(GNR_ERR_UNSUPPORTED, "device '%s' is not available in this build",
                         gnr_device_name(device));
    if (matmul_dtype != GNR_F32 && matmul_dtype != GNR_F16 && matmul_dtype != GNR_BF16)
        return gnr_error(GNR_ERR_VALUE, "dtype code %d is not float32, float16 or bfloat16", (int)matmul_dtype);
    if (matmul_dtype != GNR_F32 && device != GNR_CUDA)
        return gnr_error(GNR_ERR_UNSUPPORTED, "dtype %s needs device 'cuda'; the %s backend computes in float32",
                         gnr_dtype_name(matmul_dtype), gnr_device_name(device));
    GNR_TRY(check_config(cfg));
    gnr_model *m = calloc(1, sizeof *m);
    if (!m) return gnr_error(GNR_ERR_NOMEM, "out of host memory creating the model");
    m->cfg = *cfg;
    m->backend = be;
    gnr_weights_init(&m->weights, device);
    m->ctx.device = device;
    m->ctx.cancel = &m->cancel;
    m->ctx.matmul_dtype = matmul_dtype;
    /* The model's own count: the process default stays as it is, and no
     * other model is re-threaded. */
    m->ctx.nthreads = nthreads > 0 ? nthreads : gnr_get_num_threads();
    gnr_status st;
    GNR_CHECK(st, gnr_arena_create(&be->allocator, max_memory, &m->ctx.arena));
    GNR_CHECK(st, gnr_arena_create(&be->allocator, 0, &m->ctx.keep));
    GNR_CHECK(st, gnr_arena_create(&be->allocator, 0, &m->state));
    if (be->context_init) GNR_CHECK(st, be->context_init(&m->ctx));
    GNR_CHECK(st, clip_text_declare(&m->weights, &cfg->text, &m->text));
    int unet_first = m->weights.n;
    GNR_CHECK(st, unet_declare(&m->weights, &cfg->unet, &m->unet));
    int unet_end = m->weights.n;
    GNR_CHECK(st, vae_declare(&m->weights, &cfg->vae, &m->vae));
    GNR_CHECK(st, gnr_weights_place(&m->weights));
    if (unet_end > unet_first) { /* placed in declaration order: one range */
        const gnr_tensor *last = &m->weights.items[unet_end - 1]->t;
        m->ctx.hot_lo = m->weights.items[unet_first]->t.data;
        m->ctx.hot_hi = (const char *)last->data + gnr_nbytes(last);
    }
    *out = m;
    return GNR_OK;
done:
    gnr_model_destroy(m);
    return st;
}

void gnr_model_destroy(gnr_model *m)
{
    if (!m) return;
    if (m->backend && m->backend->context_free && m->ctx.backend) m->backend->context_free(&m->ctx);
    gnr_derived_clear(&m->ctx);
    gnr_weights_free(&m->weights);
    gnr_arena_destroy(m->ctx.arena);
    gnr_arena_destroy(m->ctx.keep);
    gnr_arena_destroy(m->state);
    free(m);
}

int gnr_model_weight_count(const gnr_model *m) { return m->weights.n; }

int gnr_model_threads(const gnr_model *m) { return m->ctx.nthreads; }

gnr_status gnr_model_weight_info(const gnr_model *m, int index, const char **name, int *ndim, const int64_t **shape)
{
    if (index < 0 || index >= m->weights.n)
        return gnr_error(GNR_ERR_VALUE, "weight index %d out of range [0, %d)", index, m->weights.n);
    const gnr_weight *w = m->weights.items[index];
    *name = w->name;
    *ndim = w->t.ndim;
    *shape = w->t.shape;
    return GNR_OK;
}

gnr_status gnr_model_set_weight(gnr_model *m, const char *name, const float *data, int ndim, const int64_t *shape)
{
    gnr_derived_clear(&m->ctx); /* what was derived from the old values is stale */
    return gnr_weights_set(&m->weights, &m->ctx, name, data, ndim, shape);
}

gnr_status gnr_model_finalize(gnr_model *m)
{
    GNR_TRY(gnr_weights_check_all(&m->weights));
    m->finalized = 1;
    return GNR_OK;
}

const gnr_model_config *gnr_model_get_config(const gnr_model *m) { return &m->cfg; }

int gnr_model_vae_factor(const gnr_model *m) { return 1 << (m->cfg.vae.num_blocks - 1); }

int gnr_model_size_multiple(const gnr_model *m) { return gnr_model_vae_factor(m) << (m->cfg.unet.num_blocks - 1); }

volatile int *gnr_model_cancel_flag(gnr_model *m) { return &m->cancel; }

size_t gnr_model_peak_bytes(const gnr_model *m)
{
    return gnr_arena_peak(m->ctx.arena) + gnr_arena_peak(m->ctx.keep) + gnr_arena_peak(m->state);
}

size_t gnr_model_weight_cache_bytes(const gnr_model *m) { return gnr_derived_bytes(&m->ctx); }

void gnr_model_reset_peak(gnr_model *m)
{
    gnr_arena_reset_peak(m->ctx.arena);
    gnr_arena_reset_peak(m->ctx.keep);
    gnr_arena_reset_peak(m->state);
}

void gnr_model_set_max_memory(gnr_model *m, size_t max_memory) { gnr_arena_set_cap(m->ctx.arena, max_memory); }

/* -------------------------------------------------------------- passes --- */

/* One pass at a time per model: a second thread gets an error, never a
 * corrupted arena. */
gnr_status gnr_pass_begin(gnr_model *m)
{
    if (!m->finalized)
        return gnr_error(GNR_ERR_VALUE, "the model's weights are not loaded (gnr_model_finalize was not called)");
    if (__atomic_exchange_n(&m->busy, 1, __ATOMIC_ACQUIRE))
        return gnr_error(GNR_ERR_VALUE,
                         "model is busy: another thread is running a pass on it; use one model per thread");
    gnr_arena_reset(m->ctx.arena);
    gnr_arena_reset(m->ctx.keep);
    gnr_arena_reset(m->state);
    m->cancel = 0;
    return GNR_OK;
}

gnr_status gnr_pass_end(gnr_model *m, gnr_status st)
{
    m->ctx.tape = NULL;
    gnr_arena_reset(m->ctx.arena);
    gnr_arena_reset(m->ctx.keep);
    gnr_arena_reset(m->state);
    __atomic_store_n(&m->busy, 0, __ATOMIC_RELEASE);
    return st;
}

gnr_status gnr_upload_new(gnr_ctx *ctx, const float *host, int ndim, const int64_t *shape, gnr_tensor *t)
{
    GNR_TRY(gnr_alloc(ctx, GNR_F32, ndim, shape, t));
    return gnr_upload(ctx, host, t);
}

gnr_status gnr_encode_text(gnr_model *m, const int32_t *ids, float *out)
{
    GNR_TRY(gnr_pass_begin(m));
    gnr_tensor y;
    gnr_status st;
    GNR_CHECK(st, clip_text_forward(&m->ctx, &m->text, ids, &y));
    GNR_CHECK(st, gnr_download(&m->ctx, &y, out));
done:
    return gnr_pass_end(m, st);
}

gnr_status gnr_check_latent_size(const gnr_model *m, int h, int w)
{
    int mult = 1 << (m->cfg.unet.num_blocks - 1);
    if (h < 1 || w < 1 || h % mult || w % mult)
        return gnr_error(GNR_ERR_VALUE, "latent size %d x %d must be positive multiples of %d for this UNet", h, w,
                         mult);
    return GNR_OK;
}

gnr_status gnr_unet_forward(gnr_model *m, const float *latent, int n, int h, int w, int timestep,
                            const float *context, int ctx_items, int ctx_len, float *out)
{
    GNR_TRY(gnr_check_latent_size(m, h, w));
    if (n < 1) return gnr_error(GNR_ERR_VALUE, "a batch needs at least one latent, got %d", n);
    if (ctx_items != 1 && ctx_items != n)
        return gnr_error(GNR_ERR_VALUE, "%d contexts for %d latents: give one (shared) or one per latent", ctx_items,
                         n);
    if (ctx_len < 1) return gnr_error(GNR_ERR_VALUE, "context must have at least one token, got %d", ctx_len);
    if (timestep < 0 || timestep > 100000)
        return gnr_error(GNR_ERR_VALUE, "timestep %d is outside [0, 100000]", timestep);
    GNR_TRY(gnr_pass_begin(m));
    const gnr_unet_config *u = &m->cfg.unet;
    int64_t zs[4] = {n, u->in_channels, h, w}, cs[3] = {n, ctx_len, u->cross_attention_dim};
    gnr_tensor z, c, y;
    gnr_status st;
    GNR_CHECK(st, gnr_upload_new(&m->ctx, latent, 4, zs, &z));
    GNR_CHECK(st, gnr_alloc(&m->ctx, GNR_F32, 3, cs, &c));
    /* a shared context is uploaded once and copied to every item */
    GNR_CHECK(st, nn_upload_repeated(&m->ctx, context, ctx_items == 1 ? n : 1, &c));
    GNR_CHECK(st, unet_forward(&m->ctx, &m->unet, &z, timestep, &c, NULL, &y));
    GNR_CHECK(st, gnr_download(&m->ctx, &y, out));
done:
    return gnr_pass_end(m, st);
}

gnr_status gnr_vae_encode(gnr_model *m, const float *image, int height, int width, float *latent)
{
    int f = gnr_model_vae_factor(m);
    if (height < 1 || width < 1 || height % f || width % f)
        return gnr_error(GNR_ERR_VALUE, "image size %d x %d must be positive multiples of %d for this VAE", height,
                         width, f);
    GNR_TRY(gnr_pass_begin(m));
    int64_t xs[4] = {1, m->cfg.vae.in_channels, height, width};
    gnr_tensor x, mean, scaled;
    gnr_status st;
    GNR_CHECK(st, gnr_upload_new(&m->ctx, image, 4, xs, &x));
    GNR_CHECK(st, vae_encode_mean(&m->ctx, &m->vae, &x, &mean));
    GNR_CHECK(st, gnr_alloc_like(&m->ctx, &mean, &scaled));
    GNR_CHECK(st, gnr_scale(&m->ctx, &mean, m->cfg.vae.scaling_factor, &scaled));
    GNR_CHECK(st, gnr_download(&m->ctx, &scaled, latent));
done:
    return gnr_pass_end(m, st);
}

gnr_status gnr_vae_decode(gnr_model *m, const float *latent, int h, int w, float *image)
{
    if (h < 1 || w < 1) return gnr_error(GNR_ERR_VALUE, "latent size %d x %d must be positive", h, w);
    GNR_TRY(gnr_pass_begin(m));
    int lc = m->cfg.vae.latent_channels;
    int64_t n = (int64_t)lc * h * w;
    int64_t zs[4] = {1, lc, h, w};
    gnr_tensor z, y;
    gnr_status st = GNR_OK;
    /* z / scaling_factor as the reference computes it (a division, not a
     * multiplication by the reciprocal), on the host before upload. */
    float *scaled = malloc((size_t)n * sizeof *scaled);
    if (!scaled) GNR_CHECK(st, gnr_error(GNR_ERR_NOMEM, "out of host memory (%lld floats)", (long long)n));
    for (int64_t i = 0; i < n; i++) scaled[i] = latent[i] / m->cfg.vae.scaling_factor;
    GNR_CHECK(st, gnr_upload_new(&m->ctx, scaled, 4, zs, &z));
    GNR_CHECK(st, vae_decode(&m->ctx, &m->vae, &z, &y));
    GNR_CHECK(st, gnr_download(&m->ctx, &y, image));
done:
    free(scaled);
    return gnr_pass_end(m, st);
}

/* -------------------------------------------------------- reverse mode --- */

int gnr_unet_feature_names(const gnr_model *m, const char **names, int max)
{
    return unet_feature_names(&m->unet, names, max);
}

int gnr_unet_attention_names(const gnr_model *m, int part, const char **names, int max)
{
    return unet_self_attention_names(&m->unet, part, names, max);
}

/* The union of the terms' capture names, in first-use order. */
static gnr_status build_request(const gnr_energy_term *terms, int nterms, gnr_capture *cap)
{
    for (int i = 0; i < nterms; i++) {
        const gnr_energy_term *t = &terms[i];
        if (t->kind != GNR_ENERGY_ATTN_MAP_L2 && t->kind != GNR_ENERGY_FEATURE_L2 && t->kind != GNR_ENERGY_FEATURE_L1)
            return gnr_error(GNR_ERR_VALUE, "energy term %d: unknown kind %d", i, (int)t->kind);
        if (t->kind != GNR_ENERGY_ATTN_MAP_L2 && t->ncaptures != 1)
            return gnr_error(GNR_ERR_VALUE, "energy term %d: a feature energy compares exactly one capture, got %d",
                             i, t->ncaptures);
        for (int j = 0; j < t->ncaptures; j++)
            GNR_TRY(gnr_capture_want(cap, t->captures[j], t->kind == GNR_ENERGY_ATTN_MAP_L2));
    }
    return GNR_OK;
}

static energy_kind term_kind(const gnr_energy_term *t)
{
    return t->kind == GNR_ENERGY_FEATURE_L1 ? ENERGY_ABS_DIFF_MEAN : ENERGY_SQ_DIFF_MEAN;
}

static gnr_status download_grad(gnr_ctx *ctx, const gnr_tape *tape, const gnr_tensor *leaf, float *out)
{
    if (!out) return GNR_OK;
    gnr_tensor g = gnr_tape_grad(tape, leaf);
    if (g.data) return gnr_download(ctx, &g, out);
    memset(out, 0, (size_t)gnr_numel(leaf) * sizeof(float)); /* E does not depend on it */
    return GNR_OK;
}

gnr_status gnr_unet_energy_grad(gnr_model *m, const float *latent, const float *context, const float *ref_latent,
                                const float *ref_context, int h, int w, int ctx_len, int timestep,
                                const gnr_energy_term *terms, int nterms, int checkpointing, double *energy,
                                float *dlatent, float *dcontext)
{
    GNR_TRY(gnr_check_latent_size(m, h, w));
    if (ctx_len < 1) return gnr_error(GNR_ERR_VALUE, "context must have at least one token, got %d", ctx_len);
    GNR_TRY(gnr_pass_begin(m));
    gnr_ctx *ctx = &m->ctx;
    const gnr_unet_config *u = &m->cfg.unet;
    int64_t zs[4] = {1, u->in_channels, h, w}, cs[3] = {1, ctx_len, u->cross_attention_dim};
    gnr_capture *ref = calloc(1, sizeof *ref), *cur = calloc(1, sizeof *cur);
    double *values = NULL; /* each term's capture's energy, unscaled */
    gnr_tape tape;
    memset(&tape, 0, sizeof tape);
    gnr_tensor z, c, y;
    gnr_status st = GNR_OK;
    if (!ref || !cur) GNR_CHECK(st, gnr_error(GNR_ERR_NOMEM, "out of host memory for the capture request"));
    GNR_CHECK(st, build_request(terms, nterms, ref));
    *cur = *ref;
    /* The backward computes every map energy of a recorded layer on its way,
     * from the queries and keys it computes again */
    cur->qk_for_backward_only = dlatent || dcontext;

    /* Reference pass: no tape; only its captures (in ctx->keep) survive. */
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    GNR_CHECK(st, gnr_upload_new(ctx, ref_latent, 4, zs, &z));
    GNR_CHECK(st, gnr_upload_new(ctx, ref_context, 3, cs, &c));
    GNR_CHECK(st, unet_forward(ctx, &m->unet, &z, timestep, &c, ref, &y));
    GNR_CHECK(st, gnr_capture_check_found(ref));
    gnr_arena_release(ctx->arena, mark);
    GNR_CHECK(st, gnr_check_cancel(ctx));

    /* Recorded pass: the latent and context are the tape's leaves. */
    GNR_CHECK(st, gnr_tape_init(&tape, cur));
    GNR_CHECK(st, gnr_upload_new(ctx, latent, 4, zs, &z));
    GNR_CHECK(st, gnr_upload_new(ctx, context, 3, cs, &c));
    if (dlatent) GNR_CHECK(st, gnr_tape_leaf(&tape, &z));
    GNR_CHECK(st, dcontext ? gnr_tape_leaf(&tape, &c) : gnr_tape_constant(&tape, &c));
    mark = gnr_arena_get_mark(ctx->arena);
    ctx->tape = &tape;
    ctx->checkpointing = checkpointing;
    st = unet_forward(ctx, &m->unet, &z, timestep, &c, cur, &y);
    ctx->tape = NULL;
    ctx->checkpointing = 0;
    if (st != GNR_OK) goto done;
    /* The tape saved what its backward reads (ctx->keep): the forward's
     * activations go before the backward. */
    gnr_arena_release(ctx->arena, mark);

    /* The seeds: each capture's gradient enters the backward where the tape
     * replays the op that produced it. An attention map's energy comes out
     * of that backward, which makes both maps anyway; the rest (and a map
     * whose backward did not run) after it, from the captures. */
    int nvalues = 0;
    for (int i = 0; i < nterms; i++) nvalues += terms[i].ncaptures;
    values = malloc((size_t)(nvalues ? nvalues : 1) * sizeof *values);
    if (!values) GNR_CHECK(st, gnr_error(GNR_ERR_NOMEM, "out of host memory for the energy terms"));
    for (int i = 0, n = 0; i < nterms; i++) {
        const gnr_energy_term *t = &terms[i];
        for (int j = 0; j < t->ncaptures; j++, n++) {
            values[n] = NAN;
            if (dlatent || dcontext)
                GNR_CHECK(st, gnr_tape_seed_capture(&tape, gnr_capture_index(cur, t->captures[j]), term_kind(t), ref,
                                                    gnr_capture_index(ref, t->captures[j]), t->scale, &values[n]));
        }
    }
    if (dlatent || dcontext) {
        GNR_CHECK(st, gnr_tape_backward(ctx, &tape));
        GNR_CHECK(st, download_grad(ctx, &tape, &z, dlatent));
        GNR_CHECK(st, download_grad(ctx, &tape, &c, dcontext));
    }
    double e = 0.0;
    for (int i = 0, n = 0; i < nterms; i++) {
        const gnr_energy_term *t = &terms[i];
        for (int j = 0; j < t->ncaptures; j++, n++) {
            int ci = gnr_capture_index(cur, t->captures[j]);
            if (isnan(values[n])) {
                if (!cur->found[ci])
                    GNR_CHECK(st, gnr_error(GNR_ERR_INTERNAL, "no energy for capture '%s'", t->captures[j]));
                GNR_CHECK(st, gnr_capture_energy(ctx, term_kind(t), cur, ci, ref, ci, &values[n]));
            }
            e += (double)t->scale * values[n];
        }
    }
    *energy = e;
done:
    ctx->tape = NULL;
    ctx->checkpointing = 0;
    if (tape.seeds) gnr_tape_free(&tape);
    free(values);
    free(ref);
    free(cur);
    return gnr_pass_end(m, st);
}
