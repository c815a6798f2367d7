/* What the emulator's own files share: one lock for the whole emulated
 * device, error recording, the registry of device allocations and the
 * checking modes read from the environment. */
#ifndef GNR_EMU_EMU_H
#define GNR_EMU_EMU_H

#include <stddef.h>
#include <stdint.h>

#include <mutex>
#include <string>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define GNR_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GNR_EMU_ASAN 1
#endif
#endif

namespace gnr_emu {

/* Checking modes, from the environment (read once):
 *   GNR_EMU_ORDER=plain|reverse|shuffle[:seed]  order of the threads of a block
 *       between barriers (and of the blocks of a grid);
 *   GNR_EMU_RACECHECK=1  run every launch in plain order and again in the
 *       GNR_EMU_ORDER order (reverse when that is plain) and require
 *       bit-identical device memory afterwards;
 *   GNR_NANFILL=1  fill fresh device memory with signalling NaNs;
 *   GNR_EMU_DEVICE_MEMORY=bytes  the emulated device's memory (default 16 GiB);
 *   GNR_EMU_FAULT=kernel  launches of that kernel fault after running, as an
 *       illegal memory access would (to test how faults are reported). */
enum order_kind { ORDER_PLAIN, ORDER_REVERSE, ORDER_SHUFFLE };
struct config {
    std::string fault_kernel; /* GNR_EMU_FAULT=name: every launch of that kernel faults (tests of error paths) */
    order_kind order = ORDER_PLAIN;
    uint64_t seed = 0;
    bool racecheck = false;
    bool nanfill = false;
    size_t device_memory = (size_t)16 << 30;
};
const config &cfg();

/* Every emulated API call and launch holds this lock: the emulated device
 * runs one thing at a time, in the order the host asked for it. */
std::recursive_mutex &device_lock();
#define EMU_LOCK std::lock_guard<std::recursive_mutex> emu_lock_(gnr_emu::device_lock())

/* Records a failure: `code` becomes the last error, and the message is what
 * cudaGetErrorString(code) returns until the next failure. Returns code. */
cudaError_t fail(cudaError_t code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A fault in a running kernel is reported the way a GPU reports it: not by
 * the launch (which reports only a bad configuration) but by the next call
 * that waits for the device or copies through it (synchronisations, copies,
 * memsets); then it is cleared. defer_fault records one; take_fault returns
 * it (cudaSuccess if none) and makes it the last error. */
void defer_fault(cudaError_t code, const std::string &msg);
cudaError_t take_fault();

/* The message of the last failure on this thread if it had this code. */
const char *detail_for(int code, bool cublas);
void set_cublas_detail(int status, const std::string &msg);

/* Device memory. in_device: p lies in a live allocation. device_range:
 * [p, p + bytes) lies in one live allocation and, under AddressSanitizer, is
 * not poisoned (arena redzones, released arena memory); otherwise why is
 * filled. describe: "allocation of N bytes at 0x..., offset K". */
bool in_device(const void *p);
bool device_range(const void *p, size_t bytes, std::string *why);
std::string describe(const void *p);

/* The byte pattern of signalling NaNs (float 0x7fbadbad) over [p, p + bytes). */
void nan_fill(void *p, size_t bytes);

/* Runs fn on every live allocation (base and bytes mapped, whole pages
 * outside AddressSanitizer builds), for the race check. */
void visit_allocations(void (*fn)(char *base, size_t bytes, void *user), void *user);

} // namespace gnr_emu

#endif
