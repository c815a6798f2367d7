/* The op interface: every numeric operation the models need, forward and
 * backward, device-agnostic.
 *
 * Model code (csrc/models) calls only these functions (through the
 * differentiable layer csrc/nn.h); ops.c dispatches each call through the
 * backend table (backend.h) of ctx->device: csrc/cpu/ (always built) or
 * csrc/cuda/ (built when nvcc is found, loaded at run time). Each backend
 * implements every function below with the same signature, named `cpu_*` or
 * `cuda_*` (declared in cpu/cpu_ops.h, cuda/cuda_ops.h).
 *
 * Conventions
 *  - Outputs come last and are allocated by the caller with the documented
 *    shape; ops never allocate outputs. Scratch may come from ctx->arena and is
 *    released before the op returns.
 *  - All tensors of one call are on ctx->device. Activations are float32 on the
 *    CPU; weights are float32.
 *  - Backward ops compute INPUT gradients only (weights are frozen) and ADD into
 *    the gradient buffers (`dx += ...`), so contributions from several uses of
 *    a tensor sum without extra buffers. Callers zero a gradient buffer before
 *    its first use.
 *  - Forward results must not depend on whether a tape is recording: the same
 *    kernels and reduction orders run either way (GNR_SPEC.md section 5 needs
 *    bit-identical internals for identical inputs).
 *  - "rows" below means the product of all leading dims. */
#ifndef GNR_OPS_H
#define GNR_OPS_H

#include "core/context.h"

/* ---------------------------------------------------------------- memory --- */

/* y[i] = value */
gnr_status gnr_fill(gnr_ctx *ctx, gnr_tensor *y, float value);
/* y = x  (same element count; regions may overlap when y starts at or before x) */
gnr_status gnr_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
/* host float32 <-> tensor (host memory is contiguous, numel(t) floats) */
gnr_status gnr_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t);
gnr_status gnr_download(gnr_ctx *ctx, const gnr_tensor *t, float *host);

/* ------------------------------------------------------------ arithmetic --- */

/* y = a + b  (same shape; y may alias a or b) */
gnr_status gnr_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
/* y = alpha * x  (y may alias x) */
gnr_status gnr_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y);
/* y += alpha * x  (same element count). Also the backward of add and scale. */
gnr_status gnr_axpy(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y);

/* Per-channel broadcast add, e.g. the time embedding into a resnet:
 *   y[n,c,h,w] = x[n,c,h,w] + v[n,c]          x, y: N x C x H x W; v: N x C
 * backward (the x path is an identity, use axpy):
 *   dv[n,c] += sum_{h,w} dy[n,c,h,w] */
gnr_status gnr_add_channel_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y);
gnr_status gnr_add_channel_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv);

/* ---------------------------------------------------------------- linear --- */

/* y[r,o] = b[o] + sum_i x[r,i] w[o,i]
 *   x: rows x In (any leading dims), w: Out x In (PyTorch layout; a 1x1 conv
 *   weight Out x In x 1 x 1 is accepted too), b: Out or NULL, y: rows x Out.
 * backward: dx[r,i] += sum_o dy[r,o] w[o,i] */
gnr_status gnr_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              gnr_tensor *y);
gnr_status gnr_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx);

/* ---------------------------------------------------------------- conv2d --- */

typedef struct {
    int stride;
    int pad_top, pad_bottom, pad_left, pad_right; /* zero padding; asymmetric for the VAE downsampler */
} gnr_conv_params;

/* y[n,o,i,j] = b[o] + sum_{c,p,q} w[o,c,p,q] x[n,c, i*s+p-pt, j*s+q-pl]   (x = 0 outside)
 *   x: N x C x H x W, w: O x C x KH x KW, b: O or NULL,
 *   y: N x O x Ho x Wo with Ho = (H + pt + pb - KH) / s + 1, Wo likewise.
 * backward: dx[n,c,u,v] += sum over (o,p,q,i,j) with i*s+p-pt = u, j*s+q-pl = v
 *                          of w[o,c,p,q] dy[n,o,i,j] */
gnr_status gnr_conv2d_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              const gnr_conv_params *p, gnr_tensor *y);
gnr_status gnr_conv2d_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, const gnr_conv_params *p,
                               gnr_tensor *dx);

/* --------------------------------------------------------- normalisation --- */

/* GroupNorm over x: N x C x (spatial...), G groups of C/G channels:
 *   mu, var = mean and biased variance of x[n, group g, all spatial]
 *   y = (x - mu) / sqrt(var + eps) * gamma[c] + beta[c]
 * backward (xhat = (x - mu) * rstd, gh = dy * gamma[c], means over the group):
 *   dx += rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
 * The backward recomputes mu and rstd from x. gamma/beta may be NULL (1, 0). */
gnr_status gnr_group_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                  const gnr_tensor *beta, int groups, float eps, gnr_tensor *y);
gnr_status gnr_group_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                   const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx);

/* LayerNorm over the last dim of x: rows x C; same formulas with the group
 * being one row. */
gnr_status gnr_layer_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                  const gnr_tensor *beta, float eps, gnr_tensor *y);
gnr_status gnr_layer_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                   const gnr_tensor *gamma, float eps, gnr_tensor *dx);

/* ----------------------------------------------------------- activations --- */

typedef enum {
    GNR_ACT_SILU = 0,       /* x * sigmoid(x) */
    GNR_ACT_GELU = 1,       /* x * Phi(x), exact (erf), as torch's gelu(approximate='none') */
    GNR_ACT_QUICK_GELU = 2  /* x * sigmoid(1.702 x), CLIP's */
} gnr_act;

/* y = f(x) elementwise (y may alias x in forward-only use)
 * backward: dx += dy * f'(x) */
gnr_status gnr_act_forward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y);
gnr_status gnr_act_backward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx);

/* GEGLU gate: x: rows x 2F split as [a | g] along the last dim, y: rows x F
 *   y = a * gelu(g)
 * backward: da += dy * gelu(g); dg += dy * a * gelu'(g)   (dx: rows x 2F) */
gnr_status gnr_geglu_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status gnr_geglu_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx);

/* ---------------------------------------------------------------- layout --- */

/* y[n, h*W+w, c] = x[n, c, h, w]      x: N x C x H x W, y: N x HW x C
 * backward is the inverse transpose, accumulated: dx[n,c,h,w] += dy[n,hw,c] */
gnr_status gnr_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
/* y[n, c, h, w] = x[n, h*W+w, c]      x: N x HW x C, y: N x C x H x W (H, W from y)
 * backward: dx[n,hw,c] += dy[n,c,h,w] */
gnr_status gnr_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status gnr_nchw_to_nlc_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);
gnr_status gnr_nlc_to_nchw_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);

/* Channel concatenation y = [a, b] along dim 1   (a: N x Ca x H x W, b: N x Cb x H x W)
 * backward: da += dy[:, :Ca], db += dy[:, Ca:]  (either may be NULL) */
gnr_status gnr_concat_channels_forward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
gnr_status gnr_concat_channels_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db);

/* Nearest-neighbour x2 upsampling: y[n,c,i,j] = x[n,c,i/2,j/2]   (y: N x C x 2H x 2W)
 * backward: dx[n,c,u,v] += sum of the 2x2 block dy[n,c,2u..2u+1,2v..2v+1] */
gnr_status gnr_upsample2x_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status gnr_upsample2x_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);

/* ------------------------------------------------------------- attention --- */

/* Multi-head attention on packed heads:
 *   q: N x Lq x (H*D), k, v: N x Lk x (H*D), head h owns channels [h*D, (h+1)*D)
 *   S[n,h] = scale * Q_h K_h^T  (+ causal mask: S[i,j] = -inf for j > i)
 *   P[n,h] = softmax over the last dim of S[n,h]
 *   out[n, :, h*D:(h+1)*D] = P[n,h] V_h                 out: N x Lq x (H*D)
 * probs: NULL, or N x H x Lq x Lk to receive P (a capture, or saved for the
 * backward). Without probs the CPU backend never holds all of P at once; the
 * values are the same either way.
 * backward, given P (or without probs: P recomputed from q, k, causal and
 * scale, chunk by chunk, bit-identical to what the forward stores):
 *   dV_h += P^T dO_h;  dP = dO_h V_h^T (+ dprobs[n,h] when given: the energy's
 *   gradient w.r.t. the captured map);  dS = P * (dP - rowsum(dP * P));
 *   dQ_h += scale * dS K_h;  dK_h += scale * dS^T Q_h
 * dq, dk, dv may each be NULL when that gradient is not needed. */
gnr_status gnr_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                 int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out);
gnr_status gnr_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                  const gnr_tensor *probs, int heads, int causal, float scale, const gnr_tensor *dout,
                                  const gnr_tensor *dprobs, gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv);

/* ------------------------------------------------------------- embedding --- */

/* y[i, :] = table[ids[i], :]     table: V x C, ids: n host int32 in [0, V), y: n x C
 * (no backward: token ids are not differentiable) */
gnr_status gnr_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n,
                                 gnr_tensor *y);

/* ---------------------------------------------------------- reductions --- */

/* *out = sum_i (a_i - b_i)^2 / n      (accumulated in double)
 * backward: da += scale * 2 (a - b) / n */
gnr_status gnr_sq_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out);
gnr_status gnr_sq_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                     gnr_tensor *da);
/* *out = sum_i |a_i - b_i| / n
 * backward: da += scale * sign(a - b) / n   (sign(0) = 0, as torch) */
gnr_status gnr_abs_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out);
gnr_status gnr_abs_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                      gnr_tensor *da);
/* *out = sum_i x_i^2   (for Frobenius norms; accumulated in double) */
gnr_status gnr_sum_sq(gnr_ctx *ctx, const gnr_tensor *x, double *out);

#endif
