/* The long jobs of gnr._C.Model: DDIM inversion and the editing loop.
 *
 * They run with the GIL released; between UNet passes the engine calls the
 * hooks below, which take the GIL to check for signals (Ctrl-C on the main
 * thread) and to report steps to a Python callable. An exception raised
 * there (KeyboardInterrupt, or whatever the callable raised) stops the job
 * and is re-raised once the engine has returned and released the model. */
#define NO_IMPORT_ARRAY
#include "arrays.h"

#include <string.h>

#include "bindings.h"
#include "convert.h"
#include "errors.h"
#include "gnr.h"

typedef struct {
    PyObject *callback; /* callable(phase, done, total, guided, latent or None) -> truthy to stop; or None */
    npy_intp latent_shape[4];
    PyObject *exc_type, *exc_value, *exc_tb;
} host_hooks;

static int save_error(host_hooks *hh)
{
    if (!hh->exc_type) PyErr_Fetch(&hh->exc_type, &hh->exc_value, &hh->exc_tb);
    else PyErr_Clear();
    return 1;
}

static int hook_poll(void *user)
{
    host_hooks *hh = user;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = PyErr_CheckSignals() < 0 ? save_error(hh) : 0;
    PyGILState_Release(g);
    return stop;
}

static int hook_step(void *user, int phase, int done, int total, int guided, const float *latent)
{
    host_hooks *hh = user;
    PyGILState_STATE g = PyGILState_Ensure();
    int stop = 0;
    if (PyErr_CheckSignals() < 0) {
        stop = save_error(hh);
    } else if (hh->callback != Py_None) {
        PyObject *arr = Py_None;
        Py_INCREF(arr);
        if (latent) {
            Py_DECREF(arr);
            arr = (PyObject *)gnr_py_new_float(4, hh->latent_shape);
            if (arr) memcpy(PyArray_DATA((PyArrayObject *)arr), latent, PyArray_NBYTES((PyArrayObject *)arr));
        }
        PyObject *r = arr ? PyObject_CallFunction(hh->callback, "iiiiO", phase, done, total, guided, arr) : NULL;
        Py_XDECREF(arr);
        if (!r) stop = save_error(hh);
        else {
            stop = PyObject_IsTrue(r) > 0;
            Py_DECREF(r);
        }
    }
    PyGILState_Release(g);
    return stop;
}

/* After the engine returned `st`: the saved Python exception if the hooks
 * stopped the job, else the engine's error. */
static PyObject *finish(host_hooks *hh, gnr_status st)
{
    if (hh->exc_type) {
        PyErr_Restore(hh->exc_type, hh->exc_value, hh->exc_tb);
        return NULL;
    }
    return gnr_py_raise(st);
}

/* _invert(z0 (1,C,h,w), c_src (L,D), num_steps, callback, want_latent) -> chain (N+1, C, h, w) */
PyObject *gnr_py_invert(gnr_model *m, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *zobj, *cobj, *cb;
    /* the chain of num_steps + 1 latents is allocated here, before the engine checks anything */
    gnr_py_int steps = {"num_steps", 1, 1000, 0};
    int want_latent;
    if (!PyArg_ParseTuple(args, "OOO&Op", &zobj, &cobj, gnr_py_conv_int, &steps, &cb, &want_latent)) return NULL;
    int num_steps = steps.value;
    const gnr_model_config *c = gnr_model_get_config(m);
    npy_intp zs[4] = {1, c->unet.in_channels, -1, -1}, cs[2] = {-1, c->unet.cross_attention_dim};
    PyArrayObject *z = NULL, *ctx = NULL, *chain = NULL;
    PyObject *ret = NULL;
    if (!(z = gnr_py_float_array(zobj, "latent", 4, zs, 1))) goto done;
    if (!(ctx = gnr_py_float_array(cobj, "source context", 2, cs, 1))) goto done;
    npy_intp chs[4] = {num_steps + 1, c->unet.in_channels, PyArray_DIM(z, 2), PyArray_DIM(z, 3)};
    if (!(chain = gnr_py_new_float(4, chs))) goto done;
    host_hooks hh = {cb, {1, chs[1], chs[2], chs[3]}, NULL, NULL, NULL};
    gnr_hooks hooks = {hook_poll, hook_step, &hh, want_latent};
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_invert(m, PyArray_DATA(z), (int)chs[2], (int)chs[3], PyArray_DATA(ctx), (int)PyArray_DIM(ctx, 0),
                    num_steps, &hooks, PyArray_DATA(chain));
    Py_END_ALLOW_THREADS
    if (st != GNR_OK || hh.exc_type) {
        finish(&hh, st);
        goto done;
    }
    ret = (PyObject *)chain;
    chain = NULL;
done:
    Py_XDECREF(z);
    Py_XDECREF(ctx);
    Py_XDECREF(chain);
    return ret;
}

/* _null_text(chain (N+1,C,h,w), c_src (L,D), c_null (L,D), guidance, callback, want_latent) -> u (N, L, D) */
PyObject *gnr_py_null_text(gnr_model *m, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *chobj, *sobj, *nobj, *cb;
    gnr_py_float guidance = {"guidance", 0.0f};
    int want_latent;
    if (!PyArg_ParseTuple(args, "OOOO&Op", &chobj, &sobj, &nobj, gnr_py_conv_float, &guidance, &cb, &want_latent))
        return NULL;
    const gnr_model_config *c = gnr_model_get_config(m);
    npy_intp chs[4] = {-1, c->unet.in_channels, -1, -1}, cs[2] = {-1, c->unet.cross_attention_dim};
    PyArrayObject *chain = NULL, *src = NULL, *nul = NULL, *u = NULL;
    PyObject *ret = NULL;
    if (!(chain = gnr_py_float_array(chobj, "inversion latents", 4, chs, 1))) goto done;
    if (!(src = gnr_py_float_array(sobj, "source context", 2, cs, 1))) goto done;
    cs[0] = PyArray_DIM(src, 0);
    if (!(nul = gnr_py_float_array(nobj, "null context", 2, cs, 1))) goto done;
    int N = (int)PyArray_DIM(chain, 0) - 1;
    if (N < 1) {
        PyErr_SetString(PyExc_ValueError, "inversion latents must hold at least 2 latents");
        goto done;
    }
    npy_intp us[3] = {N, cs[0], cs[1]};
    if (!(u = (PyArrayObject *)PyArray_SimpleNew(3, us, NPY_FLOAT32))) goto done;
    host_hooks hh = {cb, {1, chs[1], PyArray_DIM(chain, 2), PyArray_DIM(chain, 3)}, NULL, NULL, NULL};
    gnr_hooks hooks = {hook_poll, hook_step, &hh, want_latent};
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_null_text_invert(m, PyArray_DATA(chain), (int)PyArray_DIM(chain, 2), (int)PyArray_DIM(chain, 3),
                              PyArray_DATA(src), PyArray_DATA(nul), (int)cs[0], N, guidance.value, &hooks,
                              PyArray_DATA(u));
    Py_END_ALLOW_THREADS
    if (st != GNR_OK || hh.exc_type) {
        finish(&hh, st);
        goto done;
    }
    ret = (PyObject *)u;
    u = NULL;
done:
    Py_XDECREF(chain);
    Py_XDECREF(src);
    Py_XDECREF(nul);
    Py_XDECREF(u);
    return ret;
}

/* plan[key], or NULL with ValueError naming it. */
static PyObject *plan_item(PyObject *plan, const char *key)
{
    PyObject *v = PyDict_GetItemString(plan, key);
    if (!v) PyErr_Format(PyExc_ValueError, "edit plan: missing '%s'", key);
    return v;
}

/* plan[key] through `conv` into `arg`: 0, or -1 with an exception (ValueError
 * naming a missing key). */
static int plan_value(PyObject *plan, const char *key, gnr_py_converter conv, void *arg)
{
    int r = gnr_py_dict_item(plan, key, conv, arg);
    if (r == 0) PyErr_Format(PyExc_ValueError, "edit plan: missing '%s'", key);
    return r > 0 ? 0 : -1;
}

/* guider[key], a list of n numbers -> a new double array (PyMem), or NULL
 * with an exception. */
static double *per_step(PyObject *guider, const char *key, int n, int required)
{
    PyObject *v = PyDict_GetItemString(guider, key);
    if (!v || v == Py_None) {
        if (required) PyErr_Format(PyExc_ValueError, "edit plan: guider is missing '%s'", key);
        else PyErr_Format(PyExc_ValueError, "edit plan: '%s' is required for this guider", key);
        return NULL;
    }
    if (!PySequence_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "per-step values must be a list");
        return NULL;
    }
    /* a tuple of its own references: a value's __float__ may change the list */
    Py_INCREF(v);
    PyObject *seq = PySequence_Tuple(v);
    Py_DECREF(v);
    if (!seq) return NULL;
    double *out = NULL;
    if (PyTuple_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "edit plan: '%s' has %zd values, expected num_steps = %d", key,
                     PyTuple_GET_SIZE(seq), n);
        goto done;
    }
    out = PyMem_Malloc((size_t)n * sizeof *out);
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "edit plan: '%s'[%d]", key, i);
        gnr_py_double x = {name, 0.0};
        if (!gnr_py_conv_double(PyTuple_GET_ITEM(seq, i), &x)) {
            PyMem_Free(out);
            out = NULL;
            goto done;
        }
        out[i] = x.value;
    }
done:
    Py_DECREF(seq);
    return out;
}

#define MAX_GUIDERS 16
#define MAX_MAPS 256

/* _edit(plan, chain (N+1,C,h,w), uncond (L,D) or (N,L,D), c_src, c_trg, callback, want_latent, z_start=None)
 *   -> (z (1,C,h,w), eps_hat of the last step run)
 * plan: {"num_steps", "guiders": [{"kind", "scale", "source", "feature", "self_attn", "app"}],
 *        "maps": [names], "range_rescale", "lo", "hi", "checkpointing", "begin", "end"}
 * (built by gnr/editor.py). The plan is read into C memory before the engine
 * runs (names included: the callback, and other threads, may change the
 * plan's lists while the edit runs). */
PyObject *gnr_py_edit(gnr_model *m, PyObject *args, PyObject *kw)
{
    (void)kw;
    PyObject *plan, *chobj, *uobj, *sobj, *tobj, *cb, *zsobj = Py_None;
    int want_latent;
    if (!PyArg_ParseTuple(args, "O!OOOOOp|O", &PyDict_Type, &plan, &chobj, &uobj, &sobj, &tobj, &cb, &want_latent,
                          &zsobj))
        return NULL;
    const gnr_model_config *c = gnr_model_get_config(m);
    int D = c->unet.cross_attention_dim;
    gnr_guider guiders[MAX_GUIDERS];
    gnr_py_str features[MAX_GUIDERS];
    gnr_py_names maps = {"edit plan: 'maps'", MAX_MAPS, 0, NULL};
    double *owned[3 * MAX_GUIDERS];
    int nowned = 0, nguiders = 0;
    PyArrayObject *chain = NULL, *unc = NULL, *src = NULL, *trg = NULL, *zout = NULL, *zstart = NULL, *eout = NULL;
    PyObject *ret = NULL, *glist = NULL;
    memset(guiders, 0, sizeof guiders);
    memset(features, 0, sizeof features);
    gnr_edit_config ec;
    memset(&ec, 0, sizeof ec);

    gnr_py_int num_steps = {"edit plan: 'num_steps'", 1, INT_MAX, 0};
    gnr_py_int begin = {"edit plan: 'begin'", INT_MIN, INT_MAX, 0}, end = {"edit plan: 'end'", INT_MIN, INT_MAX, 0};
    gnr_py_bool range_rescale = {"edit plan: 'range_rescale'", 0}, checkpointing = {"edit plan: 'checkpointing'", 0};
    gnr_py_double lo = {"edit plan: 'lo'", 0.0}, hi = {"edit plan: 'hi'", 0.0};
    if (plan_value(plan, "num_steps", gnr_py_conv_int, &num_steps) || plan_value(plan, "range_rescale",
        gnr_py_conv_bool, &range_rescale) || plan_value(plan, "lo", gnr_py_conv_double, &lo) ||
        plan_value(plan, "hi", gnr_py_conv_double, &hi) ||
        plan_value(plan, "checkpointing", gnr_py_conv_bool, &checkpointing) ||
        plan_value(plan, "begin", gnr_py_conv_int, &begin) || plan_value(plan, "end", gnr_py_conv_int, &end))
        goto done;
    int N = ec.num_steps = num_steps.value;
    ec.range_rescale = range_rescale.value;
    ec.lo = lo.value;
    ec.hi = hi.value;
    ec.checkpointing = checkpointing.value;
    ec.begin = begin.value;
    ec.end = end.value;
    PyObject *gv = plan_item(plan, "guiders");
    if (!gv) goto done;
    if (!PyList_Check(gv) || PyList_GET_SIZE(gv) > MAX_GUIDERS) {
        PyErr_Format(PyExc_ValueError, "edit plan: guiders must be a list of at most %d", MAX_GUIDERS);
        goto done;
    }
    if (!(glist = PySequence_Tuple(gv))) goto done; /* its own references: reading a guider may run Python code */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(glist); i++) {
        PyObject *gd = PyTuple_GET_ITEM(glist, i);
        if (!PyDict_Check(gd)) {
            PyErr_SetString(PyExc_TypeError, "edit plan: each guider must be a dict");
            goto done;
        }
        gnr_guider *G = &guiders[nguiders++];
        gnr_py_int kind = {"edit plan: guider 'kind'", INT_MIN, INT_MAX, -1}; /* the engine checks the kind */
        if (gnr_py_dict_item(gd, "kind", gnr_py_conv_int, &kind) < 0) goto done;
        G->kind = (gnr_guider_kind)kind.value;
        if (!(owned[nowned++] = (double *)(G->scale = per_step(gd, "scale", N, 1)))) goto done;
        gnr_py_bool source = {"edit plan: guider 'source'", 0};
        if (gnr_py_dict_item(gd, "source", gnr_py_conv_bool, &source) < 0) goto done;
        G->source = source.value;
        features[i] = (gnr_py_str){"edit plan: guider 'feature'", 1, NULL};
        if (gnr_py_dict_item(gd, "feature", gnr_py_conv_str, &features[i]) < 0) goto done;
        G->feature = features[i].value;
        if (G->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE) {
            if (!(owned[nowned++] = (double *)(G->self_attn = per_step(gd, "self_attn", N, 0)))) goto done;
            if (!(owned[nowned++] = (double *)(G->app = per_step(gd, "app", N, 0)))) goto done;
        }
        if ((G->kind == GNR_GUIDER_FEATURES_MAP_L2 || G->kind == GNR_GUIDER_SELF_ATTN_APPEARANCE) && !G->feature) {
            PyErr_SetString(PyExc_ValueError, "edit plan: a feature guider needs 'feature'");
            goto done;
        }
    }
    if (plan_value(plan, "maps", gnr_py_conv_names, &maps)) goto done;
    ec.nguiders = nguiders;
    ec.guiders = guiders;
    ec.nmaps = maps.n;
    ec.maps = maps.items;

    npy_intp chs[4] = {(npy_intp)N + 1, c->unet.in_channels, -1, -1}, cs[2] = {-1, D};
    if (!(chain = gnr_py_float_array(chobj, "inversion latents", 4, chs, 1))) goto done;
    if (!(src = gnr_py_float_array(sobj, "source context", 2, cs, 1))) goto done;
    int L = (int)PyArray_DIM(src, 0);
    cs[0] = L;
    if (!(trg = gnr_py_float_array(tobj, "target context", 2, cs, 1))) goto done;
    if (!(unc = gnr_py_float_array(uobj, "unconditional context", -1, NULL, 1))) goto done;
    int per_step_unc = PyArray_NDIM(unc) == 3;
    if (!((PyArray_NDIM(unc) == 2 && PyArray_DIM(unc, 0) == L && PyArray_DIM(unc, 1) == D) ||
          (per_step_unc && PyArray_DIM(unc, 0) == N && PyArray_DIM(unc, 1) == L && PyArray_DIM(unc, 2) == D))) {
        PyErr_Format(PyExc_ValueError, "unconditional context must be (%d, %d) or (%d, %d, %d)", L, D, N, L, D);
        goto done;
    }
    npy_intp zs[4] = {1, chs[1], PyArray_DIM(chain, 2), PyArray_DIM(chain, 3)};
    if (zsobj != Py_None && !(zstart = gnr_py_float_array(zsobj, "start latent", 4, zs, 1))) goto done;
    if (!(zout = gnr_py_new_float(4, zs)) || !(eout = gnr_py_new_float(4, zs))) goto done;
    host_hooks hh = {cb, {zs[0], zs[1], zs[2], zs[3]}, NULL, NULL, NULL};
    gnr_hooks hooks = {hook_poll, hook_step, &hh, want_latent};
    gnr_status st;
    Py_BEGIN_ALLOW_THREADS
    st = gnr_edit(m, &ec, PyArray_DATA(chain), (int)zs[2], (int)zs[3], PyArray_DATA(unc), per_step_unc,
                  PyArray_DATA(src), PyArray_DATA(trg), L, zstart ? PyArray_DATA(zstart) : NULL, &hooks,
                  PyArray_DATA(zout), PyArray_DATA(eout));
    Py_END_ALLOW_THREADS
    if (st != GNR_OK || hh.exc_type) {
        finish(&hh, st);
        goto done;
    }
    ret = Py_BuildValue("(OO)", zout, eout);
done:
    for (int i = 0; i < nowned; i++) PyMem_Free(owned[i]);
    for (int i = 0; i < nguiders; i++) gnr_py_str_free(&features[i]);
    gnr_py_names_free(&maps);
    Py_XDECREF(glist);
    Py_XDECREF(zstart);
    Py_XDECREF(eout);
    Py_XDECREF(chain);
    Py_XDECREF(unc);
    Py_XDECREF(src);
    Py_XDECREF(trg);
    Py_XDECREF(zout);
    return ret;
}
