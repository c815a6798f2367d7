/* The CPU backend's vector kernels for what is left after the matrix
 * products: the softmax's maxima and exponentials. Each has an AVX-512, an
 * AVX2 + FMA and a baseline (SSE2, or whatever the compiler targets)
 * version; the CPU's best is picked at run time, so one build runs on any
 * x86-64 and uses what it finds. The versions differ in the last bits (FMA,
 * lane count), never from one run to the next on one machine. */
#ifndef GNR_CPU_SIMD_H
#define GNR_CPU_SIMD_H

#include <stdint.h>

/* max_j x[j] (-inf when n == 0) */
float cpu_vec_max(const float *x, int64_t n);

/* y[j] = exp(x[j] - shift) for j < n (y may be x), and returns the sum of
 * the y[j] in a fixed order. exp as exp_poly in simd.c: within 2 ulp of
 * expf; arguments below -87.3 give exp(-87.3) (about 1e-38, a float's
 * least normal magnitude), not 0. */
float cpu_vec_exp_sum(const float *x, float *y, int64_t n, float shift);

/* The version this CPU runs (the best it has, unless set lower) */
enum { CPU_VEC_BASELINE, CPU_VEC_AVX2, CPU_VEC_AVX512 };
int cpu_vec_level(void);

/* "avx512", "avx2" or "baseline": the name of cpu_vec_level() */
const char *cpu_vec_level_name(void);

#endif
