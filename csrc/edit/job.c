#include "job.h"

#include <stdlib.h>
#include <string.h>

gnr_status job_begin(gnr_model *m, int h, int w, int ctx_len, int num_steps, job *j)
{
    GNR_TRY(gnr_check_latent_size(m, h, w));
    if (num_steps < 1 || num_steps > GNR_TRAIN_STEPS)
        return gnr_error(GNR_ERR_VALUE, "num_steps must be in [1, %d], got %d", GNR_TRAIN_STEPS, num_steps);
    GNR_TRY(gnr_pass_begin(m));
    const gnr_unet_config *u = &m->cfg.unet;
    *j = (job){.num_steps = num_steps,
               .latent = {1, u->in_channels, h, w},
               .context = {1, ctx_len, u->cross_attention_dim},
               .chain = {num_steps + 1, u->in_channels, h, w}};
    gnr_ddim_alphas_cumprod(j->abar);
    return GNR_OK;
}

gnr_tensor job_item(const gnr_tensor *stack, int ndim, const int64_t *shape, int i)
{
    gnr_tensor t = gnr_reshape(*stack, ndim, shape);
    t.data = (char *)stack->data + (size_t)i * gnr_nbytes(&t);
    return t;
}

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

gnr_status job_upload(gnr_model *m, int ndim, const int64_t *shape, const float *host, gnr_tensor *out)
{
    GNR_TRY(job_state(m, ndim, shape, out));
    return gnr_upload(&m->ctx, host, out);
}

gnr_status job_latents(gnr_model *m, const job *j, gnr_tensor *const *out)
{
    for (; *out; out++) GNR_TRY(job_state(m, 4, j->latent, *out));
    return GNR_OK;
}

gnr_status job_noise(gnr_model *m, const gnr_tensor *z, int t, const gnr_tensor *y, gnr_tensor *eps)
{
    if (m->cfg.unet.prediction != GNR_PREDICT_V) return y->data == eps->data ? GNR_OK : gnr_copy(&m->ctx, y, eps);
    /* The schedule is a fixed table (GNR_SPEC.md section 2); rebuilding it
     * here costs microseconds next to the pass that preceded. */
    float abar[GNR_TRAIN_STEPS];
    gnr_ddim_alphas_cumprod(abar);
    return gnr_ddim_eps_from_v(&m->ctx, abar[t], z, y, eps);
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
        GNR_TRY(gnr_tape_constant(tape, &cin));
        *leaf = zin;
        ctx->tape = tape;
        ctx->checkpointing = checkpointing;
    }
    gnr_status st = unet_forward(ctx, &m->unet, &zin, t, &cin, cap, &y);
    ctx->tape = NULL;
    ctx->checkpointing = 0;
    if (st == GNR_OK && eps) st = job_noise(m, z, t, &y, eps);
    /* The tape saved what its backward reads (ctx->keep): the forward's
     * activations go, and the backward starts on an empty arena. */
    gnr_arena_reset(ctx->arena);
    return st;
}

int job_batching(void)
{
    const char *v = getenv("GNR_BATCH_PASSES");
    return !(v && strcmp(v, "0") == 0);
}

/* The n items of a batch, each a copy of one pass's input. */
static gnr_status stack_items(gnr_ctx *ctx, int n, const gnr_tensor *const *items, gnr_tensor *out)
{
    int64_t shape[GNR_MAX_DIMS];
    memcpy(shape, items[0]->shape, sizeof shape);
    shape[0] = n;
    GNR_TRY(gnr_alloc(ctx, GNR_F32, items[0]->ndim, shape, out));
    for (int i = 0; i < n; i++) {
        gnr_tensor slot = job_item(out, items[0]->ndim, items[0]->shape, i);
        GNR_TRY(gnr_copy(ctx, items[i], &slot));
    }
    return GNR_OK;
}

static gnr_status unet_batch(gnr_model *m, int n, const gnr_tensor *const *z, int t, const gnr_tensor *const *c,
                             gnr_tensor *const *eps)
{
    gnr_ctx *ctx = &m->ctx;
    gnr_tensor zb, cb, y;
    GNR_TRY(stack_items(ctx, n, z, &zb));
    GNR_TRY(stack_items(ctx, n, c, &cb));
    GNR_TRY(unet_forward(ctx, &m->unet, &zb, t, &cb, NULL, &y));
    for (int i = 0; i < n; i++) {
        gnr_tensor yi = job_item(&y, z[i]->ndim, z[i]->shape, i);
        GNR_TRY(job_noise(m, z[i], t, &yi, eps[i]));
    }
    return GNR_OK;
}

gnr_status job_unet_batch(gnr_model *m, int n, const gnr_tensor *const *z, int t, const gnr_tensor *const *c,
                          gnr_tensor *const *eps)
{
    if (n < 1 || n > JOB_MAX_BATCH)
        return gnr_error(GNR_ERR_INTERNAL, "a bug in gnr: a batch of %d passes (at most %d)", n, JOB_MAX_BATCH);
    if (n > 1 && job_batching()) {
        gnr_status st = unet_batch(m, n, z, t, c, eps);
        gnr_arena_reset(m->ctx.arena);
        if (st != GNR_ERR_NOMEM) return st;
        gnr_clear_error(); /* too large as one batch: one pass at a time */
    }
    for (int i = 0; i < n; i++) GNR_TRY(job_unet(m, z[i], t, c[i], NULL, NULL, 0, NULL, eps[i]));
    return GNR_OK;
}
