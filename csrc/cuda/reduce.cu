/* Loss reductions, deterministic: a fixed grid of REDUCE_BLOCKS blocks each
 * sums a fixed stride of elements in double and reduces over a fixed tree,
 * then one block sums the partials the same way. No atomics: the result
 * depends only on the data and n, never on timing or the device. */
#include "cuda_ops.h"

#define REDUCE_BLOCKS CUDA_BLOCK /* the final pass reduces them in one block */

enum { RED_SQ_DIFF = 0, RED_ABS_DIFF = 1, RED_SQ = 2 };

template <int MODE>
__device__ __forceinline__ double red_term(const float *a, const float *b, int64_t i)
{
    if (MODE == RED_SQ) {
        double x = a[i];
        return x * x;
    }
    double d = (double)a[i] - (double)b[i];
    return MODE == RED_SQ_DIFF ? d * d : fabs(d);
}

template <int MODE>
__global__ void reduce_partial_kernel(const float *a, const float *b, int64_t n, double *partial)
{
    __shared__ double sh[CUDA_BLOCK];
    double acc = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * CUDA_BLOCK + threadIdx.x; i < n; i += (int64_t)CUDA_BLOCK * REDUCE_BLOCKS)
        acc += red_term<MODE>(a, b, i);
    double sum = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void reduce_final_kernel(const double *partial, double *out)
{
    __shared__ double sh[CUDA_BLOCK];
    double sum = block_sum(partial[threadIdx.x], sh);
    if (threadIdx.x == 0) *out = sum;
}

template <int MODE>
static gnr_status reduce_sum(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *sum)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(a);
    cuda_scratch sc(ctx->arena);
    double *partial;
    GNR_TRY(sc.alloc((REDUCE_BLOCKS + 1) * sizeof(double), (void **)&partial));
    CUDA_LAUNCH(reduce_partial_kernel<MODE>, REDUCE_BLOCKS, CUDA_BLOCK, 0, s->stream, gnr_f32(a), b ? gnr_f32(b) : NULL, n, partial);
    CUDA_LAUNCH(reduce_final_kernel, 1, CUDA_BLOCK, 0, s->stream, partial, partial + REDUCE_BLOCKS);
    CUDA_CHECK(cudaMemcpyAsync(sum, partial + REDUCE_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return GNR_OK;
}

/* *out = sum_i (a_i - b_i)^2 / n */
gnr_status cuda_sq_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    double sum;
    GNR_TRY(reduce_sum<RED_SQ_DIFF>(ctx, a, b, &sum));
    *out = gnr_numel(a) ? sum / (double)gnr_numel(a) : 0.0; /* the mean of nothing is 0, as on the CPU */
    return GNR_OK;
}

/* *out = sum_i |a_i - b_i| / n */
gnr_status cuda_abs_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    double sum;
    GNR_TRY(reduce_sum<RED_ABS_DIFF>(ctx, a, b, &sum));
    *out = gnr_numel(a) ? sum / (double)gnr_numel(a) : 0.0;
    return GNR_OK;
}

/* *out = sum_i x_i^2 */
gnr_status cuda_sum_sq(gnr_ctx *ctx, const gnr_tensor *x, double *out)
{
    return reduce_sum<RED_SQ>(ctx, x, NULL, out);
}

/* da += k * (a - b), k = scale * 2 / n */
__global__ void sq_diff_backward_kernel(const float *a, const float *b, float k, float *da, int64_t n)
{
    GRID_STRIDE(i, n) da[i] += k * (a[i] - b[i]);
}

/* da += k * sign(a - b), k = scale / n, sign(0) = 0 */
__global__ void abs_diff_backward_kernel(const float *a, const float *b, float k, float *da, int64_t n)
{
    GRID_STRIDE(i, n)
    {
        float d = a[i] - b[i];
        da[i] += d > 0.0f ? k : (d < 0.0f ? -k : 0.0f);
    }
}

gnr_status cuda_sq_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                      gnr_tensor *da)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(a);
    if (n == 0) return GNR_OK;
    float k = (float)((double)scale * 2.0 / (double)n);
    CUDA_LAUNCH(sq_diff_backward_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(a), gnr_f32(b), k, gnr_f32(da), n);
    return GNR_OK;
}

gnr_status cuda_abs_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                       gnr_tensor *da)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t n = gnr_numel(a);
    if (n == 0) return GNR_OK;
    float k = (float)((double)scale / (double)n);
    CUDA_LAUNCH(abs_diff_backward_kernel, cuda_grid(n), CUDA_BLOCK, 0, s->stream, gnr_f32(a), gnr_f32(b), k, gnr_f32(da), n);
    return GNR_OK;
}
