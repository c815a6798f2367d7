/* Engine status -> Python exception, in one place. */
#ifndef GNR_PY_ERRORS_H
#define GNR_PY_ERRORS_H

#include <Python.h>

#include "core/status.h"

/* gnr.OutOfMemoryError (a MemoryError) and gnr.DeviceError (a RuntimeError). */
extern PyObject *gnr_OutOfMemoryError;
extern PyObject *gnr_DeviceError;

int gnr_py_errors_init(PyObject *module);

/* Raises the exception for `st` with the engine's message for this thread;
 * returns NULL so callers can `return gnr_py_raise(st);`. */
PyObject *gnr_py_raise(gnr_status st);

/* RuntimeError for input the Python layer never passes (gnr.model builds and
 * validates the dicts the binding reads): a bug in gnr, said so in the
 * message, never a user's mistake. Returns NULL. */
PyObject *gnr_py_internal_error(const char *fmt, ...);

#endif
