/* CLIPTextModel (transformers): token + position embeddings, pre-LN
 * transformer layers with causal self-attention, final LayerNorm. The output
 * is the last hidden state (text_encoder(ids)[0]). */
#ifndef GNR_MODELS_CLIP_TEXT_H
#define GNR_MODELS_CLIP_TEXT_H

#include "gnr.h"
#include "layers.h"

#define GNR_MAX_TEXT_LAYERS 48

typedef struct {
    norm_w ln1, ln2;
    attn_w attn;
    linear_w fc1, fc2;
} clip_layer_w;

typedef struct {
    gnr_text_config cfg;
    gnr_tensor *token_embedding, *position_embedding;
    clip_layer_w layers[GNR_MAX_TEXT_LAYERS];
    norm_w final_ln;
} clip_text_w;

/* cfg has passed the model's config check (csrc/model.c). */
gnr_status clip_text_declare(gnr_weights *ws, const gnr_text_config *cfg, clip_text_w *c);
/* ids: max_positions host int32 in [0, vocab) -> out: 1 x max_positions x hidden (arena). */
gnr_status clip_text_forward(gnr_ctx *ctx, const clip_text_w *c, const int32_t *ids, gnr_tensor *out);

#endif
