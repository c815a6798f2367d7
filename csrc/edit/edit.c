/* The Guide-and-Rescale editing loop (GNR_SPEC.md sections 5 to 7).
 *
 * Step k at t = tau_k, with z_inv = chain[N - k]:
 *   uncond   eps_u   = unet(z, t, c_uncond)
 *   inv_inv          = unet(z_inv, t, c_src)   captures only (the energies' reference)
 *   cur_inv  eps_src = unet(z, t, c_src)       recorded when an energy on it is kept
 *   cur_trg  eps_trg = unet(z, t, c_trg)       recorded when features_map_l2 is kept
 *   eps_hat = eps_u + sum(gradient-free terms) + scale_other * dE/dz
 *   z = ddim_step(eps_hat)
 * A step is planned (which passes its guiders use; guiders.c), its passes
 * run, the gradient-free terms are combined into eps_hat (guiders.c), and the
 * energy gradient is rescaled (rescale.c) and added. Energies are separable
 * by pass (cur_inv's guiders never look at cur_trg and vice versa), so dE/dz
 * is the sum of one backward per recorded pass, and only one pass's internals
 * are held at a time. */
#include <stdlib.h>
#include <string.h>

#include "guiders.h"
#include "job.h"
#include "rescale.h"

/* The arguments only an edit has (job_begin checks the shared ones). */
static gnr_status check_edit_config(const gnr_edit_config *cfg)
{
    int N = cfg->num_steps;
    if (cfg->begin < 0 || cfg->end > N || cfg->begin >= cfg->end)
        return gnr_error(GNR_ERR_VALUE, "steps [%d, %d) are not a non-empty range within [0, %d)", cfg->begin,
                         cfg->end, N);
    if (cfg->range_rescale && !(cfg->lo > 0.0 && cfg->lo <= cfg->hi))
        return gnr_error(GNR_ERR_VALUE, "rescaler range [%g, %g] must satisfy 0 < lo <= hi", cfg->lo, cfg->hi);
    for (int i = 0; i < cfg->nguiders; i++)
        if (cfg->guiders[i].kind < GNR_GUIDER_CFG || cfg->guiders[i].kind > GNR_GUIDER_SELF_ATTN_APPEARANCE)
            return gnr_error(GNR_ERR_VALUE, "guider %d: unknown kind %d", i, (int)cfg->guiders[i].kind);
    return GNR_OK;
}

/* The device tensors of an edit, in the state arena. */
typedef struct {
    gnr_tensor chain, unc, src, trg;       /* the inputs: inversion chain, uncond context(s), c_src, c_trg */
    gnr_tensor z, eps_u, eps_src, eps_trg; /* the latent and the passes' noise predictions */
    gnr_tensor g, term, eps_hat, tmp;      /* dE/dz, a guider's term, the estimate, DDIM scratch */
    gnr_tensor z_inv, c_unc;               /* views of the step's chain latent and uncond context */
    int uncond_per_step;
} edit_state;

/* One of the two current-latent passes (PASS_CUR_INV with c_src, PASS_CUR_TRG
 * with c_trg): eps into `eps`, and when an energy of this pass is kept, its
 * gradient added to `g` (*have_g set). */
static gnr_status current_pass(gnr_model *m, const gnr_edit_config *cfg, int k, int pass, int t, const gnr_tensor *z,
                               const gnr_tensor *c, const gnr_capture *ref, gnr_tensor *eps, gnr_tensor *g,
                               int *have_g)
{
    gnr_ctx *ctx = &m->ctx;
    gnr_capture *cur = malloc(sizeof *cur);
    if (!cur) return gnr_error(GNR_ERR_NOMEM, "out of host memory for a capture request");
    /* This pass's captures and what its tape saved (ctx->keep) go with it;
     * the inv_inv captures below the mark stay for the next pass. */
    gnr_arena_mark km = gnr_arena_get_mark(ctx->keep);
    gnr_tape tape;
    memset(&tape, 0, sizeof tape);
    gnr_tensor leaf;
    gnr_status st;
    GNR_CHECK(st, guiders_capture_request(cfg, k, pass, cur));
    if (cur->n == 0) {
        st = job_unet(m, z, t, c, NULL, NULL, 0, NULL, eps);
        goto done;
    }
    GNR_CHECK(st, gnr_tape_init(&tape, cur));
    GNR_CHECK(st, job_unet(m, z, t, c, cur, &tape, cfg->checkpointing, &leaf, eps));
    GNR_CHECK(st, gnr_capture_check_found(cur));
    int kept;
    GNR_CHECK(st, guiders_seed_energies(ctx, cfg, k, pass, cur, ref, &tape, &kept));
    if (kept) {
        GNR_CHECK(st, gnr_tape_backward(ctx, &tape));
        gnr_tensor dz = gnr_tape_grad(&tape, &leaf);
        if (dz.data) GNR_CHECK(st, gnr_axpy(ctx, 1.0f, &dz, g));
        *have_g = 1; /* a kept energy with no path to z is a gradient of 0 */
    }
done:
    if (tape.seeds) gnr_tape_free(&tape);
    gnr_arena_reset(ctx->arena);
    gnr_arena_release(ctx->keep, km);
    free(cur);
    return st;
}

/* The passes step k's plan asks for (GNR_SPEC.md section 5): eps_u, the
 * inv_inv captures into `ref`, eps_src and eps_trg, and dE/dz into s->g
 * (*have_g: whether any energy was kept). eps_u and the current passes that
 * record nothing run first as one batch (job_unet_batch). inv_inv runs on
 * its own, as the recorded passes do: its maps must equal a recorded pass's
 * bit for bit on the same input (at step 0 z = z_inv, and the energies are
 * exactly 0, as the reference has them), which a product of another shape
 * does not promise. */
static gnr_status run_passes(gnr_model *m, const gnr_edit_config *cfg, const step_plan *plan, int k, int t,
                             edit_state *s, gnr_capture *ref, const gnr_hooks *hooks, int *have_g)
{
    const gnr_tensor *zs[JOB_MAX_BATCH] = {&s->z}, *cs[JOB_MAX_BATCH] = {&s->c_unc};
    gnr_tensor *eps[JOB_MAX_BATCH] = {&s->eps_u};
    int n = 1;
    int rec_inv = plan->cur_inv && guiders_pass_recorded(cfg, k, PASS_CUR_INV);
    int rec_trg = plan->cur_trg && guiders_pass_recorded(cfg, k, PASS_CUR_TRG);
    if (plan->cur_inv && !rec_inv) zs[n] = &s->z, cs[n] = &s->src, eps[n++] = &s->eps_src;
    if (plan->cur_trg && !rec_trg) zs[n] = &s->z, cs[n] = &s->trg, eps[n++] = &s->eps_trg;
    GNR_TRY(job_poll(m, hooks));
    GNR_TRY(job_unet_batch(m, n, zs, t, cs, eps));
    if (plan->inv_inv) {
        GNR_TRY(job_poll(m, hooks));
        GNR_TRY(guiders_capture_request(cfg, k, PASS_INV_INV, ref));
        GNR_TRY(job_unet(m, &s->z_inv, t, &s->src, ref, NULL, 0, NULL, NULL));
        GNR_TRY(gnr_capture_check_found(ref));
    }
    *have_g = 0;
    GNR_TRY(gnr_fill(&m->ctx, &s->g, 0.0f));
    if (rec_inv) {
        GNR_TRY(job_poll(m, hooks));
        GNR_TRY(current_pass(m, cfg, k, PASS_CUR_INV, t, &s->z, &s->src, ref, &s->eps_src, &s->g, have_g));
    }
    if (rec_trg) {
        GNR_TRY(job_poll(m, hooks));
        GNR_TRY(current_pass(m, cfg, k, PASS_CUR_TRG, t, &s->z, &s->trg, ref, &s->eps_trg, &s->g, have_g));
    }
    return GNR_OK;
}

/* Step k: plan, passes, eps_hat = eps_u + gradient-free terms + scale_other * g,
 * then the DDIM step of s->z. */
static gnr_status edit_step(gnr_model *m, const job *j, const gnr_edit_config *cfg, edit_state *s, int k,
                            gnr_capture *ref, const gnr_hooks *hooks)
{
    gnr_ctx *ctx = &m->ctx;
    int N = j->num_steps, t = gnr_ddim_timestep(N, k);
    s->z_inv = job_item(&s->chain, 4, j->latent, N - k);
    s->c_unc = job_item(&s->unc, 3, j->context, s->uncond_per_step ? k : 0);
    gnr_arena_reset(ctx->keep);

    step_plan plan = guiders_plan_step(cfg, k);
    int have_g;
    GNR_TRY(run_passes(m, cfg, &plan, k, t, s, ref, hooks, &have_g));

    step_outputs o = {&s->eps_u, &s->eps_src, &s->eps_trg, &s->z, &s->z_inv};
    double cfg_norm;
    GNR_TRY(guiders_combine(ctx, cfg, k, &o, &s->term, &s->eps_hat, &cfg_norm));
    if (have_g) {
        GNR_TRY(rescale_energy_gradient(ctx, cfg, cfg_norm, &s->g));
        GNR_TRY(gnr_axpy(ctx, 1.0f, &s->g, &s->eps_hat));
    }
    GNR_TRY(gnr_ddim_step(ctx, j->abar[t], gnr_ddim_next_alpha(j->abar, N, t, 0), &s->z, &s->eps_hat, &s->tmp,
                          &s->z));
    return job_step(m, hooks, GNR_PHASE_EDIT, k + 1, N, have_g, &s->z);
}

gnr_status gnr_edit(gnr_model *m, const gnr_edit_config *cfg, const float *chain, int h, int w,
                    const float *uncond, int uncond_per_step, const float *c_src, const float *c_trg, int ctx_len,
                    const float *z_start, const gnr_hooks *hooks, float *z_out, float *eps_out)
{
    GNR_TRY(check_edit_config(cfg));
    job j;
    GNR_TRY(job_begin(m, h, w, ctx_len, cfg->num_steps, &j));
    gnr_ctx *ctx = &m->ctx;
    int N = cfg->num_steps;
    int64_t unc_shape[4] = {uncond_per_step ? N : 1, 1, ctx_len, j.context[2]};
    edit_state s = {.uncond_per_step = uncond_per_step};
    gnr_capture *ref = malloc(sizeof *ref);
    gnr_status st = GNR_OK;
    if (!ref) GNR_CHECK(st, gnr_error(GNR_ERR_NOMEM, "out of host memory for a capture request"));

    /* Everything the loop needs goes to the device once. */
    GNR_CHECK(st, job_upload(m, 4, j.chain, chain, &s.chain));
    GNR_CHECK(st, job_upload(m, 4, unc_shape, uncond, &s.unc));
    GNR_CHECK(st, job_upload(m, 3, j.context, c_src, &s.src));
    GNR_CHECK(st, job_upload(m, 3, j.context, c_trg, &s.trg));
    GNR_CHECK(st, job_latents(m, &j, (gnr_tensor *const[]){&s.z, &s.eps_u, &s.eps_src, &s.eps_trg, &s.g, &s.term,
                                                          &s.eps_hat, &s.tmp, NULL}));
    if (z_start) {
        GNR_CHECK(st, gnr_upload(ctx, z_start, &s.z));
    } else {
        gnr_tensor z_inv = job_item(&s.chain, 4, j.latent, N - cfg->begin);
        GNR_CHECK(st, gnr_copy(ctx, &z_inv, &s.z));
    }
    for (int k = cfg->begin; k < cfg->end; k++) GNR_CHECK(st, edit_step(m, &j, cfg, &s, k, ref, hooks));
    GNR_CHECK(st, gnr_download(ctx, &s.z, z_out));
    if (eps_out) GNR_CHECK(st, gnr_download(ctx, &s.eps_hat, eps_out));
done:
    free(ref);
    return gnr_pass_end(m, st);
}
