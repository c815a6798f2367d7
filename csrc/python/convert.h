/* Argument converters of the binding, in the style of NumPy's
 * PyArray_*Converter functions:
 *
 *     int conv(PyObject *obj, void *out)
 *
 * returns 1 when `obj` was converted into *out, 0 with a Python exception
 * set. They serve PyArg_ParseTuple's "O&" and the code that reads dicts
 * (gnr_py_dict_item), so an argument is converted, and its range checked, the
 * same way wherever it comes from.
 *
 * A converter whose messages need the argument's name or its range takes a
 * small struct: the caller fills the name and the bounds, the converter the
 * value.
 *
 *     gnr_py_int threads = {"threads", 0, INT_MAX};
 *     if (!PyArg_ParseTuple(args, "O&", gnr_py_conv_int, &threads)) return NULL;
 *     ... threads.value ...
 *
 * Integers: anything with __index__ (bool too, as int() takes it); floats and
 * strings raise TypeError. A value outside [min, max] raises ValueError naming
 * the argument and the range, so a C int is never filled by truncation nor a
 * size_t by wrap-around. */
#ifndef GNR_PY_CONVERT_H
#define GNR_PY_CONVERT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ops.h"

typedef int (*gnr_py_converter)(PyObject *obj, void *out);

/* An int in [min, max]. */
typedef struct {
    const char *name;
    int min, max;
    int value;
} gnr_py_int;
int gnr_py_conv_int(PyObject *obj, void *out);

/* A size in bytes, in [0, max] (a negative value is refused, never wrapped). */
typedef struct {
    const char *name;
    size_t max;
    size_t value;
} gnr_py_size;
int gnr_py_conv_size(PyObject *obj, void *out);

/* An int, or a sequence of at most `capacity` ints, each in [min, max], into
 * the caller's array `values`; `n` is the count (1 for a lone int). */
typedef struct {
    const char *name;
    int min, max;
    int capacity;
    int *values;
    int n;
} gnr_py_ints;
int gnr_py_conv_ints(PyObject *obj, void *out);

/* A real number (anything float() takes without parsing a string). The float
 * form refuses a finite value beyond float32's range instead of making it
 * infinite; NaN and infinities pass as given. */
typedef struct {
    const char *name;
    double value;
} gnr_py_double;
int gnr_py_conv_double(PyObject *obj, void *out);

typedef struct {
    const char *name;
    float value;
} gnr_py_float;
int gnr_py_conv_float(PyObject *obj, void *out);

/* Truth value, as Python's bool(). */
typedef struct {
    const char *name;
    int value;
} gnr_py_bool;
int gnr_py_conv_bool(PyObject *obj, void *out);

/* Strings copied into memory the binding owns. The engine runs with the GIL
 * released, and Python code runs meanwhile (other threads, and this call's own
 * progress callback): a pointer into a str object borrowed from a list or dict
 * could be freed under it when the container is changed. A copy cannot.
 *
 * gnr_py_names: a sequence of str (at most `max`, 0 for no limit) ->
 * `items`, n NUL-terminated copies in one PyMem block. gnr_py_str: one str, or
 * None when `none_ok` (value NULL). Both support "O&" cleanup; otherwise free
 * with gnr_py_names_free / gnr_py_str_free (safe on zeroed or freed ones). */
typedef struct {
    const char *name;
    int max;
    int n;
    const char **items;
} gnr_py_names;
int gnr_py_conv_names(PyObject *obj, void *out);
void gnr_py_names_free(gnr_py_names *names);

typedef struct {
    const char *name;
    int none_ok;
    char *value;
} gnr_py_str;
int gnr_py_conv_str(PyObject *obj, void *out);
void gnr_py_str_free(gnr_py_str *s);

/* Plain converters: the name is part of the converter.
 *   device: "cpu" or "cuda" -> gnr_device
 *   dtype: "float32", "float16" or "bfloat16" -> gnr_dtype (compute dtype)
 *   timestep: an int in [0, 1000), bools refused -> int
 *   act: "silu", "gelu", "quick_gelu" or its gnr_act code -> gnr_act */
int gnr_py_conv_device(PyObject *obj, void *out);
int gnr_py_conv_dtype(PyObject *obj, void *out);
int gnr_py_conv_timestep(PyObject *obj, void *out);
int gnr_py_conv_act(PyObject *obj, void *out);

/* d[key] through `conv` into `out`: 1 when converted, 0 when d has no such
 * key (out untouched), -1 with an exception set. */
int gnr_py_dict_item(PyObject *d, const char *key, gnr_py_converter conv, void *out);

#endif
