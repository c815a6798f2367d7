#include "tape.h"

#include <stdlib.h>
#include <string.h>

gnr_status gnr_tape_init(gnr_tape *t, gnr_capture *capture)
{
    memset(t, 0, sizeof *t);
    t->capture = capture;
    t->seeds = calloc(GNR_MAX_CAPTURES, sizeof *t->seeds);
    if (!t->seeds) return gnr_error(GNR_ERR_NOMEM, "out of host memory for the gradient tape");
    t->owns_seeds = 1;
    return GNR_OK;
}

void gnr_tape_free(gnr_tape *t)
{
    for (int i = 0; i < t->n; i++) free(t->entries[i].segment_args);
    free(t->entries);
    free(t->grads);
    free(t->saved);
    free(t->producer);
    free(t->needs_grad);
    free(t->free);
    free(t->slices);
    if (t->owns_seeds) free(t->seeds);
    memset(t, 0, sizeof *t);
}

/* *array (host memory) resized to cap elements of elem bytes. */
static gnr_status resize(void **array, int cap, size_t elem)
{
    void *p = realloc(*array, (size_t)cap * elem);
    if (!p) return gnr_error(GNR_ERR_NOMEM, "out of host memory for the gradient tape");
    *array = p;
    return GNR_OK;
}

/* Room in *array (cap elements of elem bytes) for element n: doubles it when full. */
static gnr_status grow(void **array, int *cap, int n, size_t elem)
{
    if (n < *cap) return GNR_OK;
    int c = *cap ? 2 * *cap : 64;
    GNR_TRY(resize(array, c, elem));
    *cap = c;
    return GNR_OK;
}

static gnr_status new_gid(gnr_tape *t, gnr_tensor *x)
{
    if (t->ngids == t->grads_cap) {
        int cap = t->grads_cap ? 2 * t->grads_cap : 256;
        GNR_TRY(resize((void **)&t->grads, cap, sizeof *t->grads));
        GNR_TRY(resize((void **)&t->saved, cap, sizeof *t->saved));
        GNR_TRY(resize((void **)&t->producer, cap, sizeof *t->producer));
        GNR_TRY(resize((void **)&t->needs_grad, cap, sizeof *t->needs_grad));
        t->grads_cap = cap;
    }
    memset(&t->grads[t->ngids], 0, sizeof t->grads[0]);
    memset(&t->saved[t->ngids], 0, sizeof t->saved[0]);
    t->producer[t->ngids] = -1;
    t->needs_grad[t->ngids] = 1;
    x->gid = t->ngids++;
    return GNR_OK;
}

gnr_status gnr_tape_leaf(gnr_tape *t, gnr_tensor *x) { return new_gid(t, x); }

gnr_status gnr_tape_constant(gnr_tape *t, gnr_tensor *x)
{
    GNR_TRY(new_gid(t, x));
    t->needs_grad[x->gid] = 0;
    t->saved[x->gid] = *x;
    return GNR_OK;
}

gnr_status gnr_tape_seed_capture(gnr_tape *t, int ci, energy_kind kind, const gnr_capture *ref, int ri, float scale,
                                 double *energy)
{
    if (ci < 0 || ci >= GNR_MAX_CAPTURES || ri < 0 || ri >= ref->n)
        return gnr_error(GNR_ERR_INTERNAL, "capture index %d / %d out of range", ci, ri);
    if (t->capture && t->capture->as_qk[ci] != ref->as_qk[ri])
        return gnr_error(GNR_ERR_INTERNAL, "capture '%s' seeded from a reference kept in another form",
                         ref->names[ri]);
    if (ref->as_qk[ri] && kind != ENERGY_SQ_DIFF_MEAN)
        return gnr_error(GNR_ERR_INTERNAL, "an attention map kept as queries and keys has only the squared energy");
    capture_seed *s = &t->seeds[ci];
    if (s->n == TAPE_MAX_SEEDS)
        return gnr_error(GNR_ERR_VALUE, "at most %d energy terms may use the same capture", TAPE_MAX_SEEDS);
    s->kind[s->n] = kind;
    s->ref[s->n] = ref->tensors[ri];
    memset(&s->ref_keys[s->n], 0, sizeof s->ref_keys[0]);
    if (ref->as_qk[ri]) s->ref_keys[s->n] = ref->keys[ri];
    s->scale[s->n] = scale;
    s->energy[s->n] = energy;
    s->n++;
    return GNR_OK;
}

gnr_status gnr_tape_map_energies(gnr_ctx *ctx, const gnr_tape *t, int ci, const gnr_tensor *q, const gnr_tensor *k,
                                 int heads, float scale)
{
    const capture_seed *s = &t->seeds[ci];
    for (int i = 0; i < s->n; i++)
        if (s->energy[i] && s->ref_keys[i].data)
            GNR_TRY(gnr_attention_map_energy(ctx, q, k, &s->ref[i], &s->ref_keys[i], heads, scale, s->energy[i]));
    return GNR_OK;
}

gnr_tensor gnr_tape_grad(const gnr_tape *t, const gnr_tensor *x)
{
    gnr_tensor none;
    memset(&none, 0, sizeof none);
    none.gid = -1;
    if (x->gid < 0 || x->gid >= t->ngids) return none;
    return t->grads[x->gid];
}

/* Whether the backward of `op` reads the values of its input i (tape.h). */
static int backward_reads(tape_op op, int i)
{
    switch (op) {
    case TAPE_GROUP_NORM:
    case TAPE_LAYER_NORM:
    case TAPE_ACT:
    case TAPE_FEED_FORWARD:
    case TAPE_CAPTURE: return i == 0;
    case TAPE_ATTENTION: return i < 3;
    case TAPE_SEGMENT: return 1;
    default: return 0;
    }
}

/* Points x at a copy in ctx->keep that outlives the scope x was made in: one
 * copy per recorded tensor; constants (gid -1, such as cross-attention's keys
 * from an untracked context) get one per use. */
static gnr_status save(gnr_ctx *ctx, gnr_tape *t, gnr_tensor *x)
{
    if (x->gid >= 0 && t->saved[x->gid].data) {
        x->data = t->saved[x->gid].data;
        return GNR_OK;
    }
    gnr_tensor s = gnr_tensor_view(NULL, x->dtype, ctx->device, x->ndim, x->shape);
    GNR_TRY(gnr_arena_alloc(ctx->keep, gnr_nbytes(&s), &s.data));
    GNR_TRY(gnr_copy(ctx, x, &s));
    s.gid = x->gid;
    if (x->gid >= 0) t->saved[x->gid] = s;
    x->data = s.data;
    return GNR_OK;
}

void gnr_tape_saved_as(gnr_tape *t, const gnr_tensor *x, const gnr_tensor *copy)
{
    if (x->gid >= 0 && x->gid < t->ngids) t->saved[x->gid] = *copy;
}

/* The entry of t that made x, or NULL (a leaf, a constant). */
static const tape_entry *producer_of(const gnr_tape *t, const gnr_tensor *x)
{
    if (x->gid < 0 || x->gid >= t->ngids || t->producer[x->gid] < 0) return NULL;
    return &t->entries[t->producer[x->gid]];
}

/* The ops whose backward takes inputs computed again rather than kept. */
static int recomputes_inputs(tape_op op)
{
    return op == TAPE_ACT || op == TAPE_FEED_FORWARD || op == TAPE_ATTENTION || op == TAPE_GROUP_NORM ||
           op == TAPE_LAYER_NORM;
}

/* Ops a value is computed again through: one elementwise pass or a layout
 * change each, and a linear layer's product (tape.h). */
static int recomputable_op(tape_op op)
{
    return op == TAPE_GROUP_NORM || op == TAPE_LAYER_NORM || op == TAPE_LINEAR || op == TAPE_NCHW_TO_NLC;
}

/* At most this many ops between a value computed again and what is kept:
 * self-attention's q of a transformer's first block is four (q's linear
 * layer, the block's first norm, proj_in and its layout change) from the
 * transformer's group norm's input. */
#define RECOMPUTE_DEPTH 5

/* Whether x can be computed again from what the tape keeps, through at most
 * `depth` recomputable ops. */
static int recomputable(const gnr_tape *t, const gnr_tensor *x, int depth)
{
    if (x->gid < 0) return 0;
    if (t->saved[x->gid].data) return 1;
    const tape_entry *p = producer_of(t, x);
    return p && depth > 0 && recomputable_op(p->op) && recomputable(t, &p->in[0], depth - 1);
}

gnr_status gnr_tape_record(gnr_ctx *ctx, const tape_entry *e, gnr_tensor *out)
{
    gnr_tape *t = ctx->tape;
    if (!t) return GNR_OK;
    int tracked = 0;
    for (int i = 0; i < e->nin; i++) tracked |= e->in[i].gid >= 0;
    if (!tracked) return GNR_OK;
    GNR_TRY(grow((void **)&t->entries, &t->cap, t->n, sizeof *t->entries));
    if (out) {
        GNR_TRY(new_gid(t, out));
        t->producer[out->gid] = t->n;
        /* a constant's descendants need no gradient either */
        int needs = 0;
        for (int i = 0; i < e->nin; i++) needs |= e->in[i].gid >= 0 && t->needs_grad[e->in[i].gid];
        t->needs_grad[out->gid] = (unsigned char)needs;
    }
    tape_entry *dst = &t->entries[t->n++];
    *dst = *e;
    if (out) dst->out = *out;
    else dst->out.gid = -1;
    for (int i = 0; i < dst->nin; i++) {
        const gnr_tensor *x = &dst->in[i];
        dst->remat[i] = 0;
        if (!backward_reads(dst->op, i)) continue;
        dst->remat[i] = recomputes_inputs(dst->op) && x->gid >= 0 && !t->saved[x->gid].data &&
                        recomputable(t, x, RECOMPUTE_DEPTH);
        if (!dst->remat[i]) GNR_TRY(save(ctx, t, &dst->in[i]));
    }
    return GNR_OK;
}

/* ------------------------------------------------------------------------ */

/* Gradient ranges are cut at this granularity, which keeps every gradient as
 * aligned as an arena slice on either backend. */
#define GRAD_ALIGN 256

static size_t grad_bytes(size_t bytes) { return (bytes + GRAD_ALIGN - 1) / GRAD_ALIGN * GRAD_ALIGN; }

/* `bytes` (a multiple of GRAD_ALIGN) of gradient memory: the front of the
 * smallest free range that holds it, or a new arena slice. */
static gnr_status take_range(gnr_ctx *ctx, gnr_tape *t, size_t bytes, void **out)
{
    int best = -1;
    for (int i = 0; i < t->nfree; i++)
        if (t->free[i].bytes >= bytes && (best < 0 || t->free[i].bytes < t->free[best].bytes)) best = i;
    if (best >= 0) {
        tape_free_range *r = &t->free[best];
        *out = r->data;
        r->data += bytes;
        r->bytes -= bytes;
        if (r->bytes == 0) *r = t->free[--t->nfree];
        return GNR_OK;
    }
    GNR_TRY(grow((void **)&t->slices, &t->slices_cap, t->nslices, sizeof *t->slices));
    gnr_arena_mark before = gnr_arena_get_mark(ctx->arena);
    GNR_TRY(gnr_arena_alloc(ctx->arena, bytes, out));
    t->slices[t->nslices] = (tape_slice){*out, bytes, before, gnr_arena_used(ctx->arena)};
    t->nslices++;
    return GNR_OK;
}

/* The newest slices back to the arena while each is wholly free and still
 * its top: the gradients' memory shrinks with the backward's live set, and
 * the scratch of the entries that follow (recomputed inputs, attention's
 * chunks) reuses it instead of stacking above it. */
static void trim_slices(gnr_ctx *ctx, gnr_tape *t)
{
    while (t->nslices > 0) {
        const tape_slice *s = &t->slices[t->nslices - 1];
        int whole = -1;
        for (int i = 0; i < t->nfree && whole < 0; i++)
            if (t->free[i].origin == t->nslices - 1 && t->free[i].bytes == s->bytes) whole = i;
        if (whole < 0 || gnr_arena_used(ctx->arena) != s->top) return;
        gnr_arena_release(ctx->arena, s->before);
        t->free[whole] = t->free[--t->nfree];
        t->nslices--;
    }
}

/* [data, data + bytes) back to the free list, merged with the free ranges of
 * its slice that touch it. */
static gnr_status give_back_range(gnr_tape *t, char *data, size_t bytes)
{
    int origin = -1;
    for (int i = 0; i < t->nslices && origin < 0; i++)
        if (data >= t->slices[i].data && data < t->slices[i].data + t->slices[i].bytes) origin = i;
    if (origin < 0) return gnr_error(GNR_ERR_INTERNAL, "tape: releasing a gradient it did not allocate");
    for (int i = t->nfree - 1; i >= 0; i--) {
        tape_free_range *r = &t->free[i];
        if (r->origin != origin || (r->data + r->bytes != data && data + bytes != r->data)) continue;
        if (r->data < data) data = r->data;
        bytes += r->bytes;
        *r = t->free[--t->nfree];
    }
    GNR_TRY(grow((void **)&t->free, &t->free_cap, t->nfree, sizeof *t->free));
    t->free[t->nfree++] = (tape_free_range){data, bytes, origin};
    return GNR_OK;
}

/* The gradient buffer of x, zeroed on first use. */
static gnr_status grad_of(gnr_ctx *ctx, gnr_tape *t, const gnr_tensor *x, gnr_tensor **g)
{
    gnr_tensor *slot = &t->grads[x->gid];
    if (!slot->data) {
        gnr_tensor fresh = gnr_tensor_view(NULL, x->dtype, ctx->device, x->ndim, x->shape);
        GNR_TRY(take_range(ctx, t, grad_bytes(gnr_nbytes(&fresh)), &fresh.data));
        GNR_TRY(gnr_fill(ctx, &fresh, 0.0f));
        fresh.gid = x->gid;
        *slot = fresh;
    }
    *g = slot;
    return GNR_OK;
}

/* The gradient of a replayed entry's output is dead: its memory goes back to
 * the free list. The slot keeps its shape with data NULL. */
static gnr_status release_grad(gnr_tape *t, int gid)
{
    gnr_tensor *slot = &t->grads[gid];
    if (!slot->data) return GNR_OK;
    GNR_TRY(give_back_range(t, slot->data, grad_bytes(gnr_nbytes(slot))));
    slot->data = NULL;
    return GNR_OK;
}

static int has_grad(const gnr_tape *t, const gnr_tensor *x) { return x->gid >= 0 && t->needs_grad[x->gid]; }

gnr_status gnr_tape_seed_grad(gnr_ctx *ctx, gnr_tape *t, const gnr_tensor *y, const gnr_tensor *dy)
{
    if (y->gid >= t->ngids || !has_grad(t, y))
        return gnr_error(GNR_ERR_INTERNAL, "tape: seeding a tensor the tape did not record");
    gnr_tensor *g;
    GNR_TRY(grad_of(ctx, t, y, &g));
    return gnr_axpy(ctx, 1.0f, dy, g);
}

/* da += the seeded energies' gradient with respect to capture value `a`. */
static gnr_status apply_seeds(gnr_ctx *ctx, const capture_seed *s, const gnr_tensor *a, gnr_tensor *da)
{
    for (int i = 0; i < s->n; i++) {
        if (s->kind[i] == ENERGY_SQ_DIFF_MEAN)
            GNR_TRY(gnr_sq_diff_mean_backward(ctx, a, &s->ref[i], s->scale[i], da));
        else
            GNR_TRY(gnr_abs_diff_mean_backward(ctx, a, &s->ref[i], s->scale[i], da));
    }
    return GNR_OK;
}

/* Values computed again for one entry's backward, each once (a norm that
 * self-attention's q, k and v all come from runs once). */
#define RECOMPUTED_MAX 16
typedef struct {
    int n;
    int gid[RECOMPUTED_MAX];
    gnr_tensor value[RECOMPUTED_MAX];
} recomputed;

/* x's values: its kept copy, or its producer's forward run again (the same
 * kernel on the same values as in the forward) on its input's values, into
 * ctx->arena. */
static gnr_status value_of(gnr_ctx *ctx, const gnr_tape *t, const gnr_tensor *x, recomputed *r, gnr_tensor *out)
{
    if (t->saved[x->gid].data) {
        *out = t->saved[x->gid];
        return GNR_OK;
    }
    for (int i = 0; i < r->n; i++)
        if (r->gid[i] == x->gid) {
            *out = r->value[i];
            return GNR_OK;
        }
    const tape_entry *p = producer_of(t, x);
    if (!p) return gnr_error(GNR_ERR_INTERNAL, "tape: tensor %d is neither kept nor recomputable", x->gid);
    gnr_tensor in, y;
    GNR_TRY(value_of(ctx, t, &p->in[0], r, &in));
    GNR_TRY(gnr_alloc_like(ctx, x, &y));
    switch (p->op) {
    case TAPE_GROUP_NORM: GNR_TRY(gnr_group_norm_forward(ctx, &in, p->w, p->w2, p->groups, p->eps, &y)); break;
    case TAPE_LAYER_NORM: GNR_TRY(gnr_layer_norm_forward(ctx, &in, p->w, p->w2, p->eps, &y)); break;
    case TAPE_LINEAR: GNR_TRY(gnr_linear_forward(ctx, &in, p->w, p->w2, &y)); break;
    case TAPE_NCHW_TO_NLC: GNR_TRY(gnr_nchw_to_nlc(ctx, &in, &y)); break;
    default: return gnr_error(GNR_ERR_INTERNAL, "tape: entry %d cannot be computed again", (int)p->op);
    }
    if (r->n < RECOMPUTED_MAX) {
        r->gid[r->n] = x->gid;
        r->value[r->n++] = y;
    }
    *out = y;
    return GNR_OK;
}

/* e's inputs as its backward reads them: the kept ones as they are, the
 * others (remat) computed again into ctx->arena, which the caller releases. */
static gnr_status inputs_for_backward(gnr_ctx *ctx, const gnr_tape *t, const tape_entry *e, gnr_tensor in[4])
{
    recomputed r = {0};
    for (int i = 0; i < e->nin; i++) {
        in[i] = e->in[i];
        if (!e->remat[i]) continue;
        gnr_tensor v = e->in[i];
        GNR_TRY(value_of(ctx, t, &e->in[i], &r, &v));
        in[i].data = v.data;
    }
    return GNR_OK;
}

/* An energy on a map kept as queries and keys: each seed's gradient enters
 * attention_backward as the reference's queries and keys, with
 * d/dP scale * mean((P - P_ref)^2) = coef (P - P_ref), coef = 2 scale / |P|.
 * dS is linear in dP, so the seeds after the first add theirs in calls
 * without the output gradient. */
static gnr_status backward_attention_qk(gnr_ctx *ctx, const tape_entry *e, const gnr_tensor *in,
                                        const capture_seed *seed, const gnr_tensor *dy, gnr_tensor *dq,
                                        gnr_tensor *dk, gnr_tensor *dv)
{
    const gnr_tensor *q = &in[0], *k = &in[1], *v = &in[2];
    double map_size = (double)q->shape[0] * e->heads * (double)q->shape[1] * (double)k->shape[1];
    for (int i = 0; i < seed->n; i++) {
        gnr_attention_seed sd = {&seed->ref[i], &seed->ref_keys[i], (float)(2.0 * seed->scale[i] / map_size),
                                 seed->energy[i]};
        GNR_TRY(gnr_attention_backward(ctx, q, k, v, NULL, e->heads, e->iparam, e->scale, i == 0 ? dy : NULL, NULL,
                                       &sd, dq, dk, i == 0 ? dv : NULL));
    }
    return GNR_OK;
}

static gnr_status backward_attention(gnr_ctx *ctx, gnr_tape *t, const tape_entry *e, const gnr_tensor *dy)
{
    const capture_seed *seed = e->capture >= 0 ? &t->seeds[e->capture] : NULL;
    int seeded = seed && seed->n > 0;
    if (!dy && !seeded) return GNR_OK;
    gnr_tensor *dq = NULL, *dk = NULL, *dv = NULL;
    if (has_grad(t, &e->in[0])) GNR_TRY(grad_of(ctx, t, &e->in[0], &dq));
    if (has_grad(t, &e->in[1])) GNR_TRY(grad_of(ctx, t, &e->in[1], &dk));
    if (has_grad(t, &e->in[2])) GNR_TRY(grad_of(ctx, t, &e->in[2], &dv));
    /* q, k, v recomputed and a seeded map's gradient live for this entry only */
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    gnr_tensor in[4], dprobs;
    const gnr_tensor *q = &in[0], *k = &in[1], *v = &in[2], *dp = NULL;
    gnr_status st = GNR_OK;
    GNR_CHECK(st, inputs_for_backward(ctx, t, e, in));
    if (seeded && seed->ref_keys[0].data) {
        st = backward_attention_qk(ctx, e, in, seed, dy, dq, dk, dv);
        goto done;
    }
    /* A seeded map: the energy's gradient w.r.t. P. */
    if (seeded) {
        GNR_CHECK(st, gnr_alloc_like(ctx, &e->probs, &dprobs));
        GNR_CHECK(st, gnr_fill(ctx, &dprobs, 0.0f));
        GNR_CHECK(st, apply_seeds(ctx, seed, &e->probs, &dprobs));
        dp = &dprobs;
    }
    /* dy NULL: only the map is differentiated */
    st = gnr_attention_backward(ctx, q, k, v, e->probs.data ? &e->probs : NULL, e->heads, e->iparam, e->scale, dy, dp,
                                NULL, dq, dk, dv);
done:
    gnr_arena_release(ctx->arena, m);
    return st;
}

static gnr_status backward_segment(gnr_ctx *ctx, gnr_tape *t, const tape_entry *e, const gnr_tensor *dy)
{
    /* Re-run the block with a nested tape whose leaves are the block's
     * inputs, replay it, hand the input gradients to this tape, release. */
    gnr_tensor *dins[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < e->nin; i++)
        if (has_grad(t, &e->in[i])) GNR_TRY(grad_of(ctx, t, &e->in[i], &dins[i]));
    /* The re-run's saved tensors (ctx->keep) and everything of its replay
     * (ctx->arena) go when the segment is done. */
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena), km = gnr_arena_get_mark(ctx->keep);
    gnr_tape inner;
    memset(&inner, 0, sizeof inner);
    inner.capture = t->capture;
    inner.seeds = t->seeds;
    inner.rerun = 1;
    gnr_tensor ins[4], out;
    gnr_tape *outer = ctx->tape;
    gnr_status st = GNR_OK;
    for (int i = 0; i < e->nin; i++) {
        ins[i] = e->in[i];
        ins[i].gid = -1;
        if (has_grad(t, &e->in[i])) GNR_CHECK(st, gnr_tape_leaf(&inner, &ins[i]));
    }
    int was_checkpointing = ctx->checkpointing;
    ctx->tape = &inner;
    ctx->checkpointing = 0;
    st = e->segment(ctx, e->segment_args, ins, e->nin, &out);
    ctx->checkpointing = was_checkpointing;
    ctx->tape = outer;
    if (st != GNR_OK) goto done;
    if (dy && out.gid >= 0) {
        gnr_tensor *dout;
        GNR_CHECK(st, grad_of(ctx, &inner, &out, &dout));
        GNR_CHECK(st, gnr_copy(ctx, dy, dout));
    }
    GNR_CHECK(st, gnr_tape_backward(ctx, &inner));
    for (int i = 0; i < e->nin; i++) {
        if (!dins[i]) continue;
        gnr_tensor g = gnr_tape_grad(&inner, &ins[i]);
        if (g.data) GNR_CHECK(st, gnr_axpy(ctx, 1.0f, &g, dins[i]));
    }
done:
    ctx->tape = outer;
    gnr_tape_free(&inner);
    gnr_arena_release(ctx->arena, m);
    gnr_arena_release(ctx->keep, km);
    return st;
}

/* The backward of a norm, an activation or the feed-forward, its input computed again if it was not kept. */
static gnr_status backward_unary(gnr_ctx *ctx, const gnr_tape *t, const tape_entry *e, const gnr_tensor *dy,
                                 gnr_tensor *dx)
{
    gnr_arena_mark m = gnr_arena_get_mark(ctx->arena);
    gnr_tensor in[4];
    gnr_status st = inputs_for_backward(ctx, t, e, in);
    if (st == GNR_OK) switch (e->op) {
        case TAPE_GROUP_NORM: st = gnr_group_norm_backward(ctx, dy, &in[0], e->w, e->groups, e->eps, dx); break;
        case TAPE_LAYER_NORM: st = gnr_layer_norm_backward(ctx, dy, &in[0], e->w, e->eps, dx); break;
        case TAPE_FEED_FORWARD: st = gnr_feed_forward_backward(ctx, &e->ff, &in[0], dy, dx); break;
        default: st = gnr_act_backward(ctx, (gnr_act)e->iparam, dy, &in[0], dx); break;
        }
    gnr_arena_release(ctx->arena, m);
    return st;
}

static gnr_status backward_entry(gnr_ctx *ctx, gnr_tape *t, const tape_entry *e)
{
    const gnr_tensor *dy = NULL;
    if (e->out.gid >= 0 && t->grads[e->out.gid].data) dy = &t->grads[e->out.gid];
    const gnr_tensor *x = &e->in[0];
    gnr_tensor *dx = NULL, *db = NULL;

    switch (e->op) {
    case TAPE_ATTENTION: return backward_attention(ctx, t, e, dy);
    case TAPE_SEGMENT: {
        int seeded = 0;
        for (int i = 0; i < GNR_MAX_CAPTURES; i++) seeded |= t->seeds[i].n > 0;
        /* A segment may hold a seeded capture even when its output has no
         * gradient; replay it whenever either can contribute. */
        if (!dy && !seeded) return GNR_OK;
        return backward_segment(ctx, t, e, dy);
    }
    case TAPE_CAPTURE: {
        const capture_seed *s = &t->seeds[e->capture];
        if (s->n == 0 || !has_grad(t, x)) return GNR_OK;
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return apply_seeds(ctx, s, x, dx);
    }
    default: break;
    }
    if (!dy) return GNR_OK;

    switch (e->op) {
    case TAPE_LINEAR:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return gnr_linear_backward(ctx, dy, e->w, dx);
    case TAPE_CONV2D:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return gnr_conv2d_backward(ctx, dy, e->w, &e->conv, dx);
    case TAPE_GROUP_NORM:
    case TAPE_LAYER_NORM:
    case TAPE_ACT:
    case TAPE_FEED_FORWARD:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return backward_unary(ctx, t, e, dy, dx);
    case TAPE_ADD:
        for (int i = 0; i < 2; i++) {
            if (!has_grad(t, &e->in[i])) continue;
            GNR_TRY(grad_of(ctx, t, &e->in[i], &dx));
            GNR_TRY(gnr_axpy(ctx, 1.0f, dy, dx));
        }
        return GNR_OK;
    case TAPE_SCALE:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return gnr_axpy(ctx, e->alpha, dy, dx);
    case TAPE_ADD_CHANNEL:
        if (has_grad(t, x)) {
            GNR_TRY(grad_of(ctx, t, x, &dx));
            GNR_TRY(gnr_axpy(ctx, 1.0f, dy, dx));
        }
        if (has_grad(t, &e->in[1])) {
            GNR_TRY(grad_of(ctx, t, &e->in[1], &db));
            GNR_TRY(gnr_add_channel_backward(ctx, dy, db));
        }
        return GNR_OK;
    case TAPE_NCHW_TO_NLC:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return gnr_nchw_to_nlc_backward(ctx, dy, dx);
    case TAPE_NLC_TO_NCHW:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return gnr_nlc_to_nchw_backward(ctx, dy, dx);
    case TAPE_CONCAT:
        if (has_grad(t, &e->in[0])) GNR_TRY(grad_of(ctx, t, &e->in[0], &dx));
        if (has_grad(t, &e->in[1])) GNR_TRY(grad_of(ctx, t, &e->in[1], &db));
        return gnr_concat_channels_backward(ctx, dy, dx, db);
    case TAPE_UPSAMPLE:
        GNR_TRY(grad_of(ctx, t, x, &dx));
        return gnr_upsample2x_backward(ctx, dy, dx);
    default: return gnr_error(GNR_ERR_INTERNAL, "tape: unknown entry %d", (int)e->op);
    }
}

gnr_status gnr_tape_backward(gnr_ctx *ctx, gnr_tape *t)
{
    for (int i = t->n - 1; i >= 0; i--) {
        const tape_entry *e = &t->entries[i];
        GNR_TRY(backward_entry(ctx, t, e));
        if (e->out.gid >= 0) GNR_TRY(release_grad(t, e->out.gid));
        trim_slices(ctx, t);
    }
    return GNR_OK;
}
