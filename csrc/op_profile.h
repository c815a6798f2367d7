/* Per-op call counts and times, process-wide, for gnr.profile().
 *
 * While a profile runs, every op dispatched by ops.c adds one call and its
 * time to the row of (op, device). On a device with a synchronize function
 * (CUDA), the dispatcher synchronises before and after the op, so the time
 * is the op's own device time plus its launch, not the queue ahead of it:
 * a profiled run is slower than a plain one, and its op times are the
 * ones to compare. With no profile running, an op pays one relaxed atomic
 * load. Counters are atomic, so ops on several threads (several models)
 * add up. */
#ifndef GNR_OP_PROFILE_H
#define GNR_OP_PROFILE_H

#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"

/* The index of each op of ops.def, in its order. */
enum {
#define GNR_OP(name, params, args) GNR_OP_INDEX_##name,
#include "ops.def"
#undef GNR_OP
    GNR_OP_COUNT
};

typedef struct {
    const char *op;     /* the op's name in ops.def */
    gnr_device device;
    int64_t calls;
    double seconds;
} gnr_op_profile_row;

/* Non-zero while a profile runs. */
int gnr_op_profile_running(void);
/* Clears the counters and starts counting; GNR_ERR_VALUE if a profile is
 * already running (profiles do not nest). */
gnr_status gnr_op_profile_start(void);
/* Stops counting; the counters keep what was counted. */
void gnr_op_profile_stop(void);
/* Writes the rows with at least one call, in ops.def order, CPU first, up
 * to `cap`; returns how many there are (may exceed cap). */
int gnr_op_profile_rows(gnr_op_profile_row *rows, int cap);
/* Adds one call of `ns` nanoseconds to (op, device). */
void gnr_op_profile_add(int op, gnr_device device, int64_t ns);
/* A monotonic clock in nanoseconds. */
int64_t gnr_op_profile_now_ns(void);

#endif
