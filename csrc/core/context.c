#include "context.h"

gnr_status gnr_alloc(gnr_ctx *ctx, gnr_dtype dt, int ndim, const int64_t *shape, gnr_tensor *out)
{
    gnr_tensor t = gnr_tensor_view(NULL, dt, ctx->device, ndim, shape);
    GNR_TRY(gnr_arena_alloc(ctx->arena, gnr_nbytes(&t), &t.data));
    *out = t;
    return GNR_OK;
}

gnr_status gnr_alloc2(gnr_ctx *ctx, int64_t a, int64_t b, gnr_tensor *out)
{
    int64_t s[2] = {a, b};
    return gnr_alloc(ctx, GNR_F32, 2, s, out);
}

gnr_status gnr_alloc3(gnr_ctx *ctx, int64_t a, int64_t b, int64_t c, gnr_tensor *out)
{
    int64_t s[3] = {a, b, c};
    return gnr_alloc(ctx, GNR_F32, 3, s, out);
}

gnr_status gnr_alloc4(gnr_ctx *ctx, int64_t a, int64_t b, int64_t c, int64_t d, gnr_tensor *out)
{
    int64_t s[4] = {a, b, c, d};
    return gnr_alloc(ctx, GNR_F32, 4, s, out);
}

gnr_status gnr_alloc_like(gnr_ctx *ctx, const gnr_tensor *like, gnr_tensor *out)
{
    return gnr_alloc(ctx, like->dtype, like->ndim, like->shape, out);
}

gnr_status gnr_check_cancel(const gnr_ctx *ctx)
{
    if (ctx->cancel && *ctx->cancel) return gnr_error(GNR_ERR_CANCELLED, "cancelled");
    return GNR_OK;
}
