/* Activation arena: a stack allocator over a few large device blocks.
 *
 * Why: a UNet pass allocates hundreds of short-lived activations; taking them
 * from the system allocator (or cudaMalloc) inside the step loop is slow and
 * fragments memory. The arena hands out aligned slices by bumping an offset,
 * releases them in stack order with marks, and after a pass coalesces its
 * blocks into one block of the peak size, so steady-state passes allocate
 * nothing. It counts peak bytes, and an optional cap turns an oversized
 * request into GNR_ERR_NOMEM (bytes asked and available) before any
 * allocation happens. Device memory comes from the allocator it is given, so
 * the same code serves the CPU and CUDA backends. */
#ifndef GNR_ARENA_H
#define GNR_ARENA_H

#include <stddef.h>

#include "status.h"

typedef struct {
    void *(*alloc)(size_t bytes, void *user); /* NULL on failure */
    void (*release)(void *ptr, void *user);
    void *user;
    size_t alignment; /* of every slice; a power of two */
    /* Fills [ptr, ptr + bytes) with signalling NaNs (GNR_NANFILL=1: every
     * slice the arena hands out, so a read of memory nobody wrote poisons
     * the result); NULL where the device cannot. */
    void (*fill_nan)(void *ptr, size_t bytes, void *user);
} gnr_allocator;

/* The float bit pattern GNR_NANFILL writes: a signalling NaN. */
#define GNR_NAN_FILL_BITS 0x7fbadbadu

typedef struct gnr_arena gnr_arena;

typedef struct {
    int block;
    size_t offset;
    size_t used;
} gnr_arena_mark;

/* cap_bytes = 0: no cap. */
gnr_status gnr_arena_create(const gnr_allocator *allocator, size_t cap_bytes, gnr_arena **out);
void gnr_arena_destroy(gnr_arena *a);

gnr_status gnr_arena_alloc(gnr_arena *a, size_t bytes, void **out);

gnr_arena_mark gnr_arena_get_mark(const gnr_arena *a);
/* Frees every slice allocated after `m` (stack order). */
void gnr_arena_release(gnr_arena *a, gnr_arena_mark m);
/* Moving a result down to a mark while the memory it moves from is still
 * allocated: first the slot where a slice of `bytes` will start once the
 * arena is released to `m` (NULL if it would need a new block; allocated
 * memory still, writable), then, after the caller has filled it, release
 * to `m` and take that slot again with its contents kept. */
void *gnr_arena_move_down_slot(gnr_arena *a, gnr_arena_mark m, size_t bytes);
gnr_status gnr_arena_release_keeping(gnr_arena *a, gnr_arena_mark m, size_t bytes, void **out);
/* Frees everything; if the last use spilled over several blocks, replaces them
 * with one block of the peak size so the next pass fits in a single block. */
void gnr_arena_reset(gnr_arena *a);

size_t gnr_arena_used(const gnr_arena *a);     /* live bytes now */
size_t gnr_arena_peak(const gnr_arena *a);     /* max live bytes since the last reset_peak */
size_t gnr_arena_cap(const gnr_arena *a);
void gnr_arena_set_cap(gnr_arena *a, size_t cap_bytes);
void gnr_arena_reset_peak(gnr_arena *a);

#endif
