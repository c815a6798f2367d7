/* The CPU backend: every op of ops.h as cpu_*, plus the helpers its files share.
 *
 * float32, contiguous, row-major. Elementwise work and reductions run on OpenMP
 * threads (gnr_cpu_threads); matrix products go to OpenBLAS sgemm, always from
 * outside any parallel region. Reductions are split into fixed chunks whose
 * partial results are combined in a fixed order, so a result never depends on
 * scheduling (DECISIONS.md section 5). Scratch comes from ctx->arena and is
 * released before an op returns. */
#ifndef GNR_CPU_OPS_H
#define GNR_CPU_OPS_H

#include <stdint.h>

#include "ops.h"

/* ------------------------------------------------------------- helpers --- */

/* OpenMP threads for a parallel region of this context. */
int gnr_cpu_threads(const gnr_ctx *ctx);

/* Row-major C = alpha op(A) op(B) + beta C through OpenBLAS (never call from
 * inside an OpenMP parallel region). */
void gnr_cpu_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                   int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/* GNR_ERR_VALUE/TYPE unless t is a float32 CPU tensor; `op` and `name` for the message. */
gnr_status gnr_cpu_check_f32(const char *op, const char *name, const gnr_tensor *t);
/* GNR_ERR_VALUE unless a and b have the same element count. */
gnr_status gnr_cpu_check_numel(const char *op, const char *an, const gnr_tensor *a, const char *bn,
                               const gnr_tensor *b);
/* GNR_ERR_VALUE unless a and b have the same shape. */
gnr_status gnr_cpu_check_same(const char *op, const char *an, const gnr_tensor *a, const char *bn,
                              const gnr_tensor *b);

/* Shape strings for messages: up to 4 live at once per thread. */
const char *gnr_cpu_shape(const gnr_tensor *t);

/* Elements below which a loop stays on one thread. */
#define GNR_CPU_PAR_MIN 32768

/* The memory the CPU tensors and arenas use (64-byte aligned). */
void *gnr_cpu_alloc(size_t bytes, void *user);
void gnr_cpu_free(void *ptr, void *user);
void gnr_cpu_fill_nan(void *ptr, size_t bytes, void *user); /* GNR_NANFILL: signalling NaNs */

/* ----------------------------------------------------------------- ops --- */

gnr_status cpu_synchronize(gnr_ctx *ctx);
gnr_status cpu_fill(gnr_ctx *ctx, gnr_tensor *y, float value);
gnr_status cpu_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t);
gnr_status cpu_download(gnr_ctx *ctx, const gnr_tensor *t, float *host);

gnr_status cpu_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
gnr_status cpu_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y);
gnr_status cpu_axpy(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_add_channel_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y);
gnr_status cpu_add_channel_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv);

gnr_status cpu_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              gnr_tensor *y);
gnr_status cpu_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx);

gnr_status cpu_conv2d_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                              const gnr_conv_params *p, gnr_tensor *y);
gnr_status cpu_conv2d_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, const gnr_conv_params *p,
                               gnr_tensor *dx);

gnr_status cpu_group_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                  const gnr_tensor *beta, int groups, float eps, gnr_tensor *y);
gnr_status cpu_group_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                   const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx);
gnr_status cpu_layer_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                  const gnr_tensor *beta, float eps, gnr_tensor *y);
gnr_status cpu_layer_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                   const gnr_tensor *gamma, float eps, gnr_tensor *dx);

gnr_status cpu_act_forward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_act_backward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x,
                            gnr_tensor *dx);
gnr_status cpu_geglu_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_geglu_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx);

gnr_status cpu_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_nchw_to_nlc_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);
gnr_status cpu_nlc_to_nchw_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);
gnr_status cpu_concat_channels_forward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y);
gnr_status cpu_concat_channels_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db);
gnr_status cpu_upsample2x_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y);
gnr_status cpu_upsample2x_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx);

gnr_status cpu_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                 int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out);
gnr_status cpu_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                  const gnr_tensor *probs, int heads, int causal, float scale,
                                  const gnr_tensor *dout, const gnr_tensor *dprobs, gnr_tensor *dq, gnr_tensor *dk,
                                  gnr_tensor *dv);

gnr_status cpu_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n,
                                 gnr_tensor *y);

gnr_status cpu_sq_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out);
gnr_status cpu_sq_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                     gnr_tensor *da);
gnr_status cpu_abs_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out);
gnr_status cpu_abs_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                      gnr_tensor *da);
gnr_status cpu_sum_sq(gnr_ctx *ctx, const gnr_tensor *x, double *out);

#endif
