/* UNet2DConditionModel (diffusers) for the Stable Diffusion 1.x and 2.x block
 * types: CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn,
 * UpBlock2D / CrossAttnUpBlock2D; heads per level (SD 2.x: 5, 10, 20, 20 of
 * 64 channels each; the mid block takes the last level's, up block i the
 * mirrored down block's), and Linear or 1x1-conv transformer projections.
 * The output is the raw prediction (eps or v, gnr_unet_config.prediction):
 * the editing jobs convert v to eps (csrc/edit/job.c).
 *
 * Capture points (gnr_capture names): "down_blocks.i.resnets.j",
 * "up_blocks.i.resnets.j", "up_blocks.i" (the block's output, after its
 * upsampler), "mid_block", "conv_norm_out" (the GroupNorm before the final
 * SiLU), and every self-attention map
 * "<down_blocks.i|mid_block|up_blocks.i>.attentions.j.transformer_blocks.k.attn1.probs". */
#ifndef GNR_MODELS_UNET_H
#define GNR_MODELS_UNET_H

#include "gnr.h"
#include "layers.h"

#define GNR_MAX_LAYERS 4 /* resnets per up block: layers_per_block + 1 */
/* block_out_channels[0]: the width of the sinusoidal time embedding, built in
 * a buffer of this many floats (SD 1.x uses 320). */
#define GNR_UNET_MAX_BASE_CHANNELS 1280

typedef struct {
    int nres;
    resnet_w res[GNR_MAX_LAYERS];
    int has_attn;
    transformer_w attn[GNR_MAX_LAYERS];
    int has_resample;
    resample_w resample;
    char name[GNR_MODULE_NAME_MAX];
} unet_block_w;

typedef struct {
    gnr_unet_config cfg;
    linear_w time_1, time_2;
    linear_w conv_in, conv_out;
    unet_block_w down[GNR_MAX_BLOCKS], up[GNR_MAX_BLOCKS];
    resnet_w mid_res[2];
    transformer_w mid_attn;
    norm_w norm_out;
} unet_w;

/* cfg has passed the model's config check (csrc/model.c): its counts fit the
 * arrays above. */
gnr_status unet_declare(gnr_weights *ws, const gnr_unet_config *cfg, unet_w *u);

/* latent: 1 x in_channels x h x w (h, w multiples of 2^(num_blocks-1)),
 * context: 1 x L x cross_attention_dim. out: 1 x out_channels x h x w,
 * allocated from the arena. */
gnr_status unet_forward(gnr_ctx *ctx, const unet_w *u, const gnr_tensor *latent, int timestep,
                        const gnr_tensor *context, gnr_capture *cap, gnr_tensor *out);

/* Names of the self-attention maps in forward order, split by part
 * (0 down, 1 mid, 2 up): fills names (up to max) and returns the count. */
int unet_self_attention_names(const unet_w *u, int part, const char **names, int max);
/* Names of the feature capture points in forward order (same contract). */
int unet_feature_names(const unet_w *u, const char **names, int max);

#endif
