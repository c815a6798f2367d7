/* Noise rescaling (GNR_SPEC.md section 7): the factor on the energy
 * gradient g before it joins the noise estimate. */
#ifndef GNR_EDIT_RESCALE_H
#define GNR_EDIT_RESCALE_H

#include "gnr.h"
#include "ops.h"

/* g *= scale_other. identity_rescaler: 1. range_other_on_cfg_norm [lo, hi]:
 * r = ||g|| / cfg_norm (1 when cfg_norm is 0), scale_other = clip(r, lo, hi) / r
 * (1 when ||g|| is 0); both norms rounded to float32 as the reference has them. */
gnr_status rescale_energy_gradient(gnr_ctx *ctx, const gnr_edit_config *cfg, double cfg_norm, gnr_tensor *g);

#endif
