/* gnr_tensor: a dense, contiguous, row-major view of memory the tensor does
 * not own. Weights live in the model's weight block, activations in the
 * context's arena; a tensor is a small value that is passed around freely.
 *
 * Layouts used by the models (batch first, always contiguous):
 *   images / feature maps  N x C x H x W
 *   token sequences        N x L x C
 *   attention maps         N x heads x Lq x Lk
 *
 * `gid` is the reverse-mode identity: -1 for anything no gradient flows
 * through (weights, constants); >= 0 for tensors recorded on a tape, indexing
 * that tape's gradient slots. Ops never read it; only the tape does. */
#ifndef GNR_TENSOR_H
#define GNR_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define GNR_MAX_DIMS 4

typedef enum { GNR_F32 = 0, GNR_F16 = 1, GNR_BF16 = 2 } gnr_dtype;
typedef enum { GNR_CPU = 0, GNR_CUDA = 1 } gnr_device;

typedef struct {
    void *data;
    int64_t shape[GNR_MAX_DIMS];
    int ndim;
    gnr_dtype dtype;
    gnr_device device;
    int gid;
} gnr_tensor;

int64_t gnr_numel(const gnr_tensor *t);
size_t gnr_dtype_size(gnr_dtype dt);
size_t gnr_nbytes(const gnr_tensor *t);
const char *gnr_dtype_name(gnr_dtype dt);
const char *gnr_device_name(gnr_device dev);

/* A tensor header over `data` (no allocation). Unused trailing dims are 1. */
gnr_tensor gnr_tensor_view(void *data, gnr_dtype dt, gnr_device dev, int ndim, const int64_t *shape);

/* The same data seen with another shape of equal element count. */
gnr_tensor gnr_reshape(gnr_tensor t, int ndim, const int64_t *shape);

/* True when both have the same ndim and dims. */
int gnr_same_shape(const gnr_tensor *a, const gnr_tensor *b);

/* "(1, 4, 64, 64)" into buf; returns buf. */
const char *gnr_shape_str(const gnr_tensor *t, char *buf, size_t n);

static inline float *gnr_f32(const gnr_tensor *t) { return (float *)t->data; }

#endif
