/* The CUDA backend table, seen from C (csrc/python/cuda_module.c) and C++
 * (the .cu files). Defined in cuda_backend.cu. */
#ifndef GNR_CUDA_BACKEND_H
#define GNR_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

extern const gnr_backend gnr_cuda_backend;

/* Which kernel the CUDA attention forward without probs runs, process-wide:
 * "cublas" (products per chunk of rows and a softmax kernel; the default)
 * or "flash" (one fused kernel, float32 mode, heads up to 256 wide). name
 * NULL: only ask. Returns the choice now, or NULL for an unknown name (a
 * testing and benchmarking door until a GPU measurement picks one). */
const char *cuda_attention_kernel(const char *name);

#ifdef __cplusplus
}
#endif

#endif
