/* Checked CUDA and cuBLAS calls.
 *
 * Every runtime and cuBLAS call of the backend goes through one of these
 * macros. A failure records the call's text, file and line with gnr_error and
 * returns from the enclosing function (which returns gnr_status):
 *   out of memory -> GNR_ERR_NOMEM, with the bytes free on the device;
 *   anything else -> GNR_ERR_DEVICE, naming the call and the CUDA error. */
#ifndef GNR_CUDA_CHECK_H
#define GNR_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "core/status.h"
}

gnr_status cuda_fail(cudaError_t err, const char *call, const char *file, int line);
gnr_status cublas_fail(cublasStatus_t st, const char *call, const char *file, int line);

#define CUDA_CHECK(call)                                                          \
    do {                                                                          \
        cudaError_t cuda_check_e_ = (call);                                       \
        if (cuda_check_e_ != cudaSuccess)                                         \
            return cuda_fail(cuda_check_e_, #call, __FILE__, __LINE__);           \
    } while (0)

#define CUBLAS_CHECK(call)                                                        \
    do {                                                                          \
        cublasStatus_t cublas_check_s_ = (call);                                  \
        if (cublas_check_s_ != CUBLAS_STATUS_SUCCESS)                             \
            return cublas_fail(cublas_check_s_, #call, __FILE__, __LINE__);       \
    } while (0)

/* After a kernel launch: configuration errors show up here. */
#define CUDA_CHECK_LAUNCH(kernel_name)                                            \
    do {                                                                          \
        cudaError_t cuda_check_e_ = cudaGetLastError();                           \
        if (cuda_check_e_ != cudaSuccess)                                         \
            return cuda_fail(cuda_check_e_, "launch of " kernel_name, __FILE__, __LINE__); \
    } while (0)

#endif
