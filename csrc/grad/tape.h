/* Reverse mode as a tape.
 *
 * While ctx->tape is set, every nn_* call whose inputs carry a gradient
 * identity (gid >= 0) appends an entry: the op, its activation inputs, its
 * output, the frozen weights it used and the op's parameters. Its output gets
 * a fresh gid. backward() walks the entries in reverse and calls each op's
 * backward (ops.h), accumulating input gradients per gid. Weights never get
 * gradients; constants (gid -1) are never recorded, and a constant given an
 * identity (gnr_tape_constant) has no gradient, nor has what only constants
 * made.
 *
 * Energies are seeded through captures, not through an output gradient: a
 * term says "capture i contributes scale * d/dA of mean((A - ref)^2)" (or of
 * mean|A - ref|). The gradient of a capture is materialised only at the moment
 * the entry that produced it is replayed, then released. An attention map
 * captured as queries and keys has no materialised gradient at all: its
 * attention entry's backward takes the reference's queries and keys and adds
 * the energy's gradient chunk by chunk.
 *
 * Memory: the weights are frozen, so an entry keeps only what its backward
 * reads: nothing for linear layers, convolutions, additions and layout ops;
 * a capture's value; a checkpointed segment's inputs. Norms, activations,
 * the feed-forward and attention (whose backward recomputes P) read inputs
 * that are mostly computed from another norm's input through norms, linear
 * layers and layout changes: the resnets' SiLU (a group norm's output), the
 * feed-forward's input (which also computes its wide intermediate again,
 * feed_forward.h), q, k and v, a transformer's first layer norm's input
 * (proj_in of its group norm's output), cross-attention's keys and values
 * (of a constant context). Those are not kept: the backward computes them
 * again (one elementwise pass per norm, the linear layers' products again:
 * about 9 % of a gradient pass's FLOPs at SD 1.4's shapes, for 40 % of the
 * memory at 256). Any other input they read is kept, copied into ctx->keep
 * when recorded (once per tensor), so the forward releases its scopes as in
 * inference. In the backward, the gradient of an entry's output is dead once
 * the entry is replayed (each tensor has one producer): its memory goes back
 * to a free list that later gradients of any size are cut from, and a slice
 * of the arena wholly free on its top goes back to the arena, so the
 * backward holds about what is live, not one buffer per size ever used.
 *
 * Gradient checkpointing: nn_checkpoint runs a segment (a block) without
 * recording and records one entry holding the segment's function and inputs;
 * the backward re-runs the segment with a nested tape, replays that, and
 * releases it. Same kernels, same result, less memory. */
#ifndef GNR_TAPE_H
#define GNR_TAPE_H

#include "nn.h"

typedef enum {
    TAPE_LINEAR,
    TAPE_CONV2D,
    TAPE_GROUP_NORM,
    TAPE_LAYER_NORM,
    TAPE_ACT,
    TAPE_FEED_FORWARD,
    TAPE_ADD,
    TAPE_SCALE,
    TAPE_ADD_CHANNEL,
    TAPE_NCHW_TO_NLC,
    TAPE_NLC_TO_NCHW,
    TAPE_CONCAT,
    TAPE_UPSAMPLE,
    TAPE_ATTENTION,
    TAPE_CAPTURE,   /* a feature capture: the energy's gradient enters here */
    TAPE_SEGMENT    /* a checkpointed block */
} tape_op;

typedef struct {
    tape_op op;
    gnr_tensor in[4];
    int nin;
    gnr_tensor out;
    const gnr_tensor *w;   /* linear/conv weight, norm gamma */
    const gnr_tensor *w2;  /* linear: bias, norm: beta (NULL: none); read only to recompute an output */
    int remat[4];          /* input i not kept: its backward computes it again (0: kept, or not read) */
    gnr_feed_forward_w ff; /* feed-forward: its weights */
    gnr_tensor probs;      /* attention: the saved probabilities */
    int capture;           /* attention/capture: index in the capture request, or -1 */
    gnr_conv_params conv;
    int groups, heads, iparam;
    float eps, alpha, scale;
    nn_segment_fn segment; /* checkpointed block */
    void *segment_args;    /* a copy owned by the tape */
} tape_entry;

typedef enum { ENERGY_SQ_DIFF_MEAN = 0, ENERGY_ABS_DIFF_MEAN = 1 } energy_kind;

#define TAPE_MAX_SEEDS 4

typedef struct {
    int n;
    energy_kind kind[TAPE_MAX_SEEDS];
    gnr_tensor ref[TAPE_MAX_SEEDS];      /* the reference value, or its queries */
    gnr_tensor ref_keys[TAPE_MAX_SEEDS]; /* an attention map kept as queries and keys: the keys */
    float scale[TAPE_MAX_SEEDS];
    double *energy[TAPE_MAX_SEEDS];      /* NULL, or where the backward may store the term's energy */
} capture_seed;

/* Free gradient memory: a range of one slice the backward took from the
 * arena (its origin). A gradient takes the smallest range that holds it,
 * split off its front; a released gradient goes back and merges with the
 * free ranges beside it in the same slice. */
typedef struct {
    char *data;
    size_t bytes;
    int origin;
} tape_free_range;

typedef struct {
    char *data;
    size_t bytes;
    gnr_arena_mark before; /* the arena before the slice was taken */
    size_t top;            /* the arena's bytes in use just after */
} tape_slice;

typedef struct gnr_tape {
    tape_entry *entries;
    int n, cap;
    gnr_tensor *grads; /* by gid; data NULL until a gradient reaches it */
    gnr_tensor *saved; /* by gid: the copy kept for the backward (data NULL: none) */
    int *producer;     /* by gid: the index of the entry that made it (-1: a leaf) */
    unsigned char *needs_grad; /* by gid: 0 for a constant and what only constants made */
    int ngids, grads_cap;
    tape_free_range *free;          /* gradient memory not in use, in no particular order */
    int nfree, free_cap;
    tape_slice *slices;             /* the arena slices gradients were cut from */
    int nslices, slices_cap;
    gnr_capture *capture;                  /* the request the recorded pass fills */
    capture_seed *seeds;                   /* GNR_MAX_CAPTURES entries, shared with nested tapes */
    int rerun;                             /* a checkpointed segment being replayed: captures exist already */
    int owns_seeds;
} gnr_tape;

/* A tape recording into `capture` (may be NULL). Host memory for entries grows
 * as needed; gradients come from ctx->arena during backward. */
gnr_status gnr_tape_init(gnr_tape *t, gnr_capture *capture);
void gnr_tape_free(gnr_tape *t);

/* Gives `x` a gradient identity: it becomes a leaf whose gradient backward computes. */
gnr_status gnr_tape_leaf(gnr_tape *t, gnr_tensor *x);
/* Gives `x`, a constant whose memory outlives the backward (a pass's
 * context), an identity without a gradient: what is made from it is
 * recorded, so that the backward can compute it again (cross-attention's
 * keys and values) instead of keeping a copy per use. */
gnr_status gnr_tape_constant(gnr_tape *t, gnr_tensor *x);

/* Adds scale * d/dA energy(A, R) to capture i's gradient seed, R being
 * capture ref_index of `ref` (in the same form as capture i). energy: NULL,
 * or where the backward stores energy(A, R) (unscaled) if it computes it on
 * the way (an attention map kept as queries and keys, whose attention
 * backward runs); otherwise *energy is left as it was. */
gnr_status gnr_tape_seed_capture(gnr_tape *t, int capture_index, energy_kind kind, const gnr_capture *ref,
                                 int ref_index, float scale, double *energy);

/* Stores the energies seeded on capture i, an attention map kept as queries
 * and keys, computed from this pass's q and k: for a layer of a re-run
 * segment that no gradient reaches, whose first run kept no capture
 * (gnr_capture.qk_for_backward_only) and whose backward will not run. */
gnr_status gnr_tape_map_energies(gnr_ctx *ctx, const gnr_tape *t, int capture_index, const gnr_tensor *q,
                                 const gnr_tensor *k, int heads, float scale);

/* Adds dy to the gradient of a recorded output y (an energy defined on the
 * pass's output rather than on a capture, as null-text inversion's loss). */
gnr_status gnr_tape_seed_grad(gnr_ctx *ctx, gnr_tape *t, const gnr_tensor *y, const gnr_tensor *dy);

/* Replays the tape in reverse. Afterwards gnr_tape_grad gives leaf gradients. */
gnr_status gnr_tape_backward(gnr_ctx *ctx, gnr_tape *t);
/* The gradient of a recorded tensor (data NULL when none reached it). */
gnr_tensor gnr_tape_grad(const gnr_tape *t, const gnr_tensor *x);

/* x's values are already kept in `copy` (ctx->keep, outliving the pass):
 * an entry that must save x uses it instead of a copy of its own. */
void gnr_tape_saved_as(gnr_tape *t, const gnr_tensor *x, const gnr_tensor *copy);

/* Recording, called by nn.c only. Each returns GNR_OK without recording when
 * no input carries a gid; otherwise the output gets a new gid. */
gnr_status gnr_tape_record(gnr_ctx *ctx, const tape_entry *e, gnr_tensor *out);

#endif
