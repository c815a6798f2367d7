#include "rescale.h"

#include <math.h>

gnr_status rescale_energy_gradient(gnr_ctx *ctx, const gnr_edit_config *cfg, double cfg_norm, gnr_tensor *g)
{
    double scale_other = 1.0;
    if (cfg->range_rescale) {
        double gg;
        GNR_TRY(gnr_sum_sq(ctx, g, &gg));
        double gn = (double)(float)sqrt(gg), cn = (double)(float)cfg_norm;
        if (gn > 0.0) {
            double r = cn > 0.0 ? gn / cn : 1.0;
            double c = r < cfg->lo ? cfg->lo : (r > cfg->hi ? cfg->hi : r);
            scale_other = c / r;
        }
    }
    return gnr_scale(ctx, g, (float)scale_other, g);
}
