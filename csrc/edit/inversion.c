/* DDIM inversion (GNR_SPEC.md section 4, `dummy`): the chain of latents from
 * the clean image latent up to the start of editing. */
#include "job.h"

gnr_status gnr_invert(gnr_model *m, const float *z0, int h, int w, const float *c_src, int ctx_len, int num_steps,
                      const gnr_hooks *hooks, float *chain)
{
    job j;
    GNR_TRY(job_begin(m, h, w, ctx_len, num_steps, &j));
    gnr_ctx *ctx = &m->ctx;
    gnr_tensor z, c, eps, tmp, links;
    gnr_status st;
    /* The chain stays on the device and comes back once, at the end. */
    GNR_CHECK(st, job_state(m, 4, j.chain, &links));
    GNR_CHECK(st, job_latents(m, &j, (gnr_tensor *const[]){&z, &eps, &tmp, NULL}));
    GNR_CHECK(st, job_upload(m, 3, j.context, c_src, &c));
    GNR_CHECK(st, gnr_upload(ctx, z0, &z));
    gnr_tensor link = job_item(&links, 4, j.latent, 0);
    GNR_CHECK(st, gnr_copy(ctx, &z, &link));
    for (int i = 0; i < num_steps; i++) {
        int t = gnr_ddim_timestep(num_steps, num_steps - 1 - i); /* 0, step, 2 step, ... */
        GNR_CHECK(st, job_poll(m, hooks));
        GNR_CHECK(st, job_unet(m, &z, t, &c, NULL, NULL, 0, NULL, &eps));
        GNR_CHECK(st, gnr_ddim_step(ctx, j.abar[t], gnr_ddim_next_alpha(j.abar, num_steps, t, 1), &z, &eps, &tmp,
                                    &z));
        link = job_item(&links, 4, j.latent, i + 1);
        GNR_CHECK(st, gnr_copy(ctx, &z, &link));
        GNR_CHECK(st, job_step(m, hooks, GNR_PHASE_INVERSION, i + 1, num_steps, 0, &z));
    }
    GNR_CHECK(st, gnr_download(ctx, &links, chain));
done:
    return gnr_pass_end(m, st);
}
