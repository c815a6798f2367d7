/* The transformer block's feed-forward, y = W2 geglu(W1 x + b1) + b2, one
 * block of rows at a time.
 *
 * Its intermediate is wide: W1 x is 8 x the block's width and GEGLU's output
 * 4 x, where everything else in the block is 1 x. Every op in it works row
 * by row, so a block of rows goes through all three before the next block
 * starts, and the wide intermediates take at most 4 MiB at a time on the
 * CPU, 64 MiB on a GPU (gnr_feed_forward_block_bytes in gnr.h changes that,
 * for tests). At SD
 * 1.4's 1024-token level (256 x 256) they took 15 MiB whole in the forward
 * and 25 MiB in the backward, which computes W1 x again (reverse mode keeps
 * only x, grad/tape.h). */
#ifndef GNR_FEED_FORWARD_H
#define GNR_FEED_FORWARD_H

#include "ops.h"

typedef struct {
    const gnr_tensor *w1, *b1; /* (8 C) x C and 8 C: GEGLU's projection */
    const gnr_tensor *w2, *b2; /* C x (4 C) and C */
} gnr_feed_forward_w;

/* y (allocated, x's shape with the last dim w2's rows) = the feed-forward of x. */
gnr_status gnr_feed_forward(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x, gnr_tensor *y);

/* dx += dy's gradient through the feed-forward at x. */
gnr_status gnr_feed_forward_backward(gnr_ctx *ctx, const gnr_feed_forward_w *w, const gnr_tensor *x,
                                     const gnr_tensor *dy, gnr_tensor *dx);

#endif
