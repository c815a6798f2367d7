/* DDIM on device tensors (GNR_SPEC.md section 2). */
#ifndef GNR_EDIT_DDIM_H
#define GNR_EDIT_DDIM_H

#include "ops.h"

#define GNR_TRAIN_STEPS 1000

/* abar of the step that follows t when denoising (t - 1000/N, or abar[0]
 * past the end) and when inverting (t + 1000/N, or abar[999]). */
float gnr_ddim_next_alpha(const float *abar, int num_steps, int t, int inverting);

/* out = sqrt(a_s) * x0 + sqrt(1 - a_s) * e  with  x0 = (z - sqrt(1 - a_t) e) / sqrt(a_t).
 * out may alias z; tmp is scratch of the latent's shape. */
gnr_status gnr_ddim_step(gnr_ctx *ctx, float a_t, float a_s, const gnr_tensor *z, const gnr_tensor *e,
                         gnr_tensor *tmp, gnr_tensor *out);

/* The noise the UNet's velocity prediction v at t stands for, as the DDIM
 * scheduler converts it: eps = sqrt(a_t) * v + sqrt(1 - a_t) * z, with z the
 * latent the UNet was given at t and a_t = abar[t]. eps may alias v. */
gnr_status gnr_ddim_eps_from_v(gnr_ctx *ctx, float a_t, const gnr_tensor *z, const gnr_tensor *v, gnr_tensor *eps);

#endif
