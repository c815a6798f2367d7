#include "clip_text.h"

#include <string.h>

static const char *const CLIP_ATTN[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

gnr_status clip_text_declare(gnr_weights *ws, const gnr_text_config *cfg, clip_text_w *c)
{
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    int64_t d = cfg->hidden_size;
    int64_t tok[2] = {cfg->vocab_size, d}, pos[2] = {cfg->max_positions, d};
    GNR_TRY(gnr_weights_declare(ws, "text_encoder.text_model.embeddings.token_embedding", "weight", 2, tok,
                                &c->token_embedding));
    GNR_TRY(gnr_weights_declare(ws, "text_encoder.text_model.embeddings.position_embedding", "weight", 2, pos,
                                &c->position_embedding));
    char p[160];
    for (int i = 0; i < cfg->num_layers; i++) {
        clip_layer_w *l = &c->layers[i];
        GNR_TRY(gnr_fmt(p, sizeof p, "text_encoder.text_model.encoder.layers.%d.layer_norm1", i));
        GNR_TRY(declare_norm(ws, p, d, &l->ln1));
        GNR_TRY(gnr_fmt(p, sizeof p, "text_encoder.text_model.encoder.layers.%d.self_attn", i));
        GNR_TRY(attn_declare(ws, p, CLIP_ATTN, (int)d, (int)d, cfg->num_heads, 1, &l->attn));
        GNR_TRY(gnr_fmt(p, sizeof p, "text_encoder.text_model.encoder.layers.%d.layer_norm2", i));
        GNR_TRY(declare_norm(ws, p, d, &l->ln2));
        GNR_TRY(gnr_fmt(p, sizeof p, "text_encoder.text_model.encoder.layers.%d.mlp.fc1", i));
        GNR_TRY(declare_linear(ws, p, d, cfg->intermediate_size, 1, &l->fc1));
        GNR_TRY(gnr_fmt(p, sizeof p, "text_encoder.text_model.encoder.layers.%d.mlp.fc2", i));
        GNR_TRY(declare_linear(ws, p, cfg->intermediate_size, d, 1, &l->fc2));
    }
    return declare_norm(ws, "text_encoder.text_model.final_layer_norm", d, &c->final_ln);
}

gnr_status clip_text_forward(gnr_ctx *ctx, const clip_text_w *c, const int32_t *ids, gnr_tensor *out)
{
    const gnr_text_config *cfg = &c->cfg;
    int64_t L = cfg->max_positions, d = cfg->hidden_size;
    for (int64_t i = 0; i < L; i++)
        if (ids[i] < 0 || ids[i] >= cfg->vocab_size)
            return gnr_error(GNR_ERR_VALUE, "token id %d at position %lld is outside the vocabulary [0, %d)", ids[i],
                             (long long)i, cfg->vocab_size);
    gnr_act act = cfg->act == GNR_TEXT_ACT_GELU ? GNR_ACT_GELU : GNR_ACT_QUICK_GELU;
    nn_scope sc = nn_scope_begin(ctx);
    gnr_tensor tok, x, n, a, h, f, g;
    GNR_TRY(gnr_alloc3(ctx, 1, L, d, &tok));
    GNR_TRY(gnr_embedding_forward(ctx, c->token_embedding, ids, L, &tok));
    int64_t shape[3] = {1, L, d};
    gnr_tensor pos = gnr_reshape(*c->position_embedding, 3, shape);
    GNR_TRY(nn_add(ctx, &tok, &pos, &x));
    for (int i = 0; i < cfg->num_layers; i++) {
        const clip_layer_w *l = &c->layers[i];
        nn_scope ls = nn_scope_begin(ctx);
        GNR_TRY(nn_layer_norm(ctx, &x, l->ln1.g, l->ln1.b, cfg->layer_norm_eps, &n));
        GNR_TRY(attn_forward(ctx, &l->attn, &n, NULL, 1, NULL, NULL, &a));
        GNR_TRY(nn_add(ctx, &x, &a, &h));
        GNR_TRY(nn_layer_norm(ctx, &h, l->ln2.g, l->ln2.b, cfg->layer_norm_eps, &n));
        GNR_TRY(nn_linear(ctx, &n, l->fc1.w, l->fc1.b, &f));
        GNR_TRY(nn_act(ctx, act, &f, &g));
        GNR_TRY(nn_linear(ctx, &g, l->fc2.w, l->fc2.b, &f));
        GNR_TRY(nn_add(ctx, &h, &f, &x));
        GNR_TRY(nn_scope_end(ctx, ls, &x));
    }
    GNR_TRY(nn_layer_norm(ctx, &x, c->final_ln.g, c->final_ln.b, cfg->layer_norm_eps, out));
    return nn_scope_end(ctx, sc, out);
}
