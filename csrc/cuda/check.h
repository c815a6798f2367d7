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

/* Every kernel launch of the backend, checked:
 *   CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, args...)
 * Under nvcc it is kernel<<<grid, block, shared_bytes, stream>>>(args...);
 * under the emulator (GNR_CUDA=emulate, csrc/cuda/emu) the same source hands
 * the bound call to the emulated scheduler, so no kernel is written twice.
 * The arguments are evaluated once per launch on a GPU and once per thread
 * in the emulator: pass values, never expressions with side effects. */
#ifdef __CUDACC__
#define CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)               \
    do {                                                                          \
        kernel<<<(grid), (block), (shared_bytes), (stream)>>>(__VA_ARGS__);       \
        CUDA_CHECK_LAUNCH(#kernel);                                               \
    } while (0)
/* Dynamic shared memory of a kernel, as an array of `type` named `name`. */
#define CUDA_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#else
#define CUDA_LAUNCH(kernel, grid, block, shared_bytes, stream, ...)               \
    do {                                                                          \
        gnr_emu::launch_kernel(#kernel, (grid), (block), (shared_bytes), (stream), \
                               [=]() { kernel(__VA_ARGS__); });                   \
        CUDA_CHECK_LAUNCH(#kernel);                                               \
    } while (0)
#define CUDA_DYNAMIC_SHARED(type, name) type *name = static_cast<type *>(gnr_emu::dynamic_shared())
#endif

#endif
