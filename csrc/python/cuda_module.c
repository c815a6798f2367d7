/* gnr._C_cuda: the CUDA backend as its own module, loaded only when a CUDA
 * device is asked for (so `import gnr` works without a GPU driver). It
 * exports the backend table as the capsule `backend` (named
 * "gnr._C_cuda.backend", a const gnr_backend *), which gnr hands to
 * gnr._C._register_cuda_backend, and two queries about the devices. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cuda_runtime_api.h>

#include "cuda/cuda_backend.h"

/* Number of CUDA devices; 0 when there is no driver or no device. */
static PyObject *device_count(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        n = 0;
    }
    return PyLong_FromLong(n);
}

/* Name of device `index` (default 0), e.g. "NVIDIA H100 80GB HBM3". */
static PyObject *device_name(PyObject *self, PyObject *args)
{
    (void)self;
    int index = 0;
    if (!PyArg_ParseTuple(args, "|i:device_name", &index)) return NULL;
    struct cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceProperties(&prop, index);
    if (e != cudaSuccess) {
        cudaGetLastError();
        PyErr_Format(PyExc_RuntimeError, "cudaGetDeviceProperties(%d) failed: %s (%s)", index, cudaGetErrorName(e),
                     cudaGetErrorString(e));
        return NULL;
    }
    return PyUnicode_FromString(prop.name);
}

/* attention_kernel(name=None): the CUDA attention forward's kernel
 * ("cublas" or "flash"); with a name, switch first. */
static PyObject *attention_kernel(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z:attention_kernel", &name)) return NULL;
    const char *now = cuda_attention_kernel(name);
    if (!now) return PyErr_Format(PyExc_ValueError, "attention kernel %s: expected cublas or flash", name);
    return PyUnicode_FromString(now);
}

static PyMethodDef methods[] = {
    {"device_count", device_count, METH_NOARGS, "Number of CUDA devices (0 without a driver or device)."},
    {"device_name", device_name, METH_VARARGS, "device_name(index=0) -> the device's name."},
    {"attention_kernel", attention_kernel, METH_VARARGS,
     "attention_kernel(name=None): the attention forward's kernel without probs, cublas or flash (for tests and "
     "benchmarks)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "gnr._C_cuda", "The gnr CUDA backend.", -1, methods};

PyMODINIT_FUNC PyInit__C_cuda(void)
{
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    PyObject *cap = PyCapsule_New((void *)&gnr_cuda_backend, "gnr._C_cuda.backend", NULL);
    if (!cap || PyModule_AddObject(m, "backend", cap) < 0) {
        Py_XDECREF(cap);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
