#include "guiders.h"

#include "grad/energy.h"

#include <math.h>
#include <string.h>

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

/* Which pass an energy guider compares with inv_inv. */
static int energy_pass(const gnr_guider *g)
{
    return g->kind == GNR_GUIDER_FEATURES_MAP_L2 ? PASS_CUR_TRG : PASS_CUR_INV;
}

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

step_plan guiders_plan_step(const gnr_edit_config *cfg, int k)
{
    step_plan p = {0, 0, 0};
    for (int i = 0; i < cfg->nguiders; i++) {
        const gnr_guider *g = &cfg->guiders[i];
        if (g->kind == GNR_GUIDER_CFG && scale_at(g, k) != 0.0) {
            if (g->source) p.cur_inv = 1;
            else p.cur_trg = 1;
        }
        if (energy_active(g, k)) {
            p.inv_inv = 1;
            if (energy_pass(g) == PASS_CUR_TRG) p.cur_trg = 1;
            else p.cur_inv = 1;
        }
    }
    return p;
}

/* Whether guider g's energy reads pass `pass` at step k (PASS_INV_INV: the
 * reference pass of every active energy). */
static int reads_pass(const gnr_guider *g, int k, int pass)
{
    return energy_active(g, k) && (pass == PASS_INV_INV || energy_pass(g) == pass);
}

gnr_status guiders_capture_request(const gnr_edit_config *cfg, int k, int pass, gnr_capture *cap)
{
    memset(cap, 0, sizeof *cap);
    for (int i = 0; i < cfg->nguiders; i++) {
        const gnr_guider *g = &cfg->guiders[i];
        if (!reads_pass(g, k, pass)) continue;
        if (uses_maps(g, k))
            for (int j = 0; j < cfg->nmaps; j++) GNR_TRY(gnr_capture_want(cap, cfg->maps[j], 1));
        if (uses_feature(g, k)) GNR_TRY(gnr_capture_want(cap, g->feature, 0));
    }
    return GNR_OK;
}

int guiders_pass_recorded(const gnr_edit_config *cfg, int k, int pass)
{
    for (int i = 0; i < cfg->nguiders; i++) {
        const gnr_guider *g = &cfg->guiders[i];
        if (reads_pass(g, k, pass) && ((uses_maps(g, k) && cfg->nmaps > 0) || uses_feature(g, k)))
            return 1;
    }
    return 0;
}

gnr_status guiders_seed_energies(gnr_ctx *ctx, const gnr_edit_config *cfg, int k, int pass, const gnr_capture *cur,
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
                GNR_TRY(gnr_capture_energy(ctx, ENERGY_SQ_DIFF_MEAN, cur, ci, ref, ri, &v));
                e += map_w * v;
            }
        if (uses_feature(g, k)) {
            int ci = gnr_capture_index(cur, g->feature), ri = gnr_capture_index(ref, g->feature);
            double v;
            GNR_TRY(gnr_capture_energy(ctx, fkind, cur, ci, ref, ri, &v));
            e += feat_w * v;
        }
        if (fabs(s * e) <= DROP_ATOL) continue;
        *kept = 1;
        if (uses_maps(g, k))
            for (int j = 0; j < cfg->nmaps; j++) {
                int ci = gnr_capture_index(cur, cfg->maps[j]), ri = gnr_capture_index(ref, cfg->maps[j]);
                GNR_TRY(gnr_tape_seed_capture(tape, ci, ENERGY_SQ_DIFF_MEAN, ref, ri, (float)(s * map_w), NULL));
            }
        if (uses_feature(g, k)) {
            int ci = gnr_capture_index(cur, g->feature), ri = gnr_capture_index(ref, g->feature);
            GNR_TRY(gnr_tape_seed_capture(tape, ci, fkind, ref, ri, (float)(s * feat_w), NULL));
        }
    }
    return GNR_OK;
}

/* cfg: s (eps_trg - eps_u), or s (eps_src - eps_u) with `source` */
static gnr_status cfg_term(gnr_ctx *ctx, const gnr_guider *g, float s, const step_outputs *o, gnr_tensor *term)
{
    GNR_TRY(gnr_copy(ctx, g->source ? o->eps_src : o->eps_trg, term));
    GNR_TRY(gnr_axpy(ctx, -1.0f, o->eps_u, term));
    return gnr_scale(ctx, term, s, term);
}

/* latents_diff: s 2 (z - z_inv) */
static gnr_status latents_diff_term(gnr_ctx *ctx, float s, const step_outputs *o, gnr_tensor *term)
{
    GNR_TRY(gnr_copy(ctx, o->z, term));
    GNR_TRY(gnr_axpy(ctx, -1.0f, o->z_inv, term));
    return gnr_scale(ctx, term, 2.0f * s, term);
}

gnr_status guiders_combine(gnr_ctx *ctx, const gnr_edit_config *cfg, int k, const step_outputs *o, gnr_tensor *term,
                           gnr_tensor *eps_hat, double *cfg_norm)
{
    *cfg_norm = 0.0;
    GNR_TRY(gnr_copy(ctx, o->eps_u, eps_hat));
    for (int i = 0; i < cfg->nguiders; i++) {
        const gnr_guider *g = &cfg->guiders[i];
        float s = (float)scale_at(g, k);
        if (s == 0.0f) continue;
        if (g->kind == GNR_GUIDER_CFG) {
            GNR_TRY(cfg_term(ctx, g, s, o, term));
            double ss;
            GNR_TRY(gnr_sum_sq(ctx, term, &ss));
            *cfg_norm = sqrt(ss);
        } else if (g->kind == GNR_GUIDER_LATENTS_DIFF) {
            GNR_TRY(latents_diff_term(ctx, s, o, term));
        } else {
            continue; /* an energy guider: its term comes through dE/dz */
        }
        GNR_TRY(gnr_axpy(ctx, 1.0f, term, eps_hat));
    }
    return GNR_OK;
}
