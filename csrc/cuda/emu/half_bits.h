/* Round-to-nearest-even conversions between float and the 16-bit formats,
 * shared by the emulated fp16/bf16 types and the emulated cuBLAS speed mode
 * (which rounds a product's inputs to 16 bits as tensor cores do). */
#ifndef GNR_EMU_HALF_BITS_H
#define GNR_EMU_HALF_BITS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace gnr_emu {

inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE binary16, round to nearest even; overflow to inf, NaN stays NaN. */
inline uint16_t float_to_half_bits(float f)
{
    uint32_t x = f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                      /* below 2^-14: subnormal half */
        /* exact scaling by 2^24, then the default rounding mode (nearest even) */
        return (uint16_t)(sign | (uint32_t)nearbyintf(f32_from_bits(ax) * 16777216.0f));
    }
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13)), rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry may step into the exponent: correct */
    return (uint16_t)(sign | h);
}

inline float half_bits_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (e == 31) return f32_from_bits(sign | 0x7f800000u | (m << 13));
    return f32_from_bits(sign | ((e - 15 + 127) << 23) | (m << 13));
}

/* bfloat16 (the top half of a float), round to nearest even. */
inline uint16_t float_to_bf16_bits(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_float(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

} // namespace gnr_emu

#endif
