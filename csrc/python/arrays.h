/* NumPy conversions shared by the binding files. */
#ifndef GNR_PY_ARRAYS_H
#define GNR_PY_ARRAYS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef PY_ARRAY_UNIQUE_SYMBOL
#define PY_ARRAY_UNIQUE_SYMBOL gnr_ARRAY_API
#endif
#include <numpy/arrayobject.h>

/* Any real floating (or integer) array-like -> new C-contiguous float32 array.
 * `ndim` >= 0 requires that many dims; `shape` (may be NULL) gives required
 * sizes, -1 meaning any. `check_finite` rejects NaN/inf. Errors say what was
 * given and what is allowed, naming the argument `name`:
 *   TypeError for a non-numeric, complex or boolean input, ValueError for
 *   ndim/shape/non-finite, and for a dimension beyond INT_MAX (so a size
 *   read from the array fits a C int). Returns NULL with the exception set. */
PyArrayObject *gnr_py_float_array(PyObject *obj, const char *name, int ndim, const npy_intp *shape,
                                  int check_finite);

/* A new uninitialised C-contiguous float32 array. */
PyArrayObject *gnr_py_new_float(int ndim, const npy_intp *shape);

/* "(1, 4, 64, 64)" for messages. */
const char *gnr_py_shape_str(PyArrayObject *a, char *buf, size_t n);

#endif
