/* Emulated half precision (see cuda_runtime_api.h): storage is IEEE binary16,
 * arithmetic is done in float and rounded back to nearest even. */
#ifndef GNR_EMU_CUDA_FP16_H
#define GNR_EMU_CUDA_FP16_H

#include "cuda_runtime.h"
#include "half_bits.h"

struct __half {
    uint16_t __x;
    __half() = default;
    __half(float f) : __x(gnr_emu::float_to_half_bits(f)) {}
    operator float() const { return gnr_emu::half_bits_to_float(__x); }
};

struct __half2 {
    __half x, y;
};

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }
inline __half __hadd(__half a, __half b) { return __half((float)a + (float)b); }
inline __half __hsub(__half a, __half b) { return __half((float)a - (float)b); }
inline __half __hmul(__half a, __half b) { return __half((float)a * (float)b); }
inline __half __hfma(__half a, __half b, __half c) { return __half(fmaf((float)a, (float)b, (float)c)); }

#endif
