/* What the long jobs (inversion, editing) share: the host hooks between
 * passes, and UNet passes on device tensors that keep nothing in the pass
 * arena afterwards. */
#ifndef GNR_EDIT_JOB_H
#define GNR_EDIT_JOB_H

#include "grad/tape.h"
#include "model_internal.h"

/* GNR_ERR_CANCELLED when the host's poll or the model's flag says stop. */
gnr_status job_poll(gnr_model *m, const gnr_hooks *hooks);
/* Reports a finished step (downloading the latent when the host wants it). */
gnr_status job_step(gnr_model *m, const gnr_hooks *hooks, int phase, int done, int total, int guided,
                    const gnr_tensor *latent);

/* A float32 tensor from the state arena (lives until the job ends). */
gnr_status job_state(gnr_model *m, int ndim, const int64_t *shape, gnr_tensor *out);

/* eps = unet(z, t, c) into a state tensor; captures (cap may be NULL) go to
 * ctx->keep. With `tape`, the pass is recorded with a copy of z as its leaf
 * (*leaf receives it) and the pass arena is kept for the backward; the
 * caller resets it. Without, the pass arena is reset here. */
gnr_status job_unet(gnr_model *m, const gnr_tensor *z, int t, const gnr_tensor *c, gnr_capture *cap,
                    gnr_tape *tape, int checkpointing, gnr_tensor *leaf, gnr_tensor *eps);

#endif
