/* Embedding lookup: y[i, :] = table[ids[i], :] (ids on the host). */
#include "cuda_ops.h"

__global__ void embedding_kernel(const float *table, const int32_t *ids, float *y, int64_t C, int64_t total)
{
    GRID_STRIDE(i, total) y[i] = table[(int64_t)ids[i / C] * C + i % C];
}

gnr_status cuda_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n, gnr_tensor *y)
{
    const char *op = "embedding_forward";
    cuda_state *s = NULL;
    GNR_TRY(cuda_get_state(ctx, &s));
    GNR_TRY(cuda_check_tensor(op, "table", table));
    GNR_TRY(cuda_check_tensor(op, "y", y));
    char st[96], sy[96];
    if (table->ndim != 2) return gnr_error(GNR_ERR_VALUE, "%s: table %s must be V x C", op, gnr_shape_str(table, st, sizeof st));
    int64_t V = table->shape[0], C = table->shape[1];
    if (n < 0 || gnr_numel(y) != n * C)
        return gnr_error(GNR_ERR_VALUE, "%s: y %s must be n x C = %lld x %lld", op, gnr_shape_str(y, sy, sizeof sy),
                         (long long)n, (long long)C);
    if (n == 0 || C == 0) return GNR_OK;
    if (!ids) return gnr_error(GNR_ERR_VALUE, "%s: ids is NULL", op);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return gnr_error(GNR_ERR_VALUE, "%s: token id %d at position %lld is outside [0, %lld)", op, (int)ids[i],
                             (long long)i, (long long)V);
    cuda_scratch sc(ctx->arena);
    int32_t *dids;
    GNR_TRY(sc.alloc((size_t)n * sizeof(int32_t), (void **)&dids));
    CUDA_CHECK(cudaMemcpyAsync(dids, ids, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, s->stream));
    int64_t total = n * C;
    CUDA_LAUNCH(embedding_kernel, cuda_grid(total), CUDA_BLOCK, 0, s->stream, gnr_f32(table), dids, gnr_f32(y), C, total);
    /* `ids` belongs to the caller: make sure the copy has finished before returning. */
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}
