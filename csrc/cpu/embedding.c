/* Embedding lookup (token and position tables). */
#include <string.h>

#include "cpu/cpu_ops.h"

/* y[i, :] = table[ids[i], :] */
gnr_status cpu_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n,
                                 gnr_tensor *y)
{
    int64_t c = table->shape[1];
    const float *pt = gnr_f32(table);
    float *py = gnr_f32(y);
#pragma omp parallel for num_threads(gnr_cpu_threads(ctx)) if (n * c > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) memcpy(py + i * c, pt + (int64_t)ids[i] * c, (size_t)c * sizeof(float));
    return GNR_OK;
}
