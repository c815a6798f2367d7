/* Null-text inversion (GNR_SPEC.md section 4, `ntinv`): one unconditional
 * embedding per step, optimised with Adam so that classifier-free guided
 * DDIM steps from z*_N retrace the inversion chain.
 *
 * The loss of step k is mean((ddim_step(e) - z*_{N-k-1})^2) with
 * e = e_u + w (e_c - e_u), e_u = eps(z, t, u). Its gradient with respect to
 * u enters the backward at the UNet output y:
 *   dloss/dy = (1 - w) * coef * dedy * 2 (z' - target) / n,
 *   coef = dz'/de = sqrt(1 - a_s) - sqrt(a_s) sqrt(1 - a_t) / sqrt(a_t),
 *   dedy = 1 (y = e_u), or sqrt(a_t) for a v-predicting model
 *   (e_u = sqrt(a_t) y + sqrt(1 - a_t) z).
 * Adam runs on the host, in float32 with double scalars as torch's does; u
 * is 77 x 768, so the copies are negligible next to the UNet passes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

#define NT_ITERS 10
#define NT_BETA1 0.9f
#define NT_BETA2 0.999f
#define NT_EPS 1e-8f

/* torch.optim.Adam's step (no weight decay, no amsgrad) on n floats. */
static void adam_step(float *p, const float *g, float *m, float *v, int64_t n, int step, double lr)
{
    double bc1 = 1.0 - pow(0.9, step), bc2_sqrt = sqrt(1.0 - pow(0.999, step));
    float step_size = (float)(lr / bc1), b2s = (float)bc2_sqrt;
    for (int64_t i = 0; i < n; i++) {
        m[i] = m[i] + (1.0f - NT_BETA1) * (g[i] - m[i]); /* exp_avg.lerp_(grad, 1 - beta1) */
        v[i] = v[i] * NT_BETA2 + (1.0f - NT_BETA2) * (g[i] * g[i]);
        float denom = sqrtf(v[i]) / b2s + NT_EPS;
        p[i] = p[i] - step_size * (m[i] / denom);
    }
}

/* e = e_u + w (e_c - e_u) */
static gnr_status guided(gnr_ctx *ctx, const gnr_tensor *e_u, const gnr_tensor *e_c, float w, gnr_tensor *e)
{
    GNR_TRY(gnr_copy(ctx, e_c, e));
    GNR_TRY(gnr_axpy(ctx, -1.0f, e_u, e));
    GNR_TRY(gnr_scale(ctx, e, w, e));
    return gnr_axpy(ctx, 1.0f, e_u, e);
}

gnr_status gnr_null_text_invert(gnr_model *m, const float *chain, int h, int w, const float *c_src,
                                const float *c_null, int ctx_len, int num_steps, float guidance,
                                const gnr_hooks *hooks, float *u_out)
{
    job j;
    GNR_TRY(job_begin(m, h, w, ctx_len, num_steps, &j));
    gnr_ctx *ctx = &m->ctx;
    int N = num_steps;
    int64_t cn = j.context[1] * j.context[2];
    float *host = calloc((size_t)(4 * cn), sizeof(float)); /* u, its gradient, Adam's m and v */
    gnr_tensor links, src, u, z, e_c, e_u, e, zn_, tmp, d_eu, target;
    gnr_tape tape;
    memset(&tape, 0, sizeof tape);
    gnr_status st = GNR_OK;
    if (!host) GNR_CHECK(st, gnr_error(GNR_ERR_NOMEM, "out of host memory for null-text inversion"));
    float *hu = host, *hg = host + cn, *hm = host + 2 * cn, *hv = host + 3 * cn;

    GNR_CHECK(st, job_upload(m, 4, j.chain, chain, &links));
    GNR_CHECK(st, job_upload(m, 3, j.context, c_src, &src));
    GNR_CHECK(st, job_state(m, 3, j.context, &u));
    GNR_CHECK(st, job_latents(m, &j, (gnr_tensor *const[]){&z, &e_c, &e_u, &e, &zn_, &tmp, &d_eu, NULL}));
    memcpy(hu, c_null, (size_t)cn * sizeof(float));
    target = job_item(&links, 4, j.latent, N);
    GNR_CHECK(st, gnr_copy(ctx, &target, &z));

    for (int k = 0; k < N; k++) {
        int t = gnr_ddim_timestep(N, k);
        float a_t = j.abar[t], a_s = gnr_ddim_next_alpha(j.abar, N, t, 0);
        float coef = sqrtf(1.0f - a_s) - sqrtf(a_s) * sqrtf(1.0f - a_t) / sqrtf(a_t);
        /* de_u/dy of the UNet output y: 1 for eps, sqrt(a_t) for v (z is
         * no leaf of this backward) */
        float dedy = m->cfg.unet.prediction == GNR_PREDICT_V ? sqrtf(a_t) : 1.0f;
        double lr = 0.01 * (1.0 - k / 100.0);
        double threshold = 1e-5 + k * 2e-5;
        target = job_item(&links, 4, j.latent, N - k - 1);
        memset(hm, 0, (size_t)(2 * cn) * sizeof(float)); /* a new optimizer every step */

        GNR_CHECK(st, job_poll(m, hooks));
        GNR_CHECK(st, job_unet(m, &z, t, &src, NULL, NULL, 0, NULL, &e_c));
        for (int it = 0; it < NT_ITERS; it++) {
            GNR_CHECK(st, job_poll(m, hooks));
            GNR_CHECK(st, gnr_upload(ctx, hu, &u));
            /* e_u = eps(z, t, u), recorded with u as the leaf */
            GNR_CHECK(st, gnr_tape_init(&tape, NULL));
            gnr_tensor leaf = u, y;
            leaf.gid = -1;
            GNR_CHECK(st, gnr_tape_leaf(&tape, &leaf));
            ctx->tape = &tape;
            st = unet_forward(ctx, &m->unet, &z, t, &leaf, NULL, &y);
            ctx->tape = NULL;
            if (st != GNR_OK) goto done;
            GNR_CHECK(st, job_noise(m, &z, t, &y, &e_u));
            gnr_arena_reset(ctx->arena); /* the tape saved what its backward reads; y's shape is all it needs */
            GNR_CHECK(st, guided(ctx, &e_u, &e_c, guidance, &e));
            GNR_CHECK(st, gnr_ddim_step(ctx, a_t, a_s, &z, &e, &tmp, &zn_));
            double loss;
            GNR_CHECK(st, gnr_sq_diff_mean(ctx, &zn_, &target, &loss));
            /* dloss/de_u, then through the UNet to u */
            GNR_CHECK(st, gnr_fill(ctx, &d_eu, 0.0f));
            GNR_CHECK(st, gnr_sq_diff_mean_backward(ctx, &zn_, &target, (1.0f - guidance) * coef * dedy, &d_eu));
            GNR_CHECK(st, gnr_tape_seed_grad(ctx, &tape, &y, &d_eu));
            GNR_CHECK(st, gnr_tape_backward(ctx, &tape));
            gnr_tensor du = gnr_tape_grad(&tape, &leaf);
            if (du.data) GNR_CHECK(st, gnr_download(ctx, &du, hg));
            else memset(hg, 0, (size_t)cn * sizeof(float));
            gnr_tape_free(&tape);
            gnr_arena_reset(ctx->arena);
            gnr_arena_reset(ctx->keep); /* what the tape saved (no captures here) */
            adam_step(hu, hg, hm, hv, cn, it + 1, lr);
            if (loss < threshold) break; /* the step just taken is kept */
        }
        memcpy(u_out + (size_t)k * cn, hu, (size_t)cn * sizeof(float));
        /* z = ddim_step(e(u_k)) */
        GNR_CHECK(st, gnr_upload(ctx, hu, &u));
        GNR_CHECK(st, job_poll(m, hooks));
        GNR_CHECK(st, job_unet(m, &z, t, &u, NULL, NULL, 0, NULL, &e_u));
        GNR_CHECK(st, guided(ctx, &e_u, &e_c, guidance, &e));
        GNR_CHECK(st, gnr_ddim_step(ctx, a_t, a_s, &z, &e, &tmp, &z));
        GNR_CHECK(st, job_step(m, hooks, GNR_PHASE_NULL_TEXT, k + 1, N, 0, &z));
    }
done:
    ctx->tape = NULL;
    if (tape.seeds) gnr_tape_free(&tape);
    free(host);
    return gnr_pass_end(m, st);
}
