/* Embedding lookup: y[i, :] = table[ids[i], :] (ids on the host). */
#include "cuda_ops.h"

__global__ void embedding_kernel(const float *table, const int32_t *ids, float *y, int64_t C, int64_t total)
{
    GRID_STRIDE(i, total) y[i] = table[(int64_t)ids[i / C] * C + i % C];
}

gnr_status cuda_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t C = table->shape[1];
    if (n == 0 || C == 0) return GNR_OK;
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
