/* GroupNorm and LayerNorm, forward and backward.
 *
 * Both normalise "segments" of contiguous elements: a group of C/G channels
 * times the spatial size for GroupNorm, one row for LayerNorm. Element e of a
 * segment uses the affine parameter gamma[cbase + e / span] (span = spatial
 * size for GroupNorm, 1 for LayerNorm). Statistics are two-pass in double,
 * one segment per loop iteration: deterministic for any thread count. Each
 * sum runs in NORM_LANES independent partial sums (element e of a run in
 * lane e mod NORM_LANES) added in a fixed order at the end: the same result
 * on every run, and the compiler vectorises it (one chain of dependent
 * double additions made the norms 8 % of a gradient pass at 256 x 256). */
#include <math.h>

#include "cpu/cpu_ops.h"
#include "cpu/simd.h"

typedef struct {
    int64_t segments, len; /* number and length of segments */
    int64_t span;          /* elements sharing one gamma entry */
    int64_t per_seg;       /* gamma entries per segment; segment s starts at (s % segs_per_row) * per_seg */
    int64_t segs_per_row;  /* segments per gamma period (G for GroupNorm, 1 for LayerNorm) */
} norm_geom;

#define NORM_LANES 8

static ALWAYS_INLINE double lanes_total(const double *acc)
{
    double t = 0.0;
    for (int l = 0; l < NORM_LANES; l++) t += acc[l];
    return t;
}

/* acc[l] += x[e] - shift (square: its square) over e = 0 .. n-1, lane l = e mod NORM_LANES */
static ALWAYS_INLINE void add_lanes(double *acc, const float *x, int64_t n, double shift, int square)
{
    int64_t e = 0;
    for (; e + NORM_LANES <= n; e += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++) {
            double d = x[e + l] - shift;
            acc[l] += square ? d * d : d;
        }
    for (int l = 0; e + l < n; l++) {
        double d = x[e + l] - shift;
        acc[l] += square ? d * d : d;
    }
}

static ALWAYS_INLINE void seg_stats(const float *x, int64_t len, float eps, double *mu, double *rstd)
{
    double acc[NORM_LANES] = {0};
    add_lanes(acc, x, len, 0.0, 0);
    double m = lanes_total(acc) / (double)len;
    double accv[NORM_LANES] = {0};
    add_lanes(accv, x, len, m, 1);
    double v = lanes_total(accv) / (double)len;
    *mu = m;
    *rstd = 1.0 / sqrt(v + (double)eps);
}

/* a1[l] += gh, a2[l] += gh * xhat over a run of n elements, gh = dy * gamma
 * (gamma[e] per element, or ga for the whole run), xhat = (x - mu) * rstd */
static ALWAYS_INLINE void add_grad_lanes(double *a1, double *a2, const float *dy, const float *x, int64_t n,
                                         const float *gamma, double ga, double mu, double rstd)
{
    int64_t e = 0;
    for (; e + NORM_LANES <= n; e += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++) {
            double gh = dy[e + l] * (gamma ? (double)gamma[e + l] : ga);
            a1[l] += gh;
            a2[l] += gh * ((x[e + l] - mu) * rstd);
        }
    for (int l = 0; e + l < n; l++) {
        double gh = dy[e + l] * (gamma ? (double)gamma[e + l] : ga);
        a1[l] += gh;
        a2[l] += gh * ((x[e + l] - mu) * rstd);
    }
}

/* The passes over a segment, compiled once per vector level
 * (CPU_VEC_VERSIONS): this file is otherwise built for the baseline, where
 * the double sums ran on 128-bit vectors, and a layer norm's rows (a gamma
 * entry per element) in a scalar loop. The norms of a gradient pass at 256
 * x 256 (SD 1.4, 2 threads, AVX-512) took 56 ms instead of 72, the layer
 * norms' forward half as long. */

/* y = (x - mu) * rstd * gamma + beta on segment s */
static ALWAYS_INLINE void forward_segment_body(const norm_geom *g, int64_t s, const float *x, const float *gamma,
                                               const float *beta, float eps, float *y)
{
    const float *xs = x + s * g->len;
    float *ys = y + s * g->len;
    double mu, rstd;
    seg_stats(xs, g->len, eps, &mu, &rstd);
    float fmu = (float)mu, frstd = (float)rstd;
    int64_t cbase = (s % g->segs_per_row) * g->per_seg;
    if (g->span == 1) { /* a gamma entry per element: one run the vectors can cross */
        for (int64_t e = 0; e < g->len; e++)
            ys[e] = (xs[e] - fmu) * frstd * (gamma ? gamma[cbase + e] : 1.0f) + (beta ? beta[cbase + e] : 0.0f);
        return;
    }
    for (int64_t ch = 0; ch < g->len / g->span; ch++) {
        float ga = gamma ? gamma[cbase + ch] : 1.0f, be = beta ? beta[cbase + ch] : 0.0f;
        const float *xc = xs + ch * g->span;
        float *yc = ys + ch * g->span;
        for (int64_t e = 0; e < g->span; e++) yc[e] = (xc[e] - fmu) * frstd * ga + be;
    }
}
CPU_VEC_VERSIONS(forward_segment,
                 (const norm_geom *g, int64_t s, const float *x, const float *gamma, const float *beta, float eps,
                  float *y),
                 (g, s, x, gamma, beta, eps, y))

static void norm_forward(int nt, const norm_geom *g, const float *x, const float *gamma, const float *beta,
                         float eps, float *y)
{
    void (*segment)(const norm_geom *, int64_t, const float *, const float *, const float *, float, float *) =
        CPU_VEC_PICK(forward_segment);
#pragma omp parallel for num_threads(nt) if (g->segments * g->len > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t s = 0; s < g->segments; s++) segment(g, s, x, gamma, beta, eps, y);
}

/* dx += rstd * (gh - mean(gh) - xhat * mean(gh * xhat)) on segment s,
 * gh = dy * gamma, xhat = (x - mu) * rstd */
static ALWAYS_INLINE void backward_segment_body(const norm_geom *g, int64_t s, const float *dy, const float *x,
                                                const float *gamma, float eps, float *dx)
{
    const float *xs = x + s * g->len, *ds = dy + s * g->len;
    float *dxs = dx + s * g->len;
    double mu, rstd;
    seg_stats(xs, g->len, eps, &mu, &rstd);
    int64_t cbase = (s % g->segs_per_row) * g->per_seg;
    double a1[NORM_LANES] = {0}, a2[NORM_LANES] = {0};
    if (g->span == 1) /* a gamma entry per element: the segment is one run */
        add_grad_lanes(a1, a2, ds, xs, g->len, gamma ? gamma + cbase : NULL, 1.0, mu, rstd);
    else
        for (int64_t ch = 0; ch < g->len / g->span; ch++)
            add_grad_lanes(a1, a2, ds + ch * g->span, xs + ch * g->span, g->span, NULL,
                           gamma ? gamma[cbase + ch] : 1.0, mu, rstd);
    double m1 = lanes_total(a1) / (double)g->len, m2 = lanes_total(a2) / (double)g->len;
    if (g->span == 1) {
        for (int64_t e = 0; e < g->len; e++) {
            double xhat = (xs[e] - mu) * rstd;
            dxs[e] += (float)(rstd * (ds[e] * (gamma ? (double)gamma[cbase + e] : 1.0) - m1 - xhat * m2));
        }
        return;
    }
    for (int64_t ch = 0; ch < g->len / g->span; ch++) {
        double ga = gamma ? gamma[cbase + ch] : 1.0;
        for (int64_t e = ch * g->span; e < (ch + 1) * g->span; e++) {
            double xhat = (xs[e] - mu) * rstd;
            dxs[e] += (float)(rstd * (ds[e] * ga - m1 - xhat * m2));
        }
    }
}
CPU_VEC_VERSIONS(backward_segment,
                 (const norm_geom *g, int64_t s, const float *dy, const float *x, const float *gamma, float eps,
                  float *dx),
                 (g, s, dy, x, gamma, eps, dx))

static void norm_backward(int nt, const norm_geom *g, const float *dy, const float *x, const float *gamma,
                          float eps, float *dx)
{
    void (*segment)(const norm_geom *, int64_t, const float *, const float *, const float *, float, float *) =
        CPU_VEC_PICK(backward_segment);
#pragma omp parallel for num_threads(nt) if (g->segments * g->len > GNR_CPU_PAR_MIN) schedule(static)
    for (int64_t s = 0; s < g->segments; s++) segment(g, s, dy, x, gamma, eps, dx);
}

/* x: N x C x (spatial...), groups dividing C (checked in op_checks.c) */
static void group_geom(const gnr_tensor *x, int groups, norm_geom *g)
{
    int64_t c = x->shape[1];
    int64_t spatial = c ? gnr_numel(x) / (x->shape[0] * c) : 0;
    g->segments = x->shape[0] * groups;
    g->len = (c / groups) * spatial;
    g->span = spatial ? spatial : 1;
    g->per_seg = c / groups;
    g->segs_per_row = groups;
}

static void layer_geom(const gnr_tensor *x, norm_geom *g)
{
    int64_t c = x->shape[x->ndim - 1];
    g->segments = c ? gnr_numel(x) / c : 0;
    g->len = c;
    g->span = 1;
    g->per_seg = 0;
    g->segs_per_row = 1;
}

/* GroupNorm: y = (x - mu_g) / sqrt(var_g + eps) * gamma[c] + beta[c] */
gnr_status cpu_group_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                  const gnr_tensor *beta, int groups, float eps, gnr_tensor *y)
{
    norm_geom g;
    group_geom(x, groups, &g);
    norm_forward(gnr_cpu_threads(ctx), &g, gnr_f32(x), gamma ? gnr_f32(gamma) : NULL, beta ? gnr_f32(beta) : NULL,
                 eps, gnr_f32(y));
    return GNR_OK;
}

/* GroupNorm backward (stats recomputed from x):
 * dx += rstd * (gh - mean_g(gh) - xhat * mean_g(gh * xhat)) */
gnr_status cpu_group_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                   const gnr_tensor *gamma, int groups, float eps, gnr_tensor *dx)
{
    norm_geom g;
    group_geom(x, groups, &g);
    norm_backward(gnr_cpu_threads(ctx), &g, gnr_f32(dy), gnr_f32(x), gamma ? gnr_f32(gamma) : NULL, eps,
                  gnr_f32(dx));
    return GNR_OK;
}

/* LayerNorm over the last dim: y = (x - mu_row) / sqrt(var_row + eps) * gamma + beta */
gnr_status cpu_layer_norm_forward(gnr_ctx *ctx, const gnr_tensor *x, const gnr_tensor *gamma,
                                  const gnr_tensor *beta, float eps, gnr_tensor *y)
{
    norm_geom g;
    layer_geom(x, &g);
    norm_forward(gnr_cpu_threads(ctx), &g, gnr_f32(x), gamma ? gnr_f32(gamma) : NULL, beta ? gnr_f32(beta) : NULL,
                 eps, gnr_f32(y));
    return GNR_OK;
}

/* LayerNorm backward: the GroupNorm formula with one row as the group. */
gnr_status cpu_layer_norm_backward(gnr_ctx *ctx, const gnr_tensor *dy, const gnr_tensor *x,
                                   const gnr_tensor *gamma, float eps, gnr_tensor *dx)
{
    norm_geom g;
    layer_geom(x, &g);
    norm_backward(gnr_cpu_threads(ctx), &g, gnr_f32(dy), gnr_f32(x), gamma ? gnr_f32(gamma) : NULL, eps,
                  gnr_f32(dx));
    return GNR_OK;
}
