/* Vector kernels with run-time dispatch (simd.h).
 *
 * Why intrinsics and not the compiler's function multiversioning: GCC 12
 * does not vectorise these loops inside target_clones (or target attribute)
 * functions when they use `omp simd` or the optimize attribute the
 * exponential needs, so the clones came out scalar. The AVX-512 and AVX2
 * versions below are written out; the baseline is the portable loop the
 * compiler vectorises for its default target. All three compute the same
 * polynomials (exp_poly, one_plus_erf). */
#include <math.h>
#include <string.h>

#include "cpu/simd.h"
#include "gnr.h"

#if GNR_VEC_X86
#include <immintrin.h>
#endif

static const char *const level_names[] = {"baseline", "avx2", "avx512"};

static int best_level(void)
{
#if GNR_VEC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return CPU_VEC_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CPU_VEC_AVX2;
#endif
    return CPU_VEC_BASELINE;
}

static int chosen = -1; /* read and written atomically: any thread may be first */

int cpu_vec_level(void)
{
    int l = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (l < 0) {
        l = best_level();
        __atomic_store_n(&chosen, l, __ATOMIC_RELAXED);
    }
    return l;
}

const char *cpu_vec_level_name(void) { return level_names[cpu_vec_level()]; }

const char *gnr_cpu_vector_level(void) { return cpu_vec_level_name(); }

gnr_status gnr_cpu_set_vector_level(const char *name)
{
    int best = best_level();
    for (int l = 0; l <= CPU_VEC_AVX512; l++) {
        if (strcmp(name, level_names[l]) != 0) continue;
        if (l > best)
            return gnr_error(GNR_ERR_VALUE, "vector level %s: this CPU has at most %s", name, level_names[best]);
        __atomic_store_n(&chosen, l, __ATOMIC_RELAXED);
        return GNR_OK;
    }
    return gnr_error(GNR_ERR_VALUE, "vector level %s: expected baseline, avx2 or avx512", name);
}

/* exp(x): x = n ln2 + r, exp(r) by Cephes' polynomial on |r| <= ln2 / 2,
 * times 2^n from the exponent bits; clamped to [EXP_MIN, EXP_MAX]. The
 * constants are shared by all three versions, so they compute one function
 * (ln 2 split in two for an exact n ln2). */
#define EXP_MIN (-87.3f)
#define EXP_MAX 88.0f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO 2.12194440e-4f /* ln 2 = EXP_LN2_HI - EXP_LN2_LO */
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

/* 1 + erf(u): |u| <= ERF_T, 1 + u P(u^2); beyond, erfc(|u|) = exp(Q(|u|))
 * and 1 + erf(u) = 2 - erfc(u) above, erfc(-u) below (no cancellation), 0
 * below -ERF_TAIL (erfc(4) = 1.5e-8: the float 1 + erf(u) is 0 there, and 2
 * above). P and Q: Chebyshev least-squares fits (degrees 6 and 8) of
 * erf(x) / x in x^2 on [0, ERF_T^2] and of log erfc on [ERF_T, ERF_TAIL],
 * errors 2e-10 and 1.2e-8 before float rounding; in float, erf within 3 ulp
 * of the correctly rounded value on [-6, 6]. */
#define ERF_T 0.875f
#define ERF_TAIL 4.0f
/* highest degree first, as Horner's rule takes them */
static const float ERF_P[] = {8.69466886e-05f, -8.21556107e-04f, 5.20713447e-03f, -2.68617399e-02f,
                              1.12837358e-01f, -3.76126363e-01f, 1.12837917e+00f};
static const float ERF_Q[] = {1.60542268e-06f, -4.54148595e-05f, 5.91243855e-04f, -4.73285914e-03f, 2.63431597e-02f,
                              -1.09939135e-01f, -6.31979923e-01f, -1.13014085e+00f, 2.96660266e-04f};
#define ERF_NP ((int)(sizeof ERF_P / sizeof ERF_P[0]))
#define ERF_NQ ((int)(sizeof ERF_Q / sizeof ERF_Q[0]))
#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* ------------------------------------------------------------ baseline --- */

/* The baseline is written so the compiler vectorises it (a libm expf call
 * would not be); within 1 ulp of glibc's expf on [-87, 10] without FMA. */
__attribute__((optimize("no-trapping-math"))) static inline float exp_poly(float x)
{
    x = x > EXP_MIN ? x : EXP_MIN;
    x = x < EXP_MAX ? x : EXP_MAX;
    float fx = x * EXP_LOG2E + 0.5f;
    float fn = (float)(int32_t)fx;
    fn = fn > fx ? fn - 1.0f : fn; /* floor */
    int32_t n = (int32_t)fn;
    float r = x - fn * EXP_LN2_HI + fn * EXP_LN2_LO;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    p = p * r * r + r + 1.0f;
    int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Compiled without -ftrapping-math (the default), which otherwise stops GCC
 * vectorising the float-to-int conversion; no FP exception flags are read
 * anywhere, so the results are the same. */
__attribute__((noinline, optimize("no-trapping-math"))) static float exp_sum_baseline(const float *x, float *y,
                                                                                     int64_t n, float shift)
{
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        float e = exp_poly(x[j] - shift);
        y[j] = e;
        sum += e;
    }
    return sum;
}

__attribute__((optimize("no-trapping-math"))) static inline float one_plus_erf(float u)
{
    float t = u < 0.0f ? -u : u, s = u * u;
    float p = ERF_P[0];
    for (int i = 1; i < ERF_NP; i++) p = p * s + ERF_P[i];
    float tq = t < ERF_TAIL ? t : ERF_TAIL;
    float q = ERF_Q[0];
    for (int i = 1; i < ERF_NQ; i++) q = q * tq + ERF_Q[i];
    float c = exp_poly(q); /* erfc(|u|) */
    float big = u > 0.0f ? 2.0f - c : u < -ERF_TAIL ? 0.0f : c;
    return t <= ERF_T ? 1.0f + u * p : big;
}

__attribute__((noinline, optimize("no-trapping-math"))) static void geglu_baseline(const float *a, const float *g,
                                                                                  float *y, int64_t n)
{
#pragma omp simd
    for (int64_t j = 0; j < n; j++) y[j] = a[j] * (0.5f * g[j] * one_plus_erf(g[j] * INV_SQRT2));
}

__attribute__((noinline, optimize("no-trapping-math"))) static void geglu_backward_baseline(
    const float *a, const float *g, const float *dy, float *da, float *dg, int64_t n)
{
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        float x = g[j], phi2 = 0.5f * one_plus_erf(x * INV_SQRT2); /* Phi(x) */
        da[j] += dy[j] * (x * phi2);
        dg[j] += dy[j] * a[j] * (phi2 + x * INV_SQRT_2PI * exp_poly(-0.5f * x * x));
    }
}

__attribute__((noinline, optimize("no-trapping-math"))) static void silu_baseline(const float *x, float *y, int64_t n)
{
#pragma omp simd
    for (int64_t j = 0; j < n; j++) y[j] = x[j] / (1.0f + exp_poly(-x[j]));
}

__attribute__((noinline, optimize("no-trapping-math"))) static void silu_backward_baseline(const float *x,
                                                                                          const float *dy,
                                                                                          float *dx, int64_t n)
{
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
        float s = 1.0f / (1.0f + exp_poly(-x[j]));
        dx[j] += dy[j] * (s * (1.0f + x[j] * (1.0f - s)));
    }
}

static float max_baseline(const float *x, int64_t n)
{
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* The column kernels walk a block row by row, each row's columns side by
 * side in vectors, so each column's max and sum run down its rows in order. */
static void max_cols_baseline(const float *x, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ld;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) m[c] = xr[c] > m[c] ? xr[c] : m[c];
    }
}

__attribute__((noinline, optimize("no-trapping-math"))) static void exp_cols_baseline(float *x, int64_t rows,
                                                                                     int64_t cols, int64_t ld,
                                                                                     const float *shift, float *sum)
{
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * ld;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) {
            float e = exp_poly(xr[c] - shift[c]);
            xr[c] = e;
            sum[c] += e;
        }
    }
}

#if GNR_VEC_X86
/* --------------------------------------------------------------- AVX2 --- */

#define AVX2 GNR_TARGET_AVX2

AVX2 static inline __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)), _mm256_set1_ps(EXP_MAX));
    __m256 fn = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(EXP_LOG2E), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fmadd_ps(fn, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fn), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* the 8 lanes summed in a fixed order */
AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static float exp_sum_avx2(const float *x, float *y, int64_t n, float shift)
{
    __m256 sh = _mm256_set1_ps(shift), acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), sh));
        _mm256_storeu_ps(y + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (j < n) { /* the tail through one padded vector, its extra lanes dropped */
        float t[8];
        int64_t rest = n - j;
        for (int i = 0; i < 8; i++) t[i] = i < rest ? x[j + i] - shift : -INFINITY;
        __m256 e = exp8(_mm256_loadu_ps(t));
        _mm256_storeu_ps(t, e);
        for (int64_t i = 0; i < rest; i++) y[j + i] = t[i];
        for (int i = (int)rest; i < 8; i++) t[i] = 0.0f;
        acc = _mm256_add_ps(acc, _mm256_loadu_ps(t));
    }
    return hsum8(acc);
}

/* one_plus_erf, 8 lanes */
AVX2 static inline __m256 one_plus_erf8(__m256 u)
{
    __m256 t = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), u), s = _mm256_mul_ps(u, u);
    __m256 p = _mm256_set1_ps(ERF_P[0]);
    for (int i = 1; i < ERF_NP; i++) p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(ERF_P[i]));
    __m256 tq = _mm256_min_ps(t, _mm256_set1_ps(ERF_TAIL));
    __m256 q = _mm256_set1_ps(ERF_Q[0]);
    for (int i = 1; i < ERF_NQ; i++) q = _mm256_fmadd_ps(q, tq, _mm256_set1_ps(ERF_Q[i]));
    __m256 c = exp8(q), zero = _mm256_setzero_ps();
    __m256 below = _mm256_blendv_ps(c, zero, _mm256_cmp_ps(u, _mm256_set1_ps(-ERF_TAIL), _CMP_LT_OQ));
    __m256 big = _mm256_blendv_ps(below, _mm256_sub_ps(_mm256_set1_ps(2.0f), c), _mm256_cmp_ps(u, zero, _CMP_GT_OQ));
    __m256 small = _mm256_fmadd_ps(u, p, _mm256_set1_ps(1.0f));
    return _mm256_blendv_ps(big, small, _mm256_cmp_ps(t, _mm256_set1_ps(ERF_T), _CMP_LE_OQ));
}

AVX2 static void geglu_avx2(const float *a, const float *g, float *y, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 x = _mm256_loadu_ps(g + j);
        __m256 gelu = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x),
                                    one_plus_erf8(_mm256_mul_ps(x, _mm256_set1_ps(INV_SQRT2))));
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(a + j), gelu));
    }
    if (j < n) geglu_baseline(a + j, g + j, y + j, n - j);
}

AVX2 static void geglu_backward_avx2(const float *a, const float *g, const float *dy, float *da, float *dg,
                                     int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 x = _mm256_loadu_ps(g + j), d = _mm256_loadu_ps(dy + j);
        __m256 phi2 = _mm256_mul_ps(_mm256_set1_ps(0.5f), one_plus_erf8(_mm256_mul_ps(x, _mm256_set1_ps(INV_SQRT2))));
        __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(x, x)));
        __m256 grad = _mm256_fmadd_ps(_mm256_mul_ps(x, _mm256_set1_ps(INV_SQRT_2PI)), e, phi2);
        _mm256_storeu_ps(da + j, _mm256_fmadd_ps(d, _mm256_mul_ps(x, phi2), _mm256_loadu_ps(da + j)));
        _mm256_storeu_ps(dg + j,
                         _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_loadu_ps(a + j)), grad, _mm256_loadu_ps(dg + j)));
    }
    if (j < n) geglu_backward_baseline(a + j, g + j, dy + j, da + j, dg + j, n - j);
}

AVX2 static void silu_avx2(const float *x, float *y, int64_t n)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
        _mm256_storeu_ps(y + j, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    }
    if (j < n) silu_baseline(x + j, y + j, n - j);
}

AVX2 static void silu_backward_avx2(const float *x, const float *dy, float *dx, int64_t n)
{
    int64_t j = 0;
    __m256 one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
        __m256 grad = _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
        _mm256_storeu_ps(dx + j, _mm256_fmadd_ps(_mm256_loadu_ps(dy + j), grad, _mm256_loadu_ps(dx + j)));
    }
    if (j < n) silu_backward_baseline(x + j, dy + j, dx + j, n - j);
}

AVX2 static float max_avx2(const float *x, int64_t n)
{
    __m256 m = _mm256_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
    float t[8], mx = -INFINITY;
    _mm256_storeu_ps(t, m);
    for (int i = 0; i < 8; i++) mx = t[i] > mx ? t[i] : mx;
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* Groups of 32 columns (4 vectors, independent chains); the last columns
 * short of a vector by the baseline, as the other AVX2 kernels' tails. */
AVX2 static void max_cols_avx2(const float *x, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    int64_t c0 = 0;
    while (c0 + 8 <= cols) {
        int nv = (int)((cols - c0) / 8 < 4 ? (cols - c0) / 8 : 4);
        __m256 acc[4];
        for (int v = 0; v < nv; v++) acc[v] = _mm256_loadu_ps(m + c0 + 8 * v);
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) acc[v] = _mm256_max_ps(acc[v], _mm256_loadu_ps(x + r * ld + c0 + 8 * v));
        for (int v = 0; v < nv; v++) _mm256_storeu_ps(m + c0 + 8 * v, acc[v]);
        c0 += 8 * nv;
    }
    if (c0 < cols) max_cols_baseline(x + c0, rows, cols - c0, ld, m + c0);
}

AVX2 static void exp_cols_avx2(float *x, int64_t rows, int64_t cols, int64_t ld, const float *shift, float *sum)
{
    int64_t c0 = 0;
    while (c0 + 8 <= cols) {
        int nv = (int)((cols - c0) / 8 < 4 ? (cols - c0) / 8 : 4);
        __m256 sh[4], acc[4];
        for (int v = 0; v < nv; v++) {
            sh[v] = _mm256_loadu_ps(shift + c0 + 8 * v);
            acc[v] = _mm256_loadu_ps(sum + c0 + 8 * v);
        }
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                float *p = x + r * ld + c0 + 8 * v;
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), sh[v]));
                _mm256_storeu_ps(p, e);
                acc[v] = _mm256_add_ps(acc[v], e);
            }
        for (int v = 0; v < nv; v++) _mm256_storeu_ps(sum + c0 + 8 * v, acc[v]);
        c0 += 8 * nv;
    }
    if (c0 < cols) exp_cols_baseline(x + c0, rows, cols - c0, ld, shift + c0, sum + c0);
}

/* ------------------------------------------------------------ AVX-512 --- */

#define AVX512 GNR_TARGET_AVX512

AVX512 static inline __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)), _mm512_set1_ps(EXP_MAX));
    __m512 fn = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(EXP_LOG2E), _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fmadd_ps(fn, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    /* p 2^n by scalef, the same float as the exponent bits' product of the
     * other versions (n is within the normal range after the clamp), and
     * three instructions fewer: 15 % off the attention forward's exponentials */
    return _mm512_scalef_ps(p, fn);
}

static inline __mmask16 tail_mask(int64_t rest) { return rest >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rest) - 1u); }

AVX512 static float exp_sum_avx512(const float *x, float *y, int64_t n, float shift)
{
    __m512 sh = _mm512_set1_ps(shift), acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), sh));
        _mm512_mask_storeu_ps(y + j, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

/* one_plus_erf, 16 lanes */
AVX512 static inline __m512 one_plus_erf16(__m512 u)
{
    __m512 t = _mm512_abs_ps(u), s = _mm512_mul_ps(u, u);
    __m512 p = _mm512_set1_ps(ERF_P[0]);
    for (int i = 1; i < ERF_NP; i++) p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(ERF_P[i]));
    __m512 tq = _mm512_min_ps(t, _mm512_set1_ps(ERF_TAIL));
    __m512 q = _mm512_set1_ps(ERF_Q[0]);
    for (int i = 1; i < ERF_NQ; i++) q = _mm512_fmadd_ps(q, tq, _mm512_set1_ps(ERF_Q[i]));
    __m512 c = exp16(q), zero = _mm512_setzero_ps();
    __m512 big = _mm512_mask_mov_ps(c, _mm512_cmp_ps_mask(u, _mm512_set1_ps(-ERF_TAIL), _CMP_LT_OQ), zero);
    big = _mm512_mask_mov_ps(big, _mm512_cmp_ps_mask(u, zero, _CMP_GT_OQ), _mm512_sub_ps(_mm512_set1_ps(2.0f), c));
    return _mm512_mask_mov_ps(big, _mm512_cmp_ps_mask(t, _mm512_set1_ps(ERF_T), _CMP_LE_OQ),
                              _mm512_fmadd_ps(u, p, _mm512_set1_ps(1.0f)));
}

AVX512 static void geglu_avx512(const float *a, const float *g, float *y, int64_t n)
{
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 x = _mm512_maskz_loadu_ps(m, g + j);
        __m512 gelu = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x),
                                    one_plus_erf16(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT2))));
        _mm512_mask_storeu_ps(y + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + j), gelu));
    }
}

AVX512 static void geglu_backward_avx512(const float *a, const float *g, const float *dy, float *da, float *dg,
                                         int64_t n)
{
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 x = _mm512_maskz_loadu_ps(m, g + j), d = _mm512_maskz_loadu_ps(m, dy + j);
        __m512 phi2 = _mm512_mul_ps(_mm512_set1_ps(0.5f), one_plus_erf16(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT2))));
        __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(x, x)));
        __m512 grad = _mm512_fmadd_ps(_mm512_mul_ps(x, _mm512_set1_ps(INV_SQRT_2PI)), e, phi2);
        _mm512_mask_storeu_ps(da + j, m, _mm512_fmadd_ps(d, _mm512_mul_ps(x, phi2), _mm512_maskz_loadu_ps(m, da + j)));
        _mm512_mask_storeu_ps(dg + j, m,
                              _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, a + j)), grad,
                                              _mm512_maskz_loadu_ps(m, dg + j)));
    }
}

AVX512 static void silu_avx512(const float *x, float *y, int64_t n)
{
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_mask_storeu_ps(y + j, m, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    }
}

AVX512 static void silu_backward_avx512(const float *x, const float *dy, float *dx, int64_t n)
{
    __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 v = _mm512_maskz_loadu_ps(m, x + j);
        __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        __m512 grad = _mm512_mul_ps(s, _mm512_fmadd_ps(v, _mm512_sub_ps(one, s), one));
        __m512 d = _mm512_maskz_loadu_ps(m, dy + j);
        _mm512_mask_storeu_ps(dx + j, m, _mm512_fmadd_ps(d, grad, _mm512_maskz_loadu_ps(m, dx + j)));
    }
}

AVX512 static float max_avx512(const float *x, int64_t n)
{
    __m512 ninf = _mm512_set1_ps(-INFINITY), m = ninf;
    for (int64_t j = 0; j < n; j += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, tail_mask(n - j), x + j));
    return _mm512_reduce_max_ps(m);
}
/* Groups of 64 columns (4 vectors, independent chains), masked at the end */
AVX512 static void max_cols_avx512(const float *x, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int64_t c0 = 0; c0 < cols; c0 += 64) {
        int nv = (int)((cols - c0 + 15) / 16 < 4 ? (cols - c0 + 15) / 16 : 4);
        __mmask16 mk[4];
        __m512 acc[4];
        for (int v = 0; v < nv; v++) {
            mk[v] = tail_mask(cols - c0 - 16 * v);
            acc[v] = _mm512_mask_loadu_ps(ninf, mk[v], m + c0 + 16 * v);
        }
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++)
                acc[v] = _mm512_max_ps(acc[v], _mm512_mask_loadu_ps(ninf, mk[v], x + r * ld + c0 + 16 * v));
        for (int v = 0; v < nv; v++) _mm512_mask_storeu_ps(m + c0 + 16 * v, mk[v], acc[v]);
    }
}

AVX512 static void exp_cols_avx512(float *x, int64_t rows, int64_t cols, int64_t ld, const float *shift, float *sum)
{
    for (int64_t c0 = 0; c0 < cols; c0 += 64) {
        int nv = (int)((cols - c0 + 15) / 16 < 4 ? (cols - c0 + 15) / 16 : 4);
        __mmask16 mk[4];
        __m512 sh[4], acc[4];
        for (int v = 0; v < nv; v++) {
            mk[v] = tail_mask(cols - c0 - 16 * v);
            sh[v] = _mm512_maskz_loadu_ps(mk[v], shift + c0 + 16 * v);
            acc[v] = _mm512_maskz_loadu_ps(mk[v], sum + c0 + 16 * v);
        }
        for (int64_t r = 0; r < rows; r++)
            for (int v = 0; v < nv; v++) {
                float *p = x + r * ld + c0 + 16 * v;
                __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk[v], p), sh[v]));
                _mm512_mask_storeu_ps(p, mk[v], e);
                acc[v] = _mm512_add_ps(acc[v], e);
            }
        for (int v = 0; v < nv; v++) _mm512_mask_storeu_ps(sum + c0 + 16 * v, mk[v], acc[v]);
    }
}
#endif /* GNR_VEC_X86 */

/* --------------------------------------------------------------- doors --- */

float cpu_vec_exp_sum(const float *x, float *y, int64_t n, float shift)
{
    switch (cpu_vec_level()) {
#if GNR_VEC_X86
    case CPU_VEC_AVX512: return exp_sum_avx512(x, y, n, shift);
    case CPU_VEC_AVX2: return exp_sum_avx2(x, y, n, shift);
#endif
    default: return exp_sum_baseline(x, y, n, shift);
    }
}

float gnr_cpu_vector_exp_sum(const float *x, float *y, int64_t n, float shift)
{
    return cpu_vec_exp_sum(x, y, n, shift);
}

/* The elementwise kernels' doors: the version of this CPU's level */
#if GNR_VEC_X86
#define VEC_DOOR(name, args)                                                                                         \
    switch (cpu_vec_level()) {                                                                                       \
    case CPU_VEC_AVX512: name##_avx512 args; break;                                                                  \
    case CPU_VEC_AVX2: name##_avx2 args; break;                                                                      \
    default: name##_baseline args;                                                                                   \
    }
#else
#define VEC_DOOR(name, args) name##_baseline args
#endif

void cpu_vec_geglu(const float *a, const float *g, float *y, int64_t n) { VEC_DOOR(geglu, (a, g, y, n)); }

void cpu_vec_geglu_backward(const float *a, const float *g, const float *dy, float *da, float *dg, int64_t n)
{
    VEC_DOOR(geglu_backward, (a, g, dy, da, dg, n));
}

void cpu_vec_silu(const float *x, float *y, int64_t n) { VEC_DOOR(silu, (x, y, n)); }

void cpu_vec_silu_backward(const float *x, const float *dy, float *dx, int64_t n)
{
    VEC_DOOR(silu_backward, (x, dy, dx, n));
}

float cpu_vec_max(const float *x, int64_t n)
{
    switch (cpu_vec_level()) {
#if GNR_VEC_X86
    case CPU_VEC_AVX512: return max_avx512(x, n);
    case CPU_VEC_AVX2: return max_avx2(x, n);
#endif
    default: return max_baseline(x, n);
    }
}

void cpu_vec_max_cols(const float *x, int64_t rows, int64_t cols, int64_t ld, float *m)
{
    VEC_DOOR(max_cols, (x, rows, cols, ld, m));
}

void cpu_vec_exp_cols(float *x, int64_t rows, int64_t cols, int64_t ld, const float *shift, float *sum)
{
    VEC_DOOR(exp_cols, (x, rows, cols, ld, shift, sum));
}
