/* The emulated CUDA runtime: errors, device memory, copies, streams, events
 * and the device's properties (see cuda_runtime_api.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <set>

#include "emu.h"

#ifdef GNR_EMU_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace gnr_emu {

/* ------------------------------------------------------------ config --- */

static config read_config()
{
    config c;
    const char *o = getenv("GNR_EMU_ORDER");
    if (o && !strcmp(o, "reverse")) c.order = ORDER_REVERSE;
    else if (o && !strncmp(o, "shuffle", 7)) {
        c.order = ORDER_SHUFFLE;
        c.seed = o[7] == ':' ? strtoull(o + 8, nullptr, 10) : 1;
    } else if (o && *o && strcmp(o, "plain")) {
        fprintf(stderr, "gnr CUDA emulator: GNR_EMU_ORDER=%s is not plain, reverse or shuffle[:seed]; using plain\n", o);
    }
    const char *r = getenv("GNR_EMU_RACECHECK");
    c.racecheck = r && *r && strcmp(r, "0");
    const char *n = getenv("GNR_NANFILL");
    c.nanfill = n && *n && strcmp(n, "0");
    const char *f = getenv("GNR_EMU_FAULT");
    if (f) c.fault_kernel = f;
    const char *m = getenv("GNR_EMU_DEVICE_MEMORY");
    if (m && *m) c.device_memory = (size_t)strtoull(m, nullptr, 10);
#ifdef GNR_EMU_ASAN
    if (c.racecheck) {
        fprintf(stderr, "gnr CUDA emulator: GNR_EMU_RACECHECK needs page protection, which an AddressSanitizer "
                        "build does not use; the race check is off\n");
        c.racecheck = false;
    }
#endif
    return c;
}

const config &cfg()
{
    static const config c = read_config();
    return c;
}

std::recursive_mutex &device_lock()
{
    static std::recursive_mutex m;
    return m;
}

/* ------------------------------------------------------------ errors --- */

static thread_local cudaError_t last_error = cudaSuccess;
static thread_local int detail_code = -1;
static thread_local bool detail_is_cublas = false;
static thread_local std::string detail;

cudaError_t fail(cudaError_t code, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    detail = std::string("emulator: ") + buf;
    detail_code = code;
    detail_is_cublas = false;
    last_error = code;
    return code;
}

void set_cublas_detail(int status, const std::string &msg)
{
    detail = "emulator: " + msg;
    detail_code = status;
    detail_is_cublas = true;
}

static cudaError_t pending_code = cudaSuccess;
static std::string pending_detail;

void defer_fault(cudaError_t code, const std::string &msg)
{
    if (pending_code != cudaSuccess) return; /* the first fault is the one reported */
    pending_code = code;
    pending_detail = msg;
}

cudaError_t take_fault()
{
    if (pending_code == cudaSuccess) return cudaSuccess;
    cudaError_t code = pending_code;
    pending_code = cudaSuccess;
    return fail(code, "%s", pending_detail.c_str());
}

const char *detail_for(int code, bool cublas)
{
    return (code == detail_code && cublas == detail_is_cublas && !detail.empty()) ? detail.c_str() : nullptr;
}

/* ----------------------------------------------------- device memory --- */

struct allocation {
    size_t bytes;  /* asked for */
    size_t mapped; /* held (whole pages when mmapped) */
};

static std::map<uintptr_t, allocation> &allocations()
{
    static std::map<uintptr_t, allocation> m;
    return m;
}
static size_t allocated_bytes = 0;
static size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }

static const std::pair<const uintptr_t, allocation> *find(const void *p)
{
    auto &m = allocations();
    auto it = m.upper_bound((uintptr_t)p);
    if (it == m.begin()) return nullptr;
    --it;
    if ((uintptr_t)p >= it->first + it->second.bytes) return nullptr;
    return &*it;
}

bool in_device(const void *p) { return find(p) != nullptr; }

std::string describe(const void *p)
{
    char buf[160];
    auto *a = find(p);
    if (!a) {
        snprintf(buf, sizeof buf, "%p (not in any device allocation)", p);
    } else {
        snprintf(buf, sizeof buf, "%p (offset %zu in a device allocation of %zu bytes)", p,
                 (size_t)((uintptr_t)p - a->first), a->second.bytes);
    }
    return buf;
}

bool device_range(const void *p, size_t bytes, std::string *why)
{
    auto *a = find(p);
    char buf[256];
    if (!a) {
        snprintf(buf, sizeof buf, "%p is not device memory", p);
        if (why) *why = buf;
        return false;
    }
    size_t off = (uintptr_t)p - a->first;
    if (bytes > a->second.bytes - off) {
        snprintf(buf, sizeof buf, "%zu bytes at %s run %zu bytes past its end", bytes, describe(p).c_str(),
                 bytes - (a->second.bytes - off));
        if (why) *why = buf;
        return false;
    }
#ifdef GNR_EMU_ASAN
    if (bytes) {
        void *bad = __asan_region_is_poisoned(const_cast<void *>(p), bytes);
        if (bad) {
            snprintf(buf, sizeof buf,
                     "%zu bytes at %s include poisoned memory at offset %zu (an arena redzone or released "
                     "arena memory)",
                     bytes, describe(p).c_str(), (size_t)((char *)bad - (const char *)p));
            if (why) *why = buf;
            return false;
        }
    }
#endif
    return true;
}

void nan_fill(void *p, size_t bytes)
{
    const uint32_t pattern = 0x7fbadbadu; /* a signalling NaN as float */
    unsigned char *b = (unsigned char *)p;
    size_t i = 0;
    for (; i + 4 <= bytes; i += 4) memcpy(b + i, &pattern, 4);
    for (size_t j = 0; i < bytes; i++, j++) b[i] = ((const unsigned char *)&pattern)[j];
}

void visit_allocations(void (*fn)(char *base, size_t bytes, void *user), void *user)
{
    for (auto &kv : allocations()) fn((char *)kv.first, kv.second.mapped, user);
}

} // namespace gnr_emu

using namespace gnr_emu;


extern "C" {

/* ------------------------------------------------------------ errors --- */

const char *cudaGetErrorName(cudaError_t err)
{
    switch (err) {
#define NAME(e) \
    case e: return #e;
        NAME(cudaSuccess)
        NAME(cudaErrorInvalidValue)
        NAME(cudaErrorMemoryAllocation)
        NAME(cudaErrorInitializationError)
        NAME(cudaErrorInvalidConfiguration)
        NAME(cudaErrorInvalidPitchValue)
        NAME(cudaErrorInvalidDevicePointer)
        NAME(cudaErrorInvalidMemcpyDirection)
        NAME(cudaErrorNoDevice)
        NAME(cudaErrorInvalidDevice)
        NAME(cudaErrorInvalidResourceHandle)
        NAME(cudaErrorNotReady)
        NAME(cudaErrorIllegalAddress)
        NAME(cudaErrorLaunchOutOfResources)
        NAME(cudaErrorLaunchFailure)
        NAME(cudaErrorUnknown)
#undef NAME
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t err)
{
    const char *d = detail_for(err, false);
    if (d) return d;
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidPitchValue: return "invalid pitch argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
    }
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

/* ------------------------------------------------------------ device --- */

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: count is NULL");
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    if (!device) return fail(cudaErrorInvalidValue, "cudaGetDevice: device is NULL");
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    if (device != 0) return fail(cudaErrorInvalidDevice, "cudaSetDevice(%d): the emulator has device 0 only", device);
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (!prop) return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties: prop is NULL");
    if (device != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties(%d): device 0 only", device);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "gnr CUDA emulator (CPU)");
    prop->totalGlobalMem = cfg().device_memory;
    prop->sharedMemPerBlock = 48 << 10;
    prop->sharedMemPerBlockOptin = 227 << 10;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->memPitch = 2147483647; /* cudaMemcpy2D's pitch limit, as on current GPUs */
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024;
    prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 2147483647;
    prop->maxGridSize[1] = 65535;
    prop->maxGridSize[2] = 65535;
    prop->totalConstMem = 65536;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 132;
    prop->maxThreadsPerMultiProcessor = 2048;
    prop->l2CacheSize = 50 << 20;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    struct cudaDeviceProp p;
    if (!value) return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: value is NULL");
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) return e;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMaxPitch: *value = (int)p.memPitch; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)p.sharedMemPerBlockOptin; break;
    default: return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute %d is not emulated", (int)attr);
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    EMU_LOCK;
    return take_fault();
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    EMU_LOCK;
    if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue, "cudaMemGetInfo: NULL argument");
    *total_bytes = cfg().device_memory;
    *free_bytes = allocated_bytes < *total_bytes ? *total_bytes - allocated_bytes : 0;
    return cudaSuccess;
}

/* ------------------------------------------------------------ memory --- */

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    EMU_LOCK;
    if (!ptr) return fail(cudaErrorInvalidValue, "cudaMalloc: ptr is NULL");
    *ptr = nullptr;
    if (bytes == 0) return cudaSuccess;
    if (bytes > cfg().device_memory - allocated_bytes || allocated_bytes > cfg().device_memory)
        return fail(cudaErrorMemoryAllocation, "cudaMalloc of %zu bytes: %zu of the emulated device's %zu bytes in use",
                    bytes, allocated_bytes, cfg().device_memory);
#ifdef GNR_EMU_ASAN
    /* from the instrumented heap: AddressSanitizer puts redzones around it */
    void *p = nullptr;
    size_t mapped = bytes;
    if (posix_memalign(&p, 256, bytes) != 0) p = nullptr;
#else
    /* whole pages of their own, so the race check can protect them */
    size_t mapped = (bytes + page() - 1) / page() * page();
    void *p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) p = nullptr;
#endif
    if (!p) return fail(cudaErrorMemoryAllocation, "cudaMalloc of %zu bytes: the host is out of memory", bytes);
    if (cfg().nanfill) nan_fill(p, bytes);
    allocations()[(uintptr_t)p] = allocation{bytes, mapped};
    allocated_bytes += bytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr)
{
    EMU_LOCK;
    if (!ptr) return cudaSuccess;
    auto &m = allocations();
    auto it = m.find((uintptr_t)ptr);
    if (it == m.end())
        return fail(cudaErrorInvalidValue, "cudaFree(%p): not the start of a live device allocation (%s)", ptr,
                    in_device(ptr) ? "it points inside one" : "freed twice, or never allocated");
    allocated_bytes -= it->second.bytes;
#ifdef GNR_EMU_ASAN
    free(ptr);
#else
    munmap(ptr, it->second.mapped);
#endif
    m.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes)
{
    if (!ptr) return fail(cudaErrorInvalidValue, "cudaMallocHost: ptr is NULL");
    *ptr = malloc(bytes ? bytes : 1);
    return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMallocHost of %zu bytes failed", bytes);
}

cudaError_t cudaFreeHost(void *ptr)
{
    free(ptr);
    return cudaSuccess;
}

static bool stream_ok(cudaStream_t s);

/* Both ends of a copy of `bytes` checked against `kind`. */
static cudaError_t check_copy(const char *call, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (kind == cudaMemcpyDefault) {
        bool dd = in_device(dst), sd = in_device(src);
        kind = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                  : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    }
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice)
        return fail(cudaErrorInvalidMemcpyDirection, "%s: copy kind %d", call, (int)kind);
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    std::string why;
    if (dst_dev && !device_range(dst, bytes, &why)) return fail(cudaErrorInvalidValue, "%s: destination: %s", call, why.c_str());
    if (src_dev && !device_range(src, bytes, &why)) return fail(cudaErrorInvalidValue, "%s: source: %s", call, why.c_str());
    if (!dst_dev && in_device(dst))
        return fail(cudaErrorInvalidValue, "%s: the copy kind says the destination is host memory, but %s", call,
                    describe(dst).c_str());
    if (!src_dev && in_device(src))
        return fail(cudaErrorInvalidValue, "%s: the copy kind says the source is host memory, but %s", call,
                    describe(src).c_str());
    if (bytes && (const char *)dst < (const char *)src + bytes && (const char *)src < (const char *)dst + bytes)
        return fail(cudaErrorInvalidValue,
                    "%s: source %s and destination %s overlap (%zu bytes); CUDA copies between overlapping "
                    "ranges are undefined",
                    call, describe(src).c_str(), describe(dst).c_str(), bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream)
{
    EMU_LOCK;
    if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: invalid stream %p", (void *)stream);
    if (cudaError_t f = take_fault()) return f;
    if (bytes == 0) return cudaSuccess;
    cudaError_t e = check_copy("cudaMemcpyAsync", dst, src, bytes, kind);
    if (e != cudaSuccess) return e;
    memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream)
{
    EMU_LOCK;
    const size_t max_pitch = 2147483647;
    if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpy2DAsync: invalid stream");
    if (cudaError_t f = take_fault()) return f;
    if (width > dpitch || width > spitch)
        return fail(cudaErrorInvalidValue, "cudaMemcpy2DAsync: width %zu exceeds a pitch (dst %zu, src %zu)", width,
                    dpitch, spitch);
    if (dpitch > max_pitch || spitch > max_pitch)
        return fail(cudaErrorInvalidPitchValue,
                    "cudaMemcpy2DAsync: pitch (dst %zu, src %zu bytes) exceeds the device's limit of %zu bytes",
                    dpitch, spitch, max_pitch);
    if (width == 0 || height == 0) return cudaSuccess;
    /* the spans of all rows, checked as one range each (overlap is judged on the spans) */
    size_t dspan = dpitch * (height - 1) + width, sspan = spitch * (height - 1) + width;
    if (kind != cudaMemcpyHostToHost) {
        std::string why;
        bool dd = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice ||
                  (kind == cudaMemcpyDefault && in_device(dst));
        bool sd = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice ||
                  (kind == cudaMemcpyDefault && in_device(src));
        if (dd && !device_range(dst, dspan, &why)) return fail(cudaErrorInvalidValue, "cudaMemcpy2DAsync: destination: %s", why.c_str());
        if (sd && !device_range(src, sspan, &why)) return fail(cudaErrorInvalidValue, "cudaMemcpy2DAsync: source: %s", why.c_str());
    }
    if ((const char *)dst < (const char *)src + sspan && (const char *)src < (const char *)dst + dspan)
        return fail(cudaErrorInvalidValue, "cudaMemcpy2DAsync: the source and destination spans overlap");
    for (size_t r = 0; r < height; r++) memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream)
{
    EMU_LOCK;
    if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: invalid stream");
    if (cudaError_t f = take_fault()) return f;
    if (bytes == 0) return cudaSuccess;
    std::string why;
    if (!device_range(dst, bytes, &why)) return fail(cudaErrorInvalidValue, "cudaMemsetAsync: %s", why.c_str());
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *dst, int value, size_t bytes) { return cudaMemsetAsync(dst, value, bytes, nullptr); }

/* ------------------------------------------------- streams and events --- */

struct CUstream_st {
    int unused;
};
struct CUevent_st {
    std::chrono::steady_clock::time_point t;
    bool recorded;
};

static std::set<const void *> &handles()
{
    static std::set<const void *> s;
    return s;
}

static bool stream_ok(cudaStream_t s) { return !s || handles().count(s); }

cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    EMU_LOCK;
    if (!stream) return fail(cudaErrorInvalidValue, "cudaStreamCreate: stream is NULL");
    *stream = new CUstream_st();
    handles().insert(*stream);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    EMU_LOCK;
    if (!stream || !handles().erase(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy(%p): not a live stream", (void *)stream);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    EMU_LOCK;
    if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: invalid stream");
    return take_fault(); /* everything ran when it was asked for */
}

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    EMU_LOCK;
    if (!event) return fail(cudaErrorInvalidValue, "cudaEventCreate: event is NULL");
    *event = new CUevent_st{std::chrono::steady_clock::now(), false};
    handles().insert(*event);
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    EMU_LOCK;
    if (!event || !handles().erase(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: not a live event");
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    EMU_LOCK;
    if (!event || !handles().count(event) || !stream_ok(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: invalid event or stream");
    event->t = std::chrono::steady_clock::now();
    event->recorded = true;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    EMU_LOCK;
    if (!event || !handles().count(event)) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: invalid event");
    return take_fault();
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    EMU_LOCK;
    if (!ms || !start || !end || !handles().count(start) || !handles().count(end))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: invalid event");
    if (!start->recorded || !end->recorded) return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
    *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
    return cudaSuccess;
}

} /* extern "C" */
