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

/* The same down the columns of a rows x cols block x (row stride ld), each
 * column's rows in order:
 *   m[c] = max(m[c], max_r x[r][c])                               (max_cols)
 *   x[r][c] = exp(x[r][c] - shift[c]), and sum[c] += those        (exp_cols)
 * (the flash forward's softmax with keys down the rows, attention.c). */
void cpu_vec_max_cols(const float *x, int64_t rows, int64_t cols, int64_t ld, float *m);
void cpu_vec_exp_cols(float *x, int64_t rows, int64_t cols, int64_t ld, const float *shift, float *sum);

/* GEGLU's gate with exact GELU, gelu(x) = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2:
 *   y[j] = a[j] gelu(g[j])                                       (geglu)
 *   da[j] += dy[j] gelu(g[j]);  dg[j] += dy[j] a[j] gelu'(g[j])  (geglu_backward)
 * gelu'(x) = Phi(x) + x phi(x). 1 + erf(u) as erf_poly in simd.c: within
 * 3 ulp of erf's float, and no cancellation for negative u (it is erfc(-u)
 * there, exactly 0 below u = -4 as the float 1 + erff(u) is). */
void cpu_vec_geglu(const float *a, const float *g, float *y, int64_t n);
void cpu_vec_geglu_backward(const float *a, const float *g, const float *dy, float *da, float *dg, int64_t n);

/* SiLU, x sigmoid(x) = x / (1 + exp(-x)), with exp as exp_poly:
 *   y[j] = silu(x[j]);  dx[j] += dy[j] silu'(x[j]),  silu' = s (1 + x (1 - s)), s = sigmoid(x) */
void cpu_vec_silu(const float *x, float *y, int64_t n);
void cpu_vec_silu_backward(const float *x, const float *dy, float *dx, int64_t n);

/* x86 with GCC or clang: the AVX2 + FMA and AVX-512 versions exist, each
 * function compiled for its level with one of these attributes. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GNR_VEC_X86 1
#define GNR_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define GNR_TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define GNR_VEC_X86 0
#endif

/* What a NAME_body and the helpers it calls are declared with, so that each
 * is compiled inside the level's version that calls it. */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* A kernel written once, as a plain-C body (static inline NAME_body) that
 * the compiler vectorises with no omp simd or optimize attributes (see
 * simd.c for why those need intrinsics instead): CPU_VEC_VERSIONS defines
 * NAME_baseline, NAME_avx2 and NAME_avx512 with the given parameter list,
 * each the body compiled for its level; CPU_VEC_PICK(NAME) is the one for
 * this CPU's level. */
#if GNR_VEC_X86
#define CPU_VEC_VERSIONS(name, params, args)                                                                         \
    static void name##_baseline params { name##_body args; }                                                         \
    GNR_TARGET_AVX2 static void name##_avx2 params { name##_body args; }                                             \
    GNR_TARGET_AVX512 static void name##_avx512 params { name##_body args; }
#define CPU_VEC_PICK(name)                                                                                           \
    (cpu_vec_level() == CPU_VEC_AVX512 ? name##_avx512 : cpu_vec_level() == CPU_VEC_AVX2 ? name##_avx2 : name##_baseline)
#else
#define CPU_VEC_VERSIONS(name, params, args) static void name##_baseline params { name##_body args; }
#define CPU_VEC_PICK(name) name##_baseline
#endif

#if GNR_VEC_X86
#include <immintrin.h>

/* r[c] becomes column c of the 8 x 8 block whose rows r[0..7] held: rows
 * unpacked in pairs, shuffled in fours, then their 128-bit halves
 * exchanged (the classic AVX sequence). The transposes (layout.c) and the
 * one-row linear layer (linear.c) turn 8 x 8 blocks with it. */
GNR_TARGET_AVX2 static ALWAYS_INLINE void cpu_vec_transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}
#endif

/* The version this CPU runs (the best it has, unless set lower) */
enum { CPU_VEC_BASELINE, CPU_VEC_AVX2, CPU_VEC_AVX512 };
int cpu_vec_level(void);

/* "avx512", "avx2" or "baseline": the name of cpu_vec_level() */
const char *cpu_vec_level_name(void);

#endif
