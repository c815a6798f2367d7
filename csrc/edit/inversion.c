/* DDIM inversion (GNR_SPEC.md section 4, `dummy`): the chain of latents from
 * the clean image latent up to the start of editing. */
#include "ddim.h"
#include "job.h"

gnr_status gnr_invert(gnr_model *m, const float *z0, int h, int w, const float *c_src, int ctx_len, int num_steps,
                      const gnr_hooks *hooks, float *chain)
{
    GNR_TRY(gnr_check_latent_size(m, h, w));
    if (num_steps < 1 || num_steps > GNR_TRAIN_STEPS)
        return gnr_error(GNR_ERR_VALUE, "num_steps must be in [1, %d], got %d", GNR_TRAIN_STEPS, num_steps);
    GNR_TRY(gnr_pass_begin(m));
    gnr_ctx *ctx = &m->ctx;
    const gnr_unet_config *u = &m->cfg.unet;
    int64_t zs[4] = {1, u->in_channels, h, w}, cs[3] = {1, ctx_len, u->cross_attention_dim};
    int64_t n = (int64_t)u->in_channels * h * w;
    float abar[GNR_TRAIN_STEPS];
    gnr_ddim_alphas_cumprod(abar);
    int64_t all[4] = {num_steps + 1, u->in_channels, h, w};
    gnr_tensor z, c, eps, tmp, links;
    gnr_status st;
    /* The chain stays on the device and comes back once, at the end. */
    GNR_CHECK(st, job_state(m, 4, all, &links));
    GNR_CHECK(st, job_state(m, 4, zs, &z));
    GNR_CHECK(st, job_state(m, 4, zs, &eps));
    GNR_CHECK(st, job_state(m, 4, zs, &tmp));
    GNR_CHECK(st, job_state(m, 3, cs, &c));
    GNR_CHECK(st, gnr_upload(ctx, z0, &z));
    GNR_CHECK(st, gnr_upload(ctx, c_src, &c));
    gnr_tensor link = gnr_reshape(links, 4, zs);
    GNR_CHECK(st, gnr_copy(ctx, &z, &link));
    for (int i = 0; i < num_steps; i++) {
        int t = gnr_ddim_timestep(num_steps, num_steps - 1 - i); /* 0, step, 2 step, ... */
        GNR_CHECK(st, job_poll(m, hooks));
        GNR_CHECK(st, job_unet(m, &z, t, &c, NULL, NULL, 0, NULL, &eps));
        GNR_CHECK(st, gnr_ddim_step(ctx, abar[t], gnr_ddim_next_alpha(abar, num_steps, t, 1), &z, &eps, &tmp, &z));
        link.data = (char *)links.data + (size_t)(i + 1) * n * sizeof(float);
        GNR_CHECK(st, gnr_copy(ctx, &z, &link));
        GNR_CHECK(st, job_step(m, hooks, GNR_PHASE_INVERSION, i + 1, num_steps, 0, &z));
    }
    GNR_CHECK(st, gnr_download(ctx, &links, chain));
done:
    return gnr_pass_end(m, st);
}
