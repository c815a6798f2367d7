/* Cheap argument checks shared by the CPU ops; messages name the op and shapes. */
#include "cpu/cpu_ops.h"

const char *gnr_cpu_shape(const gnr_tensor *t)
{
    static _Thread_local char bufs[4][96];
    static _Thread_local int next = 0;
    char *b = bufs[next];
    next = (next + 1) & 3;
    if (!t) return "None";
    return gnr_shape_str(t, b, sizeof bufs[0]);
}

gnr_status gnr_cpu_check_f32(const char *op, const char *name, const gnr_tensor *t)
{
    if (!t || !t->data) return gnr_error(GNR_ERR_VALUE, "%s: %s is missing", op, name);
    if (t->dtype != GNR_F32)
        return gnr_error(GNR_ERR_TYPE, "%s: %s is %s; the CPU backend computes in float32", op, name,
                         gnr_dtype_name(t->dtype));
    if (t->device != GNR_CPU)
        return gnr_error(GNR_ERR_VALUE, "%s: %s is on %s, expected cpu", op, name, gnr_device_name(t->device));
    return GNR_OK;
}

gnr_status gnr_cpu_check_numel(const char *op, const char *an, const gnr_tensor *a, const char *bn,
                               const gnr_tensor *b)
{
    if (gnr_numel(a) != gnr_numel(b))
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s and %s %s must have the same number of elements", op, an,
                         gnr_cpu_shape(a), bn, gnr_cpu_shape(b));
    return GNR_OK;
}

gnr_status gnr_cpu_check_same(const char *op, const char *an, const gnr_tensor *a, const char *bn,
                              const gnr_tensor *b)
{
    if (!gnr_same_shape(a, b))
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s and %s %s must have the same shape", op, an, gnr_cpu_shape(a),
                         bn, gnr_cpu_shape(b));
    return GNR_OK;
}
