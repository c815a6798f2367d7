/* A transformer block's GEGLU feed-forward in one op (ops.def:
 * geglu_ffn_forward): [a g] = x W1^T + b1, y = (a * gelu(g)) W2^T + b2.
 *
 * On the GPU it is the three ops in turn: cuBLAS takes both products'
 * operands as they lie, so there is no layout to keep between them (the
 * CPU's reason for the op: cpu/ffn.c). The hidden features live in scratch
 * for the call. */
#include "cuda_ops.h"

gnr_status cuda_geglu_ffn_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w1, const gnr_tensor *b1,
                                  const gnr_tensor *w2, const gnr_tensor *b2, gnr_tensor *y)
{
    int64_t in = w1->shape[1], f = w1->shape[0] / 2;
    int64_t rows = in ? gnr_numel(x) / in : 0;
    cuda_scratch sc(ctx->arena);
    void *ph = NULL, *pa = NULL;
    GNR_TRY(sc.alloc((size_t)(rows * 2 * f) * sizeof(float), &ph));
    GNR_TRY(sc.alloc((size_t)(rows * f) * sizeof(float), &pa));
    int64_t hshape[2] = {rows, 2 * f}, ashape[2] = {rows, f};
    gnr_tensor h = gnr_tensor_view(ph, GNR_F32, x->device, 2, hshape);
    gnr_tensor a = gnr_tensor_view(pa, GNR_F32, x->device, 2, ashape);
    GNR_TRY(cuda_linear_forward(ctx, x, w1, b1, &h));
    GNR_TRY(cuda_geglu_forward(ctx, &h, &a));
    return cuda_linear_forward(ctx, &a, w2, b2, y);
}
