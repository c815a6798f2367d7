#include "arena.h"

#include <stdlib.h>
#include <string.h>

#define MAX_BLOCKS 64
#define MIN_BLOCK_BYTES ((size_t)64 << 20)

/* Under AddressSanitizer (GNR_SANITIZE=address; CPU and emulated CUDA only,
 * where device memory is host memory) the arena poisons what is not handed
 * out: every slice is followed by a redzone, and released slices are
 * poisoned, so reading past a slice or after its release is reported. */
#if defined(__SANITIZE_ADDRESS__)
#define GNR_ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GNR_ARENA_ASAN 1
#endif
#endif
#ifdef GNR_ARENA_ASAN
#include <sanitizer/asan_interface.h>
#define REDZONE_BYTES 64
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define REDZONE_BYTES 0
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

struct gnr_arena {
    gnr_allocator allocator;
    void *base[MAX_BLOCKS];
    size_t size[MAX_BLOCKS];
    int nblocks;
    int cur;       /* block being filled */
    size_t offset; /* fill offset in block `cur` */
    size_t used;   /* live bytes, alignment padding included */
    size_t peak;
    size_t cap;
    int nanfill; /* GNR_NANFILL was set when the arena was made */
};

gnr_status gnr_arena_create(const gnr_allocator *allocator, size_t cap_bytes, gnr_arena **out)
{
    gnr_arena *a = calloc(1, sizeof *a);
    if (!a) return gnr_error(GNR_ERR_NOMEM, "out of host memory creating the activation arena");
    a->allocator = *allocator;
    a->cap = cap_bytes;
    const char *nan = getenv("GNR_NANFILL");
    a->nanfill = nan && *nan && strcmp(nan, "0") != 0 && allocator->fill_nan;
    *out = a;
    return GNR_OK;
}

static void release_block(gnr_arena *a, int i)
{
    UNPOISON(a->base[i], a->size[i]);
    a->allocator.release(a->base[i], a->allocator.user);
}

void gnr_arena_destroy(gnr_arena *a)
{
    if (!a) return;
    for (int i = 0; i < a->nblocks; i++) release_block(a, i);
    free(a);
}

static size_t align_up(size_t x, size_t al) { return (x + al - 1) & ~(al - 1); }

static size_t slice_bytes(const gnr_arena *a, size_t bytes)
{
    return align_up((bytes ? bytes : 1) + REDZONE_BYTES, a->allocator.alignment);
}

/* A slice is handed out: usable (and NaN-filled in that mode, unless its
 * contents are being kept) up to `bytes`. */
static void *hand_out(gnr_arena *a, char *p, size_t bytes, int fill)
{
    UNPOISON(p, bytes);
    if (fill && a->nanfill && bytes) a->allocator.fill_nan(p, bytes, a->allocator.user);
    return p;
}

static gnr_status arena_alloc(gnr_arena *a, size_t bytes, int fill, void **out)
{
    size_t need = slice_bytes(a, bytes);
    if (a->cap && a->used + need > a->cap)
        return gnr_error(GNR_ERR_NOMEM,
                         "activation memory cap exceeded: asked for %zu bytes with %zu of the %zu-byte cap "
                         "in use (%zu available); raise max_memory or use a smaller image",
                         need, a->used, a->cap, a->cap - a->used);
    /* Fill the current block, then the next empty ones, then grow. */
    while (a->cur < a->nblocks) {
        if (a->offset + need <= a->size[a->cur]) {
            *out = hand_out(a, (char *)a->base[a->cur] + a->offset, bytes, fill);
            a->offset += need;
            a->used += need;
            if (a->used > a->peak) a->peak = a->used;
            return GNR_OK;
        }
        if (a->cur + 1 >= a->nblocks) break;
        a->used += a->size[a->cur] - a->offset; /* the skipped tail counts as used until released */
        a->cur++;
        a->offset = 0;
    }
    if (a->nblocks == MAX_BLOCKS)
        return gnr_error(GNR_ERR_NOMEM, "activation arena exhausted its %d blocks asking for %zu bytes", MAX_BLOCKS,
                         need);
    size_t total = 0;
    for (int i = 0; i < a->nblocks; i++) total += a->size[i];
    size_t block = need > MIN_BLOCK_BYTES ? need : MIN_BLOCK_BYTES;
    if (block < total) block = align_up(total, a->allocator.alignment); /* grow geometrically */
    if (a->cap && block > a->cap) block = need;
    void *p = a->allocator.alloc(block, a->allocator.user);
    if (!p && block > need) {
        block = need;
        p = a->allocator.alloc(block, a->allocator.user);
    }
    if (!p)
        return gnr_error(GNR_ERR_NOMEM, "out of memory: could not allocate %zu bytes for activations (%zu in use)",
                         need, a->used);
    POISON(p, block);
    if (a->nblocks > 0) a->used += a->size[a->cur] - a->offset;
    a->base[a->nblocks] = p;
    a->size[a->nblocks] = block;
    a->cur = a->nblocks++;
    a->offset = need;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    *out = hand_out(a, p, bytes, fill);
    return GNR_OK;
}

gnr_status gnr_arena_alloc(gnr_arena *a, size_t bytes, void **out) { return arena_alloc(a, bytes, 1, out); }

void *gnr_arena_move_down_slot(gnr_arena *a, gnr_arena_mark m, size_t bytes)
{
    size_t need = slice_bytes(a, bytes), offset = m.offset;
    for (int b = m.block; b < a->nblocks; b++, offset = 0) { /* the search gnr_arena_alloc makes */
        if (offset + need <= a->size[b]) {
            char *p = (char *)a->base[b] + offset;
            UNPOISON(p, bytes); /* it spans slices (and their redzones) about to be released */
            return p;
        }
    }
    return NULL;
}

/* Everything from the mark on is free again. */
static void poison_from(gnr_arena *a, int block, size_t offset)
{
    for (int b = block; b < a->nblocks; b++, offset = 0) POISON((char *)a->base[b] + offset, a->size[b] - offset);
}

gnr_arena_mark gnr_arena_get_mark(const gnr_arena *a)
{
    gnr_arena_mark m = {a->cur, a->offset, a->used};
    return m;
}

void gnr_arena_release(gnr_arena *a, gnr_arena_mark m)
{
    poison_from(a, m.block, m.offset);
    a->cur = m.block;
    a->offset = m.offset;
    a->used = m.used;
}

gnr_status gnr_arena_release_keeping(gnr_arena *a, gnr_arena_mark m, size_t bytes, void **out)
{
    gnr_arena_release(a, m);
    return arena_alloc(a, bytes, 0, out);
}

void gnr_arena_reset(gnr_arena *a)
{
    if (a->nblocks > 1) {
        for (int i = 0; i < a->nblocks; i++) release_block(a, i);
        a->nblocks = 0;
        size_t block = align_up(a->peak, a->allocator.alignment);
        void *p = a->allocator.alloc(block, a->allocator.user);
        if (p) { /* if this fails the next pass simply grows again */
            a->base[0] = p;
            a->size[0] = block;
            a->nblocks = 1;
        }
    }
    poison_from(a, 0, 0);
    a->cur = 0;
    a->offset = 0;
    a->used = 0;
}

size_t gnr_arena_used(const gnr_arena *a) { return a->used; }
size_t gnr_arena_peak(const gnr_arena *a) { return a->peak; }
size_t gnr_arena_cap(const gnr_arena *a) { return a->cap; }
void gnr_arena_set_cap(gnr_arena *a, size_t cap_bytes) { a->cap = cap_bytes; }
void gnr_arena_reset_peak(gnr_arena *a) { a->peak = a->used; }
