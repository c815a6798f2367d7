/* Dispatch of every op (ops.def) to the backend of the context's device
 * (backend.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "op_checks.h"
#include "op_profile.h"

static const gnr_backend *cuda_table = NULL;

const gnr_backend *gnr_backend_for(gnr_device dev)
{
    return dev == GNR_CPU ? &gnr_cpu_backend : cuda_table;
}

gnr_status gnr_register_backend(gnr_device dev, const gnr_backend *table)
{
    if (dev != GNR_CUDA) return gnr_error(GNR_ERR_VALUE, "only the CUDA backend can be registered");
    if (!table || table->abi != GNR_BACKEND_ABI)
        return gnr_error(GNR_ERR_VALUE, "CUDA backend ABI %d does not match the engine's %d: rebuild gnr",
                         table ? table->abi : -1, GNR_BACKEND_ABI);
    cuda_table = table;
    return GNR_OK;
}

int gnr_has_cuda(void) { return cuda_table != NULL; }

static gnr_status no_backend(const gnr_ctx *ctx, const char *op)
{
    return gnr_error(GNR_ERR_UNSUPPORTED, "%s: no %s backend is loaded", op, gnr_device_name(ctx->device));
}

/* A backend loaded as its own module records failures in its own error
 * state: copy the message into the engine's so callers see it. */
static gnr_status backend_status(const gnr_backend *b, gnr_status st)
{
    if (st != GNR_OK && b->last_error && b->last_error != gnr_last_error) {
        const char *msg = b->last_error();
        gnr_error(st, "%s", msg && msg[0] ? msg : "CUDA backend error (no message)");
    }
    return st;
}

/* GNR_CUDA_SYNC=1 (a debugging mode): every op on a device is followed by
 * a synchronisation, so a failure that surfaces asynchronously (a fault in
 * a kernel, found at the next synchronisation) is reported by the op that
 * caused it. */
static int sync_after_each_op(void)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("GNR_CUDA_SYNC");
        on = e && *e && strcmp(e, "0") != 0;
    }
    return on;
}

static gnr_status op_done(const gnr_backend *b, gnr_ctx *ctx, const char *op, gnr_status st)
{
    st = backend_status(b, st);
    if (st != GNR_OK || ctx->device == GNR_CPU || !b->synchronize || !sync_after_each_op()) return st;
    st = backend_status(b, b->synchronize(ctx));
    if (st != GNR_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gnr_last_error());
        gnr_error(st, "op %s failed on %s (GNR_CUDA_SYNC): %s", op, gnr_device_name(ctx->device), msg);
    }
    return st;
}

/* While a profile runs (op_profile.h): a device's queue is drained before
 * the op and after it, so the time counted is the op's own. */
static gnr_status profile_begin(const gnr_backend *b, gnr_ctx *ctx, int64_t *t0)
{
    if (ctx->device != GNR_CPU && b->synchronize) GNR_TRY(backend_status(b, b->synchronize(ctx)));
    *t0 = gnr_op_profile_now_ns();
    return GNR_OK;
}

static gnr_status profile_end(const gnr_backend *b, gnr_ctx *ctx, int op, int64_t t0, gnr_status st)
{
    if (st == GNR_OK && ctx->device != GNR_CPU && b->synchronize) st = backend_status(b, b->synchronize(ctx));
    if (st == GNR_OK) gnr_op_profile_add(op, ctx->device, gnr_op_profile_now_ns() - t0);
    return st;
}

/* gnr_<name> for every op of ops.def: the table of the context's device,
 * the op's arguments checked (op_checks.c), then the op's entry in the
 * table, timed when a profile runs. */
#define GNR_OP(name, params, args)                                                                  \
    gnr_status gnr_##name params                                                                    \
    {                                                                                               \
        const gnr_backend *b_ = gnr_backend_for(ctx->device);                                       \
        if (!b_ || !b_->name) return no_backend(ctx, #name);                                        \
        GNR_TRY(gnr_check_##name args);                                                             \
        if (!gnr_op_profile_running()) return op_done(b_, ctx, #name, b_->name args);               \
        int64_t t0_ = 0;                                                                            \
        GNR_TRY(profile_begin(b_, ctx, &t0_));                                                      \
        return profile_end(b_, ctx, GNR_OP_INDEX_##name, t0_, op_done(b_, ctx, #name, b_->name args)); \
    }
#include "ops.def"
#undef GNR_OP
