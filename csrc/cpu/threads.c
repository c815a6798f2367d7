/* The build and its threads: which BLAS, whether OpenMP, how many threads.
 *
 * A context carries its own thread count (ctx->nthreads, fixed when its model
 * is made), so two models in one process each keep theirs: every OpenMP
 * region names its count explicitly, from gnr_cpu_threads(ctx). The process
 * keeps only a default for contexts made later. OpenBLAS stays on one thread
 * (gemm.c says why); cpu_gemm splits products over the context's
 * threads. */
#include <stdio.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gnr.h"
#include "cpu/cpu_ops.h"

static int default_threads = 0; /* 0: not chosen yet, all cores */

const char *gnr_blas_name(void)
{
    static char name[256];
    if (!name[0]) snprintf(name, sizeof name, "%s", scipy_openblas_get_config());
    return name;
}

int gnr_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void gnr_set_num_threads(int n)
{
    if (n < 1) n = 1;
    default_threads = n;
    /* The module sets the default when it loads, so OpenBLAS is on one
     * thread before the first product and never starts a pool of its own. */
    scipy_openblas_set_num_threads(1);
}

int gnr_get_num_threads(void)
{
    if (default_threads > 0) return default_threads;
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

int gnr_cpu_threads(const gnr_ctx *ctx)
{
    /* A context made for a single op call (no model) has no count of its own
     * and runs on the process default. */
    return ctx->nthreads > 0 ? ctx->nthreads : gnr_get_num_threads();
}

int gnr_cpu_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
