/* gnr._C: module definition. Each binding file contributes its methods and
 * types through the registration functions declared in bindings.h. */
#include "arrays.h"

#include "bindings.h"
#include "convert.h"
#include "errors.h"
#include "backend.h"
#include "gnr.h"
#include "op_profile.h"

static PyObject *build_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:O,s:s,s:s,s:O,s:s,s:i,s:s,s:s}", "cuda", gnr_has_cuda() ? Py_True : Py_False, "blas",
                         gnr_blas_name(), "cpu_vector", gnr_cpu_vector_level(), "openmp",
                         gnr_has_openmp() ? Py_True : Py_False, "version", GNR_VERSION, "threads",
                         gnr_get_num_threads(), "cuda_build", GNR_CUDA_BUILD, "cuda_note", GNR_CUDA_NOTE);
}

/* _cpu_vector_level(name=None): the CPU vector kernels in use; with a name,
 * switch to them first (a testing hook: every version is checked against
 * the reference on a CPU that has them all). */
static PyObject *cpu_vector_level(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z:_cpu_vector_level", &name)) return NULL;
    if (name) {
        gnr_status st = gnr_cpu_set_vector_level(name);
        if (st != GNR_OK) return gnr_py_raise(st);
    }
    return PyUnicode_FromString(gnr_cpu_vector_level());
}

/* _feed_forward_block_bytes(n=0): the feed-forward's block budget before;
 * n > 0 sets it (tests). */
static PyObject *feed_forward_block_bytes(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long n = 0;
    if (!PyArg_ParseTuple(args, "|K:_feed_forward_block_bytes", &n)) return NULL;
    return PyLong_FromSize_t(gnr_feed_forward_block_bytes((size_t)n));
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

/* _cpu_vector_exp(x, shift) -> (exp(x - shift) as float32, their sum as the
 * kernels add them): the current level's exponential, for tests. */
static PyObject *cpu_vector_exp(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *xo;
    float shift;
    if (!PyArg_ParseTuple(args, "Of:_cpu_vector_exp", &xo, &shift)) return NULL;
    PyArrayObject *x = gnr_py_float_array(xo, "x", 1, NULL, 0);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    PyArrayObject *y = gnr_py_new_float(1, &n);
    PyObject *result = NULL;
    if (y) {
        float sum = gnr_cpu_vector_exp_sum((const float *)PyArray_DATA(x), (float *)PyArray_DATA(y), (int64_t)n, shift);
        result = Py_BuildValue("(Od)", (PyObject *)y, (double)sum);
    }
    Py_DECREF(x);
    Py_XDECREF(y);
    return result;
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

/* _op_profile_start(): clears the op counters and starts counting
 * (gnr.profile). */
static PyObject *op_profile_start(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    gnr_status st = gnr_op_profile_start();
    if (st != GNR_OK) return gnr_py_raise(st);
    Py_RETURN_NONE;
}

/* _op_profile_stop() -> [(op, device, calls, seconds), ...]: stops counting
 * and returns the ops that ran, in ops.def order. */
static PyObject *op_profile_stop(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    gnr_op_profile_stop();
    gnr_op_profile_row rows[2 * GNR_OP_COUNT];
    int n = gnr_op_profile_rows(rows, 2 * GNR_OP_COUNT);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *row = Py_BuildValue("(ssLd)", rows[i].op, gnr_device_name(rows[i].device), (long long)rows[i].calls,
                                      rows[i].seconds);
        if (!row) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

static PyMethodDef module_methods[] = {
    {"ddim_alphas_cumprod", ddim_alphas_cumprod, METH_NOARGS,
     "The fixed DDIM schedule of GNR_SPEC.md section 2: float32 abar[1000]."},
    {"_register_cuda_backend", register_cuda_backend, METH_O, "Install the CUDA backend from gnr._C_cuda."},
    {"build_info", build_info, METH_NOARGS,
     "What this build contains: cuda, blas, cpu_vector, openmp, version, threads, cuda_build, cuda_note."},
    {"_cpu_vector_exp", cpu_vector_exp, METH_VARARGS,
     "(exp(x - shift), its sum) by the CPU backend's current vector kernels (for tests)."},
    {"_feed_forward_block_bytes", feed_forward_block_bytes, METH_VARARGS,
     "_feed_forward_block_bytes(n=0) -> the feed-forward's block budget before; n > 0 sets it (tests)."},
    {"_cpu_vector_level", cpu_vector_level, METH_VARARGS,
     "The CPU vector kernels in use (avx512, avx2, baseline); with a name, switch to them (for tests)."},
    {"_op_profile_start", op_profile_start, METH_NOARGS, "Clear the op counters and start counting (gnr.profile)."},
    {"_op_profile_stop", op_profile_stop, METH_NOARGS,
     "Stop counting; [(op, device, calls, seconds)] of the ops that ran (gnr.profile)."},
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
