#include "ddim.h"

#include <math.h>

#include "gnr.h"

/* betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 ("scaled_linear"),
 * abar = cumprod(1 - beta). The square roots in double, the rest in float32;
 * the running product is carried in double and rounded per entry, as
 * torch.cumprod does on the CPU. */
void gnr_ddim_alphas_cumprod(float abar[GNR_TRAIN_STEPS])
{
    const double lo = sqrt(0.00085), hi = sqrt(0.012);
    double prod = 1.0;
    for (int i = 0; i < GNR_TRAIN_STEPS; i++) {
        float b = (float)(lo + (hi - lo) * i / (GNR_TRAIN_STEPS - 1));
        float beta = b * b;
        prod *= (double)(1.0f - beta);
        abar[i] = (float)prod;
    }
}

/* "leading" spacing: tau_k = (N - 1 - k) * (1000 / N). */
int gnr_ddim_timestep(int num_steps, int k) { return (num_steps - 1 - k) * (GNR_TRAIN_STEPS / num_steps); }

float gnr_ddim_next_alpha(const float *abar, int num_steps, int t, int inverting)
{
    int step = GNR_TRAIN_STEPS / num_steps;
    if (inverting) {
        int s = t + step;
        return s < GNR_TRAIN_STEPS ? abar[s] : abar[GNR_TRAIN_STEPS - 1];
    }
    int s = t - step;
    return s >= 0 ? abar[s] : abar[0];
}

gnr_status gnr_ddim_step(gnr_ctx *ctx, float a_t, float a_s, const gnr_tensor *z, const gnr_tensor *e,
                         gnr_tensor *tmp, gnr_tensor *out)
{
    /* The coefficients are float32, as the reference computes them from
     * float32 alphas. */
    float sqrt_at = sqrtf(a_t), sqrt_bt = sqrtf(1.0f - a_t), sqrt_as = sqrtf(a_s), sqrt_bs = sqrtf(1.0f - a_s);
    GNR_TRY(gnr_copy(ctx, z, tmp));
    GNR_TRY(gnr_axpy(ctx, -sqrt_bt, e, tmp));        /* z - sqrt(1 - a_t) e */
    GNR_TRY(gnr_scale(ctx, tmp, 1.0f / sqrt_at, tmp)); /* x0 */
    GNR_TRY(gnr_scale(ctx, tmp, sqrt_as, out));
    return gnr_axpy(ctx, sqrt_bs, e, out);
}

gnr_status gnr_ddim_eps_from_v(gnr_ctx *ctx, float a_t, const gnr_tensor *z, const gnr_tensor *v, gnr_tensor *eps)
{
    /* float32 coefficients, as the scheduler computes them from its float32
     * alphas: alpha_prod_t ** 0.5 and (1 - alpha_prod_t) ** 0.5 */
    GNR_TRY(gnr_scale(ctx, v, sqrtf(a_t), eps));
    return gnr_axpy(ctx, sqrtf(1.0f - a_t), z, eps);
}
