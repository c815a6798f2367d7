/* gnr._C.Model: one model (gnr.h) as a Python object.
 *
 * The Python layer (gnr/model.py) reads the files, resolves the configs into
 * the flat dicts parsed here, and feeds the weights by name. Every pass
 * checks its arrays first, then runs with the GIL released. */
#define NO_IMPORT_ARRAY
#include "arrays.h"

#include <string.h>

#include "bindings.h"
#include "errors.h"
#include "gnr.h"

typedef struct {
    PyObject_HEAD
    gnr_model *model;
} ModelObject;

/* ----------------------------------------------------- config parsing --- */

static int get_int(PyObject *d, const char *section, const char *key, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (!v) {
        PyErr_Format(PyExc_ValueError, "%s config: missing key '%s'", section, key);
        return -1;
    }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s config: '%s' must be an integer", section, key);
        return -1;
    }
    if (x < -1000000 || x > 1000000000) {
        PyErr_Format(PyExc_ValueError, "%s config: '%s' = %ld is out of range", section, key, x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int get_float(PyObject *d, const char *section, const char *key, float *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_ValueError, "%s config: missing key '%s'", section, key);
        return -1;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s config: '%s' must be a number", section, key);
        return -1;
    }
    *out = (float)x;
    return 0;
}

/* A list of ints of length n (n <= GNR_MAX_BLOCKS). */
static int get_int_list(PyObject *d, const char *section, const char *key, int n, int *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v || !PyList_Check(v) || PyList_GET_SIZE(v) != n) {
        PyErr_Format(PyExc_ValueError, "%s config: '%s' must be a list of %d integers", section, key, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        long x = PyLong_AsLong(PyList_GET_ITEM(v, i));
        if (x == -1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%s config: '%s'[%d] must be an integer", section, key, i);
            return -1;
        }
        out[i] = (int)x;
    }
    return 0;
}

static PyObject *section(PyObject *cfg, const char *name)
{
    PyObject *s = PyDict_GetItemString(cfg, name);
    if (!s || !PyDict_Check(s)) {
        PyErr_Format(PyExc_ValueError, "model config: '%s' must be a dict", name);
        return NULL;
    }
    return s;
}

static int parse_config(PyObject *cfg, gnr_model_config *c)
{
    memset(c, 0, sizeof *c);
    if (!PyDict_Check(cfg)) {
        PyErr_SetString(PyExc_TypeError, "model config must be a dict");
        return -1;
    }
    PyObject *t = section(cfg, "text"), *u = section(cfg, "unet"), *v = section(cfg, "vae");
    if (!t || !u || !v) return -1;
    int act;
    if (get_int(t, "text", "vocab_size", &c->text.vocab_size) || get_int(t, "text", "hidden_size", &c->text.hidden_size) ||
        get_int(t, "text", "intermediate_size", &c->text.intermediate_size) ||
        get_int(t, "text", "num_layers", &c->text.num_layers) || get_int(t, "text", "num_heads", &c->text.num_heads) ||
        get_int(t, "text", "max_positions", &c->text.max_positions) || get_int(t, "text", "act", &act) ||
        get_float(t, "text", "layer_norm_eps", &c->text.layer_norm_eps))
        return -1;
    c->text.act = act ? GNR_TEXT_ACT_GELU : GNR_TEXT_ACT_QUICK_GELU;

    gnr_unet_config *un = &c->unet;
    if (get_int(u, "unet", "in_channels", &un->in_channels) || get_int(u, "unet", "out_channels", &un->out_channels) ||
        get_int(u, "unet", "num_blocks", &un->num_blocks))
        return -1;
    if (un->num_blocks < 1 || un->num_blocks > GNR_MAX_BLOCKS) {
        PyErr_Format(PyExc_ValueError, "unet config: %d blocks is not supported (1 to %d)", un->num_blocks,
                     GNR_MAX_BLOCKS);
        return -1;
    }
    int n = un->num_blocks;
    if (get_int_list(u, "unet", "block_out_channels", n, un->block_out_channels) ||
        get_int(u, "unet", "layers_per_block", &un->layers_per_block) ||
        get_int_list(u, "unet", "down_has_attn", n, un->down_has_attn) ||
        get_int_list(u, "unet", "up_has_attn", n, un->up_has_attn) || get_int_list(u, "unet", "heads", n, un->heads) ||
        get_int_list(u, "unet", "transformer_layers", n, un->transformer_layers) ||
        get_int(u, "unet", "mid_heads", &un->mid_heads) ||
        get_int(u, "unet", "mid_transformer_layers", &un->mid_transformer_layers) ||
        get_int(u, "unet", "cross_attention_dim", &un->cross_attention_dim) ||
        get_int(u, "unet", "norm_num_groups", &un->norm_num_groups) || get_float(u, "unet", "norm_eps", &un->norm_eps) ||
        get_int(u, "unet", "flip_sin_to_cos", &un->flip_sin_to_cos) ||
        get_float(u, "unet", "freq_shift", &un->freq_shift))
        return -1;

    gnr_vae_config *va = &c->vae;
    if (get_int(v, "vae", "in_channels", &va->in_channels) || get_int(v, "vae", "out_channels", &va->out_channels) ||
        get_int(v, "vae", "latent_channels", &va->latent_channels) || get_int(v, "vae", "num_blocks", &va->num_blocks))
        return -1;
    if (va->num_blocks < 1 || va->num_blocks > GNR_MAX_BLOCKS) {
        PyErr_Format(PyExc_ValueError, "vae config: %d blocks is not supported (1 to %d)", va->num_blocks,
                     GNR_MAX_BLOCKS);
        return -1;
    }
    if (get_int_list(v, "vae", "block_out_channels", va->num_blocks, va->block_out_channels) ||
        get_int(v, "vae", "layers_per_block", &va->layers_per_block) ||
        get_int(v, "vae", "norm_num_groups", &va->norm_num_groups) ||
        get_int(v, "vae", "mid_block_add_attention", &va->mid_block_add_attention) ||
        get_int(v, "vae", "use_quant_conv", &va->use_quant_conv) ||
        get_int(v, "vae", "use_post_quant_conv", &va->use_post_quant_conv) ||
        get_float(v, "vae", "scaling_factor", &va->scaling_factor))
        return -1;
    if (un->norm_num_groups < 1 || va->norm_num_groups < 1) {
        PyErr_SetString(PyExc_ValueError, "norm_num_groups must be >= 1");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ the type --- */

static int Model_init(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"config", "device", "threads", "max_memory", "dtype", NULL};
    PyObject *cfg;
    const char *device = "cpu", *dtype = "float32";
    int threads = 0;
    unsigned long long max_memory = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|siKs", kwlist, &cfg, &device, &threads, &max_memory, &dtype))
        return -1;
    gnr_device dev;
    if (strcmp(device, "cpu") == 0) dev = GNR_CPU;
    else if (strcmp(device, "cuda") == 0) dev = GNR_CUDA;
    else {
        PyErr_Format(PyExc_ValueError, "device must be 'cpu' or 'cuda', got '%s'", device);
        return -1;
    }
    gnr_dtype mm;
    if (strcmp(dtype, "float32") == 0) mm = GNR_F32;
    else if (strcmp(dtype, "float16") == 0) mm = GNR_F16;
    else if (strcmp(dtype, "bfloat16") == 0) mm = GNR_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "dtype must be 'float32', 'float16' or 'bfloat16', got '%s'", dtype);
        return -1;
    }
    gnr_model_config c;
    if (parse_config(cfg, &c) < 0) return -1;
    if (self->model) {
        gnr_model_destroy(self->model);
        self->model = NULL;
    }
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_model_create(&c, dev, mm, threads, (size_t)max_memory, &self->model);
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        return -1;
    }
    return 0;
}

static void Model_dealloc(ModelObject *self)
{
    gnr_model_destroy(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(ModelObject *self)
{
    if (!self->model) {
        PyErr_SetString(PyExc_RuntimeError, "model is not initialised");
        return 0;
    }
    return 1;
}

struct gnr_model *gnr_py_model_of(PyObject *self)
{
    ModelObject *o = (ModelObject *)self;
    if (!o->model) PyErr_SetString(PyExc_RuntimeError, "model is not initialised");
    return o->model;
}

static PyObject *shape_tuple(int ndim, const int64_t *shape)
{
    PyObject *t = PyTuple_New(ndim);
    if (!t) return NULL;
    for (int i = 0; i < ndim; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(shape[i]));
    return t;
}

static PyObject *Model_weight_specs(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!ready(self)) return NULL;
    int n = gnr_model_weight_count(self->model);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        const char *name;
        int ndim;
        const int64_t *shape;
        gnr_model_weight_info(self->model, i, &name, &ndim, &shape);
        PyObject *item = Py_BuildValue("(sN)", name, shape_tuple(ndim, shape));
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *Model_set_weight(ModelObject *self, PyObject *args)
{
    const char *name;
    PyObject *obj;
    if (!ready(self) || !PyArg_ParseTuple(args, "sO", &name, &obj)) return NULL;
    PyArrayObject *a = gnr_py_float_array(obj, name, -1, NULL, 0);
    if (!a) return NULL;
    PyObject *ret = NULL;
    int ndim = PyArray_NDIM(a);
    int64_t shape[8] = {0};
    if (ndim > 8) ndim = 8; /* anything past 4 dims is a mismatch, reported with the first dims */
    for (int i = 0; i < ndim; i++) shape[i] = PyArray_DIM(a, i);
    gnr_status st;
    if (PyArray_NDIM(a) > GNR_MAX_DIMS) {
        st = gnr_error(GNR_ERR_VALUE, "weight '%s' has %d dimensions in the file; at most %d are expected", name,
                       PyArray_NDIM(a), GNR_MAX_DIMS);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    st = gnr_model_set_weight(self->model, name, (const float *)PyArray_DATA(a), ndim, shape);
    Py_END_ALLOW_THREADS
done:
    if (st == GNR_OK) ret = Py_NewRef(Py_None);
    else gnr_py_raise(st);
    Py_DECREF(a);
    return ret;
}

static PyObject *Model_finalize(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!ready(self)) return NULL;
    gnr_status st = gnr_model_finalize(self->model);
    if (st != GNR_OK) return gnr_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Model_encode_text(ModelObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    const gnr_model_config *c = gnr_model_get_config(self->model);
    PyArrayObject *ids = (PyArrayObject *)PyArray_FROM_OTF(arg, NPY_INT32, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!ids) return NULL;
    PyObject *ret = NULL;
    PyArrayObject *out = NULL;
    if (PyArray_NDIM(ids) != 1 || PyArray_DIM(ids, 0) != c->text.max_positions) {
        PyErr_Format(PyExc_ValueError, "token ids must have shape (%d,)", c->text.max_positions);
        goto done;
    }
    npy_intp shape[2] = {c->text.max_positions, c->text.hidden_size};
    out = gnr_py_new_float(2, shape);
    if (!out) goto done;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_encode_text(self->model, (const int32_t *)PyArray_DATA(ids), (float *)PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_DECREF(ids);
    Py_XDECREF(out);
    return ret;
}

/* An integer timestep in [0, 1000) (bools and floats refused); -1 with an exception otherwise. */
static int parse_timestep(PyObject *obj, long *t)
{
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "timestep must be an integer in [0, 1000), got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    *t = PyLong_AsLong(obj);
    if (*t == -1 && PyErr_Occurred()) return -1;
    if (*t < 0 || *t >= 1000) {
        PyErr_Format(PyExc_ValueError, "timestep must be an integer in [0, 1000), got %ld", *t);
        return -1;
    }
    return 0;
}

/* A context (L, D) or (1, L, D) -> float32 (L, D) array. */
static PyArrayObject *context_array(PyObject *obj, int dim)
{
    PyArrayObject *a = gnr_py_float_array(obj, "context", -1, NULL, 1);
    if (!a) return NULL;
    int nd = PyArray_NDIM(a);
    int ok = (nd == 2 && PyArray_DIM(a, 1) == dim && PyArray_DIM(a, 0) >= 1) ||
             (nd == 3 && PyArray_DIM(a, 0) == 1 && PyArray_DIM(a, 2) == dim && PyArray_DIM(a, 1) >= 1);
    if (!ok) {
        char buf[96];
        PyErr_Format(PyExc_ValueError, "context must have shape (L, %d) or (1, L, %d), got %s", dim, dim,
                     gnr_py_shape_str(a, buf, sizeof buf));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *Model_unet(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"latent", "timestep", "context", NULL};
    PyObject *zobj, *cobj, *tobj;
    if (!ready(self) || !PyArg_ParseTupleAndKeywords(args, kw, "OOO", kwlist, &zobj, &tobj, &cobj)) return NULL;
    const gnr_model_config *c = gnr_model_get_config(self->model);
    long t;
    if (parse_timestep(tobj, &t) < 0) return NULL;
    npy_intp zs[4] = {1, c->unet.in_channels, -1, -1};
    PyArrayObject *z = NULL, *ctx = NULL, *out = NULL;
    PyObject *ret = NULL;
    z = gnr_py_float_array(zobj, "latent", 4, zs, 1);
    if (!z) goto done;
    ctx = context_array(cobj, c->unet.cross_attention_dim);
    if (!ctx) goto done;
    int h = (int)PyArray_DIM(z, 2), w = (int)PyArray_DIM(z, 3);
    int L = (int)PyArray_DIM(ctx, PyArray_NDIM(ctx) - 2);
    npy_intp os[4] = {1, c->unet.out_channels, h, w};
    out = gnr_py_new_float(4, os);
    if (!out) goto done;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_unet_forward(self->model, PyArray_DATA(z), h, w, (int)t, PyArray_DATA(ctx), L, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(z);
    Py_XDECREF(ctx);
    Py_XDECREF(out);
    return ret;
}

/* The VAE passes: one image-shaped float array in, one out, sizes scaled by
 * the VAE factor (up for the decoder, down for the encoder). */
typedef gnr_status (*vae_pass)(gnr_model *, const float *, int, int, float *);

static PyObject *run_vae(ModelObject *self, PyObject *arg, const char *name, int in_c, int out_c, int decode,
                         vae_pass fn)
{
    npy_intp xs[4] = {1, in_c, -1, -1};
    PyArrayObject *x = gnr_py_float_array(arg, name, 4, xs, 1), *out = NULL;
    if (!x) return NULL;
    PyObject *ret = NULL;
    int h = (int)PyArray_DIM(x, 2), w = (int)PyArray_DIM(x, 3), f = gnr_model_vae_factor(self->model);
    npy_intp os[4] = {1, out_c, decode ? (npy_intp)h * f : h / f, decode ? (npy_intp)w * f : w / f};
    if (!(out = gnr_py_new_float(4, os))) goto done;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fn(self->model, PyArray_DATA(x), h, w, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_DECREF(x);
    Py_XDECREF(out);
    return ret;
}

static PyObject *Model_vae_encode(ModelObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    const gnr_vae_config *v = &gnr_model_get_config(self->model)->vae;
    return run_vae(self, arg, "image", v->in_channels, v->latent_channels, 0, gnr_vae_encode);
}

static PyObject *Model_vae_decode(ModelObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    const gnr_vae_config *v = &gnr_model_get_config(self->model)->vae;
    return run_vae(self, arg, "latent", v->latent_channels, v->out_channels, 1, gnr_vae_decode);
}

static PyObject *names_list(const char **names, int n)
{
    PyObject *l = PyList_New(n);
    if (!l) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, s);
    }
    return l;
}

#define MAX_NAMES 512

static PyObject *Model_feature_names(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!ready(self)) return NULL;
    const char *names[MAX_NAMES];
    int n = gnr_unet_feature_names(self->model, names, MAX_NAMES);
    return names_list(names, n < MAX_NAMES ? n : MAX_NAMES);
}

static PyObject *Model_attention_names(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!ready(self)) return NULL;
    PyObject *parts[3] = {NULL, NULL, NULL};
    for (int p = 0; p < 3; p++) {
        const char *names[MAX_NAMES];
        int n = gnr_unet_attention_names(self->model, p, names, MAX_NAMES);
        parts[p] = names_list(names, n < MAX_NAMES ? n : MAX_NAMES);
        if (!parts[p]) {
            for (int q = 0; q < p; q++) Py_DECREF(parts[q]);
            return NULL;
        }
    }
    return Py_BuildValue("(NNN)", parts[0], parts[1], parts[2]);
}

#define MAX_TERMS 16

/* energy_grad(latent, timestep, context, ref_latent, ref_context, terms,
 *             want_latent, want_context, checkpointing)
 * terms: a list of (kind int, scale float, [capture names]) (gnr/model.py
 * turns the user's dicts into this form and validates names). */
static PyObject *Model_energy_grad(ModelObject *self, PyObject *args)
{
    PyObject *zobj, *cobj, *rzobj, *rcobj, *terms_obj, *tobj;
    int want_z, want_c, checkpointing;
    if (!ready(self) || !PyArg_ParseTuple(args, "OOOOOOppp", &zobj, &tobj, &cobj, &rzobj, &rcobj, &terms_obj, &want_z,
                                          &want_c, &checkpointing))
        return NULL;
    const gnr_model_config *c = gnr_model_get_config(self->model);
    long t;
    if (parse_timestep(tobj, &t) < 0) return NULL;
    npy_intp zs[4] = {1, c->unet.in_channels, -1, -1};
    PyArrayObject *z = NULL, *ctx = NULL, *rz = NULL, *rc = NULL, *dz = NULL, *dc = NULL;
    PyObject *ret = NULL, *seq = NULL;
    gnr_energy_term terms[MAX_TERMS];
    const char **names[MAX_TERMS] = {NULL};
    int nterms = 0;
    char buf[96], buf2[96];
    if (!(z = gnr_py_float_array(zobj, "latent", 4, zs, 1))) goto done;
    if (!(rz = gnr_py_float_array(rzobj, "ref_latent", 4, zs, 1))) goto done;
    if (PyArray_DIM(rz, 2) != PyArray_DIM(z, 2) || PyArray_DIM(rz, 3) != PyArray_DIM(z, 3)) {
        PyErr_Format(PyExc_ValueError, "ref_latent shape %s differs from latent shape %s",
                     gnr_py_shape_str(rz, buf, sizeof buf), gnr_py_shape_str(z, buf2, sizeof buf2));
        goto done;
    }
    if (!(ctx = context_array(cobj, c->unet.cross_attention_dim))) goto done;
    if (!(rc = context_array(rcobj, c->unet.cross_attention_dim))) goto done;
    int L = (int)PyArray_DIM(ctx, PyArray_NDIM(ctx) - 2);
    if (PyArray_DIM(rc, PyArray_NDIM(rc) - 2) != L) {
        PyErr_Format(PyExc_ValueError, "ref_context has %d tokens but context has %d",
                     (int)PyArray_DIM(rc, PyArray_NDIM(rc) - 2), L);
        goto done;
    }
    seq = PySequence_Fast(terms_obj, "terms must be a list of (kind, scale, names)");
    if (!seq) goto done;
    if (PySequence_Fast_GET_SIZE(seq) > MAX_TERMS) {
        PyErr_Format(PyExc_ValueError, "at most %d energy terms, got %zd", MAX_TERMS, PySequence_Fast_GET_SIZE(seq));
        goto done;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        int kind;
        double scale;
        PyObject *nl;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "idO!;each term is (kind, scale, [names])", &kind,
                              &scale, &PyList_Type, &nl))
            goto done;
        Py_ssize_t n = PyList_GET_SIZE(nl);
        names[i] = PyMem_Calloc(n ? (size_t)n : 1, sizeof(char *));
        if (!names[i]) {
            PyErr_NoMemory();
            goto done;
        }
        nterms = (int)i + 1;
        for (Py_ssize_t j = 0; j < n; j++) {
            names[i][j] = PyUnicode_AsUTF8(PyList_GET_ITEM(nl, j)); /* valid while the list lives */
            if (!names[i][j]) goto done;
        }
        terms[i] = (gnr_energy_term){(gnr_energy_kind)kind, (float)scale, (int)n, names[i]};
    }
    int h = (int)PyArray_DIM(z, 2), w = (int)PyArray_DIM(z, 3);
    if (want_z && !(dz = gnr_py_new_float(4, PyArray_DIMS(z)))) goto done;
    npy_intp cshape[2] = {L, c->unet.cross_attention_dim};
    if (want_c && !(dc = gnr_py_new_float(2, cshape))) goto done;
    double e = 0.0;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_unet_energy_grad(self->model, PyArray_DATA(z), PyArray_DATA(ctx), PyArray_DATA(rz), PyArray_DATA(rc), h,
                              w, L, (int)t, terms, nterms, checkpointing, &e, dz ? PyArray_DATA(dz) : NULL,
                              dc ? PyArray_DATA(dc) : NULL);
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }
    ret = Py_BuildValue("(dOO)", e, dz ? (PyObject *)dz : Py_None, dc ? (PyObject *)dc : Py_None);
done:
    for (int i = 0; i < nterms; i++) PyMem_Free((void *)names[i]);
    Py_XDECREF(seq);
    Py_XDECREF(z);
    Py_XDECREF(ctx);
    Py_XDECREF(rz);
    Py_XDECREF(rc);
    Py_XDECREF(dz);
    Py_XDECREF(dc);
    return ret;
}

static PyObject *Model_reset_peak(ModelObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!ready(self)) return NULL;
    gnr_model_reset_peak(self->model);
    Py_RETURN_NONE;
}

static PyObject *Model_set_max_memory(ModelObject *self, PyObject *arg)
{
    if (!ready(self)) return NULL;
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    gnr_model_set_max_memory(self->model, (size_t)v);
    Py_RETURN_NONE;
}

static PyObject *Model_get_peak(ModelObject *self, void *closure)
{
    (void)closure;
    if (!ready(self)) return NULL;
    return PyLong_FromSize_t(gnr_model_peak_bytes(self->model));
}

static PyObject *Model_get_size_multiple(ModelObject *self, void *closure)
{
    (void)closure;
    if (!ready(self)) return NULL;
    return PyLong_FromLong(gnr_model_size_multiple(self->model));
}

static PyObject *Model_get_vae_factor(ModelObject *self, void *closure)
{
    (void)closure;
    if (!ready(self)) return NULL;
    return PyLong_FromLong(gnr_model_vae_factor(self->model));
}

static PyObject *Model_get_threads(ModelObject *self, void *closure)
{
    (void)closure;
    if (!ready(self)) return NULL;
    return PyLong_FromLong(gnr_model_threads(self->model));
}

static PyMethodDef Model_methods[] = {
    {"weight_specs", (PyCFunction)Model_weight_specs, METH_NOARGS, "[(name, shape)] of every weight the configs imply."},
    {"set_weight", (PyCFunction)Model_set_weight, METH_VARARGS, "set_weight(name, array): copy one weight in."},
    {"finalize", (PyCFunction)Model_finalize, METH_NOARGS, "Check that every weight was set."},
    {"encode_text", (PyCFunction)Model_encode_text, METH_O, "encode_text(ids int32 (L,)) -> float32 (L, D)."},
    {"unet", (PyCFunction)(void (*)(void))Model_unet, METH_VARARGS | METH_KEYWORDS,
     "unet(latent (1,C,h,w), timestep, context (L,D) or (1,L,D)) -> float32 (1,C,h,w)."},
    {"vae_encode", (PyCFunction)Model_vae_encode, METH_O,
     "vae_encode(image float (1,3,H,W) in [-1,1]) -> latent mean x scaling_factor (1,4,H/f,W/f)."},
    {"vae_decode", (PyCFunction)Model_vae_decode, METH_O,
     "vae_decode(latent (1,4,h,w)) -> float32 (1,3,h*f,w*f), the decoder's raw output."},
    {"feature_names", (PyCFunction)Model_feature_names, METH_NOARGS, "Feature capture points of the UNet."},
    {"attention_names", (PyCFunction)Model_attention_names, METH_NOARGS,
     "Self-attention map capture names: (down, mid, up) lists in forward order."},
    {"energy_grad", (PyCFunction)Model_energy_grad, METH_VARARGS,
     "energy_grad(latent, t, context, ref_latent, ref_context, terms, want_latent, want_context, checkpointing) "
     "-> (E, dlatent or None, dcontext or None)."},
    {"_invert", gnr_py_invert, METH_VARARGS,
     "_invert(z0, c_src, num_steps, callback, want_latent) -> chain (N+1, C, h, w)."},
    {"_null_text", gnr_py_null_text, METH_VARARGS,
     "_null_text(chain, c_src, c_null, guidance, callback, want_latent) -> per-step unconditional contexts."},
    {"_edit", gnr_py_edit, METH_VARARGS,
     "_edit(plan, chain, uncond, c_src, c_trg, callback, want_latent) -> final latent (1, C, h, w)."},
    {"reset_peak", (PyCFunction)Model_reset_peak, METH_NOARGS, "Reset the peak activation counter."},
    {"set_max_memory", (PyCFunction)Model_set_max_memory, METH_O, "Cap activation memory (bytes, 0 = none)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"peak_bytes", (getter)Model_get_peak, NULL, "Peak activation bytes since the last reset_peak.", NULL},
    {"size_multiple", (getter)Model_get_size_multiple, NULL, "Image sizes must be multiples of this.", NULL},
    {"vae_factor", (getter)Model_get_vae_factor, NULL, "Image size / latent size.", NULL},
    {"threads", (getter)Model_get_threads, NULL, "CPU threads of this model's passes (fixed when it was made).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gnr._C.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A Stable Diffusion 1.x model in the gnr engine (use gnr.load_model).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
};

int gnr_py_register_model(PyObject *module)
{
    if (PyType_Ready(&ModelType) < 0) return -1;
    return PyModule_AddObjectRef(module, "Model", (PyObject *)&ModelType);
}
