/* The guiders of the editing loop (GNR_SPEC.md sections 5 and 6): which
 * passes and captures each needs at a step, and what each adds to the noise
 * estimate.
 *
 * Gradient-free guiders (cfg, latents_diff) add a term made from the noise
 * predictions and latents of the step. Energy guiders (features_map_l2,
 * self_attn_map_l2, its appearance variant) compare the captures of a pass on
 * the current latent with those of the inv_inv pass; their terms are seeded
 * into the pass's tape and reach the estimate through dE/dz. */
#ifndef GNR_EDIT_GUIDERS_H
#define GNR_EDIT_GUIDERS_H

#include "gnr.h"
#include "grad/tape.h"

/* The passes an energy guider's captures come from. */
enum { PASS_INV_INV = -1, PASS_CUR_INV = 0, PASS_CUR_TRG = 1 };

/* The passes step k runs besides the unconditional one: a pass nothing uses
 * at a step is skipped. */
typedef struct {
    int inv_inv; /* unet(z_inv, t, c_src), for its captures: some energy is active */
    int cur_inv; /* unet(z, t, c_src): a source cfg guider, or an energy on this pass */
    int cur_trg; /* unet(z, t, c_trg): a cfg guider, or an energy on this pass */
} step_plan;

step_plan guiders_plan_step(const gnr_edit_config *cfg, int k);

/* The captures pass `pass` (PASS_*) must keep at step k: those of the
 * guiders active on it (PASS_INV_INV: of every active energy guider). */
gnr_status guiders_capture_request(const gnr_edit_config *cfg, int k, int pass, gnr_capture *cap);
/* Whether that request is not empty for a current pass (PASS_CUR_*): the
 * pass is then recorded for a backward, else it is a plain pass. */
int guiders_pass_recorded(const gnr_edit_config *cfg, int k, int pass);

/* The energies of `pass`'s guiders at step k from its captures `cur` and the
 * inv_inv captures `ref`: each term s * E_g is computed, dropped when
 * |s E_g| <= 1e-8, else seeded into `tape`. *kept: whether any term was kept
 * (a backward is then due). */
gnr_status guiders_seed_energies(gnr_ctx *ctx, const gnr_edit_config *cfg, int k, int pass, const gnr_capture *cur,
                                 const gnr_capture *ref, gnr_tape *tape, int *kept);

/* What the gradient-free guiders read at a step. */
typedef struct {
    const gnr_tensor *eps_u, *eps_src, *eps_trg; /* noise predictions of the uncond, cur_inv and cur_trg passes */
    const gnr_tensor *z, *z_inv;                 /* the current latent and its inversion twin */
} step_outputs;

/* eps_hat = eps_u + the gradient-free guiders' terms at step k, added in
 * guider order (term: scratch of the latent's shape). *cfg_norm: the norm of
 * the cfg term, the rescaler's reference (0 without one). */
gnr_status guiders_combine(gnr_ctx *ctx, const gnr_edit_config *cfg, int k, const step_outputs *o, gnr_tensor *term,
                           gnr_tensor *eps_hat, double *cfg_norm);

#endif
