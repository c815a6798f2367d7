#include "energy.h"

gnr_status gnr_capture_energy(gnr_ctx *ctx, energy_kind kind, const gnr_capture *cur, int ci,
                              const gnr_capture *ref, int ri, double *value)
{
    const gnr_tensor *a = &cur->tensors[ci], *r = &ref->tensors[ri];
    if (cur->as_qk[ci] != ref->as_qk[ri])
        return gnr_error(GNR_ERR_INTERNAL, "capture '%s' compared with a reference kept in another form",
                         cur->names[ci]);
    if (!cur->as_qk[ci])
        return kind == ENERGY_ABS_DIFF_MEAN ? gnr_abs_diff_mean(ctx, a, r, value) : gnr_sq_diff_mean(ctx, a, r, value);
    if (kind != ENERGY_SQ_DIFF_MEAN)
        return gnr_error(GNR_ERR_INTERNAL, "an attention map kept as queries and keys has only the squared energy");
    return gnr_attention_map_energy(ctx, a, &cur->keys[ci], r, &ref->keys[ri], cur->heads[ci], cur->scale[ci], value);
}
