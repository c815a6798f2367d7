/* The Guide-and-Rescale editing loop (GNR_SPEC.md sections 5 to 7).
 *
 * Step k at t = tau_k, with z_inv = chain[N - k]:
 *   uncond   eps_u   = unet(z, t, c_uncond)
 *   inv_inv          = unet(z_inv, t, c_src)   captures only (the energies' reference)
 *   cur_inv  eps_src = unet(z, t, c_src)       recorded when an energy on it is kept
 *   cur_trg  eps_trg = unet(z, t, c_trg)       recorded when features_map_l2 is kept
 *   eps_hat = eps_u + sum(gradient-free terms) + scale_other * dE/dz
 *   z = ddim_step(eps_hat)
 * A pass nothing uses at a step is skipped. Energies are separable by pass
 * (cur_inv's guiders never look at cur_trg and vice versa), so dE/dz is the
 * sum of one backward per recorded pass, and only one pass's internals are
 * held at a time. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ddim.h"
#include "job.h"

/* GNR_SPEC.md section 5: a term |s * E| <= 1e-8 is dropped (the reference's
 * torch.allclose(term, 0)). */
#define DROP_ATOL 1e-8

static double scale_at(const gnr_guider *g, int k) { return g->scale[k]; }

/* Whether energy guider g has a non-zero weight at step k. */
static int energy_active(const gnr_guider *g, int k)
{
    double s = scale_at(g, k);
    switch (g->kind) {
    case GNR_GUIDER_FEATURES_MAP_L2:
    case GNR_GUIDER_SELF_ATTN_MAP_L2: return s != 0.0;
    case GNR_GUIDER_SELF_ATTN_APPEARANCE: return s != 0.0 && (g->self_attn[k] != 0.0 || g->app[k] != 0.0);
    default: return 0;
    }
}

/* Which pass an energy guider compares with inv_inv: 0 cur_inv, 1 cur_trg. */
static int energy_pass(const gnr_guider *g) { return g->kind == GNR_GUIDER_FEATURES_MAP_L2; }

static int uses_maps(const gnr_guider *g, int k)
{
    return g->kind == GNR_GUIDER_SELF_ATTN_MAP_L2 ||
           (g->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE && g->self_attn[k] != 0.0);
}

static int uses_feature(const gnr_guider *g, int k)
{
    return g->kind == GNR_GUIDER_FEATURES_MAP_L2 ||
           (g->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE && g->app[k] != 0.0);
}

static gnr_status request(gnr_capture *cap, const char *name)
{
    return gnr_capture_index(cap, name) < 0 ? gnr_capture_add(cap, name) : GNR_OK;
}

/* The capture request of one pass (0 cur_inv, 1 cur_trg, -1 both: inv_inv). */
static gnr_status build_request(const gnr_edit_config *cfg, int k, int pass, gnr_capture *cap)
{
    memset(cap, 0, sizeof *cap);
    for (int i = 0; i < cfg->nguiders; i++) {
        const gnr_guider *g = &cfg->guiders[i];
        if (!energy_active(g, k) || (pass >= 0 && energy_pass(g) != pass)) continue;
        if (uses_maps(g, k))
            for (int j = 0; j < cfg->nmaps; j++) GNR_TRY(request(cap, cfg->maps[j]));
        if (uses_feature(g, k)) GNR_TRY(request(cap, g->feature));
    }
    return GNR_OK;
}

static gnr_status diff_energy(gnr_ctx *ctx, energy_kind kind, const gnr_tensor *a, const gnr_tensor *b, double *v)
{
    return kind == ENERGY_ABS_DIFF_MEAN ? gnr_abs_diff_mean(ctx, a, b, v) : gnr_sq_diff_mean(ctx, a, b, v);
}

/* The energies of `pass`'s guiders at step k: each guider's term s * E_g is
 * computed, dropped when |s E_g| <= 1e-8, else seeded into the tape.
 * *kept: whether any term was kept (a backward is then due). */
static gnr_status seed_energies(gnr_ctx *ctx, const gnr_edit_config *cfg, int k, int pass, const gnr_capture *cur,
                                const gnr_capture *ref, gnr_tape *tape, int *kept)
{
    *kept = 0;
    for (int i = 0; i < cfg->nguiders; i++) {
        const gnr_guider *g = &cfg->guiders[i];
        if (!energy_active(g, k) || energy_pass(g) != pass) continue;
        double s = scale_at(g, k);
        double map_w = g->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE ? g->self_attn[k] : 1.0;
        double feat_w = g->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE ? g->app[k] : 1.0;
        energy_kind fkind = g->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE ? ENERGY_ABS_DIFF_MEAN : ENERGY_SQ_DIFF_MEAN;
        double e = 0.0;
        if (uses_maps(g, k))
            for (int j = 0; j < cfg->nmaps; j++) {
                int ci = gnr_capture_index(cur, cfg->maps[j]), ri = gnr_capture_index(ref, cfg->maps[j]);
                double v;
                GNR_TRY(diff_energy(ctx, ENERGY_SQ_DIFF_MEAN, &cur->tensors[ci], &ref->tensors[ri], &v));
                e += map_w * v;
            }
        if (uses_feature(g, k)) {
            int ci = gnr_capture_index(cur, g->feature), ri = gnr_capture_index(ref, g->feature);
            double v;
            GNR_TRY(diff_energy(ctx, fkind, &cur->tensors[ci], &ref->tensors[ri], &v));
            e += feat_w * v;
        }
        if (fabs(s * e) <= DROP_ATOL) continue;
        *kept = 1;
        if (uses_maps(g, k))
            for (int j = 0; j < cfg->nmaps; j++) {
                int ci = gnr_capture_index(cur, cfg->maps[j]), ri = gnr_capture_index(ref, cfg->maps[j]);
                GNR_TRY(gnr_tape_seed_capture(tape, ci, ENERGY_SQ_DIFF_MEAN, &ref->tensors[ri], (float)(s * map_w)));
            }
        if (uses_feature(g, k)) {
            int ci = gnr_capture_index(cur, g->feature), ri = gnr_capture_index(ref, g->feature);
            GNR_TRY(gnr_tape_seed_capture(tape, ci, fkind, &ref->tensors[ri], (float)(s * feat_w)));
        }
    }
    return GNR_OK;
}

/* One of the two current-latent passes (0 cur_inv with c_src, 1 cur_trg with
 * c_trg): eps into `eps` (may be NULL), and when an energy of this pass is
 * kept, its gradient added to `g` (*have_g set). */
static gnr_status current_pass(gnr_model *m, const gnr_edit_config *cfg, int k, int pass, int t, const gnr_tensor *z,
                               const gnr_tensor *c, const gnr_capture *ref, gnr_tensor *eps, gnr_tensor *g,
                               int *have_g)
{
    gnr_ctx *ctx = &m->ctx;
    gnr_capture *cur = malloc(sizeof *cur);
    if (!cur) return gnr_error(GNR_ERR_NOMEM, "out of host memory for a capture request");
    gnr_tape tape;
    memset(&tape, 0, sizeof tape);
    gnr_tensor leaf;
    gnr_status st;
    GNR_CHECK(st, build_request(cfg, k, pass, cur));
    if (cur->n == 0) {
        st = job_unet(m, z, t, c, NULL, NULL, 0, NULL, eps);
        goto done;
    }
    GNR_CHECK(st, gnr_tape_init(&tape, cur));
    GNR_CHECK(st, job_unet(m, z, t, c, cur, &tape, cfg->checkpointing, &leaf, eps));
    GNR_CHECK(st, gnr_capture_check_found(cur));
    int kept;
    GNR_CHECK(st, seed_energies(ctx, cfg, k, pass, cur, ref, &tape, &kept));
    if (kept) {
        GNR_CHECK(st, gnr_tape_backward(ctx, &tape));
        gnr_tensor dz = gnr_tape_grad(&tape, &leaf);
        if (dz.data) GNR_CHECK(st, gnr_axpy(ctx, 1.0f, &dz, g));
        *have_g = 1; /* a kept energy with no path to z is a gradient of 0 */
    }
done:
    if (tape.seeds) gnr_tape_free(&tape);
    gnr_arena_reset(ctx->arena);
    free(cur);
    return st;
}

gnr_status gnr_edit(gnr_model *m, const gnr_edit_config *cfg, const float *chain, int h, int w,
                    const float *uncond, int uncond_per_step, const float *c_src, const float *c_trg, int ctx_len,
                    const float *z_start, const gnr_hooks *hooks, float *z_out, float *eps_out)
{
    int N = cfg->num_steps;
    if (cfg->begin < 0 || cfg->end > N || cfg->begin >= cfg->end)
        return gnr_error(GNR_ERR_VALUE, "steps [%d, %d) are not a non-empty range within [0, %d)", cfg->begin,
                         cfg->end, N);
    GNR_TRY(gnr_check_latent_size(m, h, w));
    if (N < 1 || N > GNR_TRAIN_STEPS)
        return gnr_error(GNR_ERR_VALUE, "num_steps must be in [1, %d], got %d", GNR_TRAIN_STEPS, N);
    if (cfg->range_rescale && !(cfg->lo > 0.0 && cfg->lo <= cfg->hi))
        return gnr_error(GNR_ERR_VALUE, "rescaler range [%g, %g] must satisfy 0 < lo <= hi", cfg->lo, cfg->hi);
    for (int i = 0; i < cfg->nguiders; i++)
        if (cfg->guiders[i].kind < GNR_GUIDER_CFG || cfg->guiders[i].kind > GNR_GUIDER_SELF_ATTN_APPEARANCE)
            return gnr_error(GNR_ERR_VALUE, "guider %d: unknown kind %d", i, (int)cfg->guiders[i].kind);
    GNR_TRY(gnr_pass_begin(m));
    gnr_ctx *ctx = &m->ctx;
    const gnr_unet_config *u = &m->cfg.unet;
    int64_t zs[4] = {1, u->in_channels, h, w}, cs[3] = {1, ctx_len, u->cross_attention_dim};
    int64_t all[4] = {N + 1, u->in_channels, h, w};
    int64_t n_unc = uncond_per_step ? N : 1;
    int64_t us[4] = {n_unc, 1, ctx_len, u->cross_attention_dim};
    int64_t zn = (int64_t)u->in_channels * h * w, cn = (int64_t)ctx_len * u->cross_attention_dim;
    float abar[GNR_TRAIN_STEPS];
    gnr_ddim_alphas_cumprod(abar);
    gnr_capture *ref = malloc(sizeof *ref);
    gnr_tensor links, unc, src, trg, z, eps_u, eps_src, eps_trg, g, term, eps_hat, tmp;
    gnr_status st = GNR_OK;
    if (!ref) GNR_CHECK(st, gnr_error(GNR_ERR_NOMEM, "out of host memory for a capture request"));

    /* Everything the loop needs goes to the device once. */
    GNR_CHECK(st, job_state(m, 4, all, &links));
    GNR_CHECK(st, job_state(m, 4, us, &unc));
    GNR_CHECK(st, job_state(m, 3, cs, &src));
    GNR_CHECK(st, job_state(m, 3, cs, &trg));
    gnr_tensor *states[] = {&z, &eps_u, &eps_src, &eps_trg, &g, &term, &eps_hat, &tmp};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) GNR_CHECK(st, job_state(m, 4, zs, states[i]));
    GNR_CHECK(st, gnr_upload(ctx, chain, &links));
    GNR_CHECK(st, gnr_upload(ctx, uncond, &unc));
    GNR_CHECK(st, gnr_upload(ctx, c_src, &src));
    GNR_CHECK(st, gnr_upload(ctx, c_trg, &trg));
    gnr_tensor z_inv = gnr_reshape(links, 4, zs), c_unc = gnr_reshape(unc, 3, cs);
    z_inv.data = (char *)links.data + (size_t)(N - cfg->begin) * zn * sizeof(float);
    if (z_start) GNR_CHECK(st, gnr_upload(ctx, z_start, &z));
    else GNR_CHECK(st, gnr_copy(ctx, &z_inv, &z));

    for (int k = cfg->begin; k < cfg->end; k++) {
        int t = gnr_ddim_timestep(N, k);
        z_inv.data = (char *)links.data + (size_t)(N - k) * zn * sizeof(float);
        c_unc.data = (char *)unc.data + (size_t)(uncond_per_step ? k : 0) * cn * sizeof(float);
        gnr_arena_reset(ctx->keep);

        /* What this step uses. */
        int need_trg = 0, need_src = 0, energies = 0;
        for (int i = 0; i < cfg->nguiders; i++) {
            const gnr_guider *gd = &cfg->guiders[i];
            if (gd->kind == GNR_GUIDER_CFG && scale_at(gd, k) != 0.0) {
                if (gd->source) need_src = 1;
                else need_trg = 1;
            }
            if (energy_active(gd, k)) {
                energies = 1;
                if (energy_pass(gd)) need_trg = 1;
                else need_src = 1;
            }
        }

        GNR_CHECK(st, job_poll(m, hooks));
        GNR_CHECK(st, job_unet(m, &z, t, &c_unc, NULL, NULL, 0, NULL, &eps_u));
        if (energies) {
            GNR_CHECK(st, job_poll(m, hooks));
            GNR_CHECK(st, build_request(cfg, k, -1, ref));
            GNR_CHECK(st, job_unet(m, &z_inv, t, &src, ref, NULL, 0, NULL, NULL));
            GNR_CHECK(st, gnr_capture_check_found(ref));
        }
        int have_g = 0;
        GNR_CHECK(st, gnr_fill(ctx, &g, 0.0f));
        if (need_src) {
            GNR_CHECK(st, job_poll(m, hooks));
            GNR_CHECK(st, current_pass(m, cfg, k, 0, t, &z, &src, ref, &eps_src, &g, &have_g));
        }
        if (need_trg) {
            GNR_CHECK(st, job_poll(m, hooks));
            GNR_CHECK(st, current_pass(m, cfg, k, 1, t, &z, &trg, ref, &eps_trg, &g, &have_g));
        }

        /* eps_hat = eps_u + gradient-free terms (in guider order) + scale_other * g */
        double cfg_norm = 0.0;
        GNR_CHECK(st, gnr_copy(ctx, &eps_u, &eps_hat));
        for (int i = 0; i < cfg->nguiders; i++) {
            const gnr_guider *gd = &cfg->guiders[i];
            float s = (float)scale_at(gd, k);
            if (s == 0.0f) continue;
            if (gd->kind == GNR_GUIDER_CFG) {
                GNR_CHECK(st, gnr_copy(ctx, gd->source ? &eps_src : &eps_trg, &term));
                GNR_CHECK(st, gnr_axpy(ctx, -1.0f, &eps_u, &term));
                GNR_CHECK(st, gnr_scale(ctx, &term, s, &term));
                double ss;
                GNR_CHECK(st, gnr_sum_sq(ctx, &term, &ss));
                cfg_norm = sqrt(ss);
            } else if (gd->kind == GNR_GUIDER_LATENTS_DIFF) {
                GNR_CHECK(st, gnr_copy(ctx, &z, &term));
                GNR_CHECK(st, gnr_axpy(ctx, -1.0f, &z_inv, &term));
                GNR_CHECK(st, gnr_scale(ctx, &term, 2.0f * s, &term));
            } else {
                continue;
            }
            GNR_CHECK(st, gnr_axpy(ctx, 1.0f, &term, &eps_hat));
        }
        if (have_g) {
            double scale_other = 1.0;
            if (cfg->range_rescale) {
                double gg;
                GNR_CHECK(st, gnr_sum_sq(ctx, &g, &gg));
                double gn = (double)(float)sqrt(gg), cn_ = (double)(float)cfg_norm;
                if (gn > 0.0) {
                    double r = cn_ > 0.0 ? gn / cn_ : 1.0;
                    double c = r < cfg->lo ? cfg->lo : (r > cfg->hi ? cfg->hi : r);
                    scale_other = c / r;
                }
            }
            GNR_CHECK(st, gnr_scale(ctx, &g, (float)scale_other, &g));
            GNR_CHECK(st, gnr_axpy(ctx, 1.0f, &g, &eps_hat));
        }
        GNR_CHECK(st, gnr_ddim_step(ctx, abar[t], gnr_ddim_next_alpha(abar, N, t, 0), &z, &eps_hat, &tmp, &z));
        GNR_CHECK(st, job_step(m, hooks, GNR_PHASE_EDIT, k + 1, N, have_g, &z));
    }
    GNR_CHECK(st, gnr_download(ctx, &z, z_out));
    if (eps_out) GNR_CHECK(st, gnr_download(ctx, &eps_hat, eps_out));
done:
    free(ref);
    return gnr_pass_end(m, st);
}
