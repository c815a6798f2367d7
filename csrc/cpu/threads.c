/* The build and its threads: which BLAS, whether OpenMP, how many threads.
 *
 * One process-wide thread count drives both OpenMP regions (each region names
 * it explicitly, so it holds on whichever thread calls an op) and OpenBLAS. */
#include <stdio.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gnr.h"
#include "cpu/cpu_ops.h"

static int num_threads = 0; /* 0: not chosen yet, all cores */

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
    num_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    /* OpenBLAS stays on the calling thread; gnr_cpu_sgemm splits products
     * over the OpenMP threads (blas.c says why). */
    scipy_openblas_set_num_threads(1);
}

int gnr_get_num_threads(void)
{
    if (num_threads > 0) return num_threads;
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

int gnr_cpu_threads(const gnr_ctx *ctx)
{
    (void)ctx;
    return gnr_get_num_threads();
}
