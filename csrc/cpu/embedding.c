/* Embedding lookup (token and position tables). */
#include <string.h>

#include "cpu/cpu_ops.h"

/* y[i, :] = table[ids[i], :] */
gnr_status cpu_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n,
                                 gnr_tensor *y)
{
    const char *op = "embedding_forward";
    GNR_TRY(gnr_cpu_check_f32(op, "table", table));
    GNR_TRY(gnr_cpu_check_f32(op, "y", y));
    if (table->ndim != 2)
        return gnr_error(GNR_ERR_VALUE, "%s: table %s must be V x C", op, gnr_cpu_shape(table));
    int64_t vocab = table->shape[0], c = table->shape[1];
    if (n < 0 || (n > 0 && !ids) || y->shape[y->ndim - 1] != c || gnr_numel(y) != n * c)
        return gnr_error(GNR_ERR_VALUE, "%s: y %s must be n x C = %lld x %lld (table %s)", op, gnr_cpu_shape(y),
                         (long long)n, (long long)c, gnr_cpu_shape(table));
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return gnr_error(GNR_ERR_VALUE, "%s: id %d at position %lld is outside [0, %lld) (table %s)", op,
                             (int)ids[i], (long long)i, (long long)vocab, gnr_cpu_shape(table));
    const float *pt = gnr_f32(table);
    float *py = gnr_f32(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n * c > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) memcpy(py + i * c, pt + (int64_t)ids[i] * c, (size_t)c * sizeof(float));
    return GNR_OK;
}
