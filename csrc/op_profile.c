/* Per-op call counts and times (op_profile.h). */
#include "op_profile.h"

#include <time.h>

#define N_DEVICES 2 /* GNR_CPU, GNR_CUDA */

static const char *const op_names[GNR_OP_COUNT] = {
#define GNR_OP(name, params, args) #name,
#include "ops.def"
#undef GNR_OP
};

static int running;
static int64_t calls[N_DEVICES][GNR_OP_COUNT];
static int64_t nanos[N_DEVICES][GNR_OP_COUNT];

int gnr_op_profile_running(void) { return __atomic_load_n(&running, __ATOMIC_RELAXED); }

gnr_status gnr_op_profile_start(void)
{
    int expected = 0;
    /* Claimed before the counters are cleared, so two starts cannot both clear. */
    if (!__atomic_compare_exchange_n(&running, &expected, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return gnr_error(GNR_ERR_VALUE, "a profile is already running: profiles do not nest");
    for (int d = 0; d < N_DEVICES; d++)
        for (int i = 0; i < GNR_OP_COUNT; i++) {
            __atomic_store_n(&calls[d][i], 0, __ATOMIC_RELAXED);
            __atomic_store_n(&nanos[d][i], 0, __ATOMIC_RELAXED);
        }
    __atomic_store_n(&running, 1, __ATOMIC_RELEASE);
    return GNR_OK;
}

void gnr_op_profile_stop(void) { __atomic_store_n(&running, 0, __ATOMIC_RELEASE); }

void gnr_op_profile_add(int op, gnr_device device, int64_t ns)
{
    if (op < 0 || op >= GNR_OP_COUNT || (int)device < 0 || (int)device >= N_DEVICES) return;
    /* A start that raced this op's end may have just cleared the row: the
     * call then lands in the new profile, which is where it ended. */
    if (__atomic_load_n(&running, __ATOMIC_ACQUIRE) != 1) return;
    __atomic_fetch_add(&calls[device][op], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&nanos[device][op], ns, __ATOMIC_RELAXED);
}

int gnr_op_profile_rows(gnr_op_profile_row *rows, int cap)
{
    int n = 0;
    for (int d = 0; d < N_DEVICES; d++)
        for (int i = 0; i < GNR_OP_COUNT; i++) {
            int64_t c = __atomic_load_n(&calls[d][i], __ATOMIC_RELAXED);
            if (c == 0) continue;
            if (n < cap)
                rows[n] = (gnr_op_profile_row){op_names[i], (gnr_device)d, c,
                                               (double)__atomic_load_n(&nanos[d][i], __ATOMIC_RELAXED) * 1e-9};
            n++;
        }
    return n;
}

int64_t gnr_op_profile_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
