/* gnr._C._op: one op of ops.h on one device, for the tests.
 *
 *   _op(name, device, inputs, params) -> tuple of arrays
 *
 * name is the ops.h function name without "gnr_" ("conv2d_forward",
 * "attention_backward", ...), device "cpu" or "cuda", inputs a tuple of
 * array-likes or None (converted to float32, C-contiguous), params a dict of
 * the op's non-tensor arguments. Tensors live on the device (allocated with
 * the backend's allocator, moved with its upload/download); forward outputs
 * start as NaN so an unwritten element shows, backward gradient outputs start
 * as zeros so each returned array equals the gradient (or, with
 * params["start"] = a tuple of arrays, from those arrays: the accumulation
 * convention of ops.h can be checked). Reductions return a 0-d float64
 * array. Unrequested optional outputs come back as None. */
#define NO_IMPORT_ARRAY
#include "arrays.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "backend.h"
#include "bindings.h"
#include "convert.h"
#include "errors.h"

#define MAX_IN 6
#define MAX_OUT 3

typedef enum { INIT_NAN, INIT_ZERO, INIT_FROM_IN1, INIT_NONE } out_init;

typedef struct {
    const char *name;
    const char *inputs;  /* input names, comma separated; "?" marks an optional one */
    out_init init;       /* how outputs start */
    int scalar;          /* returns one double */
} op_spec;

static const op_spec OPS[] = {
    {"fill", "x", INIT_NAN, 0},
    {"copy", "x", INIT_NAN, 0},
    {"upload", "x", INIT_NAN, 0},
    {"download", "x", INIT_NONE, 0},
    {"add", "a,b", INIT_NAN, 0},
    {"scale", "x", INIT_NAN, 0},
    {"axpy", "x,y", INIT_FROM_IN1, 0},
    {"add_channel_forward", "x,v", INIT_NAN, 0},
    {"add_channel_backward", "dy", INIT_ZERO, 0},
    {"linear_forward", "x,w,b?", INIT_NAN, 0},
    {"linear_backward", "dy,w", INIT_ZERO, 0},
    {"conv2d_forward", "x,w,b?", INIT_NAN, 0},
    {"conv2d_backward", "dy,w", INIT_ZERO, 0},
    {"group_norm_forward", "x,gamma?,beta?", INIT_NAN, 0},
    {"group_norm_backward", "dy,x,gamma?", INIT_ZERO, 0},
    {"layer_norm_forward", "x,gamma?,beta?", INIT_NAN, 0},
    {"layer_norm_backward", "dy,x,gamma?", INIT_ZERO, 0},
    {"act_forward", "x", INIT_NAN, 0},
    {"act_backward", "dy,x", INIT_ZERO, 0},
    {"geglu_forward", "x", INIT_NAN, 0},
    {"geglu_backward", "dy,x", INIT_ZERO, 0},
    {"nchw_to_nlc", "x", INIT_NAN, 0},
    {"nlc_to_nchw", "x", INIT_NAN, 0},
    {"nchw_to_nlc_backward", "dy", INIT_ZERO, 0},
    {"nlc_to_nchw_backward", "dy", INIT_ZERO, 0},
    {"concat_channels_forward", "a,b", INIT_NAN, 0},
    {"concat_channels_backward", "dy", INIT_ZERO, 0},
    {"upsample2x_forward", "x", INIT_NAN, 0},
    {"upsample2x_backward", "dy", INIT_ZERO, 0},
    {"attention_forward", "q,k,v", INIT_NAN, 0},
    {"attention_backward", "q,k,v,probs?,dout,dprobs?", INIT_ZERO, 0},
    {"embedding_forward", "table", INIT_NAN, 0},
    {"sq_diff_mean", "a,b", INIT_NONE, 1},
    {"sq_diff_mean_backward", "a,b", INIT_ZERO, 0},
    {"abs_diff_mean", "a,b", INIT_NONE, 1},
    {"abs_diff_mean_backward", "a,b", INIT_ZERO, 0},
    {"sum_sq", "x", INIT_NONE, 1},
};
#define NOPS ((int)(sizeof OPS / sizeof OPS[0]))

typedef struct {
    gnr_conv_params conv;
    int groups, heads, causal, want_probs, want_dq, want_dk, want_dv, want_da, want_db;
    gnr_act act;
    float eps, scale, alpha, value;
    int32_t *ids;
    int64_t nids;
    int64_t x_shape[GNR_MAX_DIMS];
    int x_ndim;
    int64_t hw[2];
    int has_hw;
    int64_t ca;
    int has_ca;
} op_params;

typedef struct {
    int nin;
    const char *in_name[MAX_IN];
    int optional[MAX_IN];
    PyArrayObject *host_in[MAX_IN];
    gnr_tensor in[MAX_IN];
    int nout;
    int out_ndim[MAX_OUT];
    int64_t out_shape[MAX_OUT][GNR_MAX_DIMS];
    int out_want[MAX_OUT];
    PyArrayObject *host_out[MAX_OUT];
    PyArrayObject *start[MAX_OUT]; /* initial values of outputs, or NULL */
    gnr_tensor out[MAX_OUT];
    double scalar;
    char names[128];
} op_call;

/* ------------------------------------------------------------ params --- */

/* The plain scalar params: one table gives their defaults, their parsing
 * and the list of known keys. */
typedef struct {
    const char *key;
    int is_float;
    size_t offset;
    double initial;
} scalar_param;

static const scalar_param SCALARS[] = {
    {"stride", 0, offsetof(op_params, conv.stride), 1},
    {"groups", 0, offsetof(op_params, groups), 1},
    {"heads", 0, offsetof(op_params, heads), 1},
    {"causal", 0, offsetof(op_params, causal), 0},
    {"want_probs", 0, offsetof(op_params, want_probs), 0},
    {"want_dq", 0, offsetof(op_params, want_dq), 1},
    {"want_dk", 0, offsetof(op_params, want_dk), 1},
    {"want_dv", 0, offsetof(op_params, want_dv), 1},
    {"want_da", 0, offsetof(op_params, want_da), 1},
    {"want_db", 0, offsetof(op_params, want_db), 1},
    {"eps", 1, offsetof(op_params, eps), 1e-5},
    {"scale", 1, offsetof(op_params, scale), 1.0},
    {"alpha", 1, offsetof(op_params, alpha), 1.0},
    {"value", 1, offsetof(op_params, value), 0.0},
};
#define NSCALARS ((int)(sizeof SCALARS / sizeof SCALARS[0]))

/* The other params, read by parse_params itself. */
static const char *const OTHER_KEYS[] = {"act", "pads", "ids", "x_shape", "hw", "ca", "start", NULL};

static const scalar_param *scalar_named(const char *key)
{
    for (int i = 0; i < NSCALARS; i++)
        if (!strcmp(SCALARS[i].key, key)) return &SCALARS[i];
    return NULL;
}

static int known_key(const char *k)
{
    if (scalar_named(k)) return 1;
    for (int i = 0; OTHER_KEYS[i]; i++)
        if (!strcmp(k, OTHER_KEYS[i])) return 1;
    return 0;
}

static PyObject *unknown_key(PyObject *key)
{
    char known[512];
    size_t off = 0;
    for (int i = 0; i < NSCALARS && off < sizeof known; i++)
        off += (size_t)snprintf(known + off, sizeof known - off, "%s, ", SCALARS[i].key);
    for (int i = 0; OTHER_KEYS[i] && off < sizeof known; i++)
        off += (size_t)snprintf(known + off, sizeof known - off, OTHER_KEYS[i + 1] ? "%s, " : "%s", OTHER_KEYS[i]);
    PyErr_Format(PyExc_ValueError, "unknown op param %R; known: %s", key, known);
    return NULL;
}

/* params[key] through `conv`: 1 converted, 0 absent, -1 error. */
static int param(PyObject *d, const char *key, gnr_py_converter conv, void *arg)
{
    return d ? gnr_py_dict_item(d, key, conv, arg) : 0;
}

/* params["ids"]: a sequence of int32 token ids into p->ids (PyMem). */
static int parse_ids(PyObject *d, op_params *p)
{
    PyObject *v = d ? PyDict_GetItemString(d, "ids") : NULL;
    if (!v) return 0;
    Py_ssize_t n = PySequence_Check(v) ? PySequence_Size(v) : -1;
    if (n < 0 || n > INT_MAX) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "params['ids'] must be a sequence of at most %d ints, got %.100s", INT_MAX,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (!(p->ids = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t)))) {
        PyErr_NoMemory();
        return -1;
    }
    int *ids = (int *)p->ids; /* int32_t is int here (checked below) */
    _Static_assert(sizeof(int) == sizeof(int32_t), "token ids are read as ints");
    gnr_py_ints list = {"params['ids']", INT32_MIN, INT32_MAX, (int)n, ids, 0};
    if (param(d, "ids", gnr_py_conv_ints, &list) < 0) return -1;
    p->nids = list.n;
    return 0;
}

/* A list param of at most `max` ints into int64 out; returns the count, or -1. */
static int int_list_param(PyObject *d, const char *key, const char *name, int max, int64_t *out)
{
    int v[GNR_MAX_DIMS];
    gnr_py_ints list = {name, INT_MIN, INT_MAX, max, v, 0};
    if (param(d, key, gnr_py_conv_ints, &list) < 0) return -1;
    for (int i = 0; i < list.n; i++) out[i] = v[i];
    return list.n;
}

static int parse_params(PyObject *d, op_params *p)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < NSCALARS; i++) {
        char *field = (char *)p + SCALARS[i].offset;
        if (SCALARS[i].is_float) *(float *)field = (float)SCALARS[i].initial;
        else *(int *)field = (int)SCALARS[i].initial;
    }
    if (d == Py_None) d = NULL;
    if (d && !PyDict_Check(d)) {
        PyErr_Format(PyExc_TypeError, "params must be a dict or None, got %.100s", Py_TYPE(d)->tp_name);
        return -1;
    }
    PyObject *key, *val;
    Py_ssize_t pos = 0;
    while (d && PyDict_Next(d, &pos, &key, &val)) {
        const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!k || !known_key(k)) {
            PyErr_Clear();
            unknown_key(key);
            return -1;
        }
    }
    for (int i = 0; i < NSCALARS; i++) {
        char name[64];
        snprintf(name, sizeof name, "params['%s']", SCALARS[i].key);
        char *field = (char *)p + SCALARS[i].offset;
        if (SCALARS[i].is_float) {
            gnr_py_float v = {name, *(float *)field};
            if (param(d, SCALARS[i].key, gnr_py_conv_float, &v) < 0) return -1;
            *(float *)field = v.value;
        } else {
            gnr_py_int v = {name, INT_MIN, INT_MAX, *(int *)field};
            if (param(d, SCALARS[i].key, gnr_py_conv_int, &v) < 0) return -1;
            *(int *)field = v.value;
        }
    }
    if (param(d, "act", gnr_py_conv_act, &p->act) < 0) return -1;
    int64_t pads[4] = {0, 0, 0, 0};
    int np = int_list_param(d, "pads", "params['pads']", 4, pads);
    if (np < 0) return -1;
    if (np == 1) pads[1] = pads[2] = pads[3] = pads[0];
    else if (np != 0 && np != 4) {
        PyErr_SetString(PyExc_ValueError, "params['pads'] must be (top, bottom, left, right) or (all,)");
        return -1;
    }
    p->conv.pad_top = (int)pads[0], p->conv.pad_bottom = (int)pads[1]; /* ints, read as such */
    p->conv.pad_left = (int)pads[2], p->conv.pad_right = (int)pads[3];
    if ((p->x_ndim = int_list_param(d, "x_shape", "params['x_shape']", GNR_MAX_DIMS, p->x_shape)) < 0) return -1;
    int nhw = int_list_param(d, "hw", "params['hw']", 2, p->hw);
    if (nhw < 0) return -1;
    if (nhw != 0 && nhw != 2) {
        PyErr_SetString(PyExc_ValueError, "params['hw'] must be (H, W)");
        return -1;
    }
    p->has_hw = nhw == 2;
    gnr_py_int ca = {"params['ca']", INT_MIN, INT_MAX, 0};
    int r = param(d, "ca", gnr_py_conv_int, &ca);
    if (r < 0) return -1;
    p->ca = ca.value;
    p->has_ca = r;
    return parse_ids(d, p);
}

/* ------------------------------------------------------------ shapes --- */

static int64_t dim(const op_call *c, int i, int d)
{
    PyArrayObject *a = c->host_in[i];
    int nd = PyArray_NDIM(a);
    if (d < 0) d += nd;
    return d >= 0 && d < nd ? (int64_t)PyArray_DIM(a, d) : -1;
}

static int ndim_of(const op_call *c, int i) { return PyArray_NDIM(c->host_in[i]); }

static int need_ndim(const char *op, const op_call *c, int i, int nd)
{
    if (c->host_in[i] && ndim_of(c, i) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have %d dimensions, got %d", op, c->in_name[i], nd,
                     ndim_of(c, i));
        return -1;
    }
    return 0;
}

static void set_out(op_call *c, int k, int nd, const int64_t *shape)
{
    c->out_ndim[k] = nd;
    for (int i = 0; i < nd; i++) c->out_shape[k][i] = shape[i];
    c->out_want[k] = 1;
    if (k + 1 > c->nout) c->nout = k + 1;
}

static void out_like(op_call *c, int k, int i)
{
    int64_t s[GNR_MAX_DIMS];
    int nd = ndim_of(c, i);
    for (int d = 0; d < nd; d++) s[d] = dim(c, i, d);
    set_out(c, k, nd, s);
}

/* Same as input i with the last dim replaced. */
static void out_last(op_call *c, int k, int i, int64_t last)
{
    int64_t s[GNR_MAX_DIMS];
    int nd = ndim_of(c, i);
    for (int d = 0; d < nd; d++) s[d] = dim(c, i, d);
    s[nd - 1] = last;
    set_out(c, k, nd, s);
}

static int out_shapes(const char *op, op_call *c, const op_params *p)
{
    for (int i = 0; i < c->nin; i++) {
        if (c->host_in[i] && (ndim_of(c, i) < 1 || ndim_of(c, i) > GNR_MAX_DIMS)) {
            PyErr_Format(PyExc_ValueError, "%s: %s must have 1 to %d dimensions, got %d", op, c->in_name[i],
                         GNR_MAX_DIMS, ndim_of(c, i));
            return -1;
        }
    }
    if (!strcmp(op, "fill") || !strcmp(op, "copy") || !strcmp(op, "upload") || !strcmp(op, "download") ||
        !strcmp(op, "add") || !strcmp(op, "scale") || !strcmp(op, "axpy") || !strcmp(op, "act_forward") ||
        !strcmp(op, "sq_diff_mean_backward") || !strcmp(op, "abs_diff_mean_backward")) {
        out_like(c, 0, !strcmp(op, "axpy") ? 1 : 0);
    } else if (!strcmp(op, "add_channel_forward")) {
        out_like(c, 0, 0);
    } else if (!strcmp(op, "add_channel_backward")) {
        if (need_ndim(op, c, 0, 4) < 0) return -1;
        int64_t s[2] = {dim(c, 0, 0), dim(c, 0, 1)};
        set_out(c, 0, 2, s);
    } else if (!strcmp(op, "linear_forward")) {
        out_last(c, 0, 0, dim(c, 1, 0));
    } else if (!strcmp(op, "linear_backward")) {
        if (ndim_of(c, 1) < 2) {
            PyErr_Format(PyExc_ValueError, "%s: w must be Out x In", op);
            return -1;
        }
        out_last(c, 0, 0, dim(c, 1, 1));
    } else if (!strcmp(op, "conv2d_forward")) {
        if (need_ndim(op, c, 0, 4) < 0 || need_ndim(op, c, 1, 4) < 0) return -1;
        const gnr_conv_params *cp = &p->conv;
        int64_t s = cp->stride > 0 ? cp->stride : 1;
        int64_t hp = dim(c, 0, 2) + cp->pad_top + cp->pad_bottom - dim(c, 1, 2);
        int64_t wp = dim(c, 0, 3) + cp->pad_left + cp->pad_right - dim(c, 1, 3);
        if (hp < 0 || wp < 0) {
            PyErr_Format(PyExc_ValueError, "%s: the kernel is larger than the padded input", op);
            return -1;
        }
        int64_t sh[4] = {dim(c, 0, 0), dim(c, 1, 0), hp / s + 1, wp / s + 1};
        set_out(c, 0, 4, sh);
    } else if (!strcmp(op, "conv2d_backward")) {
        if (p->x_ndim != 4) {
            PyErr_Format(PyExc_ValueError, "%s needs params['x_shape'] = (N, C, H, W)", op);
            return -1;
        }
        set_out(c, 0, 4, p->x_shape);
    } else if (!strcmp(op, "group_norm_forward") || !strcmp(op, "layer_norm_forward")) {
        out_like(c, 0, 0);
    } else if (!strcmp(op, "group_norm_backward") || !strcmp(op, "layer_norm_backward") ||
               !strcmp(op, "act_backward") || !strcmp(op, "geglu_backward")) {
        out_like(c, 0, 1);
    } else if (!strcmp(op, "geglu_forward")) {
        out_last(c, 0, 0, dim(c, 0, -1) / 2);
    } else if (!strcmp(op, "nchw_to_nlc") || !strcmp(op, "nlc_to_nchw_backward")) {
        if (need_ndim(op, c, 0, 4) < 0) return -1;
        int64_t s[3] = {dim(c, 0, 0), dim(c, 0, 2) * dim(c, 0, 3), dim(c, 0, 1)};
        set_out(c, 0, 3, s);
    } else if (!strcmp(op, "nlc_to_nchw") || !strcmp(op, "nchw_to_nlc_backward")) {
        if (need_ndim(op, c, 0, 3) < 0) return -1;
        if (!p->has_hw) {
            PyErr_Format(PyExc_ValueError, "%s needs params['hw'] = (H, W)", op);
            return -1;
        }
        int64_t s[4] = {dim(c, 0, 0), dim(c, 0, 2), p->hw[0], p->hw[1]};
        set_out(c, 0, 4, s);
    } else if (!strcmp(op, "concat_channels_forward")) {
        if (need_ndim(op, c, 0, 4) < 0 || need_ndim(op, c, 1, 4) < 0) return -1;
        int64_t s[4] = {dim(c, 0, 0), dim(c, 0, 1) + dim(c, 1, 1), dim(c, 0, 2), dim(c, 0, 3)};
        set_out(c, 0, 4, s);
    } else if (!strcmp(op, "concat_channels_backward")) {
        if (need_ndim(op, c, 0, 4) < 0) return -1;
        if (!p->has_ca || p->ca < 0 || p->ca > dim(c, 0, 1)) {
            PyErr_Format(PyExc_ValueError, "%s needs params['ca'] in [0, C]", op);
            return -1;
        }
        int64_t sa[4] = {dim(c, 0, 0), p->ca, dim(c, 0, 2), dim(c, 0, 3)};
        int64_t sb[4] = {dim(c, 0, 0), dim(c, 0, 1) - p->ca, dim(c, 0, 2), dim(c, 0, 3)};
        set_out(c, 0, 4, sa);
        set_out(c, 1, 4, sb);
        c->out_want[0] = p->want_da;
        c->out_want[1] = p->want_db;
    } else if (!strcmp(op, "upsample2x_forward") || !strcmp(op, "upsample2x_backward")) {
        if (need_ndim(op, c, 0, 4) < 0) return -1;
        int up = !strcmp(op, "upsample2x_forward");
        int64_t s[4] = {dim(c, 0, 0), dim(c, 0, 1), up ? dim(c, 0, 2) * 2 : dim(c, 0, 2) / 2,
                        up ? dim(c, 0, 3) * 2 : dim(c, 0, 3) / 2};
        set_out(c, 0, 4, s);
    } else if (!strcmp(op, "attention_forward")) {
        if (need_ndim(op, c, 0, 3) < 0 || need_ndim(op, c, 1, 3) < 0) return -1;
        out_like(c, 0, 0);
        int64_t s[4] = {dim(c, 0, 0), p->heads, dim(c, 0, 1), dim(c, 1, 1)};
        set_out(c, 1, 4, s);
        c->out_want[1] = p->want_probs;
    } else if (!strcmp(op, "attention_backward")) {
        out_like(c, 0, 0);
        out_like(c, 1, 1);
        out_like(c, 2, 2);
        c->out_want[0] = p->want_dq;
        c->out_want[1] = p->want_dk;
        c->out_want[2] = p->want_dv;
    } else if (!strcmp(op, "embedding_forward")) {
        if (need_ndim(op, c, 0, 2) < 0) return -1;
        int64_t s[2] = {p->nids, dim(c, 0, 1)};
        set_out(c, 0, 2, s);
    } else if (!strcmp(op, "sq_diff_mean") || !strcmp(op, "abs_diff_mean") || !strcmp(op, "sum_sq")) {
        c->nout = 0;
    } else {
        PyErr_Format(PyExc_RuntimeError, "no output shapes for op %s", op);
        return -1;
    }
    for (int k = 0; k < c->nout; k++)
        for (int d = 0; d < c->out_ndim[k]; d++)
            if (c->out_shape[k][d] < 0) {
                PyErr_Format(PyExc_ValueError, "%s: inputs imply a negative output size", op);
                return -1;
            }
    return 0;
}

/* --------------------------------------------------------------- run --- */

static const gnr_tensor *opt(const op_call *c, int i) { return c->host_in[i] ? &c->in[i] : NULL; }
static gnr_tensor *want(op_call *c, int k) { return c->out_want[k] ? &c->out[k] : NULL; }

static gnr_status run_op(const char *op, gnr_ctx *ctx, op_call *c, const op_params *p)
{
    gnr_tensor *in = c->in, *out = c->out;
    if (!strcmp(op, "fill")) return gnr_fill(ctx, &out[0], p->value);
    if (!strcmp(op, "copy")) return gnr_copy(ctx, &in[0], &out[0]);
    if (!strcmp(op, "upload")) return gnr_upload(ctx, (const float *)PyArray_DATA(c->host_in[0]), &out[0]);
    if (!strcmp(op, "download")) return gnr_download(ctx, &in[0], (float *)PyArray_DATA(c->host_out[0]));
    if (!strcmp(op, "add")) return gnr_add(ctx, &in[0], &in[1], &out[0]);
    if (!strcmp(op, "scale")) return gnr_scale(ctx, &in[0], p->alpha, &out[0]);
    if (!strcmp(op, "axpy")) return gnr_axpy(ctx, p->alpha, &in[0], &out[0]);
    if (!strcmp(op, "add_channel_forward")) return gnr_add_channel_forward(ctx, &in[0], &in[1], &out[0]);
    if (!strcmp(op, "add_channel_backward")) return gnr_add_channel_backward(ctx, &in[0], &out[0]);
    if (!strcmp(op, "linear_forward")) return gnr_linear_forward(ctx, &in[0], &in[1], opt(c, 2), &out[0]);
    if (!strcmp(op, "linear_backward")) return gnr_linear_backward(ctx, &in[0], &in[1], &out[0]);
    if (!strcmp(op, "conv2d_forward")) return gnr_conv2d_forward(ctx, &in[0], &in[1], opt(c, 2), &p->conv, &out[0]);
    if (!strcmp(op, "conv2d_backward")) return gnr_conv2d_backward(ctx, &in[0], &in[1], &p->conv, &out[0]);
    if (!strcmp(op, "group_norm_forward"))
        return gnr_group_norm_forward(ctx, &in[0], opt(c, 1), opt(c, 2), p->groups, p->eps, &out[0]);
    if (!strcmp(op, "group_norm_backward"))
        return gnr_group_norm_backward(ctx, &in[0], &in[1], opt(c, 2), p->groups, p->eps, &out[0]);
    if (!strcmp(op, "layer_norm_forward"))
        return gnr_layer_norm_forward(ctx, &in[0], opt(c, 1), opt(c, 2), p->eps, &out[0]);
    if (!strcmp(op, "layer_norm_backward"))
        return gnr_layer_norm_backward(ctx, &in[0], &in[1], opt(c, 2), p->eps, &out[0]);
    if (!strcmp(op, "act_forward")) return gnr_act_forward(ctx, p->act, &in[0], &out[0]);
    if (!strcmp(op, "act_backward")) return gnr_act_backward(ctx, p->act, &in[0], &in[1], &out[0]);
    if (!strcmp(op, "geglu_forward")) return gnr_geglu_forward(ctx, &in[0], &out[0]);
    if (!strcmp(op, "geglu_backward")) return gnr_geglu_backward(ctx, &in[0], &in[1], &out[0]);
    if (!strcmp(op, "nchw_to_nlc")) return gnr_nchw_to_nlc(ctx, &in[0], &out[0]);
    if (!strcmp(op, "nlc_to_nchw")) return gnr_nlc_to_nchw(ctx, &in[0], &out[0]);
    if (!strcmp(op, "nchw_to_nlc_backward")) return gnr_nchw_to_nlc_backward(ctx, &in[0], &out[0]);
    if (!strcmp(op, "nlc_to_nchw_backward")) return gnr_nlc_to_nchw_backward(ctx, &in[0], &out[0]);
    if (!strcmp(op, "concat_channels_forward")) return gnr_concat_channels_forward(ctx, &in[0], &in[1], &out[0]);
    if (!strcmp(op, "concat_channels_backward"))
        return gnr_concat_channels_backward(ctx, &in[0], want(c, 0), want(c, 1));
    if (!strcmp(op, "upsample2x_forward")) return gnr_upsample2x_forward(ctx, &in[0], &out[0]);
    if (!strcmp(op, "upsample2x_backward")) return gnr_upsample2x_backward(ctx, &in[0], &out[0]);
    if (!strcmp(op, "attention_forward"))
        return gnr_attention_forward(ctx, &in[0], &in[1], &in[2], p->heads, p->causal, p->scale, want(c, 1),
                                     &out[0]);
    if (!strcmp(op, "attention_backward"))
        return gnr_attention_backward(ctx, &in[0], &in[1], &in[2], opt(c, 3), p->heads, p->causal, p->scale, &in[4],
                                      opt(c, 5), want(c, 0), want(c, 1), want(c, 2));
    if (!strcmp(op, "embedding_forward")) return gnr_embedding_forward(ctx, &in[0], p->ids, p->nids, &out[0]);
    if (!strcmp(op, "sq_diff_mean")) return gnr_sq_diff_mean(ctx, &in[0], &in[1], &c->scalar);
    if (!strcmp(op, "sq_diff_mean_backward")) return gnr_sq_diff_mean_backward(ctx, &in[0], &in[1], p->scale, &out[0]);
    if (!strcmp(op, "abs_diff_mean")) return gnr_abs_diff_mean(ctx, &in[0], &in[1], &c->scalar);
    if (!strcmp(op, "abs_diff_mean_backward"))
        return gnr_abs_diff_mean_backward(ctx, &in[0], &in[1], p->scale, &out[0]);
    if (!strcmp(op, "sum_sq")) return gnr_sum_sq(ctx, &in[0], &c->scalar);
    return gnr_error(GNR_ERR_INTERNAL, "op %s has no runner", op);
}

static gnr_status device_tensor(const gnr_backend *b, gnr_device dev, int nd, const int64_t *shape, gnr_tensor *t)
{
    *t = gnr_tensor_view(NULL, GNR_F32, dev, nd, shape);
    t->data = b->allocator.alloc(gnr_nbytes(t) ? gnr_nbytes(t) : 4, b->allocator.user);
    if (!t->data) return gnr_error(GNR_ERR_NOMEM, "could not allocate %zu bytes on %s", gnr_nbytes(t), b->name);
    return GNR_OK;
}

/* Everything between upload and download; runs without the GIL. */
static gnr_status execute(const char *op, const op_spec *spec, const gnr_backend *b, gnr_device dev, op_call *c,
                          const op_params *p)
{
    gnr_status st = GNR_OK;
    int ctx_ready = 0;
    gnr_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.device = dev;
    GNR_CHECK(st, gnr_arena_create(&b->allocator, 0, &ctx.arena));
    GNR_CHECK(st, gnr_arena_create(&b->allocator, 0, &ctx.keep));
    if (b->context_init) GNR_CHECK(st, b->context_init(&ctx));
    ctx_ready = 1;
    for (int i = 0; i < c->nin; i++) {
        if (!c->host_in[i]) continue;
        PyArrayObject *a = c->host_in[i];
        int64_t s[GNR_MAX_DIMS];
        for (int d = 0; d < PyArray_NDIM(a); d++) s[d] = PyArray_DIM(a, d);
        GNR_CHECK(st, device_tensor(b, dev, PyArray_NDIM(a), s, &c->in[i]));
        GNR_CHECK(st, gnr_upload(&ctx, (const float *)PyArray_DATA(a), &c->in[i]));
    }
    for (int k = 0; k < c->nout; k++) {
        if (!c->out_want[k]) continue;
        GNR_CHECK(st, device_tensor(b, dev, c->out_ndim[k], c->out_shape[k], &c->out[k]));
        if (c->start[k]) GNR_CHECK(st, gnr_upload(&ctx, (const float *)PyArray_DATA(c->start[k]), &c->out[k]));
        else if (spec->init == INIT_NAN) GNR_CHECK(st, gnr_fill(&ctx, &c->out[k], NAN));
        else if (spec->init == INIT_ZERO) GNR_CHECK(st, gnr_fill(&ctx, &c->out[k], 0.0f));
        else if (spec->init == INIT_FROM_IN1) GNR_CHECK(st, gnr_copy(&ctx, &c->in[1], &c->out[k]));
    }
    GNR_CHECK(st, run_op(op, &ctx, c, p));
    if (strcmp(op, "download") != 0)
        for (int k = 0; k < c->nout; k++)
            if (c->out_want[k]) GNR_CHECK(st, gnr_download(&ctx, &c->out[k], (float *)PyArray_DATA(c->host_out[k])));
    if (b->synchronize) GNR_CHECK(st, b->synchronize(&ctx));
done:
    for (int i = 0; i < MAX_IN; i++)
        if (c->in[i].data) b->allocator.release(c->in[i].data, b->allocator.user);
    for (int k = 0; k < MAX_OUT; k++)
        if (c->out[k].data) b->allocator.release(c->out[k].data, b->allocator.user);
    if (ctx_ready && b->context_free) b->context_free(&ctx);
    gnr_arena_destroy(ctx.keep);
    gnr_arena_destroy(ctx.arena);
    return st;
}

static PyObject *op(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name;
    gnr_device dev;
    PyObject *inputs = Py_None, *params = Py_None, *result = NULL;
    op_call c;
    op_params p;
    memset(&c, 0, sizeof c);
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "sO&|OO:_op", &name, gnr_py_conv_device, &dev, &inputs, &params)) return NULL;

    const op_spec *spec = NULL;
    for (int i = 0; i < NOPS; i++)
        if (!strcmp(OPS[i].name, name)) spec = &OPS[i];
    if (!spec) {
        char known[2048];
        size_t off = 0;
        for (int i = 0; i < NOPS && off < sizeof known; i++)
            off += (size_t)snprintf(known + off, sizeof known - off, i ? ", %s" : "%s", OPS[i].name);
        PyErr_Format(PyExc_ValueError, "unknown op '%s'; known ops: %s", name, known);
        goto done;
    }
    const gnr_backend *b = gnr_backend_for(dev);
    if (!b) {
        PyErr_Format(PyExc_NotImplementedError, "no %s backend is loaded", gnr_device_name(dev));
        goto done;
    }

    /* input names and optionality */
    snprintf(c.names, sizeof c.names, "%s", spec->inputs);
    char *save = NULL;
    for (char *tok = strtok_r(c.names, ",", &save); tok && c.nin < MAX_IN; tok = strtok_r(NULL, ",", &save)) {
        size_t n = strlen(tok);
        c.optional[c.nin] = n && tok[n - 1] == '?';
        if (c.optional[c.nin]) tok[n - 1] = '\0';
        c.in_name[c.nin++] = tok;
    }
    Py_ssize_t given = 0;
    if (inputs != Py_None) {
        if (!PyTuple_Check(inputs)) {
            PyErr_Format(PyExc_TypeError, "inputs must be a tuple or None, got %.100s", Py_TYPE(inputs)->tp_name);
            goto done;
        }
        given = PyTuple_GET_SIZE(inputs);
    }
    if (given > c.nin) {
        PyErr_Format(PyExc_ValueError, "%s takes at most %d inputs (%s), got %zd", name, c.nin, spec->inputs, given);
        goto done;
    }
    for (int i = 0; i < c.nin; i++) {
        PyObject *obj = i < given ? PyTuple_GET_ITEM(inputs, i) : Py_None;
        if (obj == Py_None) {
            if (!c.optional[i]) {
                PyErr_Format(PyExc_ValueError, "%s: input %d (%s) is required; inputs are (%s)", name, i,
                             c.in_name[i], spec->inputs);
                goto done;
            }
            continue;
        }
        c.host_in[i] = gnr_py_float_array(obj, c.in_name[i], -1, NULL, 0);
        if (!c.host_in[i]) goto done;
    }
    if (parse_params(params, &p) < 0) goto done;
    if (out_shapes(name, &c, &p) < 0) goto done;
    for (int k = 0; k < c.nout; k++) {
        if (!c.out_want[k]) continue;
        npy_intp s[GNR_MAX_DIMS];
        for (int d = 0; d < c.out_ndim[k]; d++) s[d] = (npy_intp)c.out_shape[k][d];
        c.host_out[k] = gnr_py_new_float(c.out_ndim[k], s);
        if (!c.host_out[k]) goto done;
    }

    PyObject *start = params != Py_None && PyDict_Check(params) ? PyDict_GetItemString(params, "start") : NULL;
    if (start) {
        if (spec->init != INIT_ZERO || !PyTuple_Check(start) || PyTuple_GET_SIZE(start) != c.nout) {
            PyErr_Format(PyExc_ValueError, "params['start'] must be a tuple of %d arrays (or None), for a backward op",
                         c.nout);
            goto done;
        }
        for (int k = 0; k < c.nout; k++) {
            PyObject *o = PyTuple_GET_ITEM(start, k);
            if (o == Py_None || !c.out_want[k]) continue;
            npy_intp s[GNR_MAX_DIMS];
            for (int d = 0; d < c.out_ndim[k]; d++) s[d] = (npy_intp)c.out_shape[k][d];
            c.start[k] = gnr_py_float_array(o, "params['start'] entry", c.out_ndim[k], s, 0);
            if (!c.start[k]) goto done;
        }
    }

    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = execute(name, spec, b, dev, &c, &p);
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }

    if (spec->scalar) {
        PyArrayObject *s = (PyArrayObject *)PyArray_SimpleNew(0, NULL, NPY_FLOAT64);
        if (!s) goto done;
        *(double *)PyArray_DATA(s) = c.scalar;
        result = PyTuple_Pack(1, (PyObject *)s);
        Py_DECREF(s);
        goto done;
    }
    result = PyTuple_New(c.nout);
    if (!result) goto done;
    for (int k = 0; k < c.nout; k++) {
        PyObject *o = c.out_want[k] ? (PyObject *)c.host_out[k] : Py_None;
        Py_INCREF(o);
        PyTuple_SET_ITEM(result, k, o);
    }
done:
    for (int i = 0; i < MAX_IN; i++) Py_XDECREF(c.host_in[i]);
    for (int k = 0; k < MAX_OUT; k++) {
        Py_XDECREF(c.host_out[k]);
        Py_XDECREF(c.start[k]);
    }
    PyMem_Free(p.ids);
    return result;
}

static PyMethodDef op_methods[] = {
    {"_op", op, METH_VARARGS,
     "_op(name, device, inputs, params) -> tuple of arrays: run one op of ops.h (tests only)."},
    {NULL, NULL, 0, NULL},
};

int gnr_py_register_ops(PyObject *module) { return PyModule_AddFunctions(module, op_methods); }
