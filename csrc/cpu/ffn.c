/* A transformer block's GEGLU feed-forward in one op (ops.def:
 * geglu_ffn_forward): [a g] = x W1^T + b1, y = (a * gelu(g)) W2^T + b2.
 *
 * Why one op: with few rows (the low-resolution levels, and each block of
 * rows feed_forward.c cuts a level into), a linear layer is the narrow
 * product W x^T (linear.c), the layer's features down the rows, between a
 * transpose of x and one of the result. As three ops, the first layer's 2F
 * features went back to rows only for the gate to read them, and the gate's
 * F features were turned again for the second layer: two of the four
 * transposes, the largest, over the widest tensors of the block. Here the
 * hidden features stay down the rows from the first product to the second
 * (x^T in, y^T out). SD 1.4 shapes, 2 threads, AVX-512, passes alternating
 * in one process: the UNet pass at 256 x 256 took 0.684 s as three ops,
 * 0.657 as one; at 512 x 512 2.66 and 2.56 s; the gradient pass at 256
 * 2.51 and 2.48 s.
 *
 * The same values as the three ops, bit for bit: the same products, each
 * bias added once after its product, the gate cpu_vec_geglu on each
 * feature's row of values (element by element the same function; AVX2
 * computes the last n % 8 elements of a call with the baseline kernel, so
 * there the bits match where the rows are whole vectors, as SD's are).
 * More rows than the narrow products take go through the three ops' kernels. */
#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

/* at[i] = (ft[i] + b[i]) * gelu(ft[f + i] + b[f + i]), each a row of n values
 * (the hidden feature i, and its gate f + i, over the block's rows); ft
 * takes the bias in place. */
static void gate_features(int nt, float *ft, const float *b, int64_t f, int64_t n, float *at)
{
#pragma omp parallel for num_threads(nt) if (f * n > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < f; i++) {
        float *a = ft + i * n, *g = ft + (f + i) * n;
        if (b)
            for (int64_t j = 0; j < n; j++) a[j] += b[i], g[j] += b[f + i];
        cpu_vec_geglu(a, g, at + i * n, n);
    }
}

gnr_status cpu_geglu_ffn_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w1, const gnr_tensor *b1,
                                 const gnr_tensor *w2, const gnr_tensor *b2, gnr_tensor *y)
{
    int64_t in = w1->shape[1], f = w1->shape[0] / 2, out = w2->shape[0];
    int64_t rows = in ? gnr_numel(x) / in : 0;
    int nt = gnr_cpu_threads(ctx);
    gnr_arena_mark mark = gnr_arena_get_mark(ctx->arena);
    gnr_status st = GNR_OK;
    if (!cpu_gemm_narrow_takes(rows)) { /* the three ops */
        gnr_tensor h, a;
        GNR_CHECK(st, gnr_alloc2(ctx, rows, 2 * f, &h));
        GNR_CHECK(st, gnr_alloc2(ctx, rows, f, &a));
        GNR_CHECK(st, cpu_linear_forward(ctx, x, w1, b1, &h));
        GNR_CHECK(st, cpu_geglu_forward(ctx, &h, &a));
        GNR_CHECK(st, cpu_linear_forward(ctx, &a, w2, b2, y));
        goto done;
    }
    float *xt, *ht, *at, *yt; /* x^T, the hidden features, the gate's output, y^T: features down the rows */
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(in * rows) * sizeof(float), (void **)&xt));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(2 * f * rows) * sizeof(float), (void **)&ht));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(f * rows) * sizeof(float), (void **)&at));
    GNR_CHECK(st, gnr_arena_alloc(ctx->arena, (size_t)(out * rows) * sizeof(float), (void **)&yt));
    cpu_transpose(nt, gnr_f32(x), xt, rows, in, 0);
    cpu_gemm_narrow(nt, 0, 2 * f, rows, in, gnr_f32(w1), in, xt, rows, 0, ht, rows);
    gate_features(nt, ht, b1 ? gnr_f32(b1) : NULL, f, rows, at);
    cpu_gemm_narrow(nt, 0, out, rows, f, gnr_f32(w2), f, at, rows, 0, yt, rows);
    if (b2)
        cpu_transpose_bias(nt, yt, gnr_f32(y), out, rows, gnr_f32(b2));
    else
        cpu_transpose(nt, yt, gnr_f32(y), out, rows, 0);
done:
    gnr_arena_release(ctx->arena, mark);
    return st;
}
