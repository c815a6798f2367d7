/* The inside of gnr_model, for engine code that drives passes itself (the
 * editing loop in csrc/edit). Nothing outside csrc/ sees this. */
#ifndef GNR_MODEL_INTERNAL_H
#define GNR_MODEL_INTERNAL_H

#include "gnr.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"

struct gnr_model {
    gnr_model_config cfg;
    gnr_weights weights;
    clip_text_w text;
    unet_w unet;
    vae_w vae;
    gnr_ctx ctx;            /* ctx.arena: one pass; ctx.keep: captures of a step */
    gnr_arena *state;       /* what outlives passes in a long job: latents, contexts, predictions */
    const gnr_backend *backend;
    int finalized;
    int busy;
    volatile int cancel;
};

/* Takes the model for one job (GNR_ERR_VALUE "model is busy" if another
 * thread has it) and resets the arenas; gnr_pass_end releases it and
 * returns `st`. */
gnr_status gnr_pass_begin(gnr_model *m);
gnr_status gnr_pass_end(gnr_model *m, gnr_status st);

/* A new arena tensor holding a host array. */
gnr_status gnr_upload_new(gnr_ctx *ctx, const float *host, int ndim, const int64_t *shape, gnr_tensor *t);
gnr_status gnr_check_latent_size(const gnr_model *m, int h, int w);

#endif
