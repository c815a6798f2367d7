/* gnr._C.Model: one model (gnr.h) as a Python object.
 *
 * The Python layer (gnr/model.py) reads the files, resolves the configs into
 * the flat dicts parsed here, and feeds the weights by name. Every pass
 * checks its arrays first, then runs with the GIL released. */
#define NO_IMPORT_ARRAY
#include "arrays.h"

#include <string.h>

#include "bindings.h"
#include "convert.h"
#include "errors.h"
#include "gnr.h"

typedef struct {
    PyObject_HEAD
    gnr_model *model;
    /* Running calls that use `model` with the GIL released (a long job's
     * Python callbacks run inside its call, so they count too). __init__
     * refuses to replace the model while any runs, since freeing it would
     * pull it from under that call. Read and written with the GIL held. */
    int users;
} ModelObject;

/* ----------------------------------------------------- config parsing --- */

/* The dicts parsed here come from gnr.model.read_model_configs, which
 * validates every value (gnr/_model_config.py) and builds the dicts. The
 * binding checks only what it needs to fill the C structs safely: every key
 * present, every per-block list num_blocks long, every value a number, the
 * integers within CONFIG_MIN..CONFIG_MAX (no truncation, and sums of channels
 * stay C ints; gnr/_model_config.py's MAX_SIZE is CONFIG_MAX). A config
 * breaking one of these never comes from gnr.model, so it is an internal
 * error. Engine rules (block counts, divisibility, ...) are
 * gnr_model_create's check; the per-block lists are read only when their
 * count fits the fixed arrays, any other count being refused there first. */
#define CONFIG_MIN (-1000000)
#define CONFIG_MAX 1000000000

typedef struct {
    PyObject *dict;
    const char *name; /* "text", "unet", "vae" */
} config_section;

/* "<section> config: '<key>'", the name messages give a value. */
static const char *config_name(char *buf, size_t n, const config_section *s, const char *key)
{
    snprintf(buf, n, "%s config: '%s'", s->name, key);
    return buf;
}

/* section[key] through `conv` into `arg`; -1 with an internal error (the
 * converter's message inside). */
static int config_item(const config_section *s, const char *key, gnr_py_converter conv, void *arg)
{
    int r = gnr_py_dict_item(s->dict, key, conv, arg);
    if (r == 0) gnr_py_internal_error("%s config: missing key '%s'", s->name, key);
    if (r < 0 && (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_ValueError))) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        gnr_py_internal_error("%S", value ? value : Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return r > 0 ? 0 : -1;
}

static int config_int(const config_section *s, const char *key, int *out)
{
    char name[96];
    gnr_py_int v = {config_name(name, sizeof name, s, key), CONFIG_MIN, CONFIG_MAX, 0};
    if (config_item(s, key, gnr_py_conv_int, &v) < 0) return -1;
    *out = v.value;
    return 0;
}

static int config_float(const config_section *s, const char *key, float *out)
{
    char name[96];
    gnr_py_float v = {config_name(name, sizeof name, s, key), 0.0f};
    if (config_item(s, key, gnr_py_conv_float, &v) < 0) return -1;
    *out = v.value;
    return 0;
}

/* A per-block list of n ints (1 <= n <= GNR_MAX_BLOCKS) into out[n]. */
static int config_ints(const config_section *s, const char *key, int n, int *out)
{
    PyObject *v = PyDict_GetItemString(s->dict, key);
    if (!v || !PyList_Check(v) || PyList_GET_SIZE(v) != n) {
        gnr_py_internal_error("%s config: '%s' must be a list of num_blocks = %d integers, got %R", s->name, key, n,
                              v ? v : Py_None);
        return -1;
    }
    char name[96];
    gnr_py_ints list = {config_name(name, sizeof name, s, key), CONFIG_MIN, CONFIG_MAX, n, out, 0};
    return config_item(s, key, gnr_py_conv_ints, &list);
}

static int config_section_of(PyObject *cfg, const char *name, config_section *s)
{
    s->name = name;
    s->dict = PyDict_GetItemString(cfg, name);
    if (!s->dict || !PyDict_Check(s->dict)) {
        gnr_py_internal_error("model config: '%s' must be a dict", name);
        return -1;
    }
    return 0;
}

static int parse_config(PyObject *cfg, gnr_model_config *c)
{
    memset(c, 0, sizeof *c);
    if (!PyDict_Check(cfg)) {
        gnr_py_internal_error("the model config must be a dict, got %.100s", Py_TYPE(cfg)->tp_name);
        return -1;
    }
    config_section t, u, v;
    if (config_section_of(cfg, "text", &t) < 0 || config_section_of(cfg, "unet", &u) < 0 ||
        config_section_of(cfg, "vae", &v) < 0)
        return -1;
    /* The section dicts are borrowed from cfg; a converter running Python
     * code could drop them, so they are held while read. */
    Py_INCREF(t.dict);
    Py_INCREF(u.dict);
    Py_INCREF(v.dict);
    int rc = -1, act, prediction;
    gnr_text_config *tx = &c->text;
    if (config_int(&t, "vocab_size", &tx->vocab_size) || config_int(&t, "hidden_size", &tx->hidden_size) ||
        config_int(&t, "intermediate_size", &tx->intermediate_size) ||
        config_int(&t, "num_layers", &tx->num_layers) || config_int(&t, "num_heads", &tx->num_heads) ||
        config_int(&t, "max_positions", &tx->max_positions) || config_int(&t, "act", &act) ||
        config_float(&t, "layer_norm_eps", &tx->layer_norm_eps))
        goto done;
    tx->act = act ? GNR_TEXT_ACT_GELU : GNR_TEXT_ACT_QUICK_GELU;

    gnr_unet_config *un = &c->unet;
    if (config_int(&u, "in_channels", &un->in_channels) || config_int(&u, "out_channels", &un->out_channels) ||
        config_int(&u, "num_blocks", &un->num_blocks))
        goto done;
    int n = un->num_blocks;
    if (n >= 1 && n <= GNR_MAX_BLOCKS &&
        (config_ints(&u, "block_out_channels", n, un->block_out_channels) ||
         config_ints(&u, "down_has_attn", n, un->down_has_attn) ||
         config_ints(&u, "up_has_attn", n, un->up_has_attn) || config_ints(&u, "heads", n, un->heads) ||
         config_ints(&u, "transformer_layers", n, un->transformer_layers)))
        goto done;
    if (config_int(&u, "layers_per_block", &un->layers_per_block) || config_int(&u, "mid_heads", &un->mid_heads) ||
        config_int(&u, "mid_transformer_layers", &un->mid_transformer_layers) ||
        config_int(&u, "cross_attention_dim", &un->cross_attention_dim) ||
        config_int(&u, "norm_num_groups", &un->norm_num_groups) || config_float(&u, "norm_eps", &un->norm_eps) ||
        config_int(&u, "flip_sin_to_cos", &un->flip_sin_to_cos) || config_float(&u, "freq_shift", &un->freq_shift) ||
        config_int(&u, "linear_projection", &un->linear_projection) ||
        config_int(&u, "upcast_attention", &un->upcast_attention) || config_int(&u, "prediction", &prediction))
        goto done;
    un->prediction = (gnr_prediction)prediction;

    gnr_vae_config *va = &c->vae;
    if (config_int(&v, "in_channels", &va->in_channels) || config_int(&v, "out_channels", &va->out_channels) ||
        config_int(&v, "latent_channels", &va->latent_channels) || config_int(&v, "num_blocks", &va->num_blocks))
        goto done;
    n = va->num_blocks;
    if (n >= 1 && n <= GNR_MAX_BLOCKS && config_ints(&v, "block_out_channels", n, va->block_out_channels)) goto done;
    if (config_int(&v, "layers_per_block", &va->layers_per_block) ||
        config_int(&v, "norm_num_groups", &va->norm_num_groups) ||
        config_int(&v, "mid_block_add_attention", &va->mid_block_add_attention) ||
        config_int(&v, "use_quant_conv", &va->use_quant_conv) ||
        config_int(&v, "use_post_quant_conv", &va->use_post_quant_conv) ||
        config_float(&v, "scaling_factor", &va->scaling_factor))
        goto done;
    rc = 0;
done:
    Py_DECREF(t.dict);
    Py_DECREF(u.dict);
    Py_DECREF(v.dict);
    return rc;
}

/* ------------------------------------------------------------ the type --- */

/* Re-initialising a model that no call is using replaces it: once the new
 * arguments are read, the old model is freed (two need not fit in memory at
 * once) and the new one created with the GIL released; meanwhile the object
 * reads as uninitialised and counts as in use, so a second __init__ is
 * refused. If creating fails, the object stays uninitialised (its methods
 * raise RuntimeError). While a call uses the model, __init__ raises
 * RuntimeError and leaves it alone. */
static int Model_init(ModelObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"config", "device", "threads", "max_memory", "dtype", NULL};
    PyObject *cfg;
    gnr_device dev = GNR_CPU;
    gnr_dtype mm = GNR_F32;
    gnr_py_int threads = {"threads", 0, INT_MAX, 0}; /* 0: all cores */
    gnr_py_size max_memory = {"max_memory", SIZE_MAX, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O&O&O&O&", kwlist, &cfg, gnr_py_conv_device, &dev,
                                     gnr_py_conv_int, &threads, gnr_py_conv_size, &max_memory, gnr_py_conv_dtype,
                                     &mm))
        return -1;
    gnr_model_config c;
    if (parse_config(cfg, &c) < 0) return -1;
    /* Checked after parsing (a converter may run Python code, and with it
     * another thread); nothing between here and the swap releases the GIL. */
    if (self->users) {
        PyErr_SetString(PyExc_RuntimeError,
                        "gnr._C.Model.__init__: this model is in use by a running call (in another thread, or "
                        "this call's own callback) and cannot be re-initialised until that call returns");
        return -1;
    }
    gnr_model_destroy(self->model);
    self->model = NULL;
    self->users = 1;
    gnr_model *fresh = NULL;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_model_create(&c, dev, mm, threads.value, max_memory.value, &fresh);
    Py_END_ALLOW_THREADS
    self->users = 0;
    self->model = fresh;
    if (st != GNR_OK) {
        gnr_py_raise(st);
        return -1;
    }
    return 0;
}

static void Model_dealloc(ModelObject *self)
{
    gnr_model_destroy(self->model); /* no call runs: each holds a reference to self */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------- methods --- */

/* A method's body, given the model it may use for the whole call. */
typedef PyObject *(*model_method)(gnr_model *m, PyObject *args, PyObject *kw);

/* Runs `fn` with the model counted as in use, so that __init__ cannot free
 * it meanwhile: the body may run Python code (array conversion, callbacks)
 * or release the GIL, and another thread may then call __init__. */
static PyObject *with_model(ModelObject *self, model_method fn, PyObject *args, PyObject *kw)
{
    if (!self->model) {
        PyErr_SetString(PyExc_RuntimeError, "model is not initialised");
        return NULL;
    }
    self->users++;
    PyObject *ret = fn(self->model, args, kw);
    self->users--;
    return ret;
}

static PyObject *shape_tuple(int ndim, const int64_t *shape)
{
    PyObject *t = PyTuple_New(ndim);
    if (!t) return NULL;
    for (int i = 0; i < ndim; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(shape[i]));
    return t;
}

static PyObject *weight_specs(gnr_model *m, PyObject *noargs, PyObject *kw)
{
    (void)noargs;
    (void)kw;
    int n = gnr_model_weight_count(m);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        const char *name;
        int ndim;
        const int64_t *shape;
        gnr_model_weight_info(m, i, &name, &ndim, &shape);
        PyObject *item = Py_BuildValue("(sN)", name, shape_tuple(ndim, shape));
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *set_weight(gnr_model *m, PyObject *args, PyObject *kw)
{
    (void)kw;
    const char *name; /* held by the args tuple for the whole call */
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "sO", &name, &obj)) return NULL;
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
    st = gnr_model_set_weight(m, name, (const float *)PyArray_DATA(a), ndim, shape);
    Py_END_ALLOW_THREADS
done:
    if (st == GNR_OK) ret = Py_NewRef(Py_None);
    else gnr_py_raise(st);
    Py_DECREF(a);
    return ret;
}

static PyObject *finalize(gnr_model *m, PyObject *noargs, PyObject *kw)
{
    (void)noargs;
    (void)kw;
    gnr_status st = gnr_model_finalize(m);
    if (st != GNR_OK) return gnr_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *encode_text(gnr_model *m, PyObject *arg, PyObject *kw)
{
    (void)kw;
    const gnr_model_config *c = gnr_model_get_config(m);
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
    st = gnr_encode_text(m, (const int32_t *)PyArray_DATA(ids), (float *)PyArray_DATA(out));
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

/* A UNet's context for n latents -> float32 array: (L, D) or (1, L, D),
 * shared by all of them, or, for a batch, (n, L, D), one each. *items (may be
 * NULL): 1 or n. */
static PyArrayObject *context_array(PyObject *obj, int dim, npy_intp n, int *items)
{
    PyArrayObject *a = gnr_py_float_array(obj, "context", -1, NULL, 1);
    if (!a) return NULL;
    int nd = PyArray_NDIM(a);
    int ok = (nd == 2 && PyArray_DIM(a, 1) == dim && PyArray_DIM(a, 0) >= 1) ||
             (nd == 3 && (PyArray_DIM(a, 0) == 1 || PyArray_DIM(a, 0) == n) && PyArray_DIM(a, 2) == dim &&
              PyArray_DIM(a, 1) >= 1);
    if (!ok) {
        char buf[96];
        if (n == 1)
            PyErr_Format(PyExc_ValueError, "context must have shape (L, %d) or (1, L, %d), got %s", dim, dim,
                         gnr_py_shape_str(a, buf, sizeof buf));
        else
            PyErr_Format(PyExc_ValueError,
                         "context must have shape (L, %d), (1, L, %d) or, one per latent, (%lld, L, %d); got %s",
                         dim, dim, (long long)n, dim, gnr_py_shape_str(a, buf, sizeof buf));
        Py_DECREF(a);
        return NULL;
    }
    if (items) *items = nd == 3 ? (int)PyArray_DIM(a, 0) : 1;
    return a;
}

static PyObject *unet(gnr_model *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"latent", "timestep", "context", NULL};
    PyObject *zobj, *cobj;
    int t;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO&O", kwlist, &zobj, gnr_py_conv_timestep, &t, &cobj)) return NULL;
    const gnr_model_config *c = gnr_model_get_config(m);
    npy_intp zs[4] = {-1, c->unet.in_channels, -1, -1};
    PyArrayObject *z = NULL, *ctx = NULL, *out = NULL;
    PyObject *ret = NULL;
    z = gnr_py_float_array(zobj, "latent", 4, zs, 1);
    if (!z) goto done;
    int n = (int)PyArray_DIM(z, 0), items;
    ctx = context_array(cobj, c->unet.cross_attention_dim, n, &items);
    if (!ctx) goto done;
    int h = (int)PyArray_DIM(z, 2), w = (int)PyArray_DIM(z, 3);
    int L = (int)PyArray_DIM(ctx, PyArray_NDIM(ctx) - 2);
    npy_intp os[4] = {n, c->unet.out_channels, h, w};
    out = gnr_py_new_float(4, os);
    if (!out) goto done;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_unet_forward(m, PyArray_DATA(z), n, h, w, t, PyArray_DATA(ctx), items, L, PyArray_DATA(out));
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

static PyObject *run_vae(gnr_model *m, PyObject *arg, const char *name, int in_c, int out_c, int decode,
                         vae_pass fn)
{
    npy_intp xs[4] = {1, in_c, -1, -1};
    PyArrayObject *x = gnr_py_float_array(arg, name, 4, xs, 1), *out = NULL;
    if (!x) return NULL;
    PyObject *ret = NULL;
    int h = (int)PyArray_DIM(x, 2), w = (int)PyArray_DIM(x, 3), f = gnr_model_vae_factor(m);
    npy_intp os[4] = {1, out_c, decode ? (npy_intp)h * f : h / f, decode ? (npy_intp)w * f : w / f};
    if (!(out = gnr_py_new_float(4, os))) goto done;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fn(m, PyArray_DATA(x), h, w, PyArray_DATA(out));
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

static PyObject *vae_encode(gnr_model *m, PyObject *arg, PyObject *kw)
{
    (void)kw;
    const gnr_vae_config *v = &gnr_model_get_config(m)->vae;
    return run_vae(m, arg, "image", v->in_channels, v->latent_channels, 0, gnr_vae_encode);
}

static PyObject *vae_decode(gnr_model *m, PyObject *arg, PyObject *kw)
{
    (void)kw;
    const gnr_vae_config *v = &gnr_model_get_config(m)->vae;
    return run_vae(m, arg, "latent", v->latent_channels, v->out_channels, 1, gnr_vae_decode);
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

static PyObject *feature_names(gnr_model *m, PyObject *noargs, PyObject *kw)
{
    (void)noargs;
    (void)kw;
    const char *names[MAX_NAMES];
    int n = gnr_unet_feature_names(m, names, MAX_NAMES);
    return names_list(names, n < MAX_NAMES ? n : MAX_NAMES);
}

static PyObject *attention_names(gnr_model *m, PyObject *noargs, PyObject *kw)
{
    (void)noargs;
    (void)kw;
    PyObject *parts[3] = {NULL, NULL, NULL};
    for (int p = 0; p < 3; p++) {
        const char *names[MAX_NAMES];
        int n = gnr_unet_attention_names(m, p, names, MAX_NAMES);
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
 * turns the user's dicts into this form and validates names). The names are
 * copied: the list stays the caller's, and other threads run while the
 * engine does. */
static PyObject *energy_grad(gnr_model *m, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *zobj, *cobj, *rzobj, *rcobj, *terms_obj;
    int t, want_z, want_c, checkpointing;
    if (!PyArg_ParseTuple(args, "OO&OOOOppp", &zobj, gnr_py_conv_timestep, &t, &cobj, &rzobj, &rcobj, &terms_obj,
                          &want_z, &want_c, &checkpointing))
        return NULL;
    const gnr_model_config *c = gnr_model_get_config(m);
    npy_intp zs[4] = {1, c->unet.in_channels, -1, -1};
    PyArrayObject *z = NULL, *ctx = NULL, *rz = NULL, *rc = NULL, *dz = NULL, *dc = NULL;
    PyObject *ret = NULL, *seq = NULL;
    gnr_energy_term terms[MAX_TERMS];
    gnr_py_names names[MAX_TERMS];
    memset(names, 0, sizeof names);
    int nterms = 0;
    char buf[96], buf2[96];
    if (!(z = gnr_py_float_array(zobj, "latent", 4, zs, 1))) goto done;
    if (!(rz = gnr_py_float_array(rzobj, "ref_latent", 4, zs, 1))) goto done;
    if (PyArray_DIM(rz, 2) != PyArray_DIM(z, 2) || PyArray_DIM(rz, 3) != PyArray_DIM(z, 3)) {
        PyErr_Format(PyExc_ValueError, "ref_latent shape %s differs from latent shape %s",
                     gnr_py_shape_str(rz, buf, sizeof buf), gnr_py_shape_str(z, buf2, sizeof buf2));
        goto done;
    }
    if (!(ctx = context_array(cobj, c->unet.cross_attention_dim, 1, NULL))) goto done;
    if (!(rc = context_array(rcobj, c->unet.cross_attention_dim, 1, NULL))) goto done;
    int L = (int)PyArray_DIM(ctx, PyArray_NDIM(ctx) - 2);
    if (PyArray_DIM(rc, PyArray_NDIM(rc) - 2) != L) {
        PyErr_Format(PyExc_ValueError, "ref_context has %d tokens but context has %d",
                     (int)PyArray_DIM(rc, PyArray_NDIM(rc) - 2), L);
        goto done;
    }
    /* a tuple of its own references: converting a term may run Python code */
    if (!(seq = PySequence_Tuple(terms_obj))) goto done;
    if (PyTuple_GET_SIZE(seq) > MAX_TERMS) {
        PyErr_Format(PyExc_ValueError, "at most %d energy terms, got %zd", MAX_TERMS, PyTuple_GET_SIZE(seq));
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        gnr_py_int kind = {"energy term kind", GNR_ENERGY_ATTN_MAP_L2, GNR_ENERGY_FEATURE_L1, 0};
        gnr_py_float scale = {"energy term scale", 0.0f};
        names[i] = (gnr_py_names){"energy term capture names", 0, 0, NULL};
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(seq, i), "O&O&O&;each term is (kind, scale, [names])", gnr_py_conv_int,
                              &kind, gnr_py_conv_float, &scale, gnr_py_conv_names, &names[i]))
            goto done;
        nterms = (int)i + 1;
        terms[i] = (gnr_energy_term){(gnr_energy_kind)kind.value, scale.value, names[i].n, names[i].items};
    }
    int h = (int)PyArray_DIM(z, 2), w = (int)PyArray_DIM(z, 3);
    if (want_z && !(dz = gnr_py_new_float(4, PyArray_DIMS(z)))) goto done;
    npy_intp cshape[2] = {L, c->unet.cross_attention_dim};
    if (want_c && !(dc = gnr_py_new_float(2, cshape))) goto done;
    double e = 0.0;
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_unet_energy_grad(m, PyArray_DATA(z), PyArray_DATA(ctx), PyArray_DATA(rz), PyArray_DATA(rc), h, w, L, t,
                              terms, nterms, checkpointing, &e, dz ? PyArray_DATA(dz) : NULL,
                              dc ? PyArray_DATA(dc) : NULL);
    Py_END_ALLOW_THREADS
    if (st != GNR_OK) {
        gnr_py_raise(st);
        goto done;
    }
    ret = Py_BuildValue("(dOO)", e, dz ? (PyObject *)dz : Py_None, dc ? (PyObject *)dc : Py_None);
done:
    for (int i = 0; i < nterms; i++) gnr_py_names_free(&names[i]);
    Py_XDECREF(seq);
    Py_XDECREF(z);
    Py_XDECREF(ctx);
    Py_XDECREF(rz);
    Py_XDECREF(rc);
    Py_XDECREF(dz);
    Py_XDECREF(dc);
    return ret;
}

static PyObject *reset_peak(gnr_model *m, PyObject *noargs, PyObject *kw)
{
    (void)noargs;
    (void)kw;
    gnr_model_reset_peak(m);
    Py_RETURN_NONE;
}

static PyObject *set_max_memory(gnr_model *m, PyObject *arg, PyObject *kw)
{
    (void)kw;
    gnr_py_size v = {"max_memory", SIZE_MAX, 0};
    if (!gnr_py_conv_size(arg, &v)) return NULL;
    gnr_model_set_max_memory(m, v.value);
    Py_RETURN_NONE;
}

/* The methods: each runs its body through with_model (2 arguments for
 * METH_NOARGS, METH_O and METH_VARARGS; 3 with keywords). */
#define MODEL_METHOD(name)                                                                                             \
    static PyObject *Model_##name(ModelObject *self, PyObject *args) { return with_model(self, name, args, NULL); }
#define MODEL_METHOD_KW(name)                                                                                          \
    static PyObject *Model_##name(ModelObject *self, PyObject *args, PyObject *kw)                                    \
    {                                                                                                                  \
        return with_model(self, name, args, kw);                                                                       \
    }
MODEL_METHOD(weight_specs)
MODEL_METHOD(set_weight)
MODEL_METHOD(finalize)
MODEL_METHOD(encode_text)
MODEL_METHOD_KW(unet)
MODEL_METHOD(vae_encode)
MODEL_METHOD(vae_decode)
MODEL_METHOD(feature_names)
MODEL_METHOD(attention_names)
MODEL_METHOD(energy_grad)
MODEL_METHOD(reset_peak)
MODEL_METHOD(set_max_memory)
/* the long jobs (edit_binding.c) */
static PyObject *Model_invert(ModelObject *self, PyObject *args) { return with_model(self, gnr_py_invert, args, NULL); }
static PyObject *Model_null_text(ModelObject *self, PyObject *args)
{
    return with_model(self, gnr_py_null_text, args, NULL);
}
static PyObject *Model_edit(ModelObject *self, PyObject *args) { return with_model(self, gnr_py_edit, args, NULL); }

/* The getters read one number and run no Python code in between. */
static gnr_model *initialised(ModelObject *self)
{
    if (!self->model) PyErr_SetString(PyExc_RuntimeError, "model is not initialised");
    return self->model;
}

static PyObject *Model_get_peak(ModelObject *self, void *closure)
{
    (void)closure;
    gnr_model *m = initialised(self);
    return m ? PyLong_FromSize_t(gnr_model_peak_bytes(m)) : NULL;
}

static PyObject *Model_get_weight_cache(ModelObject *self, void *closure)
{
    (void)closure;
    gnr_model *m = initialised(self);
    return m ? PyLong_FromSize_t(gnr_model_weight_cache_bytes(m)) : NULL;
}

static PyObject *Model_get_size_multiple(ModelObject *self, void *closure)
{
    (void)closure;
    gnr_model *m = initialised(self);
    return m ? PyLong_FromLong(gnr_model_size_multiple(m)) : NULL;
}

static PyObject *Model_get_vae_factor(ModelObject *self, void *closure)
{
    (void)closure;
    gnr_model *m = initialised(self);
    return m ? PyLong_FromLong(gnr_model_vae_factor(m)) : NULL;
}

static PyObject *Model_get_threads(ModelObject *self, void *closure)
{
    (void)closure;
    gnr_model *m = initialised(self);
    return m ? PyLong_FromLong(gnr_model_threads(m)) : NULL;
}

static PyMethodDef Model_methods[] = {
    {"weight_specs", (PyCFunction)Model_weight_specs, METH_NOARGS, "[(name, shape)] of every weight the configs imply."},
    {"set_weight", (PyCFunction)Model_set_weight, METH_VARARGS, "set_weight(name, array): copy one weight in."},
    {"finalize", (PyCFunction)Model_finalize, METH_NOARGS, "Check that every weight was set."},
    {"encode_text", (PyCFunction)Model_encode_text, METH_O, "encode_text(ids int32 (L,)) -> float32 (L, D)."},
    {"unet", (PyCFunction)(void (*)(void))Model_unet, METH_VARARGS | METH_KEYWORDS,
     "unet(latent (N,C,h,w), timestep, context (L,D), (1,L,D) or (N,L,D)) -> float32 (N,C,h,w)."},
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
    {"_invert", (PyCFunction)Model_invert, METH_VARARGS,
     "_invert(z0, c_src, num_steps, callback, want_latent) -> chain (N+1, C, h, w)."},
    {"_null_text", (PyCFunction)Model_null_text, METH_VARARGS,
     "_null_text(chain, c_src, c_null, guidance, callback, want_latent) -> per-step unconditional contexts."},
    {"_edit", (PyCFunction)Model_edit, METH_VARARGS,
     "_edit(plan, chain, uncond, c_src, c_trg, callback, want_latent) -> final latent (1, C, h, w)."},
    {"reset_peak", (PyCFunction)Model_reset_peak, METH_NOARGS, "Reset the peak activation counter."},
    {"set_max_memory", (PyCFunction)Model_set_max_memory, METH_O, "Cap activation memory (bytes, 0 = none)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Model_getset[] = {
    {"peak_bytes", (getter)Model_get_peak, NULL, "Peak activation bytes since the last reset_peak.", NULL},
    {"weight_cache_bytes", (getter)Model_get_weight_cache, NULL,
     "Host bytes of weights kept in a kernel-ready form (GNR_WEIGHT_CACHE_MIB bounds them).", NULL},
    {"size_multiple", (getter)Model_get_size_multiple, NULL, "Image sizes must be multiples of this.", NULL},
    {"vae_factor", (getter)Model_get_vae_factor, NULL, "Image size / latent size.", NULL},
    {"threads", (getter)Model_get_threads, NULL, "CPU threads of this model's passes (fixed when it was made).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gnr._C.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A Stable Diffusion 1.x or 2.x model in the gnr engine (use gnr.load_model). Calling __init__ again "
              "replaces the model when no call is running on it, and raises RuntimeError while one is.",
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
