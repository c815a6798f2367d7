/* Registration hooks of the binding files (each adds its functions/types to
 * the module; returns 0, or -1 with an exception set). Files other than
 * module.c that use the NumPy C API define NO_IMPORT_ARRAY before including
 * arrays.h, so the API table is shared. */
#ifndef GNR_PY_BINDINGS_H
#define GNR_PY_BINDINGS_H

#include <Python.h>

int gnr_py_register_model(PyObject *module); /* model_binding.c: gnr._C.Model */
int gnr_py_register_ops(PyObject *module);   /* op_binding.c: single ops, for tests */

/* The engine model of a gnr._C.Model (NULL with RuntimeError if unset). */
struct gnr_model *gnr_py_model_of(PyObject *self);

/* edit_binding.c: methods of gnr._C.Model for the long jobs. */
PyObject *gnr_py_invert(PyObject *self, PyObject *args);
PyObject *gnr_py_edit(PyObject *self, PyObject *args);
PyObject *gnr_py_null_text(PyObject *self, PyObject *args);

#endif
