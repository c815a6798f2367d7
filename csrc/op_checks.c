/* Argument and shape validation per op (op_checks.h). Every tensor of a call
 * must be present, float32 and on the context's device; the shape rules are
 * those of ops.def. */
#include "op_checks.h"

/* Shape strings for messages: up to 4 live at once per thread. */
static const char *shape(const gnr_tensor *t)
{
    static _Thread_local char bufs[4][96];
    static _Thread_local int next = 0;
    char *b = bufs[next];
    next = (next + 1) & 3;
    if (!t) return "None";
    return gnr_shape_str(t, b, sizeof bufs[0]);
}

static gnr_status tensor(const gnr_ctx *ctx, const char *op, const char *name, const gnr_tensor *t)
{
    if (!t || !t->data) return gnr_error(GNR_ERR_VALUE, "%s: %s is missing", op, name);
    if (t->dtype != GNR_F32)
        return gnr_error(GNR_ERR_TYPE, "%s: %s is %s; ops compute in float32", op, name, gnr_dtype_name(t->dtype));
    if (t->device != ctx->device)
        return gnr_error(GNR_ERR_VALUE, "%s: %s is on %s, expected %s (the context's device)", op, name,
                         gnr_device_name(t->device), gnr_device_name(ctx->device));
    return GNR_OK;
}

/* An optional tensor: NULL, or valid as above. */
static gnr_status optional(const gnr_ctx *ctx, const char *op, const char *name, const gnr_tensor *t)
{
    return t ? tensor(ctx, op, name, t) : GNR_OK;
}

static gnr_status same_numel(const char *op, const char *an, const gnr_tensor *a, const char *bn,
                             const gnr_tensor *b)
{
    if (gnr_numel(a) != gnr_numel(b))
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s and %s %s must have the same number of elements", op, an,
                         shape(a), bn, shape(b));
    return GNR_OK;
}

static gnr_status same_shape(const char *op, const char *an, const gnr_tensor *a, const char *bn,
                             const gnr_tensor *b)
{
    if (!gnr_same_shape(a, b))
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s and %s %s must have the same shape", op, an, shape(a), bn,
                         shape(b));
    return GNR_OK;
}

/* Two tensors a and b whose shapes must relate by a rule (`related`), said in
 * the message as "a <ar> and b <br>". */
static gnr_status related_pair(const gnr_ctx *ctx, const char *op, const char *an, const gnr_tensor *a,
                               const char *ar, const char *bn, const gnr_tensor *b, const char *br,
                               int (*related)(const gnr_tensor *, const gnr_tensor *))
{
    GNR_TRY(tensor(ctx, op, an, a));
    GNR_TRY(tensor(ctx, op, bn, b));
    if (!related(a, b))
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must be %s and %s %s %s", op, an, shape(a), ar, bn, shape(b), br);
    return GNR_OK;
}

/* ---------------------------------------------------------------- memory --- */

gnr_status gnr_check_fill(gnr_ctx *ctx, gnr_tensor *y, float value)
{
    (void)value;
    return tensor(ctx, "fill", "y", y);
}

gnr_status gnr_check_copy(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    GNR_TRY(tensor(ctx, "copy", "x", x));
    GNR_TRY(tensor(ctx, "copy", "y", y));
    return same_numel("copy", "x", x, "y", y);
}

static gnr_status host_transfer(const gnr_ctx *ctx, const char *op, const void *host, const gnr_tensor *t)
{
    GNR_TRY(tensor(ctx, op, "t", t));
    if (!host && gnr_nbytes(t) > 0) return gnr_error(GNR_ERR_VALUE, "%s: host pointer is NULL", op);
    return GNR_OK;
}

gnr_status gnr_check_upload(gnr_ctx *ctx, const float *host, gnr_tensor *t)
{
    return host_transfer(ctx, "upload", host, t);
}

gnr_status gnr_check_download(gnr_ctx *ctx, const gnr_tensor *t, float *host)
{
    return host_transfer(ctx, "download", host, t);
}

/* ------------------------------------------------------------ arithmetic --- */

gnr_status gnr_check_add(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    GNR_TRY(tensor(ctx, "add", "a", a));
    GNR_TRY(tensor(ctx, "add", "b", b));
    GNR_TRY(tensor(ctx, "add", "y", y));
    GNR_TRY(same_numel("add", "a", a, "b", b));
    return same_numel("add", "a", a, "y", y);
}

/* y = alpha x and y += alpha x: two tensors of one size. */
static gnr_status scaled_pair(const gnr_ctx *ctx, const char *op, const gnr_tensor *x, const gnr_tensor *y)
{
    GNR_TRY(tensor(ctx, op, "x", x));
    GNR_TRY(tensor(ctx, op, "y", y));
    return same_numel(op, "x", x, "y", y);
}

gnr_status gnr_check_scale(gnr_ctx *ctx, const gnr_tensor *x, float alpha, gnr_tensor *y)
{
    (void)alpha;
    return scaled_pair(ctx, "scale", x, y);
}

gnr_status gnr_check_axpy(gnr_ctx *ctx, float alpha, const gnr_tensor *x, gnr_tensor *y)
{
    (void)alpha;
    return scaled_pair(ctx, "axpy", x, y);
}

/* x: N x C x H x W, v: N x C */
static int channel_of(const gnr_tensor *x, const gnr_tensor *v)
{
    return x->ndim == 4 && v->ndim == 2 && v->shape[0] == x->shape[0] && v->shape[1] == x->shape[1];
}

static gnr_status channel_pair(const gnr_ctx *ctx, const char *op, const char *xn, const gnr_tensor *x,
                               const char *vn, const gnr_tensor *v)
{
    return related_pair(ctx, op, xn, x, "N x C x H x W", vn, v, "N x C", channel_of);
}

gnr_status gnr_check_add_channel_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *v, gnr_tensor *y)
{
    const char *op = "add_channel_forward";
    GNR_TRY(channel_pair(ctx, op, "x", x, "v", v));
    GNR_TRY(tensor(ctx, op, "y", y));
    return same_shape(op, "x", x, "y", y);
}

gnr_status gnr_check_add_channel_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dv)
{
    return channel_pair(ctx, "add_channel_backward", "dy", dy, "dv", dv);
}

/* ---------------------------------------------------------------- linear --- */

/* w: Out x In, or a 1x1 conv weight Out x In x 1 x 1 */
static gnr_status weight_dims(const char *op, const gnr_tensor *w, int64_t *out, int64_t *in)
{
    if (w->ndim == 2 || (w->ndim == 4 && w->shape[2] == 1 && w->shape[3] == 1)) {
        *out = w->shape[0];
        *in = w->shape[1];
        return GNR_OK;
    }
    return gnr_error(GNR_ERR_VALUE, "%s: w %s must be Out x In (or Out x In x 1 x 1)", op, shape(w));
}

/* a: rows x K (K its last dim), b: rows x M; the rows of a in *rows. */
static gnr_status rows_pair(const char *op, const char *an, const gnr_tensor *a, int64_t k, const char *kn,
                            const char *bn, const gnr_tensor *b, int64_t m, const char *mn, const gnr_tensor *w)
{
    if (a->ndim < 1 || a->shape[a->ndim - 1] != k)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must end in %s = %lld, a dim of w %s", op, an, shape(a), kn,
                         (long long)k, shape(w));
    int64_t rows = k ? gnr_numel(a) / k : 0;
    if (b->ndim < 1 || b->shape[b->ndim - 1] != m || gnr_numel(b) != rows * m)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must be rows x %s = %lld x %lld (%s %s, w %s)", op, bn, shape(b),
                         mn, (long long)rows, (long long)m, an, shape(a), shape(w));
    return GNR_OK;
}

/* A bias bn (or NULL) of dn = n elements, for the weight wn */
static gnr_status bias_of(const gnr_ctx *ctx, const char *op, const char *bn, const gnr_tensor *b, const char *dn,
                          int64_t n, const char *wn, const gnr_tensor *w)
{
    if (!b) return GNR_OK;
    GNR_TRY(tensor(ctx, op, bn, b));
    if (gnr_numel(b) != n)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must have %s = %lld elements (%s %s)", op, bn, shape(b), dn,
                         (long long)n, wn, shape(w));
    return GNR_OK;
}

gnr_status gnr_check_linear_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                                    gnr_tensor *y)
{
    const char *op = "linear_forward";
    GNR_TRY(tensor(ctx, op, "x", x));
    GNR_TRY(tensor(ctx, op, "w", w));
    GNR_TRY(tensor(ctx, op, "y", y));
    int64_t out = 0, in = 0;
    GNR_TRY(weight_dims(op, w, &out, &in));
    GNR_TRY(rows_pair(op, "x", x, in, "In", "y", y, out, "Out", w));
    return bias_of(ctx, op, "b", b, "Out", out, "w", w);
}

gnr_status gnr_check_linear_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w, gnr_tensor *dx)
{
    const char *op = "linear_backward";
    GNR_TRY(tensor(ctx, op, "dy", dy));
    GNR_TRY(tensor(ctx, op, "w", w));
    GNR_TRY(tensor(ctx, op, "dx", dx));
    int64_t out = 0, in = 0;
    GNR_TRY(weight_dims(op, w, &out, &in));
    return rows_pair(op, "dy", dy, out, "Out", "dx", dx, in, "In", w);
}

/* ---------------------------------------------------------------- conv2d --- */

/* x: N x C x H x W, w: O x C x KH x KW, y: N x O x Ho x Wo for the params;
 * xn and yn name x and y in messages (dx and dy in the backward). */
static gnr_status conv(const gnr_ctx *ctx, const char *op, const char *xn, const gnr_tensor *x,
                       const gnr_tensor *w, const char *yn, const gnr_tensor *y, const gnr_conv_params *p)
{
    GNR_TRY(tensor(ctx, op, xn, x));
    GNR_TRY(tensor(ctx, op, "w", w));
    GNR_TRY(tensor(ctx, op, yn, y));
    if (!p) return gnr_error(GNR_ERR_VALUE, "%s: conv params are missing", op);
    if (p->stride < 1 || p->pad_top < 0 || p->pad_bottom < 0 || p->pad_left < 0 || p->pad_right < 0)
        return gnr_error(GNR_ERR_VALUE, "%s: stride %d must be >= 1 and pads (%d, %d, %d, %d) >= 0", op, p->stride,
                         p->pad_top, p->pad_bottom, p->pad_left, p->pad_right);
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s, w %s and %s %s must all be 4-D (N x C x H x W, O x C x KH x KW)",
                         op, xn, shape(x), shape(w), yn, shape(y));
    if (w->shape[1] != x->shape[1])
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s has %lld channels but w %s expects %lld", op, xn, shape(x),
                         (long long)x->shape[1], shape(w), (long long)w->shape[1]);
    int64_t kh = w->shape[2], kw = w->shape[3];
    int64_t hp = x->shape[2] + p->pad_top + p->pad_bottom, wp = x->shape[3] + p->pad_left + p->pad_right;
    if (hp < kh || wp < kw)
        return gnr_error(GNR_ERR_VALUE, "%s: kernel %lld x %lld is larger than the padded input %lld x %lld (%s %s)",
                         op, (long long)kh, (long long)kw, (long long)hp, (long long)wp, xn, shape(x));
    int64_t ho = (hp - kh) / p->stride + 1, wo = (wp - kw) / p->stride + 1;
    if (y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0] || y->shape[2] != ho || y->shape[3] != wo)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must be (%lld, %lld, %lld, %lld) for %s %s, w %s, stride %d", op,
                         yn, shape(y), (long long)x->shape[0], (long long)w->shape[0], (long long)ho, (long long)wo,
                         xn, shape(x), shape(w), p->stride);
    return GNR_OK;
}

gnr_status gnr_check_conv2d_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w, const gnr_tensor *b,
                                    const gnr_conv_params *p, gnr_tensor *y)
{
    const char *op = "conv2d_forward";
    GNR_TRY(conv(ctx, op, "x", x, w, "y", y, p));
    return bias_of(ctx, op, "b", b, "O", w->shape[0], "w", w);
}

gnr_status gnr_check_conv2d_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *w,
                                     const gnr_conv_params *p, gnr_tensor *dx)
{
    return conv(ctx, "conv2d_backward", "dx", dx, w, "dy", dy, p);
}

/* --------------------------------------------------------- normalisation --- */

/* gamma / beta: NULL or one element per channel */
static gnr_status affine(const gnr_ctx *ctx, const char *op, const char *name, const gnr_tensor *t, int64_t c,
                         const gnr_tensor *x)
{
    if (!t) return GNR_OK;
    GNR_TRY(tensor(ctx, op, name, t));
    if (gnr_numel(t) != c)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must have %lld elements, one per channel of x %s", op, name,
                         shape(t), (long long)c, shape(x));
    return GNR_OK;
}

/* x: N x C x (spatial...) with groups dividing C; returns C in *c. */
static gnr_status group_x(const gnr_ctx *ctx, const char *op, const gnr_tensor *x, int groups, int64_t *c)
{
    GNR_TRY(tensor(ctx, op, "x", x));
    if (x->ndim < 2) return gnr_error(GNR_ERR_VALUE, "%s: x %s must be N x C x (spatial...)", op, shape(x));
    *c = x->shape[1];
    if (groups < 1 || *c % groups)
        return gnr_error(GNR_ERR_VALUE, "%s: %d groups must divide the %lld channels of x %s", op, groups,
                         (long long)*c, shape(x));
    return GNR_OK;
}

/* x: rows x C; returns C in *c. */
static gnr_status layer_x(const gnr_ctx *ctx, const char *op, const gnr_tensor *x, int64_t *c)
{
    GNR_TRY(tensor(ctx, op, "x", x));
    if (x->ndim < 1) return gnr_error(GNR_ERR_VALUE, "%s: x %s has no last dim", op, shape(x));
    *c = x->shape[x->ndim - 1];
    return GNR_OK;
}

/* The rest of a norm's arguments once x is checked and C known. */
static gnr_status norm_forward_rest(const gnr_ctx *ctx, const char *op, const gnr_tensor *x, int64_t c,
                                    const gnr_tensor *gamma, const gnr_tensor *beta, const gnr_tensor *y)
{
    GNR_TRY(tensor(ctx, op, "y", y));
    GNR_TRY(affine(ctx, op, "gamma", gamma, c, x));
    GNR_TRY(affine(ctx, op, "beta", beta, c, x));
    return same_shape(op, "x", x, "y", y);
}

static gnr_status norm_backward_rest(const gnr_ctx *ctx, const char *op, const gnr_tensor *dy,
                                     const gnr_tensor *x, int64_t c, const gnr_tensor *gamma,
                                     const gnr_tensor *dx)
{
    GNR_TRY(tensor(ctx, op, "dy", dy));
    GNR_TRY(tensor(ctx, op, "dx", dx));
    GNR_TRY(affine(ctx, op, "gamma", gamma, c, x));
    GNR_TRY(same_shape(op, "dy", dy, "x", x));
    return same_shape(op, "dx", dx, "x", x);
}

gnr_status gnr_check_group_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                        const gnr_tensor *beta, int groups, float eps, gnr_tensor *y)
{
    (void)eps;
    int64_t c = 0;
    GNR_TRY(group_x(ctx, "group_norm_forward", x, groups, &c));
    return norm_forward_rest(ctx, "group_norm_forward", x, c, gamma, beta, y);
}

gnr_status gnr_check_group_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                         const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx)
{
    (void)eps;
    int64_t c = 0;
    GNR_TRY(group_x(ctx, "group_norm_backward", x, groups, &c));
    return norm_backward_rest(ctx, "group_norm_backward", dy, x, c, gamma, dx);
}

gnr_status gnr_check_layer_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                        const gnr_tensor *beta, float eps, gnr_tensor *y)
{
    (void)eps;
    int64_t c = 0;
    GNR_TRY(layer_x(ctx, "layer_norm_forward", x, &c));
    return norm_forward_rest(ctx, "layer_norm_forward", x, c, gamma, beta, y);
}

gnr_status gnr_check_layer_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                         const gnr_tensor *gamma, float eps, gnr_tensor *dx)
{
    (void)eps;
    int64_t c = 0;
    GNR_TRY(layer_x(ctx, "layer_norm_backward", x, &c));
    return norm_backward_rest(ctx, "layer_norm_backward", dy, x, c, gamma, dx);
}

/* ----------------------------------------------------------- activations --- */

static gnr_status known_act(const char *op, gnr_act act)
{
    if (act != GNR_ACT_SILU && act != GNR_ACT_GELU && act != GNR_ACT_QUICK_GELU)
        return gnr_error(GNR_ERR_VALUE, "%s: unknown activation %d (allowed: silu 0, gelu 1, quick_gelu 2)", op,
                         (int)act);
    return GNR_OK;
}

gnr_status gnr_check_act_forward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *x, gnr_tensor *y)
{
    const char *op = "act_forward";
    GNR_TRY(known_act(op, act));
    GNR_TRY(tensor(ctx, op, "x", x));
    GNR_TRY(tensor(ctx, op, "y", y));
    return same_numel(op, "x", x, "y", y);
}

gnr_status gnr_check_act_backward(gnr_ctx *ctx, gnr_act act, const gnr_tensor *dy, const gnr_tensor *x,
                                  gnr_tensor *dx)
{
    const char *op = "act_backward";
    GNR_TRY(known_act(op, act));
    GNR_TRY(tensor(ctx, op, "dy", dy));
    GNR_TRY(tensor(ctx, op, "x", x));
    GNR_TRY(tensor(ctx, op, "dx", dx));
    GNR_TRY(same_numel(op, "dy", dy, "x", x));
    return same_numel(op, "dx", dx, "x", x);
}

/* x: rows x 2F, y (or dy): rows x F */
static gnr_status geglu_pair(const gnr_ctx *ctx, const char *op, const gnr_tensor *x, const char *yn,
                             const gnr_tensor *y)
{
    GNR_TRY(tensor(ctx, op, "x", x));
    GNR_TRY(tensor(ctx, op, yn, y));
    if (x->ndim < 1 || y->ndim < 1)
        return gnr_error(GNR_ERR_VALUE, "%s: x %s and %s %s need a last dim", op, shape(x), yn, shape(y));
    int64_t two_f = x->shape[x->ndim - 1], f = two_f / 2;
    int64_t rows = two_f ? gnr_numel(x) / two_f : 0;
    if (two_f % 2 || y->shape[y->ndim - 1] != f || gnr_numel(y) != rows * f)
        return gnr_error(GNR_ERR_VALUE, "%s: x %s must be rows x 2F and %s %s rows x F", op, shape(x), yn,
                         shape(y));
    return GNR_OK;
}

gnr_status gnr_check_geglu_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    return geglu_pair(ctx, "geglu_forward", x, "y", y);
}

gnr_status gnr_check_geglu_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x, gnr_tensor *dx)
{
    GNR_TRY(geglu_pair(ctx, "geglu_backward", x, "dy", dy));
    GNR_TRY(tensor(ctx, "geglu_backward", "dx", dx));
    return same_numel("geglu_backward", "dx", dx, "x", x);
}

/* ---------------------------------------------------------------- layout --- */

/* nchw: N x C x H x W, nlc: N x HW x C */
static int nlc_of(const gnr_tensor *nchw, const gnr_tensor *nlc)
{
    return nchw->ndim == 4 && nlc->ndim == 3 && nlc->shape[0] == nchw->shape[0] &&
           nlc->shape[1] == nchw->shape[2] * nchw->shape[3] && nlc->shape[2] == nchw->shape[1];
}

static gnr_status nchw_nlc(const gnr_ctx *ctx, const char *op, const char *nn, const gnr_tensor *nchw,
                           const char *ln, const gnr_tensor *nlc)
{
    return related_pair(ctx, op, nn, nchw, "N x C x H x W", ln, nlc, "N x HW x C", nlc_of);
}

gnr_status gnr_check_nchw_to_nlc(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    return nchw_nlc(ctx, "nchw_to_nlc", "x", x, "y", y);
}

gnr_status gnr_check_nlc_to_nchw(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    return nchw_nlc(ctx, "nlc_to_nchw", "y", y, "x", x);
}

gnr_status gnr_check_nchw_to_nlc_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    return nchw_nlc(ctx, "nchw_to_nlc_backward", "dx", dx, "dy", dy);
}

gnr_status gnr_check_nlc_to_nchw_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    return nchw_nlc(ctx, "nlc_to_nchw_backward", "dy", dy, "dx", dx);
}

/* y = [a, b] along dim 1; a or b may be NULL (a backward that needs one part). */
static gnr_status concat(const gnr_ctx *ctx, const char *op, const char *an, const gnr_tensor *a, const char *bn,
                         const gnr_tensor *b, const char *yn, const gnr_tensor *y)
{
    GNR_TRY(tensor(ctx, op, yn, y));
    GNR_TRY(optional(ctx, op, an, a));
    GNR_TRY(optional(ctx, op, bn, b));
    int ok = y->ndim == 4;
    for (int k = 0; k < 2; k++) {
        const gnr_tensor *t = k ? b : a;
        if (t)
            ok = ok && t->ndim == 4 && t->shape[0] == y->shape[0] && t->shape[2] == y->shape[2] &&
                 t->shape[3] == y->shape[3];
    }
    if (ok && a && b) ok = a->shape[1] + b->shape[1] == y->shape[1];
    else if (ok && (a || b)) ok = (a ? a : b)->shape[1] <= y->shape[1];
    if (!ok)
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s and %s %s must be N x Ca x H x W and N x Cb x H x W, %s %s "
                         "N x (Ca+Cb) x H x W", op, an, shape(a), bn, shape(b), yn, shape(y));
    return GNR_OK;
}

gnr_status gnr_check_concat_channels_forward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, gnr_tensor *y)
{
    const char *op = "concat_channels_forward";
    if (!a || !b) return gnr_error(GNR_ERR_VALUE, "%s: a and b are both required", op);
    return concat(ctx, op, "a", a, "b", b, "y", y);
}

gnr_status gnr_check_concat_channels_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *da, gnr_tensor *db)
{
    if (!da && !db) return GNR_OK; /* nothing asked, nothing read */
    return concat(ctx, "concat_channels_backward", "da", da, "db", db, "dy", dy);
}

/* x: N x C x H x W, y: N x C x 2H x 2W */
static int upsampled_of(const gnr_tensor *x, const gnr_tensor *y)
{
    return x->ndim == 4 && y->ndim == 4 && y->shape[0] == x->shape[0] && y->shape[1] == x->shape[1] &&
           y->shape[2] == 2 * x->shape[2] && y->shape[3] == 2 * x->shape[3];
}

static gnr_status upsample(const gnr_ctx *ctx, const char *op, const char *xn, const gnr_tensor *x, const char *yn,
                           const gnr_tensor *y)
{
    return related_pair(ctx, op, xn, x, "N x C x H x W", yn, y, "N x C x 2H x 2W", upsampled_of);
}

gnr_status gnr_check_upsample2x_forward(gnr_ctx *ctx, const gnr_tensor *x, gnr_tensor *y)
{
    return upsample(ctx, "upsample2x_forward", "x", x, "y", y);
}

gnr_status gnr_check_upsample2x_backward(gnr_ctx *ctx, const gnr_tensor *dy, gnr_tensor *dx)
{
    return upsample(ctx, "upsample2x_backward", "dx", dx, "dy", dy);
}

/* ------------------------------------------------------------- attention --- */

/* q: N x Lq x (H*D), k and v: N x Lk x (H*D), heads dividing H*D */
static gnr_status qkv(const gnr_ctx *ctx, const char *op, const gnr_tensor *q, const gnr_tensor *k,
                      const gnr_tensor *v, int heads)
{
    GNR_TRY(tensor(ctx, op, "q", q));
    GNR_TRY(tensor(ctx, op, "k", k));
    GNR_TRY(tensor(ctx, op, "v", v));
    if (q->ndim != 3 || k->ndim != 3 || !gnr_same_shape(k, v) || k->shape[0] != q->shape[0] ||
        k->shape[2] != q->shape[2])
        return gnr_error(GNR_ERR_VALUE, "%s: q %s must be N x Lq x (H*D) and k %s, v %s both N x Lk x (H*D)", op,
                         shape(q), shape(k), shape(v));
    if (heads < 1 || q->shape[2] % heads)
        return gnr_error(GNR_ERR_VALUE, "%s: %d heads must divide the %lld channels of q %s", op, heads,
                         (long long)q->shape[2], shape(q));
    return GNR_OK;
}

/* An optional attention map: NULL or N x H x Lq x Lk */
static gnr_status probs_map(const gnr_ctx *ctx, const char *op, const char *name, const gnr_tensor *p,
                            const gnr_tensor *q, const gnr_tensor *k, int heads)
{
    if (!p) return GNR_OK;
    GNR_TRY(tensor(ctx, op, name, p));
    if (p->ndim != 4 || p->shape[0] != q->shape[0] || p->shape[1] != heads || p->shape[2] != q->shape[1] ||
        p->shape[3] != k->shape[1])
        return gnr_error(GNR_ERR_VALUE, "%s: %s %s must be N x H x Lq x Lk = (%lld, %d, %lld, %lld)", op, name,
                         shape(p), (long long)q->shape[0], heads, (long long)q->shape[1], (long long)k->shape[1]);
    return GNR_OK;
}

/* An optional tensor shaped like `like` (a gradient of an input). */
static gnr_status optional_like(const gnr_ctx *ctx, const char *op, const char *name, const gnr_tensor *t,
                                const char *ln, const gnr_tensor *like)
{
    if (!t) return GNR_OK;
    GNR_TRY(tensor(ctx, op, name, t));
    return same_shape(op, name, t, ln, like);
}

gnr_status gnr_check_attention_forward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                       int heads, int causal, float scale, gnr_tensor *probs, gnr_tensor *out)
{
    const char *op = "attention_forward";
    (void)causal, (void)scale;
    GNR_TRY(qkv(ctx, op, q, k, v, heads));
    GNR_TRY(tensor(ctx, op, "out", out));
    GNR_TRY(same_shape(op, "q", q, "out", out));
    return probs_map(ctx, op, "probs", probs, q, k, heads);
}

static gnr_status result(const char *op, const double *out);

/* A reference pass's queries and keys, shaped like q and k */
static gnr_status reference_qk(const gnr_ctx *ctx, const char *op, const char *qn, const gnr_tensor *q_ref,
                               const char *kn, const gnr_tensor *k_ref, const gnr_tensor *q, const gnr_tensor *k)
{
    GNR_TRY(tensor(ctx, op, qn, q_ref));
    GNR_TRY(tensor(ctx, op, kn, k_ref));
    GNR_TRY(same_shape(op, qn, q_ref, "q", q));
    return same_shape(op, kn, k_ref, "k", k);
}

gnr_status gnr_check_attention_backward(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k, const gnr_tensor *v,
                                        const gnr_tensor *probs, int heads, int causal, float scale,
                                        const gnr_tensor *dout, const gnr_tensor *dprobs,
                                        const gnr_attention_seed *seed, gnr_tensor *dq, gnr_tensor *dk, gnr_tensor *dv)
{
    const char *op = "attention_backward";
    (void)scale;
    GNR_TRY(qkv(ctx, op, q, k, v, heads));
    GNR_TRY(probs_map(ctx, op, "probs", probs, q, k, heads));
    GNR_TRY(optional_like(ctx, op, "dout", dout, "q", q));
    GNR_TRY(probs_map(ctx, op, "dprobs", dprobs, q, k, heads));
    if (seed) {
        if (causal)
            return gnr_error(GNR_ERR_VALUE, "%s: an attention-map seed compares self-attention maps, which are "
                             "not causal", op);
        GNR_TRY(reference_qk(ctx, op, "seed q", seed->q, "seed k", seed->k, q, k));
    }
    GNR_TRY(optional_like(ctx, op, "dq", dq, "q", q));
    GNR_TRY(optional_like(ctx, op, "dk", dk, "k", k));
    return optional_like(ctx, op, "dv", dv, "v", v);
}

gnr_status gnr_check_attention_map_energy(gnr_ctx *ctx, const gnr_tensor *q, const gnr_tensor *k,
                                          const gnr_tensor *q_ref, const gnr_tensor *k_ref, int heads, float scale,
                                          double *out)
{
    const char *op = "attention_map_energy";
    (void)scale;
    GNR_TRY(qkv(ctx, op, q, k, k, heads));
    GNR_TRY(reference_qk(ctx, op, "q_ref", q_ref, "k_ref", k_ref, q, k));
    return result(op, out);
}

/* ------------------------------------------------------------- embedding --- */

gnr_status gnr_check_embedding_forward(gnr_ctx *ctx, const gnr_tensor *table, const int32_t *ids, int64_t n,
                                       gnr_tensor *y)
{
    const char *op = "embedding_forward";
    GNR_TRY(tensor(ctx, op, "table", table));
    GNR_TRY(tensor(ctx, op, "y", y));
    if (table->ndim != 2) return gnr_error(GNR_ERR_VALUE, "%s: table %s must be V x C", op, shape(table));
    int64_t vocab = table->shape[0], c = table->shape[1];
    if (n < 0 || y->ndim < 1 || y->shape[y->ndim - 1] != c || gnr_numel(y) != n * c)
        return gnr_error(GNR_ERR_VALUE, "%s: y %s must be n x C = %lld x %lld (table %s)", op, shape(y),
                         (long long)n, (long long)c, shape(table));
    if (n > 0 && !ids) return gnr_error(GNR_ERR_VALUE, "%s: ids is NULL", op);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return gnr_error(GNR_ERR_VALUE, "%s: id %d at position %lld is outside [0, %lld) (table %s)", op,
                             (int)ids[i], (long long)i, (long long)vocab, shape(table));
    return GNR_OK;
}

/* ---------------------------------------------------------- reductions --- */

/* a, b: two tensors of one size */
static gnr_status diff_pair(const gnr_ctx *ctx, const char *op, const gnr_tensor *a, const gnr_tensor *b)
{
    GNR_TRY(tensor(ctx, op, "a", a));
    GNR_TRY(tensor(ctx, op, "b", b));
    return same_numel(op, "a", a, "b", b);
}

static gnr_status result(const char *op, const double *out)
{
    return out ? GNR_OK : gnr_error(GNR_ERR_VALUE, "%s: out is NULL", op);
}

/* a, b and the gradient da, all of one size */
static gnr_status diff_backward(const gnr_ctx *ctx, const char *op, const gnr_tensor *a, const gnr_tensor *b,
                                const gnr_tensor *da)
{
    GNR_TRY(diff_pair(ctx, op, a, b));
    GNR_TRY(tensor(ctx, op, "da", da));
    return same_numel(op, "a", a, "da", da);
}

gnr_status gnr_check_sq_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    GNR_TRY(diff_pair(ctx, "sq_diff_mean", a, b));
    return result("sq_diff_mean", out);
}

gnr_status gnr_check_sq_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                           gnr_tensor *da)
{
    (void)scale;
    return diff_backward(ctx, "sq_diff_mean_backward", a, b, da);
}

gnr_status gnr_check_abs_diff_mean(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, double *out)
{
    GNR_TRY(diff_pair(ctx, "abs_diff_mean", a, b));
    return result("abs_diff_mean", out);
}

gnr_status gnr_check_abs_diff_mean_backward(gnr_ctx *ctx, const gnr_tensor *a, const gnr_tensor *b, float scale,
                                            gnr_tensor *da)
{
    (void)scale;
    return diff_backward(ctx, "abs_diff_mean_backward", a, b, da);
}

gnr_status gnr_check_sum_sq(gnr_ctx *ctx, const gnr_tensor *x, double *out)
{
    GNR_TRY(tensor(ctx, "sum_sq", "x", x));
    return result("sum_sq", out);
}

/* ---------------------------------------------------------- feed-forward --- */

gnr_status gnr_check_geglu_ffn_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *w1, const gnr_tensor *b1,
                                       const gnr_tensor *w2, const gnr_tensor *b2, gnr_tensor *y)
{
    const char *op = "geglu_ffn_forward";
    GNR_TRY(tensor(ctx, op, "x", x));
    GNR_TRY(tensor(ctx, op, "w1", w1));
    GNR_TRY(tensor(ctx, op, "w2", w2));
    GNR_TRY(tensor(ctx, op, "y", y));
    if (w1->ndim != 2 || w1->shape[0] % 2 || w2->ndim != 2 || w2->shape[1] != w1->shape[0] / 2)
        return gnr_error(GNR_ERR_VALUE, "%s: w1 %s and w2 %s must be 2F x In and Out x F", op, shape(w1), shape(w2));
    GNR_TRY(rows_pair(op, "x", x, w1->shape[1], "In", "y", y, w2->shape[0], "Out", w1));
    GNR_TRY(bias_of(ctx, op, "b1", b1, "2F", w1->shape[0], "w1", w1));
    return bias_of(ctx, op, "b2", b2, "Out", w2->shape[0], "w2", w2);
}
