#include "tensor.h"

#include <stdio.h>
#include <string.h>

int64_t gnr_numel(const gnr_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t gnr_dtype_size(gnr_dtype dt) { return dt == GNR_F32 ? 4 : 2; }

size_t gnr_nbytes(const gnr_tensor *t) { return (size_t)gnr_numel(t) * gnr_dtype_size(t->dtype); }

const char *gnr_dtype_name(gnr_dtype dt)
{
    switch (dt) {
    case GNR_F32: return "float32";
    case GNR_F16: return "float16";
    case GNR_BF16: return "bfloat16";
    }
    return "?";
}

const char *gnr_device_name(gnr_device dev) { return dev == GNR_CUDA ? "cuda" : "cpu"; }

gnr_tensor gnr_tensor_view(void *data, gnr_dtype dt, gnr_device dev, int ndim, const int64_t *shape)
{
    gnr_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.device = dev;
    t.ndim = ndim;
    t.gid = -1;
    for (int i = 0; i < GNR_MAX_DIMS; i++) t.shape[i] = i < ndim ? shape[i] : 1;
    return t;
}

gnr_tensor gnr_reshape(gnr_tensor t, int ndim, const int64_t *shape)
{
    gnr_tensor r = gnr_tensor_view(t.data, t.dtype, t.device, ndim, shape);
    r.gid = t.gid;
    return r;
}

int gnr_same_shape(const gnr_tensor *a, const gnr_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

const char *gnr_shape_str(const gnr_tensor *t, char *buf, size_t n)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "(");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, t->ndim == 1 ? ",)" : ")"); /* Python's spelling */
    return buf;
}
