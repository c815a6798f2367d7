#define NO_IMPORT_ARRAY
#include "arrays.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>

const char *gnr_py_shape_str(PyArrayObject *a, char *buf, size_t n)
{
    size_t off = 0;
    int nd = PyArray_NDIM(a);
    off += (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < nd && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)PyArray_DIM(a, i));
    if (off < n) snprintf(buf + off, n - off, nd == 1 ? ",)" : ")");
    return buf;
}

PyArrayObject *gnr_py_float_array(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                  int check_finite)
{
    PyArrayObject *in = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!in) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a real floating-point array, got %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int type = PyArray_TYPE(in);
    if (!(PyTypeNum_ISFLOAT(type) || PyTypeNum_ISINTEGER(type)) || PyTypeNum_ISBOOL(type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real floating-point array, got dtype %.50s", name,
                     PyArray_DESCR(in)->typeobj->tp_name);
        Py_DECREF(in);
        return NULL;
    }
    char buf[128];
    if (ndim >= 0 && PyArray_NDIM(in) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got shape %s", name, ndim,
                     gnr_py_shape_str(in, buf, sizeof buf));
        Py_DECREF(in);
        return NULL;
    }
    /* The engine takes image, latent and context sizes as C ints. */
    for (int i = 0; i < PyArray_NDIM(in); i++) {
        if (PyArray_DIM(in, i) > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s has a dimension of %lld; at most %d is supported", name,
                         (long long)PyArray_DIM(in, i), INT_MAX);
            Py_DECREF(in);
            return NULL;
        }
    }
    if (shape) {
        for (int i = 0; i < ndim; i++) {
            if (shape[i] >= 0 && PyArray_DIM(in, i) != shape[i]) {
                char want[128];
                size_t off = (size_t)snprintf(want, sizeof want, "(");
                for (int j = 0; j < ndim && off < sizeof want; j++) {
                    if (shape[j] >= 0)
                        off += (size_t)snprintf(want + off, sizeof want - off, j ? ", %lld" : "%lld",
                                                (long long)shape[j]);
                    else
                        off += (size_t)snprintf(want + off, sizeof want - off, j ? ", *" : "*");
                }
                if (off < sizeof want) snprintf(want + off, sizeof want - off, ")");
                PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", name, want,
                             gnr_py_shape_str(in, buf, sizeof buf));
                Py_DECREF(in);
                return NULL;
            }
        }
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)in, NPY_FLOAT32,
                                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(in);
    if (!out) return NULL;
    if (check_finite) {
        const float *p = (const float *)PyArray_DATA(out);
        npy_intp n = PyArray_SIZE(out);
        for (npy_intp i = 0; i < n; i++) {
            if (!isfinite(p[i])) {
                PyErr_Format(PyExc_ValueError, "%s contains NaN or infinity (at flat index %lld); finite values are required",
                             name, (long long)i);
                Py_DECREF(out);
                return NULL;
            }
        }
    }
    return out;
}

PyArrayObject *gnr_py_new_float(int ndim, const npy_intp *shape)
{
    return (PyArrayObject *)PyArray_SimpleNew(ndim, (npy_intp *)shape, NPY_FLOAT32);
}
