/* Registration hooks of the binding files (each adds its functions/types to
 * the module; returns 0, or -1 with an exception set). Files other than
 * module.c that use the NumPy C API define NO_IMPORT_ARRAY before including
 * arrays.h, so the API table is shared. */
#ifndef GNR_PY_BINDINGS_H
#define GNR_PY_BINDINGS_H

#include <Python.h>

int gnr_py_register_model(PyObject *module); /* model_binding.c: gnr._C.Model */
int gnr_py_register_ops(PyObject *module);   /* op_binding.c: single ops, for tests */

/* edit_binding.c: the bodies of gnr._C.Model's methods for the long jobs.
 * model_binding.c calls them with the model held for the whole call (an
 * __init__ meanwhile is refused). */
struct gnr_model;
PyObject *gnr_py_invert(struct gnr_model *m, PyObject *args, PyObject *kw);
PyObject *gnr_py_edit(struct gnr_model *m, PyObject *args, PyObject *kw);
PyObject *gnr_py_null_text(struct gnr_model *m, PyObject *args, PyObject *kw);

#endif
