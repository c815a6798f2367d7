#include "feed_forward.h"

#include "gnr.h"

/* The wide intermediates' budget per block of rows (W1 x and GEGLU's
 * output, in the forward geglu_ffn_forward's: 12 floats a row per channel,
 * 20 in the backward). On the CPU, 256-row products run as fast as whole
 * ones (cpu/linear.c); a block never goes below 64 rows. */
#define FF_BLOCK_BYTES ((size_t)4 << 20)
#define FF_MIN_ROWS 64
/* On a GPU a block costs kernel launches and small products leave its
 * tensor cores idle, where the memory is less scarce: a budget this many
 * times larger (at 512 x 512, SD 1.4 shapes: the forward whole, the
 * backward in two blocks). */
#define FF_CUDA_FACTOR 16

static size_t block_bytes = FF_BLOCK_BYTES;

size_t gnr_feed_forward_block_bytes(size_t bytes)
{
    size_t before = block_bytes;
    if (bytes > 0) block_bytes = bytes;
    return before;
}

typedef struct {
    int64_t rows, in, hidden, out; /* x: rows x in; W1 x: rows x 2 hidden; y: rows x out */
    int64_t block;                 /* rows per block */
    gnr_tensor f, df, da;          /* the backward's intermediates for one block */
} ff_plan;

static gnr_tensor rows_of(const gnr_tensor *t, int64_t r0, int64_t n, int64_t width)
{
    int64_t shape[2] = {n, width};
    return gnr_tensor_view((char *)t->data + (size_t)(r0 * width) * gnr_dtype_size(t->dtype), t->dtype, t->device, 2,
                           shape);
}

/* The block size and its intermediates (ctx->arena; the caller releases). */
static gnr_status plan(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x, int backward, ff_plan *p)
{
    p->in = x->shape[x->ndim - 1];
    p->rows = p->in ? gnr_numel(x) / p->in : 0;
    p->hidden = w->w1->shape[0] / 2;
    p->out = w->w2->shape[0];
    /* the forward's W1 x and GEGLU's output; the backward's W1 x, its gradient and GEGLU's output's */
    int64_t per_row = (backward ? 5 : 3) * p->hidden * (int64_t)sizeof(float);
    size_t budget = block_bytes * (x->device == GNR_CUDA ? FF_CUDA_FACTOR : 1);
    int64_t block = (int64_t)budget / (per_row ? per_row : 1) / FF_MIN_ROWS * FF_MIN_ROWS;
    if (block < FF_MIN_ROWS) block = FF_MIN_ROWS;
    p->block = block < p->rows ? block : p->rows;
    if (!backward) return GNR_OK; /* geglu_ffn_forward holds its own */
    GNR_TRY(gnr_alloc2(ctx, p->block, 2 * p->hidden, &p->f));
    GNR_TRY(gnr_alloc2(ctx, p->block, 2 * p->hidden, &p->df));
    return gnr_alloc2(ctx, p->block, p->hidden, &p->da);
}

/* The block's W1 x + b1 into p->f (viewed for n rows). */
static gnr_status project(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x, const ff_plan *p,
                          int64_t r0, int64_t n, gnr_tensor *f)
{
    gnr_tensor xr = rows_of(x, r0, n, p->in);
    *f = rows_of(&p->f, 0, n, 2 * p->hidden);
    return gnr_linear_forward(ctx, &xr, w->w1, w->b1, f);
}

gnr_status gnr_feed_forward(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x, gnr_tensor *y)
{
    int64_t shape[GNR_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = w->w2->shape[0];
    GNR_TRY(gnr_alloc(ctx, x->dtype, x->ndim, shape, y));
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    ff_plan p;
    gnr_status st = plan(ctx, w, x, 0, &p);
    for (int64_t r0 = 0; st == GNR_OK && r0 < p.rows; r0 += p.block) {
        int64_t n = p.rows - r0 < p.block ? p.rows - r0 : p.block;
        gnr_tensor xr = rows_of(x, r0, n, p.in), yr = rows_of(y, r0, n, p.out);
        st = gnr_geglu_ffn_forward(ctx, &xr, w->w1, w->b1, w->w2, w->b2, &yr);
    }
    gnr_arena_release(ctx->arena, mark);
    return st;
}

gnr_status gnr_feed_forward_backward(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x,
                                     const gnr_tensor *dy, gnr_tensor *dx)
{
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    ff_plan p;
    gnr_status st = plan(ctx, w, x, 1, &p);
    for (int64_t r0 = 0; st == GNR_OK && r0 < p.rows; r0 += p.block) {
        int64_t n = p.rows - r0 < p.block ? p.rows - r0 : p.block;
        gnr_tensor f, dyr = rows_of(dy, r0, n, p.out), dxr = rows_of(dx, r0, n, p.in);
        gnr_tensor da = rows_of(&p.da, 0, n, p.hidden), df = rows_of(&p.df, 0, n, 2 * p.hidden);
        st = project(ctx, w, x, &p, r0, n, &f);
        /* the ops' backwards add to their gradients: these start at zero */
        if (st == GNR_OK) st = gnr_fill(ctx, &da, 0.0f);
        if (st == GNR_OK) st = gnr_linear_backward(ctx, &dyr, w->w2, &da);
        if (st == GNR_OK) st = gnr_fill(ctx, &df, 0.0f);
        if (st == GNR_OK) st = gnr_geglu_backward(ctx, &da, &f, &df);
        if (st == GNR_OK) st = gnr_linear_backward(ctx, &df, w->w1, &dxr);
    }
    gnr_arena_release(ctx->arena, mark);
    return st;
}
