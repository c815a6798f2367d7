/* Emulated bfloat16 (see cuda_runtime_api.h): storage is the top 16 bits of
 * a float, arithmetic is done in float and rounded back to nearest even. */
#ifndef GNR_EMU_CUDA_BF16_H
#define GNR_EMU_CUDA_BF16_H

#include "cuda_runtime.h"
#include "half_bits.h"

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(gnr_emu::float_to_bf16_bits(f)) {}
    operator float() const { return gnr_emu::bf16_bits_to_float(__x); }
};

struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline float __low2float(__nv_bfloat162 h) { return (float)h.x; }
inline float __high2float(__nv_bfloat162 h) { return (float)h.y; }

#endif
