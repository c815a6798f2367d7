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
 * array. Unrequested optional outputs come back as None.
 *
 * The ops exposed, with their inputs, outputs and shape rules, are listed in
 * op_table.def; each one's call is generated from its csrc/ops.def entry. */
#define NO_IMPORT_ARRAY
#include "arrays.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#include "backend.h"
#include "bindings.h"
#include "convert.h"
#include "errors.h"

#define MAX_IN 8
#define MAX_OUT 3

/* What outputs hold before the op runs (op_table.def's start column). */
typedef enum { START_NANS, START_ZEROS, START_INPUT, START_NONE } out_start;

typedef struct {
    gnr_conv_params conv;
    int groups, heads, causal, want_probs, want_dq, want_dk, want_dv, want_da, want_db;
    gnr_act act;
    float eps, scale, alpha, value, coef;
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
    const char *out_name[MAX_OUT];
    int out_ndim[MAX_OUT];
    int64_t out_shape[MAX_OUT][GNR_MAX_DIMS];
    int out_want[MAX_OUT];
    PyArrayObject *host_out[MAX_OUT];
    PyArrayObject *start[MAX_OUT]; /* initial values of outputs, or NULL */
    gnr_tensor out[MAX_OUT];
    int scalar_out; /* the op returns one double */
    double scalar;
    gnr_attention_seed seed; /* attention_backward's seed, from inputs seed_q, seed_k and params["coef"] */
    const char *unbound; /* an argument of the op the table gives no value (a bug in op_table.def) */
    char names[256];
} op_call;

/* ------------------------------------------------------------ params --- */

/* The plain scalar params: one table gives their defaults, their parsing
 * and the list of known keys. An op's scalar argument takes the param named
 * like the argument in ops.def (float_arg, int_arg); "stride" is a field of
 * the conv parameters. */
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
    {"coef", 1, offsetof(op_params, coef), 0.0},
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

/* ------------------------------------------------------ shape rules --- */

/* Each rule sets the output shapes (and which optional outputs are wanted)
 * from the inputs and params; -1 with ValueError. */

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

typedef int (*shape_rule)(const char *op, op_call *c, const op_params *p);

static int shape_like_in0(const char *op, op_call *c, const op_params *p)
{
    (void)op, (void)p;
    out_like(c, 0, 0);
    return 0;
}

static int shape_like_in1(const char *op, op_call *c, const op_params *p)
{
    (void)op, (void)p;
    out_like(c, 0, 1);
    return 0;
}

static int shape_scalar(const char *op, op_call *c, const op_params *p)
{
    (void)op, (void)p;
    c->scalar_out = 1;
    return 0;
}

static int shape_channel_sums(const char *op, op_call *c, const op_params *p)
{
    (void)p;
    if (need_ndim(op, c, 0, 4) < 0) return -1;
    int64_t s[2] = {dim(c, 0, 0), dim(c, 0, 1)};
    set_out(c, 0, 2, s);
    return 0;
}

static int shape_linear_forward(const char *op, op_call *c, const op_params *p)
{
    (void)op, (void)p;
    out_last(c, 0, 0, dim(c, 1, 0));
    return 0;
}

static int shape_geglu_ffn_forward(const char *op, op_call *c, const op_params *p)
{
    (void)op, (void)p;
    out_last(c, 0, 0, dim(c, 3, 0)); /* w2's Out */
    return 0;
}

static int shape_linear_backward(const char *op, op_call *c, const op_params *p)
{
    (void)p;
    if (ndim_of(c, 1) < 2) {
        PyErr_Format(PyExc_ValueError, "%s: w must be Out x In", op);
        return -1;
    }
    out_last(c, 0, 0, dim(c, 1, 1));
    return 0;
}

static int shape_conv2d_forward(const char *op, op_call *c, const op_params *p)
{
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
    return 0;
}

static int shape_x_shape(const char *op, op_call *c, const op_params *p)
{
    if (p->x_ndim != 4) {
        PyErr_Format(PyExc_ValueError, "%s needs params['x_shape'] = (N, C, H, W)", op);
        return -1;
    }
    set_out(c, 0, 4, p->x_shape);
    return 0;
}

static int shape_half_last(const char *op, op_call *c, const op_params *p)
{
    (void)op, (void)p;
    out_last(c, 0, 0, dim(c, 0, -1) / 2);
    return 0;
}

/* N x C x H x W -> N x HW x C */
static int shape_to_nlc(const char *op, op_call *c, const op_params *p)
{
    (void)p;
    if (need_ndim(op, c, 0, 4) < 0) return -1;
    int64_t s[3] = {dim(c, 0, 0), dim(c, 0, 2) * dim(c, 0, 3), dim(c, 0, 1)};
    set_out(c, 0, 3, s);
    return 0;
}

/* N x HW x C -> N x C x H x W, with (H, W) = params["hw"] */
static int shape_to_nchw(const char *op, op_call *c, const op_params *p)
{
    if (need_ndim(op, c, 0, 3) < 0) return -1;
    if (!p->has_hw) {
        PyErr_Format(PyExc_ValueError, "%s needs params['hw'] = (H, W)", op);
        return -1;
    }
    int64_t s[4] = {dim(c, 0, 0), dim(c, 0, 2), p->hw[0], p->hw[1]};
    set_out(c, 0, 4, s);
    return 0;
}

static int shape_concat(const char *op, op_call *c, const op_params *p)
{
    (void)p;
    if (need_ndim(op, c, 0, 4) < 0 || need_ndim(op, c, 1, 4) < 0) return -1;
    int64_t s[4] = {dim(c, 0, 0), dim(c, 0, 1) + dim(c, 1, 1), dim(c, 0, 2), dim(c, 0, 3)};
    set_out(c, 0, 4, s);
    return 0;
}

/* dy split along channels at params["ca"] */
static int shape_split(const char *op, op_call *c, const op_params *p)
{
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
    return 0;
}

static int resample2x(const char *op, op_call *c, int up)
{
    if (need_ndim(op, c, 0, 4) < 0) return -1;
    int64_t s[4] = {dim(c, 0, 0), dim(c, 0, 1), up ? dim(c, 0, 2) * 2 : dim(c, 0, 2) / 2,
                    up ? dim(c, 0, 3) * 2 : dim(c, 0, 3) / 2};
    set_out(c, 0, 4, s);
    return 0;
}

static int shape_upsample2x(const char *op, op_call *c, const op_params *p)
{
    (void)p;
    return resample2x(op, c, 1);
}

static int shape_downsample2x(const char *op, op_call *c, const op_params *p)
{
    (void)p;
    return resample2x(op, c, 0);
}

static int shape_attention_forward(const char *op, op_call *c, const op_params *p)
{
    if (need_ndim(op, c, 0, 3) < 0 || need_ndim(op, c, 1, 3) < 0) return -1;
    out_like(c, 0, 0);
    int64_t s[4] = {dim(c, 0, 0), p->heads, dim(c, 0, 1), dim(c, 1, 1)};
    set_out(c, 1, 4, s);
    c->out_want[1] = p->want_probs;
    return 0;
}

static int shape_attention_backward(const char *op, op_call *c, const op_params *p)
{
    (void)op;
    out_like(c, 0, 0);
    out_like(c, 1, 1);
    out_like(c, 2, 2);
    c->out_want[0] = p->want_dq;
    c->out_want[1] = p->want_dk;
    c->out_want[2] = p->want_dv;
    return 0;
}

static int shape_embedding(const char *op, op_call *c, const op_params *p)
{
    if (need_ndim(op, c, 0, 2) < 0) return -1;
    int64_t s[2] = {p->nids, dim(c, 0, 1)};
    set_out(c, 0, 2, s);
    return 0;
}

/* ------------------------------------------------- generated calls --- */

/* An array named "host" is the host memory of upload / download. */
static int is_host(const char *name) { return !strcmp(name, "host"); }

static int index_of(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], name)) return i;
    return -1;
}

/* The values of an op's arguments, by the argument's ops.def name: NULL for
 * an absent optional input or an unwanted output; a name the table does not
 * provide is recorded in c->unbound (and the op is not called). */
static gnr_tensor *tensor_arg(op_call *c, const char *name, int is_input)
{
    int i = is_input ? index_of(c->in_name, c->nin, name) : index_of(c->out_name, c->nout, name);
    if (i < 0) {
        c->unbound = name;
        return NULL;
    }
    if (is_input) return c->host_in[i] ? &c->in[i] : NULL;
    return c->out_want[i] ? &c->out[i] : NULL;
}

static void *host_arg(op_call *c, const char *name, int is_input)
{
    int i = is_input ? index_of(c->in_name, c->nin, name) : index_of(c->out_name, c->nout, name);
    PyArrayObject *a = i < 0 ? NULL : is_input ? c->host_in[i] : c->host_out[i];
    if (!a) c->unbound = name;
    return a ? PyArray_DATA(a) : NULL;
}

static float float_arg(op_call *c, const op_params *p, const char *name)
{
    const scalar_param *s = scalar_named(name);
    if (!s || !s->is_float) {
        c->unbound = name;
        return 0.0f;
    }
    return *(const float *)((const char *)p + s->offset);
}

/* Integer and enum arguments. */
static int64_t int_arg(op_call *c, const op_params *p, const char *name)
{
    if (!strcmp(name, "act")) return p->act;
    if (!strcmp(name, "n")) return p->nids; /* the count of ids */
    const scalar_param *s = scalar_named(name);
    if (!s || s->is_float) {
        c->unbound = name;
        return 0;
    }
    return *(const int *)((const char *)p + s->offset);
}

/* attention_backward's seed: NULL when the seed_q input is None. */
static const gnr_attention_seed *seed_arg(op_call *c, const op_params *p)
{
    const gnr_tensor *q = tensor_arg(c, "seed_q", 1), *k = tensor_arg(c, "seed_k", 1);
    if (!q || !k) return NULL;
    c->seed.q = q;
    c->seed.k = k;
    c->seed.coef = p->coef;
    c->seed.energy = NULL; /* the op returns no energy */
    return &c->seed;
}

/* Preprocessor iteration over an argument list (up to 16 entries; the
 * longest op, attention_backward, has 14). */
#define GNR_PY_UNPACK(...) __VA_ARGS__
#define GNR_PY_COUNT(...) GNR_PY_COUNT_(__VA_ARGS__, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define GNR_PY_COUNT_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, n, ...) n
#define GNR_PY_CAT(a, b) GNR_PY_CAT_(a, b)
#define GNR_PY_CAT_(a, b) a##b
#define GNR_PY_EACH(m, ...) GNR_PY_CAT(GNR_PY_EACH_, GNR_PY_COUNT(__VA_ARGS__))(m, __VA_ARGS__)
#define GNR_PY_EACH_1(m, a) m(a)
#define GNR_PY_EACH_2(m, a, ...) m(a) GNR_PY_EACH_1(m, __VA_ARGS__)
#define GNR_PY_EACH_3(m, a, ...) m(a) GNR_PY_EACH_2(m, __VA_ARGS__)
#define GNR_PY_EACH_4(m, a, ...) m(a) GNR_PY_EACH_3(m, __VA_ARGS__)
#define GNR_PY_EACH_5(m, a, ...) m(a) GNR_PY_EACH_4(m, __VA_ARGS__)
#define GNR_PY_EACH_6(m, a, ...) m(a) GNR_PY_EACH_5(m, __VA_ARGS__)
#define GNR_PY_EACH_7(m, a, ...) m(a) GNR_PY_EACH_6(m, __VA_ARGS__)
#define GNR_PY_EACH_8(m, a, ...) m(a) GNR_PY_EACH_7(m, __VA_ARGS__)
#define GNR_PY_EACH_9(m, a, ...) m(a) GNR_PY_EACH_8(m, __VA_ARGS__)
#define GNR_PY_EACH_10(m, a, ...) m(a) GNR_PY_EACH_9(m, __VA_ARGS__)
#define GNR_PY_EACH_11(m, a, ...) m(a) GNR_PY_EACH_10(m, __VA_ARGS__)
#define GNR_PY_EACH_12(m, a, ...) m(a) GNR_PY_EACH_11(m, __VA_ARGS__)
#define GNR_PY_EACH_13(m, a, ...) m(a) GNR_PY_EACH_12(m, __VA_ARGS__)
#define GNR_PY_EACH_14(m, a, ...) m(a) GNR_PY_EACH_13(m, __VA_ARGS__)
#define GNR_PY_EACH_15(m, a, ...) m(a) GNR_PY_EACH_14(m, __VA_ARGS__)
#define GNR_PY_EACH_16(m, a, ...) m(a) GNR_PY_EACH_15(m, __VA_ARGS__)

/* For each op of ops.def, run_<name>(ctx, call, params): its parameters
 * become locals (DECLARE), each takes its value by its type and name (BIND),
 * and gnr_<name> is called with the argument list of ops.def. The type
 * decides where a value comes from; an unlisted pointer type would take an
 * integer, which the pragma below turns into a compile error, so an op with a
 * new kind of argument cannot be called with a wrong value. */
#pragma GCC diagnostic push
#pragma GCC diagnostic error "-Wint-conversion"
#define DECLARE(decl) decl;
#define BIND(a)                                                                                                        \
    a = _Generic((a),                                                                                                  \
        gnr_ctx *: ctx_,                                                                                               \
        const gnr_tensor *: tensor_arg(c_, #a, 1),                                                                     \
        gnr_tensor *: tensor_arg(c_, #a, 0),                                                                           \
        const float *: host_arg(c_, #a, 1),                                                                            \
        float *: host_arg(c_, #a, 0),                                                                                  \
        double *: &c_->scalar,                                                                                         \
        const gnr_conv_params *: &p_->conv,                                                                            \
        const gnr_attention_seed *: seed_arg(c_, p_),                                                                  \
        const int32_t *: p_->ids,                                                                                      \
        float: float_arg(c_, p_, #a),                                                                                  \
        default: int_arg(c_, p_, #a));
#define GNR_OP(name, params, args)                                                                                     \
    static gnr_status run_##name(gnr_ctx *ctx_, op_call *c_, const op_params *p_)                                     \
    {                                                                                                                  \
        GNR_PY_EACH(DECLARE, GNR_PY_UNPACK params)                                                                     \
        GNR_PY_EACH(BIND, GNR_PY_UNPACK args)                                                                          \
        if (c_->unbound)                                                                                               \
            return gnr_error(GNR_ERR_INTERNAL, "op_table.def: %s's argument '%s' has no value", #name, c_->unbound); \
        return gnr_##name args;                                                                                        \
    }
#include "ops.def"
#undef GNR_OP
#undef BIND
#undef DECLARE
#pragma GCC diagnostic pop

/* ------------------------------------------------------------ table --- */

typedef struct {
    const char *name;
    const char *inputs;  /* comma separated; "?" marks an optional one */
    const char *outputs; /* comma separated, in the order returned */
    out_start start;
    shape_rule shapes;
    gnr_status (*run)(gnr_ctx *ctx, op_call *c, const op_params *p);
} op_spec;

static const op_spec OPS[] = {
#define GNR_OP_TEST(name, inputs, outputs, start, shape) {#name, inputs, outputs, START_##start, shape_##shape, run_##name},
#include "op_table.def"
#undef GNR_OP_TEST
};
#define NOPS ((int)(sizeof OPS / sizeof OPS[0]))

/* --------------------------------------------------------------- run --- */

static gnr_status device_tensor(const gnr_backend *b, gnr_device dev, int nd, const int64_t *shape, gnr_tensor *t)
{
    *t = gnr_tensor_view(NULL, GNR_F32, dev, nd, shape);
    t->data = b->allocator.alloc(gnr_nbytes(t) ? gnr_nbytes(t) : 4, b->allocator.user);
    if (!t->data) return gnr_error(GNR_ERR_NOMEM, "could not allocate %zu bytes on %s", gnr_nbytes(t), b->name);
    return GNR_OK;
}

/* Everything between upload and download; runs without the GIL. */
static gnr_status execute(const op_spec *spec, const gnr_backend *b, gnr_device dev, op_call *c, const op_params *p)
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
        if (!c->host_in[i] || is_host(c->in_name[i])) continue;
        PyArrayObject *a = c->host_in[i];
        int64_t s[GNR_MAX_DIMS];
        for (int d = 0; d < PyArray_NDIM(a); d++) s[d] = PyArray_DIM(a, d);
        GNR_CHECK(st, device_tensor(b, dev, PyArray_NDIM(a), s, &c->in[i]));
        GNR_CHECK(st, gnr_upload(&ctx, (const float *)PyArray_DATA(a), &c->in[i]));
    }
    for (int k = 0; k < c->nout; k++) {
        if (!c->out_want[k] || is_host(c->out_name[k])) continue;
        GNR_CHECK(st, device_tensor(b, dev, c->out_ndim[k], c->out_shape[k], &c->out[k]));
        int from = spec->start == START_INPUT ? index_of(c->in_name, c->nin, c->out_name[k]) : -1;
        if (c->start[k]) GNR_CHECK(st, gnr_upload(&ctx, (const float *)PyArray_DATA(c->start[k]), &c->out[k]));
        else if (spec->start == START_NANS) GNR_CHECK(st, gnr_fill(&ctx, &c->out[k], NAN));
        else if (spec->start == START_ZEROS) GNR_CHECK(st, gnr_fill(&ctx, &c->out[k], 0.0f));
        else if (from >= 0) GNR_CHECK(st, gnr_copy(&ctx, &c->in[from], &c->out[k]));
    }
    GNR_CHECK(st, spec->run(&ctx, c, p));
    for (int k = 0; k < c->nout; k++)
        if (c->out_want[k] && !is_host(c->out_name[k]))
            GNR_CHECK(st, gnr_download(&ctx, &c->out[k], (float *)PyArray_DATA(c->host_out[k])));
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

/* Splits "a,b?,c" (copied into buf) into names, marking optional ones;
 * returns the count. */
static int split_names(const char *list, char *buf, size_t n, const char **names, int *optional, int max)
{
    int count = 0;
    char *save = NULL;
    snprintf(buf, n, "%s", list);
    for (char *tok = strtok_r(buf, ",", &save); tok && count < max; tok = strtok_r(NULL, ",", &save)) {
        size_t len = strlen(tok);
        int opt = len && tok[len - 1] == '?';
        if (opt) tok[len - 1] = '\0';
        if (optional) optional[count] = opt;
        names[count++] = tok;
    }
    return count;
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

    size_t half = sizeof c.names / 2;
    c.nin = split_names(spec->inputs, c.names, half, c.in_name, c.optional, MAX_IN);
    c.nout = split_names(spec->outputs, c.names + half, half, c.out_name, NULL, MAX_OUT);
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
        if (ndim_of(&c, i) < 1 || ndim_of(&c, i) > GNR_MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "%s: %s must have 1 to %d dimensions, got %d", name, c.in_name[i],
                         GNR_MAX_DIMS, ndim_of(&c, i));
            goto done;
        }
    }
    if (parse_params(params, &p) < 0) goto done;
    if (spec->shapes(name, &c, &p) < 0) goto done;
    for (int k = 0; k < c.nout; k++)
        for (int d = 0; d < c.out_ndim[k]; d++)
            if (c.out_shape[k][d] < 0) {
                PyErr_Format(PyExc_ValueError, "%s: inputs imply a negative output size", name);
                goto done;
            }
    for (int k = 0; k < c.nout; k++) {
        if (!c.out_want[k]) continue;
        npy_intp s[GNR_MAX_DIMS];
        for (int d = 0; d < c.out_ndim[k]; d++) s[d] = (npy_intp)c.out_shape[k][d];
        c.host_out[k] = gnr_py_new_float(c.out_ndim[k], s);
        if (!c.host_out[k]) goto done;
    }

    PyObject *start = params != Py_None && PyDict_Check(params) ? PyDict_GetItemString(params, "start") : NULL;
    if (start) {
        if (spec->start != START_ZEROS || !PyTuple_Check(start) || PyTuple_GET_SIZE(start) != c.nout) {
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
    st = execute(spec, b, dev, &c, &p);
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }

    if (c.scalar_out) {
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
