#include "arena.h"

#include <stdlib.h>
#include <string.h>

#define MAX_BLOCKS 64
#define MIN_BLOCK_BYTES ((size_t)64 << 20)

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
};

static void *cpu_alloc(size_t bytes, void *user)
{
    (void)user;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    return p;
}

static void cpu_release(void *p, void *user)
{
    (void)user;
    free(p);
}

const gnr_allocator gnr_cpu_allocator = {cpu_alloc, cpu_release, NULL, 64};

gnr_status gnr_arena_create(const gnr_allocator *allocator, size_t cap_bytes, gnr_arena **out)
{
    gnr_arena *a = calloc(1, sizeof *a);
    if (!a) return gnr_error(GNR_ERR_NOMEM, "out of host memory creating the activation arena");
    a->allocator = *allocator;
    a->cap = cap_bytes;
    *out = a;
    return GNR_OK;
}

void gnr_arena_destroy(gnr_arena *a)
{
    if (!a) return;
    for (int i = 0; i < a->nblocks; i++) a->allocator.release(a->base[i], a->allocator.user);
    free(a);
}

static size_t align_up(size_t x, size_t al) { return (x + al - 1) & ~(al - 1); }

gnr_status gnr_arena_alloc(gnr_arena *a, size_t bytes, void **out)
{
    size_t need = align_up(bytes ? bytes : 1, a->allocator.alignment);
    if (a->cap && a->used + need > a->cap)
        return gnr_error(GNR_ERR_NOMEM,
                         "activation memory cap exceeded: asked for %zu bytes with %zu of the %zu-byte cap "
                         "in use (%zu available); raise max_memory or use a smaller image",
                         need, a->used, a->cap, a->cap - a->used);
    /* Fill the current block, then the next empty ones, then grow. */
    while (a->cur < a->nblocks) {
        if (a->offset + need <= a->size[a->cur]) {
            *out = (char *)a->base[a->cur] + a->offset;
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
    if (a->nblocks > 0) a->used += a->size[a->cur] - a->offset;
    a->base[a->nblocks] = p;
    a->size[a->nblocks] = block;
    a->cur = a->nblocks++;
    a->offset = need;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    *out = p;
    return GNR_OK;
}

gnr_arena_mark gnr_arena_get_mark(const gnr_arena *a)
{
    gnr_arena_mark m = {a->cur, a->offset, a->used};
    return m;
}

void gnr_arena_release(gnr_arena *a, gnr_arena_mark m)
{
    a->cur = m.block;
    a->offset = m.offset;
    a->used = m.used;
}

void gnr_arena_reset(gnr_arena *a)
{
    if (a->nblocks > 1) {
        for (int i = 0; i < a->nblocks; i++) a->allocator.release(a->base[i], a->allocator.user);
        a->nblocks = 0;
        size_t block = align_up(a->peak, a->allocator.alignment);
        void *p = a->allocator.alloc(block, a->allocator.user);
        if (p) { /* if this fails the next pass simply grows again */
            a->base[0] = p;
            a->size[0] = block;
            a->nblocks = 1;
        }
    }
    a->cur = 0;
    a->offset = 0;
    a->used = 0;
}

size_t gnr_arena_used(const gnr_arena *a) { return a->used; }
size_t gnr_arena_peak(const gnr_arena *a) { return a->peak; }
size_t gnr_arena_cap(const gnr_arena *a) { return a->cap; }
void gnr_arena_set_cap(gnr_arena *a, size_t cap_bytes) { a->cap = cap_bytes; }
void gnr_arena_reset_peak(gnr_arena *a) { a->peak = a->used; }

size_t gnr_arena_reserved(const gnr_arena *a)
{
    size_t total = 0;
    for (int i = 0; i < a->nblocks; i++) total += a->size[i];
    return total;
}
