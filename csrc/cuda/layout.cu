/* Layout changes: NCHW <-> N(HW)C transposes, channel concatenation, nearest
 * x2 upsampling. One thread per output (or per gradient) element, so every
 * backward is a fixed-order gather and needs no atomics. */
#include "cuda_ops.h"

/* out[n, p, c] (+)= in[n, c, p]   (in: N x C x L, out: N x L x C) */
template <bool ACC>
__global__ void to_nlc_kernel(const float *in, float *out, int64_t C, int64_t L, int64_t total)
{
    GRID_STRIDE(i, total)
    {
        int64_t c = i % C, p = (i / C) % L, n = i / (C * L);
        float v = in[(n * C + c) * L + p];
        if (ACC) out[i] += v; else out[i] = v;
    }
}

/* out[n, c, p] (+)= in[n, p, c]   (in: N x L x C, out: N x C x L) */
template <bool ACC>
__global__ void to_nchw_kernel(const float *in, float *out, int64_t C, int64_t L, int64_t total)
{
    GRID_STRIDE(i, total)
    {
        int64_t p = i % L, c = (i / L) % C, n = i / (C * L);
        float v = in[(n * L + p) * C + c];
        if (ACC) out[i] += v; else out[i] = v;
    }
}

/* N, C, L = H*W of the N x C x H x W side (shapes checked in op_checks.c). */
static void nchw_dims(const gnr_tensor *img, int64_t *N, int64_t *C, int64_t *L)
{
    *N = img->shape[0];
    *C = img->shape[1];
    *L = img->shape[2] * img->shape[3];
}

/* img: the N x C x H x W side; to_seq: whether the output is the sequence. */
static gnr_status transpose_op(gnr_ctx *ctx, const gnr_tensor *in, gnr_tensor *out, bool img_is_in,
                               bool acc)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t N = 0, C = 0, L = 0;
    nchw_dims(img_is_in ? in : out, &N, &C, &L);
    int64_t total = N * C * L;
    if (total == 0) return GNR_OK;
    const float *x = gnr_f32(in);
    float *y = gnr_f32(out);
    unsigned grid = cuda_grid(total);
    if (img_is_in) {
        if (acc) CUDA_LAUNCH(to_nlc_kernel<true>, grid, CUDA_BLOCK, 0, s->stream, x, y, C, L, total);
        else CUDA_LAUNCH(to_nlc_kernel<false>, grid, CUDA_BLOCK, 0, s->stream, x, y, C, L, total);
    } else {
        if (acc) CUDA_LAUNCH(to_nchw_kernel<true>, grid, CUDA_BLOCK, 0, s->stream, x, y, C, L, total);
        else CUDA_LAUNCH(to_nchw_kernel<false>, grid, CUDA_BLOCK, 0, s->stream, x, y, C, L, total);
    }
    return GNR_OK;
}

/* y[n, h*W+w, c] = x[n, c, h, w] */
gnr_status cuda_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    return transpose_op(ctx, x, y, true, false);
}

/* y[n, c, h, w] = x[n, h*W+w, c] */
gnr_status cuda_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    return transpose_op(ctx, x, y, false, false);
}

/* dx[n,c,h,w] += dy[n,hw,c] */
gnr_status cuda_nchw_to_nlc_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    return transpose_op(ctx, dy, dx, false, true);
}

/* dx[n,hw,c] += dy[n,c,h,w] */
gnr_status cuda_nlc_to_nchw_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    return transpose_op(ctx, dy, dx, true, true);
}

/* y[n, c, p] = c < Ca ? a[n, c, p] : b[n, c - Ca, p] */
__global__ void concat_kernel(const float *a, const float *b, float *y, int64_t Ca, int64_t Cb, int64_t L,
                              int64_t total)
{
    GRID_STRIDE(i, total)
    {
        int64_t C = Ca + Cb, p = i % L, c = (i / L) % C, n = i / (C * L);
        y[i] = c < Ca ? a[(n * Ca + c) * L + p] : b[(n * Cb + c - Ca) * L + p];
    }
}

/* d[n, c, p] += dy[n, c0 + c, p]   (d: N x Cd x L, dy: N x C x L) */
__global__ void slice_channels_acc_kernel(const float *dy, float *d, int64_t C, int64_t c0, int64_t Cd, int64_t L,
                                          int64_t total)
{
    GRID_STRIDE(i, total)
    {
        int64_t p = i % L, c = (i / L) % Cd, n = i / (Cd * L);
        d[i] += dy[(n * C + c0 + c) * L + p];
    }
}

static void concat_dims(const gnr_tensor *a, const gnr_tensor *b, int64_t *Ca, int64_t *Cb, int64_t *L)
{
    *Ca = a->shape[1];
    *Cb = b->shape[1];
    *L = a->shape[2] * a->shape[3];
}

gnr_status cuda_concat_channels_forward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t Ca = 0, Cb = 0, L = 0;
    concat_dims(a, b, &Ca, &Cb, &L);
    int64_t total = gnr_numel(y);
    if (total == 0) return GNR_OK;
    CUDA_LAUNCH(concat_kernel, cuda_grid(total), CUDA_BLOCK, 0, s->stream, gnr_f32(a), gnr_f32(b), gnr_f32(y), Ca, Cb, L, total);
    return GNR_OK;
}

/* da += dy[:, :Ca], db += dy[:, Ca:] (either may be NULL) */
gnr_status cuda_concat_channels_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t N = dy->shape[0], C = dy->shape[1], L = dy->shape[2] * dy->shape[3];
    int64_t Ca = da ? da->shape[1] : (db ? C - db->shape[1] : 0);
    gnr_tensor *parts[2] = {da, db};
    int64_t c0s[2] = {0, Ca};
    for (int k = 0; k < 2; k++) {
        gnr_tensor *d = parts[k];
        if (!d) continue;
        int64_t Cd = d->shape[1];
        int64_t total = N * Cd * L;
        if (total == 0) continue;
        CUDA_LAUNCH(slice_channels_acc_kernel, cuda_grid(total), CUDA_BLOCK, 0, s->stream, gnr_f32(dy), gnr_f32(d), C, c0s[k], Cd, L, total);
    }
    return GNR_OK;
}

/* y[n,c,i,j] = x[n,c,i/2,j/2]   (x: NC x H x W, y: NC x 2H x 2W) */
__global__ void upsample2x_kernel(const float *x, float *y, int64_t H, int64_t W, int64_t total)
{
    GRID_STRIDE(idx, total)
    {
        int64_t j = idx % (2 * W), i = (idx / (2 * W)) % (2 * H), nc = idx / (4 * H * W);
        y[idx] = x[(nc * H + i / 2) * W + j / 2];
    }
}

/* dx[n,c,u,v] += sum of dy[n,c,2u..2u+1,2v..2v+1] */
__global__ void upsample2x_backward_kernel(const float *dy, float *dx, int64_t H, int64_t W, int64_t total)
{
    GRID_STRIDE(idx, total)
    {
        int64_t v = idx % W, u = (idx / W) % H, nc = idx / (H * W);
        const float *r0 = dy + (nc * 2 * H + 2 * u) * 2 * W + 2 * v;
        const float *r1 = r0 + 2 * W;
        dx[idx] += (r0[0] + r0[1]) + (r1[0] + r1[1]);
    }
}

static void upsample_dims(const gnr_tensor *x, int64_t *H, int64_t *W)
{
    *H = x->shape[2];
    *W = x->shape[3];
}

gnr_status cuda_upsample2x_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t H = 0, W = 0;
    upsample_dims(x, &H, &W);
    int64_t total = gnr_numel(y);
    if (total == 0) return GNR_OK;
    CUDA_LAUNCH(upsample2x_kernel, cuda_grid(total), CUDA_BLOCK, 0, s->stream, gnr_f32(x), gnr_f32(y), H, W, total);
    return GNR_OK;
}

gnr_status cuda_upsample2x_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    cuda_state *s = cuda_state_of(ctx);
    int64_t H = 0, W = 0;
    upsample_dims(dx, &H, &W);
    int64_t total = gnr_numel(dx);
    if (total == 0) return GNR_OK;
    CUDA_LAUNCH(upsample2x_backward_kernel, cuda_grid(total), CUDA_BLOCK, 0, s->stream, gnr_f32(dy), gnr_f32(dx), H, W, total);
    return GNR_OK;
}
