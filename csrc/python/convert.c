/* The binding's argument converters (convert.h). */
#include "convert.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------ integers --- */

/* obj as an exact integer (__index__; floats and strings refused): 1 with
 * *v set, or with *overflow = -1 / +1 when it is below / above long long's
 * range; 0 with a TypeError naming `name` when obj is no integer; -1 when
 * another error is set. */
static int integer_value(PyObject *obj, const char *name, long long *v, int *overflow)
{
    PyObject *i = PyNumber_Index(obj);
    if (!i) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be an integer, got %.100s", name, Py_TYPE(obj)->tp_name);
        return 0;
    }
    *v = PyLong_AsLongLongAndOverflow(i, overflow);
    Py_DECREF(i);
    if (*v == -1 && PyErr_Occurred()) return -1;
    return 1;
}

static int out_of_range(const char *name, PyObject *obj, long long lo, unsigned long long hi)
{
    PyErr_Format(PyExc_ValueError, "%s must be an integer in [%lld, %llu], got %S", name, lo, hi, obj);
    return 0;
}

/* obj as a long long in [lo, hi]: 1, or 0 with TypeError / ValueError. */
static int integer_in(PyObject *obj, const char *name, long long lo, long long hi, long long *out)
{
    long long v;
    int overflow;
    int r = integer_value(obj, name, &v, &overflow);
    if (r <= 0) return 0;
    if (overflow || v < lo || v > hi) return out_of_range(name, obj, lo, (unsigned long long)hi);
    *out = v;
    return 1;
}

int gnr_py_conv_int(PyObject *obj, void *out)
{
    gnr_py_int *a = out;
    long long v;
    if (!integer_in(obj, a->name, a->min, a->max, &v)) return 0;
    a->value = (int)v; /* in [min, max], both ints */
    return 1;
}

int gnr_py_conv_size(PyObject *obj, void *out)
{
    gnr_py_size *a = out;
    long long v;
    int overflow;
    int r = integer_value(obj, a->name, &v, &overflow);
    if (r <= 0) return 0;
    unsigned long long u = (unsigned long long)v;
    if (overflow > 0) { /* above long long: maybe still a size */
        PyObject *i = PyNumber_Index(obj);
        if (!i) return 0;
        u = PyLong_AsUnsignedLongLong(i);
        Py_DECREF(i);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return 0;
            PyErr_Clear();
            return out_of_range(a->name, obj, 0, a->max);
        }
    } else if (overflow < 0 || v < 0) {
        return out_of_range(a->name, obj, 0, a->max);
    }
    if (u > a->max) return out_of_range(a->name, obj, 0, a->max);
    a->value = (size_t)u;
    return 1;
}

int gnr_py_conv_ints(PyObject *obj, void *out)
{
    gnr_py_ints *a = out;
    char name[160];
    long long v;
    if (PyIndex_Check(obj)) {
        if (a->capacity < 1) {
            PyErr_Format(PyExc_ValueError, "%s must be empty, got %S", a->name, obj);
            return 0;
        }
        if (!integer_in(obj, a->name, a->min, a->max, &v)) return 0;
        a->values[0] = (int)v;
        a->n = 1;
        return 1;
    }
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || !PySequence_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer or a sequence of integers, got %.100s", a->name,
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    /* A tuple of the items: an item's __index__ may run Python code that
     * changes a list while it is read. */
    PyObject *seq = PySequence_Tuple(obj);
    if (!seq) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    int ok = 1;
    if (n > a->capacity) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, at most %d allowed", a->name, n, a->capacity);
        ok = 0;
    }
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        snprintf(name, sizeof name, "%s[%zd]", a->name, i);
        ok = integer_in(PyTuple_GET_ITEM(seq, i), name, a->min, a->max, &v);
        if (ok) a->values[i] = (int)v;
    }
    Py_DECREF(seq);
    if (ok) a->n = (int)n;
    return ok;
}

int gnr_py_conv_timestep(PyObject *obj, void *out)
{
    static const char allowed[] = "timestep must be an integer in [0, 1000)";
    long long v;
    int overflow;
    int r = PyBool_Check(obj) ? 0 : integer_value(obj, "timestep", &v, &overflow);
    if (r < 0) return 0;
    if (r == 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s, got %.100s", allowed, Py_TYPE(obj)->tp_name);
        return 0;
    }
    if (overflow || v < 0 || v >= 1000) {
        PyErr_Format(PyExc_ValueError, "%s, got %S", allowed, obj);
        return 0;
    }
    *(int *)out = (int)v;
    return 1;
}

/* ---------------------------------------------------- reals and truths --- */

int gnr_py_conv_double(PyObject *obj, void *out)
{
    gnr_py_double *a = out;
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a number, got %.100s", a->name, Py_TYPE(obj)->tp_name);
        }
        return 0;
    }
    a->value = v;
    return 1;
}

int gnr_py_conv_float(PyObject *obj, void *out)
{
    gnr_py_float *a = out;
    gnr_py_double d = {a->name, 0.0};
    if (!gnr_py_conv_double(obj, &d)) return 0;
    if (isfinite(d.value) && fabs(d.value) > FLT_MAX) {
        /* (PyErr_Format has no float conversion: FLT_MAX is spelled out) */
        PyErr_Format(PyExc_ValueError, "%s = %R is beyond float32's range (magnitude at most 3.4028235e38)",
                     a->name, obj);
        return 0;
    }
    a->value = (float)d.value;
    return 1;
}

int gnr_py_conv_bool(PyObject *obj, void *out)
{
    gnr_py_bool *a = out;
    int v = PyObject_IsTrue(obj);
    if (v < 0) return 0;
    a->value = v;
    return 1;
}

/* ------------------------------------------------------------- strings --- */

/* The UTF-8 form of the str `obj` and its length, refusing other types and
 * embedded NULs (the engine takes C strings); NULL with an exception. */
static const char *utf8_of(PyObject *obj, const char *name, Py_ssize_t *len)
{
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, got %.100s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const char *s = PyUnicode_AsUTF8AndSize(obj, len);
    if (s && (Py_ssize_t)strlen(s) != *len) {
        PyErr_Format(PyExc_ValueError, "%s must not contain NUL characters, got %R", name, obj);
        return NULL;
    }
    return s;
}

int gnr_py_conv_names(PyObject *obj, void *out)
{
    gnr_py_names *a = out;
    if (!obj) { /* "O&" cleanup after a later argument failed */
        gnr_py_names_free(a);
        return 1;
    }
    a->n = 0;
    a->items = NULL;
    if (PyUnicode_Check(obj) || !PySequence_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of str, got %.100s", a->name, Py_TYPE(obj)->tp_name);
        return 0;
    }
    PyObject *seq = PySequence_Tuple(obj); /* its own references to the items */
    if (!seq) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    char name[160];
    size_t bytes = 0;
    int ok = 1;
    if ((a->max > 0 && n > a->max) || n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s has %zd names, at most %d allowed", a->name, n, a->max > 0 ? a->max : INT_MAX);
        ok = 0;
    }
    /* Two passes over the tuple's items: sizes, then copies. */
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        Py_ssize_t len;
        snprintf(name, sizeof name, "%s[%zd]", a->name, i);
        ok = utf8_of(PyTuple_GET_ITEM(seq, i), name, &len) != NULL;
        bytes += (size_t)len + 1;
    }
    char *block = NULL;
    if (ok && !(block = PyMem_Malloc((size_t)n * sizeof(char *) + bytes + 1))) {
        PyErr_NoMemory();
        ok = 0;
    }
    if (ok) {
        const char **items = (const char **)block;
        char *text = block + (size_t)n * sizeof(char *);
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(seq, i), &len);
            memcpy(text, s, (size_t)len + 1);
            items[i] = text;
            text += len + 1;
        }
        a->items = items;
        a->n = (int)n;
    }
    Py_DECREF(seq);
    return ok ? Py_CLEANUP_SUPPORTED : 0;
}

void gnr_py_names_free(gnr_py_names *a)
{
    PyMem_Free((void *)a->items);
    a->items = NULL;
    a->n = 0;
}

int gnr_py_conv_str(PyObject *obj, void *out)
{
    gnr_py_str *a = out;
    if (!obj) {
        gnr_py_str_free(a);
        return 1;
    }
    a->value = NULL;
    if (obj == Py_None && a->none_ok) return Py_CLEANUP_SUPPORTED;
    Py_ssize_t len;
    const char *s = utf8_of(obj, a->name, &len);
    if (!s) return 0;
    if (!(a->value = PyMem_Malloc((size_t)len + 1))) {
        PyErr_NoMemory();
        return 0;
    }
    memcpy(a->value, s, (size_t)len + 1);
    return Py_CLEANUP_SUPPORTED;
}

void gnr_py_str_free(gnr_py_str *a)
{
    PyMem_Free(a->value);
    a->value = NULL;
}

/* ------------------------------------------------------------- choices --- */

/* The index of obj (a str) in `names`, or -1 with TypeError / ValueError
 * saying "<what> must be <allowed>". */
static int choice(PyObject *obj, const char *what, const char *allowed, const char *const *names)
{
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be %s, got %.100s", what, allowed, Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *s = PyUnicode_AsUTF8(obj);
    if (!s) return -1;
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i])) return i;
    PyErr_Format(PyExc_ValueError, "%s must be %s, got '%s'", what, allowed, s);
    return -1;
}

int gnr_py_conv_device(PyObject *obj, void *out)
{
    static const char *const names[] = {"cpu", "cuda", NULL};
    static const gnr_device devices[] = {GNR_CPU, GNR_CUDA};
    int i = choice(obj, "device", "'cpu' or 'cuda'", names);
    if (i < 0) return 0;
    *(gnr_device *)out = devices[i];
    return 1;
}

int gnr_py_conv_dtype(PyObject *obj, void *out)
{
    static const char *const names[] = {"float32", "float16", "bfloat16", NULL};
    static const gnr_dtype dtypes[] = {GNR_F32, GNR_F16, GNR_BF16};
    int i = choice(obj, "dtype", "'float32', 'float16' or 'bfloat16'", names);
    if (i < 0) return 0;
    *(gnr_dtype *)out = dtypes[i];
    return 1;
}

int gnr_py_conv_act(PyObject *obj, void *out)
{
    static const char *const names[] = {"silu", "gelu", "quick_gelu", NULL};
    static const gnr_act acts[] = {GNR_ACT_SILU, GNR_ACT_GELU, GNR_ACT_QUICK_GELU};
    if (!PyUnicode_Check(obj)) { /* a code; the op's checks say whether it is a known one */
        gnr_py_int code = {"act", INT_MIN, INT_MAX, 0};
        if (!gnr_py_conv_int(obj, &code)) return 0;
        *(gnr_act *)out = (gnr_act)code.value;
        return 1;
    }
    int i = choice(obj, "act", "'silu', 'gelu' or 'quick_gelu'", names);
    if (i < 0) return 0;
    *(gnr_act *)out = acts[i];
    return 1;
}

/* --------------------------------------------------------------- dicts --- */

int gnr_py_dict_item(PyObject *d, const char *key, gnr_py_converter conv, void *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) return 0;
    /* held: a converter may run Python code (__index__, __float__) that
     * changes the dict */
    Py_INCREF(v);
    int ok = conv(v, out);
    Py_DECREF(v);
    return ok ? 1 : -1;
}
