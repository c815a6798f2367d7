#include "errors.h"

#include <stdarg.h>

PyObject *gnr_OutOfMemoryError = NULL;
PyObject *gnr_DeviceError = NULL;

int gnr_py_errors_init(PyObject *module)
{
    gnr_OutOfMemoryError = PyErr_NewExceptionWithDoc(
        "gnr.OutOfMemoryError",
        "Raised when an activation or weight allocation fails or exceeds the memory cap; the message gives the "
        "bytes asked for and available.",
        PyExc_MemoryError, NULL);
    gnr_DeviceError = PyErr_NewExceptionWithDoc(
        "gnr.DeviceError", "Raised when a CUDA or cuBLAS call fails; the message names the call.",
        PyExc_RuntimeError, NULL);
    if (!gnr_OutOfMemoryError || !gnr_DeviceError) return -1;
    if (PyModule_AddObjectRef(module, "OutOfMemoryError", gnr_OutOfMemoryError) < 0) return -1;
    if (PyModule_AddObjectRef(module, "DeviceError", gnr_DeviceError) < 0) return -1;
    return 0;
}

PyObject *gnr_py_raise(gnr_status st)
{
    const char *msg = gnr_last_error();
    PyObject *type;
    switch (st) {
    case GNR_ERR_VALUE: type = PyExc_ValueError; break;
    case GNR_ERR_TYPE: type = PyExc_TypeError; break;
    case GNR_ERR_NOMEM: type = gnr_OutOfMemoryError; break;
    case GNR_ERR_DEVICE: type = gnr_DeviceError; break;
    case GNR_ERR_CANCELLED: type = PyExc_KeyboardInterrupt; break;
    case GNR_ERR_NOTFOUND: type = PyExc_ValueError; break;
    case GNR_ERR_UNSUPPORTED: type = PyExc_NotImplementedError; break;
    default: type = PyExc_RuntimeError; break;
    }
    if (!msg || !msg[0]) msg = "gnr engine error (no message)";
    PyErr_SetString(type, msg);
    return NULL;
}

PyObject *gnr_py_internal_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *what = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (!what) return NULL;
    PyErr_Format(PyExc_RuntimeError,
                 "internal error in gnr: %U (gnr.model builds and validates this input before it reaches the "
                 "engine; please report this bug)",
                 what);
    Py_DECREF(what);
    return NULL;
}
