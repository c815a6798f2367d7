/* AutoencoderKL (diffusers): the encoder up to the mean of the latent
 * distribution, and the decoder. */
#ifndef GNR_MODELS_VAE_H
#define GNR_MODELS_VAE_H

#include "gnr.h"
#include "layers.h"

#define GNR_VAE_MAX_LAYERS 4

typedef struct {
    int nres;
    resnet_w res[GNR_VAE_MAX_LAYERS];
    int has_resample;
    resample_w resample;
} vae_block_w;

typedef struct {
    linear_w conv_in, conv_out;
    vae_block_w blocks[GNR_MAX_BLOCKS];
    resnet_w mid_res[2];
    int has_mid_attn;
    spatial_attn_w mid_attn;
    norm_w norm_out;
} vae_coder_w;

typedef struct {
    gnr_vae_config cfg;
    vae_coder_w enc, dec;
    linear_w quant, post_quant; /* w NULL when the config has none */
} vae_w;

/* cfg has passed the model's config check (csrc/model.c). */
gnr_status vae_declare(gnr_weights *ws, const gnr_vae_config *cfg, vae_w *v);

/* image: 1 x in_channels x H x W in [-1, 1] -> mean: 1 x latent_channels x H/f x W/f
 * (NOT multiplied by the scaling factor). */
gnr_status vae_encode_mean(gnr_ctx *ctx, const vae_w *v, const gnr_tensor *image, gnr_tensor *mean);
/* z: 1 x latent_channels x h x w, already divided by the scaling factor
 * -> 1 x out_channels x h*f x w*f. */
gnr_status vae_decode(gnr_ctx *ctx, const vae_w *v, const gnr_tensor *z, gnr_tensor *image);

#endif
