/* What the long jobs (inversion, null-text inversion, editing) share: their
 * common arguments checked and the model taken in one call, the host hooks
 * between passes, state tensors that live for the whole job, and UNet passes
 * on device tensors that keep nothing in the pass arena afterwards. */
#ifndef GNR_EDIT_JOB_H
#define GNR_EDIT_JOB_H

#include "ddim.h"
#include "grad/tape.h"
#include "model_internal.h"

/* The shapes and the DDIM schedule of a job over num_steps steps, latents of
 * h x w and contexts of ctx_len tokens. */
typedef struct {
    int num_steps;
    int64_t latent[4];  /* 1 x C x h x w */
    int64_t context[3]; /* 1 x ctx_len x D */
    int64_t chain[4];   /* num_steps + 1 latents */
    float abar[GNR_TRAIN_STEPS];
} job;

/* Checks the latent size and num_steps (GNR_ERR_VALUE), then takes the model
 * (gnr_pass_begin: the job ends with gnr_pass_end) and fills *j. */
gnr_status job_begin(gnr_model *m, int h, int w, int ctx_len, int num_steps, job *j);

/* Item i of `stack`, a run of equal tensors of `shape` (a view). */
gnr_tensor job_item(const gnr_tensor *stack, int ndim, const int64_t *shape, int i);

/* GNR_ERR_CANCELLED when the host's poll or the model's flag says stop. */
gnr_status job_poll(gnr_model *m, const gnr_hooks *hooks);
/* Reports a finished step (downloading the latent when the host wants it). */
gnr_status job_step(gnr_model *m, const gnr_hooks *hooks, int phase, int done, int total, int guided,
                    const gnr_tensor *latent);

/* A float32 tensor from the state arena (lives until the job ends). */
gnr_status job_state(gnr_model *m, int ndim, const int64_t *shape, gnr_tensor *out);
/* job_state holding a copy of the host array `host`. */
gnr_status job_upload(gnr_model *m, int ndim, const int64_t *shape, const float *host, gnr_tensor *out);
/* State tensors of the job's latent shape, one for each entry of the
 * NULL-terminated list `out`. */
gnr_status job_latents(gnr_model *m, const job *j, gnr_tensor *const *out);

/* eps from the raw UNet output y of the pass on latent z at t: a copy for an
 * eps-predicting model, gnr_ddim_eps_from_v with abar[t] for a v-predicting
 * one. eps may alias y. */
gnr_status job_noise(gnr_model *m, const gnr_tensor *z, int t, const gnr_tensor *y, gnr_tensor *eps);

/* eps = unet(z, t, c) into a state tensor, always the noise: a v-predicting
 * UNet's output is converted with abar[t] of this pass's t (job_noise), so
 * every consumer (DDIM steps, inversion, null-text inversion, the guiders
 * and the rescaler) works in noise space. Captures (cap may be NULL) go to
 * ctx->keep. With `tape`, the pass is recorded with a copy of z as its leaf
 * (*leaf receives it) and the pass arena is kept for the backward; the
 * caller resets it. Without, the pass arena is reset here. */
gnr_status job_unet(gnr_model *m, const gnr_tensor *z, int t, const gnr_tensor *c, gnr_capture *cap,
                    gnr_tape *tape, int checkpointing, gnr_tensor *leaf, gnr_tensor *eps);

/* Up to JOB_MAX_BATCH plain passes at one timestep, no captures: eps[i] =
 * unet(z[i], t, c[i]) as job_unet makes it. With batching on
 * (job_batching), they run as one batch, which reads the weights once for
 * all of them: that pays where a pass is bound by its weights or its
 * launches (the low-resolution blocks, small images, a GPU). Each item
 * matches its own pass up to the rounding of products of another shape. A
 * batch that does not fit in memory falls back to one pass at a time. */
#define JOB_MAX_BATCH 3
gnr_status job_unet_batch(gnr_model *m, int n, const gnr_tensor *const *z, int t, const gnr_tensor *const *c,
                          gnr_tensor *const *eps);
/* Whether job_unet_batch batches: on, unless GNR_BATCH_PASSES=0. */
int job_batching(void);

#endif
