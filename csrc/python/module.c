/* gnr._C: module definition. Each binding file contributes its methods and
 * types through the registration functions declared in bindings.h. */
#include "arrays.h"

#include "bindings.h"
#include "convert.h"
#include "errors.h"
#include "backend.h"
#include "gnr.h"

static PyObject *build_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:O,s:s,s:O,s:s,s:i,s:s,s:s}", "cuda", gnr_has_cuda() ? Py_True : Py_False, "blas",
                         gnr_blas_name(), "openmp", gnr_has_openmp() ? Py_True : Py_False, "version", GNR_VERSION,
                         "threads", gnr_get_num_threads(), "cuda_build", GNR_CUDA_BUILD, "cuda_note", GNR_CUDA_NOTE);
}

static PyObject *set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    gnr_py_int n = {"num_threads", 1, INT_MAX, 0};
    if (!gnr_py_conv_int(arg, &n)) return NULL;
    gnr_set_num_threads(n.value);
    Py_RETURN_NONE;
}

/* Installs the CUDA backend table exported by gnr._C_cuda as a capsule named
 * "gnr._C_cuda.backend" (a const gnr_backend *). */
static PyObject *register_cuda_backend(PyObject *self, PyObject *capsule)
{
    (void)self;
    const gnr_backend *table = PyCapsule_GetPointer(capsule, "gnr._C_cuda.backend");
    if (!table) return NULL;
    gnr_status st = gnr_register_backend(GNR_CUDA, table);
    if (st != GNR_OK) return gnr_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *ddim_alphas_cumprod(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    npy_intp n = 1000;
    PyArrayObject *a = gnr_py_new_float(1, &n);
    if (a) gnr_ddim_alphas_cumprod((float *)PyArray_DATA(a));
    return (PyObject *)a;
}

static PyMethodDef module_methods[] = {
    {"ddim_alphas_cumprod", ddim_alphas_cumprod, METH_NOARGS,
     "The fixed DDIM schedule of GNR_SPEC.md section 2: float32 abar[1000]."},
    {"_register_cuda_backend", register_cuda_backend, METH_O, "Install the CUDA backend from gnr._C_cuda."},
    {"build_info", build_info, METH_NOARGS, "What this build contains: cuda, blas, openmp, version, threads, cuda_build, cuda_note."},
    {"set_num_threads", set_num_threads, METH_O, "CPU threads of models made from now on (a model keeps the count it was made with)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "gnr._C", "The gnr engine.", -1, module_methods};

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    /* All cores by default, with OpenBLAS kept single-threaded (cpu/gemm.c). */
    gnr_set_num_threads(gnr_get_num_threads());
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (gnr_py_errors_init(m) < 0 || gnr_py_register_model(m) < 0 || gnr_py_register_ops(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
