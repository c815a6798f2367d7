/* The CUDA backend table, seen from C (csrc/python/cuda_module.c) and C++
 * (the .cu files). Defined in cuda_backend.cu. */
#ifndef GNR_CUDA_BACKEND_H
#define GNR_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"

extern const gnr_backend gnr_cuda_backend;

#ifdef __cplusplus
}
#endif

#endif
