#include "job.h"

#include <stdlib.h>

gnr_status job_poll(gnr_model *m, const gnr_hooks *hooks)
{
    if (hooks && hooks->poll && hooks->poll(hooks->user)) return gnr_error(GNR_ERR_CANCELLED, "cancelled");
    return gnr_check_cancel(&m->ctx);
}

gnr_status job_step(gnr_model *m, const gnr_hooks *hooks, int phase, int done, int total, int guided,
                    const gnr_tensor *latent)
{
    if (!hooks || !hooks->step) return GNR_OK;
    float *host = NULL;
    if (hooks->want_latent && latent) {
        host = malloc(gnr_nbytes(latent));
        if (!host) return gnr_error(GNR_ERR_NOMEM, "out of host memory for the progress latent");
        gnr_status st = gnr_download(&m->ctx, latent, host);
        if (st != GNR_OK) {
            free(host);
            return st;
        }
    }
    int stop = hooks->step(hooks->user, phase, done, total, guided, host);
    free(host);
    return stop ? gnr_error(GNR_ERR_CANCELLED, "cancelled") : GNR_OK;
}

gnr_status job_state(gnr_model *m, int ndim, const int64_t *shape, gnr_tensor *out)
{
    gnr_tensor t = gnr_tensor_view(NULL, GNR_F32, m->ctx.device, ndim, shape);
    GNR_TRY(gnr_arena_alloc(m->state, gnr_nbytes(&t), &t.data));
    *out = t;
    return GNR_OK;
}

gnr_status job_unet(gnr_model *m, const gnr_tensor *z, int t, const gnr_tensor *c, gnr_capture *cap,
                    gnr_tape *tape, int checkpointing, gnr_tensor *leaf, gnr_tensor *eps)
{
    gnr_ctx *ctx = &m->ctx;
    gnr_tensor zin = *z, cin = *c, y;
    zin.gid = -1;
    cin.gid = -1;
    if (tape) {
        GNR_TRY(gnr_tape_leaf(tape, &zin));
        *leaf = zin;
        ctx->tape = tape;
        ctx->checkpointing = checkpointing;
    }
    gnr_status st = unet_forward(ctx, &m->unet, &zin, t, &cin, cap, &y);
    ctx->tape = NULL;
    ctx->checkpointing = 0;
    if (st == GNR_OK && eps) st = gnr_copy(ctx, &y, eps);
    if (!tape) gnr_arena_reset(ctx->arena);
    return st;
}
